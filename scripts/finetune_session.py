#!/usr/bin/env python3
"""An on-robot fine-tuning session against a running flowpilot_node (with
log.dir and hot_swap.dir configured) and a simulated robot:

  1. evaluate the running policy for --eval-episodes on fixed seeds (sim
     seed 1000);
  2. start the learner (~/finetune true) and let the robot act for
     --train-episodes while every tick is logged and new versions are
     hot-swapped in; with --eval-every K the training episodes run in
     chunks of K, each chunk but the last followed by an evaluation on the
     same fixed seeds (the learner keeps running meanwhile, and learns from
     those episodes too);
  3. stop the learner (it writes a last checkpoint), wait until the node
     runs that version, and evaluate again on the same seeds.

  python3 scripts/finetune_session.py --task reach [--train-episodes 80] [--eval-episodes 10]
  python3 scripts/finetune_session.py --task reacher --train-episodes 300 [--eval-every 50] [--sim-rate 50]
  python3 scripts/finetune_session.py --task pendulum --train-episodes 400 --max-steps 20000 [--sim-rate 25]
  python3 scripts/finetune_session.py --task metaworld:push-v3 --train-episodes 1000 --max-steps 50000 \
      --eval-at-steps 10000,25000 --sim-rate 160 --eval-temperature 0 --ckpt-dir DIR --plot PNG

Prints the return before and after, robot time and steps (training
episodes only), learner updates (from the newest policy file's spec),
versions swapped and log records dropped (/diagnostics), and the worst
evaluation relative to the start. Writes a learning-curve PNG (--plot) and
a JSON summary (--summary, default next to the plot).

Defaults per task: reach evaluates 10 episodes and does not chunk (as
before); reacher evaluates 20 episodes, evaluates every 50 training
episodes, and draws the scripted expert's return on the eval seeds (one
expert run of the sim on topics remapped away from the node; --expert-return
skips it); pendulum (InvertedPendulum-v5, episodes of up to 1000 steps that
end when the pole falls) evaluates 5 episodes every 20 training episodes,
and --max-steps ends training after the episode in which the robot steps
reach it (the sim's step_budget).

Meta-World tasks (metaworld:<name>, sim/manip_sim.py; run this with the
.manip venv's Python, as scripts/run_manip.sh does, so the sim gets its
mujoco): episodes of up to 500 steps that end on success, 20 evaluation
episodes, evaluations at robot-step marks (--eval-at-steps, default
10000,25000) and at the end (--max-steps, default 50000), the success rate
of each with its standard error, and the shadow expert's outcome on every
episode. --eval-temperature T sets the node's live `temperature` to T for
each evaluation and back to the acting one after.
"""
import argparse
import functools
import glob
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_srvs.srv import SetBool, Trigger

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# What `flowpilot report` shows of each evaluation (docs/log-format.md).
# wall_start_s / wall_end_s (Unix time) place each evaluation on the log's
# time axis.
EVAL_KEYS = ("label", "robot_time_s", "episodes", "return", "minus_expert", "success", "success_se",
             "policy_version_start", "policy_version_end", "wall_start_s", "wall_end_s")


