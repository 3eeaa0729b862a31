//! MaxEnt fine-tuning (SAC) with the flow as the actor. Nothing here runs
//! on the control thread; the learner is its own (niced) process.
//!
//! The actor's action and its exact log π come from one reparameterised
//! pass through the flow ([`Twin::sample`](crate::twin::Twin::sample));
//! twin Q critics with Polyak-averaged targets; the temperature is tuned to
//! a target entropy; an optional BC term λ·(−log π(a_data|s)) keeps the
//! policy near the data (NF-RLBC, for offline-to-online). Everything random
//! is drawn from one seeded ChaCha stream, so a run is reproducible.
//!
//! The rooms:
//! - [`sac`]: the update math ([`Sac`], [`SacConfig`]) and its state file;
//!   the candle autograd update, the reference.
//! - `fast`, `kernels`: the same update written out by hand (forward and
//!   backward over flat buffers, fused LayerNorm, `gemm`), used whenever it
//!   covers the configuration; checked against autograd by a gradient
//!   parity test.
//! - [`replay`]: the [`ReplayBuffer`] and the [`Batch`]es drawn from it.
//! - [`follower`]: [`LogFollower`], transition logs (replayed, and followed
//!   while still being written) into the replay buffer.
//! - `windows`: runs of robot steps into the policy's transitions (its
//!   observation history, its action chunk: a chunk-level critic's
//!   Q(s, a_{t:t+H}) with H-step rewards and bootstrap), for logs and
//!   demos alike.
//! - `shards`: one replay shard per robot of a fleet (or the one log), and
//!   the equal split of each batch among them.
//! - [`finetune`]: the session driver [`run`]: resume, data, update loop,
//!   versioned checkpoints (written atomically, each naming its parent's
//!   digest) for the node's hot swap to validate and pick up; a line the
//!   node rolled back is abandoned for the accepted version.

mod error;
mod fast;
mod finetune;
mod follower;
mod kernels;
mod replay;
mod sac;
mod shards;
mod windows;

pub use error::LearnerError;
pub use finetune::{run, DataSource, FinetuneOptions};
pub use follower::LogFollower;
pub use replay::{Batch, ReplayBuffer};
pub use sac::{Sac, SacConfig, UpdateStats};
