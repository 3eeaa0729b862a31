//! `fleet.*` in the node's configuration: this robot's link to a fleet
//! learner ([`FleetSettings`], docs/fleet.md), checked against the log and
//! the hot swap it needs. Start-up only; allocates.

use super::params::Params;
use super::{nonempty, ConfigError, Result};

/// Which policy versions a fleet robot takes from the learner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetPolicy {
    /// None: the robot only streams its records.
    None,
    /// The one policy the learner trains for every robot.
    Shared,
    /// A policy trained for this robot alone (its own topic).
    Own,
}

/// `fleet.*`: this robot's link to a fleet learner (docs/fleet.md).
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub robot_id: String,
    /// Stream the transition log's records to the learner.
    pub stream: bool,
    pub policy: FleetPolicy,
    /// Most records in flight without an acknowledgement.
    pub window: u64,
    /// How often new records are sent.
    pub batch_period_s: f64,
    /// `fleet.learner`: the id of the one learner to follow (its
    /// acknowledgements name it); None: the first learner heard
    /// (docs/fleet.md). Others on the domain are ignored and reported.
    pub learner: Option<String>,
    /// `fleet.signing_key`: this robot's private key (`flowpilot keygen`),
    /// signing every records batch it sends; a learner with robot keys
    /// stores only signed batches ([`crate::fleet::auth`]). None: unsigned.
    pub signer: Option<std::sync::Arc<crate::signing::PolicySigner>>,
}

pub(super) fn fleet_settings(
    p: &Params<'_>,
    has_log: bool,
    has_swap: bool,
) -> Result<Option<FleetSettings>> {
    let Some(robot_id) = nonempty(p.string("fleet.robot_id")?) else {
        return Ok(None);
    };
    if !crate::fleet::valid_robot_id(&robot_id) {
        return Err(ConfigError::param(
            "fleet.robot_id",
            format!("'fleet.robot_id': '{robot_id}' must start with a letter and hold only letters, digits and '_' (at most 64)"),
        ));
    }
    let stream = p.bool("fleet.stream")?;
    if stream && !has_log {
        return Err(ConfigError::param(
            "fleet.stream",
            "'fleet.stream' sends the transition log: set 'log.dir' (or fleet.stream: false)",
        ));
    }
    let policy = match p.string("fleet.policy")?.as_str() {
        "none" => FleetPolicy::None,
        "shared" => FleetPolicy::Shared,
        "own" => FleetPolicy::Own,
        o => {
            return Err(ConfigError::param(
                "fleet.policy",
                format!("'fleet.policy': unknown '{o}' (shared, own or none)"),
            ))
        }
    };
    if policy != FleetPolicy::None && !has_swap {
        return Err(ConfigError::param(
            "fleet.policy",
            "'fleet.policy' takes versions through the hot swap: set 'hot_swap.dir' (or fleet.policy: none)",
        ));
    }
    Ok(Some(FleetSettings {
        robot_id,
        stream,
        policy,
        window: p.i64("fleet.window")? as u64,
        batch_period_s: p.f64("fleet.batch_period")?,
        learner: match nonempty(p.string("fleet.learner")?) {
            Some(id) if !crate::fleet::valid_learner_id(&id) => {
                return Err(ConfigError::param(
                    "fleet.learner",
                    format!("'fleet.learner': '{id}' is not a learner id (1..64 letters, digits, '_' or '-'; flowpilot_fleet prints its id at start)"),
                ))
            }
            id => id,
        },
        signer: match nonempty(p.path("fleet.signing_key")?) {
            None => None,
            Some(path) => Some(std::sync::Arc::new(
                crate::signing::PolicySigner::load(std::path::Path::new(&path)).map_err(|e| {
                    ConfigError::param("fleet.signing_key", format!("'fleet.signing_key': {e}"))
                })?,
            )),
        },
    }))
}
