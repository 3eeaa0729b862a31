//! `flowpilot report`: what a person looks at after a session on the
//! robot. From a transition log (and the hot swap's checkpoint directory):
//! PNG plots of the actions and their log-probs, the decisions, the return
//! per episode with the version that was live, the loop's tick-interval
//! jitter, and the versions' lineage, all in one self-contained HTML page
//! (images inlined). Offline; allocates freely.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;

use crate::plot::{line_plot, Series};
use flowpilot_core::checkpoint::CheckpointDir;
use flowpilot_core::log::reader::{log_files, read_file};
use flowpilot_core::log::Transition;
use flowpilot_core::policy::model::ModelFile;
use flowpilot_core::rt::decision::Decision;

#[derive(clap::Args)]
pub(crate) struct ReportArgs {
    /// A log file or a log directory.
    log: PathBuf,
    /// The hot swap's checkpoint directory (`hot_swap.dir`), for the lineage.
    ckpt: Option<PathBuf>,
    /// Where the PNGs and `index.html` go.
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn run(a: ReportArgs) -> Result<()> {
    let files = if a.log.is_dir() {
        log_files(&a.log).map_err(|e| anyhow::anyhow!(e.chain()))?
    } else {
        vec![a.log.clone()]
    };
    let mut recs: Vec<Transition> = Vec::new();
    for f in &files {
        recs.extend(
            read_file(f)
                .map_err(|e| anyhow::anyhow!(e.chain()))
                .with_context(|| format!("reading {}", f.display()))?,
        );
    }
    if recs.is_empty() {
        bail!("no records in {}", a.log.display());
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let t0 = recs.iter().map(|r| r.mono_ns).min().unwrap_or(0);
    let secs = |r: &Transition| (r.mono_ns - t0) as f64 * 1e-9;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>flowpilot session report</title>\
         <style>body{{font-family:sans-serif;max-width:960px;margin:auto}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px}}img{{max-width:100%}}</style></head><body>\
         <h1>flowpilot session report</h1><p>{} records from {} file(s) in {}, {:.1} s</p>",
        recs.len(),
        files.len(),
        esc(&a.log.display().to_string()),
        recs.iter().map(&secs).fold(0.0, f64::max)
    );
    // Decisions: counts and a time line.
    let mut counts: BTreeMap<u8, usize> = BTreeMap::new();
    for r in &recs {
        *counts.entry(r.decision).or_default() += 1;
    }
    html += "<h2>Decisions</h2><table><tr><th>decision</th><th>records</th></tr>";
    for (d, n) in &counts {
        let _ = write!(html, "<tr><td>{}</td><td>{n}</td></tr>", decision_name(*d));
    }
    html += "</table>";
    let dec: Vec<(f64, f64)> = recs.iter().map(|r| (secs(r), r.decision as f64)).collect();
    let legend = Decision::legend();
    html += &figure(
        &a.out,
        "decisions.png",
        "Decision per logged tick",
        "time (s)",
        &legend,
        &[Series {
            name: "decision",
            points: &dec,
        }],
    )?;
    // Actions applied and log-probs, per dimension.
    let d = recs.iter().map(|r| r.n_act).max().unwrap_or(0);
    let acts: Vec<Vec<(f64, f64)>> = (0..d)
        .map(|j| {
            recs.iter()
                .map(|r| {
                    (
                        secs(r),
                        r.applied()
                            .map_or(f64::NAN, |a| a.get(j).copied().unwrap_or(f64::NAN)),
                    )
                })
                .collect()
        })
        .collect();
    let names: Vec<String> = (0..d).map(|j| format!("action {j}")).collect();
    let series: Vec<Series> = acts
        .iter()
        .zip(&names)
        .map(|(p, n)| Series { name: n, points: p })
        .collect();
    html += "<h2>Actions and log-probs</h2>";
    html += &figure(
        &a.out,
        "actions.png",
        "Applied action per dimension",
        "time (s)",
        "physical units",
        &series,
    )?;
    let lp: Vec<(f64, f64)> = recs
        .iter()
        .filter(|r| r.decision == Decision::Policy.code())
        .map(|r| (secs(r), r.log_prob as f64))
        .collect();
    if !lp.is_empty() {
        html += &figure(
            &a.out,
            "log_prob.png",
            "Exact log-prob of the sampled action",
            "time (s)",
            "log π",
            &[Series {
                name: "log π(a|s)",
                points: &lp,
            }],
        )?;
    }
    // Return per episode, with the version live at its end.
    let mut eps: BTreeMap<u64, (f64, u64, usize)> = BTreeMap::new();
    for r in &recs {
        let e = eps.entry(r.episode).or_insert((0.0, 0, 0));
        if r.reward.is_finite() {
            e.0 += r.reward;
        }
        e.1 = r.policy.version;
        e.2 += 1;
    }
    html += "<h2>Episodes</h2>";
    if eps.values().any(|e| e.0 != 0.0) {
        let ret: Vec<(f64, f64)> = eps.iter().map(|(k, e)| (*k as f64, e.0)).collect();
        html += &figure(
            &a.out,
            "returns.png",
            "Return per episode",
            "episode",
            "return",
            &[Series {
                name: "return",
                points: &ret,
            }],
        )?;
    }
    html += "<table><tr><th>episode</th><th>records</th><th>return</th><th>version at its end</th></tr>";
    for (k, e) in &eps {
        let _ = write!(
            html,
            "<tr><td>{k}</td><td>{}</td><td>{:.3}</td><td>{}</td></tr>",
            e.2, e.0, e.1
        );
    }
    html += "</table>";
    // Tick-interval jitter: consecutive records' spacing against its median.
    let mut gaps: Vec<f64> = recs
        .windows(2)
        .filter(|w| w[1].mono_ns > w[0].mono_ns && w[1].tick > w[0].tick)
        .map(|w| (w[1].mono_ns - w[0].mono_ns) as f64 / (w[1].tick - w[0].tick) as f64)
        .collect();
    if gaps.len() > 10 {
        gaps.sort_by(f64::total_cmp);
        let med = gaps[gaps.len() / 2];
        let dev: Vec<f64> = gaps.iter().map(|g| (g - med) * 1e-3).collect();
        let (lo, hi) = (dev[0], dev[dev.len() - 1]);
        let bins = 60usize;
        let w = ((hi - lo) / bins as f64).max(1e-9);
        let mut h = vec![0usize; bins];
        for v in &dev {
            h[(((v - lo) / w) as usize).min(bins - 1)] += 1;
        }
        let hist: Vec<(f64, f64)> = h
            .iter()
            .enumerate()
            .map(|(i, n)| (lo + (i as f64 + 0.5) * w, *n as f64))
            .collect();
        html += "<h2>Loop timing</h2>";
        let _ = write!(
            html,
            "<p>median tick period {:.1} µs (from the logged ticks' monotonic stamps)</p>",
            med * 1e-3
        );
        html += &figure(
            &a.out,
            "jitter.png",
            "Tick period minus its median",
            "µs",
            "records",
            &[Series {
                name: "count",
                points: &hist,
            }],
        )?;
    }
    if let Some(dir) = &a.ckpt {
        html += &lineage(dir);
    }
    // Once rendered, the page says how many of its plots the browser could
    // decode (`data-images="loaded/total"` on <body>): what a headless
    // browser check reads (tests/ros/test_log_tools.py).
    html += "<script>addEventListener('load',()=>{const i=[...document.images];\
             document.body.dataset.images=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length})\
             </script></body></html>";
    let index = a.out.join("index.html");
    std::fs::write(&index, html).with_context(|| format!("writing {}", index.display()))?;
    println!("wrote {}", index.display());
    Ok(())
}

