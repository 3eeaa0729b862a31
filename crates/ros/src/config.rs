//! The node's configuration, read from ROS parameters (`--params-file`,
//! `-p name:=value`). Every parameter is documented in docs/configuration.md.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use r2r::ParameterValue;

use flowpilot_core::control::SafeBehaviour;

/// One observation (or goal) source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub topic: String,
    pub kind: SourceKind,
    pub max_age_s: f64,
    pub best_effort: bool,
}

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub model: String,
    pub rate_hz: f64,
    pub seed: u64,
    pub safe: SafeBehaviour,
    pub warmup_ticks: u64,
    pub startup_hold_s: f64,
    pub max_delta: Option<Vec<f64>>,
    pub observations: Vec<SourceConfig>,
    pub goals: Vec<SourceConfig>,
    pub action_topic: String,
    pub action: ActionKind,
    pub action_best_effort: bool,
    pub fifo_priority: Option<i32>,
    pub cpu: Option<usize>,
    pub mlockall: bool,
    pub diagnostics_period_s: f64,
    /// Directory a learner writes versioned checkpoints to (None: off).
    pub hot_swap_dir: Option<String>,
    pub hot_swap_poll_s: f64,
    /// Reject a new version whose mean |Δaction| on recent observations
    /// exceeds this (physical units; 0: off).
    pub hot_swap_max_divergence: f64,
    /// Transition log (None: off).
    pub log: Option<LogSettings>,
    /// Human override: (topic, max age s).
    pub override_input: Option<(String, f64)>,
    /// Learner started by `~/finetune`: extra arguments and executable.
    pub finetune_args: Vec<String>,
    pub finetune_exe: Option<String>,
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
    pub distance_reward: Option<flowpilot_core::log::writer::DistanceReward>,
}

fn nonempty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn log_settings(p: &Params<'_>) -> Result<Option<LogSettings>> {
    let Some(dir) = nonempty(p.string("log.dir", Some(""))?) else {
        return Ok(None);
    };
    let a = p.usizes("log.reward.distance_a")?;
    let b = p.usizes("log.reward.distance_b")?;
    if a.len() != b.len() {
        bail!("'log.reward.distance_a' and 'log.reward.distance_b' must have the same length");
    }
    let every = p.i64("log.every", 1)?;
    if every < 1 {
        bail!("'log.every' must be >= 1, got {every}");
    }
    let flush = p.f64("log.flush_period", 0.05)?;
    if !(0.001..=1.0).contains(&flush) {
        bail!("'log.flush_period' must be within 0.001..1 s, got {flush}");
    }
    let distance_reward = if a.is_empty() {
        None
    } else {
        Some(flowpilot_core::log::writer::DistanceReward {
            a,
            b,
            action_cost: p.f64("log.reward.action_cost", 0.0)?,
        })
    };
    Ok(Some(LogSettings {
        dir,
        every: every as u64,
        flush_period_s: flush,
        queue: p.i64("log.queue", 4096)?.max(1) as usize,
        reward_topic: nonempty(p.string("log.reward_topic", Some(""))?),
        episode_topic: nonempty(p.string("log.episode_topic", Some(""))?),
        terminal_topic: nonempty(p.string("log.terminal_topic", Some(""))?),
        distance_reward,
    }))
}

/// Typed access to the flat parameter map with "name: problem" errors.
pub struct Params<'a>(pub &'a HashMap<String, ParameterValue>);

