"""The fault matrix (docs/safety.md): each row drives a real flowpilot_node on
a real ROS 2 graph into one fault and asserts that the output goes to the safe
action promptly, that the node says what happened, and that it stays up (or,
where it cannot go on, exits non-zero after publishing the safe action)."""
import os
import time


from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import SetBool, Trigger

from flowpilot_py.testkit import small_tmpfs, call, BEST_EFFORT, LATCHED, RELIABLE, NodeProc, diag, policy_file, wait_for
from test_node import ESTOP, INVALID, POLICY, STALE, ObsPublisher, decisions, start, wait_decision

# A default rclpy publisher: reliable, volatile (`ros2 topic pub`'s default).
VOLATILE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def zero_cmds_since(cmd, t):
    return [list(m.data) for tt, m in list(cmd) if tt >= t]


def test_estop_reaches_from_volatile_best_effort_and_latched_publishers(domain, peer):
    ObsPublisher(peer)
    node, trace, cmd = start(domain, peer)
    try:
        wait_decision(trace, POLICY)
        for name, qos in (("volatile", VOLATILE), ("best-effort", BEST_EFFORT), ("latched", LATCHED)):
            pub = peer.node.create_publisher(Bool, "/flowpilot/estop", qos)
            # Discovery first: a message sent before the reader matched is lost
            # for volatile writers by design (the latched one is not).
            wait_for(lambda: pub.get_subscription_count() >= 1, 5, f"{name} publisher matched")
            t = time.monotonic()

            def engaged():
                # As a joystick or teleop node does, keep saying it: the
                # first best-effort sample may reach a reader that has not
                # yet matched this writer, and is then lost by design.
                pub.publish(Bool(data=True))
                return any(d[1] == ESTOP for _, d in decisions(trace, t))
            wait_for(engaged, 2, f"e-stop from a {name} publisher")
            t_first = min(tt for tt, d in decisions(trace, t) if d[1] == ESTOP)
            assert t_first - t < 0.5, f"{name}: e-stop took {t_first - t:.3f} s"
            time.sleep(0.1)
            assert all(c == [0.0, 0.0] for c in zero_cmds_since(cmd, t_first + 0.05)), "zero commands"
            pub.publish(Bool(data=False))
            r = call(peer, Trigger, "/flowpilot/reset_estop", Trigger.Request())
            assert r.success, r.message
            t = time.monotonic()
            wait_for(lambda: any(d[1] == POLICY for _, d in decisions(trace, t)), 5, f"release after {name}")
            peer.node.destroy_publisher(pub)
        assert node.alive()
    finally:
        assert node.stop() == 0


def test_release_needs_the_reset_service_and_a_withdrawn_topic(domain, peer):
    ObsPublisher(peer)
    node, trace, cmd = start(domain, peer)
    try:
        wait_decision(trace, POLICY)
        pub = peer.node.create_publisher(Bool, "/flowpilot/estop", LATCHED)
        pub.publish(Bool(data=True))
        wait_decision(trace, ESTOP)
        # A false on the topic withdraws the demand but releases nothing.
        r = call(peer, Trigger, "/flowpilot/reset_estop", Trigger.Request())
        assert not r.success and "publish false" in r.message, r.message
        t = time.monotonic()
        pub.publish(Bool(data=False))
        time.sleep(0.5)
        after = decisions(trace, t)
        assert after and all(d[1] == ESTOP for _, d in after), "topic false must not release"
        # SetBool false is not a release either.
        r = call(peer, SetBool, "/flowpilot/estop", SetBool.Request(data=False))
        assert not r.success and "reset_estop" in r.message, r.message
        time.sleep(0.2)
        assert all(d[1] == ESTOP for _, d in decisions(trace, t))
        # The deliberate reset releases.
        r = call(peer, Trigger, "/flowpilot/reset_estop", Trigger.Request())
        assert r.success and "released" in r.message, r.message
        t = time.monotonic()
        wait_for(lambda: any(d[1] == POLICY for _, d in decisions(trace, t)), 5, "policy after reset")
        # The service engages as before, and holds until reset.
        assert call(peer, SetBool, "/flowpilot/estop", SetBool.Request(data=True)).success
        t = time.monotonic()
        wait_for(lambda: any(d[1] == ESTOP for _, d in decisions(trace, t)), 2, "service e-stop")
    finally:
        assert node.stop() == 0


