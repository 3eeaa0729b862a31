"""Revoked versions stay revoked (docs/security.md, "Lineage that fails
closed"): a real flowpilot_node with `hot_swap.trusted_keys`, a version
signed by the real learner (`flowpilot finetune --offline --signing-key`)
written into its hot-swap directory, accepted, then rolled back by an rclpy
peer calling ~/rollback. What is asserted is what the robot runs after a
restart (`policy_version` in /diagnostics):

- the accepted record deleted, as the node's own warning used to advise
  ("remove .flowpilot_accepted to start from `model`"): before, the first
  poll accepted the rolled-back version again; now the append-only
  revocation log still refuses it;
- the disk full when the rollback is made (the hot-swap directory on a
  small tmpfs, filled): before, the rollback revoked in memory only and a
  restart resumed the revoked version from the stale record; now the
  rollback is answered as not recorded, the undone file is set aside, and
  the restarted node runs version 1.

The tmpfs case needs root (mount); it fails rather than skips where
FLOWPILOT_REQUIRE_NETNS=1 (CI), as the namespace tests do.

Environment: FLOWPILOT_NODE_BIN picks the node binary.
"""
import shutil
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from flowpilot_py.testkit import BEST_EFFORT, FILES, RELIABLE, diag, fill, small_tmpfs, wait_for
from flowpilot_py.testkit import new_model
from test_attack_policy import AttackedNode, keygen, learner_versions, write_params


class Robot:
    """A node on `swap`, fed observations by the peer; restartable."""

    def __init__(self, tmp_path, domain, peer, swap):
        self.domain, self.peer, self.swap = domain, peer, swap
        swap.mkdir(exist_ok=True)
        self.base = new_model(tmp_path / "base.safetensors", 1, 1)
        trusted = keygen(tmp_path / "learner.key")
        # version 2, signed by the trusted learner key
        self.v2 = learner_versions(tmp_path, "learner", self.base, n=1, key=tmp_path / "learner.key")[2]
        self.params = write_params(tmp_path, self.base, [trusted], fleet_policy=None, swap=swap)
        pub = peer.node.create_publisher(Float64MultiArray, "/pointmass/state", BEST_EFFORT)
        peer.node.create_timer(0.01, lambda: pub.publish(Float64MultiArray(data=[0.3, -0.7])))
        self.diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
        self.rollback_client = peer.node.create_client(Trigger, "/flowpilot/rollback")
        self.node = None

    def start(self):
        self.diags.clear()
        self.node = AttackedNode(self.domain, self.params)
        wait_for(lambda: self.diags and "policy_version" in self.d(), 20, "the node's diagnostics")

    def stop(self):
        rc = self.node.stop()
        assert rc == 0, self.node.output()[-3000:]

    def d(self):
        return diag(self.diags)

    def version(self):
        return int(self.d()["policy_version"])

    def rollback(self):
        assert self.rollback_client.wait_for_service(timeout_sec=10)
        fut = self.rollback_client.call_async(Trigger.Request())
        wait_for(fut.done, 10, "rollback reply")
        return fut.result()

    def accept_v2(self):
        shutil.copy(self.v2, self.swap / self.v2.name)
        wait_for(lambda: self.version() == 2, 15, "version 2 running")

    def runs_only(self, version, seconds=2.0):
        """`version` runs now and for `seconds` more (polls every 0.1 s)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            assert self.version() == version, f"the robot runs version {self.version()}: {self.d()}"
            time.sleep(0.1)


def test_a_deleted_accepted_record_does_not_bring_a_revoked_version_back(tmp_path, domain, peer):
    r = Robot(tmp_path, domain, peer, tmp_path / "swap")
    r.start()
    try:
        r.accept_v2()
        res = r.rollback()
        assert res.success, res.message
        wait_for(lambda: r.version() == 1, 10, "version 1 after the rollback")
    finally:
        r.stop()
    # what the node's warning used to advise
    (r.swap / FILES["accepted"]).unlink()
    r.start()
    try:
        r.runs_only(1)
        assert int(r.d()["policy_rejections"]) >= 1, r.d()
        assert "was rolled back" in r.d()["policy_last_rejection"], r.d()
        assert "remove" not in r.node.output().split("flowpilot_accepted")[0][-200:]
    finally:
        r.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only)."""
    with small_tmpfs(tmp_path, "2m") as d:
        yield d


def test_a_rollback_on_a_full_disk_is_not_acknowledged_and_a_restart_does_not_resume_the_revoked_version(
        tmp_path, domain, peer, small_disk):
    r = Robot(tmp_path, domain, peer, small_disk)
    r.start()
    try:
        r.accept_v2()
        filler = fill(small_disk)
        res = r.rollback()
        # the robot stops running version 2 either way
        wait_for(lambda: r.version() == 1, 10, "version 1 after the rollback")
    finally:
        r.stop()
    filler.unlink()  # space again, as after an operator cleans up
    r.start()
    try:
        r.runs_only(1)
    finally:
        r.stop()
    # the rollback was not acknowledged as recorded, and said why
    assert not res.success, res.message
    assert "in memory only" in res.message and "No space left" in res.message, res.message
    assert not (small_disk / r.v2.name).exists(), "the revoked file is set aside"
    assert (small_disk / (r.v2.name + ".revoked")).exists()
