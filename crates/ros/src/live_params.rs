//! The standard ROS 2 parameter services (`~/get_parameters`,
//! `~/set_parameters`, `~/set_parameters_atomically`, `~/list_parameters`,
//! `~/describe_parameters`, `~/get_parameter_types`) and
//! `/parameter_events`, so that `ros2 param` and rclpy's parameter client
//! work. Live parameters (`flowpilot_core::node::live::is_live`) are checked by
//! core's live rules (no unset, empty or wrong-type value; the safety
//! limits only tightened relative to the values in force, unless
//! `live.allow_loosen` was set at start) and by the start-up rules on the
//! whole parameter set with the change, then handed to the control thread,
//! which applies them between two ticks; every other parameter is
//! read-only with a reason. Runs on the spin thread; nothing here touches
//! the control thread but the one-slot queue.
//!
//! Who asked: r2r (0.9.7) keeps the request's `rmw_request_id_t` (the
//! client's writer GUID) private in `ServiceRequest` and takes requests
//! with `rcl_take_request`, not `_with_info`, and SetParameters carries no
//! caller field, so the node cannot tell which peer changed a parameter:
//! accepted and refused changes are logged without a caller.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Result;
use futures::task::LocalSpawnExt;
use futures::StreamExt;
use r2r::rcl_interfaces::msg::{
    Parameter, ParameterDescriptor, ParameterEvent, ParameterValue, SetParametersResult,
};
use r2r::rcl_interfaces::srv::{
    DescribeParameters, GetParameterTypes, GetParameters, ListParameters, SetParameters,
    SetParametersAtomically,
};
use r2r::QosProfile;

use flowpilot_core::log::writer::LogHandle;
use flowpilot_core::node::config::{NodeConfig, ParamMap, ParamValue};
use flowpilot_core::node::live::{
    check_live_value, check_tightening, is_live, is_safety_limit, LiveChannel, LiveSettings,
};

/// The node's parameters as they stand, and where live changes go.
struct State {
    map: ParamMap,
    /// The node's copy, which outlives this session: a re-configure starts
    /// from the values accepted here.
    saved: Rc<RefCell<ParamMap>>,
    /// Values per action step (for `max_delta`).
    n_act: usize,
    chan: Arc<LiveChannel>,
    events: r2r::Publisher<ParameterEvent>,
    node_name: String,
    /// The transition log, which records every accepted change.
    log: Option<Arc<LogHandle>>,
    /// The live settings in force (the last accepted), which a change to
    /// a safety limit may only tighten.
    current: LiveSettings,
    /// The sources' names in board order (for the reasons).
    sources: Vec<String>,
    /// `live.allow_loosen` at start: the limits may be loosened too.
    allow_loosen: bool,
}

impl State {
    /// Check `changes` (from `service`) together against the live and the
    /// start-up rules and apply them all, or none. A refusal is logged
    /// (WARN) with its reason.
    fn set(&mut self, changes: &[(String, ParamValue)], service: &str) -> Result<(), String> {
        let r = self.check(changes);
        if let Err(reason) = &r {
            let names: Vec<&str> = changes.iter().map(|(n, _)| n.as_str()).collect();
            tracing::warn!(parameters = ?names, service, %reason, "live parameter change refused");
        }
        let (candidate, next) = r?;
        let previous: Vec<String> = changes
            .iter()
            .map(|(n, _)| format!("{:?}", self.map.get(n).unwrap_or(&ParamValue::NotSet)))
            .collect();
        self.chan.offer(next);
        self.current = next;
        self.map = candidate;
        self.saved.borrow_mut().clone_from(&self.map);
        let wall_ns = flowpilot_core::rt::board::wall_ns().to_string();
        for ((name, v), previous) in changes.iter().zip(previous) {
            tracing::info!(parameter = %name, value = ?v, %previous, service,
                           safety_limit = is_safety_limit(name), allow_loosen = self.allow_loosen,
                           "live parameter changed (caller not known: r2r does not expose it)");
            if let Some(log) = &self.log {
                log.note(
                    "parameter_change",
                    [
                        ("name".to_string(), name.clone()),
                        ("value".into(), format!("{v:?}")),
                        ("previous".into(), previous),
                        ("wall_ns".into(), wall_ns.clone()),
                    ]
                    .into(),
                );
            }
        }
        let _ = self.events.publish(&ParameterEvent {
            node: self.node_name.clone(),
            changed_parameters: changes
                .iter()
                .map(|(n, v)| Parameter {
                    name: n.clone(),
                    value: to_msg(v),
                })
                .collect(),
            ..Default::default()
        });
        Ok(())
    }

