"""On-robot fine-tuning over a real ROS 2 graph: the node logs transitions
(reward and episode topics, human override), the log survives kill -9 and
a full disk stops only the logging; the learner started by ~/finetune is
killed -9 without affecting the node and resumes from its last checkpoint;
and a short session on the reach robot improves its return."""
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import numpy as np

from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import Float64, Float64MultiArray, String
from std_srvs.srv import SetBool

from flowpilot_py.testkit import call, BEST_EFFORT, CLI, RELIABLE, ROOT, NodeProc, diag, wait_for
from flowpilot_py.logs import read_log  # noqa: E402
from flowpilot_py.contract import learner_series, qos
from flowpilot_py.testkit import FILES

REACH_MODEL = os.path.join(ROOT, "models", "reach_flow.safetensors")
SIM = os.path.join(ROOT, "sim", "reach_sim.py")


def params(tmp_path, rate=20.0, extra=""):
    y = tmp_path / "reach.yaml"
    y.write_text(f"""
flowpilot:
  ros__parameters:
    model: {REACH_MODEL}
    rate_hz: {rate}
    safe_behaviour: zero
    warmup_ticks: 3
    startup_hold: 0.3
    observations: [state]
    sources:
      state: {{type: float64_multi_array, topic: /reach/state, size: 2, max_age: 0.25}}
    action: {{type: float64_multi_array, topic: /reach/cmd, interface: velocity}}
    log:
      dir: {tmp_path}/log
      flush_period: 0.05
      reward_topic: /reward
      episode_topic: /episode
    override: {{topic: ~/override, max_age: 0.2}}
    hot_swap: {{dir: {tmp_path}/ckpt, poll_period: 0.2}}
{extra}
""")
    return str(y)


def sim(domain, episodes, rate=20.0, seed=0):
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    out = subprocess.run([sys.executable, SIM, "--episodes", str(episodes), "--rate", str(rate), "--seed", str(seed)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    m = re.search(r"mean return (-?[\d.]+) over (\d+) episodes \(stale-command steps (\d+)\)", out.stdout)
    assert m, out.stdout
    return float(m.group(1)), int(m.group(3))


def layout_topics():
    """Every topic the shipped Foxglove and PlotJuggler layouts name."""
    import json
    import xml.etree.ElementTree as ET
    fox = json.load(open(os.path.join(ROOT, "layouts", "session.foxglove.json")))
    named = set()
    for cfg in fox["configById"].values():
        paths = [p["value"] for p in cfg.get("paths", [])] + [cfg[k] for k in ("topicPath", "topicToRender") if k in cfg]
        named |= {re.match(r"(/[\w/]+?)(\.|$)", p).group(1) for p in paths}
    pj = ET.parse(os.path.join(ROOT, "layouts", "session.plotjuggler.xml")).getroot()
    named |= {t.get("name") for t in pj.iter("topic")}
    named |= {c.get("name").rsplit("/", 1)[0] for c in pj.iter("curve")}
    return named


def set_bool(peer, name, value, timeout=20):
    return call(peer, SetBool, name, SetBool.Request(data=value), timeout)


def test_log_is_complete_and_survives_kill9(tmp_path, domain, peer):
    node = NodeProc(domain, params=params(tmp_path))
    try:
        over = peer.node.create_publisher(Float64MultiArray, "/flowpilot/override", RELIABLE)
        ret, stale = sim(domain, 3)
        # a human takes over for half a second
        t0 = time.monotonic()
        state = peer.node.create_publisher(Float64MultiArray, "/reach/state", BEST_EFFORT)
        while time.monotonic() - t0 < 0.5:
            over.publish(Float64MultiArray(data=[0.3, -0.2]))
            state.publish(Float64MultiArray(data=[0.0, 0.0]))
            time.sleep(0.02)
        time.sleep(0.3)  # > flush period: everything so far is on disk
        node.p.send_signal(signal.SIGKILL)
        node.p.wait(timeout=10)
    finally:
        node.log.close()
    log = read_log(str(tmp_path / "log"))
    n = len(log["tick"])
    assert n > 3 * 30, f"only {n} records"
    assert (log["tick"][1:] == log["tick"][:-1] + 1).all(), "records are contiguous ticks"
    policy = log["decision"] == 0
    assert policy.sum() >= 80
    # each sim step's reward arrived and was aligned to a tick
    rewards = log["reward"][np.isfinite(log["reward"])]
    assert len(rewards) >= 0.8 * 90 and (rewards < 0).all()
    # the three episode ends are marked on the last record of each episode
    assert log["truncated"].sum() == 3 and sorted(set(log["episode"].tolist()))[:4] == [0, 1, 2, 3]
    # the override was applied and logged as such
    iv = log["intervention"]
    assert iv.sum() >= 10
    assert abs(log["action_applied"][iv][:, 0] - 0.3).max() < 1e-6  # the board carries f32
    assert abs(log["action_applied"][iv][:, 1] + 0.2).max() < 1e-6
    # policy identity on every record
    assert set(log["policy_version"].tolist()) == {1}
    assert all(d.startswith("sha256:") for d in log["policy_digest"])


def test_full_disk_stops_logging_not_control(tmp_path, domain, peer):
    acts = peer.collect(Float64MultiArray, "/reach/cmd", RELIABLE)
    diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    state = peer.node.create_publisher(Float64MultiArray, "/reach/state", BEST_EFFORT)

    # A 200 kB file-size limit: the log fails with EFBIG like a full disk
    # fails with ENOSPC (the same write-error path).
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), RUST_LOG="info", ROS_LOG_DIR=str(tmp_path / "roslog"))
    args = [os.path.join(ROOT, "target", "release", "flowpilot_node"), "--ros-args", "--params-file",
            params(tmp_path, rate=200.0)]
    logf = open(tmp_path / "node.log", "w")
    p = subprocess.Popen(args, env=env, stdout=logf, stderr=subprocess.STDOUT, preexec_fn=limit, cwd=ROOT)
    try:
        t0 = time.monotonic()
        failed_at = None
        while time.monotonic() - t0 < 40:
            state.publish(Float64MultiArray(data=[-0.5, 0.1]))
            time.sleep(0.005)
            if diags and failed_at is None and diag(diags).get("log_state", "").startswith("failed"):
                failed_at = time.monotonic()
            if failed_at and time.monotonic() - failed_at > 2:
                break
        assert failed_at, f"logging never failed: {diag(diags) if diags else 'no diagnostics'}"
        d = diag(diags)
        assert "File too large" in d["log_state"] or "No space" in d["log_state"], d["log_state"]
        assert p.poll() is None, "the node must survive a failed log"
        n0 = len(acts)
        time.sleep(1.0)
        assert len(acts) - n0 > 100, "actions keep flowing at 200 Hz after the log failed"
        assert int(d["log_dropped"]) > 0
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 0
        logf.close()
    # what was written before the failure is still readable
    log = read_log(str(tmp_path / "log"))
    assert len(log["tick"]) > 100


