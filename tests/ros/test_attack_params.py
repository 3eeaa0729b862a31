"""Issue 26, item 3, "Live changes cannot loosen safety": a peer on the graph
calls the node's standard `/flowpilot/set_parameters`
(rcl_interfaces/srv/SetParameters) with a plain rclpy client, as
`ros2 param set/delete` would, and tries to switch the node's safety limits
off or loosen them. Each attempt must be refused with a reason, and the
assertion is on what the ROBOT receives afterwards (the commands on
/pointmass/cmd, with ~/action_trace for the decision): still rate limited
within the limit in force, still stopped on stale or future-stamped input.
Tightening is accepted and takes effect; `-p live.allow_loosen:=true` at
start lets an operator loosen.

The node is config/pointmass.yaml (max_delta [0.5, 0.5], `safe_behaviour:
zero`, `action.interface: velocity`, source `state` with max_age 0.1 s),
with `startup_hold: 0`. Unlimited, the point-mass policy's consecutive
commands differ by more than 0.5 in about 4 % of ticks, so a 3 s window
at 100 Hz without one has probability < 1e-5.

FLOWPILOT_NODE_BIN picks the node binary (default: conftest's NODE), so the
same cases can be run against a node from before the change;
FLOWPILOT_ATTACK_ROBOT_ONLY=1 skips the assertions on the service's answer
to a refused attempt, to show that the robot-side assertions alone catch
such a node.
"""
import os
import subprocess
import time

import pytest
import yaml
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from flowpilot_py import testkit
from flowpilot_py.testkit import BEST_EFFORT, MODEL, PARAMS, RELIABLE, ROOT, NodeProc, wait_for

NODE_BIN = os.environ.get("FLOWPILOT_NODE_BIN") or testkit.NODE
ROBOT_ONLY = os.environ.get("FLOWPILOT_ATTACK_ROBOT_ONLY") == "1"

POLICY, WARMUP, ESTOP, STALE, INVALID = range(5)
OBS = [0.05, -1.1]
LIMIT = 0.5            # config/pointmass.yaml's max_delta, per value
WINDOW_S = 3.0         # how long the robot's commands are watched after an attempt
TOL = 1e-9


class ParamNode(NodeProc):
    """conftest's NodeProc on FLOWPILOT_NODE_BIN."""

    def __init__(self, domain, extra_args=(), params=PARAMS):
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain), RUST_LOG="info")
        model = ["-p", f"model:={MODEL}"] if params == PARAMS else []
        args = [NODE_BIN, "--ros-args", "--params-file", str(params), *model,
                "-p", "startup_hold:=0.0", *extra_args]
        self.log_path = os.path.join(os.environ.get("FLOWPILOT_TEST_LOGS", "/tmp"), f"flowpilot_node_{domain}.log")
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)


class Robot:
    """The peer as the point mass: publishes the observation at 200 Hz
    (until `pause`), records the commands and the trace, and calls the
    node's set_parameters service."""

    def __init__(self, peer, stamped_ahead_s=None):
        self.peer = peer
        self.publishing = True
        if stamped_ahead_s is None:
            pub = peer.node.create_publisher(Float64MultiArray, "/pointmass/state", BEST_EFFORT)
            msg = Float64MultiArray(data=OBS)
            peer.node.create_timer(0.005, lambda: self.publishing and pub.publish(msg))
        else:
            pub = peer.node.create_publisher(JointState, "/pointmass/joint_states", BEST_EFFORT)
            ahead = int(stamped_ahead_s * 1e9)

            def tick():
                if self.publishing:
                    now = peer.node.get_clock().now().nanoseconds + ahead
                    m = JointState(name=["px", "py"], position=OBS)
                    m.header.stamp.sec, m.header.stamp.nanosec = divmod(now, 1_000_000_000)
                    pub.publish(m)
            peer.node.create_timer(0.005, tick)
        self.cmd = peer.collect(Float64MultiArray, "/pointmass/cmd", RELIABLE)
        self.trace = peer.collect(Float64MultiArray, "/flowpilot/action_trace", RELIABLE)
        self.client = peer.node.create_client(SetParameters, "/flowpilot/set_parameters")

    def set(self, name, value):
        """One parameter through SetParameters; its SetParametersResult."""
        assert self.client.wait_for_service(timeout_sec=10), "no /flowpilot/set_parameters"
        fut = self.client.call_async(SetParameters.Request(parameters=[Parameter(name=name, value=value)]))
        wait_for(fut.done, 5, f"set {name}")
        (r,) = fut.result().results
        return r

    def commands(self, since):
        """The commands the robot received after `since` (monotonic)."""
        with self.peer.lock:
            return [list(m.data) for t, m in self.cmd if t > since]

    def decisions(self, since):
        with self.peer.lock:
            return [int(m.data[1]) for t, m in self.trace if t > since]

    def steps(self, since):
        """|Δ command| between consecutive commands received after `since`."""
        c = self.commands(since)
        return [max(abs(a - b) for a, b in zip(x, y)) for x, y in zip(c, c[1:])]

    def watch(self, seconds=WINDOW_S, settle=0.3):
        """Watch for `seconds` from `settle` s on (commands that left the
        node before a change may still be on their way to a busy peer);
        returns the window's start."""
        t = time.monotonic() + settle
        time.sleep(seconds + settle)
        return t


