//! The node's configuration, parsed from a flat parameter map
//! (`--params-file`, `-p name:=value`) with no ROS types: the ROS node
//! converts its `r2r::ParameterValue`s into [`ParamValue`]s and calls
//! [`NodeConfig::from_params`]. Every parameter is documented in
//! docs/configuration.md.
//!
//! Real-time: none of this runs on the control thread; it runs once at
//! start-up and allocates freely.

use std::collections::HashMap;

use crate::control::SafeBehaviour;
use crate::log::writer::DistanceReward;
use crate::stop::{Interface, StateSource, StopRule};

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

/// Every parameter the node reads, by full name: the one list that says
/// which names exist. [`Params`] refuses (in debug builds) to read a name
/// missing here, and [`NodeConfig::from_params`] rejects a parameter set
/// naming one that is not here (a typo must not silently fall back to a
/// default), suggesting the nearest valid name.
const KEYS: &[&str] = &[
    "autostart",
    "model",
    "rate_hz",
    "seed",
    "temperature",
    "safe_behaviour",
    "warmup_ticks",
    "startup_hold",
    "max_delta",
    "max_future_stamp",
    "observations",
    "goals",
    "action.type",
    "action.topic",
    "action.qos",
    "action.joints",
    "action.frame_id",
    "action.interface",
    "action.state_source",
    "rt.fifo_priority",
    "rt.cpu",
    "rt.mlockall",
    "diagnostics_period",
    "watchdog.stall_periods",
    "hot_swap.dir",
    "hot_swap.poll_period",
    "hot_swap.max_divergence",
    "hot_swap.allow_spec_change",
    "hot_swap.guard.episodes",
    "hot_swap.guard.margin",
    "hot_swap.guard.z",
    "hot_swap.guard.hold",
    "hot_swap.trusted_keys",
    "hot_swap.resume",
    "log.dir",
    "log.every",
    "log.flush_period",
    "log.queue",
    "log.reward_topic",
    "log.episode_topic",
    "log.terminal_topic",
    "log.step_source",
    "log.reward.distance_a",
    "log.reward.distance_b",
    "log.reward.action_cost",
    "override.topic",
    "override.max_age",
    "finetune.args",
    "finetune.exe",
    "fleet.robot_id",
    "fleet.stream",
    "fleet.policy",
    "fleet.window",
    "fleet.batch_period",
    "fleet.learner",
    "fleet.signing_key",
    "chunk.replan_every",
    "chunk.boundary",
    "chunk.ensemble_m",
    "chunk.blend_steps",
    "chunk.as_trajectory",
    "live.allow_loosen",
];

/// Every parameter name the node reads (source fields apart: see
/// [`source_fields`]).
pub fn parameter_names() -> &'static [&'static str] {
    KEYS
}

/// The fields of every source, read as `sources.<name>.<field>`.
pub fn source_fields() -> &'static [&'static str] {
    SOURCE_FIELDS
}

/// The fields of one source, `sources.<name>.<field>`.
const SOURCE_FIELDS: &[&str] = &[
    "type",
    "topic",
    "qos",
    "max_age",
    "joints",
    "fields",
    "indices",
    "size",
    "components",
];

/// Parameters that ROS 2 itself declares on a node (or its launch files
/// pass to every node); accepted and not used.
const ROS_KEYS: &[&str] = &["use_sim_time", "start_type_description_service"];

/// The highest CPU index `sched_setaffinity`'s fixed-size set can hold.
pub const MAX_CPU: usize = 1023;

fn is_known(name: &str) -> bool {
    if KEYS.contains(&name) || ROS_KEYS.contains(&name) || name.starts_with("qos_overrides.") {
        return true;
    }
    match name
        .strip_prefix("sources.")
        .and_then(|r| r.rsplit_once('.'))
    {
        Some((src, field)) => !src.is_empty() && SOURCE_FIELDS.contains(&field),
        None => false,
    }
}

/// The valid name closest to a misspelt one, if one is close.
fn nearest(name: &str) -> Option<String> {
    let mut candidates: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
    if let Some((src, _)) = name
        .strip_prefix("sources.")
        .and_then(|r| r.rsplit_once('.'))
    {
        candidates.extend(SOURCE_FIELDS.iter().map(|f| format!("sources.{src}.{f}")));
    }
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, &c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min()
        .map(|(_, c)| c)
}

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

/// One observation (or goal) source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub topic: String,
    pub kind: SourceKind,
    pub max_age_s: f64,
    pub best_effort: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    /// sensor_msgs/JointState: for each joint (by name), each field.
    JointState {
        joints: Vec<String>,
        fields: Vec<JointField>,
    },
    /// std_msgs/Float64MultiArray: the given data indices.
    Float64MultiArray {
        indices: Vec<usize>,
    },
    /// Fixed-layout messages: selected component indices into the full vector
    /// (see [`SourceKind::components`]).
    PoseStamped {
        select: Vec<usize>,
    },
    TwistStamped {
        select: Vec<usize>,
    },
    Imu {
        select: Vec<usize>,
    },
    Odometry {
        select: Vec<usize>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JointField {
    Position,
    Velocity,
    Effort,
}

impl SourceKind {
    /// Names of the full component vector of fixed-layout messages.
    pub fn components(kind: &str) -> Option<&'static [&'static str]> {
        const POSE: &[&str] = &["x", "y", "z", "qx", "qy", "qz", "qw"];
        const TWIST: &[&str] = &["vx", "vy", "vz", "wx", "wy", "wz"];
        const IMU: &[&str] = &["qx", "qy", "qz", "qw", "wx", "wy", "wz", "ax", "ay", "az"];
        const ODOM: &[&str] = &[
            "x", "y", "z", "qx", "qy", "qz", "qw", "vx", "vy", "vz", "wx", "wy", "wz",
        ];
        match kind {
            "pose_stamped" => Some(POSE),
            "twist_stamped" => Some(TWIST),
            "imu" => Some(IMU),
            "odometry" => Some(ODOM),
            _ => None,
        }
    }

    /// Values this source contributes to the board.
    pub fn width(&self) -> usize {
        match self {
            Self::JointState { joints, fields } => joints.len() * fields.len(),
            Self::Float64MultiArray { indices } => indices.len(),
            Self::PoseStamped { select }
            | Self::TwistStamped { select }
            | Self::Imu { select }
            | Self::Odometry { select } => select.len(),
        }
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
/// (`action.state_source`): what the stop needs ([`crate::stop`]).
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
    pub hot_swap_guard: crate::guard::GuardConfig,
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
    pub chunk: crate::control::ChunkConfig,
    /// The link to a fleet learner over the graph (`fleet.*`; None: off).
    pub fleet: Option<FleetSettings>,
    /// `live.allow_loosen` (start-up only): live changes may loosen the
    /// safety limits too (default: only tighten them; `crate::live`).
    pub live_allow_loosen: bool,
}

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

/// Typed access to the flat parameter map with "name: problem" errors.
struct Params<'a>(&'a ParamMap);

