#!/usr/bin/env python3
"""A Meta-World manipulation robot on ROS 2 (rclpy + metaworld), any MT1 task by name.

  source .manip/env.sh     # scripts/setup-manip.sh: metaworld 3.1.1, mujoco 3.3.0, rclpy
  python3 sim/manip_sim.py --ros-args -p task:=metaworld:push-v3 -p episodes:=10 -p seed:=1

The Sawyer arm of Meta-World's MT1 setting (goal observable; sim/metaworld_tasks.py),
stepped like sim/mujoco_sim.py steps Reacher: one env step per 1/rate_hz
seconds (the env's step is 12.5 ms, so rate_hz 80 is real time; 160 is 2×).
It publishes, after each env step and in this order:
  /reward           std_msgs/Float64: r_t (reward:=sparse: 1.0 on the step that
                    first succeeds, else 0.0; reward:=shaped: Meta-World's
                    shaped reward, 0..10)
  /task/obs         std_msgs/Float64MultiArray: the 39-D observation o_{t+1}
                    (hand xyz, gripper opening, objects, the same 18 values
                    one step earlier, goal xyz), the policy's whole input
  /joint_states     sensor_msgs/JointState, stamped: the four controlled
                    channels ee_x, ee_y, ee_z, gripper (position: hand xyz
                    and gripper opening; velocity: their change per second;
                    effort: the action applied in the step that produced
                    this state, zeros at an episode's first state) — the
                    robot's step report (log.step_source)
  /success          std_msgs/Int64: the index of an episode that just
                    succeeded (info["success"], first time in the episode)
and at an episode's end /terminal (std_msgs/Int64, the episode index: it
ended on success, with end_on_success) or /episode (its step limit); the
next episode's first state follows one period later (a reset takes a
step's time). It consumes /metaworld_<task>/cmd (std_msgs/Float64MultiArray,
4 values in [-1, 1]: hand x, y, z deltas and gripper effort; e.g.
/metaworld_push_v3/cmd) as a forward command controller would: it holds the
last command and applies zero (hold still, gripper relaxed) once commands
are older than cmd_timeout.

Parameters: task (metaworld:<name>, any of the 50 v3 tasks), rate_hz (80),
seed, episodes (0 = until stopped), step_budget (0 = none; else stop after
the episode in which env steps reach it), cmd_timeout (0.1 s), max_steps
(an episode's step limit, default the env's 500), end_on_success (true:
end an episode, as terminal, on its first successful step), reward
(sparse | shaped), expert (true: act with the scripted expert from
metaworld.policies, ignoring commands), truth_log (a path: at exit an .npz
of every step: episode, step, obs, act, reward, success, stale, wall, plus
final_obs/final_episode), shadow_expert (true: after each episode, in the
reset's gap, run the scripted expert from the same start in a private copy
of the env and print its return and outcome: a paired baseline).
Prints one line per episode (`episode   N: return    X.XX[  success]`
then `  [t T s, ep D s, K steps]`, then `  expert X.XX success|fail` with
shadow_expert) and a summary line with the success rate; exits after
`episodes`.
"""
import math
import os
import signal
import sys
import time

import numpy as np
import rclpy
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray, Int64

import metaworld_tasks as mt


