//! The learner's transitions as the policy acts: from a run of consecutive
//! robot steps of one episode, one transition per step t,
//! (s_t, a_{t:t+n}, R, s_{t+n}, discount), where the state is the last
//! `obs_horizon` observations (padded with the run's first, as the node's
//! history and `Demos::windows` pad) ++ the goal, the action is the next
//! `chunk_len` executed steps, R = Σ_{k<n} γ^k r_{t+k}, and the bootstrap
//! weight is γ^n, or 0 when the episode ended terminally inside the window
//! (n then counts to the terminal step and the chunk is padded with its
//! last executed step). For `chunk_len` 1 and `obs_horizon` 1 this is the
//! one-step transition (s, a, r, s′, γ(1 − done)); for chunks it is what a
//! chunk-level critic Q(s, a_{t:t+H}) learns from (Q-chunking: every step
//! starts a window, not only the steps the policy planned a chunk on, since
//! the robot executed those H steps open loop either way).
//!
//! A run is broken by a gap (a missed robot step or record), a truncated
//! episode end, or a terminal step; windows the run could not complete are
//! dropped. Off the control thread; it allocates.

use std::collections::VecDeque;

use flowpilot_core::policy::action_space::ActionSpace;
use flowpilot_core::policy::model::ModelSpec;

/// One robot step of a run: the state it started from, the action the
/// robot executed (physical units), the reward that step earned.
struct Step {
    obs: Vec<f32>,
    goal: Vec<f32>,
    act: Vec<f32>,
    reward: f32,
}

/// Builds windowed transitions from consecutive steps (see the module).
pub(crate) struct Windows {
    chunk: usize,
    horizon: usize,
    obs_dim: usize,
    goal_dim: usize,
    act_dim: usize,
    gamma: f64,
    actions: ActionSpace,
    /// The run's first observation (the history's padding).
    first: Vec<f32>,
    /// The run's last steps (enough for every window still open).
    steps: VecDeque<Step>,
    /// Steps pushed in this run (the index of `steps`' back, plus one).
    pushed: usize,
}

/// One windowed transition (see the module).
pub(crate) struct Window {
    pub(crate) s: Vec<f32>,
    /// The chunk in the flow's normalised action space.
    pub(crate) a: Vec<f32>,
    pub(crate) r: f32,
    pub(crate) s2: Vec<f32>,
    pub(crate) discount: f32,
}

impl Windows {
    /// Windows for the policy `spec` describes (its chunk length, history
    /// and per-step widths), discounted by `gamma`.
    pub(crate) fn new(spec: &ModelSpec, gamma: f64) -> Self {
        let chunk = spec.chunk_len.max(1);
        let horizon = spec.obs_horizon.max(1);
        Self {
            chunk,
            horizon,
            obs_dim: spec.step_obs_dim(),
            goal_dim: spec.goal_dim,
            act_dim: spec.step_act_dim(),
            gamma,
            actions: ActionSpace::new(spec),
            first: Vec::new(),
            steps: VecDeque::with_capacity(chunk + horizon),
            pushed: 0,
        }
    }

    /// Values of one observation step, one goal and one action step (what
    /// each pushed step must carry).
    pub(crate) fn step_dims(&self) -> (usize, usize, usize) {
        (self.obs_dim, self.goal_dim, self.act_dim)
    }

    /// Forget the run: the windows it left open are dropped.
    pub(crate) fn break_run(&mut self) {
        self.steps.clear();
        self.pushed = 0;
    }