impl Params<'_> {
    fn get(&self, name: &str) -> Option<&ParamValue> {
        debug_assert!(
            is_known(name),
            "parameter '{name}' is missing from config::KEYS"
        );
        self.0
            .get(name)
            .filter(|v| !matches!(v, ParamValue::NotSet))
    }
    fn string(&self, name: &str, default: Option<&str>) -> Result<String> {
        match (self.get(name), default) {
            (Some(ParamValue::String(s)), _) => Ok(s.clone()),
            (None, Some(d)) => Ok(d.to_string()),
            (None, None) => Err(ConfigError::param(
                name,
                format!("parameter '{name}' is required"),
            )),
            (Some(v), _) => Err(ConfigError::param(
                name,
                format!("parameter '{name}' must be a string, got {v:?}"),
            )),
        }
    }
    /// A file-system path: a string with a leading `~` and `$VAR` /
    /// `${VAR}` / `${VAR:-default}` expanded ([`expand_path`]).
    fn path(&self, name: &str, default: Option<&str>) -> Result<String> {
        expand_path(&self.string(name, default)?)
            .map_err(|e| ConfigError::param(name, format!("'{name}': {e}")))
    }
    fn f64(&self, name: &str, default: f64) -> Result<f64> {
        match self.get(name) {
            None => Ok(default),
            Some(ParamValue::Double(v)) => Ok(*v),
            Some(ParamValue::Integer(v)) => Ok(*v as f64),
            Some(v) => Err(ConfigError::param(
                name,
                format!("parameter '{name}' must be a number, got {v:?}"),
            )),
        }
    }
    /// A number within `lo..=hi` (finite); `what` says the unit or rule.
    fn f64_in(&self, name: &str, default: f64, lo: f64, hi: f64, what: &str) -> Result<f64> {
        let v = self.f64(name, default)?;
        if v.is_finite() && (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(ConfigError::param(
                name,
                format!("'{name}' must be {what}, got {v}"),
            ))
        }
    }
    /// An integer within `lo..=hi`.
    fn i64_in(&self, name: &str, default: i64, lo: i64, hi: i64) -> Result<i64> {
        let v = self.i64(name, default)?;
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(ConfigError::param(
                name,
                format!("'{name}' must be within {lo}..={hi}, got {v}"),
            ))
        }
    }
    fn i64(&self, name: &str, default: i64) -> Result<i64> {
        match self.get(name) {
            None => Ok(default),
            Some(ParamValue::Integer(v)) => Ok(*v),
            Some(v) => Err(ConfigError::param(
                name,
                format!("parameter '{name}' must be an integer, got {v:?}"),
            )),
        }
    }
    fn bool(&self, name: &str, default: bool) -> Result<bool> {
        match self.get(name) {
            None => Ok(default),
            Some(ParamValue::Bool(v)) => Ok(*v),
            Some(v) => Err(ConfigError::param(
                name,
                format!("parameter '{name}' must be true or false, got {v:?}"),
            )),
        }
    }
    fn strings(&self, name: &str) -> Result<Vec<String>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(ParamValue::StringArray(v)) => Ok(v.clone()),
            Some(ParamValue::String(s)) if s.is_empty() => Ok(Vec::new()),
            Some(ParamValue::String(s)) => Ok(vec![s.clone()]),
            Some(v) => Err(ConfigError::param(
                name,
                format!("parameter '{name}' must be a list of strings, got {v:?}"),
            )),
        }
    }
    fn f64s(&self, name: &str) -> Result<Vec<f64>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(ParamValue::DoubleArray(v)) => Ok(v.clone()),
            Some(ParamValue::IntegerArray(v)) => Ok(v.iter().map(|&x| x as f64).collect()),
            Some(v) => Err(ConfigError::param(
                name,
                format!("parameter '{name}' must be a list of numbers, got {v:?}"),
            )),
        }
    }
    fn usizes(&self, name: &str) -> Result<Vec<usize>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(ParamValue::IntegerArray(v)) => v
                .iter()
                .map(|&x| {
                    usize::try_from(x).map_err(|_| {
                        ConfigError::param(name, format!("parameter '{name}': negative index {x}"))
                    })
                })
                .collect(),
            Some(v) => Err(ConfigError::param(
                name,
                format!("parameter '{name}' must be a list of integers, got {v:?}"),
            )),
        }
    }
}

/// `chunk.*`: the re-planning period and the boundary rule with its number.
fn chunk_config(p: &Params<'_>) -> Result<crate::control::ChunkConfig> {
    use crate::chunk::Boundary;
    let mut boundary: Boundary = p
        .string("chunk.boundary", Some("replace"))?
        .parse()
        .map_err(|e: String| ConfigError::param("chunk.boundary", e))?;
    match &mut boundary {
        Boundary::Ensemble { m } => {
            *m = p.f64_in("chunk.ensemble_m", 0.01, 0.0, 100.0, "within 0..100")? as f32
        }
        Boundary::Blend { steps } => {
            *steps = p.i64_in("chunk.blend_steps", 2, 1, 1 << 16)? as usize
        }
        Boundary::Replace => {}
    }
    let as_trajectory = p.bool("chunk.as_trajectory", false)?;
    if as_trajectory && boundary != Boundary::Replace {
        return Err(ConfigError::param(
            "chunk.as_trajectory",
            "'chunk.as_trajectory' sends each chunk whole, so it needs chunk.boundary 'replace'",
        ));
    }
    Ok(crate::control::ChunkConfig {
        replan_every: p.i64_in("chunk.replan_every", 0, 0, 1 << 16)? as usize,
        boundary,
        as_trajectory,
    })
}

