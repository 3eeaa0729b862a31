#!/usr/bin/env python3
"""Stable-Baselines3 SAC from scratch on MuJoCo Reacher-v5 or
InvertedPendulum-v5: the reference for docs/finetuning.md's
flow-vs-Gaussian-vs-SB3 table and its pendulum section (optional; needs
torch and stable-baselines3, which CI does not install).

  /path/to/python-with-sb3 bench/sb3_sac.py [--task reacher|pendulum] --steps 15000 30000 [--seed 0] [--threads 1]

Trains one SAC agent (SB3 defaults: 2x256 MLPs, batch 256, lr 3e-4, UTD 1,
learning_starts 100, auto entropy) and, at each step count given, evaluates
the deterministic (mean) action on the same 20 episodes the fine-tuning
sessions evaluate on: sim seed 1000, i.e. env.reset(seed=1000 * 100000 +
50000 + ep) as sim/mujoco_sim.py seeds them, paired with the scripted
expert on the same episodes (sim/tasks.py shadow_return, the sessions'
`shadow_expert`). Prints one line per checkpoint and the training speed
(env steps per second on this machine).
"""
import argparse
import os
import sys
import time

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sim"))
import tasks  # noqa: E402

EVAL_SEED = 1000  # scripts/finetune_session.py EVAL_SEED


def expert_returns(task, episodes):
    """The scripted expert on the evaluation episodes, with the elbow draws
    sim/mujoco_sim.py makes (one per episode from default_rng(seed))."""
    t, env = tasks.make(task)
    rng = np.random.default_rng(EVAL_SEED)
    return np.array([tasks.shadow_return(t, env, t.expert(rng), tasks.reset_seed(EVAL_SEED, ep))
                     for ep in range(episodes)])


def evaluate(model, env_id, episodes):
    env = gym.make(env_id)
    rets = []
    for ep in range(episodes):
        o, _ = env.reset(seed=tasks.reset_seed(EVAL_SEED, ep))
        ret, done = 0.0, False
        while not done:
            a, _ = model.predict(o, deterministic=True)
            o, r, term, trunc, _ = env.step(a)
            ret += r
            done = term or trunc
        rets.append(ret)
    return np.array(rets)


class At(BaseCallback):
    def __init__(self, task, steps, episodes):
        super().__init__()
        self.todo, self.episodes, self.t0, self.paused = sorted(steps), episodes, time.monotonic(), 0.0
        self.env_id = tasks.TASKS[task].env_id
        self.expert = expert_returns(task, episodes)

    def _on_step(self):
        if self.todo and self.num_timesteps >= self.todo[0]:
            s = self.todo.pop(0)
            t = time.monotonic()
            rets = evaluate(self.model, self.env_id, self.episodes)
            self.paused += time.monotonic() - t
            train_s = time.monotonic() - self.t0 - self.paused
            n, d = len(rets), rets - self.expert
            print(f"SB3 SAC {self.env_id} seed {self.model.seed}: {s} steps: mean return {rets.mean():.2f} +- "
                  f"{rets.std() / np.sqrt(n):.2f} (s.e.) over {n} episodes (seed {EVAL_SEED}, deterministic; "
                  f"first 20: {rets[:20].mean():.2f}); minus the expert {d.mean():+.2f} +- "
                  f"{d.std(ddof=1) / np.sqrt(n):.2f} (paired s.e.); {s / train_s:.1f} steps/s", flush=True)
        return bool(self.todo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=sorted(tasks.TASKS), default="reacher")
    ap.add_argument("--steps", type=int, nargs="+", default=[15000, 30000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--episodes", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    env = gym.make(tasks.TASKS[a.task].env_id)
    model = SAC("MlpPolicy", env, seed=a.seed, device="cpu", verbose=0)
    model.learn(total_timesteps=max(a.steps), callback=At(a.task, a.steps, a.episodes))


if __name__ == "__main__":
    main()
