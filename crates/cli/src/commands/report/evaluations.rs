//! The report's evaluations: `CKPT/evaluations.json` (a JSON list that
//! whoever ran the evaluations writes; `scripts/finetune_session.py`
//! rewrites it as each one ends), drawn as a table and as marks and levels
//! on the return plot. Offline; allocates freely.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::{esc, mean};

/// The evaluations a session ran (`CKPT/evaluations.json`, written by
/// whoever ran them; none when absent).
pub(super) fn read_evaluations(ckpt: &Path) -> Result<Vec<serde_json::Value>> {
    let p = ckpt.join(flowpilot_core::contract::files::EVALUATIONS);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a list of evaluations", p.display()))
}

/// The evaluations' table: label, robot time, episodes, mean return,
/// minus the expert on the same episodes, success, the versions that ran.
pub(super) fn evaluations_table(rows: &[serde_json::Value]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let num = |v: &serde_json::Value, k: &str, digits: usize| -> String {
        v[k].as_f64()
            .map_or("–".into(), |x| format!("{x:.digits$}"))
    };
    let mut h = String::from(
        "<h2>Evaluations</h2><table class=\"evaluations\"><tr><th>evaluation</th><th>robot time (s)</th>\
         <th>episodes</th><th>mean return</th><th>minus the expert (± SE)</th><th>success (± SE)</th>\
         <th>versions</th></tr>",
    );
    for v in rows {
        let minus = match v["minus_expert"]
            .as_array()
            .map(|a| (a[0].as_f64(), a.get(1).and_then(|x| x.as_f64())))
        {
            Some((Some(m), Some(se))) => format!("{m:+.3} ± {se:.3}"),
            _ => "–".into(),
        };
        let success = match (v["success"].as_f64(), v["success_se"].as_f64()) {
            (Some(p), Some(se)) => format!("{:.0} % ± {:.0}", 100.0 * p, 100.0 * se),
            _ => "–".into(),
        };
        let (v0, v1) = (
            v["policy_version_start"].as_u64(),
            v["policy_version_end"].as_u64(),
        );
        let versions = match (v0, v1) {
            (Some(a), Some(b)) if a != b => format!("{a} → {b}"),
            (Some(a), _) => a.to_string(),
            _ => "–".into(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(v["label"].as_str().unwrap_or("?")),
            num(v, "robot_time_s", 1),
            v["episodes"].as_u64().map_or("–".into(), |n| n.to_string()),
            num(v, "return", 3),
            minus,
            success,
            versions
        );
    }
    h + "</table>"
}

/// Where the evaluations go on the return plot: a mark at each one's
/// middle (those with wall times), the policy before fine-tuning (the
/// evaluation labelled "before") and the expert on the evaluations'
/// episodes (mean return minus `minus_expert`), as horizontal lines.
pub(super) struct EvalLines {
    pub(super) marks: Vec<f64>,
    pub(super) before: Option<f64>,
    pub(super) expert: Option<f64>,
}

pub(super) fn eval_lines(rows: &[serde_json::Value], to_log: &dyn Fn(f64) -> f64) -> EvalLines {
    let marks = rows
        .iter()
        .filter_map(|v| {
            Some(to_log(
                0.5 * (v["wall_start_s"].as_f64()? + v["wall_end_s"].as_f64()?),
            ))
        })
        .filter(|x| x.is_finite())
        .collect();
    let before = rows
        .iter()
        .find(|v| v["label"].as_str() == Some("before"))
        .and_then(|v| v["return"].as_f64());
    let expert = mean(rows.iter().filter_map(|v| {
        Some(v["return"].as_f64()? - v["minus_expert"].as_array()?.first()?.as_f64()?)
    }));
    EvalLines {
        marks,
        before,
        expert,
    }
}
