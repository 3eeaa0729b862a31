#!/usr/bin/env python3
"""A simulated point-mass robot on ROS 2 (rclpy): the same task as
crates/cli/src/tasks/pointmass.rs. It publishes its state and consumes velocity commands as a
ros2_control forward command controller would: it holds the last command and
goes to zero when commands go stale.

  python3 sim/pointmass_sim.py --episodes 20 [--rate 10] [--seed 0]

Topics: /pointmass/state (Float64MultiArray [x, y], best effort),
/pointmass/cmd (Float64MultiArray [vx, vy] in [-1, 1], subscribed).
Prints one line per episode and a summary; exits when done.
"""
import argparse
import math
import random
import sys
import time

import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray

START, GOAL = (0.0, -1.2), (0.0, 1.2)
RADIUS, DT, MAX_STEPS, GOAL_TOL, JITTER = 0.6, 0.1, 60, 0.15, 0.03


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--rate", type=float, default=10.0, help="sim steps per second (dt is always 0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cmd-timeout", type=float, default=0.25, help="seconds before a stale command becomes zero")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    rclpy.init()
    node = rclpy.create_node("pointmass_sim")
    pub = node.create_publisher(Float64MultiArray, "/pointmass/state",
                                QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    last = {"cmd": (0.0, 0.0), "t": -1e9}

    def on_cmd(m):
        if len(m.data) == 2 and all(math.isfinite(v) for v in m.data):
            last["cmd"], last["t"] = (m.data[0], m.data[1]), time.monotonic()
    node.create_subscription(Float64MultiArray, "/pointmass/cmd", on_cmd,
                             QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))

    def spin_for(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=max(0.0, min(0.005, end - time.monotonic())))

    results = {"left": 0, "right": 0, "collision": 0, "timeout": 0}
    # wait for the controller: first command
    t0 = time.monotonic()
    while last["t"] < 0 and time.monotonic() - t0 < 60:
        pub.publish(Float64MultiArray(data=list(START)))
        spin_for(0.05)
    if last["t"] < 0:
        print("no commands received within 60 s: is flowpilot_node running?", file=sys.stderr)
        return 1
    for ep in range(a.episodes):
        x, y = START[0], START[1] + rng.uniform(-JITTER, JITTER)
        side, outcome = None, "timeout"
        for _ in range(MAX_STEPS):
            pub.publish(Float64MultiArray(data=[x, y]))
            spin_for(1.0 / a.rate)
            fresh = time.monotonic() - last["t"] < a.cmd_timeout
            vx, vy = last["cmd"] if fresh else (0.0, 0.0)
            py = y
            x += DT * max(-1.0, min(1.0, vx))
            y += DT * max(-1.0, min(1.0, vy))
            if py < 0.0 <= y:
                side = "left" if x < 0 else "right"
            if math.hypot(x, y) < RADIUS:
                outcome = "collision"
                break
            if math.hypot(x - GOAL[0], y - GOAL[1]) < GOAL_TOL:
                outcome = side or "right"
                break
        results[outcome] += 1
        print(f"episode {ep + 1:3d}: {outcome}", flush=True)
    n = a.episodes
    ok = results["left"] + results["right"]
    print(f"success {100.0 * ok / n:.1f}% ({results['left']} left, {results['right']} right), "
          f"collisions {results['collision']}, timeouts {results['timeout']} over {n} episodes", flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
