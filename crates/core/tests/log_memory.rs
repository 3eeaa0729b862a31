//! Seeking in a long log holds a bounded amount of memory, whatever the
//! log's length (docs/fleet.md, "Bounded memory and time"): the node finds
//! where its next log file starts at every configure (`stream_base`), and
//! the fleet link seeks to the learner's position after every outage
//! (`LogCursor`). Before the index both decoded the whole newest file into
//! memory (~1.2 kB per record: ~450 MB for an hour of a 100 Hz log).
//!
//! A global allocator tracks the bytes live at once; this file holds one
//! test so that nothing else allocates while it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use flowpilot_core::contract::log_meta::SEQ_BASE;
use flowpilot_core::fleet::cursor::LogCursor;
use flowpilot_core::log::reader::{log_files, stream_base};
use flowpilot_core::log::writer::FileWriter;
use flowpilot_core::log::Transition;

struct Peak;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        grow(l.size());
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        grow(l.size());
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let p = System.realloc(ptr, l, new);
        if new > l.size() {
            grow(new - l.size());
        } else {
            LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, l: Layout) {
        System.dealloc(ptr, l);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

fn grow(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

#[global_allocator]
static ALLOC: Peak = Peak;

/// `f`'s result and the most bytes it held at once beyond what was live
/// before it.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed) - before)
}

const MIB: usize = 1 << 20;

#[test]
fn seeking_in_a_long_log_holds_a_bounded_amount_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let n = 40_000u64;
    let path = dir.path().join("flowpilot_1_1.mcap");
    let meta: BTreeMap<String, String> = [
        (SEQ_BASE.to_string(), "0".to_string()),
        ("every".to_string(), "1".to_string()),
    ]
    .into();
    let mut w = FileWriter::create(&path, &meta).unwrap();
    for i in 0..n {
        let mut t = Transition {
            tick: i,
            n_obs: 4,
            n_act: 2,
            ..Default::default()
        };
        t.inputs[0] = i as f32;
        w.append(&t).unwrap();
    }
    w.flush().unwrap(); // still being written (no footer): the newest file
    let whole = n as usize * std::mem::size_of::<Transition>();
    println!(
        "{n} records, {} MB on disk, {} MB decoded",
        std::fs::metadata(&path).unwrap().len() / 1_000_000,
        whole / 1_000_000
    );

    for indexed in [true, false] {
        if !indexed {
            // a log from before the index: a bounded scan instead
            for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
                if f.path().extension().is_some_and(|e| e == "idx") {
                    std::fs::remove_file(f.path()).unwrap();
                }
            }
            assert_eq!(log_files(dir.path()).unwrap().len(), 1);
        }
        // the node at configure: where its next log file starts
        let (base, peak) = peak_of(|| stream_base(dir.path()).unwrap());
        println!("indexed {indexed}: stream_base held {peak} bytes at most");
        assert_eq!(base, n);
        assert!(
            peak < 2 * MIB,
            "stream_base held {peak} bytes (the file decodes to {whole})"
        );

        // the fleet link resending from the learner's position
        let (batch, peak) = peak_of(|| {
            let mut c = LogCursor::new("r1", dir.path());
            c.seek(30_000);
            c.next_batch(256).unwrap().unwrap()
        });
        println!("indexed {indexed}: a seek and a batch held {peak} bytes at most");
        assert_eq!((batch.seq, batch.records.len()), (30_000, 256));
        assert!(
            peak < 4 * MIB,
            "a seek held {peak} bytes (the file decodes to {whole})"
        );
    }
    drop(w);
}