/// Draw a plot into `out/name` and return its HTML, with the image inlined.
fn figure(
    out: &Path,
    name: &str,
    title: &str,
    x: &str,
    y: &str,
    series: &[Series<'_>],
) -> Result<String> {
    let path = out.join(name);
    line_plot(&path, title, x, y, series)?;
    let png = std::fs::read(&path)?;
    Ok(format!(
        "<figure><img alt=\"{}\" src=\"data:image/png;base64,{}\"><figcaption>{}</figcaption></figure>",
        esc(title),
        base64::engine::general_purpose::STANDARD.encode(png),
        esc(title)
    ))
}

/// The versions in a checkpoint directory: version, digest, parent, and
/// whether the hot swap accepted it or it was rolled back.
fn lineage(dir: &Path) -> String {
    let store = CheckpointDir::new(dir);
    let record = store.accepted();
    // Unreadable: every version's status is then unknown, not "accepted".
    let revoked = flowpilot_core::versions::Revocations::load(&store).map_err(|e| e.to_string());
    let mut rows: Vec<(u64, String, String, String)> = Vec::new();
    for (p, _) in store.policies() {
        let Ok(m) = ModelFile::load(&p) else {
            rows.push((
                0,
                p.display().to_string(),
                String::new(),
                "unreadable".into(),
            ));
            continue;
        };
        let status = if let Err(e) = &revoked {
            e.as_str()
        } else if revoked.as_ref().is_ok_and(|r| r.contains(&m.spec.digest)) {
            "rolled back"
        } else if record.accepted.iter().any(|a| a == &p) {
            "accepted"
        } else {
            "not accepted"
        };
        rows.push((
            m.spec.version,
            m.spec.digest.clone(),
            m.spec.parent_digest.clone().unwrap_or_default(),
            status.into(),
        ));
    }
    rows.sort();
    let mut h = String::from(
        "<h2>Versions</h2><table><tr><th>version</th><th>digest</th><th>parent</th><th>hot swap</th></tr>",
    );
    for (v, d, p, s) in rows {
        let _ = write!(
            h,
            "<tr><td>{v}</td><td>{}</td><td>{}</td><td>{s}</td></tr>",
            short(&d),
            short(&p)
        );
    }
    h + "</table>"
}

fn short(d: &str) -> String {
    esc(&d.chars().take(19).collect::<String>())
}

fn decision_name(code: u8) -> String {
    flowpilot_core::rt::decision::CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or_else(|| code.to_string(), |(c, n)| format!("{c} {n}"))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
