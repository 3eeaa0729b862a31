"""Shared fixtures for the ROS 2 integration tests: a real flowpilot_node
process and a real rclpy peer on a ROS_DOMAIN_ID of each test's own."""
import itertools
import json
import os
import signal
import subprocess
import threading
import time

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy, HistoryPolicy

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NODE = os.path.join(ROOT, "target", "release", "flowpilot_node")
CLI = os.path.join(ROOT, "target", "release", "flowpilot")
MODEL = os.path.join(ROOT, "models", "pointmass_flow.safetensors")
PARAMS = os.path.join(ROOT, "config", "pointmass.yaml")

# Distinct domain per test (and per pytest worker process).
_domains = itertools.count(20 + (os.getpid() % 50) * 3)

# The cross-process contract (crates/core/src/contract.rs): decision and
# stop codes, log metadata keys, checkpoint file names, QoS by role. Tests
# read codes and names from here, never spell them.
CONTRACT = json.loads(subprocess.run([CLI, "contract", "--json"], check=True, capture_output=True,
                                     text=True).stdout)
DECISION = CONTRACT["decision"]
STOP = CONTRACT["stop"]
FILES = CONTRACT["files"]


def qos(role):
    """The QoS of a contract role (e.g. "fleet_policy") as an rclpy profile."""
    q = CONTRACT["qos"][role]
    return QoSProfile(depth=q["depth"], history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE if q["reliable"] else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if q["transient_local"] else DurabilityPolicy.VOLATILE)


def policy_file(version):
    """A checkpoint directory's file name for `version`."""
    return f"{FILES['policy_prefix']}{version:0{FILES['policy_digits']}d}.{FILES['policy_ext']}"


# A test peer's own choices (tests vary the peer's QoS on purpose; the
# node's side is the contract's).
BEST_EFFORT = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
LATCHED = qos("fleet_policy")


def offline_action(obs, seed, tick):
    """The offline sampler's action for the same model, seed and tick."""
    out = subprocess.run(
        [CLI, "sample", MODEL, "--obs", ",".join(repr(float(v)) for v in obs), "--seed", str(seed), "--tick", str(tick), "--json"],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["action"]


class Peer:
    """An rclpy node spun on a background thread."""

    def __init__(self, domain):
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node("peer", context=self.ctx)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self.lock = threading.Lock()
        self._stop = False
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while not self._stop and self.ctx.ok():
            self.ex.spin_once(timeout_sec=0.01)

    def collect(self, msg_type, topic, qos):
        """Subscribe; returns a list that fills with (receive time, msg)."""
        box = []

        def cb(m):
            with self.lock:
                box.append((time.monotonic(), m))
        self.node.create_subscription(msg_type, topic, cb, qos)
        return box

    def close(self):
        self._stop = True
        self.thread.join(timeout=2)
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


class NodeProc:
    def __init__(self, domain, extra_args=(), params=PARAMS, env=None):
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain), RUST_LOG="info", **(env or {}))
        # The bundled config's relative model path is resolved for it; other
        # params files name their own model.
        model = ["-p", f"model:={MODEL}"] if params == PARAMS else []
        args = [NODE, "--ros-args", "--params-file", params, *model, *extra_args]
        self.log_path = os.path.join(os.environ.get("FLOWPILOT_TEST_LOGS", "/tmp"), f"flowpilot_node_{domain}.log")
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    def alive(self):
        return self.p.poll() is None

    def output(self):
        """What the node has printed so far."""
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.alive():
            self.p.send_signal(sig)
        rc = self.p.wait(timeout=timeout)
        if not self.log.closed:
            self.log.close()
        return rc


@pytest.fixture
def domain():
    return next(_domains)


@pytest.fixture
def peer(domain):
    p = Peer(domain)
    yield p
    p.close()


def diag(diags):
    """The key/values of the newest /diagnostics message a peer collected."""
    return {v.key: v.value for v in diags[-1][1].status[0].values}


def wait_for(pred, timeout, what):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