@functools.lru_cache(maxsize=None)
def contract_files():
    """The checkpoint directory's file names, from the built `flowpilot`
    (crates/core/src/contract.rs: one owner; this script runs in the .manip
    venv too, without the flowpilot_py package)."""
    out = subprocess.run([os.path.join(ROOT, "target", "release", "flowpilot"), "contract", "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["files"]
EVAL_SEED = 1000
REACH_STEPS = 30  # sim/reach_sim.py STEPS
# Per MuJoCo task: the most env steps in an episode, the real-time sim rate
# (1 / the env's dt), evaluation episodes and training episodes per chunk.
MUJOCO = {"reacher": {"max_steps": 50, "rate": 50.0, "eval": 20, "every": 50},
          "pendulum": {"max_steps": 1000, "rate": 25.0, "eval": 5, "every": 20}}
EPISODE_RE = re.compile(r"episode\s+(\d+): return\s+(-?[\d.]+)[^\n\[]*(?:\[t ([\d.]+) s, ep ([\d.]+) s(?:, (\d+) steps)?\])?"
                        r"(?:\s+expert (-?[\d.]+))?")
CREATED_BY_RE = re.compile(r"SAC, (\d+) updates, seed (\d+)")
# Meta-World (sim/manip_sim.py): 500-step episodes ending on success, 80 Hz
# real time, 20 evaluation episodes, evaluations at robot-step marks.
MANIP = {"max_steps": 500, "rate": 80.0, "eval": 20, "eval_at": "10000,25000", "budget": 50000}
SUCCESS_RE = re.compile(r"episode\s+\d+: return\s+-?[\d.]+\s+success")


def is_manip(task):
    return task.startswith("metaworld:")


def episode_steps(task):
    if task == "reach":
        return REACH_STEPS
    return MANIP["max_steps"] if is_manip(task) else MUJOCO[task]["max_steps"]


class Session:
    """The session's ROS node: /diagnostics and the ~/finetune service."""

    def __init__(self, node_name):
        self.node = rclpy.create_node("finetune_session")
        self.node_name = node_name
        self.diag = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag,
                                      QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.cli = self.node.create_client(SetBool, f"{node_name}/finetune")
        if not self.cli.wait_for_service(timeout_sec=30):
            raise SystemExit(f"{node_name}/finetune not available: is flowpilot_node running?")
        self.keep = self.node.create_client(Trigger, f"{node_name}/keep_best")

    def _on_diag(self, m):
        for s in m.status:
            if s.name.startswith("flowpilot"):
                self.diag.update({v.key: v.value for v in s.values})

    def spin(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.05)

    def call(self, on):
        fut = self.cli.call_async(SetBool.Request(data=on))
        rclpy.spin_until_future_complete(self.node, fut, timeout_sec=30)
        r = fut.result()
        if r is None or not r.success:
            raise SystemExit(f"~/finetune {on}: {r.message if r else 'no response'}")
        return r.message

    def keep_best(self):
        """~/keep_best: the node swaps in the best version the return guard
        has seen. Returns (success, message)."""
        if not self.keep.wait_for_service(timeout_sec=5):
            return False, "~/keep_best not available"
        fut = self.keep.call_async(Trigger.Request())
        rclpy.spin_until_future_complete(self.node, fut, timeout_sec=30)
        r = fut.result()
        return (r.success, r.message) if r else (False, "no response")

    def param(self, name, value=None):
        """The node's parameter `name` (a double), set to `value` first if
        given (a live one, e.g. temperature). Returns its value, or None."""
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import GetParameters, SetParameters
        if value is not None:
            cli = self.node.create_client(SetParameters, f"{self.node_name}/set_parameters")
            if not cli.wait_for_service(timeout_sec=10):
                raise SystemExit(f"{self.node_name}/set_parameters not available")
            req = SetParameters.Request(parameters=[Parameter(
                name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(value)))])
            fut = cli.call_async(req)
            rclpy.spin_until_future_complete(self.node, fut, timeout_sec=10)
            r = fut.result()
            if r is None or not r.results or not r.results[0].successful:
                raise SystemExit(f"setting {name} to {value}: {r.results[0].reason if r and r.results else 'no response'}")
            self.node.destroy_client(cli)
        cli = self.node.create_client(GetParameters, f"{self.node_name}/get_parameters")
        if not cli.wait_for_service(timeout_sec=10):
            return None
        fut = cli.call_async(GetParameters.Request(names=[name]))
        rclpy.spin_until_future_complete(self.node, fut, timeout_sec=10)
        r = fut.result()
        self.node.destroy_client(cli)
        return r.values[0].double_value if r and r.values else None

    def version(self):
        v = self.diag.get("policy_version")
        return int(v) if v is not None and str(v).isdigit() else None

    def run(self, cmd, timeout):
        """Run a sim to completion while keeping /diagnostics current."""
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
            end = time.monotonic() + timeout
            while p.poll() is None:
                rclpy.spin_once(self.node, timeout_sec=0.05)
                if time.monotonic() > end:
                    p.kill()
                    p.wait()
                    break
            out.seek(0)
            err.seek(0)
            return p.returncode, out.read(), err.read()


def sim_cmd(task, episodes, seed, a, expert=False, step_budget=None):
    if is_manip(task):
        # sys.executable: the .manip venv's Python (metaworld, mujoco 3.3.0, rclpy)
        cmd = [sys.executable, os.path.join(ROOT, "sim", "manip_sim.py"), "--ros-args", "-p", f"task:={task}",
               "-p", f"episodes:={episodes}", "-p", f"seed:={seed}", "-p", f"rate_hz:={float(a.sim_rate)}",
               "-p", f"reward:={a.reward}"]
        if step_budget:
            cmd += ["-p", f"step_budget:={step_budget}"]
        return cmd + ["-p", "shadow_expert:=true"]
    if task == "reach":
        return [sys.executable, os.path.join(ROOT, "sim", "reach_sim.py"), "--episodes", str(episodes),
                "--seed", str(seed), "--rate", str(a.rate)]
    # the expert ignores commands, so it can run faster than real time
    rate = 1000.0 if expert else float(a.sim_rate)
    cmd = [sys.executable, os.path.join(ROOT, "sim", "mujoco_sim.py"), "--ros-args", "-p", f"task:={task}",
           "-p", f"episodes:={episodes}", "-p", f"seed:={seed}", "-p", f"rate_hz:={rate}"]
    if step_budget:
        cmd += ["-p", f"step_budget:={step_budget}"]
    if not expert:
        # the scripted expert on each same episode, in the sim's reset gap: a paired baseline
        cmd += ["-p", "shadow_expert:=true"]
    else:
        # its topics are remapped away from the node (which would log them)
        cmd += ["-p", "expert:=true"]
        for topic in ("/joint_states", "/task/obs", "/reward", "/episode", "/terminal", f"/{task}/cmd"):
            cmd += ["-r", f"{topic}:=/finetune_session_expert{topic}"]
    return cmd


def run_sim(session, task, episodes, seed, a, expert=False, step_budget=None):
    """Mean return and per-episode (return, seconds, steps, the scripted expert's
    return on the same episode or None, success or None) of one sim run."""
    rate = a.rate if task == "reach" else (1000.0 if expert else a.sim_rate)
    steps_per_s = rate
    timeout = 120 + 3 * episodes * episode_steps(task) / steps_per_s
    t0 = time.monotonic()
    rc, out, err = session.run(sim_cmd(task, episodes, seed, a, expert, step_budget), timeout)
    wall = time.monotonic() - t0
    m = re.search(r"mean return (-?[\d.]+)", out)
    if rc != 0 or not m:
        raise SystemExit(f"sim failed (rc {rc}):\n{out}\n{err}")
    eps = []
    for g in EPISODE_RE.finditer(out):
        ret = float(g.group(2))
        secs = float(g.group(4)) if g.group(4) else None
        steps = int(g.group(5)) if g.group(5) else (REACH_STEPS if task == "reach" else None)
        eps.append([ret, secs, steps, float(g.group(6)) if g.group(6) else None,
                    bool(SUCCESS_RE.match(g.group(0))) if is_manip(task) else None])
    if eps and any(e[1] is None for e in eps):  # reach: no per-episode times; share the run's wall time
        for e in eps:
            e[1] = wall / len(eps)
    return float(m.group(1)), eps


def paired(policy, expert):
    """(policy mean, expert mean, mean difference, its standard error) over
    episodes both ran; None without the expert's returns."""
    pairs = [(p, e) for p, e in zip(policy, expert) if p is not None and e is not None]
    if len(pairs) < 2:
        return None
    d = [p - e for p, e in pairs]
    n, m = len(d), sum(d) / len(d)
    se = (sum((x - m) ** 2 for x in d) / (n - 1) / n) ** 0.5
    return (sum(p for p, _ in pairs) / n, sum(e for _, e in pairs) / n, m, se)


def write_evaluations(ckpt_dir, evals):
    """The evaluations so far beside the versions they judged, for
    `flowpilot report LOG CKPT` (its Evaluations table and the marks on its
    return plot; the file's name is the contract's), replaced atomically so
    that a live report never reads half of it."""
    path = os.path.join(ckpt_dir, contract_files()["evaluations"])
    os.makedirs(ckpt_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump([{k: e.get(k) for k in EVAL_KEYS} for e in evals], f, indent=1, default=str)
    os.replace(path + ".tmp", path)


def newest_policy(ckpt_dir):
    """(version, learner updates, seed, path) of the newest policy file in the
    hot-swap directory, from its spec's created_by; None if there is none."""
    files = glob.glob(os.path.join(ckpt_dir, "policy_v*.safetensors"))
    if not files:
        return None
    path = max(files, key=lambda p: int(re.search(r"policy_v(\d+)", os.path.basename(p)).group(1)))
    version = int(re.search(r"policy_v(\d+)", os.path.basename(path)).group(1))
    updates = seed = None
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            meta = json.loads(f.read(n)).get("__metadata__", {})
        for v in meta.values():  # {"flowpilot": "<spec JSON>"}
            try:
                spec = json.loads(v)
            except (TypeError, ValueError):
                continue
            m = CREATED_BY_RE.search(str(spec.get("created_by", ""))) if isinstance(spec, dict) else None
            if m:
                updates, seed = int(m.group(1)), int(m.group(2))
    except (OSError, ValueError, struct.error):
        pass
    return {"version": version, "updates": updates, "seed": seed, "path": path}


def plot(path, task, train, evals, expert, before):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        ax.scatter([e["robot_time_s"] for e in train], [e["return"] for e in train], s=8, alpha=0.25,
                   color="tab:blue", label="training episodes")
    line = [e for e in evals if e["label"] != "kept best"]
    ax.plot([e["robot_time_s"] for e in line], [e["return"] for e in line], "o-", color="tab:orange",
            label=f"evaluation ({evals[0]['episodes']} episodes, seed {EVAL_SEED})")
    for e in evals:
        if e["label"] == "kept best":
            ax.plot([e["robot_time_s"]], [e["return"]], "*", ms=14, color="tab:red",
                    label=f"kept best (version {e['policy_version_end']}) {e['return']:.2f}")
    ax.axhline(before, color="tab:gray", ls="--", lw=1, label=f"BC start {before:.2f}")
    if expert is not None:
        ax.axhline(expert, color="tab:green", ls="--", lw=1, label=f"scripted expert {expert:.2f}")
    ax.set_xlabel("robot time in training episodes (s)")
    ax.set_ylabel("episode return")
    ax.set_title(f"{task}: on-robot SAC fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="reach", help="reach, reacher, pendulum or metaworld:<name>")
    ap.add_argument("--eval-episodes", type=int, help="default: reach 10, reacher 20, pendulum 5")
    ap.add_argument("--train-episodes", type=int, default=80)
    ap.add_argument("--max-steps", type=int, help="end training after the episode in which the robot steps reach this")
    ap.add_argument("--eval-every", type=int, help="training episodes per chunk, each followed by an evaluation "
                    "(0: one chunk; default: reach 0, reacher 50, pendulum 20)")
    ap.add_argument("--eval-at-steps", help="comma-separated robot-step marks: an evaluation once the training "
                    "episodes' robot steps pass each (default: metaworld 10000,25000; others none)")
    ap.add_argument("--eval-temperature", type=float, help="the node's latent temperature during evaluations "
                    "(its live `temperature`; default: the acting one)")
    ap.add_argument("--reward", default="sparse", choices=["sparse", "shaped"], help="metaworld: the sim's reward")
    ap.add_argument("--rate", type=float, default=20.0, help="reach sim steps per second")
    ap.add_argument("--sim-rate", type=float,
                    help="MuJoCo sim steps per second (its rate_hz; default real time: reacher 50, pendulum 25)")
    ap.add_argument("--node", default="/flowpilot")
    ap.add_argument("--ckpt-dir", help="the node's hot_swap.dir (default ~/.local/state/flowpilot/<task>/ckpt, as config/<task>.yaml)")
    ap.add_argument("--expert-return", type=float, help="the scripted expert's mean return on the eval seeds "
                    "(MuJoCo tasks: measured with the sim unless given)")
    ap.add_argument("--plot", help="learning-curve PNG (default ~/.local/state/flowpilot/<task>/finetune.png)")
    ap.add_argument("--summary", help="JSON summary (default: next to the plot, .json)")
    ap.add_argument("--no-keep-best", action="store_true",
                    help="end on the newest version (default: after evaluating it, ~/keep_best swaps in the "
                    "best version the return guard judged on the training episodes, which is evaluated too)")
    a = ap.parse_args()
    manip = is_manip(a.task)
    if not manip and a.task not in ("reach", *MUJOCO):
        ap.error(f"--task: reach, {', '.join(MUJOCO)} or metaworld:<name>, not '{a.task}'")
    mj = MUJOCO.get(a.task)
    n_eval = a.eval_episodes or (mj["eval"] if mj else MANIP["eval"] if manip else 10)
    every = a.eval_every if a.eval_every is not None else (mj["every"] if mj else 0)
    if a.sim_rate is None:
        a.sim_rate = mj["rate"] if mj else MANIP["rate"] if manip else 50.0
    if manip and a.max_steps is None:
        a.max_steps = MANIP["budget"]
    marks = a.eval_at_steps if a.eval_at_steps is not None else (MANIP["eval_at"] if manip else "")
    marks = sorted(int(x) for x in marks.split(",") if x.strip())
    state = os.path.expanduser(f"~/.local/state/flowpilot/{re.sub(r'[^A-Za-z0-9_]', '_', a.task)}")
    ckpt_dir = a.ckpt_dir or f"{state}/ckpt"
    plot_path = a.plot or f"{state}/finetune.png"
    summary_path = a.summary or os.path.splitext(plot_path)[0] + ".json"

    rclpy.init()
    s = Session(a.node)
    t_start = time.monotonic()
    s.spin(1.5)
    v0 = s.diag.get("policy_version", "?")

    expert = a.expert_return
    if expert is None and mj:
        expert, _ = run_sim(s, a.task, n_eval, EVAL_SEED, a, expert=True)
        print(f"scripted expert: mean return {expert:.2f} over {n_eval} episodes (seed {EVAL_SEED})", flush=True)

    acting_tau = s.param("temperature") if a.eval_temperature is not None else None
    published = []  # every evaluation so far, in CKPT/evaluations.json as each ends
    eval_steps = []  # robot steps of evaluation episodes run while the learner ran

    def evaluate(label, robot_time, chunk):
        if acting_tau is not None:
            s.param("temperature", a.eval_temperature)
        ver0 = s.version()
        wall0 = time.time()
        ret, eps = run_sim(s, a.task, n_eval, EVAL_SEED, a)
        wall1 = time.time()
        if acting_tau is not None:
            s.param("temperature", acting_tau)
        if learner_on:
            eval_steps.append(sum(x[2] or 0 for x in eps))
        pol = newest_policy(ckpt_dir)
        e = {"label": label, "after_train_episodes": chunk, "robot_time_s": robot_time, "return": ret,
             "episodes": n_eval, "episode_returns": [x[0] for x in eps], "policy_version_start": ver0,
             "policy_version_end": s.version(), "learner_updates": pol["updates"] if pol else None,
             "wall_start_s": round(wall0, 3), "wall_end_s": round(wall1, 3)}
        # the sim's own shadow expert on these very episodes (MuJoCo tasks)
        pe = paired(e["episode_returns"], [x[3] for x in eps])
        e["minus_expert"] = [round(pe[2], 3), round(pe[3], 3)] if pe else None
        if manip:  # the success rate and its binomial standard error
            wins = [bool(x[4]) for x in eps]
            p = sum(wins) / max(len(wins), 1)
            e.update(robot_steps=robot_steps_now[0], successes=wins, success=round(p, 4),
                     success_se=round((p * (1 - p) / max(len(wins) - 1, 1)) ** 0.5, 4),
                     expert_success=round(sum(1 for x in eps if x[3]) / max(len(eps), 1), 4),
                     temperature=a.eval_temperature if acting_tau is not None else "acting")
        print(f"{label}: mean return {ret:.2f} over {n_eval} episodes (policy version {ver0}"
              f"{'' if e['policy_version_end'] == ver0 else '->' + str(e['policy_version_end'])}"
              f"{'' if e['learner_updates'] is None else ', newest checkpoint ' + str(e['learner_updates']) + ' updates'})"
              f"{'' if pe is None else f'; minus the expert {pe[2]:+.2f} +- {pe[3]:.2f} (paired SE)'}",
              flush=True)
        if manip:
            print(f"{label}: success {100 * e['success']:.0f}% +- {100 * e['success_se']:.0f} (SE) over {n_eval} "
                  f"episodes at {e['robot_steps']} robot steps; the scripted expert {100 * e['expert_success']:.0f}% "
                  f"on the same episodes", flush=True)
        published.append(e)
        write_evaluations(ckpt_dir, published)
        return e

    learner_on = False
    robot_steps_now = [0]
    before = evaluate("before", 0.0, 0)
    evals = [before]
    s.spin(1.5)
    overruns0, up0 = s.diag.get("overruns"), time.monotonic()
    print(s.call(True), flush=True)
    learner_on = True
    train, robot_time, robot_steps, done, chunk = [], 0.0, 0, 0, 0
    bounds = []  # training episodes done at each evaluation mark (metaworld)
    t0 = time.monotonic()
    size = every if every > 0 else a.train_episodes

    def budget_spent():
        return a.max_steps is not None and robot_steps >= a.max_steps

    while done < a.train_episodes and not budget_spent():
        n = min(size, a.train_episodes - done)
        # a fresh seed per chunk: new episodes; the sim ends the chunk once
        # the session's step budget is spent (after that episode)
        left = None if a.max_steps is None else a.max_steps - robot_steps
        # the next evaluation mark ends the chunk too (after that episode)
        mark = next((m for m in marks if m > robot_steps), None)
        if mark is not None and (a.max_steps is None or mark < a.max_steps):
            left = mark - robot_steps if left is None else min(left, mark - robot_steps)
        else:
            mark = None
        _, eps = run_sim(s, a.task, n, 1 + chunk, a, step_budget=left)
        for ret, secs, steps, shadow, won in eps:
            robot_time += secs
            robot_steps += steps or 0
            train.append({"episode": len(train) + 1, "return": ret, "robot_time_s": round(robot_time, 3),
                          "steps": steps, "expert_return": shadow})
            if won is not None:
                train[-1]["success"] = won
        robot_steps_now[0] = robot_steps
        done += len(eps) or n  # fewer when the step budget ended the chunk
        chunk += 1
        if mark is not None:
            if robot_steps >= mark and done < a.train_episodes and not budget_spent():
                bounds.append(len(train))
                evals.append(evaluate(f"eval after {robot_steps} steps", round(robot_time, 3), done))
        elif done < a.train_episodes and not budget_spent():
            evals.append(evaluate(f"eval after {done} episodes", round(robot_time, 3), done))
    session_s = time.monotonic() - t0
    robot_steps_now[0] = robot_steps
    print(s.call(False), f"after {robot_time:.0f} s of robot time in {done} training episodes "
          f"({session_s:.0f} s with evaluations)", flush=True)
    pol = newest_policy(ckpt_dir)
    if pol:  # the hot swap polls the checkpoint directory
        end = time.monotonic() + 20
        while s.version() != pol["version"] and time.monotonic() < end:
            s.spin(0.2)
    s.spin(1.5)
    v1 = s.diag.get("policy_version", "?")
    if pol and s.version() != pol["version"]:
        # rejected, or held back until the running version has the return
        # guard's episodes (hot_swap.guard.hold); the evaluation may see it
        # swapped in once it has
        print(f"warning: the node runs version {v1}, the newest checkpoint is {pol['version']} "
              f"(rejected, or held until version {v1} has run the return guard's episodes)", flush=True)
    learner_on = False
    after = evaluate("after", round(robot_time, 3), done)
    evals.append(after)
    kept = None
    if not a.no_keep_best:
        v_newest = s.version()
        ok, msg = s.keep_best()
        print(f"keep the best: {msg}", flush=True)
        if ok and "already the best" in msg:
            kept = after
        elif ok:
            end = time.monotonic() + 10
            while s.version() == v_newest and time.monotonic() < end:
                s.spin(0.2)
            try:
                kept = evaluate("kept best", round(robot_time, 3), done)
                evals.append(kept)
            except SystemExit as e:  # e.g. the node went away: keep what was measured
                print(f"kept best: not evaluated ({e})", flush=True)
    s.spin(1.5)
    d = s.diag
    worst = min(e["return"] for e in evals[1:])
    # The training episodes against the scripted expert on the very same
    # episodes, chunk by chunk: far less noisy than 20 evaluation episodes.
    online = []
    cuts = ([0, *bounds, len(train)] if manip else list(range(0, len(train), size)) + [len(train)])
    for i, j in zip(cuts, cuts[1:]):
        part = train[i:j]
        pe = paired([e["return"] for e in part], [e["expert_return"] for e in part])
        if pe:
            online.append({"episodes": [i + 1, i + len(part)], "policy": round(pe[0], 3),
                           "expert": round(pe[1], 3), "minus_expert": round(pe[2], 3), "se": round(pe[3], 3)})
    summary = {
        "task": a.task, "train_episodes": done, "eval_episodes": n_eval, "eval_seed": EVAL_SEED,
        "eval_every": every, "sim_rate_hz": a.rate if a.task == "reach" else a.sim_rate,
        "return_before": before["return"], "return_after": after["return"],
        "return_kept": kept["return"] if kept else None,
        "kept_version": kept["policy_version_end"] if kept else None,
        "change": after["return"] - before["return"], "min_eval_minus_before": worst - before["return"],
        "expert_return": expert, "robot_time_s": round(robot_time, 3), "robot_steps": robot_steps,
        "session_wall_s": round(session_s, 1),
        "learner_updates": pol["updates"] if pol else 0, "learner_seed": pol["seed"] if pol else None,
        "newest_checkpoint": pol["path"] if pol else None,
        "policy_version_before": v0, "policy_version_after": v1,
        "policy_swaps": d.get("policy_swaps"), "policy_rejections": d.get("policy_rejections"),
        "policy_auto_rollbacks": d.get("policy_auto_rollbacks"),
        "overruns": d.get("overruns"), "overruns_before_learner": overruns0,
        "node_s_before_learner": round(up0 - t_start, 1), "jitter_max_us": d.get("jitter_max_us"),
        "policy_guard_verdict": d.get("policy_guard_verdict"),
        "log_written": d.get("log_written"), "log_dropped": d.get("log_dropped"),
        # the longest one publish call into the middleware took (a stall's cause)
        "publish_max_ms": d.get("publish_max_ms"),
        "online_vs_expert": online, "evals": evals, "train": train, "plot": plot_path,
    }
    if manip:
        # The learner learned from every logged robot step while it ran:
        # the training episodes' and those of the evaluations in between.
        steps_logged = robot_steps + sum(eval_steps)
        ups = (pol["updates"] or 0) if pol else 0
        for c, (i, j) in zip(online, zip(cuts, cuts[1:])):
            c["success"] = round(sum(1 for e in train[i:j] if e.get("success")) / max(j - i, 1), 3)
        summary.update({
            "reward": a.reward, "eval_temperature": a.eval_temperature, "acting_temperature": acting_tau,
            "max_steps": a.max_steps, "eval_at_steps": marks,
            "success_before": before["success"], "success_after": after["success"],
            "success_kept": kept["success"] if kept else None,
            "success_evals": [{"label": e["label"], "robot_steps": e["robot_steps"], "success": e["success"],
                               "se": e["success_se"], "version": e["policy_version_end"],
                               "learner_updates": e["learner_updates"]} for e in evals],
            "train_success_rate": round(sum(1 for e in train if e.get("success")) / max(len(train), 1), 3),
            "robot_steps_logged_while_learning": steps_logged,
            "learner_updates_per_s": round(ups / session_s, 2) if session_s > 0 else None,
            "utd_per_logged_step": round(ups / max(steps_logged, 1), 3),
            "utd_at_real_time": round(ups / session_s / MANIP["rate"], 3) if session_s > 0 else None,
        })
    print(f"return before {before['return']:.2f}, after {after['return']:.2f} ({after['return'] - before['return']:+.2f}) "
          f"over {n_eval} episodes (seed {EVAL_SEED}); min eval - before {worst - before['return']:+.2f}"
          f"{'' if expert is None else f'; scripted expert {expert:.2f}'}")
    print(f"robot time {robot_time:.1f} s, {robot_steps} robot steps in {done} training episodes; "
          f"learner updates {summary['learner_updates']}; policy version {v0} -> {v1}, "
          f"swaps {d.get('policy_swaps')}, rejections {d.get('policy_rejections')}, "
          f"automatic rollbacks {d.get('policy_auto_rollbacks')}; "
          f"log: {d.get('log_written')} records written, {d.get('log_dropped')} dropped")
    if kept is not None:
        print(f"kept version {kept['policy_version_end']} (the best the return guard judged): mean return "
              f"{kept['return']:.2f} ({kept['return'] - before['return']:+.2f} on the start)")
    if pol and session_s > 0:
        print(f"learner: {pol['updates'] / session_s:.1f} updates/s over the session's {session_s:.0f} s; "
              f"control loop overruns: {overruns0} in the {up0 - t_start:.0f} s before the learner started, "
              f"{d.get('overruns')} in all by the end ({time.monotonic() - t_start:.0f} s)")
    if d.get("policy_guard_verdict"):
        print(f"return guard, last verdict: {d.get('policy_guard_verdict')}")
    if online:
        print("training episodes minus the scripted expert on the same episodes: " + ", ".join(
            f"{c['episodes'][0]}-{c['episodes'][1]}: {c['minus_expert']:+.2f} +- {c['se']:.2f}" for c in online))
    if manip:
        print("success rate (SE) by evaluation: " + ", ".join(
            f"{e['label']} [{e['robot_steps']} steps, v{e['policy_version_end']}]: {100 * e['success']:.0f}% "
            f"+- {100 * e['success_se']:.0f}" for e in evals))
        print("training episodes' success by segment: " + ", ".join(
            f"{c['episodes'][0]}-{c['episodes'][1]}: {100 * c['success']:.0f}% (expert {100 * c['expert']:.0f}%)"
            for c in online))
        print(f"learner: {summary['learner_updates_per_s']} updates/s; {summary['learner_updates']} updates over "
              f"{summary['robot_steps_logged_while_learning']} logged robot steps = UTD "
              f"{summary['utd_per_logged_step']} at {a.sim_rate:g} Hz ({a.sim_rate / MANIP['rate']:g}x real time); "
              f"at the robot's real 80 Hz this rate is UTD {summary['utd_at_real_time']}")
    # the line scripts and docs quote (kept from earlier versions)
    print(f"fine-tuning changed the return by {after['return'] - before['return']:+.2f}; log: {d.get('log_written')} "
          f"records written, {d.get('log_dropped')} dropped; swaps {d.get('policy_swaps')}, "
          f"rejections {d.get('policy_rejections')}")
    try:
        plot(plot_path, a.task, train, evals, expert, before["return"])
        print(f"learning curve: {plot_path}")
    except ImportError as e:
        print(f"no plot ({e}); pip install matplotlib", file=sys.stderr)
        summary["plot"] = None
    os.makedirs(os.path.dirname(os.path.abspath(summary_path)), exist_ok=True)
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=2, default=str)
    print(f"summary: {summary_path}")
    s.node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
