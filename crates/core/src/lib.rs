//! flowpilot-core: the real-time half of flowpilot. No candle, no ROS.
//!
//! - [`hotswap`]: checked swap of new policy versions between ticks.
//! - [`init`]: fresh models with the paper's initialisation.
//! - [`model`]: the model file (safetensors + validated spec).
//! - [`sampler`]: the allocation-free batch-1 sampler for the control loop.
//! - [`board`]: the lock-free latest-value board between subscribers and the loop.
//! - [`control`]: the control tick (freshness, safety, rate limit), timer, RT settings.
//! - [`log`]: the transition log (MCAP) and its crash-tolerant reader.
//! - [`shutdown`]: SIGINT/SIGTERM as one polled flag.
//! - [`alloc_count`]: a counting global allocator for zero-allocation proofs.
//!
//! ```
//! use flowpilot_core::init::{default_spec, init_model, Init};
//! use flowpilot_core::sampler::Sampler;
//!
//! // obs 3, no goal, act 2, K = 2 blocks, C = 16; random weights
//! let model = init_model(default_spec(3, 0, 2, 2, 16), Init::Random { last_scale: 0.3 }, 7)?;
//! let bytes = model.to_bytes(); // what `save` writes
//! let model = flowpilot_core::model::ModelFile::from_bytes(&bytes)?; // validated
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
pub mod board;
pub mod control;
pub mod hotswap;
pub mod init;
pub mod log;
pub mod model;
pub mod sampler;
pub mod shutdown;
#[doc(hidden)]
pub mod testkit;