def _control_thread_fault(domain, peer, fault, expect):
    ObsPublisher(peer)
    diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    trace = peer.collect(Float64MultiArray, "/flowpilot/action_trace", RELIABLE)
    cmd = peer.collect(Float64MultiArray, "/pointmass/cmd", RELIABLE)
    node = NodeProc(domain, ("-p", "max_delta:=[10.0, 10.0]"), env={"FLOWPILOT_FAULT_INJECT": fault})
    try:
        wait_decision(trace, POLICY)
        wait_for(lambda: not node.alive(), 10, "the node exits after the fault")
        rc = node.p.returncode
        out = node.output()
        assert rc != 0, "a failed control loop exits non-zero"
        assert expect in out, out[-2000:]
        # The last command is the safe action (zero), published by the supervisor.
        wait_for(lambda: cmd and list(cmd[-1][1].data) == [0.0, 0.0], 2, "safe action last")
        policy_cmds = [c for c in zero_cmds_since(cmd, 0) if c != [0.0, 0.0]]
        assert policy_cmds, "the policy was running before the fault"
        failed = lambda: [m.status[0] for _, m in list(diags) if "control loop failed" in m.status[0].message]
        wait_for(failed, 2, "an ERROR diagnostic naming the fault")
        st = failed()[-1]
        assert st.level == DiagnosticStatus.ERROR and expect in st.message, (st.level, st.message)
    finally:
        node.stop()


def test_control_thread_panic_publishes_safe_action_and_exits_nonzero(domain, peer):
    _control_thread_fault(domain, peer, "panic@300", "panicked: injected fault at tick 300")


def test_stalled_control_thread_trips_the_watchdog(domain, peer):
    _control_thread_fault(domain, peer, "stall@300", "control thread stalled")


def test_future_stamped_observation_is_invalid_and_counted(domain, peer):
    diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    pose = peer.node.create_publisher(PoseStamped, "/pointmass/pose", BEST_EFFORT)
    skew = {"s": 0.0}

    def tick():
        m = PoseStamped()
        now = time.time() + skew["s"]
        m.header.stamp.sec, m.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
        m.pose.position.x, m.pose.position.y = 0.05, -1.1
        pose.publish(m)
    peer.node.create_timer(0.01, tick)
    node, trace, cmd = start(domain, peer, "-p", "max_delta:=[10.0, 10.0]", "-p", "sources.state.type:=pose_stamped", "-p",
                             "sources.state.topic:=/pointmass/pose", "-p", "sources.state.components:=['x', 'y']")
    try:
        wait_decision(trace, POLICY)
        skew["s"] = 5.0  # a sender whose clock runs 5 s ahead
        t = time.monotonic()
        time.sleep(0.5)
        bad = decisions(trace, t + 0.1)
        assert bad and all(d[1] == INVALID and d[5:7] == [0.0, 0.0] for _, d in bad), bad[:3]
        wait_for(lambda: diags and int(diag(diags)["future_stamp_ticks"]) > 0, 3, "future_stamp_ticks counted")
        skew["s"] = 0.0
        t = time.monotonic()
        wait_for(lambda: any(d[1] == POLICY for _, d in decisions(trace, t)), 5, "recovery")
        assert node.alive()
    finally:
        assert node.stop() == 0


