#!/usr/bin/env python3
"""A simulated 2-D reaching robot on ROS 2 (rclpy), the same task as
crates/cli/src/tasks/reach.rs: start near (-1, 0), reach (1, 0), reward -|p - goal| per step,
30 steps per episode, velocity commands in [-1, 1]^2, dt 0.1 s. Its bundled
BC policy learned a needless detour from the demos, so fine-tuning has
something unambiguous to fix.

  python3 sim/reach_sim.py --episodes 20 [--rate 20] [--seed 0]

Topics: /reach/state (Float64MultiArray [x, y], best effort), /reward
(std_msgs/Float64 after each step), /episode (std_msgs/Int64, the index of
the episode that just ended); subscribes /reach/cmd (Float64MultiArray
[vx, vy]), held like a forward command controller and zero when stale.
Prints one line per episode and "mean return R over N episodes".
"""
import argparse
import math
import random
import sys
import time

import rclpy
from rclpy.duration import Duration
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64, Float64MultiArray, Int64

GOAL, DT, STEPS = (1.0, 0.0), 0.1, 30


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--rate", type=float, default=20.0, help="steps per second (dt is always 0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cmd-timeout", type=float, default=0.25)
    ap.add_argument("--ns", default="", help="topic prefix, e.g. /r1 (several robots on one graph)")
    a = ap.parse_args()
    ns = a.ns.rstrip("/")
    rng = random.Random(a.seed)
    rclpy.init()
    node = rclpy.create_node("reach_sim")
    be = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    rel = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(Float64MultiArray, ns + "/reach/state", be)
    rew_pub = node.create_publisher(Float64, ns + "/reward", rel)
    ep_pub = node.create_publisher(Int64, ns + "/episode", rel)
    last = {"cmd": (0.0, 0.0), "t": -1e9}

    def on_cmd(m):
        if len(m.data) == 2 and all(math.isfinite(v) for v in m.data):
            last["cmd"], last["t"] = (m.data[0], m.data[1]), time.monotonic()
    node.create_subscription(Float64MultiArray, ns + "/reach/cmd", on_cmd, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))

    def spin_until(t_end):
        while True:
            left = t_end - time.monotonic()
            if left <= 0:
                return
            rclpy.spin_once(node, timeout_sec=min(0.005, left))

    def start():
        return [-1.0 + rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1)]

    p = start()
    t0 = time.monotonic()
    while last["t"] < 0 and time.monotonic() - t0 < 60:
        pub.publish(Float64MultiArray(data=p))
        spin_until(time.monotonic() + 0.05)
    if last["t"] < 0:
        print("no commands received within 60 s: is flowpilot_node running?", file=sys.stderr)
        return 1
    returns, stale = [], 0
    period = 1.0 / a.rate
    nxt = time.monotonic()
    for ep in range(a.episodes):
        ret = 0.0
        for _ in range(STEPS):
            pub.publish(Float64MultiArray(data=p))
            nxt += period
            spin_until(nxt)
            if time.monotonic() - last["t"] < a.cmd_timeout:
                vx, vy = last["cmd"]
            else:
                vx, vy, stale = 0.0, 0.0, stale + 1
            p = [p[0] + DT * max(-1.0, min(1.0, vx)), p[1] + DT * max(-1.0, min(1.0, vy))]
            r = -math.hypot(p[0] - GOAL[0], p[1] - GOAL[1])
            rew_pub.publish(Float64(data=r))
            ret += r
        ep_pub.publish(Int64(data=ep))
        returns.append(ret)
        print(f"episode {ep + 1:3d}: return {ret:8.2f}", flush=True)
        p = start()
    mean = sum(returns) / len(returns)
    print(f"mean return {mean:.2f} over {len(returns)} episodes (stale-command steps {stale})", flush=True)
    # The last reward and episode end are reliable messages: let the
    # node acknowledge them before this participant goes away.
    for pub in (rew_pub, ep_pub):
        pub.wait_for_all_acked(Duration(seconds=1.0))
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
