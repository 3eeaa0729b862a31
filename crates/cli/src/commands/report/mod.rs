//! `flowpilot report`: what a person looks at after a session on the
//! robot, from the transition log and the hot swap's checkpoint directory
//! only, as one self-contained HTML page (images inlined), top to bottom:
//! the session in numbers; the return against robot time (smoothed, with
//! each version swap and rollback marked); the learner's curves (from its
//! metrics history, `flowpilot_core::learner_metrics`); safety events (e-stop,
//! stale and invalid spans); loop health ([`loop_health`]: jitter, missed
//! periods and the decision mix over time); actions and log-probs;
//! episodes (collapsed, and `episodes.csv`); the versions' lineage.
//! With `--every` the page is live: regenerated while the log grows (the
//! reader follows files still being written) and written atomically.
//! Offline; allocates freely.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;

use crate::plot::{line_plot_marked, Marks, Series};
use flowpilot_core::checkpoint::CheckpointDir;
use flowpilot_core::contract::log_meta;
use flowpilot_core::log::reader::{log_files, Tail};
use flowpilot_core::log::Transition;
use flowpilot_core::policy::model::ModelFile;
use flowpilot_core::rt::decision::Decision;

mod evaluations;
mod loop_health;

use evaluations::{eval_lines, evaluations_table, read_evaluations};

#[derive(clap::Args)]
pub(crate) struct ReportArgs {
    /// A log file or a log directory.
    log: PathBuf,
    /// The hot swap's checkpoint directory (`hot_swap.dir`), for the lineage.
    ckpt: Option<PathBuf>,
    /// Where the PNGs and `index.html` go.
    #[arg(long)]
    out: PathBuf,
    /// Keep the page live while the session runs: regenerate it every SECS
    /// seconds (the page reloads itself) until the log is closed (the node
    /// stopped) or on Ctrl-C, then write the final page.
    #[arg(long, value_name = "SECS")]
    every: Option<f64>,
}

/// What the log holds now.
#[derive(Default)]
struct Loaded {
    files: Vec<PathBuf>,
    recs: Vec<Transition>,
    /// Every file has its footer: the writer closed them all.
    closed: bool,
    /// The loop's nominal rate, from the first file's metadata.
    rate_hz: Option<f64>,
}

fn load(log: &Path) -> Result<Loaded> {
    let files = if log.is_dir() {
        log_files(log).map_err(|e| anyhow::anyhow!(e.chain()))?
    } else {
        vec![log.to_path_buf()]
    };
    let (mut recs, mut closed, mut rate_hz) = (Vec::new(), !files.is_empty(), None);
    for f in &files {
        let mut t = Tail::new(f);
        recs.extend(
            t.poll()
                .map_err(|e| anyhow::anyhow!(e.chain()))
                .with_context(|| format!("reading {}", f.display()))?,
        );
        closed &= t.closed;
        rate_hz = rate_hz.or_else(|| t.metadata.get(log_meta::RATE_HZ)?.parse::<f64>().ok());
    }
    Ok(Loaded {
        files,
        recs,
        closed,
        rate_hz,
    })
}

pub(crate) fn run(a: ReportArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let index = a.out.join("index.html");
    let Some(every) = a.every else {
        let log = load(&a.log)?;
        if log.recs.is_empty() {
            bail!("no records in {}", a.log.display());
        }
        write_atomic(&index, &render(&a, &log, None)?)?;
        println!("wrote {}", index.display());
        return Ok(());
    };
    if !(every.is_finite() && every >= 0.1) {
        bail!("--every {every}: give the seconds between two pages, at least 0.1");
    }
    live(&a, every, &index)
}