    /// The parameter set with `changes` and the live settings it gives, or
    /// the first rule a change breaks.
    fn check(&self, changes: &[(String, ParamValue)]) -> Result<(ParamMap, LiveSettings), String> {
        let mut candidate = self.map.clone();
        for (name, v) in changes {
            if !is_live(name) && (self.map.contains_key(name) || known(name)) {
                return Err(format!(
                    "'{name}' is read-only while the node runs (it shapes the node; restart to change it). Live: safe_behaviour, max_delta, temperature, max_future_stamp, log.every, sources.<name>.max_age"
                ));
            }
            check_live_value(name, v)?;
            candidate.insert(name.clone(), v.clone());
        }
        let cfg = NodeConfig::from_params(&candidate).map_err(|e| e.to_string())?;
        if let Some(md) = &cfg.max_delta {
            if md.len() != self.n_act {
                return Err(format!(
                    "'max_delta' needs {} values (one per action value)",
                    self.n_act
                ));
            }
        }
        let next = LiveSettings::of(&cfg, self.n_act);
        if !self.allow_loosen {
            check_tightening(&self.current, &next, &self.sources)?;
        }
        Ok((candidate, next))
    }
}

/// A parameter name the node reads (not counting the sources' fields of a
/// source that does not exist).
fn known(name: &str) -> bool {
    flowpilot_core::node::config::table::is_known(name) || name.starts_with("sources.")
}

fn result(r: Result<(), String>) -> SetParametersResult {
    SetParametersResult {
        successful: r.is_ok(),
        reason: r.err().unwrap_or_default(),
    }
}

