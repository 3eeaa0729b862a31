//! flowpilot-learn: the learning half of flowpilot, on candle. Nothing here
//! runs in the control loop.
//!
//! - [`twin`]: the same flow on candle autograd, for training and batches.
//! - [`train`]: the NF-BC (and Gaussian baseline) trainer.
//! - [`demos`]: the demonstrations file format.
//! - [`import`]: import checkpoints of the paper's flax/PyTorch code.
//! - [`learner`]: SAC fine-tuning of a flow policy from transition logs.
//!
//! Feature `clap`: [`learner::SacConfig`] doubles as the `flowpilot finetune`
//! flag set (one owner of the flags' names, help and defaults).

// The crate docs are the house tour, private modules included: build them
// with `cargo doc --document-private-items` (scripts/test.sh checks them).
#![allow(rustdoc::private_intra_doc_links)]

pub mod demos;
pub mod import;
pub mod learner;
pub mod train;
pub mod twin;

/// Pin the thread pools candle (and rayon) will use, before any of them
/// starts. Unset, candle re-reads /proc/cpuinfo on every matmul (26× slower
/// at batch 1) and may start threads that preempt the control loop.
pub fn pin_threads(n: usize) {
    for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, n.to_string());
        }
    }
}