/// `--every`: a page every `every` seconds while the log grows. The
/// session has ended when every file was closed on two rounds in a row
/// with no new file (a rotation closes one file and opens the next).
fn live(a: &ReportArgs, every: f64, index: &Path) -> Result<()> {
    let stop = flowpilot_core::shutdown::Shutdown::install();
    let mut closed_before: Option<Vec<PathBuf>> = None;
    loop {
        // Started before the node: no log directory yet.
        let log = if a.log.exists() {
            load(&a.log)?
        } else {
            Loaded::default()
        };
        let ended = log.closed && closed_before.as_ref() == Some(&log.files);
        closed_before = log.closed.then(|| log.files.clone());
        if (ended || stop.requested()) && !log.recs.is_empty() {
            write_atomic(index, &render(a, &log, None)?)?;
            println!("wrote {} (final)", index.display());
            return Ok(());
        }
        if stop.requested() {
            bail!("stopped before the first record in {}", a.log.display());
        }
        let page = if log.recs.is_empty() {
            format!(
                "{}<p class=\"live\">waiting for the first records in {}</p></body></html>",
                page_head(Some(every)),
                esc(&a.log.display().to_string())
            )
        } else {
            render(a, &log, Some(every))?
        };
        write_atomic(index, &page)?;
        tracing::info!(records = log.recs.len(), "report page written");
        let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(every);
        while std::time::Instant::now() < until && !stop.requested() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// A browser reloading the page never reads half of it.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("html.part");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The page's head and title; `live`: it reloads itself after that many
/// seconds.
fn page_head(live: Option<f64>) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">{}<title>flowpilot session report</title>\
         <style>body{{font-family:sans-serif;max-width:960px;margin:auto}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px}}img{{max-width:100%}}</style></head><body>\
         <h1>flowpilot session report</h1>",
        live.map_or(String::new(), |s| format!(
            "<meta http-equiv=\"refresh\" content=\"{s}\">"
        ))
    )
}

/// The page for what the log holds now; `live`: the seconds to the next
/// page, which the page reloads itself after.
fn render(a: &ReportArgs, log: &Loaded, live: Option<f64>) -> Result<String> {
    let (files, recs) = (&log.files, &log.recs);
    let t0 = recs.iter().map(|r| r.mono_ns).min().unwrap_or(0);
    let secs = |r: &Transition| (r.mono_ns - t0) as f64 * 1e-9;
    let span = recs.iter().map(secs).fold(0.0, f64::max);
    let mut html = page_head(live);
    let _ = write!(
        html,
        "<p>{} records from {} file(s) in {}, {:.1} s</p>",
        recs.len(),
        files.len(),
        esc(&a.log.display().to_string()),
        span
    );
    if let Some(s) = live {
        let _ = write!(
            html,
            "<p class=\"live\">live: the session is running; this page is regenerated every {s} s</p>"
        );
    }
    let eps = episodes(recs, &secs);
    let whole = whole_episodes(&eps);
    let history = match &a.ckpt {
        Some(d) => {
            flowpilot_core::learner_metrics::read_history(d).map_err(|e| anyhow::anyhow!("{e}"))?
        }
        None => Vec::new(),
    };
    // Version changes along the log: (time, from, to).
    let changes: Vec<(f64, u64, u64)> = recs
        .windows(2)
        .filter(|w| w[1].policy.version != w[0].policy.version)
        .map(|w| (secs(&w[1]), w[0].policy.version, w[1].policy.version))
        .collect();
    html += &summary(recs, eps.len(), &whole, &changes, &history, span);
    let evals = match &a.ckpt {
        Some(d) => read_evaluations(d)?,
        None => Vec::new(),
    };
    html += &evaluations_table(&evals);
    // Unix time to the log's seconds, through the first record's pair of
    // stamps.
    let to_log = |wall_s: f64| match recs.first() {
        Some(r) => wall_s - r.wall_ns as f64 * 1e-9 + secs(r),
        None => f64::NAN,
    };
    html += &returns_figure(&a.out, &whole, &changes, &evals, &to_log)?;
    html += &learner_figures(&a.out, &history)?;
    html += &safety_events(recs, &secs);
    html += &loop_health::section(&a.out, recs, &secs, span, log.rate_hz)?;
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
    html += &episode_table(&a.out, &eps)?;
    if let Some(dir) = &a.ckpt {
        html += &lineage(dir);
    }
    // Once rendered, the page says how many of its plots the browser could
    // decode (`data-images="loaded/total"` on <body>): what a headless
    // browser check reads (tests/ros/test_log_tools.py).
    html += "<script>addEventListener('load',()=>{const i=[...document.images];\
             document.body.dataset.images=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length})\
             </script></body></html>";
    Ok(html)
}

