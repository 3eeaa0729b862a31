"""Access control on the graph: SROS2 (DDS Security) with the shipped
policy, security/policy.xml, and its keystore script,
security/make_keystore.sh (docs/security.md).

- The policy grants the node every topic and service a node with all
  features on creates (checked against the live graph), and the restricted
  interfaces only to the named peers. Runs everywhere.
- A node started with ROS_SECURITY_ENABLE=true and Enforce never runs open:
  it runs secured, or (the embedded PyPI ROS 2, whose Fast DDS is built
  without DDS Security) it refuses to start. Runs everywhere.
- Enforcement: a real node under Enforce with `--enclave /flowpilot`; the
  operator may release the e-stop, set parameters and transition the node;
  the learner's enclave, the robot's own enclave (a stolen robot key), a
  peer with a certificate from another CA and an unauthenticated peer may
  not, and the node's state shows it. Needs a ROS 2
  whose Fast DDS has DDS Security and sros2 (a system ROS 2 install); skips
  with the reason elsewhere, fails instead with FLOWPILOT_REQUIRE_SROS2=1.
"""
import fnmatch
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter as RclpyParameter
from std_srvs.srv import SetBool, Trigger

from flowpilot_py.testkit import RELIABLE, ROOT, NodeProc, Peer, wait_for

POLICY = os.path.join(ROOT, "security", "policy.xml")
MAKE_KEYSTORE = os.path.join(ROOT, "security", "make_keystore.sh")
SECURITY_VARS = ("ROS_SECURITY_ENABLE", "ROS_SECURITY_STRATEGY", "ROS_SECURITY_KEYSTORE", "ROS_SECURITY_ENCLAVE_OVERRIDE")
# What rmw_fastrtps says when its Fast DDS was built with -DSECURITY=OFF.
NO_SECURITY_LIBS = "doesn't have the security libraries"

# A valid ed25519 public key (RFC 8032, test 1): a fleet link that takes
# policies needs one (docs/security.md, "Signed policies and keys").
TRUSTED_KEY = "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="

# The interfaces only the operator may use (issue 26, item 4).
RESTRICTED = ("reset_estop", "change_state", "rollback", "keep_best", "finetune",
              "set_parameters", "set_parameters_atomically")


# ---------------------------------------------------------------- the policy

def _resolve(name, ns, node):
    """A policy name as sros2's permissions.xsl resolves it."""
    ns = ns if ns.endswith("/") else ns + "/"
    if name.startswith("/"):
        return name
    if name.startswith("~"):
        return ns + node + name[1:]
    return ns + name


@functools.lru_cache(maxsize=None)
def grants():
    """{enclave: {"publish"|"subscribe"|"request"|"reply": {name pattern}}}."""
    out = {}
    for enclave in ET.parse(POLICY).getroot().iter("enclave"):
        g = out.setdefault(enclave.get("path"), {k: set() for k in ("publish", "subscribe", "request", "reply")})
        for profile in enclave.iter("profile"):
            for lst in profile:
                assert lst.tag in ("topics", "services"), lst.tag
                names = {_resolve(e.text.strip(), profile.get("ns"), profile.get("node")) for e in lst}
                for attr, rule in lst.attrib.items():
                    assert rule == "ALLOW", f"{enclave.get('path')}: only ALLOW rules are expected ({attr}={rule})"
                    g[attr] |= names
    return out


def allowed(enclave, what, name):
    return any(fnmatch.fnmatchcase(name, pat) for pat in grants()[enclave][what])


def who(what, name):
    return {e for e in grants() if allowed(e, what, name)}