impl Params<'_> {
    fn get(&self, name: &str) -> Option<&ParameterValue> {
        self.0
            .get(name)
            .filter(|v| !matches!(v, ParameterValue::NotSet))
    }
    fn string(&self, name: &str, default: Option<&str>) -> Result<String> {
        match (self.get(name), default) {
            (Some(ParameterValue::String(s)), _) => Ok(s.clone()),
            (None, Some(d)) => Ok(d.to_string()),
            (None, None) => bail!("parameter '{name}' is required"),
            (Some(v), _) => bail!("parameter '{name}' must be a string, got {v:?}"),
        }
    }
    fn f64(&self, name: &str, default: f64) -> Result<f64> {
        match self.get(name) {
            None => Ok(default),
            Some(ParameterValue::Double(v)) => Ok(*v),
            Some(ParameterValue::Integer(v)) => Ok(*v as f64),
            Some(v) => bail!("parameter '{name}' must be a number, got {v:?}"),
        }
    }
    fn i64(&self, name: &str, default: i64) -> Result<i64> {
        match self.get(name) {
            None => Ok(default),
            Some(ParameterValue::Integer(v)) => Ok(*v),
            Some(v) => bail!("parameter '{name}' must be an integer, got {v:?}"),
        }
    }
    fn bool(&self, name: &str, default: bool) -> Result<bool> {
        match self.get(name) {
            None => Ok(default),
            Some(ParameterValue::Bool(v)) => Ok(*v),
            Some(v) => bail!("parameter '{name}' must be true or false, got {v:?}"),
        }
    }
    fn strings(&self, name: &str) -> Result<Vec<String>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(ParameterValue::StringArray(v)) => Ok(v.clone()),
            Some(ParameterValue::String(s)) if s.is_empty() => Ok(Vec::new()),
            Some(ParameterValue::String(s)) => Ok(vec![s.clone()]),
            Some(v) => bail!("parameter '{name}' must be a list of strings, got {v:?}"),
        }
    }
    fn f64s(&self, name: &str) -> Result<Vec<f64>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(ParameterValue::DoubleArray(v)) => Ok(v.clone()),
            Some(ParameterValue::IntegerArray(v)) => Ok(v.iter().map(|&x| x as f64).collect()),
            Some(v) => bail!("parameter '{name}' must be a list of numbers, got {v:?}"),
        }
    }
    fn usizes(&self, name: &str) -> Result<Vec<usize>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(ParameterValue::IntegerArray(v)) => v
                .iter()
                .map(|&x| {
                    usize::try_from(x)
                        .map_err(|_| anyhow!("parameter '{name}': negative index {x}"))
                })
                .collect(),
            Some(v) => bail!("parameter '{name}' must be a list of integers, got {v:?}"),
        }
    }
}

