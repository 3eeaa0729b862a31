"""The cross-process contract (crates/core/src/contract.rs) as the
`flowpilot` binary prints it (`flowpilot contract --json`): decision and
stop codes, log metadata keys, checkpoint file names, flags, QoS by role,
fleet topics. Read once, on first use; nothing here spells a code or a
file name."""
import functools
import json
import subprocess

from .paths import CLI


@functools.cache
def contract():
    out = subprocess.run([CLI, "contract", "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def decision(name):
    """A decision code by name ("policy", "stale", "e_stop", ...)."""
    return contract()["decision"][name]


def stop(name):
    """A stop code by name ("none", "hold_measured", "zero", ...)."""
    return contract()["stop"][name]


def policy_file(version):
    """A checkpoint directory's file name for `version`."""
    f = contract()["files"]
    return f"{f['policy_prefix']}{version:0{f['policy_digits']}d}.{f['policy_ext']}"


def learner_series():
    """The learner's metric series, each on `~/learner/<name>`."""
    return contract()["learner_series"]


def qos(role):
    """The QoS of a contract role (e.g. "fleet_policy") as an rclpy profile."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    q = contract()["qos"][role]
    return QoSProfile(depth=q["depth"], history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE if q["reliable"] else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if q["transient_local"] else DurabilityPolicy.VOLATILE)