def test_learner_kill9_leaves_node_running_and_resumes(tmp_path, domain, peer):
    extra = '    finetune: {args: ["--critic-warmup", "20", "--checkpoint-every", "25", "--min-transitions", "64", ' \
            '"--critic-hidden", "64", "--batch", "64", "--utd", "4", "--poll-period", "0.1"]}'
    node = NodeProc(domain, params=params(tmp_path, extra=extra))
    diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    acts = peer.collect(Float64MultiArray, "/reach/cmd", RELIABLE)
    ckpt = tmp_path / "ckpt"
    simp = subprocess.Popen([sys.executable, SIM, "--episodes", "60", "--rate", "20"],
                            env=dict(os.environ, ROS_DOMAIN_ID=str(domain)), stdout=subprocess.DEVNULL)
    try:
        assert set_bool(peer, "/flowpilot/finetune", True).success
        wait_for(lambda: len(list(ckpt.glob("policy_v*.safetensors"))) >= 2, 120, "two checkpoints")
        wait_for(lambda: diags and int(diag(diags)["policy_version"]) >= 2, 30, "a checkpoint swapped in")
        for _ in range(3):  # kill -9 at arbitrary moments, mid-update or mid-write
            wait_for(lambda: "running pid" in diag(diags)["learner"], 10, "the learner running")
            pid = int(re.search(r"running pid (\d+)", diag(diags)["learner"]).group(1))
            time.sleep(0.37)
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: "exited" in diag(diags)["learner"], 10, "the node noticing the learner's exit")
            assert node.alive()
            n0 = len(acts)
            time.sleep(0.5)
            assert len(acts) - n0 >= 5, "control continues at 20 Hz"
            have = max(int(re.search(r"v(\d+)", p.name).group(1)) for p in ckpt.glob("policy_v*.safetensors"))
            # every checkpoint on disk is complete and valid; no temp file was ever loaded
            for f in ckpt.glob("policy_v*.safetensors"):
                subprocess.run([CLI, "inspect", str(f)], check=True, capture_output=True)
            assert int(diag(diags)["policy_rejections"]) == 0
            # a restarted learner resumes from its last checkpoint and the log
            assert set_bool(peer, "/flowpilot/finetune", True).success
            wait_for(lambda: any(int(re.search(r"v(\d+)", p.name).group(1)) > have
                                 for p in ckpt.glob("policy_v*.safetensors")), 120, "a newer checkpoint")
        newest = max(ckpt.glob("policy_v*.safetensors"))
        out = subprocess.run([CLI, "inspect", str(newest)], check=True, capture_output=True, text=True).stdout
        assert "parent" in out
        assert set_bool(peer, "/flowpilot/finetune", False).success
    finally:
        simp.kill()
        simp.wait()
        rc = node.stop()
    assert rc == 0
    # the learner's log (it inherits the node's stderr): three resumptions
    text = open(node.log.name).read()
    assert text.count("resuming from checkpoint") >= 3, text[-3000:]


