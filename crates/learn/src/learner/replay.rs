//! The replay buffer: a fixed-capacity ring of (s, a, r, s', done) and the
//! batches drawn from it, filled from logs or from a demos dataset. Off the
//! control thread; its storage is allocated once, sampling allocates.

use candle_core::{Device, Tensor};
use rand::Rng;

use super::error::{LearnerError, Result};
use crate::demos::Demos;
use flowpilot_core::policy::action_space::ActionSpace;
use flowpilot_core::policy::model::ModelSpec;

/// Transitions (s, a, r, s', done) with s = obs ++ goal (raw units) and a
/// in the flow's normalised action space.
pub struct ReplayBuffer {
    in_dim: usize,
    act_dim: usize,
    cap: usize,
    head: usize,
    len: usize,
    s: Vec<f32>,
    a: Vec<f32>,
    r: Vec<f32>,
    s2: Vec<f32>,
    done: Vec<f32>,
}

pub struct Batch {
    pub s: Tensor,
    pub a: Tensor,
    pub r: Tensor,
    pub s2: Tensor,
    pub done: Tensor,
}

impl Batch {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.r.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows of several batches, in order (one batch: itself).
    pub fn cat(parts: &[Batch]) -> Result<Batch> {
        match parts {
            [] => Err(LearnerError::EmptyReplay),
            [one] => Ok(Batch {
                s: one.s.clone(),
                a: one.a.clone(),
                r: one.r.clone(),
                s2: one.s2.clone(),
                done: one.done.clone(),
            }),
            _ => {
                let cat = |f: fn(&Batch) -> &Tensor| -> Result<Tensor> {
                    let v: Vec<&Tensor> = parts.iter().map(f).collect();
                    Ok(Tensor::cat(&v, 0)?)
                };
                Ok(Batch {
                    s: cat(|b| &b.s)?,
                    a: cat(|b| &b.a)?,
                    r: cat(|b| &b.r)?,
                    s2: cat(|b| &b.s2)?,
                    done: cat(|b| &b.done)?,
                })
            }
        }
    }
}

impl ReplayBuffer {
    pub fn new(in_dim: usize, act_dim: usize, cap: usize) -> Self {
        Self {
            in_dim,
            act_dim,
            cap,
            head: 0,
            len: 0,
            s: vec![0.0; cap * in_dim],
            a: vec![0.0; cap * act_dim],
            r: vec![0.0; cap],
            s2: vec![0.0; cap * in_dim],
            done: vec![0.0; cap],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add one transition (the oldest is overwritten when full).
    pub fn push(&mut self, s: &[f32], a: &[f32], r: f32, s2: &[f32], done: bool) {
        let (i, n, d) = (self.head, self.in_dim, self.act_dim);
        self.s[i * n..(i + 1) * n].copy_from_slice(s);
        self.s2[i * n..(i + 1) * n].copy_from_slice(s2);
        self.a[i * d..(i + 1) * d].copy_from_slice(a);
        self.r[i] = r;
        self.done[i] = if done { 1.0 } else { 0.0 };
        self.head = (self.head + 1) % self.cap;
        self.len = (self.len + 1).min(self.cap);
    }

    pub fn sample(&self, b: usize, rng: &mut impl Rng, dev: &Device) -> Result<Batch> {
        if self.len == 0 {
            return Err(LearnerError::EmptyReplay);
        }
        let (n, d) = (self.in_dim, self.act_dim);
        let idx: Vec<usize> = (0..b).map(|_| rng.random_range(0..self.len)).collect();
        let rows = |src: &[f32], w: usize| -> Result<Tensor> {
            let v: Vec<f32> = idx
                .iter()
                .flat_map(|&i| src[i * w..(i + 1) * w].iter().copied())
                .collect();
            Ok(Tensor::from_vec(v, (b, w), dev)?)
        };
        let col = |src: &[f32]| -> Result<Tensor> {
            Ok(Tensor::from_vec(
                idx.iter().map(|&i| src[i]).collect::<Vec<_>>(),
                b,
                dev,
            )?)
        };
        Ok(Batch {
            s: rows(&self.s, n)?,
            a: rows(&self.a, d)?,
            r: col(&self.r)?,
            s2: rows(&self.s2, n)?,
            done: col(&self.done)?,
        })
    }

    /// A fixed dataset for offline RL: consecutive rows of one episode form
    /// a transition; the demos need a `reward` array (and may carry
    /// `terminal`). Actions are normalised by the model's bounds.
    pub(crate) fn from_demos(demos: &Demos, spec: &ModelSpec) -> Result<Self> {
        let Some(rew) = &demos.reward else {
            return Err(LearnerError::NoReward);
        };
        if demos.obs_dim != spec.obs_dim
            || demos.goal_dim != spec.goal_dim
            || demos.act_dim != spec.act_dim
        {
            return Err(LearnerError::DemosDims {
                obs: demos.obs_dim,
                goal: demos.goal_dim,
                act: demos.act_dim,
            });
        }
        let (od, gd, d) = (demos.obs_dim, demos.goal_dim, demos.act_dim);
        let n = demos.len();
        let mut rb = Self::new(od + gd, d, n.max(1));
        let row = |i: usize| -> Vec<f32> {
            let mut v = demos.obs[i * od..(i + 1) * od].to_vec();
            v.extend_from_slice(&demos.goal[i * gd..(i + 1) * gd]);
            v
        };
        let actions = ActionSpace::new(spec);
        for i in 0..n {
            let terminal = demos.terminal.as_ref().is_some_and(|t| t[i]);
            let next_same = i + 1 < n && demos.episode[i + 1] == demos.episode[i];
            if !terminal && !next_same {
                continue; // end of a truncated episode: no next state
            }
            let s = row(i);
            let s2 = if next_same { row(i + 1) } else { s.clone() };
            let a = actions.to_flow_vec(&demos.act[i * d..(i + 1) * d]);
            rb.push(&s, &a, rew[i], &s2, terminal);
        }
        Ok(rb)
    }
}
