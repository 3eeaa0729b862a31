//! flowpilot-cli: the `flowpilot` command (train, sample, inspect, eval,
//! bench, finetune, import), the benchmark tasks and the plots. Runs off the
//! robot's control loop; the node starts `flowpilot finetune` as its learner.

mod app;
pub mod bench;
pub mod plot;
pub mod tasks;

pub use app::main;
