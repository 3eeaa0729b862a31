#!/usr/bin/env python3
"""Chunked NF-BC on MuJoCo Reacher-v5, closed loop over ROS 2: the chunk
length H x the chunk-boundary rule.

  source .ros/env.sh
  python3 bench/reacher_chunks.py [--work /tmp/reacher_chunks] [--episodes 20] [--steps 4000]

Records the scripted expert's 300 demonstration episodes (seed 0), trains
one flow per H in {1, 4, 8} with `flowpilot train bc --chunk H` (the same
recipe as the bundled policy: 4 blocks, C = 128, 4000 steps, denoise), then
runs each on the sim (seed 1, --episodes episodes) with flowpilot_node at
the sim's own 50 Hz (a chunk step per robot step) and temperature 1, for:
replace (re-plan every H/2 ticks), ensemble (ACT, m = 0.01, re-plan every
tick) and blend (re-plan every H/2 ticks, 2 blended steps). Prints a
markdown table of mean return, success and stale-command steps.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
REL = os.path.join(ROOT, "target", "release")


def sh(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def closed_loop(model, domain, episodes, boundary, replan):
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    node = subprocess.Popen(
        [os.path.join(REL, "flowpilot_node"), "--ros-args", "--params-file", os.path.join(ROOT, "config", "reacher.yaml"),
         "-p", f"model:={model}", "-p", "rate_hz:=50.0", "-p", "temperature:=1.0",
         "-p", "log.dir:=''", "-p", "hot_swap.dir:=''",
         "-p", f"chunk.boundary:={boundary}", "-p", f"chunk.replan_every:={replan}"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.5)  # the node's start-up hold, as an operator would wait
    try:
        out = subprocess.run([sys.executable, os.path.join(ROOT, "sim", "mujoco_sim.py"), "--ros-args",
                              "-p", "task:=reacher", "-p", f"episodes:={episodes}", "-p", "seed:=1"],
                             env=env, capture_output=True, text=True, timeout=600).stdout
    finally:
        node.send_signal(signal.SIGTERM)
        log, _ = node.communicate(timeout=10)
    m = re.search(r"mean return (-?[\d.]+) \+- ([\d.]+), success (\d+)%.*stale-command steps (\d+)", out)
    if not m:
        raise SystemExit(f"no result:\n{out[-2000:]}\n{log[-2000:]}")
    return float(m.group(1)), float(m.group(2)), int(m.group(3)), int(m.group(4))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/reacher_chunks")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--chunks", default="1,4,8")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    demos = os.path.join(a.work, "reacher.npz")
    if not os.path.exists(demos):
        sh([sys.executable, os.path.join(ROOT, "sim", "record_demos.py"), "--task", "reacher", "--episodes", "300",
            "--seed", "0", "--out", demos])
    domain = 150 + os.getpid() % 40
    rows = []
    for h in map(int, a.chunks.split(",")):
        model = os.path.join(a.work, f"reacher_h{h}.safetensors")
        if not os.path.exists(model):
            t0 = time.monotonic()
            sh([os.path.join(REL, "flowpilot"), "train", "bc", "--data", demos, "--out", model, "--blocks", "4",
                "--hidden", "128", "--steps", str(a.steps), "--seed", "0", "--denoise", "--chunk", str(h)])
            print(f"trained H={h} in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        rules = [("replace", max(1, h // 2))] if h == 1 else [("replace", max(1, h // 2)), ("ensemble", 1),
                                                             ("blend", max(1, h // 2))]
        for boundary, k in rules:
            r = closed_loop(model, domain, a.episodes, boundary, k)
            print(f"H={h} {boundary} k={k}: {r}", file=sys.stderr)
            rows.append((h, boundary if h > 1 else "(one action per sample)", k, *r))
    print(f"\n## Reacher-v5, chunked NF-BC over ROS 2 (sim seed 1, {a.episodes} episodes, node 50 Hz, τ 1)\n")
    print("| H | boundary | re-plan every | mean return | success | stale-command steps |")
    print("|---|---|---|---|---|---|")
    for h, b, k, mean, std, succ, stale in rows:
        print(f"| {h} | {b} | {k} | {mean:.2f} ± {std:.2f} | {succ} % | {stale} |")


if __name__ == "__main__":
    main()
