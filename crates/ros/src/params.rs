//! The node's ROS parameters as a plain [`ParamMap`] for
//! `flowpilot_core::node::config` to parse. Start-up only; not on the control
//! thread.

use flowpilot_core::node::config::{ParamMap, ParamValue};
use r2r::ParameterValue;

/// One r2r value as core's ROS-free value (same variants).
fn convert(v: &ParameterValue) -> ParamValue {
    match v {
        ParameterValue::NotSet => ParamValue::NotSet,
        ParameterValue::Bool(b) => ParamValue::Bool(*b),
        ParameterValue::Integer(i) => ParamValue::Integer(*i),
        ParameterValue::Double(d) => ParamValue::Double(*d),
        ParameterValue::String(s) => ParamValue::String(s.clone()),
        ParameterValue::BoolArray(v) => ParamValue::BoolArray(v.clone()),
        ParameterValue::ByteArray(v) => ParamValue::ByteArray(v.clone()),
        ParameterValue::IntegerArray(v) => ParamValue::IntegerArray(v.clone()),
        ParameterValue::DoubleArray(v) => ParamValue::DoubleArray(v.clone()),
        ParameterValue::StringArray(v) => ParamValue::StringArray(v.clone()),
    }
}

/// Every parameter the node was started with.
pub(crate) fn read(node: &r2r::Node) -> ParamMap {
    node.params
        .lock()
        .expect("params lock")
        .iter()
        .map(|(k, v)| (k.clone(), convert(&v.value)))
        .collect()
}
