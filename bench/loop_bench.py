#!/usr/bin/env python3
"""Control-loop jitter and observation-to-action latency of flowpilot_node,
with and without the SAC learner running beside it, in one run.

  source .ros/env.sh
  pip install matplotlib        # for the PNGs only
  python3 bench/loop_bench.py [--rates 500 1000] [--seconds 30] [--rt] [--png-dir docs]
  python3 bench/loop_bench.py --baseline --rt-modes off on --repeat 3 --seconds 20

For each rate: the node (reference K=4, C=256 model, obs 39, act 8, logging
every tick as in a fine-tuning session) runs --seconds alone, then
--seconds with `flowpilot finetune --offline` (1 thread, nice 19) updating
the same architecture. Reports wake-up jitter p50/p99/max and missed
deadlines (the node's whole-run summary), and the round trip rclpy ->
node -> rclpy from the action trace. With --baseline, `flowpilot
bare-loop` (the node's timer, timer slack and RT settings, doing no work)
runs beside the node in each window, and the node's wake-up p99/max are
reported as ratios to that floor, with the learner's updates/s. Writes a latency histogram and a
per-second jitter plot.
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from node_bench import js_publisher, params, q

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
REL = os.path.join(ROOT, "target", "release")
BE = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
RL = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)


def bare_loop_cmd(rate, seconds, rt):
    """The machine's floor: a no-work loop with the node's timer and RT settings."""
    cmd = [os.path.join(REL, "flowpilot"), "bare-loop", "--rate", str(rate), "--seconds", str(seconds)]
    return cmd + (["--fifo-priority", "80", "--cpu", "1", "--mlockall"] if rt else [])


def run(domain, yaml, seconds, rt_args, learner_cmd, peer, tmp, baseline=None):
    sent, trace, diag = {}, [], []
    lock = threading.Lock()
    pub = peer.create_publisher(JointState, "/bench/joint_states", BE)
    timer = peer.create_timer(0.01, js_publisher(pub, sent, lock))
    s1 = peer.create_subscription(Float64MultiArray, "/flowpilot/action_trace",
                                  lambda m: trace.append((time.monotonic(), m.data[1], m.data[4])), RL)

    def on_diag(m):
        for s in m.status:
            if s.name.startswith("flowpilot"):
                diag.append({v.key: v.value for v in s.values})
    s2 = peer.create_subscription(DiagnosticArray, "/diagnostics", on_diag, RL)
    learner = None
    if learner_cmd:
        learner = subprocess.Popen(learner_cmd, env=dict(os.environ, RAYON_NUM_THREADS="1", CANDLE_NUM_THREADS="1"),
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        learner_t0 = time.monotonic()
        time.sleep(3)  # the learner loads and starts updating
    log_path = os.path.join(tmp, "node.log")
    with open(log_path, "w") as log:
        p = subprocess.Popen([os.path.join(REL, "flowpilot_node"), "--ros-args", "--params-file", yaml, *rt_args],
                             env=dict(os.environ, ROS_DOMAIN_ID=str(domain), RUST_LOG="info"), stdout=log, stderr=subprocess.STDOUT)
        # the bare loop runs beside the node over the same window
        bare = subprocess.Popen(baseline, stdout=subprocess.PIPE, text=True) if baseline else None
        time.sleep(seconds)
        p.send_signal(signal.SIGTERM)
        p.wait()
        floor = json.loads(bare.communicate(timeout=seconds + 30)[0]) if bare else None
    updates_per_s = None
    if learner:
        learner.send_signal(signal.SIGTERM)
        out = learner.communicate(timeout=60)[0]
        m_up = re.search(r"finetune: (\d+) updates", out)
        updates_per_s = int(m_up.group(1)) / (time.monotonic() - learner_t0) if m_up else None
    peer.destroy_timer(timer)
    peer.destroy_subscription(s1)
    peer.destroy_subscription(s2)
    text = re.sub(r"\x1b\[[0-9;]*m", "", open(log_path).read())
    m = re.search(r"loop summary.*", text)
    summary = dict(re.findall(r"(\w+)=([\d.]+)", m.group(0))) if m else {}
    seen, rtt = set(), []
    with lock:
        sc = dict(sent)
    for t_recv, dec, stamp in trace:
        st = round(stamp, 6)
        if dec == 0 and st not in seen and st in sc:
            seen.add(st)
            rtt.append((t_recv - sc[st]) * 1e3)
    p99s = [float(d["jitter_p99_us"]) for d in diag if "jitter_p99_us" in d]
    return summary, rtt, p99s, floor, updates_per_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", type=float, nargs="+", default=[500.0, 1000.0])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--rt", action="store_true", help="SCHED_FIFO 80 on CPU 1 with mlockall for the control thread")
    ap.add_argument("--png-dir", default=None)
    ap.add_argument("--baseline", action="store_true",
                    help="run `flowpilot bare-loop` (same timer and RT settings, no work) beside the node in each "
                         "window and report the node's wake-up p99/max as ratios to it")
    ap.add_argument("--rt-modes", nargs="+", choices=["off", "on"], default=None,
                    help="with --baseline: RT settings off and/or on (default: --rt's)")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    rt_args = ["-p", "rt.fifo_priority:=80", "-p", "rt.cpu:=1", "-p", "rt.mlockall:=true"] if a.rt else []
    tmp = tempfile.mkdtemp()
    model = os.path.join(tmp, "k4.safetensors")
    subprocess.run([os.path.join(REL, "flowpilot"), "new", model, "--obs", "39", "--act", "8", "--hidden", "256",
                    "--blocks", "4", "--random"], check=True, capture_output=True)
    rng = np.random.default_rng(0)
    n = 20_000
    data = os.path.join(tmp, "data.npz")
    np.savez(data, obs=rng.uniform(-1, 1, (n, 39)).astype(np.float32), act=rng.uniform(-1, 1, (n, 8)).astype(np.float32),
             episode=np.repeat(np.arange(n // 100), 100), reward=-rng.uniform(0, 1, n).astype(np.float32),
             act_low=-np.ones(8, np.float32), act_high=np.ones(8, np.float32))
    learner_cmd = [os.path.join(REL, "flowpilot"), "finetune", "--offline", data, "--init", model,
                   "--out", os.path.join(tmp, "ckpt"), "--critic-warmup", "0", "--checkpoint-every", "1000000"]
    domain = 130 + os.getpid() % 40
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    peer = rclpy.create_node("loop_bench", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(peer)
    stop = False

    def spin():
        while not stop:
            ex.spin_once(timeout_sec=0.005)
    th = threading.Thread(target=spin, daemon=True)
    th.start()
    results = {}
    if a.baseline:
        modes = a.rt_modes or (["on"] if a.rt else ["off"])
        rt_on = ["-p", "rt.fifo_priority:=80", "-p", "rt.cpu:=1", "-p", "rt.mlockall:=true"]
        print(f"## node wake-up jitter / bare loop in the same window ({a.seconds:.0f} s each, logging every tick)\n")
        print("| rate | RT | learner | run | node p99 / max (µs) | bare loop p99 / max (µs) | p99 ratio | max ratio "
              "| node missed | learner updates/s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for rate in a.rates:
            yaml = os.path.join(tmp, f"bench_{int(rate)}.yaml")
            params(yaml, model, rate)
            with open(yaml, "a") as f:
                f.write(f"    log: {{dir: {tmp}/log_{int(rate)}, every: 1}}\n")
            for mode in modes:
                for label, cmd in (("alone", None), ("with learner", learner_cmd)):
                    for r in range(a.repeat):
                        s_, _, _, floor, ups = run(domain, yaml, a.seconds, rt_on if mode == "on" else [], cmd, peer,
                                                   tmp, bare_loop_cmd(rate, a.seconds, mode == "on"))
                        n99, nmax = float(s_.get("jitter_p99_us", "nan")), float(s_.get("jitter_max_us", "nan"))
                        print(f"| {rate:.0f} Hz | {mode} | {label} | {r + 1} | {n99:.0f} / {nmax:.0f} | "
                              f"{floor['p99_us']:.0f} / {floor['max_us']:.0f} | {n99 / floor['p99_us']:.2f} | "
                              f"{nmax / floor['max_us']:.2f} | {s_.get('overruns', '?')} | "
                              f"{'' if ups is None else f'{ups:.1f}'} |", flush=True)
        stop = True
        th.join()
        peer.destroy_node()
        rclpy.shutdown(context=ctx)
        return 0
    for rate in a.rates:
        yaml = os.path.join(tmp, f"bench_{int(rate)}.yaml")
        params(yaml, model, rate)
        with open(yaml, "a") as f:
            f.write(f"    log: {{dir: {tmp}/log_{int(rate)}, every: 1}}\n")
        for label, cmd in (("alone", None), ("with learner", learner_cmd)):
            results[(rate, label)] = run(domain, yaml, a.seconds, rt_args, cmd, peer, tmp)
    stop = True
    th.join()
    print(f"## control loop with and without the learner ({a.seconds:.0f} s each; "
          f"{'SCHED_FIFO 80, CPU 1, mlockall' if a.rt else 'default scheduling'}; logging every tick)\n")
    print("| rate | learner | ticks | jitter p50 (µs) | p99 (µs) | max (µs) | missed deadlines | RTT median (ms) | RTT p99 (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (rate, label), (s, rtt, _, _, _) in results.items():
        print(f"| {rate:.0f} Hz | {label} | {s.get('ticks', '?')} | {s.get('jitter_p50_us', '?')} | {s.get('jitter_p99_us', '?')} | "
              f"{float(s.get('jitter_max_us', 'nan')):.0f} | {s.get('overruns', '?')} | "
              f"{statistics.median(rtt) if rtt else float('nan'):.3f} | {q(rtt, .99) if rtt else float('nan'):.3f} |")
    if a.png_dir:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        for (rate, label), (_, rtt, _, _, _) in results.items():
            if rtt:
                ax.hist(rtt, bins=np.linspace(0, max(4.0, 3e3 / rate), 80), histtype="step", label=f"{rate:.0f} Hz, {label}")
        ax.set_xlabel("observation stamp -> action received by an rclpy peer (ms)")
        ax.set_ylabel("messages")
        ax.set_title("flowpilot_node observation-to-action latency over ROS 2")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(a.png_dir, "latency_histogram.png"), dpi=110)
        fig, ax = plt.subplots(figsize=(7, 4))
        for (rate, label), (_, _, p99s, _, _) in results.items():
            ax.plot(range(1, len(p99s) + 1), p99s, label=f"{rate:.0f} Hz, {label}")
        ax.set_xlabel("second of the run")
        ax.set_ylabel("wake-up jitter p99 in that second (µs)")
        ax.set_yscale("log")
        ax.set_title("control-loop jitter, alone and beside the SAC learner")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(a.png_dir, "jitter.png"), dpi=110)
        print(f"\nwrote {a.png_dir}/latency_histogram.png and {a.png_dir}/jitter.png")
    peer.destroy_node()
    rclpy.shutdown(context=ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
