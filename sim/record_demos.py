#!/usr/bin/env python3
"""Record expert demonstrations for a MuJoCo task in flowpilot's demos format.

  python3 sim/record_demos.py --task reacher --episodes 200 --seed 0 --out demos.npz

Observations are recorded in the layout the node assembles from the sim's
ROS topics (sim/tasks.py), actions in physical units, one episode index per
row, the reward received for row i's action (`reward`, float32) and whether
that action ended the episode in a terminal state (`terminal`, bool; a time
limit is not terminal), so the demos can serve as prior data for offline RL;
the file also carries the action bounds. Prints the expert's return.

--act-noise SIGMA perturbs the expert (DART-style): each executed action is
the expert's plus N(0, SIGMA²) (physical units, clipped to the bounds), and
the executed action is what is recorded, so rows stay the robot's own
transitions. An expert that never leaves the upright state shows a cloned
policy nothing of how to recover from it (InvertedPendulum's does not).
"""
import argparse

import numpy as np

import tasks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="reacher", choices=sorted(tasks.TASKS))
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--act-noise", type=float, default=0.0)
    a = ap.parse_args()
    t, env = tasks.make(a.task)
    rng = np.random.default_rng(a.seed)
    obs_rows, act_rows, ep_rows, rew_rows, term_rows, returns = [], [], [], [], [], []
    for ep in range(a.episodes):
        expert = t.expert(rng)
        o, _ = env.reset(seed=a.seed * 100_000 + ep)
        ret, done = 0.0, False
        while not done:
            q, v, task_vec = t.ros(env, o)
            act = tasks.expert_action(t, expert, q, v, task_vec, o)
            if a.act_noise > 0:
                act = np.clip(act + rng.normal(0.0, a.act_noise, len(act)), t.act_low, t.act_high)
            obs_rows.append(t.policy_obs(q, v, task_vec))
            act_rows.append(act)
            ep_rows.append(ep)
            o, r, term, trunc, _ = env.step(act)
            rew_rows.append(r)
            term_rows.append(bool(term))
            ret += r
            done = term or trunc
        returns.append(ret)
    np.savez(a.out, obs=np.array(obs_rows, np.float32), act=np.array(act_rows, np.float32),
             episode=np.array(ep_rows, np.int64), reward=np.array(rew_rows, np.float32),
             terminal=np.array(term_rows, bool), act_low=np.array(t.act_low, np.float32),
             act_high=np.array(t.act_high, np.float32))
    print(f"{a.task}: {a.episodes} episodes, {len(obs_rows)} rows -> {a.out}; "
          f"expert return {np.mean(returns):.2f} +- {np.std(returns):.2f}")


if __name__ == "__main__":
    main()