/// One episode as the log has it.
struct Episode {
    id: u64,
    records: usize,
    /// Records with a (finite) reward.
    rewarded: usize,
    ret: f64,
    /// Robot time of its last record (s from the log's start).
    end_s: f64,
    /// The version live at its end.
    version: u64,
}

fn episodes(recs: &[Transition], secs: &dyn Fn(&Transition) -> f64) -> Vec<Episode> {
    let mut eps: BTreeMap<u64, Episode> = BTreeMap::new();
    for r in recs {
        let e = eps.entry(r.episode).or_insert(Episode {
            id: r.episode,
            records: 0,
            rewarded: 0,
            ret: 0.0,
            end_s: 0.0,
            version: 0,
        });
        if r.reward.is_finite() {
            e.ret += r.reward;
            e.rewarded += 1;
        }
        e.records += 1;
        e.end_s = e.end_s.max(secs(r));
        e.version = r.policy.version;
    }
    eps.into_values().collect()
}

/// The episodes a return describes: those that saw a reward, less the
/// log's last one when the session stopped in it (fewer rewarded steps than
/// half the median episode's: the stale ticks after the robot stopped).
fn whole_episodes(eps: &[Episode]) -> Vec<&Episode> {
    let mut v: Vec<&Episode> = eps.iter().filter(|e| e.rewarded > 0).collect();
    let mut n: Vec<usize> = v.iter().map(|e| e.rewarded).collect();
    n.sort_unstable();
    if let (Some(last), Some(&median)) = (v.last(), n.get(n.len() / 2)) {
        if v.len() > 1 && last.rewarded * 2 < median {
            v.pop();
        }
    }
    v
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (n, s) = v.fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    (n > 0).then(|| s / n as f64)
}

/// The session in numbers: the page's first table.
fn summary(
    recs: &[Transition],
    episodes: usize,
    eps: &[&Episode],
    changes: &[(f64, u64, u64)],
    history: &[flowpilot_core::learner_metrics::LearnerMetrics],
    span: f64,
) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    rows.push(("robot time".into(), format!("{span:.1} s")));
    rows.push(("episodes".into(), episodes.to_string()));
    let first = recs.first().map_or(0, |r| r.policy.version);
    let last = recs.last().map_or(0, |r| r.policy.version);
    rows.push((
        "versions (first → last)".into(),
        format!("{first} → {last}"),
    ));
    let back = changes.iter().filter(|c| c.2 < c.1).count();
    rows.push((
        "versions swapped in".into(),
        (changes.len() - back).to_string(),
    ));
    rows.push(("returns to an earlier version".into(), back.to_string()));
    if let Some(m) = history.last() {
        rows.push(("learner updates".into(), m.updates.to_string()));
    }
    // The first and last 20 whole episodes, and the best version by its
    // episodes' mean return (at least 5 episodes).
    let n = eps.len().min(20);
    if n > 0 {
        let head = mean(eps[..n].iter().map(|e| e.ret)).unwrap_or(f64::NAN);
        let tail = mean(eps[eps.len() - n..].iter().map(|e| e.ret)).unwrap_or(f64::NAN);
        rows.push((
            format!("mean return, first {n} episodes"),
            format!("{head:.3}"),
        ));
        rows.push((
            format!("mean return, last {n} episodes"),
            format!("{tail:.3}"),
        ));
        let mut by_version: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for e in eps {
            by_version.entry(e.version).or_default().push(e.ret);
        }
        if let Some((v, r)) = by_version
            .iter()
            .filter(|(_, r)| r.len() >= 5)
            .map(|(v, r)| (*v, r.iter().sum::<f64>() / r.len() as f64))
            .max_by(|a, b| a.1.total_cmp(&b.1))
        {
            rows.push((
                "best version (≥ 5 episodes)".into(),
                format!("{v}: mean return {r:.3}"),
            ));
        }
    }
    let mut h = String::from("<h2>Session</h2><table class=\"summary\">");
    for (k, v) in rows {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(&k), esc(&v));
    }
    h + "</table>"
}

