"""Fleet fine-tuning across hosts (docs/fleet.md): two robot hosts (node +
reach sim each) and one learner host (`flowpilot finetune --from-graph`)
in Linux network namespaces joined by a bridge, DDS over real interfaces.
One robot's link is cut and restored, the learner is killed -9 and
restarted; every record logged on each robot must reach the learner
exactly once and in order, both robots must end on a newer version, and
neither control loop may miss a tick."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import CLI, NODE, ROOT

import netns

sys.path.insert(0, os.path.join(ROOT, "scripts"))
from read_log import read_log  # noqa: E402

REACH_MODEL = os.path.join(ROOT, "models", "reach_flow.safetensors")
SIM = os.path.join(ROOT, "sim", "reach_sim.py")
LOGS = os.environ.get("FLOWPILOT_TEST_LOGS", "/tmp")


@pytest.fixture
def net():
    why = netns.available()
    if why:
        if os.environ.get("FLOWPILOT_REQUIRE_NETNS") == "1":
            pytest.fail(f"network namespaces required here: {why}")
        pytest.skip(why)
    tag = f"{os.getpid() % 1000:03d}"
    n = netns.Net(tag, 100 + os.getpid() % 100)
    try:
        yield n
    finally:
        n.close()


def robot_params(tmp_path, robot, ns=""):
    """A reach robot's parameters; `ns` prefixes its own topics (robots share
    one graph, so each one's sim and node talk on topics of its own)."""
    y = tmp_path / f"{robot}.yaml"
    y.write_text(f"""
/**:
  ros__parameters:
    model: {REACH_MODEL}
    rate_hz: 20.0
    safe_behaviour: zero
    warmup_ticks: 3
    startup_hold: 0.3
    observations: [state]
    sources:
      state: {{type: float64_multi_array, topic: {ns}/reach/state, size: 2, max_age: 0.25}}
    action: {{type: float64_multi_array, topic: {ns}/reach/cmd, interface: velocity}}
    log:
      dir: {tmp_path}/{robot}/log
      flush_period: 0.05
      reward_topic: {ns}/reward
      episode_topic: {ns}/episode
    hot_swap: {{dir: {tmp_path}/{robot}/ckpt, poll_period: 0.2}}
    fleet: {{robot_id: {robot}, policy: shared}}
""")
    return str(y)


def test_two_robots_feed_one_learner_across_hosts_through_a_cut_link_and_a_killed_learner(tmp_path, net):
    domain = 60 + os.getpid() % 40
    learner_host = net.host("l")
    robots = {r: net.host(r) for r in ("r1", "r2")}
    logs = []

    def log(name):
        f = open(os.path.join(LOGS, f"fleet_{name}.log"), "a")
        logs.append(f)
        return f

    def start_learner():
        return learner_host.popen(
            [CLI, "finetune", "--from-graph", str(tmp_path / "shards"), "--out", str(tmp_path / "lckpt"),
             "--init", REACH_MODEL, "--min-transitions", "100", "--critic-warmup", "50",
             "--checkpoint-every", "50", "--utd", "0.5", "--batch", "64", "--critic-hidden", "64",
             "--threads", "1"], domain, log("learner"), cwd=ROOT)

    procs = []
    try:
        learner = start_learner()
        nodes, sims = {}, {}
        for i, (r, h) in enumerate(robots.items()):
            nodes[r] = h.popen([NODE, "--ros-args", "--params-file", robot_params(tmp_path, r, f"/{r}"),
                                "-r", f"__node:=flowpilot_{r}"], domain, log(f"node_{r}"), cwd=ROOT)
            sims[r] = h.popen([sys.executable, SIM, "--episodes", "24", "--rate", "20", "--seed", str(i), "--ns", f"/{r}"],
                              domain, log(f"sim_{r}"), cwd=ROOT)
        procs = [learner, *nodes.values(), *sims.values()]
        t0 = time.monotonic()

        def at(t):
            time.sleep(max(0.0, t0 + t - time.monotonic()))

        at(8)
        robots["r1"].link(False)  # r1 is cut off from the learner (and r2)
        at(20)
        robots["r1"].link(True)
        at(26)
        learner.send_signal(signal.SIGKILL)
        learner.wait(timeout=10)
        at(30)
        learner = start_learner()
        procs.append(learner)
        for r, s in sims.items():
            assert s.wait(timeout=120) == 0, f"sim {r} failed"
        time.sleep(5)  # the learner catches up and publishes a version
        rcs = {}
        for r, n in nodes.items():
            n.send_signal(signal.SIGINT)
            rcs[r] = n.wait(timeout=20)
        learner.send_signal(signal.SIGTERM)
        learner.wait(timeout=20)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for f in logs:
            f.close()

    counts = {}
    for r in robots:
        out = open(os.path.join(LOGS, f"fleet_node_{r}.log")).read()
        assert rcs[r] == 0, f"node {r} exited {rcs[r]}:\n{out[-3000:]}"
        assert "watchdog" not in out and "control loop failed" not in out
        mine = read_log(str(tmp_path / r / "log"))
        got = read_log(str(tmp_path / "shards" / r))
        n, m = len(mine["tick"]), len(got["tick"])
        counts[r] = {"logged": n, "at_learner": m,
                     "first_version": int(mine["policy_version"][0]),
                     "last_version": int(mine["policy_version"][-1])}
        # exactly once, in order: the same records, field for field
        assert m == n, f"{r}: logged {n}, learner holds {m}"
        for k in ("tick", "mono_ns", "episode", "decision"):
            assert (got[k] == mine[k]).all(), f"{r}: field {k} differs"
        assert np.allclose(got["obs"], mine["obs"], equal_nan=True)
        # the control loop ticked on through the cut and the restart
        assert (np.diff(mine["tick"]) == 1).all(), f"{r}: a tick is missing from its log"
        assert n >= 24 * 30, f"{r}: only {n} records"
        # each robot saw its own sim only: 24 episode ends, not 48
        assert mine["truncated"].sum() == 24, f"{r}: {mine['truncated'].sum()} episode ends"
        assert counts[r]["last_version"] > counts[r]["first_version"] == 1, counts[r]
    print("fleet record counts:", json.dumps(counts))
    with open(os.path.join(LOGS, "fleet_counts.json"), "w") as f:
        json.dump(counts, f)


