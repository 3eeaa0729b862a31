#!/usr/bin/env python3
"""How many robots logging at 50 Hz one fleet learner link sustains on this
machine (docs/fleet.md). Each robot is a flowpilot_node in its own network
namespace (its loop ticks and logs every tick at --rate, with no sim: stale
observations still make records), all feeding one `flowpilot_fleet` in a
learner namespace over a bridge (DDS over UDP, real interfaces). For each
robot count it reports records/s logged and stored, the learner's lag at
the end of the window, wire bytes/s per robot, and the learner's CPU.

Needs root (network namespaces) and a build with the ROS feature:
    sudo python3 bench/fleet_bench.py --robots 1 2 4 8 --seconds 20
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

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
from flowpilot_py import netns  # noqa: E402

NODE = os.path.join(ROOT, "target", "release", "flowpilot_node")
FLEET = os.path.join(ROOT, "target", "release", "flowpilot_fleet")
MODEL = os.path.join(ROOT, "models", "reacher_flow.safetensors")


def params(d, robot, rate):
    y = os.path.join(d, f"{robot}.yaml")
    with open(y, "w") as f:
        f.write(f"""
/**:
  ros__parameters:
    model: {MODEL}
    rate_hz: {rate}
    observations: [arm, task]
    sources:
      arm: {{type: float64_multi_array, topic: /reacher/arm, size: 4, max_age: 0.25}}
      task: {{type: float64_multi_array, topic: /reacher/task, size: 4, max_age: 0.25}}
    safe_behaviour: zero
    action: {{type: float64_multi_array, topic: /reacher/cmd, interface: effort}}
    log: {{dir: {d}/{robot}/log, flush_period: 0.05}}
    fleet: {{robot_id: {robot}, policy: none}}
""")
    return y


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def run(n, seconds, rate, domain):
    d = tempfile.mkdtemp(prefix="fleetbench")
    net = netns.Net(f"b{n:02d}", 200 + n % 50)
    procs = []
    try:
        learner = net.host("l")
        llog = open(os.path.join(d, "learner.log"), "w")
        lp = learner.popen([FLEET, "--shards", f"{d}/shards", "--out", f"{d}/lckpt", "--report-period", "1"],
                           domain, llog)
        procs.append(lp)
        for i in range(n):
            h = net.host(f"r{i}")
            procs.append(h.popen([NODE, "--ros-args", "--params-file", params(d, f"r{i}", rate),
                                  "-r", f"__node:=fp_r{i}"], domain, open(os.path.join(d, f"r{i}.log"), "w")))
        time.sleep(5)  # discovery and start-up
        c0, t0 = cpu_seconds(lp.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_seconds(lp.pid), time.monotonic()
        for p in procs[1:]:
            p.send_signal(signal.SIGINT)
        for p in procs[1:]:
            p.wait(timeout=30)
        time.sleep(1.5)
        lp.send_signal(signal.SIGTERM)
        lp.wait(timeout=10)
        llog.close()
        text = re.sub(r"\x1b\[[0-9;]*m", "", open(os.path.join(d, "learner.log")).read())
        # the last report per robot before the stop, and one ~`seconds` earlier
        reports = re.findall(r"(\S+Z)\s+INFO.*fleet shards robot=(\S+) next=(\d+) .*bytes=(\d+)", text)
        last = {}
        for ts, r, nxt, b in reports:
            last[r] = (int(nxt), int(b))
        logged = stored = 0
        for i in range(n):
            log_text = re.sub(r"\x1b\[[0-9;]*m", "", open(os.path.join(d, f"r{i}.log")).read())
            tk = re.search(r"loop summary ticks=(\d+)", log_text)
            logged += int(tk.group(1)) if tk else 0
            stored += last.get(f"r{i}", (0, 0))[0]
        wall = t1 - t0
        bytes_total = sum(b for _, b in last.values())
        return {"robots": n, "logged": logged, "stored": stored,
                "lag_records": logged - stored,
                # wire bytes per record × the logging rate
                "bytes_per_robot_s": bytes_total / max(1, stored) * rate,
                "learner_cpu": (c1 - c0) / wall}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        net.close()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--robots", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--domain", type=int, default=91)
    a = ap.parse_args()
    why = netns.available()
    if why:
        sys.exit(f"fleet_bench: {why}")
    print(f"| robots | records logged | stored at the learner | not yet stored at stop | wire bytes/s per robot | learner link CPU |")
    print("|---|---|---|---|---|---|")
    for n in a.robots:
        r = run(n, a.seconds, a.rate, a.domain)
        print(f"| {r['robots']} | {r['logged']} | {r['stored']} | {r['lag_records']} | "
              f"{r['bytes_per_robot_s']:.0f} | {100 * r['learner_cpu']:.0f} % |", flush=True)


if __name__ == "__main__":
    main()