/// Return per episode against robot time: each episode, a moving mean
/// over 20 with a ± 1 SD band, and a mark at every version change.
fn returns_figure(
    out: &Path,
    eps: &[&Episode],
    changes: &[(f64, u64, u64)],
    evals: &[serde_json::Value],
    to_log: &dyn Fn(f64) -> f64,
) -> Result<String> {
    if eps.is_empty() {
        return Ok("<h2>Return</h2><p>no reward in the log</p>".into());
    }
    let lines = eval_lines(evals, to_log);
    let (x0, x1) = (eps[0].end_s, eps[eps.len() - 1].end_s);
    let level = |y: Option<f64>| y.map_or(Vec::new(), |y| vec![(x0, y), (x1, y)]);
    let (before, expert) = (level(lines.before), level(lines.expert));
    let raw: Vec<(f64, f64)> = eps.iter().map(|e| (e.end_s, e.ret)).collect();
    let w = 20usize.min(eps.len());
    let (mut avg, mut lo, mut hi) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..eps.len() {
        let win = &eps[i.saturating_sub(w - 1)..=i];
        let m = win.iter().map(|e| e.ret).sum::<f64>() / win.len() as f64;
        let sd = (win.iter().map(|e| (e.ret - m).powi(2)).sum::<f64>() / win.len() as f64).sqrt();
        avg.push((eps[i].end_s, m));
        lo.push((eps[i].end_s, m - sd));
        hi.push((eps[i].end_s, m + sd));
    }
    let swaps: Vec<f64> = changes.iter().filter(|c| c.2 > c.1).map(|c| c.0).collect();
    let backs: Vec<f64> = changes.iter().filter(|c| c.2 < c.1).map(|c| c.0).collect();
    let (mean_name, band_lo, band_hi) = (
        format!("mean of the last {w}"),
        "mean − 1 SD".to_string(),
        "mean + 1 SD".to_string(),
    );
    let said = format!(
        "<p class=\"marks\">marked: {} versions swapped in, {} returns to an earlier version, {} evaluations</p>",
        swaps.len(),
        backs.len(),
        lines.marks.len()
    );
    Ok(String::from("<h2>Return</h2>")
        + &figure_marked(
            out,
            "returns.png",
            "Return per episode against robot time",
            "robot time (s)",
            "return",
            &[
                Series {
                    name: "episode",
                    points: &raw,
                },
                Series {
                    name: &mean_name,
                    points: &avg,
                },
                Series {
                    name: &band_lo,
                    points: &lo,
                },
                Series {
                    name: &band_hi,
                    points: &hi,
                },
                Series {
                    name: "before fine-tuning (evaluation)",
                    points: &before,
                },
                Series {
                    name: "scripted expert (same episodes)",
                    points: &expert,
                },
            ],
            &[
                Marks {
                    name: "version swapped in",
                    xs: &swaps,
                    color: plotters::style::RGBColor(0, 160, 160),
                },
                Marks {
                    name: "back to an earlier version",
                    xs: &backs,
                    color: plotters::style::RGBColor(230, 120, 0),
                },
                Marks {
                    name: "evaluation",
                    xs: &lines.marks,
                    color: plotters::style::RGBColor(150, 60, 200),
                },
            ],
        )?
        + &said)
}

