//! Every parameter the node reads, declared once: name, type, default,
//! range, whether it may change while the node runs (and whether only
//! tighter), and the default as docs/configuration.md shows it. Parsing
//! ([`super::params::Params`] takes defaults and ranges from here), the
//! unknown-name check with its suggestion, the live-parameter rules
//! ([`crate::node::live`]), `describe_parameters` and the docs (a test compares
//! every row) all derive from [`PARAMS`]. Start-up only; nothing here runs
//! on the control thread.
//!
//! ```
//! use flowpilot_core::node::config::table::{lookup, Live};
//! assert_eq!(lookup("max_delta").unwrap().live, Live::TightenOnly);
//! assert_eq!(lookup("sources.arm.max_age").unwrap().name, "sources.<name>.max_age");
//! assert!(lookup("max_dleta").is_none());
//! ```

/// A parameter's type, with its range where it has one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ty {
    Bool,
    /// An integer within `lo..=hi`.
    Int {
        lo: i64,
        hi: i64,
    },
    /// A finite number within `lo..=hi`; `what` says the rule in words
    /// (empty: any number, unchecked here).
    Double {
        lo: f64,
        hi: f64,
        what: &'static str,
    },
    Str,
    /// A string with `~` and `$VAR` expanded ([`super::expand_path`]).
    Path,
    Strings,
    /// One string or a list of them.
    StrOrStrings,
    Doubles,
    Ints,
}

impl Ty {
    /// The type as docs/configuration.md's "type" column writes it.
    pub fn doc(self) -> &'static str {
        match self {
            Ty::Bool => "bool",
            Ty::Int { .. } => "int",
            Ty::Double { .. } => "double",
            Ty::Str | Ty::Path => "string",
            Ty::Strings => "string[]",
            Ty::StrOrStrings => "string or string[]",
            Ty::Doubles => "double[]",
            Ty::Ints => "int[]",
        }
    }
}

/// A parameter's value when it is not set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Default {
    /// Not set is an error.
    Required,
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(&'static str),
    /// An empty string or list (for most: "off").
    Empty,
}

/// Whether a parameter may change while the node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Read once at start: it shapes the node (model, sources, topics).
    No,
    Yes,
    /// A safety limit: only tighter while running, unless
    /// `live.allow_loosen: true` was set at start ([`crate::node::live`]).
    TightenOnly,
}

/// One parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// The full name; a source's fields are `sources.<name>.<field>`.
    pub name: &'static str,
    pub ty: Ty,
    pub default: Default,
    pub live: Live,
    /// The "default" column of docs/configuration.md ("" for the source
    /// fields, whose table has none).
    pub doc_default: &'static str,
}

const fn p(name: &'static str, ty: Ty, default: Default, doc_default: &'static str) -> Param {
    Param {
        name,
        ty,
        default,
        live: Live::No,
        doc_default,
    }
}

const fn live(mut x: Param, live: Live) -> Param {
    x.live = live;
    x
}

const fn int(lo: i64, hi: i64) -> Ty {
    Ty::Int { lo, hi }
}

const fn num(lo: f64, hi: f64, what: &'static str) -> Ty {
    Ty::Double { lo, hi, what }
}

/// Any number (no range check: the caller checks what it needs).
const ANY: Ty = num(f64::NEG_INFINITY, f64::INFINITY, "");

use self::Default::{Bool as B, Double as D, Empty, Int as I, Required, Str as S};
use self::Live::{TightenOnly, Yes};
use self::Ty::{Doubles, Ints, Path, Str, StrOrStrings, Strings};

/// The highest CPU index `sched_setaffinity`'s fixed-size set can hold.
pub const MAX_CPU: usize = 1023;

