#!/usr/bin/env python3
"""flowpilot_node benchmarks on a real ROS 2 graph (rclpy peer, Fast DDS).

  source .ros/env.sh
  python3 bench/node_bench.py [--seconds 60] [--rate 1000] [--repeat 5]

Measures, with the reference K=4, C=256 model (obs 39, act 8):
  1. cold start: process start -> first action received (repeat N times);
  2. the control loop at --rate for --seconds: wake-up jitter p50/p99/max
     and missed deadlines (the node's own full-run summary);
  3. round trip rclpy -> node -> rclpy, against a minimal r2r echo node
     (crates/ros/examples/r2r_echo.rs) in the same run.
Prints a Markdown table; numbers are min/median/p99 over the samples.
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
REL = os.path.join(ROOT, "target", "release")
BE = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
RL = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
JOINTS = [f"j{i}" for i in range(39)]


def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]


def params(path, model, rate):
    joints = ", ".join(JOINTS)
    open(path, "w").write(f"""flowpilot:
  ros__parameters:
    model: {model}
    rate_hz: {rate}
    safe_behaviour: zero
    warmup_ticks: 10
    startup_hold: 0.0
    observations: [joints]
    sources:
      joints:
        type: joint_state
        topic: /bench/joint_states
        joints: [{joints}]
        max_age: 0.5
    action:
      type: float64_multi_array
      topic: /bench/cmd
      interface: velocity
""")


class Peer:
    def __init__(self, domain):
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node("bench_peer", context=self.ctx)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self.stop = False
        self.t = threading.Thread(target=self.spin, daemon=True)
        self.t.start()

    def spin(self):
        while not self.stop:
            self.ex.spin_once(timeout_sec=0.005)

    def close(self):
        self.stop = True
        self.t.join()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


RT_ARGS = []


def js_publisher(pub, sent, lock):
    """A timer callback publishing stamped JointStates, remembering when
    each stamp was sent (for round trips through the action trace)."""
    def publish_js():
        m = JointState(name=JOINTS, position=[0.01 * i for i in range(39)])
        now = time.time_ns()
        m.header.stamp.sec, m.header.stamp.nanosec = now // 10**9, now % 10**9
        with lock:
            sent[round(now * 1e-9, 6)] = time.monotonic()
        pub.publish(m)
    return publish_js


def run_node(domain, yaml, log):
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), RUST_LOG="info")
    return subprocess.Popen([os.path.join(REL, "flowpilot_node"), "--ros-args", "--params-file", yaml, *RT_ARGS],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rtt-samples", type=int, default=1000)
    ap.add_argument("--rt", action="store_true", help="SCHED_FIFO 80 on CPU 1 with mlockall for the control thread")
    a = ap.parse_args()
    if a.rt:
        RT_ARGS.extend(["-p", "rt.fifo_priority:=80", "-p", "rt.cpu:=1", "-p", "rt.mlockall:=true"])
    tmp = tempfile.mkdtemp()
    model = os.path.join(tmp, "k4.safetensors")
    subprocess.run([os.path.join(REL, "flowpilot"), "new", model, "--obs", "39", "--act", "8", "--hidden", "256",
                    "--blocks", "4", "--random"], check=True, capture_output=True)
    yaml = os.path.join(tmp, "bench.yaml")
    params(yaml, model, a.rate)
    domain = 90 + os.getpid() % 40
    peer = Peer(domain)
    js_pub = peer.node.create_publisher(JointState, "/bench/joint_states", BE)
    sent = {}
    lock = threading.Lock()

    publish_js = js_publisher(js_pub, sent, lock)
    peer.node.create_timer(0.01, publish_js)
    first = []
    peer.node.create_subscription(Float64MultiArray, "/bench/cmd", lambda m: first.append(time.monotonic()), RL)
    trace = []
    peer.node.create_subscription(Float64MultiArray, "/flowpilot/action_trace",
                                  lambda m: trace.append((time.monotonic(), list(m.data))), RL)
    time.sleep(1.0)

    # 1. cold start
    cold = []
    for _ in range(a.repeat):
        first.clear()
        log = open(os.path.join(tmp, "cold.log"), "w")
        t0 = time.monotonic()
        p = run_node(domain, yaml, log)
        while not first and time.monotonic() - t0 < 30:
            time.sleep(0.0005)
        cold.append((first[0] - t0) * 1e3)
        p.send_signal(signal.SIGTERM)
        p.wait()
        time.sleep(0.5)

    # 2 + 3. a long run at the target rate; round trip from JointState stamps in the trace
    log_path = os.path.join(tmp, "run.log")
    log = open(log_path, "w")
    trace.clear()
    p = run_node(domain, yaml, log)
    time.sleep(a.seconds)
    p.send_signal(signal.SIGTERM)
    p.wait()
    log.close()
    text = open(log_path).read()
    m = re.search(r"loop summary.*", text)
    summary = dict(re.findall(r"(\w+)=([\d.]+)", re.sub(r"\x1b\[[0-9;]*m", "", m.group(0)))) if m else {}
    seen = set()
    rtt = []
    with lock:
        sent_copy = dict(sent)
    for t_recv, d in trace:
        stamp = round(d[4], 6)
        if d[1] == 0 and stamp not in seen and stamp in sent_copy:
            seen.add(stamp)
            rtt.append((t_recv - sent_copy[stamp]) * 1e3)

    # echo baseline
    echo = subprocess.Popen([os.path.join(REL, "examples", "r2r_echo")], env=dict(os.environ, ROS_DOMAIN_ID=str(domain)))
    echo_pub = peer.node.create_publisher(Float64MultiArray, "/echo/in", BE)
    back = {}
    peer.node.create_subscription(Float64MultiArray, "/echo/out", lambda m: back.setdefault(int(m.data[0]), time.monotonic()), RL)
    time.sleep(1.5)
    out = {}
    for i in range(a.rtt_samples):
        out[i] = time.monotonic()
        echo_pub.publish(Float64MultiArray(data=[float(i)] + [0.0] * 38))
        time.sleep(0.01)
    time.sleep(0.5)
    echo.send_signal(signal.SIGTERM)
    echo.wait()
    echo_rtt = [(back[i] - out[i]) * 1e3 for i in out if i in back]
    peer.close()

    print(f"## flowpilot_node benchmarks (K=4, C=256, obs 39, act 8; {a.rate:.0f} Hz for {a.seconds:.0f} s; "
          f"{'SCHED_FIFO 80, CPU 1, mlockall' if a.rt else 'default scheduling'})\n")
    print("| measure | min | median | p99 | max | n |")
    print("|---|---|---|---|---|---|")
    print(f"| cold start: process start -> first action (ms) | {min(cold):.1f} | {statistics.median(cold):.1f} | {q(cold, .99):.1f} | {max(cold):.1f} | {len(cold)} |")
    if rtt:
        print(f"| round trip rclpy -> flowpilot_node -> rclpy (ms) | {min(rtt):.3f} | {statistics.median(rtt):.3f} | {q(rtt, .99):.3f} | {max(rtt):.3f} | {len(rtt)} |")
    if echo_rtt:
        print(f"| round trip rclpy -> r2r echo -> rclpy (ms) | {min(echo_rtt):.3f} | {statistics.median(echo_rtt):.3f} | {q(echo_rtt, .99):.3f} | {max(echo_rtt):.3f} | {len(echo_rtt)} |")
    print()
    print(f"loop summary (whole run): {summary}")
    print(f"expected extra for flowpilot: tick phase (uniform 0..{1e3 / a.rate:.2f} ms, mean {0.5e3 / a.rate:.2f} ms) + inference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