/// The transition log's settings; `width` is the observation + goal width
/// that the distance reward's indices point into.
fn log_settings(p: &Params<'_>, width: usize) -> Result<Option<LogSettings>> {
    let Some(dir) = nonempty(p.path("log.dir", Some(""))?) else {
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
    let every = p.i64("log.every", 1)?;
    if every < 1 {
        return Err(ConfigError::param(
            "log.every",
            format!("'log.every' must be >= 1, got {every}"),
        ));
    }
    let flush = p.f64("log.flush_period", 0.05)?;
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
            action_cost: p.f64_in(
                "log.reward.action_cost",
                0.0,
                0.0,
                f64::MAX,
                "a number >= 0",
            )?,
        })
    };
    Ok(Some(LogSettings {
        dir,
        every: every as u64,
        flush_period_s: flush,
        queue: p.i64_in("log.queue", 4096, 1, 1 << 20)? as usize,
        reward_topic: nonempty(p.string("log.reward_topic", Some(""))?),
        episode_topic: nonempty(p.string("log.episode_topic", Some(""))?),
        terminal_topic: nonempty(p.string("log.terminal_topic", Some(""))?),
        distance_reward,
        step_source: nonempty(p.string("log.step_source", Some(""))?)
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

fn fleet_settings(p: &Params<'_>, has_log: bool, has_swap: bool) -> Result<Option<FleetSettings>> {
    let Some(robot_id) = nonempty(p.string("fleet.robot_id", Some(""))?) else {
        return Ok(None);
    };
    if !crate::fleet::valid_robot_id(&robot_id) {
        return Err(ConfigError::param(
            "fleet.robot_id",
            format!("'fleet.robot_id': '{robot_id}' must start with a letter and hold only letters, digits and '_' (at most 64)"),
        ));
    }
    let stream = p.bool("fleet.stream", true)?;
    if stream && !has_log {
        return Err(ConfigError::param(
            "fleet.stream",
            "'fleet.stream' sends the transition log: set 'log.dir' (or fleet.stream: false)",
        ));
    }
    let policy = match p.string("fleet.policy", Some("shared"))?.as_str() {
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
        window: p.i64_in("fleet.window", 2000, 1, 1_000_000)? as u64,
        batch_period_s: p.f64_in("fleet.batch_period", 0.1, 0.005, 10.0, "within 0.005..10 s")?,
        learner: match nonempty(p.string("fleet.learner", Some(""))?) {
            Some(id) if !crate::fleet::valid_learner_id(&id) => {
                return Err(ConfigError::param(
                    "fleet.learner",
                    format!("'fleet.learner': '{id}' is not a learner id (1..64 letters, digits, '_' or '-'; flowpilot_fleet prints its id at start)"),
                ))
            }
            id => id,
        },
        signer: match nonempty(p.path("fleet.signing_key", Some(""))?) {
            None => None,
            Some(path) => Some(std::sync::Arc::new(
                crate::signing::PolicySigner::load(std::path::Path::new(&path)).map_err(|e| {
                    ConfigError::param("fleet.signing_key", format!("'fleet.signing_key': {e}"))
                })?,
            )),
        },
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
fn guard_config(p: &Params<'_>, log: Option<&LogSettings>) -> Result<crate::guard::GuardConfig> {
    let episodes = p.i64("hot_swap.guard.episodes", 20)?;
    let margin = p.f64("hot_swap.guard.margin", 0.5)?;
    let z = p.f64("hot_swap.guard.z", 2.0)?;
    let fed = log.is_some_and(|l| l.reward_topic.is_some() && l.episode_topic.is_some());
    let hold = p.bool("hot_swap.guard.hold", false)? && fed;
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
    Ok(crate::guard::GuardConfig {
        episodes: episodes as usize,
        margin,
        z,
        hold,
    })
}

fn source(p: &Params<'_>, name: &str) -> Result<SourceConfig> {
    let k = |f: &str| format!("sources.{name}.{f}");
    let kind_s = p.string(&k("type"), None)?;
    let kind = match kind_s.as_str() {
        "joint_state" => {
            let joints = p.strings(&k("joints"))?;
            if joints.is_empty() {
                return Err(ConfigError::param(
                    k("joints"),
                    format!("'{}' must list the joint names to read", k("joints")),
                ));
            }
            let mut fields = Vec::new();
            for f in p.strings(&k("fields"))? {
                fields.push(match f.as_str() {
                    "position" => JointField::Position,
                    "velocity" => JointField::Velocity,
                    "effort" => JointField::Effort,
                    o => {
                        return Err(ConfigError::param(
                            k("fields"),
                            format!(
                                "'{}': unknown field '{o}' (position, velocity, effort)",
                                k("fields")
                            ),
                        ))
                    }
                });
            }
            if fields.is_empty() {
                fields.push(JointField::Position);
            }
            SourceKind::JointState { joints, fields }
        }
        "float64_multi_array" => {
            // A message wider than this is refused at the subscription
            // (joint_map::MAX_VALUES), so no wider source can ever be read;
            // bounding it here also keeps a huge `size` from reaching an
            // allocation (libFuzzer found a capacity-overflow panic).
            let max = crate::joint_map::MAX_VALUES;
            let mut indices = p.usizes(&k("indices"))?;
            if let Some(i) = indices.iter().find(|&&i| i >= max) {
                return Err(ConfigError::param(
                    k("indices"),
                    format!("'{}' entries must be below {max}, got {i}", k("indices")),
                ));
            }
            if indices.is_empty() {
                let n = p.i64_in(&k("size"), 0, 0, max as i64)?;
                if n <= 0 {
                    return Err(ConfigError::param(
                        k("indices"),
                        format!(
                            "'{}' needs 'indices' (list) or 'size' (take data[0..size])",
                            k("type")
                        ),
                    ));
                }
                indices = (0..n as usize).collect();
            }
            SourceKind::Float64MultiArray { indices }
        }
        "pose_stamped" | "twist_stamped" | "imu" | "odometry" => {
            let all = SourceKind::components(&kind_s).expect("known kind");
            let names = p.strings(&k("components"))?;
            let select = if names.is_empty() {
                (0..all.len()).collect()
            } else {
                names
                    .iter()
                    .map(|n| {
                        all.iter().position(|c| c == n).ok_or_else(|| {
                            ConfigError::param(
                                k("components"),
                                format!("'{}': '{n}' is not one of {all:?}", k("components")),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            };
            match kind_s.as_str() {
                "pose_stamped" => SourceKind::PoseStamped { select },
                "twist_stamped" => SourceKind::TwistStamped { select },
                "imu" => SourceKind::Imu { select },
                _ => SourceKind::Odometry { select },
            }
        }
        o => {
            return Err(ConfigError::param(
                k("type"),
                format!(
                    "'{}': unknown source type '{o}' (joint_state, float64_multi_array, pose_stamped, twist_stamped, imu, odometry)",
                    k("type")
                ),
            ))
        }
    };
    let qos = p.string(&k("qos"), Some("best_effort"))?;
    Ok(SourceConfig {
        name: name.to_string(),
        topic: p.string(&k("topic"), None)?,
        kind,
        max_age_s: p.f64_in(&k("max_age"), 0.5, 1e-3, 3600.0, "within 0.001..3600 s")?,
        best_effort: parse_qos(&k("qos"), &qos)?,
    })
}

fn sources(p: &Params<'_>, list: &str, role: &'static str) -> Result<Vec<SourceConfig>> {
    p.strings(list)?
        .iter()
        .map(|n| {
            source(p, n).map_err(|e| ConfigError::Source {
                role,
                name: n.clone(),
                error: Box::new(e),
            })
        })
        .collect()
}

fn parse_qos(name: &str, v: &str) -> Result<bool> {
    match v {
        "best_effort" => Ok(true),
        "reliable" => Ok(false),
        o => Err(ConfigError::param(
            name,
            format!("'{name}': unknown QoS '{o}' (best_effort or reliable)"),
        )),
    }
}

impl NodeConfig {
    /// Parse and check the whole parameter set; the first problem found is
    /// returned, naming its parameter.
    pub fn from_params(map: &ParamMap) -> Result<Self> {
        reject_unknown(map)?;
        let p = Params(map);
        let rate_hz = p.f64("rate_hz", 100.0)?;
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
        let action = match p
            .string("action.type", Some("float64_multi_array"))?
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
                frame_id: p.string("action.frame_id", Some("base_link"))?,
            },
            o => return Err(ConfigError::param(
                "action.type",
                format!("'action.type': unknown '{o}' (float64_multi_array, joint_trajectory, twist, twist_stamped)"),
            )),
        };
        let safe: SafeBehaviour =
            p.string("safe_behaviour", Some("hold"))?
                .parse()
                .map_err(|e: String| {
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
                let t = p.f64("temperature", 1.0)?;
                if !(0.0..=1.0).contains(&t) {
                    return Err(ConfigError::param(
                        "temperature",
                        format!("'temperature' must be within 0..1, got {t}"),
                    ));
                }
                Some(t as f32)
            }
        };
        let prio = p.i64_in("rt.fifo_priority", 0, 0, 99)?;
        let cpu = p.i64_in("rt.cpu", -1, -1, MAX_CPU as i64)?;
        let width: usize = observations
            .iter()
            .chain(&goals)
            .map(|s| s.kind.width())
            .sum();
        let log = log_settings(&p, width)?;
        Self {
            model: p.path("model", None)?,
            rate_hz,
            seed: p.i64_in("seed", 0, 0, i64::MAX)? as u64,
            temperature,
            safe,
            warmup_ticks: p.i64_in("warmup_ticks", 10, 0, 1_000_000)? as u64,
            startup_hold_s: p.f64_in("startup_hold", 1.0, 0.0, 3600.0, "within 0..3600 s")?,
            max_future_stamp_s: p.f64_in("max_future_stamp", 0.05, 0.0, 60.0, "within 0..60 s")?,
            max_delta: (!max_delta.is_empty()).then_some(max_delta),
            observations,
            goals,
            action_topic: p.string("action.topic", Some("~/action"))?,
            action,
            command,
            action_best_effort: parse_qos(
                "action.qos",
                &p.string("action.qos", Some("reliable"))?,
            )?,
            fifo_priority: (prio > 0).then_some(prio as i32),
            cpu: (cpu >= 0).then_some(cpu as usize),
            mlockall: p.bool("rt.mlockall", false)?,
            autostart: p.bool("autostart", true)?,
            diagnostics_period_s: p.f64_in(
                "diagnostics_period",
                1.0,
                0.01,
                3600.0,
                "within 0.01..3600 s",
            )?,
            stall_periods: p.i64_in("watchdog.stall_periods", 50, 2, 1_000_000)? as u32,
            hot_swap_dir: nonempty(p.path("hot_swap.dir", Some(""))?),
            hot_swap_poll_s: p.f64_in(
                "hot_swap.poll_period",
                0.5,
                0.01,
                3600.0,
                "within 0.01..3600 s",
            )?,
            hot_swap_max_divergence: p.f64_in(
                "hot_swap.max_divergence",
                0.0,
                0.0,
                f64::MAX,
                "a number >= 0 (0: off)",
            )?,
            hot_swap_allow_spec_change: p.bool("hot_swap.allow_spec_change", false)?,
            hot_swap_guard: guard_config(&p, log.as_ref())?,
            hot_swap_trusted_keys: trusted_keys(&p)?,
            hot_swap_resume: p.bool("hot_swap.resume", true)?,
            log,
            override_input: nonempty(p.string("override.topic", Some(""))?)
                .map(|t| {
                    Ok::<_, ConfigError>((
                        t,
                        p.f64_in("override.max_age", 0.2, 1e-3, 60.0, "within 0.001..60 s")?,
                    ))
                })
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
            finetune_exe: nonempty(p.path("finetune.exe", Some(""))?),
            chunk: chunk_config(&p)?,
            fleet: None,
            live_allow_loosen: p.bool("live.allow_loosen", false)?,
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
/// position is a jump to 0; `hold` on an effort is not a hold).
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
        state_source: nonempty(p.string("action.state_source", Some(""))?),
    };
    if safe == SafeBehaviour::Hold && c.has(Interface::Effort) {
        return Err(ConfigError::param(
            "safe_behaviour",
            "'safe_behaviour': hold is refused on an effort interface (a torque cannot hold a \
             place; the stop sends zero effort): use zero or stop",
        ));
    }
    if safe == SafeBehaviour::Zero && c.has(Interface::Position) {
        return Err(ConfigError::param(
            "safe_behaviour",
            "'safe_behaviour': zero is refused on a position interface (0 is a place, and the \
             arm would jump there): use hold or stop",
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
mod tests {
    use super::*;
    use ParamValue as V;

    fn s(v: &str) -> ParamValue {
        V::String(v.into())
    }
    fn ss(v: &[&str]) -> ParamValue {
        V::StringArray(v.iter().map(|x| x.to_string()).collect())
    }

    /// The smallest valid parameter set: a model and one source.
    fn minimal() -> ParamMap {
        [
            ("model", s("policy.safetensors")),
            ("observations", ss(&["arm"])),
            ("sources.arm.type", s("joint_state")),
            ("sources.arm.topic", s("/joint_states")),
            ("sources.arm.joints", ss(&["j1", "j2"])),
            ("action.interface", s("velocity")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn with(mut m: ParamMap, kvs: &[(&str, ParamValue)]) -> ParamMap {
        for (k, v) in kvs {
            m.insert(k.to_string(), v.clone());
        }
        m
    }

    fn err(m: &ParamMap) -> ConfigError {
        NodeConfig::from_params(m).expect_err("must be rejected")
    }

    /// Each set is refused, naming `param`, with exactly `msg`.
    fn assert_rejected(cases: Vec<(ParamMap, &str, &str)>) {
        for (m, param, msg) in cases {
            let e = err(&m);
            assert_eq!(e.parameter(), param, "{e}");
            assert_eq!(chain(&e), msg);
        }
    }

    /// The whole chain, as the node prints it (`{:#}` of the anyhow error).
    fn chain(e: &ConfigError) -> String {
        let mut s = e.to_string();
        let mut cur: &dyn std::error::Error = e;
        while let Some(next) = cur.source() {
            s = format!("{s}: {next}");
            cur = next;
        }
        s
    }

    #[test]
    fn defaults() {
        let c = NodeConfig::from_params(&minimal()).unwrap();
        assert_eq!(c.model, "policy.safetensors");
        assert_eq!(c.rate_hz, 100.0);
        assert_eq!(c.seed, 0);
        assert_eq!(c.safe, SafeBehaviour::Hold);
        assert_eq!(c.warmup_ticks, 10);
        assert_eq!(c.startup_hold_s, 1.0);
        assert!(c.max_delta.is_none());
        assert!(c.goals.is_empty());
        assert_eq!(c.action_topic, "~/action");
        assert_eq!(c.action, ActionKind::Float64MultiArray);
        assert_eq!(c.command.interfaces, vec![Interface::Velocity]);
        assert!(c.command.state_source.is_none());
        assert!(!c.action_best_effort);
        assert_eq!((c.fifo_priority, c.cpu, c.mlockall), (None, None, false));
        assert_eq!(c.diagnostics_period_s, 1.0);
        assert!(c.hot_swap_dir.is_none());
        assert_eq!(c.hot_swap_poll_s, 0.5);
        assert_eq!(c.hot_swap_max_divergence, 0.0);
        assert_eq!(c.hot_swap_guard.episodes, 20);
        assert!(!c.hot_swap_guard.hold);
        assert!(c.log.is_none());
        assert!(c.override_input.is_none());
        assert!(c.finetune_args.is_empty() && c.finetune_exe.is_none());
        let arm = &c.observations[0];
        assert_eq!(arm.name, "arm");
        assert_eq!(arm.topic, "/joint_states");
        assert_eq!(arm.max_age_s, 0.5);
        assert!(arm.best_effort);
        assert_eq!(
            arm.kind,
            SourceKind::JointState {
                joints: vec!["j1".into(), "j2".into()],
                fields: vec![JointField::Position],
            }
        );
        assert_eq!(arm.kind.width(), 2);
    }

    #[test]
    fn full_config() {
        let m = with(
            minimal(),
            &[
                ("rate_hz", V::Integer(250)),
                ("seed", V::Integer(7)),
                ("safe_behaviour", s("stop")),
                ("warmup_ticks", V::Integer(0)),
                ("startup_hold", V::Double(0.25)),
                ("max_delta", V::IntegerArray(vec![1, 2])),
                ("sources.arm.fields", ss(&["position", "velocity"])),
                ("sources.arm.qos", s("reliable")),
                ("sources.arm.max_age", V::Double(0.1)),
                ("goals", s("target")),
                ("sources.target.type", s("pose_stamped")),
                ("sources.target.topic", s("/goal")),
                ("sources.target.components", ss(&["x", "qw"])),
                ("action.interface", s("position")),
                ("action.type", s("joint_trajectory")),
                ("action.joints", ss(&["j1", "j2"])),
                ("action.topic", s("/cmd")),
                ("action.qos", s("best_effort")),
                ("rt.fifo_priority", V::Integer(80)),
                ("rt.cpu", V::Integer(3)),
                ("rt.mlockall", V::Bool(true)),
                ("diagnostics_period", V::Double(2.0)),
                ("hot_swap.dir", s("/tmp/ckpt")),
                ("hot_swap.poll_period", V::Double(0.1)),
                ("hot_swap.max_divergence", V::Double(0.3)),
                ("log.dir", s("/tmp/log")),
                ("log.every", V::Integer(5)),
                ("log.flush_period", V::Double(0.2)),
                ("log.queue", V::Integer(1)),
                ("log.reward_topic", s("/reward")),
                ("log.episode_topic", s("/episode")),
                ("log.terminal_topic", s("")),
                ("log.reward.distance_a", V::IntegerArray(vec![0, 1])),
                ("log.reward.distance_b", V::IntegerArray(vec![4, 5])),
                ("log.reward.action_cost", V::Double(0.01)),
                ("override.topic", s("/human")),
                ("override.max_age", V::Double(0.5)),
                ("finetune.args", ss(&["--steps", "10"])),
                ("finetune.exe", s("/bin/flowpilot")),
                ("an.unused.parameter", V::NotSet),
            ],
        );
        let c = NodeConfig::from_params(&m).unwrap();
        assert_eq!(c.rate_hz, 250.0);
        assert_eq!(c.seed, 7);
        assert_eq!(c.safe, SafeBehaviour::Stop);
        assert_eq!(c.warmup_ticks, 0);
        assert_eq!(c.startup_hold_s, 0.25);
        assert_eq!(c.max_delta, Some(vec![1.0, 2.0]));
        let arm = &c.observations[0];
        assert!(!arm.best_effort);
        assert_eq!(arm.max_age_s, 0.1);
        assert_eq!(arm.kind.width(), 4);
        assert_eq!(c.goals.len(), 1, "a single string is a one-item list");
        assert_eq!(
            c.goals[0].kind,
            SourceKind::PoseStamped { select: vec![0, 6] }
        );
        assert_eq!(c.sources().count(), 2);
        assert_eq!(
            c.action,
            ActionKind::JointTrajectory {
                joints: vec!["j1".into(), "j2".into()]
            }
        );
        assert_eq!(c.action_topic, "/cmd");
        assert!(c.action_best_effort);
        assert_eq!(
            (c.fifo_priority, c.cpu, c.mlockall),
            (Some(80), Some(3), true)
        );
        assert_eq!(c.diagnostics_period_s, 2.0);
        assert_eq!(c.hot_swap_dir.as_deref(), Some("/tmp/ckpt"));
        assert_eq!(c.hot_swap_poll_s, 0.1);
        assert_eq!(c.hot_swap_max_divergence, 0.3);
        assert!(!c.hot_swap_guard.hold, "off by default");
        let on = with(m.clone(), &[("hot_swap.guard.hold", V::Bool(true))]);
        assert!(NodeConfig::from_params(&on).unwrap().hot_swap_guard.hold);
        let unfed = with(on, &[("log.episode_topic", s(""))]);
        assert!(
            !NodeConfig::from_params(&unfed).unwrap().hot_swap_guard.hold,
            "no episode returns reach the guard: holding would never end"
        );
        let l = c.log.unwrap();
        assert_eq!(l.dir, "/tmp/log");
        assert_eq!(l.every, 5);
        assert_eq!(l.flush_period_s, 0.2);
        assert_eq!(l.queue, 1);
        assert_eq!(l.reward_topic.as_deref(), Some("/reward"));
        assert_eq!(l.episode_topic.as_deref(), Some("/episode"));
        assert_eq!(l.terminal_topic, None, "empty means off");
        let r = l.distance_reward.unwrap();
        assert_eq!((r.a, r.b, r.action_cost), (vec![0, 1], vec![4, 5], 0.01));
        assert_eq!(c.override_input, Some(("/human".into(), 0.5)));
        assert_eq!(c.finetune_args, vec!["--steps", "10"]);
        assert_eq!(c.finetune_exe.as_deref(), Some("/bin/flowpilot"));
    }

    #[test]
    fn every_source_type() {
        let m = with(
            minimal(),
            &[
                ("observations", ss(&["a", "b", "c", "d", "e"])),
                ("sources.a.type", s("float64_multi_array")),
                ("sources.a.topic", s("/a")),
                ("sources.a.size", V::Integer(3)),
                ("sources.b.type", s("float64_multi_array")),
                ("sources.b.topic", s("/b")),
                ("sources.b.indices", V::IntegerArray(vec![4, 2])),
                ("sources.c.type", s("twist_stamped")),
                ("sources.c.topic", s("/c")),
                ("sources.d.type", s("imu")),
                ("sources.d.topic", s("/d")),
                ("sources.d.components", ss(&["az"])),
                ("sources.e.type", s("odometry")),
                ("sources.e.topic", s("/e")),
                ("action.type", s("twist_stamped")),
            ],
        );
        let c = NodeConfig::from_params(&m).unwrap();
        let kinds: Vec<_> = c.observations.iter().map(|s| s.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                SourceKind::Float64MultiArray {
                    indices: vec![0, 1, 2]
                },
                SourceKind::Float64MultiArray {
                    indices: vec![4, 2]
                },
                SourceKind::TwistStamped {
                    select: (0..6).collect()
                },
                SourceKind::Imu { select: vec![9] },
                SourceKind::Odometry {
                    select: (0..13).collect()
                },
            ]
        );
        assert_eq!(
            c.action,
            ActionKind::TwistStamped {
                frame_id: "base_link".into()
            }
        );
    }

    #[test]
    fn rejected_values_name_their_parameter() {
        let cases: Vec<(ParamMap, &str, &str)> = vec![
            (
                {
                    let mut m = minimal();
                    m.remove("model");
                    m
                },
                "model",
                "parameter 'model' is required",
            ),
            (
                with(minimal(), &[("model", V::NotSet)]),
                "model",
                "parameter 'model' is required",
            ),
            (
                with(minimal(), &[("model", V::Integer(3))]),
                "model",
                "parameter 'model' must be a string, got Integer(3)",
            ),
            (
                with(minimal(), &[("rate_hz", V::Double(5000.0))]),
                "rate_hz",
                "'rate_hz' must be within 10..1000, got 5000",
            ),
            (
                with(minimal(), &[("rate_hz", s("fast"))]),
                "rate_hz",
                "parameter 'rate_hz' must be a number, got String(\"fast\")",
            ),
            (
                with(minimal(), &[("seed", V::Double(1.5))]),
                "seed",
                "parameter 'seed' must be an integer, got Double(1.5)",
            ),
            (
                with(minimal(), &[("rt.mlockall", V::Integer(1))]),
                "rt.mlockall",
                "parameter 'rt.mlockall' must be true or false, got Integer(1)",
            ),
            (
                with(minimal(), &[("observations", ss(&[]))]),
                "observations",
                "'observations' must list at least one source name",
            ),
            (
                with(minimal(), &[("observations", V::Integer(1))]),
                "observations",
                "parameter 'observations' must be a list of strings, got Integer(1)",
            ),
            (
                with(minimal(), &[("sources.arm.type", s("laser"))]),
                "sources.arm.type",
                "observation source 'arm': 'sources.arm.type': unknown source type 'laser' (joint_state, float64_multi_array, pose_stamped, twist_stamped, imu, odometry)",
            ),
            (
                with(minimal(), &[("sources.arm.qos", s("fast"))]),
                "sources.arm.qos",
                "observation source 'arm': 'sources.arm.qos': unknown QoS 'fast' (best_effort or reliable)",
            ),
            (
                with(minimal(), &[("sources.arm.joints", ss(&[]))]),
                "sources.arm.joints",
                "observation source 'arm': 'sources.arm.joints' must list the joint names to read",
            ),
            (
                with(minimal(), &[("sources.arm.fields", ss(&["torque"]))]),
                "sources.arm.fields",
                "observation source 'arm': 'sources.arm.fields': unknown field 'torque' (position, velocity, effort)",
            ),
            (
                {
                    let mut m = minimal();
                    m.remove("sources.arm.topic");
                    m
                },
                "sources.arm.topic",
                "observation source 'arm': parameter 'sources.arm.topic' is required",
            ),
            (
                with(
                    minimal(),
                    &[
                        ("goals", ss(&["g"])),
                        ("sources.g.type", s("float64_multi_array")),
                        ("sources.g.topic", s("/g")),
                    ],
                ),
                "sources.g.indices",
                "goal source 'g': 'sources.g.type' needs 'indices' (list) or 'size' (take data[0..size])",
            ),
            (
                with(
                    minimal(),
                    &[
                        ("goals", ss(&["g"])),
                        ("sources.g.type", s("float64_multi_array")),
                        ("sources.g.topic", s("/g")),
                        ("sources.g.indices", V::IntegerArray(vec![0, -1])),
                    ],
                ),
                "sources.g.indices",
                "goal source 'g': parameter 'sources.g.indices': negative index -1",
            ),
            (
                with(
                    minimal(),
                    &[
                        ("goals", ss(&["g"])),
                        ("sources.g.type", s("imu")),
                        ("sources.g.topic", s("/g")),
                        ("sources.g.components", ss(&["x"])),
                    ],
                ),
                "sources.g.components",
                "goal source 'g': 'sources.g.components': 'x' is not one of [\"qx\", \"qy\", \"qz\", \"qw\", \"wx\", \"wy\", \"wz\", \"ax\", \"ay\", \"az\"]",
            ),
            (
                with(minimal(), &[("safe_behaviour", s("panic"))]),
                "safe_behaviour",
                "'safe_behaviour': unknown safe behaviour 'panic' (hold, zero or stop)",
            ),
            (
                with(minimal(), &[("action.type", s("wrench"))]),
                "action.type",
                "'action.type': unknown 'wrench' (float64_multi_array, joint_trajectory, twist, twist_stamped)",
            ),
            (
                with(minimal(), &[("action.type", s("joint_trajectory"))]),
                "action.joints",
                "'action.joints' must name the joints for joint_trajectory",
            ),
            (
                with(minimal(), &[("fleet.robot_id", s("robot-1"))]),
                "fleet.robot_id",
                "'fleet.robot_id': 'robot-1' must start with a letter and hold only letters, digits and '_' (at most 64)",
            ),
            (
                with(minimal(), &[("fleet.robot_id", s("r1"))]),
                "fleet.stream",
                "'fleet.stream' sends the transition log: set 'log.dir' (or fleet.stream: false)",
            ),
            (
                with(
                    minimal(),
                    &[("fleet.robot_id", s("r1")), ("log.dir", s("/l"))],
                ),
                "fleet.policy",
                "'fleet.policy' takes versions through the hot swap: set 'hot_swap.dir' (or fleet.policy: none)",
            ),
            (
                with(
                    minimal(),
                    &[
                        ("fleet.robot_id", s("r1")),
                        ("fleet.stream", V::Bool(false)),
                        ("fleet.policy", s("mine")),
                    ],
                ),
                "fleet.policy",
                "'fleet.policy': unknown 'mine' (shared, own or none)",
            ),
            (
                with(minimal(), &[("action.qos", s("sometimes"))]),
                "action.qos",
                "'action.qos': unknown QoS 'sometimes' (best_effort or reliable)",
            ),
            (
                with(minimal(), &[("max_delta", s("1"))]),
                "max_delta",
                "parameter 'max_delta' must be a list of numbers, got String(\"1\")",
            ),
            (
                with(
                    minimal(),
                    &[("log.dir", s("/l")), ("log.every", V::Integer(0))],
                ),
                "log.every",
                "'log.every' must be >= 1, got 0",
            ),
            (
                with(
                    minimal(),
                    &[("log.dir", s("/l")), ("log.flush_period", V::Double(2.0))],
                ),
                "log.flush_period",
                "'log.flush_period' must be within 0.001..1 s, got 2",
            ),
            (
                with(
                    minimal(),
                    &[
                        ("log.dir", s("/l")),
                        ("log.reward.distance_a", V::IntegerArray(vec![0])),
                    ],
                ),
                "log.reward.distance_b",
                "'log.reward.distance_a' and 'log.reward.distance_b' must have the same length",
            ),
            (
                with(
                    minimal(),
                    &[
                        ("log.dir", s("/l")),
                        ("log.reward.distance_a", V::DoubleArray(vec![0.0])),
                    ],
                ),
                "log.reward.distance_a",
                "parameter 'log.reward.distance_a' must be a list of integers, got DoubleArray([0.0])",
            ),
            (
                with(
                    minimal(),
                    &[
                        ("override.topic", s("/h")),
                        ("override.max_age", V::Bool(true)),
                    ],
                ),
                "override.max_age",
                "parameter 'override.max_age' must be a number, got Bool(true)",
            ),
        ];
        assert_rejected(cases);
    }

    /// Values that used to reach a panic on the control or log writer
    /// thread (issue: negative max_delta in f64::clamp, CPU_SET out of
    /// bounds, distance indices past the record) are refused at start-up.
    #[test]
    fn values_that_would_panic_a_thread_are_refused() {
        let cases: Vec<(ParamMap, &str, &str)> = vec![
            (
                with(minimal(), &[("max_delta", V::DoubleArray(vec![0.1, -0.1]))]),
                "max_delta",
                "'max_delta' entries must be finite and > 0 (a per-tick step), got -0.1",
            ),
            (
                with(minimal(), &[("max_delta", V::DoubleArray(vec![f64::NAN, 0.1]))]),
                "max_delta",
                "'max_delta' entries must be finite and > 0 (a per-tick step), got NaN",
            ),
            (
                with(minimal(), &[("rt.cpu", V::Integer(1024))]),
                "rt.cpu",
                "'rt.cpu' must be within -1..=1023, got 1024",
            ),
            (
                with(minimal(), &[("rt.fifo_priority", V::Integer(120))]),
                "rt.fifo_priority",
                "'rt.fifo_priority' must be within 0..=99, got 120",
            ),
            (
                with(
                    minimal(),
                    &[
                        ("log.dir", s("/l")),
                        ("log.reward.distance_a", V::IntegerArray(vec![0])),
                        ("log.reward.distance_b", V::IntegerArray(vec![2])),
                    ],
                ),
                "log.reward.distance_b",
                "'log.reward.distance_b': index 2 is outside the observation and goal (2 values)",
            ),
            (
                with(minimal(), &[("sources.arm.max_age", V::Double(-1.0))]),
                "sources.arm.max_age",
                "observation source 'arm': 'sources.arm.max_age' must be within 0.001..3600 s, got -1",
            ),
            (
                with(minimal(), &[("diagnostics_period", V::Double(0.0))]),
                "diagnostics_period",
                "'diagnostics_period' must be within 0.01..3600 s, got 0",
            ),
            (
                with(minimal(), &[("hot_swap.max_divergence", V::Double(f64::INFINITY))]),
                "hot_swap.max_divergence",
                "'hot_swap.max_divergence' must be a number >= 0 (0: off), got inf",
            ),
            (
                with(minimal(), &[("max_future_stamp", V::Double(-0.1))]),
                "max_future_stamp",
                "'max_future_stamp' must be within 0..60 s, got -0.1",
            ),
            (
                with(minimal(), &[("warmup_ticks", V::Integer(-3))]),
                "warmup_ticks",
                "'warmup_ticks' must be within 0..=1000000, got -3",
            ),
            (
                with(minimal(), &[("log.dir", s("/l")), ("log.queue", V::Integer(0))]),
                "log.queue",
                "'log.queue' must be within 1..=1048576, got 0",
            ),
            (
                with(minimal(), &[("seed", V::Integer(-3))]),
                "seed",
                "'seed' must be within 0..=9223372036854775807, got -3",
            ),
        ];
        assert_rejected(cases);
    }

    #[test]
    fn unknown_parameters_are_refused_with_the_nearest_name() {
        let cases: Vec<(ParamMap, &str, &str)> = vec![
            (
                with(minimal(), &[("safe_behavior", s("zero"))]),
                "safe_behavior",
                "unknown parameter 'safe_behavior' (did you mean 'safe_behaviour'?)",
            ),
            (
                with(minimal(), &[("hot_swap.max_divergance", V::Double(0.1))]),
                "hot_swap.max_divergance",
                "unknown parameter 'hot_swap.max_divergance' (did you mean 'hot_swap.max_divergence'?)",
            ),
            (
                with(minimal(), &[("sources.arm.max_agee", V::Double(0.1))]),
                "sources.arm.max_agee",
                "unknown parameter 'sources.arm.max_agee' (did you mean 'sources.arm.max_age'?)",
            ),
            (
                with(minimal(), &[("colour", s("red"))]),
                "colour",
                "unknown parameter 'colour' (docs/configuration.md lists them all)",
            ),
        ];
        assert_rejected(cases);
        // What ROS itself sets on every node is accepted.
        let ros = with(
            minimal(),
            &[
                ("use_sim_time", V::Bool(false)),
                ("qos_overrides./tf.subscription.depth", V::Integer(10)),
            ],
        );
        assert!(NodeConfig::from_params(&ros).is_ok());
    }

    #[test]
    fn path_parameters_expand_home_and_environment_like_a_shell() {
        let home = std::env::var("HOME").expect("HOME is set where tests run");
        let m = with(
            minimal(),
            &[
                ("model", s("~/p.safetensors")),
                ("log.dir", s("${HOME}/log")),
                (
                    "hot_swap.dir",
                    s("${FLOWPILOT_SURELY_UNSET_VAR:-~/state}/ckpt"),
                ),
                (
                    "finetune.args",
                    ss(&["--prior", "$HOME/demos.npz", "--gamma", "0.9"]),
                ),
            ],
        );
        let c = NodeConfig::from_params(&m).unwrap();
        assert_eq!(c.model, format!("{home}/p.safetensors"));
        assert_eq!(c.log.unwrap().dir, format!("{home}/log"));
        // a default is taken as written (a shell would not expand its ~ either)
        assert_eq!(c.hot_swap_dir.as_deref(), Some("~/state/ckpt"));
        assert_eq!(
            c.finetune_args,
            vec![
                "--prior".to_string(),
                format!("{home}/demos.npz"),
                "--gamma".into(),
                "0.9".into()
            ]
        );
        for key in ["hot_swap.dir", "finetune.args"] {
            let v = if key == "finetune.args" {
                ss(&["$FLOWPILOT_SURELY_UNSET_VAR/x"])
            } else {
                s("$FLOWPILOT_SURELY_UNSET_VAR/x")
            };
            let e = NodeConfig::from_params(&with(minimal(), &[(key, v)])).unwrap_err();
            assert_eq!(e.parameter(), key);
            assert!(e.to_string().contains("FLOWPILOT_SURELY_UNSET_VAR"), "{e}");
        }
    }

    #[test]
    fn an_array_source_wider_than_a_message_can_be_is_refused() {
        // libFuzzer: a huge `size` panicked with a capacity overflow
        // (tests/fuzz_corpus/config_parser/capacity-overflow-size.bin).
        let arr = |kvs: &[(&str, ParamValue)]| {
            let mut m = with(minimal(), &[("sources.arm.type", s("float64_multi_array"))]);
            m.remove("sources.arm.joints");
            with(m, kvs)
        };
        assert_rejected(vec![
            (
                arr(&[("sources.arm.size", V::Integer(1 << 40))]),
                "sources.arm.size",
                "observation source 'arm': 'sources.arm.size' must be within 0..=65536, got 1099511627776",
            ),
            (
                arr(&[("sources.arm.indices", V::IntegerArray(vec![0, 70_000]))]),
                "sources.arm.indices",
                "observation source 'arm': 'sources.arm.indices' entries must be below 65536, got 70000",
            ),
        ]);
        assert!(NodeConfig::from_params(&arr(&[("sources.arm.size", V::Integer(3))])).is_ok());
    }

    #[test]
    fn chunk_parameters_pick_the_boundary_rule_and_its_number() {
        use crate::chunk::Boundary;
        let c = NodeConfig::from_params(&minimal()).unwrap();
        assert_eq!(c.chunk, crate::control::ChunkConfig::default());
        let c = NodeConfig::from_params(&with(
            minimal(),
            &[
                ("chunk.boundary", s("ensemble")),
                ("chunk.ensemble_m", V::Double(0.2)),
                ("chunk.replan_every", V::Integer(1)),
            ],
        ))
        .unwrap();
        assert_eq!(c.chunk.boundary, Boundary::Ensemble { m: 0.2 });
        assert_eq!(c.chunk.replan_every, 1);
        let c = NodeConfig::from_params(&with(
            minimal(),
            &[
                ("chunk.boundary", s("blend")),
                ("chunk.blend_steps", V::Integer(3)),
            ],
        ))
        .unwrap();
        assert_eq!(c.chunk.boundary, Boundary::Blend { steps: 3 });
        let e = NodeConfig::from_params(&with(minimal(), &[("chunk.boundary", s("ensemb"))]))
            .unwrap_err();
        assert_eq!(e.parameter(), "chunk.boundary");
        assert!(e.to_string().contains("replace, ensemble or blend"), "{e}");
    }

    #[test]
    fn unset_log_dir_ignores_log_parameters() {
        // log.* is only read when logging is on, as before
        let m = with(minimal(), &[("log.every", V::Integer(0))]);
        assert!(NodeConfig::from_params(&m).unwrap().log.is_none());
    }

    #[test]
    fn action_kind_checks_the_model_width() {
        let traj = ActionKind::JointTrajectory {
            joints: vec!["a".into(), "b".into()],
        };
        assert!(traj.check_act_dim(2).is_ok());
        let e = traj.check_act_dim(3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "'action.joints' names 2 joints, the model outputs 3 actions"
        );
        for d in [2, 3, 6] {
            assert!(ActionKind::Twist.check_act_dim(d).is_ok());
        }
        assert_eq!(
            ActionKind::Twist.check_act_dim(4).unwrap_err().to_string(),
            "twist actions need 2 (vx, wz), 3 (vx, vy, wz) or 6 values; the model outputs 4"
        );
        assert!(ActionKind::Float64MultiArray.check_act_dim(17).is_ok());
    }

    #[test]
    fn the_output_says_what_it_commands_and_where_positions_are_measured() {
        let f64a = |kv: &[(&str, ParamValue)]| {
            let mut m = minimal();
            m.remove("action.interface");
            with(m, kv)
        };
        assert_rejected(vec![
            (
                f64a(&[]),
                "action.interface",
                "'action.interface' is required for float64_multi_array: say what the values command (position, velocity or effort, or one per value), so that a stop holds a position instead of commanding 0",
            ),
            (
                f64a(&[("action.interface", s("torque"))]),
                "action.interface",
                "'action.interface': unknown interface 'torque' (position, velocity or effort)",
            ),
            (
                f64a(&[("action.type", s("twist")), ("action.interface", s("position"))]),
                "action.interface",
                "'action.interface': this action.type commands velocity, not position",
            ),
            (
                f64a(&[
                    ("action.type", s("joint_trajectory")),
                    ("action.joints", ss(&["j1", "j2"])),
                    ("action.interface", s("velocity")),
                ]),
                "action.interface",
                "'action.interface': this action.type commands position, not velocity",
            ),
            (
                f64a(&[("action.interface", ss(&["position", "effort"]))]),
                "safe_behaviour",
                "'safe_behaviour': hold is refused on an effort interface (a torque cannot hold a place; the stop sends zero effort): use zero or stop",
            ),
            (
                f64a(&[("action.interface", s("position")), ("safe_behaviour", s("zero"))]),
                "safe_behaviour",
                "'safe_behaviour': zero is refused on a position interface (0 is a place, and the arm would jump there): use hold or stop",
            ),
            (
                f64a(&[
                    ("action.type", s("joint_trajectory")),
                    ("action.joints", ss(&["j1", "j2"])),
                    ("safe_behaviour", s("zero")),
                ]),
                "safe_behaviour",
                "'safe_behaviour': zero is refused on a position interface (0 is a place, and the arm would jump there): use hold or stop",
            ),
            (
                f64a(&[("action.interface", s("position")), ("action.state_source", s("nope"))]),
                "action.state_source",
                "'action.state_source': 'nope' is not one of the observations or goals",
            ),
            (
                f64a(&[("action.interface", s("position")), ("action.state_source", s("arm"))]),
                "action.joints",
                "'action.joints' must name the commanded joints to read them from action.state_source",
            ),
            (
                f64a(&[
                    ("action.interface", s("position")),
                    ("action.joints", ss(&["j1", "j9"])),
                    ("action.state_source", s("arm")),
                ]),
                "action.state_source",
                "'action.state_source': 'arm' does not read joint 'j9' of action.joints",
            ),
            (
                f64a(&[
                    ("action.interface", s("velocity")),
                    ("action.joints", ss(&["j1", "j2"])),
                    ("action.state_source", s("arm")),
                ]),
                "action.state_source",
                "'action.state_source': 'arm' measures positions, and no action value commands one",
            ),
        ]);
        // A measured arm: joint-major position, velocity; joints in any order.
        let m = f64a(&[
            ("sources.arm.fields", ss(&["position", "velocity"])),
            ("action.interface", ss(&["position", "velocity"])),
            ("action.joints", ss(&["j2", "j1"])),
            ("action.state_source", s("arm")),
        ]);
        let c = NodeConfig::from_params(&m).unwrap();
        let rule = c.stop_rule(2).unwrap();
        assert_eq!(
            rule.interfaces(),
            &[Interface::Position, Interface::Velocity]
        );
        assert_eq!(rule.state_source(), Some(0));
        let mut out = [9.0; 2];
        // board values: q1, v1, q2, v2 -> joint j2's position is value 2
        let kind = rule.fill(Some(&[0.1, 1.0, 0.2, 2.0]), None, &mut out);
        assert_eq!(
            (kind, out),
            (crate::stop::StopKind::HoldMeasured, [0.2, 0.0])
        );
        assert_eq!(
            c.stop_rule(3).unwrap_err().to_string(),
            "'action.interface' lists 2 interfaces, the model outputs 3 actions"
        );
        // One interface stands for every value; twist and trajectories imply theirs.
        let c = NodeConfig::from_params(&f64a(&[
            ("action.interface", s("effort")),
            ("safe_behaviour", s("zero")),
        ]))
        .unwrap();
        assert_eq!(
            c.stop_rule(3).unwrap().interfaces(),
            &[Interface::Effort; 3]
        );
        let c = NodeConfig::from_params(&f64a(&[("action.type", s("twist"))])).unwrap();
        assert_eq!(
            c.stop_rule(2).unwrap().interfaces(),
            &[Interface::Velocity; 2]
        );
    }

    #[test]
    fn live_allow_loosen_is_off_unless_set_and_must_be_a_bool() {
        assert!(
            !NodeConfig::from_params(&minimal())
                .unwrap()
                .live_allow_loosen
        );
        let on = with(minimal(), &[("live.allow_loosen", ParamValue::Bool(true))]);
        assert!(NodeConfig::from_params(&on).unwrap().live_allow_loosen);
        assert_rejected(vec![(
            with(minimal(), &[("live.allow_loosen", s("yes"))]),
            "live.allow_loosen",
            "parameter 'live.allow_loosen' must be true or false, got String(\"yes\")",
        )]);
    }

    #[test]
    fn trusted_keys_are_read_and_required_when_the_fleet_takes_policies() {
        use crate::signing::PolicySigner;
        const K: &str = "hot_swap.trusted_keys";
        let t = tempfile::tempdir().unwrap();
        let signer = PolicySigner::generate().unwrap();
        let pub_path = signer.save(&t.path().join("learner.key")).unwrap();
        let inline = signer.public_key().to_string();
        let swap = [("hot_swap.dir", s("/ckpt"))];
        // off by default
        let c = NodeConfig::from_params(&minimal()).unwrap();
        assert!(c.hot_swap_trusted_keys.is_empty());
        // a file and an inline key (two keys: a change-over)
        let two = with(
            with(minimal(), &swap),
            &[(K, ss(&[pub_path.to_str().unwrap(), &inline]))],
        );
        let c = NodeConfig::from_params(&two).unwrap();
        assert_eq!(
            c.hot_swap_trusted_keys.keys(),
            &[signer.public_key(), signer.public_key()]
        );
        // a fleet that takes policies needs them; one that only streams not
        let fleet = with(
            with(minimal(), &swap),
            &[
                ("fleet.robot_id", s("r1")),
                ("fleet.stream", ParamValue::Bool(false)),
            ],
        );
        let keyed = with(fleet.clone(), &[(K, ss(&[&inline]))]);
        assert!(NodeConfig::from_params(&keyed).unwrap().fleet.is_some());
        let stream_only = with(fleet.clone(), &[("fleet.policy", s("none"))]);
        assert!(NodeConfig::from_params(&stream_only).is_ok());
        let missing = "'hot_swap.trusted_keys' is required when the fleet link takes policies \
             (fleet.policy shared or own): name the public key of the learner that signs them \
             (`flowpilot keygen`, docs/security.md), or set fleet.policy: none";
        assert_rejected(vec![
            (fleet.clone(), K, missing),
            (with(fleet, &[("fleet.policy", s("own"))]), K, missing),
            (
                with(minimal(), &[(K, ss(&[&inline]))]),
                K,
                "'hot_swap.trusted_keys' authenticates hot-swapped versions: set 'hot_swap.dir' (or remove the keys)",
            ),
            (
                with(with(minimal(), &swap), &[(K, ss(&["ed25519:AAAA"]))]),
                K,
                "'hot_swap.trusted_keys': 'ed25519:AAAA' is not a public key: 3 bytes, not 32 \
                 (want ed25519:<base64 of 32 bytes>)",
            ),
        ]);
        // an unreadable file is named
        let e = err(&with(
            with(minimal(), &swap),
            &[(K, ss(&["/nonexistent/learner.key.pub"]))],
        ));
        assert_eq!(e.parameter(), K);
        assert!(
            e.to_string().contains("/nonexistent/learner.key.pub"),
            "{e}"
        );
    }
}