def dv(*xs):
    return ParameterValue(type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=list(xs))


def d(x):
    return ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(x))


def s(x):
    return ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=x)


NOT_SET = ParameterValue(type=ParameterType.PARAMETER_NOT_SET)


STOP_ON_VELOCITY = "'safe_behaviour': stop is refused on a float64_multi_array velocity or effort value"


def assert_refused(r, reason):
    if not ROBOT_ONLY:
        assert not r.successful and reason in r.reason, (r.successful, r.reason)


def started(domain, peer, *extra, robot_kw=None, params=PARAMS):
    robot = Robot(peer, **(robot_kw or {}))
    node = ParamNode(domain, extra, params=params)
    wait_for(lambda: len(robot.commands(0)) > 50 or not node.alive(), 20, "the robot's first commands")
    assert node.alive(), node.output()
    return robot, node


def assert_rate_limited(robot, since, limit):
    st = robot.steps(since)
    assert len(st) > 200, f"only {len(st)} commands in the window"
    assert max(st) <= limit + TOL, f"a command jumped {max(st):.3f} > {limit} after the attempt"


# --------------------------------------------------------------------------- max_delta

@pytest.mark.parametrize("case,value,reason", [
    # what `ros2 param delete /flowpilot max_delta` sends
    ("delete", NOT_SET, "cannot be unset or deleted"),
    ("empty", dv(), "cannot be set to an empty list"),
    ("larger", dv(10.0, 10.0), "entry 0: 10 is larger than 0.5 in force"),
])
def test_max_delta_cannot_be_switched_off_or_loosened(domain, peer, case, value, reason):
    robot, node = started(domain, peer)
    try:
        assert_refused(robot.set("max_delta", value), reason)
        t = robot.watch()
        assert_rate_limited(robot, t, LIMIT)
        if not ROBOT_ONLY:
            assert "live parameter change refused" in node.output()  # logged, with the reason
    finally:
        assert node.stop() == 0


# --------------------------------------------------------------------------- freshness

def assert_stops_on_stale_input(robot):
    """The robot's observation stops coming: within max_age (0.1 s) plus the
    ramp (a command of |v| <= 1 reaches 0 in two ticks of 0.5) the robot is
    sent zeros, and the trace says stale."""
    t = time.monotonic()
    robot.publishing = False
    try:
        wait_for(lambda: [0.0, 0.0] in robot.commands(t), 1.0, "a zero command after the input stopped")
        wait_for(lambda: STALE in robot.decisions(t), 1.0, "a stale decision")
        time.sleep(0.5)
        # in order of arrival: once stale, nothing but stale ticks and zeros
        dec = robot.decisions(t)
        assert POLICY not in dec[dec.index(STALE):], "policy ticks after the input went stale"
        c = robot.commands(t)
        assert all(x == [0.0, 0.0] for x in c[c.index([0.0, 0.0]):]), "a command after the stop"
    finally:
        robot.publishing = True


def test_max_age_cannot_be_loosened_to_an_hour(domain, peer):
    robot, node = started(domain, peer)
    try:
        assert_refused(robot.set("sources.state.max_age", d(3600.0)),
                       "'sources.state.max_age': 3600 s is larger than 0.1 s in force")
        time.sleep(0.2)
        assert_stops_on_stale_input(robot)
    finally:
        assert node.stop() == 0


def test_safe_behaviour_cannot_be_loosened_to_stop(domain, peer):
    # zero (the config's) sends the velocity output's stop, zeros; stop
    # would send nothing and leave the last velocity to a forward controller
    # that has no timeout: refused on this output whatever is in force
    # (the tightening rule's own refusal is unit tested in node/live.rs)
    robot, node = started(domain, peer)
    try:
        assert_refused(robot.set("safe_behaviour", s("stop")), STOP_ON_VELOCITY)
        time.sleep(0.2)
        assert_stops_on_stale_input(robot)
    finally:
        assert node.stop() == 0