def test_bad_parameters_are_refused_at_startup_naming_the_parameter(domain):
    for args, expect in (
        (("-p", "safe_behavior:=zero"), "unknown parameter 'safe_behavior' (did you mean 'safe_behaviour'?)"),
        (("-p", "max_delta:=[0.5, -0.5]"), "'max_delta' entries must be finite and > 0"),
        (("-p", "rt.cpu:=4096"), "'rt.cpu' must be within -1..=1023, got 4096"),
    ):
        node = NodeProc(domain, args)
        rc = node.p.wait(timeout=20)
        out = node.output()
        node.stop()
        assert rc != 0 and expect in out, (args, out[-1500:])


def test_oversized_joint_state_is_refused_and_the_loop_keeps_its_rate(domain, peer, tmp_path):
    """JointStates naming 10^5 joints (the configured ones among them):
    refused and counted at bounded cost, so the source goes stale (safe
    action) while the loop keeps its rate, and recovers after."""
    from sensor_msgs.msg import JointState
    from test_sources import make_model
    model = make_model(tmp_path, 2, 0, 2)
    yaml = tmp_path / "p.yaml"
    yaml.write_text(f"""
flowpilot:
  ros__parameters:
    model: {model}
    rate_hz: 100.0
    startup_hold: 0.0
    warmup_ticks: 2
    safe_behaviour: zero
    observations: [arm]
    sources:
      arm: {{type: joint_state, topic: /joint_states, joints: [a, b], max_age: 0.2, qos: reliable}}
    action: {{type: float64_multi_array, topic: /cmd, interface: velocity}}
""")
    js = peer.node.create_publisher(JointState, "/joint_states", RELIABLE)
    names = [f"j{i}" for i in range(100_000)] + ["b", "a"]
    huge = JointState(name=names, position=[0.0] * len(names))
    normal = {"on": True}
    peer.node.create_timer(0.01, lambda: normal["on"] and js.publish(JointState(name=["a", "b"], position=[0.1, 0.2])))
    diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    trace = peer.collect(Float64MultiArray, "/flowpilot/action_trace", RELIABLE)
    node = NodeProc(domain, (), params=str(yaml))
    try:
        wait_for(lambda: any(m.data[1] == POLICY for _, m in list(trace)), 15, "policy")
        # Only the oversized messages for a while (a keep-last-1 reader
        # would let a small message overtake a big one still in fragments).
        normal["on"] = False
        t = time.monotonic()
        for _ in range(8):
            js.publish(huge)
            time.sleep(0.1)
        t_end = time.monotonic()
        wait_for(lambda: diags and int(diag(diags)["rejected_messages"]) >= 5, 5, "oversized messages rejected")
        window = [m.data for tt, m in list(trace) if t + 0.3 <= tt < t_end]
        assert len(window) >= 0.8 * 100 * (t_end - t - 0.3), f"{len(window)} ticks: the loop kept its rate"
        assert all(d[1] == STALE and list(d[5:7]) == [0.0, 0.0] for d in window), "refused, so stale: zero"
        normal["on"] = True
        t = time.monotonic()
        wait_for(lambda: any(m.data[1] == POLICY for tt, m in list(trace) if tt > t), 5, "recovery")
        assert node.alive()
    finally:
        assert node.stop() == 0


def test_enospc_on_a_small_tmpfs_stops_logging_not_control(domain, peer, tmp_path):
    """A real full disk (ENOSPC from a 256 kB tmpfs, not a file-size limit):
    logging stops with the error named in /diagnostics; control goes on."""
    with small_tmpfs(tmp_path, "256k") as mnt:
        ObsPublisher(peer)
        diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
        node, trace, cmd = start(domain, peer, "-p", f"log.dir:={mnt}/log")
        try:
            wait_decision(trace, POLICY)
            wait_for(lambda: diags and diag(diags).get("log_state", "").startswith("failed"), 20, "log_state failed")
            kv = diag(diags)
            assert "No space left on device" in kv["log_state"], kv["log_state"]
            t = time.monotonic()
            time.sleep(1.0)
            after = decisions(trace, t)
            assert len(after) >= 80 and all(d[1] == POLICY for _, d in after), "control goes on at 100 Hz"
            assert node.alive()
        finally:
            assert node.stop() == 0


