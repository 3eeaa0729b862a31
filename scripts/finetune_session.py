#!/usr/bin/env python3
"""An on-robot fine-tuning session against a running flowpilot_node (with
log.dir and hot_swap.dir configured) and a simulated robot:

  1. evaluate the running policy for --eval-episodes;
  2. start the learner (~/finetune true) and let the robot act for
     --train-episodes while every tick is logged and new versions are
     hot-swapped in;
  3. stop the learner (it writes a last checkpoint), wait until the node
     runs that version, and evaluate again on the same seeds.

  python3 scripts/finetune_session.py --task reach [--train-episodes 80] [--eval-episodes 10]

Prints the return before and after, and the policy version.
"""
import argparse
import os
import re
import subprocess
import sys
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_srvs.srv import SetBool

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def run_sim(task, episodes, seed, rate):
    if task == "reach":
        cmd = [sys.executable, os.path.join(ROOT, "sim", "reach_sim.py"), "--episodes", str(episodes),
               "--seed", str(seed), "--rate", str(rate)]
    else:
        cmd = [sys.executable, os.path.join(ROOT, "sim", "mujoco_sim.py"), "--ros-args", "-p", f"task:={task}",
               "-p", f"episodes:={episodes}", "-p", f"seed:={seed}"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"mean return (-?[\d.]+)", out.stdout)
    if out.returncode != 0 or not m:
        raise SystemExit(f"sim failed:\n{out.stdout}\n{out.stderr}")
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="reach", choices=["reach", "reacher"])
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--train-episodes", type=int, default=80)
    ap.add_argument("--rate", type=float, default=20.0, help="reach sim steps per second")
    ap.add_argument("--node", default="/flowpilot")
    a = ap.parse_args()
    rclpy.init()
    node = rclpy.create_node("finetune_session")
    diag = {}

    def on_diag(m):
        for s in m.status:
            if s.name.startswith("flowpilot"):
                diag.update({v.key: v.value for v in s.values})
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    cli = node.create_client(SetBool, f"{a.node}/finetune")
    if not cli.wait_for_service(timeout_sec=30):
        raise SystemExit(f"{a.node}/finetune not available: is flowpilot_node running?")

    def call(on):
        fut = cli.call_async(SetBool.Request(data=on))
        rclpy.spin_until_future_complete(node, fut, timeout_sec=30)
        r = fut.result()
        if r is None or not r.success:
            raise SystemExit(f"~/finetune {on}: {r.message if r else 'no response'}")
        return r.message

    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)

    spin(1.5)
    v0 = diag.get("policy_version", "?")
    before = run_sim(a.task, a.eval_episodes, 1000, a.rate)
    print(f"before: mean return {before:.2f} over {a.eval_episodes} episodes (policy version {v0})", flush=True)
    print(call(True), flush=True)
    t0 = time.monotonic()
    run_sim(a.task, a.train_episodes, 1, a.rate)
    print(call(False), f"after {time.monotonic() - t0:.0f} s of robot time", flush=True)
    spin(3.0)  # the hot swap polls the checkpoint directory
    v1 = diag.get("policy_version", "?")
    after = run_sim(a.task, a.eval_episodes, 1000, a.rate)
    print(f"after:  mean return {after:.2f} over {a.eval_episodes} episodes (policy version {v1})", flush=True)
    print(f"fine-tuning changed the return by {after - before:+.2f}; log: {diag.get('log_written')} records written, "
          f"{diag.get('log_dropped')} dropped; swaps {diag.get('policy_swaps')}, rejections {diag.get('policy_rejections')}")
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