def test_policy_gives_the_restricted_interfaces_only_to_named_peers():
    g = grants()
    assert set(g) == {"/flowpilot", "/operator", "/teleop", "/estop", "/driver", "/learner"}
    for s in RESTRICTED:
        assert who("request", f"/flowpilot/{s}") == {"/operator"}, s
        assert who("reply", f"/flowpilot/{s}") == {"/flowpilot"}, s
    # Stopping is easy for every enclave with a human or a safety role;
    # releasing is not (the release is a separate service, above).
    stoppers = {"/operator", "/teleop", "/estop", "/driver"}
    assert who("publish", "/flowpilot/estop") == stoppers
    assert who("request", "/flowpilot/estop") == stoppers
    # The fleet: only the learner feeds robots, only the robot feeds the learner.
    for t in ("/flowpilot/fleet/acks", "/flowpilot/fleet/policy", "/flowpilot/fleet/policy/r1"):
        assert who("publish", t) == {"/learner"}, t
        assert who("subscribe", t) == {"/flowpilot"}, t
    for t in ("/flowpilot/fleet/records", "/flowpilot/fleet/revoked"):
        assert who("publish", t) == {"/flowpilot"}, t
        assert who("subscribe", t) == {"/learner"}, t
    # What drives the robot: the human's action, the observations, the command.
    assert who("publish", "/flowpilot/override") == {"/teleop"}
    assert who("publish", "/pointmass/state") == {"/driver"}
    assert who("publish", "/pointmass/cmd") == {"/flowpilot"}
    # The node requests nothing; the learner touches nothing of the node's.
    assert not g["/flowpilot"]["request"]
    assert not [s for s in g["/learner"]["request"] if s.startswith("/flowpilot/")]
    # No catch-all grant anywhere (the one wildcard: a robot's own policy topic).
    for e, rules in g.items():
        for what, names in rules.items():
            wild = [n for n in names if "*" in n and n != "/flowpilot/fleet/policy/*"]
            assert not wild, (e, what, wild)


def test_policy_grants_the_node_every_interface_it_creates(domain, peer, tmp_path):
    """With every feature on (log, hot swap, rewards, episodes, override,
    fleet link), each topic the node publishes or subscribes and each
    service it serves is in the /flowpilot grant: under Enforce the node
    is refused nothing of its own. And `--enclave` reaches rcl."""
    node = NodeProc(domain, ("--enclave", "/flowpilot",
                             "-p", f"log.dir:={tmp_path / 'log'}", "-p", f"hot_swap.dir:={tmp_path / 'ckpt'}",
                             "-p", "log.reward_topic:=/reward", "-p", "log.episode_topic:=/episode",
                             "-p", "log.terminal_topic:=/terminal", "-p", "override.topic:=~/override",
                             "-p", "fleet.robot_id:=r1", "-p", f"hot_swap.trusted_keys:=[\"{TRUSTED_KEY}\"]"))
    n = peer.node
    try:
        def graph():
            return (sorted(t for t, _ in n.get_publisher_names_and_types_by_node("flowpilot", "/")),
                    sorted(t for t, _ in n.get_subscriber_names_and_types_by_node("flowpilot", "/")),
                    sorted(s for s, _ in n.get_service_names_and_types_by_node("flowpilot", "/")))
        # the graph settles once the node has created everything
        last, since = None, time.monotonic()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert node.alive(), node.output()
            try:
                g = graph()
            except Exception:  # the node is not discovered yet
                g = None
            if g != last:
                last, since = g, time.monotonic()
            elif g and len(g[2]) >= len(RESTRICTED) and time.monotonic() - since > 1.5:
                break
            time.sleep(0.1)
        pubs, subs, srvs = last
        assert ("flowpilot", "/", "/flowpilot") in n.get_node_names_and_namespaces_with_enclaves()
        for t in ("/flowpilot/fleet/records", "/pointmass/cmd", "/diagnostics"):
            assert t in pubs, pubs
        for t in ("/flowpilot/estop", "/flowpilot/fleet/policy", "/flowpilot/override", "/reward"):
            assert t in subs, subs
        for s in RESTRICTED + ("estop",):
            assert f"/flowpilot/{s}" in srvs, srvs
        missing = ([("publish", t) for t in pubs if not allowed("/flowpilot", "publish", t)]
                   + [("subscribe", t) for t in subs if not allowed("/flowpilot", "subscribe", t)]
                   + [("reply", s) for s in srvs if not allowed("/flowpilot", "reply", s)])
        assert not missing, f"security/policy.xml does not grant /flowpilot: {missing}"
    finally:
        node.stop()


# ------------------------------------------------- what this ROS 2 supports

def _sros2_available():
    if shutil.which("ros2"):
        r = subprocess.run(["ros2", "security", "--help"], capture_output=True, text=True)
        if r.returncode == 0:
            return True
    r = subprocess.run([sys.executable, "-c", "import sros2.api._artifact_generation"], capture_output=True)
    return r.returncode == 0


_PROBE = """
import rclpy
rclpy.init(args=["probe", "--ros-args", "--enclave", "/probe"])
try:
    rclpy.create_node("probe")
    print("SECURE NODE CREATED")
except Exception as e:
    print(e)
"""


@functools.lru_cache(maxsize=None)
def security_unavailable():
    """None where DDS Security can be enforced here, else why not."""
    with tempfile.TemporaryDirectory() as ks:
        os.makedirs(os.path.join(ks, "enclaves", "probe"))
        return _probe(ks)


