//! Observation and goal sources in the node's configuration: each
//! `sources.<name>.*` group parsed into a [`SourceConfig`] (message type,
//! topic, joints and fields or indices, QoS, staleness), and the
//! `observations` / `goals` lists that name them. Start-up only; allocates.

use super::params::Params;
use super::{ConfigError, Result};

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

pub(super) fn source(p: &Params<'_>, name: &str) -> Result<SourceConfig> {
    let k = |f: &str| format!("sources.{name}.{f}");
    let kind_s = p.string(&k("type"))?;
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
                let n = p.i64_max(&k("size"), max as i64)?;
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
    let qos = p.string(&k("qos"))?;
    Ok(SourceConfig {
        name: name.to_string(),
        topic: p.string(&k("topic"))?,
        kind,
        max_age_s: p.f64(&k("max_age"))?,
        best_effort: parse_qos(&k("qos"), &qos)?,
    })
}

pub(super) fn sources(p: &Params<'_>, list: &str, role: &'static str) -> Result<Vec<SourceConfig>> {
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

pub(super) fn parse_qos(name: &str, v: &str) -> Result<bool> {
    match v {
        "best_effort" => Ok(true),
        "reliable" => Ok(false),
        o => Err(ConfigError::param(
            name,
            format!("'{name}': unknown QoS '{o}' (best_effort or reliable)"),
        )),
    }
}
