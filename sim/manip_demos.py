#!/usr/bin/env python3
"""Scripted-expert demonstrations for a Meta-World task, in flowpilot's demos format.

  source .manip/env.sh
  python3 sim/manip_demos.py --task metaworld:push-v3 --episodes 10 --act-noise 0.1 --out push.npz
  python3 sim/manip_demos.py --task metaworld:push-v3 --measure 0,0.1,0.3 --episodes 20   # success only

The expert is the task's metaworld.policies class (sim/metaworld_tasks.py).
DART-style noise: each executed action is the expert's plus N(0, σ²),
clipped to [-1, 1], and the executed action is what is recorded, so the
rows are the robot's own transitions and show the expert correcting from
states a little off its path. An episode ends on its first successful
step (a terminal state, as the sim ends it with end_on_success) or at 500
steps.

--episodes N counts successful demonstrations: failed attempts (noise can
make the expert fail) are dropped and counted, unless --keep-failures.
Observations are the 39-D vector the sim publishes on /task/obs, actions
the 4 values sent on /metaworld_<task>/cmd. Arrays: obs, act, episode,
reward (sparse: 1.0 on the success step, else 0), reward_shaped
(Meta-World's), terminal (the step that succeeded), success (per step),
act_low/act_high. Episode starts use seeds seed*100000 + i, never the
sim's evaluation starts (seed*100000 + 50000 + i).
"""
import argparse
import os
import sys
import time

import numpy as np

import metaworld_tasks as mt


def record(task, episodes, seed, noise, keep_failures=False, max_attempts=None):
    name, env = mt.make(task)
    expert = mt.expert_class(name)()
    rng = np.random.default_rng(seed)
    out = {k: [] for k in ("obs", "act", "episode", "reward", "reward_shaped", "terminal", "success")}
    kept, attempts, wins, firsts, steps, t0 = 0, 0, 0, [], 0, time.perf_counter()
    max_attempts = max_attempts or 5 * episodes
    while kept < episodes and attempts < max_attempts:
        rows, res = mt.rollout(env, expert.get_action, mt.demo_seed(seed, attempts), noise, rng)
        attempts += 1
        steps += res["steps"]
        wins += res["success"]
        if res["success"]:
            firsts.append(res["first_success"])
        if not (res["success"] or keep_failures):
            continue
        n = res["steps"]
        out["obs"] += rows["obs"]
        out["act"] += rows["act"]
        out["episode"] += [kept] * n
        out["reward"] += [1.0 if (i == n - 1 and res["success"]) else 0.0 for i in range(n)]
        out["reward_shaped"] += rows["reward"]
        out["terminal"] += [i == n - 1 and res["success"] for i in range(n)]
        out["success"] += rows["success"]
        kept += 1
    stats = {"attempts": attempts, "successes": wins, "kept": kept, "steps": steps,
             "first_success": firsts, "s_per_step": (time.perf_counter() - t0) / max(steps, 1)}
    return out, stats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", required=True, help="metaworld:<name>, e.g. metaworld:push-v3")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--act-noise", type=float, default=0.1)
    ap.add_argument("--keep-failures", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--measure", help="comma-separated noise levels: print the expert's success "
                    "over --episodes attempts at each, write nothing")
    a = ap.parse_args()
    if a.measure:
        for sigma in [float(x) for x in a.measure.split(",")]:
            _, st = record(a.task, a.episodes, a.seed, sigma, keep_failures=True, max_attempts=a.episodes)
            f = st["first_success"]
            print(f"{a.task}: noise {sigma:.2f}: expert success {st['successes']}/{st['attempts']}"
                  f"; first success at step {np.mean(f) if f else float('nan'):.0f} (median {np.median(f) if f else float('nan'):.0f})"
                  f"; {1e3 * st['s_per_step']:.2f} ms per step (env + expert)", flush=True)
        return 0
    if not a.out:
        ap.error("--out is required (or --measure)")
    out, st = record(a.task, a.episodes, a.seed, a.act_noise, a.keep_failures)
    if st["kept"] < a.episodes:
        print(f"only {st['kept']} of {a.episodes} demonstrations succeeded in {st['attempts']} attempts",
              file=sys.stderr)
        if st["kept"] == 0:
            return 1
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    np.savez(a.out, obs=np.array(out["obs"], np.float32).reshape(-1, mt.OBS_DIM),
             act=np.array(out["act"], np.float32).reshape(-1, mt.ACT_DIM),
             episode=np.array(out["episode"], np.int64), reward=np.array(out["reward"], np.float32),
             reward_shaped=np.array(out["reward_shaped"], np.float32),
             terminal=np.array(out["terminal"], bool), success=np.array(out["success"], bool),
             act_low=np.array(mt.ACT_LOW, np.float32), act_high=np.array(mt.ACT_HIGH, np.float32))
    print(f"{a.task}: {st['kept']} demonstrations ({st['successes']}/{st['attempts']} attempts succeeded, "
          f"noise {a.act_noise}), {len(out['obs'])} rows -> {a.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