    /// One step of the run: from (`obs`, `goal`) the robot executed `act`,
    /// earned `reward` and reached (`next_obs`, `next_goal`), terminally or
    /// not. Calls `emit` for every window this step completes; a terminal
    /// step completes all open ones and ends the run.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &mut self,
        obs: &[f32],
        goal: &[f32],
        act: &[f32],
        reward: f32,
        terminal: bool,
        next_obs: &[f32],
        next_goal: &[f32],
        mut emit: impl FnMut(&Window),
    ) {
        let (od, gd, ad) = self.step_dims();
        if self.pushed == 0 {
            self.first = obs[..od].to_vec();
        }
        self.steps.push_back(Step {
            obs: obs[..od].to_vec(),
            goal: goal[..gd].to_vec(),
            act: act[..ad].to_vec(),
            reward,
        });
        self.pushed += 1;
        let j = self.pushed - 1;
        let (h, keep) = (self.chunk, self.chunk + self.horizon - 1);
        // Windows t..=j that end here: the full one (if the run is long
        // enough), and with a terminal step every shorter one still open.
        let starts = if terminal {
            (j + 1).saturating_sub(h)..j + 1
        } else if j + 1 >= h {
            j + 1 - h..j + 2 - h
        } else {
            0..0
        };
        for t in starts {
            emit(&self.window(t, j, terminal, next_obs, next_goal));
        }
        if terminal {
            self.break_run();
        } else {
            while self.steps.len() > keep {
                self.steps.pop_front();
            }
        }
    }

    /// The step with run index `k` (it must still be held).
    fn step(&self, k: usize) -> &Step {
        let front = self.pushed - self.steps.len();
        &self.steps[k - front]
    }

    /// The observation history ending at run index `k` (oldest first);
    /// index `now` is `next` (the state after the last pushed step).
    fn history(&self, k: usize, now: usize, next: &[f32], out: &mut Vec<f32>) {
        for i in 0..self.horizon {
            // Index k − (horizon − 1) + i, padded with the run's first.
            match (k + i).checked_sub(self.horizon - 1) {
                Some(m) if m == now => out.extend_from_slice(&next[..self.obs_dim]),
                Some(m) => out.extend_from_slice(&self.step(m).obs),
                None => out.extend_from_slice(&self.first),
            }
        }
    }

    /// The window from run index `t` through the last pushed step `j`.
    fn window(
        &self,
        t: usize,
        j: usize,
        terminal: bool,
        next_obs: &[f32],
        next_goal: &[f32],
    ) -> Window {
        let n = j + 1 - t;
        let now = j + 1;
        let mut s = Vec::with_capacity(self.horizon * self.obs_dim + self.goal_dim);
        self.history(t, now, next_obs, &mut s);
        s.extend_from_slice(&self.step(t).goal);
        let mut s2 = Vec::with_capacity(s.capacity());
        self.history(now, now, next_obs, &mut s2);
        s2.extend_from_slice(&next_goal[..self.goal_dim]);
        // The chunk, padded with the last executed step past a terminal.
        let mut raw = Vec::with_capacity(self.chunk * self.act_dim);
        for k in 0..self.chunk {
            raw.extend_from_slice(&self.step(t + k.min(n - 1)).act);
        }
        let a = self.actions.to_flow_vec(&raw);
        let mut r = 0.0f64;
        for k in 0..n {
            r += self.gamma.powi(k as i32) * self.step(t + k).reward as f64;
        }
        let discount = if terminal {
            0.0
        } else {
            self.gamma.powi(n as i32)
        };
        Window {
            s,
            a,
            r: r as f32,
            s2,
            discount: discount as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowpilot_core::policy::model::{Direction, PolicyKind};
    use flowpilot_core::testkit::random_model;

    /// A spec with 1-value observation and action steps, chunk `h`,
    /// history `n`, no goal, action bounds [-2, 2].
    fn spec(h: usize, n: usize) -> ModelSpec {
        let mut s = random_model(1, 0, false, Direction::Inverse, PolicyKind::Flow, 1).spec;
        s.obs_dim = n;
        s.act_dim = h;
        s.chunk_len = h;
        s.obs_horizon = n;
        s.goal_dim = 0;
        s.action_low = vec![-2.0; h];
        s.action_high = vec![2.0; h];
        s
    }

    type Row = (Vec<f32>, Vec<f32>, f32, Vec<f32>, f32);

    /// Push steps with obs = 10·k, action = k/10, reward = k, the last one
    /// terminal or not; collect what comes out.
    fn run(w: &mut Windows, steps: usize, terminal: bool) -> Vec<Row> {
        let mut out = Vec::new();
        for k in 0..steps {
            let last = k + 1 == steps;
            w.push(
                &[10.0 * k as f32],
                &[],
                &[k as f32 / 10.0],
                k as f32,
                terminal && last,
                &[10.0 * (k + 1) as f32],
                &[],
                |x| out.push((x.s.clone(), x.a.clone(), x.r, x.s2.clone(), x.discount)),
            );
        }
        out
    }

    #[test]
    fn one_step_windows_are_the_one_step_transitions() {
        let mut w = Windows::new(&spec(1, 1), 0.5);
        let out = run(&mut w, 3, true);
        assert_eq!(
            out,
            vec![
                (vec![0.0], vec![0.0], 0.0, vec![10.0], 0.5),
                (vec![10.0], vec![0.05], 1.0, vec![20.0], 0.5),
                (vec![20.0], vec![0.1], 2.0, vec![30.0], 0.0),
            ]
        );
    }

    #[test]
    fn chunks_sum_discounted_rewards_and_pad_history_and_terminal_chunks() {
        let g = 0.5f32;
        let mut w = Windows::new(&spec(3, 2), g as f64);
        let out = run(&mut w, 4, true);
        // Windows from t = 0, 1 (full), then t = 2, 3 shortened by the
        // terminal at step 3.
        assert_eq!(out.len(), 4);
        let a = |ks: [usize; 3]| ks.map(|k| k as f32 / 20.0).to_vec();
        assert_eq!(
            out[0],
            (
                vec![0.0, 0.0],
                a([0, 1, 2]),
                0.0 + g + 2.0 * g * g,
                vec![20.0, 30.0],
                g * g * g
            )
        );
        assert_eq!(
            out[1],
            (
                vec![0.0, 10.0],
                a([1, 2, 3]),
                1.0 + 2.0 * g + 3.0 * g * g,
                vec![30.0, 40.0],
                0.0
            )
        );
        assert_eq!(
            out[2],
            (
                vec![10.0, 20.0],
                a([2, 3, 3]),
                2.0 + 3.0 * g,
                vec![30.0, 40.0],
                0.0
            )
        );
        assert_eq!(
            out[3],
            (vec![20.0, 30.0], a([3, 3, 3]), 3.0, vec![30.0, 40.0], 0.0)
        );
    }

    #[test]
    fn a_truncated_run_drops_the_windows_it_left_open() {
        let mut w = Windows::new(&spec(3, 1), 0.9);
        let out = run(&mut w, 4, false);
        assert_eq!(out.len(), 2, "windows from steps 0 and 1 only");
        w.break_run();
        // A new run pads its history with its own first observation.
        let mut w = Windows::new(&spec(1, 3), 0.9);
        let mut out = run(&mut w, 2, false);
        w.break_run();
        out.extend(run(&mut w, 1, false));
        assert_eq!(out[1].0, vec![0.0, 0.0, 10.0]);
        assert_eq!(out[2].0, vec![0.0, 0.0, 0.0], "padded from the new run");
        assert_eq!(out[2].3, vec![0.0, 0.0, 10.0]);
    }
}
