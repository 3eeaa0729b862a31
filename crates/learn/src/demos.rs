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
