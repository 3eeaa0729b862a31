"""The ROS 2 test kit: an rclpy peer spun on its own thread, a
flowpilot_node process, service calls, waiting, diagnostics, parameter
files, model files and a small real disk. Used by tests/ros (whose
conftest.py makes the `domain` and `peer` fixtures from it) and the
benches.
"""
import contextlib
import itertools
import json
import os
import signal
import subprocess
import threading
import time

import rclpy
import yaml
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from .contract import contract, policy_file, qos  # noqa: F401 (re-exported)
from .paths import CLI, FLEET, LOGS, MODEL, MODELS, NODE, PARAMS, ROOT  # noqa: F401 (re-exported)

# Fast DDS refuses a ROS_DOMAIN_ID above 232 on the default port base
# ("Calculated port number is too high"); a full run takes more than 100
# ids, so they wrap within [FIRST_DOMAIN, 232].
FIRST_DOMAIN, LAST_DOMAIN = 20, 232


def _domains(start):
    """A distinct ROS_DOMAIN_ID per test, from a per-process start (so two
    pytest processes seldom share one), wrapping within the valid range."""
    span = LAST_DOMAIN - FIRST_DOMAIN + 1
    for k in itertools.count(start):
        yield FIRST_DOMAIN + k % span


domains = _domains((os.getpid() % 50) * 3)

CONTRACT = contract()
DECISION = CONTRACT["decision"]
STOP = CONTRACT["stop"]
FILES = CONTRACT["files"]
META = CONTRACT["log_meta"]

# A test peer's own choices (tests vary the peer's QoS on purpose; the
# node's side is the contract's).
BEST_EFFORT = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
LATCHED = qos("fleet_policy")


def offline_action(obs, seed, tick, model=MODEL):
    """The offline sampler's action for the same model, seed and tick."""
    out = subprocess.run(
        [CLI, "sample", model, "--obs", ",".join(repr(float(v)) for v in obs), "--seed", str(seed), "--tick",
         str(tick), "--json"], check=True, capture_output=True, text=True)
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
        if not self.log.closed:  # still running, or stopped: the file stays
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


def result(fut, what, timeout=5):
    """The result of an rclpy future, waited for."""
    wait_for(fut.done, timeout, what)
    return fut.result()


def call(peer, srv_type, name, req, timeout=10.0):
    """Call service `name` from `peer` and return its response."""
    cli = peer.node.create_client(srv_type, name)
    assert cli.wait_for_service(timeout_sec=timeout), f"{name} not offered"
    return result(cli.call_async(req), f"{name} reply", timeout)


def cli(*args):
    """Run `flowpilot ARGS`; its stdout."""
    return subprocess.run([CLI, *map(str, args)], check=True, capture_output=True, text=True).stdout


def new_model(path, version, seed, obs=2, act=2):
    """A small random flow (2 blocks of 16) made by `flowpilot new`; returns `path`."""
    cli("new", path, "--obs", obs, "--act", act, "--blocks", 2, "--hidden", 16, "--random", "--seed", seed,
        "--version", version)
    return path


def write_params(path, params, node="flowpilot"):
    """A params file for `node` (under `<node>: ros__parameters:`) from a
    dict of nested parameters; returns `path`."""
    path.write_text(yaml.safe_dump({node: {"ros__parameters": params}}, default_flow_style=None))
    return path


@contextlib.contextmanager
def small_tmpfs(tmp_path, size, require=False):
    """A real tmpfs of `size` (e.g. "2m") at tmp_path/small: a disk that
    fills up with ENOSPC. Where mounting is not allowed: skips, or fails
    when `require` (CI sets FLOWPILOT_REQUIRE_NETNS=1: it runs as root)."""
    import pytest
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        why = f"cannot mount a tmpfs here: {r.stderr.strip()}"
        if require or os.environ.get("FLOWPILOT_REQUIRE_NETNS") == "1":
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def fill(d):
    """Fill the file system under `d` (ENOSPC); returns the filler file."""
    filler = d / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler
