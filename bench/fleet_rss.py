#!/usr/bin/env python3
"""The robot node's memory with a long transition log (docs/fleet.md,
"Bounded memory and time"): peak RSS of the real flowpilot_node process
(/proc/<pid>/status VmHWM) when it configures with an hour of 100 Hz log
(360 000 records, written by the node's own log writer through the
`synth_log` example) already in its log directory, and after a fleet
learner (`flowpilot_fleet`, empty shard directory) answers and the link
seeks to position 0 and streams for a while.

Before the log index, the node decoded the whole newest file into memory
at configure (`stream_base`) and again at every seek of the fleet link.

    python3 bench/fleet_rss.py                               # this build
    python3 bench/fleet_rss.py --node /tmp/flowpilot_node_prefleet \\
        --fleet /tmp/flowpilot_fleet_prefleet --label before  # another build
    python3 bench/fleet_rss.py --no-index --label "legacy log"  # a log from before the index

Needs the embedded ROS (source .ros/env.sh) and a build with the ROS
feature. Prints one JSON line and one markdown table row per run.
"""
import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
REL = os.path.join(ROOT, "target", "release")
MODEL = os.path.join(ROOT, "models", "reacher_flow.safetensors")


def params(d, log_dir):
    y = os.path.join(d, "robot.yaml")
    with open(y, "w") as f:
        f.write(f"""
/**:
  ros__parameters:
    model: {MODEL}
    rate_hz: 100.0
    observations: [arm, task]
    sources:
      arm: {{type: float64_multi_array, topic: /rss/arm, size: 4, max_age: 0.25}}
      task: {{type: float64_multi_array, topic: /rss/task, size: 4, max_age: 0.25}}
    safe_behaviour: zero
    action: {{type: float64_multi_array, topic: /rss/cmd, interface: effort}}
    log: {{dir: {log_dir}, flush_period: 0.05}}
    fleet: {{robot_id: rss, policy: none}}
""")
    return y


def status(pid):
    """VmHWM and VmRSS of a process, in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS"):
                out[k] = int(v.split()[0]) / 1024
    return out


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def synth(records):
    """A directory holding `records` records of log, made once and reused."""
    cache = os.path.join(tempfile.gettempdir(), f"fleet_rss_log_{records}")
    if not os.path.isdir(cache):
        exe = os.path.join(REL, "examples", "synth_log")
        if not os.path.exists(exe):
            subprocess.run(["cargo", "build", "--release", "-p", "flowpilot-core", "--example", "synth_log"],
                           check=True, cwd=ROOT)
        tmp = cache + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([exe, tmp, str(records), "100"], check=True)
        os.rename(tmp, cache)
    return cache


def wait_for(path, text, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if os.path.exists(path) and text in open(path, errors="replace").read():
            return time.monotonic() - t0
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for '{text}' in {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--node", default=os.path.join(REL, "flowpilot_node"))
    ap.add_argument("--fleet", default=os.path.join(REL, "flowpilot_fleet"))
    ap.add_argument("--label", default="this build")
    ap.add_argument("--records", type=int, default=360_000, help="records of log (360 000: 1 h at 100 Hz)")
    ap.add_argument("--stream-seconds", type=float, default=15.0,
                    help="how long the link streams to the learner before the second reading")
    ap.add_argument("--no-index", action="store_true", help="delete the log's index (a log from before it)")
    ap.add_argument("--domain", type=int, default=150 + os.getpid() % 50)
    a = ap.parse_args()

    src = synth(a.records)
    d = tempfile.mkdtemp(prefix="fleet_rss")
    log_dir = os.path.join(d, "log")
    shutil.copytree(src, log_dir)
    if a.no_index:
        for f in os.listdir(log_dir):
            if f.endswith(".idx"):
                os.remove(os.path.join(log_dir, f))
    size = sum(os.path.getsize(os.path.join(log_dir, f)) for f in os.listdir(log_dir) if f.endswith(".mcap"))
    env = dict(os.environ, ROS_DOMAIN_ID=str(a.domain), RUST_LOG="info")
    node_log, fleet_log = os.path.join(d, "node.log"), os.path.join(d, "fleet.log")
    node = fleet = None
    row = {"label": a.label, "records": a.records, "log_mb": round(size / 1e6, 1), "index": not a.no_index,
           "cpu": cpu_name(), "node": a.node}
    try:
        t0 = time.monotonic()
        node = subprocess.Popen([a.node, "--ros-args", "--params-file", params(d, log_dir)], env=env,
                                stdout=open(node_log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)
        row["configure_s"] = round(wait_for(node_log, "fleet link started", 300), 2)
        time.sleep(3.0)
        row["after_configure"] = status(node.pid)
        fleet = subprocess.Popen([a.fleet, "--shards", os.path.join(d, "shards"), "--out", os.path.join(d, "ckpt"),
                                  "--report-period", "1"], env=env, stdout=open(fleet_log, "w"),
                                 stderr=subprocess.STDOUT, cwd=ROOT)
        time.sleep(a.stream_seconds)
        row["after_streaming"] = status(node.pid)
        node.send_signal(signal.SIGINT)
        node.wait(timeout=30)
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(timeout=30)
        # the learner's last report: records it holds
        plain = re.sub(r"\x1b\[[0-9;]*m", "", open(fleet_log, errors="replace").read())
        nexts = re.findall(r"fleet shards .*?next=(\d+)", plain)
        row["learner_next"] = int(nexts[-1]) if nexts else 0
    finally:
        for p in (node, fleet):
            if p is not None and p.poll() is None:
                p.kill()
    if not os.environ.get("FLEET_RSS_KEEP"):
        shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(row))
    print(f"| {a.label} | {a.records} | {row['log_mb']} MB{'' if row['index'] else ', no index'} "
          f"| {row['configure_s']} s | {row['after_configure']['VmHWM']:.0f} MB "
          f"| {row['after_streaming']['VmHWM']:.0f} MB | {row['after_streaming']['VmRSS']:.0f} MB "
          f"| {row['learner_next']} |")
    print(f"(CPU: {row['cpu']})")


if __name__ == "__main__":
    sys.exit(main())
