#!/usr/bin/env python3
"""A MuJoCo robot on ROS 2 for hardware-in-the-loop runs (rclpy + gymnasium).

  python3 sim/mujoco_sim.py --ros-args -p task:=reacher -p episodes:=10 -p seed:=0

Steps the gymnasium env in real time (one env step per 1/rate_hz seconds;
the env's own dt is 0.02 s, so rate_hz 50 is real time) and publishes:
  /joint_states     sensor_msgs/JointState (position, velocity; header stamped)
  /task/obs         std_msgs/Float64MultiArray (reacher: target x, y, fingertip-target dx, dy)
  /reward           std_msgs/Float64 (each step)
  /episode          std_msgs/Int64 (the index of an episode that just ended)
It consumes /<task>/cmd (std_msgs/Float64MultiArray) as a ros2_control
forward command controller would: it holds the last command and goes to
zero when commands are older than cmd_timeout.

Parameters: task (reacher | pendulum), rate_hz, seed, episodes (0 = run
until stopped), cmd_timeout, expert (true: act with the scripted expert,
ignoring commands — for a baseline). Prints one line per episode and a
summary line; exits after `episodes`.
"""
import math
import os
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray, Int64

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks  # noqa: E402


def main():
    rclpy.init()
    node = rclpy.create_node("mujoco_sim")
    p = lambda name, default: node.declare_parameter(name, default).value
    task_name, rate, seed = p("task", "reacher"), float(p("rate_hz", 50.0)), int(p("seed", 0))
    episodes, cmd_timeout, use_expert = int(p("episodes", 10)), float(p("cmd_timeout", 0.1)), bool(p("expert", False))
    t, env = tasks.make(task_name)
    be = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    rel = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    js_pub = node.create_publisher(JointState, "/joint_states", be)
    task_pub = node.create_publisher(Float64MultiArray, "/task/obs", be)
    rew_pub = node.create_publisher(Float64, "/reward", rel)
    ep_pub = node.create_publisher(Int64, "/episode", rel)
    last = {"cmd": np.zeros(t.act_dim), "t": -1e9, "n": 0}

    def on_cmd(m):
        if len(m.data) == t.act_dim and all(math.isfinite(v) for v in m.data):
            last["cmd"], last["t"] = np.array(m.data), time.monotonic()
            last["n"] += 1
    node.create_subscription(Float64MultiArray, f"/{task_name}/cmd", on_cmd, rel)

    def publish(o):
        q, v, task_vec = t.ros(env, o)
        js = JointState(name=list(t.joints), position=q.tolist(), velocity=v.tolist())
        js.header.stamp = node.get_clock().now().to_msg()
        js_pub.publish(js)
        if len(task_vec):
            task_pub.publish(Float64MultiArray(data=task_vec.tolist()))
        return q, v, task_vec

    def spin_until(deadline):
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            rclpy.spin_once(node, timeout_sec=min(left, 0.002))

    rng = np.random.default_rng(seed)
    returns, successes = [], []
    period = 1.0 / rate
    ep = 0
    o, _ = env.reset(seed=seed * 100_000 + 50_000)
    if not use_expert:  # wait for the controller before the first episode
        t0 = time.monotonic()
        while last["n"] == 0 and time.monotonic() - t0 < 60:
            publish(o)
            spin_until(time.monotonic() + 0.05)
        if last["n"] == 0:
            print("no commands within 60 s: is flowpilot_node running?", file=sys.stderr)
            return 1
    stale_steps = 0
    while episodes == 0 or ep < episodes:
        expert = t.expert(rng)
        o, _ = env.reset(seed=seed * 100_000 + 50_000 + ep)
        ret, done, info = 0.0, False, {}
        next_t = time.monotonic()
        while not done:
            q, v, task_vec = publish(o)
            next_t += period
            spin_until(next_t)
            if use_expert:
                act = tasks.expert_action(t, expert, q, v, task_vec, o)
            elif time.monotonic() - last["t"] < cmd_timeout:
                act = last["cmd"]
            else:
                act = np.zeros(t.act_dim)
                stale_steps += 1
            o, r, term, trunc, info = env.step(np.asarray(act, dtype=np.float32))
            rew_pub.publish(Float64(data=float(r)))
            ret += r
            done = term or trunc
        ep_pub.publish(Int64(data=ep))
        returns.append(ret)
        successes.append(bool(t.success(info)))
        print(f"episode {ep + 1:3d}: return {ret:8.2f}{'  success' if successes[-1] else ''}", flush=True)
        ep += 1
    print(f"{task_name}: mean return {np.mean(returns):.2f} +- {np.std(returns):.2f}, "
          f"success {100.0 * np.mean(successes):.0f}% over {len(returns)} episodes "
          f"(stale-command steps {stale_steps})", flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
