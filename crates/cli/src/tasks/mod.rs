//! Benchmark tasks with scripted experts: the bimodal point mass and the
//! reach-with-detour robot (the fine-tuning benchmark).
//!
//! Simulated offline for evaluation and tests; nothing here is on a robot's
//! control thread.

pub mod pointmass;
pub mod reach;
