//! Demonstrations on disk: a NumPy `.npz` archive, so users write it with
//! `np.savez(path, obs=..., act=..., episode=...)`. Documented in
//! `docs/demos-format.md`.
//!
//! Offline only: loading and saving allocate; never on the control thread.

use std::fs::File;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ndarray::{Array1, Array2};
use ndarray_npy::{NpzReader, NpzWriter};

/// Row-major demonstration arrays, f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Demos {
    pub obs_dim: usize,
    pub goal_dim: usize,
    pub act_dim: usize,
    /// (N, obs_dim)
    pub obs: Vec<f32>,
    /// (N, goal_dim); empty when goal_dim = 0
    pub goal: Vec<f32>,
    /// (N, act_dim), physical units
    pub act: Vec<f32>,
    /// (N,) episode index of each row (non-decreasing is not required)
    pub episode: Vec<i64>,
    /// Optional physical action bounds.
    pub act_low: Option<Vec<f32>>,
    pub act_high: Option<Vec<f32>>,
    /// Optional (N,) reward after taking row i's action (offline RL).
    pub reward: Option<Vec<f32>>,
    /// Optional (N,) row i's action ended the episode in a terminal state.
    pub terminal: Option<Vec<bool>>,
}

impl Demos {
    pub fn len(&self) -> usize {
        self.episode.len()
    }

    pub fn is_empty(&self) -> bool {
        self.episode.is_empty()
    }

    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let f = File::open(path).with_context(|| format!("opening demos {}", path.display()))?;
        let mut npz = NpzReader::new(f)
            .with_context(|| format!("{} is not a .npz archive", path.display()))?;
        let names: Vec<String> = npz
            .names()?
            .into_iter()
            .map(|n| n.trim_end_matches(".npy").to_string())
            .collect();
        let has = |n: &str| names.iter().any(|x| x == n);
        if !has("obs") || !has("act") {
            bail!(
                "{}: demos need arrays 'obs' (N, obs_dim) and 'act' (N, act_dim); found {names:?}",
                path.display()
            );
        }
        let (obs, n, obs_dim) = read2(&mut npz, "obs")?;
        let (act, na, act_dim) = read2(&mut npz, "act")?;
        if na != n {
            bail!("'act' has {na} rows but 'obs' has {n}");
        }
        let (goal, goal_dim) = if has("goal") {
            let (g, ng, gd) = read2(&mut npz, "goal")?;
            if ng != n {
                bail!("'goal' has {ng} rows but 'obs' has {n}");
            }
            (g, gd)
        } else {
            (Vec::new(), 0)
        };
        let episode = if has("episode") {
            let e = read_i64(&mut npz, "episode")?;
            if e.len() != n {
                bail!("'episode' has {} entries but 'obs' has {n} rows", e.len());
            }
            e
        } else {
            vec![0; n]
        };
        let bound = |npz: &mut NpzReader<File>, name: &str| -> Result<Option<Vec<f32>>> {
            if !has(name) {
                return Ok(None);
            }
            let v = read1(npz, name)?;
            if v.len() != act_dim {
                bail!("'{name}' has {} entries, act_dim is {act_dim}", v.len());
            }
            Ok(Some(v))
        };
        let reward = if has("reward") {
            let r = read1(&mut npz, "reward")?;
            if r.len() != n {
                bail!("'reward' has {} entries but 'obs' has {n} rows", r.len());
            }
            if let Some(i) = r.iter().position(|x| !x.is_finite()) {
                bail!("'reward' holds a non-finite value at index {i}");
            }
            Some(r)
        } else {
            None
        };
        let terminal = if has("terminal") {
            let t = match read_i64(&mut npz, "terminal") {
                Ok(t) => t.iter().map(|&v| v != 0).collect::<Vec<_>>(),
                Err(_) => npz
                    .by_name::<ndarray::OwnedRepr<bool>, ndarray::Ix1>("terminal")
                    .context("'terminal' must be a 1-D bool or int array")?
                    .to_vec(),
            };
            if t.len() != n {
                bail!("'terminal' has {} entries but 'obs' has {n} rows", t.len());
            }
            Some(t)
        } else {
            None
        };
        let act_low = bound(&mut npz, "act_low")?;
        let act_high = bound(&mut npz, "act_high")?;
        if n == 0 {
            bail!("{}: demos are empty", path.display());
        }
        for (name, v) in [("obs", &obs), ("act", &act), ("goal", &goal)] {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                bail!("'{name}' holds a non-finite value at flat index {i}");
            }
        }
        Ok(Self {
            obs_dim,
            goal_dim,
            act_dim,
            obs,
            goal,
            act,
            episode,
            act_low,
            act_high,
            reward,
            terminal,
        })
    }

    /// Each episode's row indices in file order, by episode number.
    pub(crate) fn episode_rows(&self) -> std::collections::BTreeMap<i64, Vec<usize>> {
        let mut rows: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
        for (i, e) in self.episode.iter().enumerate() {
            rows.entry(*e).or_default().push(i);
        }
        rows
    }

    /// The rows as a chunked, history-conditioned policy sees them: row t
    /// becomes (the last `horizon` observations of its episode, oldest
    /// first, the episode's first one repeated before its start; the goal
    /// of row t; the actions of rows t..t+chunk, the episode's last one
    /// repeated past its end), as Diffusion Policy's sequence sampler pads.
    /// Windows never cross an episode boundary. An episode's rows are taken
    /// in file order. Rewards and terminals are dropped (BC only); bounds
    /// are repeated over the chunk.
    pub fn windows(&self, chunk: usize, horizon: usize) -> Demos {
        let (h, n) = (chunk.max(1), horizon.max(1));
        let (od, ad) = (self.obs_dim, self.act_dim);
        let rows = self.episode_rows();
        let mut out = Demos {
            obs_dim: od * n,
            goal_dim: self.goal_dim,
            act_dim: ad * h,
            obs: Vec::with_capacity(self.obs.len() * n),
            goal: Vec::with_capacity(self.goal.len()),
            act: Vec::with_capacity(self.act.len() * h),
            episode: Vec::with_capacity(self.len()),
            act_low: self.act_low.as_ref().map(|v| v.repeat(h)),
            act_high: self.act_high.as_ref().map(|v| v.repeat(h)),
            reward: None,
            terminal: None,
        };
        for (e, ep) in &rows {
            let last = ep.len() - 1;
            for t in 0..ep.len() {
                for k in 0..n {
                    let r = ep[(t + k).saturating_sub(n - 1)];
                    out.obs.extend_from_slice(&self.obs[r * od..(r + 1) * od]);
                }
                let g = self.goal_dim;
                out.goal
                    .extend_from_slice(&self.goal[ep[t] * g..(ep[t] + 1) * g]);
                for k in 0..h {
                    let r = ep[(t + k).min(last)];
                    out.act.extend_from_slice(&self.act[r * ad..(r + 1) * ad]);
                }
                out.episode.push(*e);
            }
        }
        out
    }

    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let n = self.len();
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = NpzWriter::new(f);
        w.add_array(
            "obs",
            &Array2::from_shape_vec((n, self.obs_dim), self.obs.clone())?,
        )?;
        w.add_array(
            "act",
            &Array2::from_shape_vec((n, self.act_dim), self.act.clone())?,
        )?;
        if self.goal_dim > 0 {
            w.add_array(
                "goal",
                &Array2::from_shape_vec((n, self.goal_dim), self.goal.clone())?,
            )?;
        }
        w.add_array("episode", &Array1::from_vec(self.episode.clone()))?;
        if let Some(r) = &self.reward {
            w.add_array("reward", &Array1::from_vec(r.clone()))?;
        }
        if let Some(t) = &self.terminal {
            w.add_array(
                "terminal",
                &Array1::from_vec(t.iter().map(|&b| b as i64).collect()),
            )?;
        }
        if let (Some(l), Some(h)) = (&self.act_low, &self.act_high) {
            w.add_array("act_low", &Array1::from_vec(l.clone()))?;
            w.add_array("act_high", &Array1::from_vec(h.clone()))?;
        }
        w.finish()?;
        Ok(())
    }
}

