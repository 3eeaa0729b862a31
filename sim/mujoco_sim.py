#!/usr/bin/env python3
"""A MuJoCo robot on ROS 2 for hardware-in-the-loop runs (rclpy + gymnasium).

  python3 sim/mujoco_sim.py --ros-args -p task:=reacher -p episodes:=10 -p seed:=0

Steps the gymnasium env in real time (one env step per 1/rate_hz seconds;
the env's own dt is 0.02 s, so rate_hz 50 is real time) and publishes:
  /joint_states     sensor_msgs/JointState (position, velocity; header stamped;
                    effort = the action applied in the step that produced this
                    state, physical units, one per joint; zeros at an
                    episode's first observation)
  /task/obs         std_msgs/Float64MultiArray (reacher: target x, y, fingertip-target dx, dy)
  /reward           std_msgs/Float64 (each step)
  /episode          std_msgs/Int64 (the index of an episode that just ended
                    by its time limit)
  /terminal         std_msgs/Int64 (the index of an episode that just ended
                    in a terminal state: the pendulum fell)
After each env step it publishes, in this order: /reward (r_t), /task/obs
(o_{t+1}), /joint_states (o_{t+1}, effort = a_t); after an episode's last
step, /episode (or /terminal) follows, and the next episode's first state one period
later (a reset takes a step's time). It consumes /<task>/cmd (std_msgs/Float64MultiArray)
as a ros2_control forward command controller would: it holds the last
command and goes to zero when commands are older than cmd_timeout.

Parameters: task (reacher | pendulum), rate_hz, seed, episodes (0 = run
until stopped), step_budget (0 = no limit; else it also stops after the
episode in which its env steps reach this: a session's step budget),
cmd_timeout, expert (true: act with the scripted expert,
ignoring commands — for a baseline), truth_log (a path: at exit, write an
.npz with one row per env step: episode, step, obs (policy layout, the state
before the step), act (applied, physical), reward, stale, wall (time.time()
at the step); plus final_obs/final_episode, each episode's last state),
shadow_expert (true: also run the scripted expert on each episode's start,
in a private copy of the env at reset, and print its return: a paired
baseline for the policy's return on the same episode).
Prints one line per episode (`episode   N: return    X.XX[  success]`,
then `  [t T s, ep D s, K steps]`: wall seconds since the sim started, the
episode's own duration and its env steps, then `  expert X.XX` with
shadow_expert) and a summary line; exits after `episodes`.
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

import tasks


def main():
    rclpy.init()
    node = rclpy.create_node("mujoco_sim")
    p = lambda name, default: node.declare_parameter(name, default).value
    task_name, rate, seed = p("task", "reacher"), float(p("rate_hz", 50.0)), int(p("seed", 0))
    episodes, cmd_timeout, use_expert = int(p("episodes", 10)), float(p("cmd_timeout", 0.1)), bool(p("expert", False))
    truth_log = str(p("truth_log", ""))
    step_budget = int(p("step_budget", 0))
    shadow = bool(p("shadow_expert", False))
    t_start = time.monotonic()
    t, env = tasks.make(task_name)
    shadow_env = tasks.make(task_name)[1] if shadow and not use_expert else None
    be = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    rel = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    js_pub = node.create_publisher(JointState, "/joint_states", be)
    task_pub = node.create_publisher(Float64MultiArray, "/task/obs", be)
    rew_pub = node.create_publisher(Float64, "/reward", rel)
    ep_pub = node.create_publisher(Int64, "/episode", rel)
    term_pub = node.create_publisher(Int64, "/terminal", rel)
    last = {"cmd": np.zeros(t.act_dim), "t": -1e9, "n": 0}

    def on_cmd(m):
        if len(m.data) == t.act_dim and all(math.isfinite(v) for v in m.data):
            last["cmd"], last["t"] = np.array(m.data), time.monotonic()
            last["n"] += 1
    node.create_subscription(Float64MultiArray, f"/{task_name}/cmd", on_cmd, rel)

    def publish(o, applied=None):
        """Publish a state: /task/obs first, then the stamped /joint_states
        whose effort is the action applied in the step that produced it."""
        q, v, task_vec = t.ros(env, o)
        eff = np.zeros(len(t.joints))  # actuated joints first (pendulum: the slider)
        if applied is not None:
            eff[:t.act_dim] = applied
        js = JointState(name=list(t.joints), position=q.tolist(), velocity=v.tolist(),
                        effort=[float(x) for x in eff])
        js.header.stamp = node.get_clock().now().to_msg()
        if len(task_vec):
            task_pub.publish(Float64MultiArray(data=task_vec.tolist()))
        js_pub.publish(js)
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
    o, _ = env.reset(seed=tasks.reset_seed(seed, 0))
    if not use_expert:  # wait for the controller before the first episode
        t0 = time.monotonic()
        while last["n"] == 0 and time.monotonic() - t0 < 60:
            publish(o)
            spin_until(time.monotonic() + 0.05)
        if last["n"] == 0:
            print("no commands within 60 s: is flowpilot_node running?", file=sys.stderr)
            return 1
    stale_steps = 0
    truth = {k: [] for k in ("episode", "step", "obs", "act", "reward", "stale", "wall")}
    finals = {"final_episode": [], "final_obs": []}

    def write_truth():
        if not truth_log:
            return
        d = os.path.dirname(os.path.abspath(truth_log))
        os.makedirs(d, exist_ok=True)
        n_obs = len(t.policy_obs(*t.ros(env, o)))
        n = len(truth["reward"])  # a step interrupted before its reward is dropped
        for k in truth:
            del truth[k][n:]
        np.savez(truth_log,
                 episode=np.array(truth["episode"], np.int64), step=np.array(truth["step"], np.int64),
                 obs=np.array(truth["obs"], np.float64).reshape(-1, n_obs),
                 act=np.array(truth["act"], np.float64).reshape(-1, t.act_dim),
                 reward=np.array(truth["reward"], np.float64), stale=np.array(truth["stale"], bool),
                 wall=np.array(truth["wall"], np.float64),
                 final_episode=np.array(finals["final_episode"], np.int64),
                 final_obs=np.array(finals["final_obs"], np.float64).reshape(-1, n_obs),
                 task=task_name, seed=seed, rate_hz=rate, expert=use_expert)
        print(f"truth log: {len(truth['step'])} steps -> {truth_log}", flush=True)

    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        total_steps = 0
        while (episodes == 0 or ep < episodes) and (step_budget <= 0 or total_steps < step_budget):
            expert = t.expert(rng)
            if ep > 0:
                # A reset takes a robot a step's time at least: the last
                # state of an episode stays on the wire for one period, so
                # the node logs it as its own robot step (two step reports
                # within one control tick would count as one, see
                # docs/log-format.md).
                spin_until(time.monotonic() + period)
            o, _ = env.reset(seed=tasks.reset_seed(seed, ep))
            ret, done, info, k, term = 0.0, False, {}, 0, False
            ep_t0 = time.monotonic()
            q, v, task_vec = publish(o)  # o_0, effort zeros
            next_t = time.monotonic()
            while not done:
                next_t += period
                spin_until(next_t)
                stale = False
                if use_expert:
                    act = tasks.expert_action(t, expert, q, v, task_vec, o)
                elif time.monotonic() - last["t"] < cmd_timeout:
                    act = last["cmd"]
                else:
                    act = np.zeros(t.act_dim)
                    stale, stale_steps = True, stale_steps + 1
                act = np.array(act, dtype=np.float64)
                if truth_log:
                    truth["episode"].append(ep)
                    truth["step"].append(k)
                    truth["obs"].append(t.policy_obs(q, v, task_vec))
                    truth["act"].append(act)
                    truth["stale"].append(stale)
                    truth["wall"].append(time.time())
                o, r, term, trunc, info = env.step(act.astype(np.float32))
                if truth_log:
                    truth["reward"].append(float(r))
                rew_pub.publish(Float64(data=float(r)))
                q, v, task_vec = publish(o, act)  # o_{t+1}, effort = a_t
                ret += r
                k += 1
                done = term or trunc
            if truth_log:
                finals["final_episode"].append(ep)
                finals["final_obs"].append(t.policy_obs(q, v, task_vec))
            (term_pub if term else ep_pub).publish(Int64(data=ep))
            returns.append(ret)
            successes.append(bool(t.success(info)))
            now = time.monotonic()  # the episode's own time, without the shadow's
            # In the reset's gap (one period), never inside the episode.
            shadow_ret = tasks.shadow_return(t, shadow_env, expert, tasks.reset_seed(seed, ep)) if shadow_env else None
            print(f"episode {ep + 1:3d}: return {ret:8.2f}{'  success' if successes[-1] else ''}"
                  f"  [t {now - t_start:.2f} s, ep {now - ep_t0:.2f} s, {k} steps]"
                  + (f"  expert {shadow_ret:.2f}" if shadow_ret is not None else ""), flush=True)
            ep += 1
            total_steps += k
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        write_truth()
    if returns:
        print(f"{task_name}: mean return {np.mean(returns):.2f} +- {np.std(returns):.2f}, "
              f"success {100.0 * np.mean(successes):.0f}% over {len(returns)} episodes "
              f"(stale-command steps {stale_steps})", flush=True)
    # The last reward and episode end are reliable messages: let the
    # node acknowledge them before this participant goes away.
    for pub in (rew_pub, ep_pub, term_pub):
        pub.wait_for_all_acked(Duration(seconds=1.0))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
