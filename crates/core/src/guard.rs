//! The return guard: an automatic rollback rule for fine-tuning sessions.
//! Each finished episode's return is booked to the policy version that ran
//! the whole episode (an episode during which a swap happened is booked to
//! nobody). Once a new version has `episodes` returns, it is compared once
//! with its parent's latest `episodes` returns:
//!
//! roll back  ⇔  mean(new) < mean(parent) − max(margin, z·SE),
//! SE = sqrt(var(new)/n + var(parent)/m)
//!
//! so a version is undone only when it is worse by more than the margin
//! and by more than z standard errors of the difference (episode returns
//! vary with the task's random targets; one test per version keeps the
//! false-rollback rate at the one-sided z level, 2.3 % for z = 2).
//!
//! Pure bookkeeping on the spin thread; never on the control thread.

use std::collections::{HashMap, HashSet};

/// When the guard acts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    /// Episodes per version before it is judged (0: guard off).
    pub episodes: usize,
    /// Smallest drop in mean return that counts (return units).
    pub margin: f64,
    /// Standard errors of the difference a drop must also exceed.
    pub z: f64,
}

/// The guard's judgement of a version.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Keep {
        new_mean: f64,
        parent_mean: f64,
    },
    RollBack {
        new_mean: f64,
        parent_mean: f64,
        threshold: f64,
    },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Keep { new_mean, parent_mean } => write!(
                f,
                "kept: mean return {new_mean:.2} against its parent's {parent_mean:.2}"
            ),
            Verdict::RollBack { new_mean, parent_mean, threshold } => write!(
                f,
                "rolled back: mean return {new_mean:.2} is below its parent's {parent_mean:.2} by more than {threshold:.2}"
            ),
        }
    }
}

#[derive(Debug)]
pub struct ReturnGuard {
    cfg: GuardConfig,
    /// The version live at the end of the previous episode (so at the
    /// start of the next).
    last_live: Option<String>,
    returns: HashMap<String, Vec<f64>>,
    judged: HashSet<String>,
}

fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var)
}

impl ReturnGuard {
    pub fn new(cfg: GuardConfig) -> Self {
        Self {
            cfg,
            last_live: None,
            returns: HashMap::new(),
            judged: HashSet::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.episodes > 0
    }

    /// An episode ended with return `ret` while `live` (a digest) runs;
    /// `parent` is the version `live` replaced. Returns a verdict the first
    /// time `live` has enough episodes (and its parent too).
    pub fn episode(&mut self, ret: f64, live: &str, parent: Option<&str>) -> Option<Verdict> {
        let whole = self.last_live.as_deref() == Some(live);
        self.last_live = Some(live.to_string());
        if !self.enabled() || !whole || !ret.is_finite() {
            return None;
        }
        let k = self.cfg.episodes;
        self.returns.entry(live.to_string()).or_default().push(ret);
        let parent = parent?;
        let new = &self.returns[live];
        let old = self.returns.get(parent)?;
        if new.len() < k || old.len() < k || self.judged.contains(live) {
            return None;
        }
        self.judged.insert(live.to_string());
        let (nm, nv) = mean_var(&new[..k]);
        let (pm, pv) = mean_var(&old[old.len() - k..]);
        let se = (nv / k as f64 + pv / k as f64).sqrt();
        let threshold = self.cfg.margin.max(self.cfg.z * se);
        Some(if nm < pm - threshold {
            Verdict::RollBack {
                new_mean: nm,
                parent_mean: pm,
                threshold,
            }
        } else {
            Verdict::Keep {
                new_mean: nm,
                parent_mean: pm,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> ReturnGuard {
        ReturnGuard::new(GuardConfig {
            episodes: 4,
            margin: 0.5,
            z: 2.0,
        })
    }

    #[test]
    fn a_clearly_worse_version_is_rolled_back_once() {
        let mut g = guard();
        for r in [-5.0, -5.2, -4.8, -5.0, -5.1] {
            assert_eq!(g.episode(r, "v1", None), None);
        }
        // the episode that saw the swap is booked to nobody
        assert_eq!(g.episode(-20.0, "v2", Some("v1")), None);
        for r in [-8.0, -8.2, -7.9] {
            assert_eq!(g.episode(r, "v2", Some("v1")), None);
        }
        match g.episode(-8.1, "v2", Some("v1")) {
            Some(Verdict::RollBack {
                new_mean,
                parent_mean,
                ..
            }) => {
                assert!((new_mean + 8.05).abs() < 1e-9);
                assert!((parent_mean + 5.025).abs() < 1e-9, "the parent's last 4");
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(g.episode(-8.0, "v2", Some("v1")), None, "judged once");
    }

    #[test]
    fn a_drop_within_the_noise_or_the_margin_is_kept() {
        let mut g = guard();
        // parent: noisy returns (sd ≈ 3)
        for r in [-2.0, -8.0, -3.0, -9.0, -5.0] {
            g.episode(r, "v1", None);
        }
        g.episode(0.0, "v2", Some("v1"));
        for r in [-4.0, -10.0, -6.0] {
            g.episode(r, "v2", Some("v1"));
        }
        // mean −7.25 vs −6.25: 1.0 worse, but 2·SE ≈ 4.3
        assert!(matches!(
            g.episode(-9.0, "v2", Some("v1")),
            Some(Verdict::Keep { .. })
        ));
        // quiet returns: 0.4 worse is inside the margin
        let mut g = guard();
        for r in [-5.0; 5] {
            g.episode(r, "a", None);
        }
        g.episode(0.0, "b", Some("a"));
        for r in [-5.4; 3] {
            g.episode(r, "b", Some("a"));
        }
        assert!(matches!(
            g.episode(-5.4, "b", Some("a")),
            Some(Verdict::Keep { .. })
        ));
    }

    #[test]
    fn off_or_without_a_judged_parent_it_never_acts() {
        let mut g = ReturnGuard::new(GuardConfig {
            episodes: 0,
            margin: 0.5,
            z: 2.0,
        });
        for _ in 0..10 {
            assert_eq!(g.episode(-1.0, "v1", None), None);
        }
        let mut g = guard();
        g.episode(-1.0, "v2", Some("v1"));
        for _ in 0..10 {
            assert_eq!(
                g.episode(-100.0, "v2", Some("v1")),
                None,
                "parent never ran"
            );
        }
    }
}
