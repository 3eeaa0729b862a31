"""The launch file, run as declared against the colcon install.

`ros2 launch` is not installable from PyPI, so scripts/launch_run.py does
what it would: resolve the launch file's arguments and substitutions against
the colcon install's ament index, find the declared executable under
lib/<pkg>, and pass the declared parameter file and parameters. This test
runs exactly that command and checks the node controls the point-mass topic. scripts/test.sh builds the install with
`colcon build` (colcon-ros-cargo + cargo-ament-build) first.
"""
import os
import signal
import subprocess

from std_msgs.msg import Float64MultiArray

from flowpilot_py.testkit import BEST_EFFORT, RELIABLE, ROOT, wait_for

INSTALL = os.path.join(ROOT, "target", "colcon_ws", "install")
from flowpilot_py import launch as launch_run


def test_launch_file_runs_as_declared(domain, peer):
    assert os.path.isdir(INSTALL), "no colcon install: run scripts/test.sh"
    share = launch_run.share_dir("flowpilot", INSTALL)
    assert share.startswith(INSTALL)
    cmds = launch_run.commands(os.path.join(share, "launch", "flowpilot.launch.xml"), {}, INSTALL)
    assert len(cmds) == 1
    cmd = cmds[0]
    assert cmd[0] == os.path.join(INSTALL, "flowpilot", "lib", "flowpilot", "flowpilot_node") and os.access(cmd[0], os.X_OK)
    # the learner ~/finetune starts is installed beside the node
    assert os.access(os.path.join(INSTALL, "flowpilot", "lib", "flowpilot", "flowpilot"), os.X_OK)
    params = cmd[cmd.index("--params-file") + 1]
    model = [c for c in cmd if c.startswith("model:=")][0][len("model:="):]
    # the declared defaults resolve into the install, not the source tree
    assert params.startswith(INSTALL) and os.path.isfile(params), params
    assert model.startswith(INSTALL) and os.path.isfile(model), model

    pub = peer.node.create_publisher(Float64MultiArray, "/pointmass/state", BEST_EFFORT)
    peer.node.create_timer(0.01, lambda: pub.publish(Float64MultiArray(data=[0.0, -1.2])))
    cmds_seen = peer.collect(Float64MultiArray, "/pointmass/cmd", RELIABLE)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    proc = subprocess.Popen(cmd, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: sum(1 for _, m in list(cmds_seen) if any(v != 0.0 for v in m.data)) >= 20, 15,
                 "20 policy commands from the launched node")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out[-2000:]
    assert "policy loaded" in out
