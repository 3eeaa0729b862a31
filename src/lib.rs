//! flowpilot: real-time runtime for normalizing-flow robot policies.
//!
//! - [`model`]: the model file (safetensors + validated spec).
//! - [`init`]: fresh models with the paper's initialisation.
//! - [`sampler`]: the allocation-free batch-1 sampler for the control loop.
//! - [`twin`]: the same flow on candle autograd, for training and batches.
//! - [`train`]: the NF-BC (and Gaussian baseline) trainer.
//! - [`demos`]: the demonstrations file format.
//! - [`import`]: import checkpoints of the paper's flax/PyTorch code.
//! - [`pointmass`]: a bimodal 2-D point-mass task and its expert.
//! - [`bench`]: latency / bandwidth benchmarks behind `flowpilot bench`.
//! - [`board`]: the lock-free latest-value board between subscribers and the loop.
//! - [`control`]: the control tick (freshness, safety, rate limit), timer, RT settings.
//! - [`log`]: the transition log (MCAP) and its crash-tolerant reader.
//! - [`learner`]: SAC fine-tuning of a flow policy from transition logs.
//! - [`alloc_count`]: a counting global allocator for zero-allocation proofs.
//!
//! ```
//! use flowpilot::init::{default_spec, init_model, Init};
//! use flowpilot::sampler::Sampler;
//!
//! // obs 3, no goal, act 2, K = 2 blocks, C = 16; random weights
//! let model = init_model(default_spec(3, 0, 2, 2, 16), Init::Random { last_scale: 0.3 }, 7)?;
//! let bytes = model.to_bytes(); // what `save` writes
//! let model = flowpilot::model::ModelFile::from_bytes(&bytes)?; // validated
//! let mut sampler = Sampler::new(&model)?;
//! let mut action = [0.0f32; 2];
//! let lp = sampler.sample_seeded(&[0.1, 0.2, 0.3], &[], 42, 0, &mut action)?;
//! assert!(lp.is_finite() && action.iter().all(|a| (-1.0..=1.0).contains(a)));
//! // the exact log-prob of the raw sample, recomputed by the likelihood pass
//! let raw = sampler.last_raw_action().to_vec();
//! let mut z = [0.0f32; 2];
//! let lp2 = sampler.log_prob(&[0.1, 0.2, 0.3], &[], &raw, &mut z)?;
//! assert!((lp - lp2).abs() < 1e-4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod alloc_count;
pub mod init;
pub mod learner;
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
pub mod board;
pub mod control;
pub mod demos;
pub mod import;
pub mod log;
pub mod plot;
pub mod pointmass;
pub mod reach;
#[cfg(feature = "ros")]
pub mod ros;
pub mod train;
