//! A counting global allocator. Binaries and tests that want to prove the
//! hot path allocation-free install it with `#[global_allocator]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static TOTAL: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // const-initialised with no destructor: safe to touch from the allocator.
    static THIS_THREAD: Cell<u64> = const { Cell::new(0) };
}

/// Forwards to the system allocator, counting allocations and reallocations.
pub struct CountingAlloc;

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[inline]
fn bump() {
    TOTAL.fetch_add(1, Ordering::Relaxed);
    let _ = THIS_THREAD.try_with(|c| c.set(c.get() + 1));
}

/// Allocations made by the calling thread so far (0 forever if the counting
/// allocator is not installed).
pub fn thread_allocations() -> u64 {
    THIS_THREAD.try_with(|c| c.get()).unwrap_or(0)
}

/// Allocations made by all threads so far.
pub fn total_allocations() -> u64 {
    TOTAL.load(Ordering::Relaxed)
}
