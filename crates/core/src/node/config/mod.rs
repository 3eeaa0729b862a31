//! The node's configuration, parsed from a flat parameter map
//! (`--params-file`, `-p name:=value`) with no ROS types: the ROS node
//! converts its `r2r::ParameterValue`s into [`ParamValue`]s and calls
//! [`NodeConfig::from_params`]. Every parameter is documented in
//! docs/configuration.md.
//!
//! Real-time: none of this runs on the control thread; it runs once at
//! start-up and allocates freely.

use std::collections::HashMap;

use crate::log::writer::DistanceReward;
use crate::rt::control::SafeBehaviour;
use crate::rt::stop::{Interface, StateSource, StopRule};

mod fleet;
mod params;
mod sources;
pub mod table;

use fleet::fleet_settings;
pub use fleet::{FleetPolicy, FleetSettings};
use params::Params;
use sources::{parse_qos, source, sources};
pub use sources::{JointField, SourceConfig, SourceKind};

/// One parameter's value, mirroring the ROS 2 parameter types (the variant
/// names match r2r's, so error messages read the same as before).
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    NotSet,
    Bool(bool),
    Integer(i64),
    Double(f64),
    String(String),
    BoolArray(Vec<bool>),
    ByteArray(Vec<u8>),
    IntegerArray(Vec<i64>),
    DoubleArray(Vec<f64>),
    StringArray(Vec<String>),
}

/// The flat parameter map: dotted names (`sources.arm.topic`) to values.
pub type ParamMap = HashMap<String, ParamValue>;

/// A rejected parameter set. `Display` gives the same text as the node
/// has always printed; [`ConfigError::param`] names the parameter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// One parameter is missing, of the wrong type or out of range.
    #[error("{message}")]
    Param { param: String, message: String },
    /// A problem inside one observation or goal source.
    #[error("{role} source '{name}'")]
    Source {
        role: &'static str,
        name: String,
        #[source]
        error: Box<ConfigError>,
    },
}

impl ConfigError {
    fn param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Param {
            param: param.into(),
            message: message.into(),
        }
    }

    /// The full name of the offending parameter.
    pub fn parameter(&self) -> &str {
        match self {
            Self::Param { param, .. } => param,
            Self::Source { error, .. } => error.parameter(),
        }
    }
}

type Result<T> = std::result::Result<T, ConfigError>;

/// Every parameter name the node reads (source fields apart: see
/// [`source_fields`]), from [`table::PARAMS`].
pub fn parameter_names() -> Vec<&'static str> {
    table::PARAMS
        .iter()
        .map(|p| p.name)
        .filter(|n| !n.starts_with("sources.<name>."))
        .collect()
}

/// The fields of every source, read as `sources.<name>.<field>`.
pub fn source_fields() -> Vec<&'static str> {
    table::PARAMS
        .iter()
        .filter_map(|p| p.name.strip_prefix("sources.<name>."))
        .collect()
}

pub use table::MAX_CPU;
use table::{is_known, nearest};

