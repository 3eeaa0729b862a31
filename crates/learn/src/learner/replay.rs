//! The replay buffer: a fixed-capacity ring of (s, a, r, s', discount) and
//! the batches drawn from it, filled from logs or from a demos dataset
//! (both through [`Windows`]). Off the control thread; its storage is
//! allocated once, sampling allocates.

use candle_core::{Device, Tensor};
use rand::Rng;

use super::error::{LearnerError, Result};
use super::windows::Windows;
use crate::demos::Demos;
use flowpilot_core::policy::model::ModelSpec;

/// Transitions (s, a, r, s', discount) with s the policy's input (its
/// observation history ++ goal, raw units), a the action (chunk) in the
/// flow's normalised space, r the discounted reward over the steps a spans,
/// and discount the weight of the bootstrap from s' (γ^n, or 0 after a
/// terminal step): the critic's target is r + discount · V(s').
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
    discount: Vec<f32>,
}

pub struct Batch {
    pub s: Tensor,
    pub a: Tensor,
    pub r: Tensor,
    pub s2: Tensor,
    /// The bootstrap weight γ^n(1 − done) of each row.
    pub discount: Tensor,
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
                discount: one.discount.clone(),
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
                    discount: cat(|b| &b.discount)?,
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
            discount: vec![0.0; cap],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add one transition (the oldest is overwritten when full).
    pub fn push(&mut self, s: &[f32], a: &[f32], r: f32, s2: &[f32], discount: f32) {
        let (i, n, d) = (self.head, self.in_dim, self.act_dim);
        self.s[i * n..(i + 1) * n].copy_from_slice(s);
        self.s2[i * n..(i + 1) * n].copy_from_slice(s2);
        self.a[i * d..(i + 1) * d].copy_from_slice(a);
        self.r[i] = r;
        self.discount[i] = discount;
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
            discount: col(&self.discount)?,
        })
    }

    /// A fixed dataset for offline RL: each episode's rows, in file order,
    /// are one run of robot steps ([`Windows`]); the demos need a `reward`
    /// array (and may carry `terminal`: a row whose action ended its
    /// episode in a terminal state). An episode's last row without one has
    /// no next state (truncated) and starts no window. Actions are
    /// normalised by the model's bounds.
    pub(crate) fn from_demos(demos: &Demos, spec: &ModelSpec, gamma: f64) -> Result<Self> {
        let Some(rew) = &demos.reward else {
            return Err(LearnerError::NoReward);
        };
        let mut windows = Windows::new(spec, gamma);
        let (od, gd, d) = windows.step_dims();
        if demos.obs_dim != od || demos.goal_dim != gd || demos.act_dim != d {
            return Err(LearnerError::DemosDims {
                obs: demos.obs_dim,
                goal: demos.goal_dim,
                act: demos.act_dim,
            });
        }
        let mut rb = Self::new(spec.obs_dim + gd, spec.act_dim, demos.len().max(1));
        let obs = |i: usize| &demos.obs[i * od..(i + 1) * od];
        let goal = |i: usize| &demos.goal[i * gd..(i + 1) * gd];
        for rows in demos.episode_rows().values() {
            windows.break_run();
            for (k, &i) in rows.iter().enumerate() {
                let terminal = demos.terminal.as_ref().is_some_and(|t| t[i]);
                // The next state: the episode's next row, or (after a
                // terminal step, never bootstrapped from) the row itself.
                let next = match rows.get(k + 1) {
                    Some(&n) => n,
                    None if terminal => i,
                    None => break,
                };
                windows.push(
                    obs(i),
                    goal(i),
                    &demos.act[i * d..(i + 1) * d],
                    rew[i],
                    terminal,
                    obs(next),
                    goal(next),
                    |w| rb.push(&w.s, &w.a, w.r, &w.s2, w.discount),
                );
            }
        }
        Ok(rb)
    }
}
