"""Signed policies (docs/security.md, "Signed policies and keys"): a real
flowpilot_node with `fleet: {robot_id: r1, policy: shared}` and
`hot_swap.trusted_keys`, and a foreign rclpy peer that publishes model files
on /flowpilot/fleet/policy, the fleet's policy topic (latched, as the fleet
learner publishes). Every version is made by the real learner (`flowpilot
finetune --offline` from the robot's own policy on random data, with or
without `--signing-key`), or by `flowpilot new`. What is asserted is what the
robot ran: `policy_version` in /diagnostics, with the rejection named there.

- (a) an unsigned newer version: refused, the node keeps running version 1;
- (b) a version signed by a key the node does not trust: refused;
- (c) a genuine version (signed by the trusted learner key): runs;
- (d) the genuine version renumbered as a newer one (a replay; the digest is
  restamped, the signature kept): refused, the genuine one keeps running;
- (e) version u64::MAX: refused, and the next genuine version still runs;
- the same unsigned file written straight into hot_swap.dir: refused;
- a node whose fleet link takes policies and has no trusted keys does not
  start, naming the parameter.

Environment: FLOWPILOT_NODE_BIN picks the node binary (default: conftest's
NODE). FLOWPILOT_ATTACK_LEGACY=1 leaves `hot_swap.trusted_keys` out of the
parameters, for a node built before it existed (which would refuse the
unknown parameter): it shows what such a node does with each attack.
"""
import array
import hashlib
import json
import os
import struct
import subprocess
import time

import numpy as np
import pytest
import re
from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import Float64MultiArray, UInt8MultiArray

from flowpilot_py import testkit
from flowpilot_py.testkit import write_params as kit_write_params
from flowpilot_py.testkit import cli, new_model, BEST_EFFORT, LATCHED, RELIABLE, ROOT, NodeProc, diag, policy_file, wait_for

NODE_BIN = os.environ.get("FLOWPILOT_NODE_BIN") or testkit.NODE
LEGACY = os.environ.get("FLOWPILOT_ATTACK_LEGACY") == "1"
POLICY_TOPIC = "/flowpilot/fleet/policy"
U64_MAX = 2**64 - 1


class AttackedNode(NodeProc):
    """conftest's NodeProc on FLOWPILOT_NODE_BIN with a params file of ours."""

    def __init__(self, domain, params):
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain), RUST_LOG="info")
        self.log_path = os.path.join(os.environ.get("FLOWPILOT_TEST_LOGS", "/tmp"), f"flowpilot_node_{domain}.log")
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen([NODE_BIN, "--ros-args", "--params-file", str(params)], env=env,
                                  stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)