def _probe(ks):
    env = {k: v for k, v in os.environ.items() if k not in SECURITY_VARS}
    env.update(ROS_SECURITY_ENABLE="true", ROS_SECURITY_STRATEGY="Enforce", ROS_SECURITY_KEYSTORE=ks,
               ROS_DOMAIN_ID="199")
    r = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60)
    if NO_SECURITY_LIBS in r.stdout + r.stderr:
        return ("this ROS 2 has no DDS Security: its Fast DDS was built with SECURITY=OFF, as the embedded "
                f"PyPI wheels are (rmw_fastrtps: \"This Fast DDS version {NO_SECURITY_LIBS}\"); enforcement "
                "needs a system ROS 2 with sros2 (docs/security.md)")
    if not _sros2_available():
        return "sros2 ('ros2 security' or the sros2 Python package) is not installed: it is not on PyPI"
    return None


def _skip_or_fail(reason):
    if os.environ.get("FLOWPILOT_REQUIRE_SROS2"):
        pytest.fail(f"FLOWPILOT_REQUIRE_SROS2 is set but {reason}")
    pytest.skip(reason)


def make_keystore(path, domain, policy=POLICY):
    env = {k: v for k, v in os.environ.items() if k not in SECURITY_VARS}
    env["ROS_DOMAIN_ID"] = str(domain)
    r = subprocess.run([MAKE_KEYSTORE, str(path), policy], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return path


def secure_env(keystore):
    return dict(ROS_SECURITY_ENABLE="true", ROS_SECURITY_STRATEGY="Enforce", ROS_SECURITY_KEYSTORE=str(keystore))


def test_a_node_with_security_enforced_never_runs_open(domain, tmp_path, monkeypatch):
    """Enforce with a keystore: the node runs secured, or refuses to start
    (the embedded ROS 2: no DDS Security in its Fast DDS). Either way an
    unauthenticated peer sees nothing of it."""
    for k in SECURITY_VARS:
        monkeypatch.delenv(k, raising=False)
    reason = security_unavailable()
    ks = tmp_path / "keystore"
    if _sros2_available():
        make_keystore(ks, domain)
    else:
        # rcl needs only the enclave's directory to hand the keystore to
        # the middleware; a middleware with security would then refuse the
        # missing files (Enforce): the node could not run open either way.
        (ks / "enclaves" / "flowpilot").mkdir(parents=True)
    node = NodeProc(domain, ("--enclave", "/flowpilot"), env=secure_env(ks))
    open_peer = Peer(domain)
    diags = open_peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    try:
        if reason and NO_SECURITY_LIBS in reason:
            rc = node.p.wait(timeout=15)
            assert rc != 0 and "creating the node" in node.output(), node.output()
        time.sleep(4.0)
        names = [n for n, _ in open_peer.node.get_node_names_and_namespaces()]
        assert "flowpilot" not in names, names
        assert not diags, "an unauthenticated peer heard the node's /diagnostics"
        if not reason:
            assert node.alive(), node.output()
    finally:
        open_peer.close()
        node.stop()


# ----------------------------------------------------------- enforcement

class SecurePeer:
    """An rclpy node in an enclave of a keystore (or, without one, an
    unauthenticated peer), spun on a background thread."""

    def __init__(self, domain, name, keystore=None, enclave=None, **node_kwargs):
        saved = {k: os.environ.pop(k, None) for k in SECURITY_VARS}
        try:
            args = None
            if keystore:
                os.environ.update(secure_env(keystore))
                args = [name, "--ros-args", "--enclave", enclave]
            self.ctx = rclpy.Context()
            rclpy.init(context=self.ctx, domain_id=domain, args=args)
            self.node = rclpy.create_node(name, context=self.ctx, **node_kwargs)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None)
                if v is not None:
                    os.environ[k] = v
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self._stop = False
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while not self._stop and self.ctx.ok():
            self.ex.spin_once(timeout_sec=0.01)

    def close(self):
        self._stop = True
        self.thread.join(timeout=2)
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


def _call(peer, srv_type, name, req, timeout=10.0):
    cli = peer.node.create_client(srv_type, name)
    assert cli.wait_for_service(timeout_sec=timeout), f"{name} not available to {peer.node.get_name()}"
    fut = cli.call_async(req)
    wait_for(fut.done, timeout, f"{name} reply")
    return fut.result()


def _double(name, v):
    return Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=v))