def stamped_params(tmp_path):
    """config/pointmass.yaml with its source read from a JointState (px, py
    positions), which carries a header stamp."""
    with open(PARAMS) as f:
        p = yaml.safe_load(f)
    rp = p["flowpilot"]["ros__parameters"]
    rp["model"] = MODEL
    rp["sources"]["state"] = {"type": "joint_state", "topic": "/pointmass/joint_states", "joints": ["px", "py"],
                              "fields": ["position"], "max_age": 0.1, "qos": "best_effort"}
    path = tmp_path / "pointmass_stamped.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def test_max_future_stamp_cannot_be_loosened(domain, peer, tmp_path):
    # Observations stamped 0.3 s ahead of the clock: invalid under the
    # default max_future_stamp (0.05 s), so the robot gets the stop (zeros).
    robot = Robot(peer, stamped_ahead_s=0.3)
    node = ParamNode(domain, params=stamped_params(tmp_path))
    try:
        wait_for(lambda: INVALID in robot.decisions(0) or not node.alive(), 20, "invalid ticks")
        assert node.alive(), node.output()
        wait_for(lambda: robot.commands(0)[-1:] == [[0.0, 0.0]], 5, "the stop on invalid input")
        assert_refused(robot.set("max_future_stamp", d(2.0)), "'max_future_stamp': 2 s is larger than 0.05 s in force")
        t = robot.watch(1.5, settle=0.05)  # invalid before as after: no settling needed
        dec = robot.decisions(t)
        assert dec and set(dec) == {INVALID}, f"decisions after the attempt: {sorted(set(dec))}"
        c = robot.commands(t)
        assert c and all(x == [0.0, 0.0] for x in c), "a non-zero command on future-stamped input"
    finally:
        assert node.stop() == 0


# --------------------------------------------------------------------------- tightening

def test_tightening_is_accepted_and_takes_effect(domain, peer):
    robot, node = started(domain, peer)
    try:
        t = robot.watch(1.0)
        assert max(robot.steps(t)) > 0.05, "under 0.5 the commands jump by more than 0.05"
        r = robot.set("max_delta", dv(0.05, 0.05))
        assert r.successful, r.reason
        t = robot.watch()
        assert_rate_limited(robot, t, 0.05)
        for name, value in [("sources.state.max_age", d(0.08)), ("max_future_stamp", d(0.01)),
                            ("safe_behaviour", s("hold"))]:  # hold = zero: both send the stop
            r = robot.set(name, value)
            assert r.successful, (name, r.reason)
    finally:
        assert node.stop() == 0


def test_the_value_in_force_is_the_reference_not_the_start_up_value(domain, peer):
    robot, node = started(domain, peer)
    try:
        assert robot.set("max_delta", dv(0.05, 0.05)).successful
        # back to the start-up value is a loosening of the value in force
        assert_refused(robot.set("max_delta", dv(LIMIT, LIMIT)), "0.5 is larger than 0.05 in force")
        t = robot.watch()
        assert_rate_limited(robot, t, 0.05)
    finally:
        assert node.stop() == 0


# --------------------------------------------------------------------------- the operator's switch

def test_allow_loosen_at_start_lets_an_operator_loosen(domain, peer, tmp_path):
    log_dir = tmp_path / "log"
    robot, node = started(domain, peer, "-p", "live.allow_loosen:=true", "-p", f"log.dir:={log_dir}")
    try:
        r = robot.set("max_delta", dv(10.0, 10.0))
        assert r.successful, r.reason
        t = robot.watch()
        assert max(robot.steps(t)) > LIMIT, "the loosened rate limit took effect"
        assert robot.set("sources.state.max_age", d(3600.0)).successful
        # allowed to loosen is not allowed to leave a velocity output moving
        assert_refused(robot.set("safe_behaviour", s("stop")), STOP_ON_VELOCITY)
        # still a value of its type: deleting is never a loosening to allow
        r = robot.set("max_delta", NOT_SET)
        assert not r.successful and "cannot be unset or deleted" in r.reason, r.reason
        # read-only at run time like every start-up parameter
        r = robot.set("live.allow_loosen", ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=False))
        assert not r.successful and "read-only while the node runs" in r.reason, r.reason
    finally:
        assert node.stop() == 0
    from mcap.reader import make_reader
    (f,) = log_dir.glob("*.mcap")
    with open(f, "rb") as fh:
        notes = [dict(m.metadata) for m in make_reader(fh).iter_metadata() if m.name == "parameter_change"]
    assert [(n["name"], n["value"], n["previous"]) for n in notes] == [
        ("max_delta", "DoubleArray([10.0, 10.0])", "DoubleArray([0.5, 0.5])"),
        ("sources.state.max_age", "Double(3600.0)", "Double(0.1)"),
    ], notes