def keygen(path):
    """A key pair made by `flowpilot keygen`; returns the public key file."""
    cli("keygen", "--out", path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    return f"{path}.pub"


def learner_versions(tmp_path, name, base, n=1, key=None):
    """`flowpilot finetune --offline` from `base` on random data: versions
    2..n+1 in their own directory, signed with `key` if given."""
    data = tmp_path / "random.npz"
    if not data.exists():
        rng = np.random.default_rng(0)
        np.savez(data, obs=rng.normal(size=(400, 2)).astype(np.float32),
                 act=rng.uniform(-1, 1, size=(400, 2)).astype(np.float32),
                 reward=rng.normal(size=400).astype(np.float32))
    out = tmp_path / name
    args = ["finetune", "--offline", data, "--init", base, "--out", out, "--updates", 20 * n,
            "--checkpoint-every", 20, "--critic-warmup", 5, "--batch", 32, "--critic-hidden", 32,
            "--min-transitions", 10]
    if key:
        args += ["--signing-key", key]
    cli(*args)
    return {v: out / f"policy_v{v:06d}.safetensors" for v in range(2, n + 2)}


def renumber(src, dst, version):
    """What a replay attacker does: the same file as a newer version, its
    digest restamped (docs/model-format.md), its metadata (the signature
    included) kept."""
    raw = open(src, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    spec = header["__metadata__"]["flowpilot"]
    old = json.loads(spec)
    assert spec.count(f'"version":{old["version"]},') == 1
    spec = spec.replace(f'"version":{old["version"]},', f'"version":{version},')
    digest = f'"digest":"{old["digest"]}"'
    h = hashlib.sha256(spec.replace(digest, '"digest":""').encode())
    tags = {"F32": "f32", "F16": "f16", "BF16": "bf16", "I64": "i64"}
    for name in sorted(k for k in header if k != "__metadata__"):
        t = header[name]
        h.update(struct.pack("<Q", len(name.encode())) + name.encode())
        for d in t["shape"]:
            h.update(struct.pack("<Q", d))
        h.update(tags[t["dtype"]].encode())
        a, b = t["data_offsets"]
        h.update(data[a:b])
    header["__metadata__"]["flowpilot"] = spec.replace(digest, f'"digest":"sha256:{h.hexdigest()}"')
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    open(dst, "wb").write(struct.pack("<Q", len(hb)) + hb + data)
    return dst


def inspect_version(path):
    out = cli("inspect", path)
    return int(next(l for l in out.splitlines() if l.startswith("version")).split(":")[1].split()[0])


def write_params(tmp_path, base, trusted, fleet_policy="shared", swap=None):
    """The attacked robot's parameters: a point mass with a hot swap on
    `swap` (default tmp_path/swap) trusting `trusted`, and a fleet link
    taking `fleet_policy` (None: no fleet link)."""
    hot_swap = {"dir": str(swap or tmp_path / "swap"), "poll_period": 0.1}
    if trusted and not LEGACY:
        hot_swap["trusted_keys"] = list(trusted)
    p = {
        "model": str(base),
        "rate_hz": 50.0,
        "startup_hold": 0.0,
        "warmup_ticks": 2,
        "diagnostics_period": 0.2,
        # What is attacked is the policy, not the loop: a loaded CI machine
        # must not trip the watchdog (its own tests are test_faults.py).
        "watchdog.stall_periods": 500,
        "max_delta": [10.0, 10.0],
        "observations": ["state"],
        "sources": {"state": {"type": "float64_multi_array", "topic": "/pointmass/state", "size": 2}},
        "action": {"type": "float64_multi_array", "topic": "/pointmass/cmd", "interface": "velocity"},
        "hot_swap": hot_swap,
    }
    if fleet_policy:
        p["fleet"] = {"robot_id": "r1", "stream": False, "policy": fleet_policy}
    return kit_write_params(tmp_path / "robot.yaml", p)


class Robot:
    """A node trusting the learner's key, fed observations by the peer, and
    the peer's publisher on the fleet's policy topic."""

    def __init__(self, tmp_path, domain, peer):
        self.tmp = tmp_path
        self.base = new_model(tmp_path / "base.safetensors", 1, 1)
        self.learner_key = tmp_path / "learner.key"
        self.trusted = keygen(self.learner_key)
        self.peer = peer
        pub = peer.node.create_publisher(Float64MultiArray, "/pointmass/state", BEST_EFFORT)
        peer.node.create_timer(0.01, lambda: pub.publish(Float64MultiArray(data=[0.3, -0.7])))
        self.diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
        self.policy = peer.node.create_publisher(UInt8MultiArray, POLICY_TOPIC, LATCHED)
        self.swap = tmp_path / "swap"
        self.node = AttackedNode(domain, write_params(tmp_path, self.base, [self.trusted]))
        wait_for(lambda: self.diags and self.d().get("policy_version") == "1", 20, "the node running version 1")

    def d(self):
        return diag(self.diags)

    def version(self):
        return int(self.d()["policy_version"])

    def rejections(self):
        return int(self.d()["policy_rejections"])

    def fleet_refused(self):
        """Versions the fleet link refused before the hot swap saw them."""
        m = re.search(r"refused (\d+)", self.d().get("fleet", ""))
        return int(m.group(1)) if m else 0

    def publish(self, path):
        """The peer publishes a model file as the fleet learner does."""
        self.policy.publish(UInt8MultiArray(data=array.array("B", open(path, "rb").read())))

    def expect_refused(self, path, version_before, why):
        """Publish `path`; the node refuses it (the fleet link, before it
        writes the file, or the hot swap), names why, and runs on."""
        n, f = self.rejections(), self.fleet_refused()
        self.publish(path)
        wait_for(lambda: self.rejections() > n or self.fleet_refused() > f
                 or self.version() != version_before, 15, "the node to refuse or take the version")
        time.sleep(0.5)  # a swap would show by now
        assert self.version() == version_before, \
            f"the robot runs version {self.version()} of {path.name} (attack succeeded)"
        assert self.rejections() + self.fleet_refused() == n + f + 1, self.d()
        said = self.d()["policy_last_rejection"] + self.node.output()
        whys = (why,) if isinstance(why, str) else why
        assert any(w in said for w in whys), (whys, self.d()["policy_last_rejection"])
        v = inspect_version(path)
        if self.fleet_refused() > f:
            # refused before it was written: the genuine version v keeps its file name
            assert not list(self.swap.glob(f"policy_v{v:06d}*")), "the refused file took a version's name"
        assert self.node.alive()

    def expect_runs(self, path, version):
        self.publish(path)
        wait_for(lambda: self.version() == version, 15, f"version {version} running")

    def close(self):
        return self.node.stop()


@pytest.fixture
def robot(tmp_path, domain, peer):
    r = Robot(tmp_path, domain, peer)
    yield r
    assert r.close() == 0, r.node.output()[-3000:]


def test_a_an_unsigned_newer_version_from_a_foreign_peer_is_refused(robot, tmp_path):
    foreign = learner_versions(tmp_path, "foreign", robot.base)[2]
    robot.expect_refused(foreign, 1, "not authenticated: unsigned")


def test_b_a_version_signed_by_an_untrusted_key_is_refused(robot, tmp_path):
    theirs = tmp_path / "their.key"
    keygen(theirs)
    foreign = learner_versions(tmp_path, "foreign", robot.base, key=theirs)[2]
    robot.expect_refused(foreign, 1, "which is not in hot_swap.trusted_keys")


def test_c_a_genuine_signed_version_runs(robot, tmp_path):
    genuine = learner_versions(tmp_path, "learner", robot.base, key=robot.learner_key)[2]
    robot.expect_runs(genuine, 2)
    assert robot.rejections() == 0, robot.d()


def test_d_a_signed_version_renumbered_as_newer_is_refused(robot, tmp_path):
    genuine = learner_versions(tmp_path, "learner", robot.base, key=robot.learner_key)[2]
    robot.expect_runs(genuine, 2)
    replay = renumber(genuine, tmp_path / "replay.safetensors", 9)
    assert inspect_version(replay) == 9  # a well-formed file: only the signature can tell
    robot.expect_refused(replay, 2, "does not verify")


def test_e_version_u64_max_is_refused_and_later_versions_still_run(robot, tmp_path):
    huge = new_model(tmp_path / "huge.safetensors", U64_MAX, 2)
    # unsigned, so the fleet link refuses it first; a trusted learner's
    # u64::MAX would reach the hot swap and be refused as implausible
    # (crates/core/src/hotswap.rs tests)
    robot.expect_refused(huge, 1, (f"version {U64_MAX} is implausible", "unsigned"))
    genuine = learner_versions(tmp_path, "learner", robot.base, key=robot.learner_key)[2]
    robot.expect_runs(genuine, 2)


def test_an_unsigned_version_written_into_the_hot_swap_directory_is_refused(robot, tmp_path):
    foreign = learner_versions(tmp_path, "foreign", robot.base)[2]
    n = robot.rejections()
    staged = tmp_path / "swap" / ".staged"
    staged.write_bytes(foreign.read_bytes())
    os.rename(staged, tmp_path / "swap" / policy_file(2))
    wait_for(lambda: robot.rejections() > n or robot.version() != 1, 15, "the node to refuse or take it")
    time.sleep(0.5)
    assert robot.version() == 1, "the robot runs the unsigned version"
    assert "not authenticated: unsigned" in robot.d()["policy_last_rejection"]


def test_a_fleet_robot_without_trusted_keys_does_not_start(tmp_path, domain):
    base = new_model(tmp_path / "base.safetensors", 1, 1)
    node = AttackedNode(domain, write_params(tmp_path, base, []))
    try:
        rc = node.p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        node.stop()
        pytest.fail("a node taking fleet policies without trusted keys started")
    assert rc != 0
    assert "'hot_swap.trusted_keys' is required when the fleet link takes policies" in node.output()