/// Reject any parameter the node does not read (first in name order).
fn reject_unknown(map: &ParamMap) -> Result<()> {
    // An unset value (declared, never given) is as good as absent.
    let mut names: Vec<&String> = map
        .iter()
        .filter(|(k, v)| !is_known(k) && !matches!(v, ParamValue::NotSet))
        .map(|(k, _)| k)
        .collect();
    names.sort();
    match names.first() {
        None => Ok(()),
        Some(k) => Err(ConfigError::param(
            k.as_str(),
            match nearest(k) {
                Some(n) => format!("unknown parameter '{k}' (did you mean '{n}'?)"),
                None => format!("unknown parameter '{k}' (docs/configuration.md lists them all)"),
            },
        )),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ActionKind {
    /// std_msgs/Float64MultiArray (ros2_control forward command controllers).
    Float64MultiArray,
    /// trajectory_msgs/JointTrajectory: one point at one period.
    JointTrajectory {
        joints: Vec<String>,
    },
    Twist,
    TwistStamped {
        frame_id: String,
    },
}

impl ActionKind {
    /// Whether this message type can carry a model's `act_dim` actions.
    pub fn check_act_dim(&self, act_dim: usize) -> Result<()> {
        match self {
            Self::Float64MultiArray => Ok(()),
            Self::JointTrajectory { joints } if joints.len() != act_dim => Err(ConfigError::param(
                "action.joints",
                format!(
                    "'action.joints' names {} joints, the model outputs {act_dim} actions",
                    joints.len()
                ),
            )),
            Self::JointTrajectory { .. } => Ok(()),
            Self::Twist | Self::TwistStamped { .. } if ![2, 3, 6].contains(&act_dim) => {
                Err(ConfigError::param(
                    "action.type",
                    format!("twist actions need 2 (vx, wz), 3 (vx, vy, wz) or 6 values; the model outputs {act_dim}"),
                ))
            }
            Self::Twist | Self::TwistStamped { .. } => Ok(()),
        }
    }
}

/// What the action values command (`action.interface`), which joints they
/// are (`action.joints`) and where those joints' positions are measured
/// (`action.state_source`): what the stop needs ([`crate::rt::stop`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandConfig {
    /// One interface for every value, or one per value.
    pub interfaces: Vec<Interface>,
    pub joints: Vec<String>,
    pub state_source: Option<String>,
}

impl CommandConfig {
    fn has(&self, i: Interface) -> bool {
        self.interfaces.contains(&i)
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub model: String,
    pub rate_hz: f64,
    pub seed: u64,
    /// Latent temperature τ ∈ [0, 1] (None: the model's own).
    pub temperature: Option<f32>,
    pub safe: SafeBehaviour,
    pub warmup_ticks: u64,
    pub startup_hold_s: f64,
    /// A header stamp further than this ahead of the node's clock makes its
    /// source invalid (clock skew, or a wall clock stepped back).
    pub max_future_stamp_s: f64,
    pub max_delta: Option<Vec<f64>>,
    pub observations: Vec<SourceConfig>,
    pub goals: Vec<SourceConfig>,
    pub action_topic: String,
    pub action: ActionKind,
    /// What the output commands, and where its positions are measured.
    pub command: CommandConfig,
    pub action_best_effort: bool,
    pub fifo_priority: Option<i32>,
    pub cpu: Option<usize>,
    pub mlockall: bool,
    /// Configure and activate at start (a plain `ros2 run`); false: wait
    /// in `unconfigured` for a lifecycle manager.
    pub autostart: bool,
    pub diagnostics_period_s: f64,
    /// The watchdog trips after this many periods without a tick
    /// (at least `watchdog::MIN_STALL_NS`).
    pub stall_periods: u32,
    /// Directory a learner writes versioned checkpoints to (None: off).
    pub hot_swap_dir: Option<String>,
    pub hot_swap_poll_s: f64,
    /// Reject a new version whose mean |Δaction| on recent observations
    /// exceeds this (physical units; 0: off).
    pub hot_swap_max_divergence: f64,
    /// Accept versions whose action bounds or normalisers differ from the
    /// running one's (default: refuse them).
    pub hot_swap_allow_spec_change: bool,
    /// The return guard's automatic rollback rule (`hot_swap.guard.*`).
    pub hot_swap_guard: crate::node::guard::GuardConfig,
    /// `hot_swap.trusted_keys`: accept only versions signed by one of
    /// these (empty: versions are not authenticated; required when the
    /// fleet link takes policies). docs/security.md.
    pub hot_swap_trusted_keys: crate::signing::TrustedKeys,
    /// `hot_swap.resume`: after a restart, run the newest accepted version
    /// that passes every hot-swap check (default); false: start from
    /// `model` (revocations are kept either way).
    pub hot_swap_resume: bool,
    /// Transition log (None: off).
    pub log: Option<LogSettings>,
    /// Human override: (topic, max age s).
    pub override_input: Option<(String, f64)>,
    /// Learner started by `~/finetune`: extra arguments and executable.
    pub finetune_args: Vec<String>,
    pub finetune_exe: Option<String>,
    /// How a chunked policy's chunks are played (`chunk.*`).
    pub chunk: crate::rt::control::ChunkConfig,
    /// The link to a fleet learner over the graph (`fleet.*`; None: off).
    pub fleet: Option<FleetSettings>,
    /// `live.allow_loosen` (start-up only): live changes may loosen the
    /// safety limits too (default: only tighten them; `crate::node::live`).
    pub live_allow_loosen: bool,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub dir: String,
    /// Log every k-th tick.
    pub every: u64,
    pub flush_period_s: f64,
    pub queue: usize,
    pub reward_topic: Option<String>,
    pub episode_topic: Option<String>,
    pub terminal_topic: Option<String>,
    pub distance_reward: Option<DistanceReward>,
    /// The robot's step report (`log.step_source`, a source in `sources`):
    /// the action it executed in the step that produced its new state. With
    /// it, one record per robot step (docs/log-format.md).
    pub step_source: Option<SourceConfig>,
}

/// Expand a leading `~` (the user's home, `$HOME`) and `$VAR`, `${VAR}`,
/// `${VAR:-default}` in a path parameter, as a shell would: ROS 2 params
/// files do no substitution of their own, and the bundled configs keep
/// their state under `~/.local/state/flowpilot` (docs/security.md: not
/// `/tmp`). An unset variable without a default is an error naming it.
pub fn expand_path(s: &str) -> std::result::Result<String, String> {
    let home = || std::env::var("HOME").ok();
    shellexpand::full_with_context(s, home, |v| std::env::var(v).map(Some))
        .map(|c| c.into_owned())
        .map_err(|e| format!("environment variable ${} in {s:?}: {}", e.var_name, e.cause))
}

fn nonempty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// `chunk.*`: the re-planning period and the boundary rule with its number.
fn chunk_config(p: &Params<'_>) -> Result<crate::rt::control::ChunkConfig> {
    use crate::rt::chunk::Boundary;
    let mut boundary: Boundary = p
        .string("chunk.boundary")?
        .parse()
        .map_err(|e: String| ConfigError::param("chunk.boundary", e))?;
    match &mut boundary {
        Boundary::Ensemble { m } => *m = p.f64("chunk.ensemble_m")? as f32,
        Boundary::Blend { steps } => *steps = p.i64("chunk.blend_steps")? as usize,
        Boundary::Replace => {}
    }
    let as_trajectory = p.bool("chunk.as_trajectory")?;
    if as_trajectory && boundary != Boundary::Replace {
        return Err(ConfigError::param(
            "chunk.as_trajectory",
            "'chunk.as_trajectory' sends each chunk whole, so it needs chunk.boundary 'replace'",
        ));
    }
    Ok(crate::rt::control::ChunkConfig {
        replan_every: p.i64("chunk.replan_every")? as usize,
        boundary,
        as_trajectory,
    })
}

/// The transition log's settings; `width` is the observation + goal width
/// that the distance reward's indices point into.
fn log_settings(p: &Params<'_>, width: usize) -> Result<Option<LogSettings>> {
    let Some(dir) = nonempty(p.path("log.dir")?) else {
        return Ok(None);
    };
    let a = p.usizes("log.reward.distance_a")?;
    let b = p.usizes("log.reward.distance_b")?;
    if a.len() != b.len() {
        return Err(ConfigError::param(
            "log.reward.distance_b",
            "'log.reward.distance_a' and 'log.reward.distance_b' must have the same length",
        ));
    }
    for (name, idx) in [("log.reward.distance_a", &a), ("log.reward.distance_b", &b)] {
        if let Some(i) = idx.iter().find(|&&i| i >= width) {
            return Err(ConfigError::param(
                name,
                format!("'{name}': index {i} is outside the observation and goal ({width} values)"),
            ));
        }
    }
    let every = p.i64("log.every")?;
    if every < 1 {
        return Err(ConfigError::param(
            "log.every",
            format!("'log.every' must be >= 1, got {every}"),
        ));
    }
    let flush = p.f64("log.flush_period")?;
    if !(0.001..=1.0).contains(&flush) {
        return Err(ConfigError::param(
            "log.flush_period",
            format!("'log.flush_period' must be within 0.001..1 s, got {flush}"),
        ));
    }
    let distance_reward = if a.is_empty() {
        None
    } else {
        Some(DistanceReward {
            a,
            b,
            action_cost: p.f64("log.reward.action_cost")?,
        })
    };
    Ok(Some(LogSettings {
        dir,
        every: every as u64,
        flush_period_s: flush,
        queue: p.i64("log.queue")? as usize,
        reward_topic: nonempty(p.string("log.reward_topic")?),
        episode_topic: nonempty(p.string("log.episode_topic")?),
        terminal_topic: nonempty(p.string("log.terminal_topic")?),
        distance_reward,
        step_source: nonempty(p.string("log.step_source")?)
            .map(|n| {
                source(p, &n).map_err(|e| ConfigError::Source {
                    role: "step",
                    name: n.clone(),
                    error: Box::new(e),
                })
            })
            .transpose()?,
    }))
}

/// `hot_swap.trusted_keys`: each entry a public key inline
/// (`ed25519:<base64>`) or the path of a public key file (expanded as
/// paths are), read and checked now ([`crate::signing::PublicKey::from_entry`]).
fn trusted_keys(p: &Params<'_>) -> Result<crate::signing::TrustedKeys> {
    const K: &str = "hot_swap.trusted_keys";
    let bad = |e: String| ConfigError::param(K, format!("'{K}': {e}"));
    let mut keys = Vec::new();
    for entry in p.strings(K)? {
        let entry = if entry.trim().starts_with(crate::signing::KEY_PREFIX) {
            entry
        } else {
            expand_path(&entry).map_err(bad)?
        };
        keys.push(crate::signing::PublicKey::from_entry(&entry).map_err(|e| bad(e.to_string()))?);
    }
    Ok(crate::signing::TrustedKeys::new(keys))
}

/// `log`: holding new versions back needs episode returns to reach the
/// guard (the log's reward and episode topics); without them it would
/// hold forever, so it is off.
fn guard_config(
    p: &Params<'_>,
    log: Option<&LogSettings>,
) -> Result<crate::node::guard::GuardConfig> {
    let episodes = p.i64("hot_swap.guard.episodes")?;
    let margin = p.f64("hot_swap.guard.margin")?;
    let z = p.f64("hot_swap.guard.z")?;
    let fed = log.is_some_and(|l| l.reward_topic.is_some() && l.episode_topic.is_some());
    let hold = p.bool("hot_swap.guard.hold")? && fed;
    for (name, ok) in [
        ("hot_swap.guard.episodes", episodes >= 0),
        ("hot_swap.guard.margin", margin >= 0.0 && margin.is_finite()),
        ("hot_swap.guard.z", z >= 0.0 && z.is_finite()),
    ] {
        if !ok {
            return Err(ConfigError::param(
                name,
                format!("'{name}' must be a finite number >= 0"),
            ));
        }
    }
    Ok(crate::node::guard::GuardConfig {
        episodes: episodes as usize,
        margin,
        z,
        hold,
    })
}

impl NodeConfig {
    /// Parse and check the whole parameter set; the first problem found is
    /// returned, naming its parameter.
    pub fn from_params(map: &ParamMap) -> Result<Self> {
        reject_unknown(map)?;
        let p = Params(map);
        let rate_hz = p.f64("rate_hz")?;
        if !(10.0..=1000.0).contains(&rate_hz) {
            return Err(ConfigError::param(
                "rate_hz",
                format!("'rate_hz' must be within 10..1000, got {rate_hz}"),
            ));
        }
        let observations = sources(&p, "observations", "observation")?;
        if observations.is_empty() {
            return Err(ConfigError::param(
                "observations",
                "'observations' must list at least one source name",
            ));
        }
        let goals = sources(&p, "goals", "goal")?;
        let action = match p.string("action.type")?
            .as_str()
        {
            "float64_multi_array" => ActionKind::Float64MultiArray,
            "joint_trajectory" => {
                let joints = p.strings("action.joints")?;
                if joints.is_empty() {
                    return Err(ConfigError::param(
                        "action.joints",
                        "'action.joints' must name the joints for joint_trajectory",
                    ));
                }
                ActionKind::JointTrajectory { joints }
            }
            "twist" => ActionKind::Twist,
            "twist_stamped" => ActionKind::TwistStamped {
                frame_id: p.string("action.frame_id")?,
            },
            o => return Err(ConfigError::param(
                "action.type",
                format!("'action.type': unknown '{o}' (float64_multi_array, joint_trajectory, twist, twist_stamped)"),
            )),
        };
        let safe: SafeBehaviour = p.string("safe_behaviour")?.parse().map_err(|e: String| {
            ConfigError::param("safe_behaviour", format!("'safe_behaviour': {e}"))
        })?;
        let command = command_config(&p, &action, safe, &observations, &goals)?;
        let max_delta = p.f64s("max_delta")?;
        if let Some(m) = max_delta.iter().find(|m| !(m.is_finite() && **m > 0.0)) {
            return Err(ConfigError::param(
                "max_delta",
                format!("'max_delta' entries must be finite and > 0 (a per-tick step), got {m}"),
            ));
        }
        let temperature = match p.get("temperature") {
            None => None,
            Some(_) => {
                let t = p.f64("temperature")?;
                if !(0.0..=1.0).contains(&t) {
                    return Err(ConfigError::param(
                        "temperature",
                        format!("'temperature' must be within 0..1, got {t}"),
                    ));
                }
                Some(t as f32)
            }
        };
        let prio = p.i64("rt.fifo_priority")?;
        let cpu = p.i64("rt.cpu")?;
        let width: usize = observations
            .iter()
            .chain(&goals)
            .map(|s| s.kind.width())
            .sum();
        let log = log_settings(&p, width)?;
        Self {
            model: p.path("model")?,
            rate_hz,
            seed: p.i64("seed")? as u64,
            temperature,
            safe,
            warmup_ticks: p.i64("warmup_ticks")? as u64,
            startup_hold_s: p.f64("startup_hold")?,
            max_future_stamp_s: p.f64("max_future_stamp")?,
            max_delta: (!max_delta.is_empty()).then_some(max_delta),
            observations,
            goals,
            action_topic: p.string("action.topic")?,
            action,
            command,
            action_best_effort: parse_qos("action.qos", &p.string("action.qos")?)?,
            fifo_priority: (prio > 0).then_some(prio as i32),
            cpu: (cpu >= 0).then_some(cpu as usize),
            mlockall: p.bool("rt.mlockall")?,
            autostart: p.bool("autostart")?,
            diagnostics_period_s: p.f64("diagnostics_period")?,
            stall_periods: p.i64("watchdog.stall_periods")? as u32,
            hot_swap_dir: nonempty(p.path("hot_swap.dir")?),
            hot_swap_poll_s: p.f64("hot_swap.poll_period")?,
            hot_swap_max_divergence: p.f64("hot_swap.max_divergence")?,
            hot_swap_allow_spec_change: p.bool("hot_swap.allow_spec_change")?,
            hot_swap_guard: guard_config(&p, log.as_ref())?,
            hot_swap_trusted_keys: trusted_keys(&p)?,
            hot_swap_resume: p.bool("hot_swap.resume")?,
            log,
            override_input: nonempty(p.string("override.topic")?)
                .map(|t| Ok::<_, ConfigError>((t, p.f64("override.max_age")?)))
                .transpose()?,
            // Each argument as a shell would expand it (a path to prior
            // data, say); the learner is started without a shell.
            finetune_args: p
                .strings("finetune.args")?
                .iter()
                .map(|a| {
                    expand_path(a).map_err(|e| {
                        ConfigError::param("finetune.args", format!("'finetune.args': {e}"))
                    })
                })
                .collect::<Result<_>>()?,
            finetune_exe: nonempty(p.path("finetune.exe")?),
            chunk: chunk_config(&p)?,
            fleet: None,
            live_allow_loosen: p.bool("live.allow_loosen")?,
        }
        .with_fleet(&p)
    }

    fn with_fleet(mut self, p: &Params<'_>) -> Result<Self> {
        self.fleet = fleet_settings(p, self.log.is_some(), self.hot_swap_dir.is_some())?;
        self.check_trusted_keys()?;
        Ok(self)
    }

    /// `hot_swap.trusted_keys` needs `hot_swap.dir`, and a fleet link that
    /// takes policies needs it: versions from the graph are authenticated
    /// or not taken.
    fn check_trusted_keys(&self) -> Result<()> {
        const K: &str = "hot_swap.trusted_keys";
        let keys = !self.hot_swap_trusted_keys.is_empty();
        if keys && self.hot_swap_dir.is_none() {
            return Err(ConfigError::param(
                K,
                format!("'{K}' authenticates hot-swapped versions: set 'hot_swap.dir' (or remove the keys)"),
            ));
        }
        let takes = self
            .fleet
            .as_ref()
            .is_some_and(|f| f.policy != FleetPolicy::None);
        if takes && !keys {
            return Err(ConfigError::param(
                K,
                format!(
                    "'{K}' is required when the fleet link takes policies (fleet.policy shared or own): \
                     name the public key of the learner that signs them (`flowpilot keygen`, \
                     docs/security.md), or set fleet.policy: none"
                ),
            ));
        }
        Ok(())
    }

    /// All sources in board order: observations, then goals.
    pub fn sources(&self) -> impl Iterator<Item = &SourceConfig> {
        self.observations.iter().chain(&self.goals)
    }

    /// The stop for a model whose action step has `act_dim` values: one
    /// interface per value, and each position's place on the board.
    pub fn stop_rule(&self, act_dim: usize) -> Result<StopRule> {
        let c = &self.command;
        let interfaces = match c.interfaces.len() {
            1 => vec![c.interfaces[0]; act_dim],
            n if n == act_dim => c.interfaces.clone(),
            n => {
                return Err(ConfigError::param(
                    "action.interface",
                    format!(
                    "'action.interface' lists {n} interfaces, the model outputs {act_dim} actions"
                ),
                ))
            }
        };
        if !c.joints.is_empty() && c.joints.len() != act_dim {
            return Err(ConfigError::param(
                "action.joints",
                format!(
                    "'action.joints' names {} joints, the model outputs {act_dim} actions",
                    c.joints.len()
                ),
            ));
        }
        let state = match &c.state_source {
            None => None,
            Some(name) => {
                // Checked by `command_config`: a joint_state source with
                // positions, naming every action joint.
                let (source, src) = self
                    .sources()
                    .enumerate()
                    .find(|(_, s)| &s.name == name)
                    .expect("state source checked at parse");
                let SourceKind::JointState { joints, fields } = &src.kind else {
                    unreachable!("state source kind checked at parse")
                };
                let pos = fields.iter().position(|f| *f == JointField::Position);
                let index = c
                    .joints
                    .iter()
                    .zip(&interfaces)
                    .map(|(j, itf)| {
                        let at = joints.iter().position(|x| x == j)?;
                        (*itf == Interface::Position).then_some(at * fields.len() + pos?)
                    })
                    .collect();
                Some(StateSource { source, index })
            }
        };
        Ok(StopRule::new(interfaces, state))
    }
}

/// `action.interface`, `action.joints` and `action.state_source`, checked
/// against the message type and the safe behaviour: a safe behaviour whose
/// name would lie about what the robot does is refused (`zero` on a
/// position is a jump to 0; `hold` on an effort is not a hold; `stop` on
/// a forward velocity or effort controller leaves it moving).
fn command_config(
    p: &Params<'_>,
    action: &ActionKind,
    safe: SafeBehaviour,
    observations: &[SourceConfig],
    goals: &[SourceConfig],
) -> Result<CommandConfig> {
    let names = p.strings("action.interface")?;
    let mut interfaces = Vec::with_capacity(names.len());
    for n in &names {
        interfaces.push(n.parse::<Interface>().map_err(|e| {
            ConfigError::param("action.interface", format!("'action.interface': {e}"))
        })?);
    }
    let (implied, joints) = match action {
        ActionKind::JointTrajectory { joints } => (Some(Interface::Position), joints.clone()),
        ActionKind::Twist | ActionKind::TwistStamped { .. } => {
            (Some(Interface::Velocity), Vec::new())
        }
        ActionKind::Float64MultiArray => (None, p.strings("action.joints")?),
    };
    match implied {
        Some(i) if interfaces.iter().any(|x| *x != i) => {
            return Err(ConfigError::param(
                "action.interface",
                format!(
                    "'action.interface': this action.type commands {}, not {}",
                    i.name(),
                    interfaces.iter().find(|x| **x != i).expect("found").name()
                ),
            ))
        }
        Some(i) => interfaces = vec![i],
        None if interfaces.is_empty() => return Err(ConfigError::param(
            "action.interface",
            "'action.interface' is required for float64_multi_array: say what the values command \
                 (position, velocity or effort, or one per value), so that a stop holds a position \
                 instead of commanding 0",
        )),
        None => {}
    }
    let c = CommandConfig {
        interfaces,
        joints,
        state_source: nonempty(p.string("action.state_source")?),
    };
    if safe == SafeBehaviour::Hold && c.has(Interface::Effort) {
        return Err(ConfigError::param(
            "safe_behaviour",
            "'safe_behaviour': hold is refused on an effort interface (a torque cannot hold a \
             place; the stop sends zero effort): use zero",
        ));
    }
    if safe == SafeBehaviour::Zero && c.has(Interface::Position) {
        return Err(ConfigError::param(
            "safe_behaviour",
            "'safe_behaviour': zero is refused on a position interface (0 is a place, and the \
             arm would jump there): use hold or stop",
        ));
    }
    // A forward velocity or effort controller keeps its last command until
    // a new one comes (it has no command timeout: ros2_controllers #95),
    // so sending nothing would leave the robot moving. A Twist consumer
    // (diff_drive_controller's cmd_vel_timeout, twist_mux) does time out.
    if safe == SafeBehaviour::Stop
        && matches!(action, ActionKind::Float64MultiArray)
        && (c.has(Interface::Velocity) || c.has(Interface::Effort))
    {
        return Err(ConfigError::param(
            "safe_behaviour",
            "'safe_behaviour': stop is refused on a float64_multi_array velocity or effort value \
             (a forward command controller keeps the last command, with no timeout, so sending \
             nothing leaves the robot moving): use zero",
        ));
    }
    if let Some(name) = &c.state_source {
        let err = |m: String| Err(ConfigError::param("action.state_source", m));
        if !c.has(Interface::Position) {
            return err(format!(
                "'action.state_source': '{name}' measures positions, and no action value commands one"
            ));
        }
        let Some(src) = observations.iter().chain(goals).find(|s| &s.name == name) else {
            return err(format!(
                "'action.state_source': '{name}' is not one of the observations or goals"
            ));
        };
        let SourceKind::JointState { joints, fields } = &src.kind else {
            return err(format!(
                "'action.state_source': '{name}' must be a joint_state source"
            ));
        };
        if !fields.contains(&JointField::Position) {
            return err(format!(
                "'action.state_source': '{name}' must read the position field"
            ));
        }
        if c.joints.is_empty() {
            return Err(ConfigError::param(
                "action.joints",
                "'action.joints' must name the commanded joints to read them from action.state_source",
            ));
        }
        if let Some(j) = c.joints.iter().find(|j| !joints.contains(j)) {
            return err(format!(
                "'action.state_source': '{name}' does not read joint '{j}' of action.joints"
            ));
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests;