def test_finetune_session_improves_return(tmp_path, domain, peer):
    """HIL: BC policy with a detour -> log -> SAC learner -> hot swap -> better."""
    rate = 40.0
    extra = '    finetune: {args: ["--critic-warmup", "300", "--checkpoint-every", "300", "--utd", "1.5", ' \
            '"--poll-period", "0.2", "--seed", "0"]}'
    node = NodeProc(domain, params=params(tmp_path, rate=rate, extra=extra))
    diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    # the session as PlotJuggler or Foxglove sees it (docs/finetuning.md)
    series = {n: peer.collect(Float64, f"/flowpilot/learner/{n}", RELIABLE) for n in learner_series()}
    try:
        before, stale0 = sim(domain, 10, rate=rate, seed=100)
        assert set_bool(peer, "/flowpilot/finetune", True).success
        sim(domain, 100, rate=rate, seed=1)
        msg = set_bool(peer, "/flowpilot/finetune", False).message
        ckpt = tmp_path / "ckpt"
        newest = max(int(re.search(r"v(\d+)", p.name).group(1)) for p in ckpt.glob("policy_v*.safetensors"))
        wait_for(lambda: diags and int(diag(diags)["policy_version"]) == newest, 20, f"version {newest} running")
        after, stale1 = sim(domain, 10, rate=rate, seed=100)
        # a late joiner gets the version events (latched)
        events = peer.collect(String, "/flowpilot/policy_events", qos("policy_events"))
        wait_for(lambda: any(f"swapped in version {newest} " in m.data for _, m in events), 10,
                 f"the event of version {newest}")
        graph = dict(peer.node.get_topic_names_and_types())
    finally:
        rc = node.stop()
    print(f"reach HIL fine-tuning: return {before:.2f} -> {after:.2f} (version {newest}; {msg})")
    assert rc == 0
    lines = [m.data for _, m in events]
    assert lines[0].startswith("running version 1 "), lines
    swapped = [int(re.search(r"swapped in version (\d+) ", x).group(1)) for x in lines if x.startswith("swapped in")]
    assert swapped and swapped == sorted(set(swapped)) and swapped[-1] == newest, lines
    vals = {n: [m.data for _, m in box] for n, box in series.items()}
    # one snapshot a second over the ~60 s session, each series in step
    assert len(vals["updates"]) >= 10, {n: len(v) for n, v in vals.items()}
    assert all(abs(len(v) - len(vals["updates"])) <= 1 for v in vals.values()), {n: len(v) for n, v in vals.items()}
    assert all(np.isfinite(v).all() for v in vals.values())
    assert np.all(np.diff(vals["updates"]) > 0), vals["updates"]
    assert np.all(np.diff(vals["replay_size"]) >= 0) and vals["replay_size"][-1] > 0
    assert vals["version"][-1] >= newest - 1 and max(vals["updates_per_s"]) > 0
    assert all(0 < a < 10 for a in vals["alpha"]), vals["alpha"]
    # afterwards, the report tells the story from the log and the checkpoint
    # directory: the learner's curves from its metrics history
    out = tmp_path / "report"
    subprocess.run([CLI, "report", str(tmp_path / "log"), str(ckpt), "--out", str(out)], check=True,
                   capture_output=True)
    page = (out / "index.html").read_text()
    titles = re.findall(r'<img alt="([^"]+)"', page)
    assert {"Return per episode against robot time", "Critic loss against updates", "Mean Q against updates",
            "Entropy against updates", "Temperature α against updates"} <= set(titles), titles
    summary = dict(re.findall(r"<tr><th>([^<]+)</th><td>([^<]+)</td></tr>", page))
    history = [json.loads(x) for x in open(ckpt / FILES["learner_dir"] / FILES["learner_metrics_history"])]
    assert int(summary["learner updates"]) == history[-1]["updates"] >= vals["updates"][-1], summary
    assert summary["versions (first → last)"].startswith("1 → "), summary
    assert int(summary["versions swapped in"]) >= 1, summary
    assert (out / "episodes.csv").read_text().count("\n") - 1 == int(summary["episodes"])
    # the shipped layouts name only topics this node has, and every series
    named = layout_topics()
    assert named and named <= set(graph), named - set(graph)
    assert {f"/flowpilot/learner/{n}" for n in learner_series()} <= named
    # the straight line scores about -19, the BC policy about -29; repeated
    # evaluations of one policy vary by about 1
    assert after > before + 2.5, f"return {before:.2f} -> {after:.2f}"
    assert stale0 + stale1 <= 20