def test_a_version_revoked_on_a_robot_is_revoked_for_the_learner(tmp_path, domain, peer):
    """One host (no namespaces): a robot rolls back the learner's version;
    the learner's record revokes it and the learner leaves that line."""
    from diagnostic_msgs.msg import DiagnosticArray
    from std_srvs.srv import Trigger
    from conftest import RELIABLE, NodeProc, diag, wait_for

    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), RUST_LOG="info")
    llog_path = tmp_path / "learner.log"
    llog = open(llog_path, "w")
    learner = subprocess.Popen(
        [CLI, "finetune", "--from-graph", str(tmp_path / "shards"), "--out", str(tmp_path / "lckpt"),
         "--init", REACH_MODEL, "--min-transitions", "100", "--critic-warmup", "50",
         "--checkpoint-every", "50", "--utd", "0.5", "--batch", "64", "--critic-hidden", "64", "--threads", "1"],
        env=env, stdout=llog, stderr=subprocess.STDOUT, cwd=ROOT)
    node = NodeProc(domain, params=robot_params(tmp_path, "r1"))
    sim = subprocess.Popen([sys.executable, SIM, "--episodes", "40", "--rate", "20", "--seed", "3"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
        wait_for(lambda: "policy accepted; swapping in" in node.output(), 90, "a fleet version on the robot")
        wait_for(lambda: diags and "versions taken 0" not in diag(diags)["fleet"], 10, "fleet diagnostics")
        assert diag(diags)["fleet"].startswith("r1: records sent "), diag(diags)["fleet"]
        client = peer.node.create_client(Trigger, "/flowpilot/rollback")
        assert client.wait_for_service(timeout_sec=10)
        fut = client.call_async(Trigger.Request())
        wait_for(fut.done, 10, "rollback reply")
        assert fut.result().success, fut.result().message
        robot_record = (tmp_path / "r1" / "ckpt" / ".flowpilot_accepted").read_text()
        revoked = [l.split()[1] for l in robot_record.splitlines() if l.startswith("revoked ")]
        assert revoked, robot_record
        learner_record = tmp_path / "lckpt" / ".flowpilot_accepted"
        wait_for(lambda: learner_record.exists() and revoked[0] in learner_record.read_text(), 20,
                 "the revocation in the learner's record")
        wait_for(lambda: "restarting the actor from the accepted version" in llog_path.read_text(), 60,
                 "the learner leaving the revoked line")
    finally:
        sim.kill()
        assert node.stop(signal.SIGINT, timeout=20) == 0
        learner.send_signal(signal.SIGTERM)
        learner.wait(timeout=20)
        llog.close()
    text = llog_path.read_text()
    assert "revoked for the learner too" in text
