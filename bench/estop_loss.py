#!/usr/bin/env python3
"""One-shot e-stop delivery under random packet loss (docs/safety.md,
"E-stop delivery under packet loss").

Two hosts on a bridge, in Linux network namespaces (tests/ros/netns.py):
flowpilot_node on one, an rclpy peer on the other, DDS over UDP on real
interfaces (FASTDDS_BUILTIN_TRANSPORTS=UDPv4 and
ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET: no shared memory, which would bypass
the lossy path). nf_tables drops `--loss` % of the UDP packets arriving at
each host, so data, heartbeats and acknowledgements are lost both ways.

For each publisher QoS (reliable volatile: `ros2 topic pub --once` and most
teleop nodes; reliable transient-local depth 1: a latched publisher;
best-effort) one long-lived publisher is created and discovered with the
loss off, then each trial:

  1. loss on; publish ONE `true` (publish time: wall clock);
  2. wait until the node logs `e-stop engaged (topic)` (its own wall-clock
     timestamp, written to a local file: the observation itself crosses no
     lossy link) or the deadline passes (a miss);
  3. loss off (release is not what is measured; with loss on it costs a
     few heartbeat periods a trial), then release for the next trial:
     publish `false` on the same publisher (after a miss, wait until the
     reliable readers acknowledged it, and the `true` before it) and call
     ~/reset_estop (refused while the topic still says true) until it
     succeeds; its answer says whether a missed `true` engaged late or never.

Prints per QoS engaged-within-the-deadline/total, later, never, engage
latency p50/p99/max, and the nft counters (UDP packets that arrived while
loss was on, and how many were dropped).

Needs root, iproute2, nftables and a build with the ROS feature:
    cargo build --release --features flowpilot/ros --bin flowpilot_node
    source .ros/env.sh && python3 bench/estop_loss.py --trials 200
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
from flowpilot_py import netns  # noqa: E402

NODE = os.path.join(ROOT, "target", "release", "flowpilot_node")
MODEL = os.path.join(ROOT, "models", "pointmass_flow.safetensors")
QOS_NAMES = ("reliable_volatile", "reliable_transient_local", "best_effort")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def params(d):
    """The point-mass policy with a twist output (no model-side change)."""
    y = os.path.join(d, "estop_loss.yaml")
    with open(y, "w") as f:
        f.write(f"""
