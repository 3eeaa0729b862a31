//! The contract's QoS roles ([`flowpilot_core::contract::qos`]) as r2r
//! profiles: the one place a topic's QoS becomes an rmw profile. Called
//! when subscriptions and publishers are made (configure), never in a tick.

use flowpilot_core::contract::Qos;
use r2r::QosProfile;

/// `q` as an r2r profile: keep last `depth`, its reliability and durability.
pub(crate) fn profile(q: Qos) -> QosProfile {
    let p = QosProfile::default().keep_last(q.depth);
    let p = if q.reliable {
        p.reliable()
    } else {
        p.best_effort()
    };
    if q.transient_local {
        p.transient_local()
    } else {
        p.volatile()
    }
}