def test_enospc_for_the_accepted_record_keeps_the_swap_and_says_so(domain, peer, tmp_path):
    """hot_swap.dir on a real tmpfs that fills up: a new version still swaps
    in, the accepted record cannot be written, and /diagnostics says why
    (WARN, policy_record_error), while control goes on."""
    from test_hotswap import new_model, params, acts_match, OBS
    with small_tmpfs(tmp_path, "512k") as mnt:
        swap = mnt / "ckpt"
        swap.mkdir()
        v1 = tmp_path / "v1.safetensors"
        new_model(v1, 1, 1)
        staged = swap / "staging.tmp"
        new_model(staged, 2, 2)
        # Fill what is left, so that no new file can get a byte.
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        os.close(fd)
        diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
        trace = peer.collect(Float64MultiArray, "/flowpilot/action_trace", RELIABLE)
        st = peer.node.create_publisher(Float64MultiArray, "/pointmass/state", BEST_EFFORT)
        peer.node.create_timer(0.01, lambda: st.publish(Float64MultiArray(data=OBS)))
        node = NodeProc(domain, (), params=params(tmp_path, v1, swap))
        try:
            wait_for(lambda: any(m.data[1] == POLICY for _, m in list(trace)), 15, "policy")
            t = time.monotonic()
            os.rename(staged, swap / "policy_v000002.safetensors")  # a rename needs no free space
            v2 = swap / policy_file(2)
            wait_for(lambda: acts_match(trace, v2, t), 10, "v2 swapped in")
            wait_for(lambda: diags and diag(diags).get("policy_record_error"), 5, "policy_record_error")
            kv = diag(diags)
            assert "No space left on device" in kv["policy_record_error"], kv
            assert diags[-1][1].status[0].level == DiagnosticStatus.WARN
            assert kv["policy_version"] == "2"
            assert node.alive()
        finally:
            assert node.stop() == 0


def _status(diags, since=0.0):
    """(receive time, level, message, key/values) of each /diagnostics status since `since`."""
    return [(t, m.status[0].level, m.status[0].message, {v.key: v.value for v in m.status[0].values})
            for t, m in list(diags) if t >= since]


def test_future_stamped_input_warns_with_the_reason_and_recovers_to_ok(domain, peer):
    """/diagnostics is WARN while input is bad *now* (future-stamped ticks
    since the previous message), naming why, and OK again a period or two
    after the input is good; the cumulative count stays in the values."""
    diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    pose = peer.node.create_publisher(PoseStamped, "/pointmass/pose", BEST_EFFORT)
    skew = {"s": 0.0}

    def tick():
        m = PoseStamped()
        now = time.time() + skew["s"]
        m.header.stamp.sec, m.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
        m.pose.position.x, m.pose.position.y = 0.05, -1.1
        pose.publish(m)
    peer.node.create_timer(0.01, tick)
    node, trace, cmd = start(domain, peer, "-p", "diagnostics_period:=0.2", "-p", "max_delta:=[10.0, 10.0]",
                             "-p", "sources.state.type:=pose_stamped", "-p", "sources.state.topic:=/pointmass/pose",
                             "-p", "sources.state.components:=['x', 'y']")
    ok = lambda since: [s for s in _status(diags, since) if s[1] == DiagnosticStatus.OK]
    try:
        wait_decision(trace, POLICY)
        # Input good: OK, "running" (the start-up's stale ticks are history).
        wait_for(lambda: ok(time.monotonic() - 0.1), 3, "OK while the input is good")
        assert ok(0)[-1][2] == "running"
        skew["s"] = 5.0  # a sender whose clock runs 5 s ahead
        t_bad = time.monotonic()
        warned = lambda: [s for s in _status(diags, t_bad) if s[1] == DiagnosticStatus.WARN]
        wait_for(warned, 3, "WARN on future-stamped input")
        st = warned()[0]
        assert "future-stamped input" in st[2], st[2]
        assert int(st[3]["future_stamp_ticks"]) > 0
        time.sleep(0.5)
        assert not ok(t_bad + 0.25), "WARN while the input stays bad"
        skew["s"] = 0.0
        t_good = time.monotonic()
        wait_for(lambda: ok(t_good), 3, "OK again once the input is good")
        st = ok(t_good)[0]
        assert st[0] - t_good < 1.0, f"OK {st[0] - t_good:.2f} s after good input (period 0.2 s)"
        assert st[2] == "running" and int(st[3]["future_stamp_ticks"]) > 0, st
        assert node.alive()
    finally:
        assert node.stop() == 0