fn read2(npz: &mut NpzReader<File>, name: &str) -> Result<(Vec<f32>, usize, usize)> {
    let a: Array2<f32> = match npz.by_name::<ndarray::OwnedRepr<f32>, ndarray::Ix2>(name) {
        Ok(a) => a,
        Err(_) => npz
            .by_name::<ndarray::OwnedRepr<f64>, ndarray::Ix2>(name)
            .with_context(|| format!("'{name}' must be a 2-D float32 or float64 array"))?
            .mapv(|v| v as f32),
    };
    let (r, c) = a.dim();
    Ok((a.as_standard_layout().iter().copied().collect(), r, c))
}

fn read1(npz: &mut NpzReader<File>, name: &str) -> Result<Vec<f32>> {
    match npz.by_name::<ndarray::OwnedRepr<f32>, ndarray::Ix1>(name) {
        Ok(a) => Ok(a.to_vec()),
        Err(_) => Ok(npz
            .by_name::<ndarray::OwnedRepr<f64>, ndarray::Ix1>(name)
            .with_context(|| format!("'{name}' must be a 1-D float array"))?
            .iter()
            .map(|&v| v as f32)
            .collect()),
    }
}

fn read_i64(npz: &mut NpzReader<File>, name: &str) -> Result<Vec<i64>> {
    if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<i64>, ndarray::Ix1>(name) {
        return Ok(a.to_vec());
    }
    Ok(npz
        .by_name::<ndarray::OwnedRepr<i32>, ndarray::Ix1>(name)
        .with_context(|| format!("'{name}' must be a 1-D int32 or int64 array"))?
        .iter()
        .map(|&v| v as i64)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_pad_at_episode_edges_and_never_cross_them() {
        // two episodes, interleaved in the file: 1-D obs = 10 * episode + t,
        // 1-D act = 100 * episode + t
        let (mut obs, mut act, mut episode) = (vec![], vec![], vec![]);
        for (e, t) in [(0, 0), (1, 0), (0, 1), (0, 2), (1, 1)] {
            obs.push((10 * e + t) as f32);
            act.push((100 * e + t) as f32);
            episode.push(e as i64);
        }
        let d = Demos {
            obs_dim: 1,
            goal_dim: 0,
            act_dim: 1,
            obs,
            goal: vec![],
            act,
            episode,
            act_low: Some(vec![-1.0]),
            act_high: Some(vec![1.0]),
            reward: Some(vec![0.0; 5]),
            terminal: None,
        };
        let w = d.windows(3, 2);
        assert_eq!((w.obs_dim, w.act_dim, w.len()), (2, 3, 5));
        // episode 0: t = 0, 1, 2; episode 1: t = 0, 1
        assert_eq!(w.obs, vec![0., 0., 0., 1., 1., 2., 10., 10., 10., 11.]);
        assert_eq!(
            w.act,
            vec![0., 1., 2., 1., 2., 2., 2., 2., 2., 100., 101., 101., 101., 101., 101.]
        );
        assert_eq!(w.episode, vec![0, 0, 0, 1, 1]);
        assert_eq!(w.act_low, Some(vec![-1.0; 3]));
        assert!(w.reward.is_none());
    }
}
