//! Parameters that may change while the node runs, and their hand-off to
//! the control thread. Which names are live is decided here
//! ([`is_live`]), and so are the two rules a live change meets on top of
//! the start-up ones (the caller re-parses the whole parameter set with
//! the change): a live value must be a value of its type
//! ([`check_live_value`]: no unset, no empty list), and the safety limits
//! may only be tightened ([`check_tightening`]) unless
//! `live.allow_loosen: true` was set at start. The control thread takes a
//! new [`LiveSettings`] between two ticks from a one-slot lock-free queue
//! ([`LiveChannel`]): a copy of fixed-size arrays, no allocation, no lock.

use std::sync::Arc;

use crate::rt::handoff::Handoff;

use crate::log::MAX_ACT;
use crate::node::config::table::Live;
use crate::node::config::{NodeConfig, ParamValue};
use crate::rt::control::SafeBehaviour;
use crate::rt::output::MAX_SOURCES;

/// Whether a parameter may change at run time: `safe_behaviour`,
/// `max_delta`, `temperature`, `max_future_stamp`, `log.every` and every
/// source's `max_age`. Everything else shapes the node (model, sources,
/// topics, rates, threads) and is read-only once it runs.
pub fn is_live(name: &str) -> bool {
    crate::node::config::table::lookup(name).is_some_and(|p| p.live != Live::No)
}

/// Whether a live parameter is a safety limit, which a live change may only
/// tighten ([`check_tightening`]): `max_delta`, `max_future_stamp`,
/// `safe_behaviour` and every source's `max_age`. `temperature` and
/// `log.every` are live but not limits: the temperature shapes the
/// sampled action, which stays within the model's bounds and under the
/// rate limit whatever it is, and `log.every` only thins the log. Both
/// are read from the parameter table ([`crate::node::config::table`]).
pub fn is_safety_limit(name: &str) -> bool {
    crate::node::config::table::lookup(name).is_some_and(|p| p.live == Live::TightenOnly)
}

/// Refuse a live value that is not a value of the parameter's type, before
/// any other rule looks at it: unset (`NOT_SET`, what `ros2 param delete`
/// sends: it would fall back to the default, for `max_delta` no rate limit
/// at all), an empty list (`max_delta: []` is "off"), or the wrong type. An
/// integer is accepted where a number is expected, as at start-up. Names
/// that are not live pass (the caller refuses them as read-only).
pub fn check_live_value(name: &str, v: &ParamValue) -> Result<(), String> {
    use ParamValue as V;
    if !is_live(name) {
        return Ok(());
    }
    let (ok, want) = match name {
        "safe_behaviour" => (matches!(v, V::String(_)), "a string (hold, zero or stop)"),
        "max_delta" => (
            matches!(v, V::DoubleArray(a) if !a.is_empty())
                || matches!(v, V::IntegerArray(a) if !a.is_empty()),
            "a non-empty list of numbers, one per action value",
        ),
        "log.every" => (matches!(v, V::Integer(_)), "an integer"),
        // temperature, max_future_stamp, sources.<name>.max_age
        _ => (matches!(v, V::Double(_) | V::Integer(_)), "a number"),
    };
    if ok {
        return Ok(());
    }
    Err(match v {
        V::NotSet => {
            format!(
            "'{name}' cannot be unset or deleted while the node runs (it would fall back to its \
             default{}): set it to {want}",
            if name == "max_delta" { ": no rate limit" } else { "" }
        )
        }
        V::DoubleArray(a) if a.is_empty() => format!(
            "'{name}' cannot be set to an empty list while the node runs (that switches the rate \
             limit off): set it to {want}"
        ),
        V::IntegerArray(a) if a.is_empty() => format!(
            "'{name}' cannot be set to an empty list while the node runs (that switches the rate \
             limit off): set it to {want}"
        ),
        _ => format!("'{name}' must be {want}, got {v:?}"),
    })
}

/// How strict a safe behaviour is: the higher, the tighter. `hold` and
/// `zero` both send the output's stop on stale or invalid input (which one
/// the interface decides, docs/safety.md "What a stop sends"; the config
/// refuses each where its name would lie), so they rank the same and a
/// change between them is neither tighter nor looser. `stop` sends nothing
/// and leaves the last command in force until the controller's own
/// command timeout, if it has one (a forward command controller has none):
/// it is the loosest.
fn safe_rank(s: SafeBehaviour) -> u8 {
    match s {
        SafeBehaviour::Stop => 0,
        SafeBehaviour::Hold | SafeBehaviour::Zero => 1,
    }
}