/**:
  ros__parameters:
    model: {MODEL}
    rate_hz: 50.0
    safe_behaviour: zero
    warmup_ticks: 5
    startup_hold: 0.5
    observations: [state]
    goals: []
    sources:
      state: {{type: float64_multi_array, topic: /pointmass/state, indices: [0, 1], max_age: 0.1, qos: best_effort}}
    action: {{type: twist, topic: /cmd_vel}}
""")
    return y


def writer_profile(d, heartbeat_ms):
    """A Fast DDS XML profile for the peer's process: every data writer
    sends a heartbeat every `heartbeat_ms` (Fast DDS's default: 3 s) while
    a sample is unacknowledged. Only the publisher's side can set this."""
    x = os.path.join(d, f"writer_hb_{heartbeat_ms}ms.xml")
    ns = int(heartbeat_ms * 1e6)
    with open(x, "w") as f:
        f.write(f"""<?xml version="1.0" encoding="UTF-8"?>
<profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">
  <data_writer profile_name="estop_loss_writer" is_default_profile="true">
    <times>
      <heartbeatPeriod><sec>{ns // 10**9}</sec><nanosec>{ns % 10**9}</nanosec></heartbeatPeriod>
    </times>
  </data_writer>
</profiles>
""")
    return x


def log_events(path, offset):
    """(new offset, [(wall time, 'engaged' | 'released')]) from the node's
    log after `offset`: its own timestamped lines (tracing, UTC)."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    out = []
    for line in data[:end].decode(errors="replace").splitlines():
        line = ANSI.sub("", line)
        if "e-stop engaged (topic)" in line:
            kind = "engaged"
        elif "e-stop released" in line:
            kind = "released"
        else:
            continue
        stamp = line.split()[0]
        t = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        out.append((t, kind))
    return offset + end, out


def percentile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * len(xs) + 0.5)) - 1))]


# ---------------------------------------------------------------- the peer
def worker(a):
    """The peer host's side (runs inside its namespace): publishers, trials."""
    import rclpy
    from rclpy.duration import Duration
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool
    from std_srvs.srv import Trigger

    qos = {
        "reliable_volatile": QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                                        durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST),
        "reliable_transient_local": QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                               durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                               history=HistoryPolicy.KEEP_LAST),
        "best_effort": QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT,
                                  durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST),
    }

    class NS:  # what netns's loss helpers need of a host
        def __init__(self, ns):
            self.ns = ns
    hosts = [NS(ns) for ns in a.loss_ns]

    def loss(on):
        for h in hosts:
            netns.set_loss(h, on)

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=a.domain)
    node = rclpy.create_node("estop_loss_peer", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    stop = False

    def spin():
        while not stop and ctx.ok():
            ex.spin_once(timeout_sec=0.01)
    th = threading.Thread(target=spin, daemon=True)
    th.start()

    def wait(pred, timeout):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if pred():
                return True
            time.sleep(0.002)
        return pred()

    reset = node.create_client(Trigger, "/flowpilot/reset_estop")
    if not reset.wait_for_service(timeout_sec=30):
        raise SystemExit("~/reset_estop not found")
    offset, _ = log_events(a.log, 0)
    results = {}
    for name in a.qos:
        pub = node.create_publisher(Bool, "/flowpilot/estop", qos[name])
        # Discovery, loss off: the node's readers matched (and it ours).
        if not wait(lambda: pub.get_subscription_count() >= 1, 30):
            raise SystemExit(f"{name}: the node's reader never matched")
        time.sleep(2.0)
        matched = pub.get_subscription_count()
        deadline = a.deadline_best_effort if name == "best_effort" else a.deadline
        lat, late, never, release_s = [], [], 0, []
        for i in range(a.trials):
            loss(True)
            time.sleep(0.02)
            t_pub = time.time()
            pub.publish(Bool(data=True))
            engaged = None
            t_end = time.monotonic() + deadline
            while engaged is None and time.monotonic() < t_end:
                offset, ev = log_events(a.log, offset)
                engaged = next((t for t, k in ev if k == "engaged"), None)
                if engaged is None:
                    time.sleep(0.002)
            loss(a.lossy_release)
            # Release for the next trial. After a miss, a reliable `true`
            # may still be on its way: have this writer's `true` and `false`
            # acknowledged by every reliable reader first, so that no late
            # `true` engages in the next trial (a best-effort sample that
            # missed is gone for good). The reset's answer then says whether
            # the `true` engaged after the deadline (a late one) or never.
            t0 = time.monotonic()
            pub.publish(Bool(data=False))
            if engaged is None and name != "best_effort" and not pub.wait_for_all_acked(Duration(seconds=60)):
                raise SystemExit(f"{name} trial {i}: the `false` was not acknowledged in 60 s")
            while True:
                if time.monotonic() - t0 > 120:
                    raise SystemExit(f"{name} trial {i}: could not release the e-stop in 120 s")
                fut = reset.call_async(Trigger.Request())
                wait(fut.done, 30)
                if fut.done() and fut.result().success:
                    had_engaged = fut.result().message == "e-stop released"
                    break
                time.sleep(0.05)
                pub.publish(Bool(data=False))
            offset, ev = log_events(a.log, offset)
            release_s.append(time.monotonic() - t0)
            if engaged is not None:
                lat.append(engaged - t_pub)
                mark = f"{(engaged - t_pub) * 1e3:8.1f} ms"
            elif had_engaged:
                t_late = next((t for t, k in ev if k == "engaged"), float("nan"))
                late.append(t_late - t_pub)
                mark = f"missed the deadline, engaged after {t_late - t_pub:.1f} s (loss off by then)"
            else:
                never += 1
                mark = "never engaged"
            print(f"{name} {i + 1}/{a.trials}: {mark}", file=sys.stderr, flush=True)
        node.destroy_publisher(pub)
        results[name] = {"trials": a.trials, "delivered": len(lat), "late": len(late), "never": never,
                         "latency_s": lat, "late_latency_s": late, "deadline_s": deadline,
                         "matched_readers": matched, "release_s_mean": sum(release_s) / len(release_s)}
    loss(False)
    stop = True
    th.join(timeout=2)
    node.destroy_node()
    rclpy.shutdown(context=ctx)
    print("RESULT " + json.dumps(results), flush=True)


# ---------------------------------------------------------------- the host
class Harness:
    """Node host and peer host on a bridge, each with random UDP loss
    (installed switched off), and flowpilot_node running on the node host."""

    def __init__(self, loss=30, domain=None, tag=None, node=NODE, logs=None, node_xml=None):
        tag = tag or f"e{os.getpid() % 100:02d}"
        self.domain = domain if domain is not None else 150 + os.getpid() % 50
        self.loss = loss
        self.dir = tempfile.mkdtemp(prefix="estoploss")
        self.logs = logs or self.dir
        self.net = netns.Net(tag, 150 + os.getpid() % 50)
        self.proc = None
        try:
            self.node_host = self.net.host("n")
            self.peer_host = self.net.host("p")
            for h in (self.node_host, self.peer_host):
                netns.add_loss(h, loss)
            self.node_log = os.path.join(self.logs, f"estop_loss_node_{self.domain}.log")
            self.log_f = open(self.node_log, "w")
            args = [node, "--ros-args", "--params-file", params(self.dir)]
            xml = {"FASTRTPS_DEFAULT_PROFILES_FILE": os.path.abspath(node_xml)} if node_xml else {}
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.node_host.ns, *args],
                                         env=self.node_host.env(self.domain, NO_COLOR="1", **xml),
                                         stdout=self.log_f, stderr=subprocess.STDOUT, cwd=ROOT)
            t0 = time.monotonic()
            while "policy loaded" not in open(self.node_log).read():
                if self.proc.poll() is not None or time.monotonic() - t0 > 30:
                    raise RuntimeError("flowpilot_node did not start:\n" + open(self.node_log).read())
                time.sleep(0.05)
        except BaseException:
            self.close()
            raise

    def counters(self):
        """{host: (UDP packets arrived while loss was on, dropped)}."""
        return {h.name: netns.loss_counters(h) for h in (self.node_host, self.peer_host)}

    def run(self, qos_names, trials, deadline=10.0, deadline_best_effort=2.0, lossy_release=False,
            publisher_heartbeat_ms=None, timeout=None, echo=False):
        """Trials from the peer host (see the module's doc); the nft
        counters of this run. `publisher_heartbeat_ms`: the peer's writers
        heartbeat at this period (default: Fast DDS's 3 s)."""
        before = self.counters()
        cmd = ["ip", "netns", "exec", self.peer_host.ns, sys.executable, os.path.abspath(__file__), "--worker",
               "--domain", str(self.domain), "--log", self.node_log, "--trials", str(trials),
               "--deadline", str(deadline), "--deadline-best-effort", str(deadline_best_effort),
               "--loss-ns", self.node_host.ns, self.peer_host.ns, "--qos", *qos_names]
        if lossy_release:
            cmd.append("--lossy-release")
        env = self.peer_host.env(self.domain)
        if publisher_heartbeat_ms:
            env["FASTRTPS_DEFAULT_PROFILES_FILE"] = writer_profile(self.dir, publisher_heartbeat_ms)
        err = None if echo else subprocess.PIPE
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err,
                           text=True, timeout=timeout)
        line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT ")), None)
        if r.returncode != 0 or line is None:
            raise RuntimeError(f"worker failed ({r.returncode}):\n{r.stdout}\n{r.stderr or ''}\n"
                               f"node log:\n{open(self.node_log).read()[-3000:]}")
        res = json.loads(line[len("RESULT "):])
        after = self.counters()
        seen = sum(after[h][0] - before[h][0] for h in after)
        dropped = sum(after[h][1] - before[h][1] for h in after)
        return res, {"seen": seen, "dropped": dropped, "per_host": after}

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.net.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def summary(res):
    """One table row per QoS: engaged within the deadline (with the engage
    latency of those), engaged only after it, never engaged."""
    rows = []
    for name, r in res.items():
        ms = [x * 1e3 for x in r["latency_s"]]
        rows.append(f"| {name} | {r['matched_readers']} | {r['delivered']}/{r['trials']} | {r['late']} | {r['never']} | "
                    f"{percentile(ms, 50):.1f} | {percentile(ms, 99):.1f} | {max(ms) if ms else float('nan'):.1f} |")
    return "\n".join(["| publisher QoS | node readers matched | engaged in deadline | later | never | "
                      "p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|---|---|", *rows])


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=200, help="one-shot trials per publisher QoS")
    p.add_argument("--loss", type=int, default=30, help="percent of UDP packets dropped at each host")
    p.add_argument("--qos", nargs="+", default=list(QOS_NAMES), choices=QOS_NAMES)
    p.add_argument("--deadline", type=float, default=10.0, help="seconds before a reliable trial is a miss")
    p.add_argument("--deadline-best-effort", type=float, default=2.0,
                   help="seconds before a best-effort trial is a miss (nothing is retransmitted: a sample "
                        "arrives within milliseconds or never)")
    p.add_argument("--lossy-release", action="store_true", help="keep the loss on while releasing too")
    p.add_argument("--publisher-heartbeat-ms", type=float,
                   help="the peer's writers heartbeat at this period (a Fast DDS XML profile on the publisher's "
                        "side); default: Fast DDS's 3 s")
    p.add_argument("--node-xml", help="a Fast DDS XML profile file for the node (FASTRTPS_DEFAULT_PROFILES_FILE)")
    p.add_argument("--node", default=NODE, help="flowpilot_node binary")
    p.add_argument("--json", help="write the results here")
    # the peer side (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--domain", type=int, help=argparse.SUPPRESS)
    p.add_argument("--log", help=argparse.SUPPRESS)
    p.add_argument("--loss-ns", nargs="+", default=[], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    why = netns.nft_available()
    if why:
        raise SystemExit(f"cannot run: {why}")
    t0 = time.monotonic()
    with Harness(loss=a.loss, node=a.node, node_xml=a.node_xml) as h:
        res, c = h.run(a.qos, a.trials, a.deadline, a.deadline_best_effort, a.lossy_release,
                       publisher_heartbeat_ms=a.publisher_heartbeat_ms, echo=True)
    print(f"\n{a.loss} % UDP loss each way, {a.trials} one-shot trials per QoS, deadline {a.deadline:g} s "
          f"({a.deadline_best_effort:g} s best-effort), release {'under loss' if a.lossy_release else 'loss off'}, "
          f"publisher heartbeat {f'{a.publisher_heartbeat_ms:g} ms' if a.publisher_heartbeat_ms else '3 s (default)'}"
          f"{', node XML ' + a.node_xml if a.node_xml else ''}; "
          f"{time.monotonic() - t0:.0f} s; {cpu_model()}, {os.cpu_count()} CPUs\n")
    print(summary(res))
    print(f"\nnft while loss was on: {c['dropped']} of {c['seen']} UDP packets dropped "
          f"({100 * c['dropped'] / max(1, c['seen']):.1f} %); per host (arrived, dropped), cumulative: {c['per_host']}")
    for name, r in res.items():
        late = ", ".join(f"{x:.1f}" for x in r["late_latency_s"])
        print(f"{name}: mean release time {r['release_s_mean']:.2f} s" + (f"; engaged late after (s): {late}" if late else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": res, "nft": c, "cpu": cpu_model(), "args": vars(a)}, f, indent=1)


if __name__ == "__main__":
    main()
