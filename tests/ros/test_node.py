"""flowpilot_node on a real ROS 2 graph: rclpy peers, Fast DDS, real files."""
import math
import os
import signal
import time

from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import SetBool, Trigger

from flowpilot_py.testkit import (BEST_EFFORT, DECISION, LATCHED, MODEL, RELIABLE, ROOT, NodeProc, Peer, offline_action,
                      wait_for)

OBS = [0.05, -1.1]
# Trace layout: [tick, decision, published, log_prob, stamp, action...]
POLICY, WARMUP, ESTOP, STALE, INVALID = (DECISION[k] for k in ("policy", "warm_up", "e_stop", "stale", "invalid"))


class ObsPublisher:
    """Publishes the point-mass state at 100 Hz; what it sends is settable."""

    def __init__(self, peer):
        self.value = list(OBS)
        self.on = True
        self.pub = peer.node.create_publisher(Float64MultiArray, "/pointmass/state", BEST_EFFORT)
        peer.node.create_timer(0.01, self._tick)

    def _tick(self):
        if self.on:
            self.pub.publish(Float64MultiArray(data=list(self.value)))


def start(domain, peer, *args):
    trace = peer.collect(Float64MultiArray, "/flowpilot/action_trace", RELIABLE)
    cmd = peer.collect(Float64MultiArray, "/pointmass/cmd", RELIABLE)
    node = NodeProc(domain, args)
    return node, trace, cmd


def decisions(trace, since=0.0):
    return [(t, list(m.data)) for t, m in list(trace) if t >= since]


def wait_decision(trace, code, timeout=10.0):
    wait_for(lambda: any(d[1] == code for _, d in decisions(trace)), timeout, f"decision {code}")


