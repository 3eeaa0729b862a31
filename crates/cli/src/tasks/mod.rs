//! Benchmark tasks with scripted experts: the bimodal point mass and the
//! reach-with-detour robot (the fine-tuning benchmark).

pub mod pointmass;
pub mod reach;
