//! The learner's error type. Pure data; nothing here runs on the control
//! thread.

use std::path::PathBuf;

use flowpilot_core::checkpoint::StoreError;
use flowpilot_core::log::LogError;
use flowpilot_core::policy::model::ModelError;

/// What can stop a learner function. The twin and the demos file are still
/// on `anyhow`; their errors pass through as [`LearnerError::Other`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LearnerError {
    #[error("the replay buffer is empty")]
    EmptyReplay,
    #[error("offline RL needs a 'reward' array (N,) in the demos file")]
    NoReward,
    #[error("demos dims (obs {obs} goal {goal} act {act}) differ from the model's")]
    DemosDims { obs: usize, goal: usize, act: usize },
    #[error("only {have} transitions, fewer than --min-transitions {min}")]
    TooFewTransitions { have: usize, min: usize },
    #[error("reading learner state {}", path.display())]
    StateRead {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error("learner state lacks {0}")]
    StateMissing(String),
    #[error("learner state: {0} has the wrong shape")]
    StateShape(String),
    #[error("creating {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading {}", path.display())]
    LoadModel {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("the final checkpoint, after {updates} updates, was not written")]
    FinalCheckpoint {
        updates: u64,
        #[source]
        source: Box<LearnerError>,
    },
    #[error("--bc-demos-only needs prior data (--prior with followed logs)")]
    BcDemosWithoutPrior,
    #[error("--latent-temperature must be within (0, 1], got {0}")]
    LatentTemperature(f64),
    #[error("hand-written SAC path: {0}")]
    FastPath(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Numbering(#[from] flowpilot_core::versions::NumberingError),
    #[error(transparent)]
    Revocations(#[from] flowpilot_core::versions::RevocationError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type Result<T, E = LearnerError> = std::result::Result<T, E>;