def test_stalled_publisher_thread_warns_then_trips_the_supervisor(domain, peer):
    """FLOWPILOT_FAULT_INJECT=pubstall@50: the publisher thread stops popping
    at its 50th output (in the start-up hold: it never published a command).
    /diagnostics says WARN "publisher thread stalled" (outputs waiting past
    100 ms) before the supervisor trips at the watchdog limit (50 periods,
    500 ms), then ERROR naming the publisher fault; the spin thread's stop
    (velocity: zero) is the only command; exit code != 0."""
    ObsPublisher(peer)
    diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    cmd = peer.collect(Float64MultiArray, "/pointmass/cmd", RELIABLE)
    trace = peer.collect(Float64MultiArray, "/flowpilot/action_trace", RELIABLE)
    node = NodeProc(domain, ("-p", "diagnostics_period:=0.1", "-p", "max_delta:=[10.0, 10.0]"),
                    env={"FLOWPILOT_FAULT_INJECT": "pubstall@50"})
    try:
        wait_for(lambda: not node.alive(), 15, "the node exits after the fault")
        rc = node.p.returncode
        out = node.output()
        assert rc != 0, "a stalled publisher thread ends the node non-zero"
        assert "publisher thread stalled" in out, out[-2000:]
        wait_for(lambda: cmd and list(cmd[-1][1].data) == [0.0, 0.0], 2, "the stop last")
        # Before the stall only start-up stale ticks' zeros; during it the
        # publisher thread is silent: the stop comes from the spin thread.
        assert all(list(m.data) == [0.0, 0.0] for _, m in list(cmd)), "no policy command"
        # the stop came while the publisher was stalled: over 0.3 s after its
        # last output, when the peer had matched the trace before the stall
        # (discovery on a loaded machine can take longer than the 0.5 s
        # before it), and after the WARN that says it had stalled (below)
        assert not trace or cmd[-1][0] - trace[-1][0] > 0.3, "the stop came while the publisher was stalled"
        errors = lambda: [s for s in _status(diags) if s[1] == DiagnosticStatus.ERROR]
        wait_for(errors, 2, "an ERROR diagnostic naming the fault")
        t_err, _, msg, kv = errors()[-1]
        assert msg.startswith("action publisher failed: publisher thread stalled"), msg
        assert kv["thread"] == "publisher" and "publisher thread stalled" in kv["fault"], kv
        # the injected stall stops popping outside any publish call
        assert "not inside a publish call" in kv["fault"], kv
        stalled = [s for s in _status(diags) if s[1] == DiagnosticStatus.WARN and "publisher thread stalled" in s[2]]
        assert stalled, [s[1:3] for s in _status(diags)]
        assert stalled[0][0] <= t_err
        assert cmd[-1][0] >= stalled[0][0], "the stop came after the stall was seen"
        assert all(int(s[3]["dropped_outputs"]) == 0 for s in stalled), "256 queued: none dropped yet"
        assert float(stalled[-1][3]["publisher_wait_ms"]) > 100.0
    finally:
        node.stop()
