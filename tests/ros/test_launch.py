"""The launch file, run as declared against the colcon install.

`ros2 launch` is not installable from PyPI, so this test does what it would:
resolve the launch file's arguments and substitutions against the colcon
install's ament index, find the declared executable under lib/<pkg>, pass
the declared parameter file and parameters, and check the node it starts
controls the point-mass topic. scripts/test.sh builds the install with
`colcon build` (colcon-ros-cargo + cargo-ament-build) first.
"""
import os
import re
import signal
import subprocess
import time
import xml.etree.ElementTree as ET

from std_msgs.msg import Float64MultiArray

from conftest import BEST_EFFORT, RELIABLE, ROOT, wait_for

INSTALL = os.path.join(ROOT, "target", "colcon_ws", "install")


def pkg_prefix(pkg):
    """Like ament_index: the install prefix holding resource_index/packages/<pkg>."""
    for prefix in [os.path.join(INSTALL, d) for d in os.listdir(INSTALL)]:
        if os.path.exists(os.path.join(prefix, "share", "ament_index", "resource_index", "packages", pkg)):
            return prefix
    raise AssertionError(f"package {pkg} not in the ament index under {INSTALL}")


def resolve(text, args):
    def sub(m):
        kind, val = m.group(1), m.group(2).strip()
        if kind == "find-pkg-share":
            return os.path.join(pkg_prefix(val), "share", val)
        if kind == "var":
            return args[val]
        raise AssertionError(f"unsupported substitution $({kind} ...)")
    return re.sub(r"\$\(([\w-]+) ([^)]*)\)", sub, text)


def test_launch_file_runs_as_declared(domain, peer):
    assert os.path.isdir(INSTALL), "no colcon install: run scripts/test.sh"
    share = os.path.join(pkg_prefix("flowpilot"), "share", "flowpilot")
    root = ET.parse(os.path.join(share, "launch", "flowpilot.launch.xml")).getroot()
    args = {}
    for a in root.findall("arg"):
        args[a.get("name")] = resolve(a.get("default"), args)
    nodes = root.findall("node")
    assert len(nodes) == 1
    n = nodes[0]
    exe = os.path.join(pkg_prefix(n.get("pkg")), "lib", n.get("pkg"), n.get("exec"))
    assert os.access(exe, os.X_OK), exe
    cmd = [exe, "--ros-args", "-r", f"__node:={n.get('name')}"]
    for p in n.findall("param"):
        if p.get("from"):
            f = resolve(p.get("from"), args)
            assert os.path.isfile(f), f
            cmd += ["--params-file", f]
        else:
            cmd += ["-p", f"{p.get('name')}:={resolve(p.get('value'), args)}"]
    # the declared defaults point into the install, not the source tree
    assert args["model"].startswith(INSTALL) and os.path.isfile(args["model"])

    pub = peer.node.create_publisher(Float64MultiArray, "/pointmass/state", BEST_EFFORT)
    peer.node.create_timer(0.01, lambda: pub.publish(Float64MultiArray(data=[0.0, -1.2])))
    cmds = peer.collect(Float64MultiArray, "/pointmass/cmd", RELIABLE)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    proc = subprocess.Popen(cmd, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: sum(1 for _, m in list(cmds) if any(v != 0.0 for v in m.data)) >= 20, 15,
                 "20 policy commands from the launched node")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out[-2000:]
    assert "policy loaded" in out
