"""Fleet fine-tuning across hosts (docs/fleet.md): two robot hosts (node +
reach sim each) and one learner host (`flowpilot finetune --from-graph`)
in Linux network namespaces joined by a bridge, DDS over real interfaces.
One robot's link is cut and restored, the learner is killed -9 and
restarted; every record logged on each robot must reach the learner
exactly once and in order, both robots must end on a newer version, and
neither control loop may miss a tick. A second test: a second learner on
the domain cannot reset a robot, and a reinstalled robot (its log starts
at 0 again: a new epoch) and a second robot claiming the same id lose
nothing and overwrite nothing.

Environment: FLOWPILOT_NODE_BIN and FLOWPILOT_FLEET_BIN pick the node and
`flowpilot_fleet` binaries (default: target/release), to run these tests
against other builds."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from flowpilot_py.testkit import CLI, CONTRACT, FILES, NODE, ROOT

META = CONTRACT["log_meta"]

from flowpilot_py import netns
from flowpilot_py.logs import read_log, records  # noqa: E402

NODE_BIN = os.environ.get("FLOWPILOT_NODE_BIN") or NODE
FLEET_BIN = os.environ.get("FLOWPILOT_FLEET_BIN") or os.path.join(ROOT, "target", "release", "flowpilot_fleet")

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


def signing_key(tmp_path):
    """The learner's signing key (made once per test by `flowpilot keygen`):
    robots taking fleet policies trust only versions it signed
    (docs/security.md, "Signed policies and keys")."""
    key = tmp_path / "learner.key"
    if not key.exists():
        subprocess.run([CLI, "keygen", "--out", str(key)], check=True, capture_output=True)
    return str(key)


def robot_params(tmp_path, robot, ns=""):
    """A reach robot's parameters; `ns` prefixes its own topics (robots share
    one graph, so each one's sim and node talk on topics of its own)."""
    y = tmp_path / f"{robot}.yaml"
    key = signing_key(tmp_path)
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
    hot_swap: {{dir: {tmp_path}/{robot}/ckpt, poll_period: 0.2, trusted_keys: [{key}.pub]}}
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
             "--threads", "1", "--signing-key", signing_key(tmp_path), "--fleet-exe", FLEET_BIN],
            domain, log("learner"), cwd=ROOT)

    procs = []
    try:
        learner = start_learner()
        nodes, sims = {}, {}
        for i, (r, h) in enumerate(robots.items()):
            nodes[r] = h.popen([NODE_BIN, "--ros-args", "--params-file", robot_params(tmp_path, r, f"/{r}"),
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


def stream_params(tmp_path, robot, robot_id):
    """A reach robot that only streams (fleet.policy: none): its files under
    tmp_path/<robot>, its topics under /<robot>, fleet id `robot_id`."""
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
      state: {{type: float64_multi_array, topic: /{robot}/reach/state, size: 2, max_age: 0.25}}
    action: {{type: float64_multi_array, topic: /{robot}/reach/cmd, interface: velocity}}
    log: {{dir: {tmp_path}/{robot}/log, flush_period: 0.05}}
    fleet: {{robot_id: {robot_id}, policy: none}}
""")
    return str(y)


def streams_of(shard_dir):
    """A learner's shard directory of one robot id, per log stream (epoch):
    {epoch: (ticks, mono_ns)}, each stream's parts in position order."""
    parts = {}
    for f in glob.glob(os.path.join(shard_dir, "*.mcap")):
        recs = list(records(f))
        if recs:
            meta = recs[0][0]
            parts[(meta.get(META["epoch"]), int(meta.get(META["seq_base"], 0)), f)] = [r for _, r in recs]
    out = {}
    for (epoch, _, _), rs in sorted(parts.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        t, m = out.setdefault(epoch, ([], []))
        t += [int(r["tick"]) for r in rs]
        m += [int(r["mono_ns"]) for r in rs]
    return out


def log_stream(log_dir):
    """A robot's own log: (epoch, ticks, mono_ns)."""
    files = sorted(glob.glob(os.path.join(log_dir, "*.mcap")))
    epoch = next(iter(records(files[-1])))[0].get(META["epoch"])
    got = read_log(log_dir)
    return epoch, [int(t) for t in got["tick"]], [int(m) for m in got["mono_ns"]]


def test_a_second_learner_cannot_reset_a_robot_and_a_reinstalled_or_duplicate_robot_loses_nothing(tmp_path, net):
    """Hosts r1, r2 and learners l1, l2 (flowpilot_fleet itself: no training).
    Robot r1 streams to l1 (the first learner it hears); at 4 s l2 starts on
    the domain and runs 8 s: r1 must ignore it (before: every robot reset to
    each learner's position ~10 times a second, and l2 stored r1's records).
    Then r1 is stopped, its log directory emptied (a reinstall: its log
    starts at 0 again, a new epoch) and started again, and host r2 runs a
    second robot that also calls itself r1. l1 must hold each of the three
    streams exactly once and in order, apart (before: the reinstalled
    robot's records were dropped as duplicates), and report the two robots
    with one id. No sim: every tick is logged (stale input)."""
    domain = 20 + os.getpid() % 40
    hosts = {h: net.host(h) for h in ("r1", "r2", "l1", "l2")}
    shards = {l: tmp_path / f"shards_{l}" for l in ("l1", "l2")}
    logs, procs = {}, []

    def log(name):
        logs[name] = f = open(os.path.join(LOGS, f"fleet2_{name}.log"), "w")
        return f

    def text(name):
        logs[name].flush()
        return open(os.path.join(LOGS, f"fleet2_{name}.log")).read()

    def learner(l):
        p = hosts[l].popen([FLEET_BIN, "--shards", str(shards[l]), "--out", str(tmp_path / f"ckpt_{l}")],
                           domain, log(l), cwd=ROOT)
        procs.append(p)
        return p

    def node(host, robot, name):
        p = hosts[host].popen([NODE_BIN, "--ros-args", "--params-file", stream_params(tmp_path, robot, "r1"),
                               "-r", f"__node:=flowpilot_{robot}"], domain, log(name), cwd=ROOT)
        procs.append(p)
        return p

    def stop(p, sig, name):
        p.send_signal(sig)
        rc = p.wait(timeout=20)
        assert rc == 0, f"{name} exited {rc}:\n{text(name)[-3000:]}"

    try:
        l1 = learner("l1")
        time.sleep(1.0)
        r1 = node("r1", "r1", "r1_run1")
        time.sleep(4.0)
        l2 = learner("l2")
        time.sleep(8.0)
        stop(l2, signal.SIGTERM, "l2")
        # the reinstall: stopped (it drains to l1), log directory emptied
        stop(r1, signal.SIGINT, "r1_run1")
        run1 = log_stream(str(tmp_path / "r1" / "log"))
        shutil.rmtree(tmp_path / "r1" / "log")
        r1 = node("r1", "r1", "r1_run2")
        twin = node("r2", "r1b", "r1b")  # a second robot that calls itself r1
        time.sleep(10.0)
        stop(twin, signal.SIGINT, "r1b")
        stop(r1, signal.SIGINT, "r1_run2")
        time.sleep(0.5)
        stop(l1, signal.SIGTERM, "l1")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for f in logs.values():
            f.close()

    run2 = log_stream(str(tmp_path / "r1" / "log"))
    twin = log_stream(str(tmp_path / "r1b" / "log"))
    held = streams_of(str(shards["l1"] / "r1"))
    l2_held = streams_of(str(shards["l2"] / "r1"))
    summary = {"l1 holds": {str(e): len(t) for e, (t, _) in held.items()},
               "l2 holds": {str(e): len(t) for e, (t, _) in l2_held.items()},
               "logged": {"run1": len(run1[1]), "run2 (reinstalled)": len(run2[1]), "twin": len(twin[1])}}
    print("fleet streams:", json.dumps(summary))
    with open(os.path.join(LOGS, "fleet2_counts.json"), "w") as f:
        json.dump(summary, f)
    # every check, then one assertion naming each that failed
    bad = []
    # r1 followed l1 and ignored l2: l2 stored nothing of r1's
    if l2_held:
        bad.append("l2 stored records of r1 (r1 followed it)")
    if "another learner on the domain" not in open(os.path.join(LOGS, "fleet2_r1_run1.log")).read():
        bad.append("r1 did not report the second learner")
    # three streams: the reinstalled robot is a new one, the twin another
    epochs = (run1[0], run2[0], twin[0])
    if None in epochs or len(set(epochs)) != 3:
        bad.append(f"log stream epochs {epochs}")
    for name, (epoch, ticks, mono) in (("run1", run1), ("run2", run2), ("twin", twin)):
        assert len(ticks) > 50, (name, summary)
        got = held.get(epoch, ([], []))
        # exactly once, in order, field for field
        if got[0] != ticks or got[1] != mono:
            bad.append(f"{name}: l1 does not hold its {len(ticks)} records exactly once in order")
    # the two robots with one id: detected and reported at the learner, and
    # told to the robots
    if "two live streams claim one robot id" not in open(os.path.join(LOGS, "fleet2_l1.log")).read():
        bad.append("l1 did not report two robots with one id")
    robots = open(os.path.join(LOGS, "fleet2_r1_run2.log")).read() + open(os.path.join(LOGS, "fleet2_r1b.log")).read()
    if "another robot streaming under this robot's id" not in robots:
        bad.append("no robot reported its id claimed twice")
    assert not bad, f"{bad}\n{summary}"


def test_a_version_revoked_on_a_robot_is_revoked_for_the_learner(tmp_path, domain, peer):
    """One host (no namespaces): a robot rolls back the learner's version;
    the learner's record revokes it and the learner leaves that line."""
    from diagnostic_msgs.msg import DiagnosticArray
    from std_srvs.srv import Trigger
    from flowpilot_py.testkit import RELIABLE, NodeProc, diag, wait_for

    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), RUST_LOG="info")
    llog_path = tmp_path / "learner.log"
    llog = open(llog_path, "w")
    learner = subprocess.Popen(
        [CLI, "finetune", "--from-graph", str(tmp_path / "shards"), "--out", str(tmp_path / "lckpt"),
         "--init", REACH_MODEL, "--min-transitions", "100", "--critic-warmup", "50",
         "--checkpoint-every", "50", "--utd", "0.5", "--batch", "64", "--critic-hidden", "64", "--threads", "1",
         "--signing-key", signing_key(tmp_path)],
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
        # the append-only revocation logs (docs/security.md, "Lineage")
        robot_record = (tmp_path / "r1" / "ckpt" / FILES["revoked"]).read_text()
        revoked = [l.split()[1] for l in robot_record.splitlines() if l.startswith("revoked ")]
        assert revoked, robot_record
        learner_record = tmp_path / "lckpt" / FILES["revoked"]
        wait_for(lambda: learner_record.exists() and revoked[0] in learner_record.read_text(), 20,
                 "the revocation in the learner's revocation log")
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