def test_actions_follow_observations_at_rate_and_match_offline(domain, peer):
    obs = ObsPublisher(peer)
    node, trace, cmd = start(domain, peer, "-p", "max_delta:=[10.0, 10.0]")
    try:
        wait_decision(trace, POLICY)
        t0 = time.monotonic()
        time.sleep(2.0)
        window = [d for t, d in decisions(trace, t0) if t < t0 + 2.0]
        rate = len(window) / 2.0
        assert 90 <= rate <= 110, f"trace rate {rate} Hz, configured 100"
        policy = [d for d in window if d[1] == POLICY]
        assert len(policy) >= 0.95 * len(window), "fresh input must give policy actions"
        ticks = [int(d[0]) for d in window]
        assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), "one trace per tick, in order"
        cmds = [list(m.data) for t, m in list(cmd) if t >= t0]
        assert len(cmds) >= 0.9 * len(policy)
        # values equal the offline sampler's for the same seed and tick
        for d in policy[:: max(1, len(policy) // 5)][:5]:
            want = offline_action(obs.value, 0, int(d[0]))
            got = d[5:7]
            assert all(abs(a - b) < 1e-6 for a, b in zip(got, want)), (d[0], got, want)
            assert got in cmds, "the traced action was published"
        assert node.alive()
    finally:
        assert node.stop() == 0


def test_stale_input_gives_safe_action_then_recovers(domain, peer):
    obs = ObsPublisher(peer)
    node, trace, cmd = start(domain, peer)
    try:
        wait_decision(trace, POLICY)
        obs.on = False
        t_off = time.monotonic()
        time.sleep(0.6)
        stale = [d for t, d in decisions(trace, t_off + 0.2)]
        assert stale and all(d[1] == STALE for d in stale), "max_age 0.1 s: stale after 0.2 s"
        assert all(d[5:7] == [0.0, 0.0] and d[2] == 1.0 for d in stale), "safe_behaviour zero publishes zeros"
        zero_cmds = [m.data.tolist() for t, m in list(cmd) if t > t_off + 0.2]
        assert zero_cmds and all(c == [0.0, 0.0] for c in zero_cmds)
        obs.on = True
        t_on = time.monotonic()
        wait_for(lambda: any(d[1] == POLICY for _, d in decisions(trace, t_on)), 5, "recovery")
        assert node.alive()
    finally:
        assert node.stop() == 0


def test_nan_and_wrong_length_are_rejected_and_counted(domain, peer):
    obs = ObsPublisher(peer)
    diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    node, trace, cmd = start(domain, peer)
    try:
        wait_decision(trace, POLICY)
        obs.value = [math.nan, 0.0]
        time.sleep(0.5)
        obs.value = [1.0]  # too short: data[1] is missing
        time.sleep(0.5)
        obs.value = [math.inf, 1.0]
        t_bad = time.monotonic()
        time.sleep(0.5)
        bad = decisions(trace, t_bad + 0.2)
        assert bad and all(d[1] != POLICY for d in bad), "no policy action from rejected input"
        obs.value = list(OBS)
        t_ok = time.monotonic()
        wait_for(lambda: any(d[1] == POLICY for _, d in decisions(trace, t_ok)), 5, "recovery")

        def rejected():
            for _, m in reversed(list(diags)):
                kv = {v.key: v.value for v in m.status[0].values}
                return int(kv["rejected_messages"])
            return 0
        wait_for(lambda: rejected() >= 120, 3, "rejected_messages >= 120 in /diagnostics")
        assert node.alive()
    finally:
        assert node.stop() == 0


def test_estop_by_service_and_latched_topic(domain, peer):
    ObsPublisher(peer)
    node, trace, cmd = start(domain, peer)
    client = peer.node.create_client(SetBool, "/flowpilot/estop")
    try:
        wait_decision(trace, POLICY)
        assert client.wait_for_service(timeout_sec=10)
        reset = peer.node.create_client(Trigger, "/flowpilot/reset_estop")
        assert reset.wait_for_service(timeout_sec=10)
        for on in (True, False):
            t = time.monotonic()
            # Engage with ~/estop; release with the distinct ~/reset_estop.
            fut = client.call_async(SetBool.Request(data=True)) if on else reset.call_async(Trigger.Request())
            wait_for(fut.done, 5, "estop service reply")
            assert fut.result().success
            code = ESTOP if on else POLICY
            wait_for(lambda: any(d[1] == code for _, d in decisions(trace, t)), 5, f"decision {code}")
            if on:
                time.sleep(0.2)
                t_first = min(tt for tt, d in decisions(trace, t) if d[1] == ESTOP)
                later = decisions(trace, t_first)
                assert len(later) >= 15
                bad = [d for _, d in later if not (d[1] == ESTOP and d[5:7] == [0.0, 0.0])]
                assert not bad, f"zero until released: {bad[:3]} (of {len(later)})"
        pub = peer.node.create_publisher(Bool, "/flowpilot/estop", LATCHED)
        t = time.monotonic()
        pub.publish(Bool(data=True))
        wait_for(lambda: any(d[1] == ESTOP for _, d in decisions(trace, t)), 5, "topic e-stop")
        pub.publish(Bool(data=False))
        time.sleep(0.2)
        t = time.monotonic()
        fut = reset.call_async(Trigger.Request())
        wait_for(fut.done, 5, "reset reply")
        assert fut.result().success, fut.result().message
        wait_for(lambda: any(d[1] == POLICY for _, d in decisions(trace, t)), 5, "release: topic false, then reset")
    finally:
        assert node.stop() == 0


def test_latched_estop_holds_a_node_started_after_it(domain, peer):
    ObsPublisher(peer)
    pub = peer.node.create_publisher(Bool, "/flowpilot/estop", LATCHED)
    pub.publish(Bool(data=True))
    node, trace, cmd = start(domain, peer)
    try:
        wait_decision(trace, ESTOP)
        time.sleep(0.3)
        assert not any(d[1] == POLICY for _, d in decisions(trace)), "latched e-stop applies from the start"
    finally:
        assert node.stop() == 0


def test_params_file_with_overrides_and_diagnostics(domain, peer):
    ObsPublisher(peer)
    diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    node, trace, cmd = start(domain, peer, "-p", "rate_hz:=50.0", "-p", "seed:=7")
    try:
        wait_decision(trace, POLICY)
        wait_for(lambda: len(diags) >= 3, 6, "3 diagnostics messages")
        kv = {v.key: v.value for v in diags[-1][1].status[0].values}
        assert float(kv["configured_rate_hz"]) == 50.0
        assert 45 <= float(kv["rate_hz"]) <= 55, kv["rate_hz"]
        for key in ("jitter_p50_us", "jitter_p99_us", "jitter_max_us", "overruns", "inference_us", "stale_ticks",
                    "invalid_ticks", "estop", "policy_digest", "policy_version"):
            assert key in kv, key
        assert kv["policy_digest"].startswith("sha256:") and kv["estop"] == "false"
        stamps = [t for t, _ in diags]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert all(0.7 < g < 1.3 for g in gaps), f"/diagnostics at 1 Hz: {gaps}"
        d = [d for _, d in decisions(trace) if d[1] == POLICY][-1]
        want = offline_action(OBS, 7, int(d[0]))
        assert all(abs(a - b) < 1e-6 for a, b in zip(d[5:7], want)), "seed 7 from -p is used"
    finally:
        assert node.stop() == 0


def test_sigterm_publishes_safe_action_and_leaves_no_shm(domain):
    before = set(os.listdir("/dev/shm"))
    peer = Peer(domain)
    try:
        ObsPublisher(peer)
        node, trace, cmd = start(domain, peer)
        wait_decision(trace, POLICY)
        time.sleep(0.3)
        t = time.monotonic()
        assert node.stop(signal.SIGTERM) == 0
        wait_for(lambda: any(tt > t for tt, _ in list(cmd)), 3, "a command after SIGTERM")
        last = [m.data.tolist() for tt, m in list(cmd)][-1]
        assert last == [0.0, 0.0], f"last command {last} is the safe action"
    finally:
        peer.close()
    time.sleep(0.2)
    left = set(os.listdir("/dev/shm")) - before
    assert not left, f"shared-memory files left behind: {sorted(left)}"


def test_bad_model_file_fails_clearly(domain, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(open(MODEL, "rb").read()[:1000])
    node = NodeProc(domain, ("-p", f"model:={bad}"))
    rc = node.p.wait(timeout=10)
    node.log.close()
    assert rc == 1
    text = open(node.log.name).read()
    assert "loading model" in text and "truncated" in text, text[-500:]


def test_state_paths_expand_home_and_environment_and_bundled_configs_avoid_tmp(domain, peer, tmp_path):
    # The bundled configs keep logs and checkpoints in a state directory
    # (docs/security.md: not /tmp); ROS params files substitute nothing, so
    # the node expands ~ and $VAR itself.
    import yaml
    for name in ("reach", "reacher", "pointmass"):
        p = yaml.safe_load(open(f"{ROOT}/config/{name}.yaml"))["flowpilot"]["ros__parameters"]
        paths = [p.get("log", {}).get("dir", ""), p.get("hot_swap", {}).get("dir", "")]
        paths += [a for a in p.get("finetune", {}).get("args", []) if "/" in a]
        for path in filter(None, paths):
            assert path.startswith(f"~/.local/state/flowpilot/{name}/"), (name, path)
    home = tmp_path / "home"
    home.mkdir()
    obs = ObsPublisher(peer)
    node = NodeProc(domain, ("-p", "log.dir:=~/state/log", "-p", "hot_swap.dir:=${FLOWPILOT_TEST_CKPT}/ckpt"),
                    env={"HOME": str(home), "FLOWPILOT_TEST_CKPT": str(tmp_path / "elsewhere")})
    try:
        wait_for(lambda: list((home / "state" / "log").glob("*.mcap")), 15, "a log file under $HOME/state/log")
        assert (tmp_path / "elsewhere" / "ckpt").is_dir()
        assert not os.path.exists(os.path.join(ROOT, "~")), "a literal ~ directory was made"
    finally:
        obs.on = False
        assert node.stop() == 0
    node = NodeProc(domain, ("-p", "log.dir:=$FLOWPILOT_SURELY_UNSET/log",))
    rc = node.p.wait(timeout=20)
    out = node.output()
    node.stop()
    assert rc != 0 and "'log.dir': environment variable $FLOWPILOT_SURELY_UNSET" in out, out[-1500:]