/// Serve the parameter services for `saved` (the node's parameters as they
/// stand, checked into `cfg`; accepted changes are written back to it) on
/// the session's executor. Live
/// parameters left at their defaults are listed with their effective
/// values (`model_temperature` when `temperature` is unset).
pub(crate) fn serve(
    node: &mut r2r::Node,
    spawner: &futures::executor::LocalSpawner,
    saved: Rc<RefCell<ParamMap>>,
    cfg: &NodeConfig,
    model_temperature: f32,
    n_act: usize,
    chan: Arc<LiveChannel>,
    log: Option<Arc<LogHandle>>,
) -> Result<()> {
    let safe = match cfg.safe {
        flowpilot_core::rt::control::SafeBehaviour::Hold => "hold",
        flowpilot_core::rt::control::SafeBehaviour::Zero => "zero",
        flowpilot_core::rt::control::SafeBehaviour::Stop => "stop",
    };
    let mut effective = vec![
        (
            "safe_behaviour".to_string(),
            ParamValue::String(safe.into()),
        ),
        (
            "temperature".into(),
            ParamValue::Double(cfg.temperature.unwrap_or(model_temperature) as f64),
        ),
        (
            "max_delta".into(),
            ParamValue::DoubleArray(cfg.max_delta.clone().unwrap_or_default()),
        ),
        (
            "max_future_stamp".into(),
            ParamValue::Double(cfg.max_future_stamp_s),
        ),
    ];
    for s in cfg.sources() {
        effective.push((
            format!("sources.{}.max_age", s.name),
            ParamValue::Double(s.max_age_s),
        ));
    }
    if let Some(l) = &cfg.log {
        effective.push(("log.every".into(), ParamValue::Integer(l.every as i64)));
    }
    let mut map = saved.borrow().clone();
    for (k, v) in effective {
        let unset = matches!(map.get(&k), None | Some(ParamValue::NotSet));
        if unset {
            map.insert(k, v);
        }
    }
    let events = node
        .create_publisher::<ParameterEvent>("/parameter_events", QosProfile::parameter_events())?;
    let state = Rc::new(RefCell::new(State {
        map,
        saved,
        n_act,
        chan,
        events,
        node_name: node.fully_qualified_name()?,
        log,
        current: LiveSettings::of(cfg, n_act),
        sources: cfg.sources().map(|s| s.name.clone()).collect(),
        allow_loosen: cfg.live_allow_loosen,
    }));
    let qos = QosProfile::services_default;

    let st = state.clone();
    let srv = node.create_service::<SetParameters::Service>("~/set_parameters", qos())?;
    spawner.spawn_local(srv.for_each(move |req| {
        // Each parameter on its own, as rclcpp does.
        let results = req
            .message
            .parameters
            .iter()
            .map(|p| {
                let change = [(p.name.clone(), from_msg(&p.value))];
                result(st.borrow_mut().set(&change, "set_parameters"))
            })
            .collect();
        let _ = req.respond(SetParameters::Response { results });
        futures::future::ready(())
    }))?;

    let st = state.clone();
    let srv = node
        .create_service::<SetParametersAtomically::Service>("~/set_parameters_atomically", qos())?;
    spawner.spawn_local(srv.for_each(move |req| {
        let changes: Vec<_> = req
            .message
            .parameters
            .iter()
            .map(|p| (p.name.clone(), from_msg(&p.value)))
            .collect();
        let r = result(st.borrow_mut().set(&changes, "set_parameters_atomically"));
        let _ = req.respond(SetParametersAtomically::Response { result: r });
        futures::future::ready(())
    }))?;

    let st = state.clone();
    let srv = node.create_service::<GetParameters::Service>("~/get_parameters", qos())?;
    spawner.spawn_local(srv.for_each(move |req| {
        let s = st.borrow();
        let values = req
            .message
            .names
            .iter()
            .map(|n| to_msg(s.map.get(n).unwrap_or(&ParamValue::NotSet)))
            .collect();
        let _ = req.respond(GetParameters::Response { values });
        futures::future::ready(())
    }))?;

    let st = state.clone();
    let srv = node.create_service::<GetParameterTypes::Service>("~/get_parameter_types", qos())?;
    spawner.spawn_local(srv.for_each(move |req| {
        let s = st.borrow();
        let types = req
            .message
            .names
            .iter()
            .map(|n| to_msg(s.map.get(n).unwrap_or(&ParamValue::NotSet)).type_)
            .collect();
        let _ = req.respond(GetParameterTypes::Response { types });
        futures::future::ready(())
    }))?;

    let st = state.clone();
    let srv = node.create_service::<ListParameters::Service>("~/list_parameters", qos())?;
    spawner.spawn_local(srv.for_each(move |req| {
        let s = st.borrow();
        let prefixes = &req.message.prefixes;
        let mut names: Vec<String> = s
            .map
            .keys()
            .filter(|n| {
                prefixes.is_empty()
                    || prefixes
                        .iter()
                        .any(|p| *n == p || n.starts_with(&format!("{p}.")))
            })
            .cloned()
            .collect();
        names.sort();
        let mut pre: Vec<String> = names
            .iter()
            .filter_map(|n| n.rsplit_once('.').map(|(p, _)| p.to_string()))
            .collect();
        pre.dedup();
        let _ = req.respond(ListParameters::Response {
            result: r2r::rcl_interfaces::msg::ListParametersResult {
                names,
                prefixes: pre,
            },
        });
        futures::future::ready(())
    }))?;

    let st = state;
    let srv = node.create_service::<DescribeParameters::Service>("~/describe_parameters", qos())?;
    spawner.spawn_local(srv.for_each(move |req| {
        let s = st.borrow();
        let descriptors = req
            .message
            .names
            .iter()
            .map(|n| describe(n, s.map.get(n), s.allow_loosen))
            .collect();
        let _ = req.respond(DescribeParameters::Response { descriptors });
        futures::future::ready(())
    }))?;
    Ok(())
}

/// rcl_interfaces/msg/ParameterType codes (fixed by the interface).
mod ty {
    pub(super) const NOT_SET: u8 = 0;
    pub(super) const BOOL: u8 = 1;
    pub(super) const INTEGER: u8 = 2;
    pub(super) const DOUBLE: u8 = 3;
    pub(super) const STRING: u8 = 4;
    pub(super) const BYTE_ARRAY: u8 = 5;
    pub(super) const BOOL_ARRAY: u8 = 6;
    pub(super) const INTEGER_ARRAY: u8 = 7;
    pub(super) const DOUBLE_ARRAY: u8 = 8;
    pub(super) const STRING_ARRAY: u8 = 9;
}

