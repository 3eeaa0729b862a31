//! flowpilot-core: the real-time half of flowpilot. No candle, no ROS.
//! What the control thread runs is under [`rt`]; the rest runs around it.
//!
//! - [`policy::action_space`]: flow space [-1, 1] <-> physical units (one owner).
//! - [`checkpoint`]: the checkpoint directory's file contract (one owner).
//! - [`node::hotswap`]: checked swap of new policy versions between ticks.
//! - [`signing`]: ed25519-signed policy versions, keys, the signed message (one owner).
//! - [`policy::init`]: fresh models with the paper's initialisation.
//! - [`policy::model`]: the model file (safetensors + validated spec).
//! - [`policy::sampler`]: the allocation-free batch-1 sampler for the control loop.
//! - [`learner_metrics`]: the learner's live metrics file, which the node republishes.
//! - [`joint_map`]: bounded work per observation message (size caps, joint-name lookup).
//! - [`node::estop`]: the latched e-stop and its deliberate reset (the rule's one owner).
//! - [`fleet`]: the fleet link's wire format, flow control, log cursor and shard store.
//! - [`log`]: the transition log (MCAP) and its crash-tolerant reader.
//! - [`rt`]: everything the control thread runs, allocation-free and lock-free:
//!   the hand-off ([`rt::handoff`]), the board, the tick ([`rt::control`]),
//!   chunks and history, stops, decision codes, the clock, the output
//!   queue, the runner (one period: wait, swap, tick, log, output) and the
//!   latency histogram.
//! - [`sched`]: process and thread scheduling (RT settings, niceness, SCHED_IDLE).
//! - [`node::lifecycle`]: the managed-node state machine (lifecycle_msgs numbering).
//! - [`shutdown`]: SIGINT/SIGTERM as one polled flag.
//! - [`node::watchdog`]: when the control thread counts as stalled.
//! - [`node::config`]: the node's parameters, parsed and checked without ROS types.
//! - [`node::diagnostics`]: the /diagnostics content from a snapshot of the counters.
//! - [`alloc_count`]: a counting global allocator for zero-allocation proofs.
//!
//! ```
//! use flowpilot_core::policy::init::{default_spec, init_model, Init};
//! use flowpilot_core::policy::sampler::Sampler;
//!
//! // obs 3, no goal, act 2, K = 2 blocks, C = 16; random weights
//! let model = init_model(default_spec(3, 0, 2, 2, 16), Init::Random { last_scale: 0.3 }, 7)?;
//! let bytes = model.to_bytes(); // what `save` writes
//! let model = flowpilot_core::policy::model::ModelFile::from_bytes(&bytes)?; // validated
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

// The crate docs are the house tour, private modules included: build them
// with `cargo doc --document-private-items` (scripts/test.sh checks them).
#![allow(rustdoc::private_intra_doc_links)]

pub mod alloc_count;
pub mod checkpoint;
pub mod contract;
pub mod fleet;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod joint_map;
pub mod learner_metrics;
pub mod log;
pub mod node;
pub mod policy;
pub mod rt;
pub mod sched;
pub mod shutdown;
pub mod signing;
#[doc(hidden)]
pub mod testkit;
pub mod versions;