def _attempts(peers, wait=5.0):
    """Each peer tries to release the e-stop, set a parameter and deactivate
    the node. Returns {(peer, service): what happened}: a response object
    if the node answered, else why not."""
    reqs = {
        "/flowpilot/reset_estop": (Trigger, Trigger.Request()),
        "/flowpilot/set_parameters": (SetParameters, SetParameters.Request(parameters=[_double("temperature", 0.9)])),
        "/flowpilot/change_state": (ChangeState, ChangeState.Request(
            transition=Transition(id=Transition.TRANSITION_DEACTIVATE))),
    }
    clients, out = {}, {}
    for label, p in peers.items():
        for name, (typ, _) in reqs.items():
            try:
                clients[(label, name)] = p.node.create_client(typ, name)
            except Exception as e:  # DDS access control refuses the request writer
                out[(label, name)] = f"client refused: {e}"
    futures, deadline = {}, time.monotonic() + wait
    while time.monotonic() < deadline:
        for key, cli in clients.items():
            if key not in futures and cli.service_is_ready():
                futures[key] = cli.call_async(reqs[key[1]][1])
        time.sleep(0.05)
    for key in clients:
        if key not in futures:
            out[key] = "service never discovered"
        elif not futures[key].done():
            out[key] = "no answer"
        else:
            out[key] = futures[key].result()
    return out


def test_only_the_operator_may_release_reconfigure_or_transition(domain, tmp_path, monkeypatch):
    for k in SECURITY_VARS:
        monkeypatch.delenv(k, raising=False)
    reason = security_unavailable()
    if reason:
        _skip_or_fail(reason)
    ks = make_keystore(tmp_path / "keystore", domain)
    # the same enclave names, certified by another CA: a peer that made its
    # own keystore and claims to be the operator
    foreign = make_keystore(tmp_path / "foreign", domain)
    node = NodeProc(domain, ("--enclave", "/flowpilot", "-p", "diagnostics_period:=0.2"), env=secure_env(ks))
    peers = {}
    try:
        op = peers["operator"] = SecurePeer(domain, "operator", ks, "/operator")
        peers["learner"] = SecurePeer(domain, "flowpilot_fleet", ks, "/learner")
        peers["foreign CA"] = SecurePeer(domain, "operator", foreign, "/operator")
        # the robot's own key, stolen: a second process in the /flowpilot
        # enclave (no services of its own: that grant serves only the node's)
        peers["robot key"] = SecurePeer(
            domain, "robot_key_thief", ks, "/flowpilot", start_parameter_services=False,
            parameter_overrides=[RclpyParameter("start_type_description_service", value=False)])
        peers["unauthenticated"] = SecurePeer(domain, "intruder")
        diags = []
        op.node.create_subscription(DiagnosticArray, "/diagnostics",
                                    lambda m: diags.append({v.key: v.value for v in m.status[0].values}), RELIABLE)

        def state():
            return _call(op, GetState, "/flowpilot/get_state", GetState.Request()).current_state.label

        def temperature():
            r = _call(op, GetParameters, "/flowpilot/get_parameters", GetParameters.Request(names=["temperature"]))
            return r.values[0].double_value

        # The operator reaches the node and engages the e-stop.
        assert _call(op, SetBool, "/flowpilot/estop", SetBool.Request(data=True), timeout=20).success
        wait_for(lambda: diags and diags[-1].get("estop") == "true", 5, "e-stop engaged")
        assert state() == "active"
        tau = temperature()

        outsiders = {k: v for k, v in peers.items() if k != "operator"}
        results = _attempts(outsiders)
        answered = {k: v for k, v in results.items() if not isinstance(v, str)}
        assert not answered, f"the node answered a peer outside the policy: {answered}"

        # What the robot runs is unchanged: still stopped, same parameter, still active.
        time.sleep(0.5)
        assert diags[-1].get("estop") == "true"
        assert temperature() == tau
        assert state() == "active"
        assert node.alive(), node.output()

        # The operator may do each of them.
        r = _call(op, SetParameters, "/flowpilot/set_parameters",
                  SetParameters.Request(parameters=[_double("temperature", 0.3)]))
        assert r.results[0].successful, r.results[0].reason
        assert temperature() == pytest.approx(0.3)
        r = _call(op, Trigger, "/flowpilot/reset_estop", Trigger.Request())
        assert r.success, r.message
        wait_for(lambda: diags[-1].get("estop") == "false", 5, "e-stop released")
        r = _call(op, ChangeState, "/flowpilot/change_state",
                  ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE)), timeout=20)
        assert r.success
        assert state() == "inactive"
    finally:
        for p in peers.values():
            p.close()
        node.stop()