/// A parameter value message as core's value.
fn from_msg(v: &ParameterValue) -> ParamValue {
    match v.type_ {
        ty::BOOL => ParamValue::Bool(v.bool_value),
        ty::INTEGER => ParamValue::Integer(v.integer_value),
        ty::DOUBLE => ParamValue::Double(v.double_value),
        ty::STRING => ParamValue::String(v.string_value.clone()),
        ty::BYTE_ARRAY => ParamValue::ByteArray(v.byte_array_value.clone()),
        ty::BOOL_ARRAY => ParamValue::BoolArray(v.bool_array_value.clone()),
        ty::INTEGER_ARRAY => ParamValue::IntegerArray(v.integer_array_value.clone()),
        ty::DOUBLE_ARRAY => ParamValue::DoubleArray(v.double_array_value.clone()),
        ty::STRING_ARRAY => ParamValue::StringArray(v.string_array_value.clone()),
        _ => ParamValue::NotSet,
    }
}

/// Core's value as a parameter value message.
fn to_msg(v: &ParamValue) -> ParameterValue {
    let mut m = ParameterValue::default();
    m.type_ = match v {
        ParamValue::NotSet => ty::NOT_SET,
        ParamValue::Bool(b) => {
            m.bool_value = *b;
            ty::BOOL
        }
        ParamValue::Integer(i) => {
            m.integer_value = *i;
            ty::INTEGER
        }
        ParamValue::Double(d) => {
            m.double_value = *d;
            ty::DOUBLE
        }
        ParamValue::String(s) => {
            m.string_value = s.clone();
            ty::STRING
        }
        ParamValue::ByteArray(a) => {
            m.byte_array_value = a.clone();
            ty::BYTE_ARRAY
        }
        ParamValue::BoolArray(a) => {
            m.bool_array_value = a.clone();
            ty::BOOL_ARRAY
        }
        ParamValue::IntegerArray(a) => {
            m.integer_array_value = a.clone();
            ty::INTEGER_ARRAY
        }
        ParamValue::DoubleArray(a) => {
            m.double_array_value = a.clone();
            ty::DOUBLE_ARRAY
        }
        ParamValue::StringArray(a) => {
            m.string_array_value = a.clone();
            ty::STRING_ARRAY
        }
    };
    m
}

/// A parameter's descriptor, from the parameter table
/// ([`flowpilot_core::node::config::table`]): type and default in words, whether
/// it is live (and only tighter), and its range.
fn describe(n: &str, v: Option<&ParamValue>, allow_loosen: bool) -> ParameterDescriptor {
    use flowpilot_core::node::config::table::{lookup, Ty};
    use r2r::rcl_interfaces::msg::{FloatingPointRange, IntegerRange};
    let live = if is_safety_limit(n) && !allow_loosen {
        "live, a safety limit: may only be tightened while the node runs"
    } else if is_live(n) {
        "live: applied between two control ticks"
    } else {
        "read-only while the node runs"
    };
    let mut d = ParameterDescriptor {
        name: n.to_string(),
        type_: to_msg(v.unwrap_or(&ParamValue::NotSet)).type_,
        read_only: !is_live(n),
        description: format!("{live} (docs/configuration.md)"),
        ..Default::default()
    };
    if let Some(p) = lookup(n) {
        let default = if p.doc_default.is_empty() {
            "none"
        } else {
            p.doc_default
        };
        d.description = format!("{}, default {default}; {}", p.ty.doc(), d.description);
        match p.ty {
            Ty::Double { lo, hi, what } if !what.is_empty() && hi < f64::MAX => {
                d.floating_point_range = vec![FloatingPointRange {
                    from_value: lo,
                    to_value: hi,
                    step: 0.0,
                }];
            }
            Ty::Int { lo, hi } if lo > i64::MIN && hi < i64::MAX => {
                d.integer_range = vec![IntegerRange {
                    from_value: lo,
                    to_value: hi,
                    step: 0,
                }];
            }
            _ => {}
        }
    }
    d
}