/// Every parameter the node reads, in the docs' order.
pub const PARAMS: &[Param] = &[
    p("model", Path, Required, "required"),
    p("rate_hz", ANY, D(100.0), "100.0"),
    p("seed", int(0, i64::MAX), I(0), "0"),
    live(p("temperature", ANY, D(1.0), "the model's (1.0)"), Yes),
    live(p("safe_behaviour", Str, S("hold"), "`hold`"), TightenOnly),
    p("warmup_ticks", int(0, 1_000_000), I(10), "10"),
    p(
        "startup_hold",
        num(0.0, 3600.0, "within 0..3600 s"),
        D(1.0),
        "1.0",
    ),
    live(p("max_delta", Doubles, Empty, "off"), TightenOnly),
    live(
        p(
            "max_future_stamp",
            num(0.0, 60.0, "within 0..60 s"),
            D(0.05),
            "0.05",
        ),
        TightenOnly,
    ),
    p("watchdog.stall_periods", int(2, 1_000_000), I(50), "50"),
    p(
        "diagnostics_period",
        num(0.01, 3600.0, "within 0.01..3600 s"),
        D(1.0),
        "1.0",
    ),
    p("observations", Strings, Empty, ""),
    p("goals", Strings, Empty, ""),
    p("sources.<name>.type", Str, Required, ""),
    p("sources.<name>.topic", Str, Required, ""),
    live(
        p(
            "sources.<name>.max_age",
            num(1e-3, 3600.0, "within 0.001..3600 s"),
            D(0.5),
            "",
        ),
        TightenOnly,
    ),
    p("sources.<name>.qos", Str, S("best_effort"), ""),
    p("sources.<name>.joints", Strings, Empty, ""),
    p("sources.<name>.fields", Strings, Empty, ""),
    p("sources.<name>.indices", Ints, Empty, ""),
    p("sources.<name>.size", int(0, i64::MAX), I(0), ""),
    p("sources.<name>.components", Strings, Empty, ""),
    p(
        "action.type",
        Str,
        S("float64_multi_array"),
        "`float64_multi_array`",
    ),
    p("action.topic", Str, S("~/action"), "`~/action`"),
    p(
        "action.interface",
        StrOrStrings,
        Empty,
        "required for `float64_multi_array`",
    ),
    p("action.joints", Strings, Empty, ""),
    p("action.state_source", Str, S(""), ""),
    p("action.frame_id", Str, S("base_link"), "`base_link`"),
    p("action.qos", Str, S("reliable"), "`reliable`"),
    p("chunk.replan_every", int(0, 1 << 16), I(0), "0 (= H)"),
    p("chunk.boundary", Str, S("replace"), "`replace`"),
    p(
        "chunk.ensemble_m",
        num(0.0, 100.0, "within 0..100"),
        D(0.01),
        "0.01",
    ),
    p("chunk.blend_steps", int(1, 1 << 16), I(2), "2"),
    p("chunk.as_trajectory", Ty::Bool, B(false), "false"),
    p("rt.fifo_priority", int(0, 99), I(0), "0"),
    p("rt.cpu", int(-1, MAX_CPU as i64), I(-1), "-1"),
    p("rt.mlockall", Ty::Bool, B(false), "false"),
    p("hot_swap.dir", Path, S(""), "off"),
    p(
        "hot_swap.poll_period",
        num(0.01, 3600.0, "within 0.01..3600 s"),
        D(0.5),
        "0.5",
    ),
    p(
        "hot_swap.max_divergence",
        num(0.0, f64::MAX, "a number >= 0 (0: off)"),
        D(0.0),
        "0 (off)",
    ),
    p("hot_swap.allow_spec_change", Ty::Bool, B(false), "false"),
    p("hot_swap.guard.episodes", ANY_INT, I(20), "20"),
    p("hot_swap.guard.margin", ANY, D(0.5), "0.5"),
    p("hot_swap.guard.z", ANY, D(2.0), "2.0"),
    p("hot_swap.guard.hold", Ty::Bool, B(false), "false"),
    p(
        "hot_swap.trusted_keys",
        Strings,
        Empty,
        "[] (required with `fleet.policy` `shared`/`own`)",
    ),
    p("hot_swap.resume", Ty::Bool, B(true), "true"),
    p("log.dir", Path, S(""), "off"),
    live(p("log.every", ANY_INT, I(1), "1"), Yes),
    p("log.step_source", Str, S(""), "off"),
    p("log.flush_period", ANY, D(0.05), "0.05"),
    p("log.queue", int(1, 1 << 20), I(4096), "4096"),
    p("log.reward_topic", Str, S(""), "off"),
    p("log.episode_topic", Str, S(""), "off"),
    p("log.terminal_topic", Str, S(""), "off"),
    p("log.reward.distance_a", Ints, Empty, "off"),
    p("log.reward.distance_b", Ints, Empty, "off"),
    p(
        "log.reward.action_cost",
        num(0.0, f64::MAX, "a number >= 0"),
        D(0.0),
        "0",
    ),
    p("override.topic", Str, S(""), "off"),
    p(
        "override.max_age",
        num(1e-3, 60.0, "within 0.001..60 s"),
        D(0.2),
        "0.2",
    ),
    p("finetune.args", Strings, Empty, "[]"),
    p(
        "finetune.exe",
        Path,
        S(""),
        "the `flowpilot` binary beside `flowpilot_node`",
    ),
    p("fleet.robot_id", Str, S(""), "off"),
    p("fleet.stream", Ty::Bool, B(true), "true"),
    p("fleet.policy", Str, S("shared"), "shared"),
    p("fleet.window", int(1, 1_000_000), I(2000), "2000"),
    p(
        "fleet.batch_period",
        num(0.005, 10.0, "within 0.005..10 s"),
        D(0.1),
        "0.1",
    ),
    p("fleet.learner", Str, S(""), "\"\""),
    p("fleet.signing_key", Path, S(""), "\"\""),
    p("autostart", Ty::Bool, B(true), "true"),
    p("live.allow_loosen", Ty::Bool, B(false), "false"),
];

/// Any integer.
const ANY_INT: Ty = int(i64::MIN, i64::MAX);