fn source(p: &Params<'_>, name: &str) -> Result<SourceConfig> {
    let k = |f: &str| format!("sources.{name}.{f}");
    let kind_s = p.string(&k("type"), None)?;
    let kind = match kind_s.as_str() {
        "joint_state" => {
            let joints = p.strings(&k("joints"))?;
            if joints.is_empty() {
                bail!("'{}' must list the joint names to read", k("joints"));
            }
            let mut fields = Vec::new();
            for f in p.strings(&k("fields"))?.iter().map(String::as_str).chain(std::iter::empty()) {
                fields.push(match f {
                    "position" => JointField::Position,
                    "velocity" => JointField::Velocity,
                    "effort" => JointField::Effort,
                    o => bail!("'{}': unknown field '{o}' (position, velocity, effort)", k("fields")),
                });
            }
            if fields.is_empty() {
                fields.push(JointField::Position);
            }
            SourceKind::JointState { joints, fields }
        }
        "float64_multi_array" => {
            let mut indices = p.usizes(&k("indices"))?;
            if indices.is_empty() {
                let n = p.i64(&k("size"), 0)?;
                if n <= 0 {
                    bail!("'{}' needs 'indices' (list) or 'size' (take data[0..size])", k("type"));
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
                        all.iter()
                            .position(|c| c == n)
                            .ok_or_else(|| anyhow!("'{}': '{n}' is not one of {all:?}", k("components")))
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
        o => bail!(
            "'{}': unknown source type '{o}' (joint_state, float64_multi_array, pose_stamped, twist_stamped, imu, odometry)",
            k("type")
        ),
    };
    let qos = p.string(&k("qos"), Some("best_effort"))?;
    Ok(SourceConfig {
        name: name.to_string(),
        topic: p.string(&k("topic"), None)?,
        kind,
        max_age_s: p.f64(&k("max_age"), 0.5)?,
        best_effort: parse_qos(&k("qos"), &qos)?,
    })
}

fn parse_qos(name: &str, v: &str) -> Result<bool> {
    match v {
        "best_effort" => Ok(true),
        "reliable" => Ok(false),
        o => bail!("'{name}': unknown QoS '{o}' (best_effort or reliable)"),
    }
}

impl NodeConfig {
    pub fn from_params(map: &HashMap<String, ParameterValue>) -> Result<Self> {
        let p = Params(map);
        let rate_hz = p.f64("rate_hz", 100.0)?;
        if !(10.0..=1000.0).contains(&rate_hz) {
            bail!("'rate_hz' must be within 10..1000, got {rate_hz}");
        }
        let observations = p
            .strings("observations")?
            .iter()
            .map(|n| source(&p, n).with_context(|| format!("observation source '{n}'")))
            .collect::<Result<Vec<_>>>()?;
        if observations.is_empty() {
            bail!("'observations' must list at least one source name");
        }
        let goals = p
            .strings("goals")?
            .iter()
            .map(|n| source(&p, n).with_context(|| format!("goal source '{n}'")))
            .collect::<Result<Vec<_>>>()?;
        let action = match p.string("action.type", Some("float64_multi_array"))?.as_str() {
            "float64_multi_array" => ActionKind::Float64MultiArray,
            "joint_trajectory" => {
                let joints = p.strings("action.joints")?;
                if joints.is_empty() {
                    bail!("'action.joints' must name the joints for joint_trajectory");
                }
                ActionKind::JointTrajectory { joints }
            }
            "twist" => ActionKind::Twist,
            "twist_stamped" => ActionKind::TwistStamped { frame_id: p.string("action.frame_id", Some("base_link"))? },
            o => bail!("'action.type': unknown '{o}' (float64_multi_array, joint_trajectory, twist, twist_stamped)"),
        };
        let max_delta = p.f64s("max_delta")?;
        let prio = p.i64("rt.fifo_priority", 0)?;
        let cpu = p.i64("rt.cpu", -1)?;
        Ok(Self {
            model: p.string("model", None)?,
            rate_hz,
            seed: p.i64("seed", 0)? as u64,
            safe: p
                .string("safe_behaviour", Some("hold"))?
                .parse()
                .map_err(|e: String| anyhow!("'safe_behaviour': {e}"))?,
            warmup_ticks: p.i64("warmup_ticks", 10)?.max(0) as u64,
            startup_hold_s: p.f64("startup_hold", 1.0)?.max(0.0),
            max_delta: (!max_delta.is_empty()).then_some(max_delta),
            observations,
            goals,
            action_topic: p.string("action.topic", Some("~/action"))?,
            action,
            action_best_effort: parse_qos(
                "action.qos",
                &p.string("action.qos", Some("reliable"))?,
            )?,
            fifo_priority: (prio > 0).then_some(prio as i32),
            cpu: (cpu >= 0).then_some(cpu as usize),
            mlockall: p.bool("rt.mlockall", false)?,
            diagnostics_period_s: p.f64("diagnostics_period", 1.0)?,
            hot_swap_dir: Some(p.string("hot_swap.dir", Some(""))?).filter(|d| !d.is_empty()),
            hot_swap_poll_s: p.f64("hot_swap.poll_period", 0.5)?,
            hot_swap_max_divergence: p.f64("hot_swap.max_divergence", 0.0)?,
            log: log_settings(&p)?,
            override_input: nonempty(p.string("override.topic", Some(""))?)
                .map(|t| Ok::<_, anyhow::Error>((t, p.f64("override.max_age", 0.2)?)))
                .transpose()?,
            finetune_args: p.strings("finetune.args")?,
            finetune_exe: nonempty(p.string("finetune.exe", Some(""))?),
        })
    }
}
