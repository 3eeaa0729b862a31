#!/usr/bin/env python3
"""Chunked NF-BC closed loop over ROS 2: the chunk length H x the
chunk-boundary rule, on MuJoCo Reacher-v5 or the bimodal point mass.

  source .ros/env.sh
  python3 bench/chunk_bench.py --task reacher [--work DIR] [--episodes 20]
  python3 bench/chunk_bench.py --task pointmass [--work DIR] [--episodes 40]

Records 300 expert demonstration episodes (reacher: the scripted expert,
seed 0; pointmass: `flowpilot demos pointmass`, both detours), trains one
flow per H in {1, 4, 8} with `flowpilot train bc --chunk H` (reacher: the
bundled policy's recipe, 4 blocks, C = 128, 4000 steps, denoise;
pointmass: the README's, 4 blocks, C = 64, 3000 steps), then runs each on
the sim with flowpilot_node at the sim's own 50 Hz (a chunk step per robot
step) and temperature 1, for: replace (re-plan every H/2 ticks), ensemble
(ACT, m = 0.01, re-plan every tick) and blend (re-plan every H/2 ticks, 2
blended steps). Prints a markdown table (reacher: mean return, success,
stale-command steps; pointmass: success, left/right, collisions,
timeouts).
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


TASKS = {
    "reacher": dict(
        config="reacher.yaml",
        train=["--blocks", "4", "--hidden", "128", "--steps", "4000", "--denoise"],
        sim=lambda n: [os.path.join(ROOT, "sim", "mujoco_sim.py"), "--ros-args", "-p", "task:=reacher",
                       "-p", f"episodes:={n}", "-p", "seed:=1"],
        result=r"mean return (-?[\d.]+) \+- ([\d.]+), success (\d+)%.*stale-command steps (\d+)",
        row=lambda g: f"{float(g[0]):.2f} ± {float(g[1]):.2f} | {g[2]} % | {g[3]}",
        header="mean return | success | stale-command steps"),
    "pointmass": dict(
        config="pointmass.yaml",
        train=["--blocks", "4", "--hidden", "64", "--steps", "3000"],
        sim=lambda n: [os.path.join(ROOT, "sim", "pointmass_sim.py"), "--episodes", str(n), "--rate", "50"],
        result=r"success ([\d.]+)% \((\d+) left, (\d+) right\), collisions (\d+), timeouts (\d+)",
        row=lambda g: f"{g[0]} % | {g[1]} / {g[2]} | {g[3]} | {g[4]}",
        header="success | left / right | collisions | timeouts"),
}


def closed_loop(task, model, domain, episodes, boundary, replan):
    t = TASKS[task]
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    node = subprocess.Popen(
        [os.path.join(REL, "flowpilot_node"), "--ros-args", "--params-file", os.path.join(ROOT, "config", t["config"]),
         "-p", f"model:={model}", "-p", "rate_hz:=50.0", "-p", "temperature:=1.0",
         "-p", "log.dir:=''", "-p", "hot_swap.dir:=''",
         "-p", f"chunk.boundary:={boundary}", "-p", f"chunk.replan_every:={replan}"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.5)  # the node's start-up hold, as an operator would wait
    try:
        out = subprocess.run([sys.executable, *t["sim"](episodes)], env=env, capture_output=True, text=True,
                             timeout=900).stdout
    finally:
        node.send_signal(signal.SIGTERM)
        log, _ = node.communicate(timeout=10)
    m = re.search(t["result"], out)
    if not m:
        raise SystemExit(f"no result:\n{out[-2000:]}\n{log[-2000:]}")
    return m.groups()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=sorted(TASKS), default="reacher")
    ap.add_argument("--work", default=None, help="default /tmp/<task>_chunks (models are reused)")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--chunks", default="1,4,8")
    a = ap.parse_args()
    task = TASKS[a.task]
    a.work = a.work or f"/tmp/{a.task}_chunks"
    os.makedirs(a.work, exist_ok=True)
    demos = os.path.join(a.work, f"{a.task}.npz")
    if not os.path.exists(demos):
        if a.task == "reacher":
            sh([sys.executable, os.path.join(ROOT, "sim", "record_demos.py"), "--task", "reacher", "--episodes", "300",
                "--seed", "0", "--out", demos])
        else:
            sh([os.path.join(REL, "flowpilot"), "demos", "pointmass", "--out", demos, "--episodes", "300"])
    domain = 150 + os.getpid() % 40
    rows = []
    for h in map(int, a.chunks.split(",")):
        model = os.path.join(a.work, f"{a.task}_h{h}.safetensors")
        if not os.path.exists(model):
            t0 = time.monotonic()
            sh([os.path.join(REL, "flowpilot"), "train", "bc", "--data", demos, "--out", model, *task["train"],
                "--seed", "0", "--chunk", str(h)])
            print(f"trained H={h} in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        rules = [("replace", max(1, h // 2))] if h == 1 else [("replace", max(1, h // 2)), ("ensemble", 1),
                                                             ("blend", max(1, h // 2))]
        for boundary, k in rules:
            r = closed_loop(a.task, model, domain, a.episodes, boundary, k)
            print(f"H={h} {boundary} k={k}: {r}", file=sys.stderr)
            rows.append((h, boundary if h > 1 else "(one action per sample)", k, r))
    print(f"\n## {a.task}, chunked NF-BC over ROS 2 ({a.episodes} episodes, node 50 Hz, τ 1)\n")
    print(f"| H | boundary | re-plan every | {task['header']} |")
    print("|---|---|---|" + "---|" * (task["header"].count("|") + 1))
    for h, b, k, g in rows:
        print(f"| {h} | {b} | {k} | {task['row'](g)} |")


if __name__ == "__main__":
    main()