fn safe_name(s: SafeBehaviour) -> &'static str {
    match s {
        SafeBehaviour::Hold => "hold",
        SafeBehaviour::Zero => "zero",
        SafeBehaviour::Stop => "stop",
    }
}

/// The rule for live changes to the safety limits: `next` may replace
/// `current` (the settings in force, not those at start-up) only if no
/// limit gets looser. Per limit, tighter or equal is:
///
/// - `max_delta`: a rate limit where there was none, or each entry no
///   larger than before (one larger entry is a loosening, whatever the
///   others do); no rate limit where there was one is a loosening;
/// - `sources.<name>.max_age`, each source: no larger (a smaller age
///   makes input stale sooner);
/// - `max_future_stamp`: no larger;
/// - `safe_behaviour`: `stop` < `hold` = `zero` ([`safe_rank`]).
///
/// `temperature` and `log.every` are not limits and never compared.
/// `sources` names the sources in board order (for the reason). Err names
/// the first limit loosened, with its value in force and the one asked
/// for, and says how to allow it.
pub fn check_tightening(
    current: &LiveSettings,
    next: &LiveSettings,
    sources: &[String],
) -> Result<(), String> {
    let refuse = |what: String| {
        Err(format!(
            "{what}: a live change may only tighten a safety limit (restart the node to loosen \
             it, or start it with live.allow_loosen: true)"
        ))
    };
    if safe_rank(next.safe) < safe_rank(current.safe) {
        return refuse(format!(
            "'safe_behaviour' {} is looser than {} in force (stop sends nothing on stale or \
             invalid input; hold and zero send the output's stop)",
            safe_name(next.safe),
            safe_name(current.safe)
        ));
    }
    if current.rate_limit {
        let n = current.n_act.min(next.n_act);
        if !next.rate_limit {
            return refuse("'max_delta': switching the rate limit off loosens it".into());
        }
        if let Some(i) = (0..n).find(|&i| next.max_delta[i] > current.max_delta[i]) {
            return refuse(format!(
                "'max_delta' entry {i}: {} is larger than {} in force",
                next.max_delta[i], current.max_delta[i]
            ));
        }
    }
    let n = current.n_sources.min(next.n_sources);
    if let Some(i) = (0..n).find(|&i| next.max_age_s[i] > current.max_age_s[i]) {
        let name = sources.get(i).map_or("?", |s| s.as_str());
        return refuse(format!(
            "'sources.{name}.max_age': {} s is larger than {} s in force",
            next.max_age_s[i], current.max_age_s[i]
        ));
    }
    if next.max_future_stamp_s > current.max_future_stamp_s {
        return refuse(format!(
            "'max_future_stamp': {} s is larger than {} s in force",
            next.max_future_stamp_s, current.max_future_stamp_s
        ));
    }
    Ok(())
}

/// The live parameters' values, as the control thread applies them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveSettings {
    pub safe: SafeBehaviour,
    /// None: the model's own temperature.
    pub temperature: Option<f32>,
    /// Per action value (the first `n_act`); `rate_limit` false: off.
    pub rate_limit: bool,
    pub max_delta: [f64; MAX_ACT],
    pub n_act: usize,
    /// Per source, board order (observations then goals).
    pub max_age_s: [f64; MAX_SOURCES],
    pub n_sources: usize,
    pub max_future_stamp_s: f64,
    pub log_every: u64,
}

impl LiveSettings {
    /// The live part of a checked configuration, for a model whose action
    /// step has `n_act` values.
    pub fn of(cfg: &NodeConfig, n_act: usize) -> Self {
        let mut s = Self {
            safe: cfg.safe,
            temperature: cfg.temperature,
            rate_limit: cfg.max_delta.is_some(),
            max_delta: [f64::INFINITY; MAX_ACT],
            n_act: n_act.min(MAX_ACT),
            max_age_s: [0.0; MAX_SOURCES],
            n_sources: 0,
            max_future_stamp_s: cfg.max_future_stamp_s,
            log_every: cfg.log.as_ref().map_or(1, |l| l.every),
        };
        if let Some(md) = &cfg.max_delta {
            for (d, v) in s.max_delta.iter_mut().zip(md) {
                *d = *v;
            }
        }
        for (a, src) in s.max_age_s.iter_mut().zip(cfg.sources()) {
            *a = src.max_age_s;
            s.n_sources += 1;
        }
        s
    }
}

/// The one-slot hand-off from the parameter service to the control thread:
/// a newer offer replaces one not yet taken (a one-slot [`Handoff`]).
pub struct LiveChannel {
    slot: Handoff<LiveSettings>,
}

