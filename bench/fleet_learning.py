#!/usr/bin/env python3
"""Learning with two robots against one, on one fleet learner (docs/fleet.md):
N reach robots (flowpilot_node + sim/reach_sim.py, 20 Hz), each in its own
network namespace, stream to `flowpilot finetune --from-graph` in a learner
namespace for --seconds of wall time. Reports records per minute at the
learner, updates made, and the mean episode return (all robots) in windows
of wall time, from the robots' own logs.

    sudo python3 bench/fleet_learning.py --robots 1 2 --seconds 120
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
from flowpilot_py import netns  # noqa: E402
from flowpilot_py.logs import read_log  # noqa: E402

NODE = os.path.join(ROOT, "target", "release", "flowpilot_node")
CLI = os.path.join(ROOT, "target", "release", "flowpilot")
MODEL = os.path.join(ROOT, "models", "reach_flow.safetensors")
SIM = os.path.join(ROOT, "sim", "reach_sim.py")


def params(d, robot):
    y = os.path.join(d, f"{robot}.yaml")
    with open(y, "w") as f:
        f.write(f"""
/**:
  ros__parameters:
    model: {MODEL}
    rate_hz: 20.0
    safe_behaviour: zero
    warmup_ticks: 3
    startup_hold: 0.3
    observations: [state]
    sources:
      state: {{type: float64_multi_array, topic: /{robot}/reach/state, size: 2, max_age: 0.25}}
    action: {{type: float64_multi_array, topic: /{robot}/reach/cmd, interface: velocity}}
    log: {{dir: {d}/{robot}/log, flush_period: 0.05, reward_topic: /{robot}/reward, episode_topic: /{robot}/episode}}
    hot_swap: {{dir: {d}/{robot}/ckpt, poll_period: 0.2, trusted_keys: [{d}/learner.key.pub]}}
    fleet: {{robot_id: {robot}, policy: shared}}
""")
    return y


def run(n, seconds, window, domain, learner_args):
    d = tempfile.mkdtemp(prefix="fleetlearn")
    net = netns.Net(f"L{n}", 150 + n % 50)
    procs = []
    try:
        lh = net.host("l")
        # the robots take only versions signed by the learner's key (docs/security.md)
        subprocess.run([CLI, "keygen", "--out", f"{d}/learner.key"], check=True, capture_output=True)
        lp = lh.popen([CLI, "finetune", "--from-graph", f"{d}/shards", "--out", f"{d}/lckpt", "--init", MODEL,
                       "--signing-key", f"{d}/learner.key", *learner_args], domain, open(f"{d}/learner.log", "w"),
                      cwd=ROOT)
        procs.append(lp)
        nodes = []
        for i in range(n):
            h = net.host(f"r{i}")
            nodes.append(h.popen([NODE, "--ros-args", "--params-file", params(d, f"r{i}"), "-r", f"__node:=fp_r{i}"],
                                 domain, open(f"{d}/r{i}.log", "w"), cwd=ROOT))
            procs.append(nodes[-1])
            procs.append(h.popen([sys.executable, SIM, "--episodes", "100000", "--rate", "20", "--seed", str(i),
                                  "--ns", f"/r{i}"],
                                 domain, open(f"{d}/sim{i}.log", "w"), cwd=ROOT))
        t0 = time.time()
        time.sleep(seconds)
        for p in procs[1:]:
            p.send_signal(signal.SIGINT)
        for p in nodes:
            p.wait(timeout=30)
        time.sleep(1)
        lp.send_signal(signal.SIGTERM)
        lp.wait(timeout=30)
        text = re.sub(r"\x1b\[[0-9;]*m", "", open(f"{d}/learner.log").read())
        ups = [int(u) for u in re.findall(r"updates=(\d+)", text)]
        stored = sum(len(read_log(f"{d}/shards/r{i}")["tick"]) for i in range(n))
        bins, per_robot = {}, {}
        for i in range(n):
            lg = read_log(f"{d}/r{i}/log")
            for e in np.unique(lg["episode"]):
                m = lg["episode"] == e
                if not lg["truncated"][m].any():
                    continue  # an episode cut by the stop
                r = lg["reward"][m]
                t_end = lg["wall_ns"][m][-1] / 1e9 - t0
                bins.setdefault(int(t_end // window), []).append(float(np.nansum(r)))
                per_robot.setdefault((i, int(t_end // window)), []).append(float(np.nansum(r)))
        return {"robots": n, "records_per_min": stored / seconds * 60, "updates": max(ups, default=0),
                "bins": {k: (np.mean(v), len(v)) for k, v in sorted(bins.items())},
                "per_robot": {k: float(np.mean(v)) for k, v in sorted(per_robot.items())}}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        net.close()
        if os.environ.get("FLEET_KEEP") != "1":
            shutil.rmtree(d, ignore_errors=True)
        else:
            print("kept", d)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--robots", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--domain", type=int, default=93)
    a = ap.parse_args()
    why = netns.available()
    if why:
        sys.exit(f"fleet_learning: {why}")
    learner_args = ["--min-transitions", "200", "--critic-warmup", "200", "--checkpoint-every", "200",
                    "--utd", "1.0", "--critic-hidden", "256", "--threads", "1"]
    print("learner:", " ".join(learner_args))
    for n in a.robots:
        r = run(n, a.seconds, a.window, a.domain, learner_args)
        cells = ", ".join(f"{int(k * a.window)}-{int((k + 1) * a.window)} s: {m:.1f} ({c} ep)"
                          for k, (m, c) in r["bins"].items())
        print(f"robots {n}: {r['records_per_min']:.0f} records/min at the learner, {r['updates']} updates; "
              f"mean return by wall time: {cells}", flush=True)
        for i in range(n):
            row = ", ".join(f"{int(k * a.window)}-{int((k + 1) * a.window)} s: {m:.1f}"
                            for (j, k), m in r["per_robot"].items() if j == i)
            print(f"    robot r{i} (sim seed {i}): {row}", flush=True)


if __name__ == "__main__":
    main()