/// Parameters that ROS 2 itself declares on a node (or its launch files
/// pass to every node); accepted and not used.
const ROS_KEYS: &[&str] = &["use_sim_time", "start_type_description_service"];

/// The table's entry for a full parameter name (`sources.arm.max_age` is
/// `sources.<name>.max_age`); None for a name the node does not read.
pub fn lookup(name: &str) -> Option<&'static Param> {
    // Any source name, even an empty one (a user's list may hold ""): the
    // entry is the field's; whether the name is acceptable is the parser's
    // and `is_known`'s to say.
    let pattern = name
        .strip_prefix("sources.")
        .and_then(|r| r.rsplit_once('.'))
        .map(|(_, field)| field);
    PARAMS.iter().find(|p| match pattern {
        Some(field) => p
            .name
            .strip_prefix("sources.<name>.")
            .is_some_and(|f| f == field),
        None => p.name == name,
    })
}

/// Whether a name is one the node accepts (its own, or one ROS passes).
pub fn is_known(name: &str) -> bool {
    let empty_source = name
        .strip_prefix("sources.")
        .and_then(|r| r.rsplit_once('.'))
        .is_some_and(|(src, _)| src.is_empty());
    (lookup(name).is_some() && !empty_source)
        || ROS_KEYS.contains(&name)
        || name.starts_with("qos_overrides.")
}

/// The valid name closest to a misspelt one, if one is close.
pub(crate) fn nearest(name: &str) -> Option<String> {
    let src = name
        .strip_prefix("sources.")
        .and_then(|r| r.rsplit_once('.'))
        .map(|(s, _)| s);
    PARAMS
        .iter()
        .filter_map(|p| match p.name.strip_prefix("sources.<name>.") {
            Some(f) => src.map(|s| format!("sources.{s}.{f}")),
            None => Some(p.name.to_string()),
        })
        .map(|c| (strsim::damerau_levenshtein(name, &c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min()
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The docs' parameter rows: (name, type, default) for rows of a table
    /// whose first column is a name in backticks; default None in a table
    /// without a default column (name, type, meaning).
    fn doc_rows() -> Vec<(String, String, Option<String>)> {
        let text = include_str!("../../../../../docs/configuration.md");
        let mut rows = Vec::new();
        for line in text.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() < 5 || !cells[1].starts_with('`') {
                continue;
            }
            let default = (cells.len() >= 6).then(|| cells[3].to_string());
            // `a`, `b` rows declare several names with one type and default
            for name in cells[1].split(", ") {
                let name = name.trim_matches('`');
                rows.push((name.to_string(), cells[2].to_string(), default.clone()));
            }
        }
        rows
    }

    #[test]
    fn every_parameter_is_in_the_docs_with_its_type_and_default() {
        let rows = doc_rows();
        let mut bad = Vec::new();
        for p in PARAMS {
            match rows.iter().find(|(n, _, _)| n == p.name) {
                None => bad.push(format!("{}: no row in docs/configuration.md", p.name)),
                Some((_, ty, default)) => {
                    if ty != p.ty.doc() {
                        bad.push(format!(
                            "{}: docs say type '{ty}', the table {}",
                            p.name,
                            p.ty.doc()
                        ));
                    }
                    match default {
                        Some(d) if d != p.doc_default => bad.push(format!(
                            "{}: docs say default '{d}', the table '{}'",
                            p.name, p.doc_default
                        )),
                        None if !p.doc_default.is_empty() => bad.push(format!(
                            "{}: the table has a default to show, '{}', its docs row has no column for it",
                            p.name, p.doc_default
                        )),
                        _ => {}
                    }
                }
            }
        }
        // and no row for a parameter the node does not read
        for (n, _, _) in &rows {
            let param_like = n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._<>".contains(c));
            if param_like && lookup(n).is_none() {
                bad.push(format!(
                    "{n}: a row in docs/configuration.md, not in the table"
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "the docs drifted from config::table:\n{}",
            bad.join("\n")
        );
    }

    #[test]
    fn defaults_fit_their_types_and_ranges() {
        for p in PARAMS {
            let ok = match (p.ty, p.default) {
                (_, Default::Required) => true,
                (Ty::Bool, Default::Bool(_)) => true,
                (Ty::Int { lo, hi }, Default::Int(v)) => (lo..=hi).contains(&v),
                (Ty::Double { lo, hi, .. }, Default::Double(v)) => (lo..=hi).contains(&v),
                (Ty::Str | Ty::Path, Default::Str(_)) => true,
                (Ty::Strings | Ty::StrOrStrings | Ty::Doubles | Ty::Ints, Default::Empty) => true,
                _ => false,
            };
            assert!(
                ok,
                "{}: default {:?} is not a {:?}",
                p.name, p.default, p.ty
            );
        }
        let names: std::collections::HashSet<_> = PARAMS.iter().map(|p| p.name).collect();
        assert_eq!(names.len(), PARAMS.len(), "a parameter declared twice");
    }
}
