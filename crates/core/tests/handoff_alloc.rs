//! Proof of the hand-off's real-time claim: once built, a `Handoff`'s
//! push (both policies), pop and clear make no heap allocation, full or
//! not, for the item types the control thread hands off.

use flowpilot_core::alloc_count::{thread_allocations, CountingAlloc};
use flowpilot_core::log::Transition;
use flowpilot_core::rt::handoff::Handoff;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn push_pop_and_replace_make_no_heap_allocation() {
    let before = thread_allocations();
    std::hint::black_box(vec![1u8; 16]);
    assert!(
        thread_allocations() > before,
        "counting allocator not installed"
    );

    let small: Handoff<f64> = Handoff::new(4);
    let records: Handoff<Transition> = Handoff::new(3);
    let t = Transition::default();

    let before = thread_allocations();
    for i in 0..1000 {
        // refuse when full, then replace the oldest, then drain
        let _ = std::hint::black_box(small.push(i as f64));
        let _ = std::hint::black_box(records.push(t));
        if i % 7 == 0 {
            std::hint::black_box(small.push_replacing(-1.0));
            std::hint::black_box(records.push_replacing(t));
        }
        if i % 5 == 0 {
            std::hint::black_box(small.pop());
            std::hint::black_box(records.pop());
        }
        if i % 50 == 0 {
            std::hint::black_box(small.clear());
        }
    }
    assert_eq!(
        thread_allocations() - before,
        0,
        "allocations in 1000 hand-offs"
    );
    assert!(small.refused() > 0 && records.refused() > 0);
}
