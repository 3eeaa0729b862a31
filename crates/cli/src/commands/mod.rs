//! One module per `flowpilot` subcommand, each with its flags and its
//! `run`. These are the binary's edge: they print results to stdout and
//! return `anyhow` errors. None of them runs on a robot's control thread.

pub(crate) mod bare_loop;
pub(crate) mod bench;
pub(crate) mod contract;
pub(crate) mod convert;
pub(crate) mod demos;
pub(crate) mod eval;
pub(crate) mod finetune;
pub(crate) mod import;
pub(crate) mod inspect;
pub(crate) mod keygen;
pub(crate) mod log_prob;
pub(crate) mod new;
pub(crate) mod replay;
pub(crate) mod report;
pub(crate) mod sample;
pub(crate) mod train;