/// The learner's curves against its updates, from its metrics history.
fn learner_figures(
    out: &Path,
    history: &[flowpilot_core::learner_metrics::LearnerMetrics],
) -> Result<String> {
    if history.len() < 2 {
        return Ok(String::new());
    }
    let pts =
        |f: &dyn Fn(&flowpilot_core::learner_metrics::LearnerMetrics) -> f64| -> Vec<(f64, f64)> {
            history.iter().map(|m| (m.updates as f64, f(m))).collect()
        };
    let (critic, q, entropy, alpha, ups) = (
        pts(&|m| m.critic_loss),
        pts(&|m| m.q),
        pts(&|m| m.entropy),
        pts(&|m| m.alpha),
        pts(&|m| m.updates_per_s),
    );
    let mut h = String::from("<h2>Learner</h2>");
    for (file, title, y, name, p) in [
        (
            "learner_critic.png",
            "Critic loss against updates",
            "loss",
            "critic loss",
            &critic,
        ),
        ("learner_q.png", "Mean Q against updates", "Q", "mean Q", &q),
        (
            "learner_entropy.png",
            "Entropy against updates",
            "nats",
            "entropy −E[log π]",
            &entropy,
        ),
        (
            "learner_alpha.png",
            "Temperature α against updates",
            "α",
            "α",
            &alpha,
        ),
        (
            "learner_rate.png",
            "Learner speed against updates",
            "updates/s",
            "updates/s",
            &ups,
        ),
    ] {
        h += &figure(
            out,
            file,
            title,
            "updates",
            y,
            &[Series { name, points: p }],
        )?;
    }
    Ok(h)
}

/// E-stop, stale and invalid spans: runs of consecutive records with that
/// decision, with their count and total time.
fn safety_events(recs: &[Transition], secs: &dyn Fn(&Transition) -> f64) -> String {
    let mut h = String::from(
        "<h2>Safety events</h2><table><tr><th>kind</th><th>spans</th><th>records</th><th>time (s)</th><th>first at (s)</th></tr>",
    );
    for d in [
        Decision::EStop,
        Decision::Stale { source: 0 },
        Decision::Invalid,
        Decision::Override,
    ] {
        let code = d.code();
        let (mut spans, mut n, mut t, mut first) = (0usize, 0usize, 0.0, None);
        let mut start: Option<f64> = None;
        for (i, r) in recs.iter().enumerate() {
            if r.decision == code {
                n += 1;
                if start.is_none() {
                    spans += 1;
                    start = Some(secs(r));
                    first.get_or_insert(secs(r));
                }
            }
            let ends = r.decision != code || i + 1 == recs.len();
            if let (true, Some(s0)) = (ends, start) {
                t += secs(r) - s0;
                start = None;
            }
        }
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{spans}</td><td>{n}</td><td>{t:.2}</td><td>{}</td></tr>",
            decision_name(code),
            first.map_or("–".into(), |f: f64| format!("{f:.2}"))
        );
    }
    h + "</table>"
}

/// The per-episode table, collapsed, and the same rows as `episodes.csv`.
fn episode_table(out: &Path, eps: &[Episode]) -> Result<String> {
    let mut csv = String::from("episode,records,return,end_s,version\n");
    let mut h = format!(
        "<details><summary>Episodes: {} (also episodes.csv)</summary><table><tr><th>episode</th><th>records</th><th>return</th><th>version at its end</th></tr>",
        eps.len()
    );
    for e in eps {
        let _ = writeln!(
            csv,
            "{},{},{},{:.3},{}",
            e.id, e.records, e.ret, e.end_s, e.version
        );
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td></tr>",
            e.id, e.records, e.ret, e.version
        );
    }
    let p = out.join("episodes.csv");
    std::fs::write(&p, csv).with_context(|| format!("writing {}", p.display()))?;
    Ok(h + "</table></details>")
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
    figure_marked(out, name, title, x, y, series, &[])
}

/// [`figure`] with vertical event marks.
fn figure_marked(
    out: &Path,
    name: &str,
    title: &str,
    x: &str,
    y: &str,
    series: &[Series<'_>],
    marks: &[Marks<'_>],
) -> Result<String> {
    let path = out.join(name);
    line_plot_marked(&path, title, x, y, series, marks)?;
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