impl LiveChannel {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            slot: Handoff::new(1),
        })
    }

    /// Offer new settings (parameter service thread).
    pub fn offer(&self, s: LiveSettings) {
        self.slot.push_replacing(s);
    }

    /// The newest settings not yet taken (control thread: lock-free, no
    /// allocation).
    pub fn take(&self) -> Option<LiveSettings> {
        self.slot.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two action values rate limited to 0.5, two sources (arm 0.1 s, goal
    /// 0.5 s), max_future_stamp 0.05 s, `hold`.
    fn base() -> LiveSettings {
        let mut s = LiveSettings {
            safe: SafeBehaviour::Hold,
            temperature: None,
            rate_limit: true,
            max_delta: [f64::INFINITY; MAX_ACT],
            n_act: 2,
            max_age_s: [0.0; MAX_SOURCES],
            n_sources: 2,
            max_future_stamp_s: 0.05,
            log_every: 1,
        };
        s.max_delta[..2].copy_from_slice(&[0.5, 0.5]);
        s.max_age_s[..2].copy_from_slice(&[0.1, 0.5]);
        s
    }

    fn names() -> Vec<String> {
        vec!["arm".into(), "goal".into()]
    }

    fn check(cur: &LiveSettings, f: impl Fn(&mut LiveSettings)) -> Result<(), String> {
        let mut next = *cur;
        f(&mut next);
        check_tightening(cur, &next, &names())
    }

    #[test]
    fn tightening_or_keeping_each_limit_is_accepted() {
        let cur = base();
        assert_eq!(check(&cur, |_| {}), Ok(()));
        assert_eq!(check(&cur, |n| n.max_delta[0] = 0.1), Ok(()));
        assert_eq!(
            check(&cur, |n| n.max_delta[..2].copy_from_slice(&[0.001, 0.5])),
            Ok(())
        );
        assert_eq!(check(&cur, |n| n.max_age_s[1] = 0.2), Ok(()));
        assert_eq!(check(&cur, |n| n.max_future_stamp_s = 0.0), Ok(()));
        // hold and zero rank the same (both send the output's stop)
        assert_eq!(check(&cur, |n| n.safe = SafeBehaviour::Zero), Ok(()));
        let mut stop = base();
        stop.safe = SafeBehaviour::Stop;
        assert_eq!(check(&stop, |n| n.safe = SafeBehaviour::Hold), Ok(()));
        assert_eq!(check(&stop, |n| n.safe = SafeBehaviour::Zero), Ok(()));
        // switching a rate limit on is tightening
        let mut off = base();
        off.rate_limit = false;
        off.max_delta = [f64::INFINITY; MAX_ACT];
        assert_eq!(
            check(&off, |n| {
                n.rate_limit = true;
                n.max_delta[..2].copy_from_slice(&[100.0, 100.0]);
            }),
            Ok(())
        );
        assert_eq!(check(&off, |_| {}), Ok(()));
        // temperature and log.every are not limits
        assert_eq!(check(&cur, |n| n.temperature = Some(1.0)), Ok(()));
        assert_eq!(check(&cur, |n| n.log_every = 1000), Ok(()));
    }

    #[test]
    fn loosening_any_limit_is_refused_naming_it() {
        let cur = base();
        let tail = ": a live change may only tighten a safety limit (restart the node to loosen it, or start it with live.allow_loosen: true)";
        for (f, what) in [
            (
                Box::new(|n: &mut LiveSettings| n.max_delta[1] = 0.6) as Box<dyn Fn(&mut LiveSettings)>,
                "'max_delta' entry 1: 0.6 is larger than 0.5 in force",
            ),
            (
                // one entry tighter does not pay for another looser
                Box::new(|n: &mut LiveSettings| n.max_delta[..2].copy_from_slice(&[0.01, 0.51])),
                "'max_delta' entry 1: 0.51 is larger than 0.5 in force",
            ),
            (
                Box::new(|n: &mut LiveSettings| n.rate_limit = false),
                "'max_delta': switching the rate limit off loosens it",
            ),
            (
                Box::new(|n: &mut LiveSettings| n.max_age_s[0] = 3600.0),
                "'sources.arm.max_age': 3600 s is larger than 0.1 s in force",
            ),
            (
                Box::new(|n: &mut LiveSettings| n.max_future_stamp_s = 0.051),
                "'max_future_stamp': 0.051 s is larger than 0.05 s in force",
            ),
            (
                Box::new(|n: &mut LiveSettings| n.safe = SafeBehaviour::Stop),
                "'safe_behaviour' stop is looser than hold in force (stop sends nothing on stale or invalid input; hold and zero send the output's stop)",
            ),
        ] {
            assert_eq!(check(&cur, f), Err(format!("{what}{tail}")));
        }
    }

    #[test]
    fn the_value_in_force_is_the_reference_not_the_start_up_value() {
        // tightened to 0.1, then back to the start-up 0.5: a loosening
        let start = base();
        let mut tight = start;
        tight.max_delta[0] = 0.1;
        assert_eq!(check_tightening(&start, &tight, &names()), Ok(()));
        assert!(check_tightening(&tight, &start, &names()).is_err());
        // hold -> zero -> hold is allowed both ways; zero -> stop is not
        let mut zero = start;
        zero.safe = SafeBehaviour::Zero;
        assert_eq!(check_tightening(&zero, &start, &names()), Ok(()));
        let mut stop = zero;
        stop.safe = SafeBehaviour::Stop;
        assert!(check_tightening(&zero, &stop, &names())
            .unwrap_err()
            .starts_with("'safe_behaviour' stop is looser than zero"));
    }

    #[test]
    fn unset_empty_and_wrong_type_live_values_are_refused_with_a_reason() {
        use ParamValue as V;
        for (name, v, reason) in [
            ("max_delta", V::NotSet, "'max_delta' cannot be unset or deleted while the node runs (it would fall back to its default: no rate limit): set it to a non-empty list of numbers, one per action value"),
            ("max_delta", V::DoubleArray(vec![]), "'max_delta' cannot be set to an empty list while the node runs (that switches the rate limit off): set it to a non-empty list of numbers, one per action value"),
            ("max_delta", V::IntegerArray(vec![]), "'max_delta' cannot be set to an empty list while the node runs (that switches the rate limit off): set it to a non-empty list of numbers, one per action value"),
            ("max_delta", V::Double(0.1), "'max_delta' must be a non-empty list of numbers, one per action value, got Double(0.1)"),
            ("max_delta", V::StringArray(vec!["0.1".into()]), "'max_delta' must be a non-empty list of numbers, one per action value, got StringArray([\"0.1\"])"),
            ("safe_behaviour", V::NotSet, "'safe_behaviour' cannot be unset or deleted while the node runs (it would fall back to its default): set it to a string (hold, zero or stop)"),
            ("safe_behaviour", V::Integer(1), "'safe_behaviour' must be a string (hold, zero or stop), got Integer(1)"),
            ("sources.arm.max_age", V::NotSet, "'sources.arm.max_age' cannot be unset or deleted while the node runs (it would fall back to its default): set it to a number"),
            ("sources.arm.max_age", V::String("1".into()), "'sources.arm.max_age' must be a number, got String(\"1\")"),
            ("max_future_stamp", V::Bool(true), "'max_future_stamp' must be a number, got Bool(true)"),
            ("temperature", V::NotSet, "'temperature' cannot be unset or deleted while the node runs (it would fall back to its default): set it to a number"),
            ("log.every", V::Double(2.0), "'log.every' must be an integer, got Double(2.0)"),
        ] {
            assert_eq!(check_live_value(name, &v), Err(reason.to_string()), "{name} {v:?}");
        }
        for (name, v) in [
            ("max_delta", V::DoubleArray(vec![0.1, 0.2])),
            ("max_delta", V::IntegerArray(vec![1, 2])),
            ("safe_behaviour", V::String("zero".into())),
            ("sources.arm.max_age", V::Integer(1)),
            ("max_future_stamp", V::Double(0.0)),
            ("temperature", V::Double(0.3)),
            ("log.every", V::Integer(5)),
            // not live: the caller refuses it as read-only
            ("model", V::NotSet),
        ] {
            assert_eq!(check_live_value(name, &v), Ok(()), "{name} {v:?}");
        }
    }

    #[test]
    fn the_safety_limits_are_the_live_limits_only() {
        for n in [
            "safe_behaviour",
            "max_delta",
            "max_future_stamp",
            "sources.arm.max_age",
        ] {
            assert!(is_safety_limit(n) && is_live(n), "{n}");
        }
        for n in ["temperature", "log.every", "model", "override.max_age"] {
            assert!(!is_safety_limit(n), "{n}");
        }
    }

    #[test]
    fn only_behaviour_limits_and_freshness_are_live() {
        for n in [
            "safe_behaviour",
            "max_delta",
            "temperature",
            "max_future_stamp",
            "log.every",
            "sources.arm.max_age",
        ] {
            assert!(is_live(n), "{n}");
        }
        for n in [
            "model",
            "rate_hz",
            "sources.arm.topic",
            "action.topic",
            "log.dir",
            "rt.cpu",
            "hot_swap.dir",
            "seed",
        ] {
            assert!(!is_live(n), "{n}");
        }
    }
}