def main():
    rclpy.init()
    node = rclpy.create_node("manip_sim")
    p = lambda name, default: node.declare_parameter(name, default).value
    task = str(p("task", "metaworld:push-v3"))
    rate, seed = float(p("rate_hz", 80.0)), int(p("seed", 0))
    episodes, cmd_timeout, use_expert = int(p("episodes", 10)), float(p("cmd_timeout", 0.1)), bool(p("expert", False))
    truth_log, step_budget = str(p("truth_log", "")), int(p("step_budget", 0))
    shadow, end_on_success = bool(p("shadow_expert", False)), bool(p("end_on_success", True))
    reward_kind, max_steps = str(p("reward", "sparse")), int(p("max_steps", 0))
    if reward_kind not in ("sparse", "shaped"):
        print(f"reward must be sparse or shaped, not '{reward_kind}'", file=sys.stderr)
        return 2
    t_start = time.monotonic()
    name, env = mt.make(task)
    max_steps = max_steps or env.max_path_length
    expert = mt.expert_class(name)()
    shadow_env = mt.make(task)[1] if shadow and not use_expert else None
    dt = mt.step_dt(env)
    be = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    rel = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    js_pub = node.create_publisher(JointState, "/joint_states", be)
    obs_pub = node.create_publisher(Float64MultiArray, "/task/obs", be)
    rew_pub = node.create_publisher(Float64, "/reward", rel)
    ep_pub = node.create_publisher(Int64, "/episode", rel)
    term_pub = node.create_publisher(Int64, "/terminal", rel)
    succ_pub = node.create_publisher(Int64, "/success", rel)
    last = {"cmd": np.zeros(mt.ACT_DIM), "t": -1e9, "n": 0}

    def on_cmd(m):
        if len(m.data) == mt.ACT_DIM and all(math.isfinite(v) for v in m.data):
            last["cmd"], last["t"] = np.clip(np.array(m.data), -1.0, 1.0), time.monotonic()
            last["n"] += 1
    node.create_subscription(Float64MultiArray, mt.cmd_topic(task), on_cmd, rel)

    def publish(o, prev=None, applied=None):
        """/task/obs first, then the stamped /joint_states step report."""
        obs_pub.publish(Float64MultiArray(data=[float(x) for x in o]))
        vel = np.zeros(4) if prev is None else (o[:4] - prev[:4]) / dt
        eff = np.zeros(4) if applied is None else applied
        js = JointState(name=list(mt.CHANNELS), position=[float(x) for x in o[:4]],
                        velocity=[float(x) for x in vel], effort=[float(x) for x in eff])
        js.header.stamp = node.get_clock().now().to_msg()
        js_pub.publish(js)

    def spin_until(deadline):
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            rclpy.spin_once(node, timeout_sec=min(left, 0.002))

    period = 1.0 / rate
    returns, successes, shadow_succ = [], [], []
    ep, stale_steps, total_steps = 0, 0, 0
    o, _ = mt.reset(env, mt.reset_seed(seed, 0))
    if not use_expert:  # wait for the controller before the first episode
        t0 = time.monotonic()
        while last["n"] == 0 and time.monotonic() - t0 < 60:
            publish(o)
            spin_until(time.monotonic() + 0.05)
        if last["n"] == 0:
            print("no commands within 60 s: is flowpilot_node running?", file=sys.stderr)
            return 1
    truth = {k: [] for k in ("episode", "step", "obs", "act", "reward", "success", "stale", "wall")}
    finals = {"final_episode": [], "final_obs": []}
    step_cost = []

    def write_truth():
        if not truth_log:
            return
        os.makedirs(os.path.dirname(os.path.abspath(truth_log)), exist_ok=True)
        n = len(truth["reward"])  # a step interrupted before its reward is dropped
        for k in truth:
            del truth[k][n:]
        np.savez(truth_log,
                 episode=np.array(truth["episode"], np.int64), step=np.array(truth["step"], np.int64),
                 obs=np.array(truth["obs"], np.float64).reshape(-1, mt.OBS_DIM),
                 act=np.array(truth["act"], np.float64).reshape(-1, mt.ACT_DIM),
                 reward=np.array(truth["reward"], np.float64), success=np.array(truth["success"], bool),
                 stale=np.array(truth["stale"], bool), wall=np.array(truth["wall"], np.float64),
                 final_episode=np.array(finals["final_episode"], np.int64),
                 final_obs=np.array(finals["final_obs"], np.float64).reshape(-1, mt.OBS_DIM),
                 task=task, seed=seed, rate_hz=rate, expert=use_expert, reward_kind=reward_kind)
        print(f"truth log: {n} steps -> {truth_log}", flush=True)

    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        while (episodes == 0 or ep < episodes) and (step_budget <= 0 or total_steps < step_budget):
            if ep > 0:
                # A reset takes a step's time: the last state stays on the
                # wire one period, so the node logs it as its own robot step.
                spin_until(time.monotonic() + period)
            start = mt.reset_seed(seed, ep)
            o, _ = mt.reset(env, start)
            ret, k, succeeded, done = 0.0, 0, False, False
            ep_t0 = time.monotonic()
            publish(o)
            next_t = time.monotonic()
            while not done:
                next_t += period
                spin_until(next_t)
                stale = False
                if use_expert:
                    act = np.clip(np.asarray(expert.get_action(o), np.float64), -1.0, 1.0)
                elif time.monotonic() - last["t"] < cmd_timeout:
                    act = last["cmd"].copy()
                else:
                    act = np.zeros(mt.ACT_DIM)
                    stale, stale_steps = True, stale_steps + 1
                if truth_log:
                    truth["episode"].append(ep)
                    truth["step"].append(k)
                    truth["obs"].append(o)
                    truth["act"].append(act)
                    truth["stale"].append(stale)
                    truth["wall"].append(time.time())
                c0 = time.perf_counter()
                prev = o
                o, r_shaped, _term, trunc, info = env.step(act.astype(np.float32))
                step_cost.append(time.perf_counter() - c0)
                k += 1
                s = mt.success(info)
                first = s and not succeeded
                succeeded = succeeded or s
                r = float(r_shaped) if reward_kind == "shaped" else (1.0 if first else 0.0)
                if truth_log:
                    truth["reward"].append(r)
                    truth["success"].append(s)
                rew_pub.publish(Float64(data=r))
                publish(o, prev, act)  # o_{t+1}, effort = a_t
                if first:
                    succ_pub.publish(Int64(data=ep))
                ret += r
                terminal = end_on_success and succeeded
                done = terminal or trunc or k >= max_steps
            if truth_log:
                finals["final_episode"].append(ep)
                finals["final_obs"].append(o)
            (term_pub if terminal else ep_pub).publish(Int64(data=ep))
            returns.append(ret)
            successes.append(succeeded)
            now = time.monotonic()
            line = (f"episode {ep + 1:3d}: return {ret:8.2f}{'  success' if succeeded else ''}"
                    f"  [t {now - t_start:.2f} s, ep {now - ep_t0:.2f} s, {k} steps]")
            if shadow_env is not None:  # in the reset's gap, never inside the episode
                _, out = mt.rollout(shadow_env, expert.get_action, start, end_on_success=end_on_success,
                                    max_steps=max_steps)
                sret = (out["return"] if reward_kind == "shaped" else float(out["success"]))
                shadow_succ.append(out["success"])
                line += f"  expert {sret:.2f} {'success' if out['success'] else 'fail'}"
            print(line, flush=True)
            ep += 1
            total_steps += k
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        write_truth()
    if returns:
        print(f"{task}: mean return {np.mean(returns):.2f} +- {np.std(returns):.2f}, "
              f"success {100.0 * np.mean(successes):.0f}% over {len(returns)} episodes "
              f"(stale-command steps {stale_steps}"
              + (f"; env step {1e3 * np.median(step_cost):.2f} ms median" if step_cost else "")
              + (f"; shadow expert success {100.0 * np.mean(shadow_succ):.0f}%" if shadow_succ else "")
              + ")", flush=True)
    for pub in (rew_pub, ep_pub, term_pub, succ_pub):
        pub.wait_for_all_acked(Duration(seconds=1.0))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
