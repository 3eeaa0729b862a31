//! The policy: the model file ([`model`]: safetensors + validated spec),
//! fresh models with the paper's initialisation ([`init`]), the invertible
//! linear layer's one construction ([`plu`]), the
//! allocation-free batch-1 sampler ([`sampler`]) and flow space <->
//! physical units ([`action_space`]).
//!
//! Real-time: a built [`sampler::Sampler`] runs in the tick and allocates
//! nothing per call (`crates/core/tests/alloc_free.rs`); loading,
//! validating and building happen off the control thread.

pub mod action_space;
pub mod init;
pub mod model;
pub mod plu;
pub mod sampler;
