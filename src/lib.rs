//! flowpilot: real-time runtime for normalizing-flow robot policies.
//!
//! - [`model`]: the model file (safetensors + validated spec).
//! - [`init`]: fresh models with the paper's initialisation.
//! - [`sampler`]: the allocation-free batch-1 sampler for the control loop.
//! - [`twin`]: the same flow on candle autograd, for training and batches.
//! - [`train`]: the NF-BC (and Gaussian baseline) trainer.
//! - [`demos`]: the demonstrations file format.
//! - [`pointmass`]: a bimodal 2-D point-mass task and its expert.
//! - [`bench`]: latency / bandwidth benchmarks behind `flowpilot bench`.
//! - [`alloc_count`]: a counting global allocator for zero-allocation proofs.

pub mod alloc_count;
pub mod init;
pub mod model;
pub mod sampler;
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
pub mod bench;
pub mod demos;
pub mod plot;
pub mod pointmass;
pub mod train;
