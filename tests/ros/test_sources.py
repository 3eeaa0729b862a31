"""Observation and action message types: JointState read by name in any
order, PoseStamped components, a goal source, JointTrajectory and Twist
outputs. The node's actions must equal the offline sampler's for the
observation vector the configuration defines."""
import json
import subprocess
import time

from geometry_msgs.msg import PoseStamped, Twist
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from flowpilot_py.testkit import BEST_EFFORT, CLI, RELIABLE, NodeProc, wait_for


def make_model(tmp_path, obs, goal, act):
    path = tmp_path / "m.safetensors"
    subprocess.run([CLI, "new", str(path), "--obs", str(obs), "--goal", str(goal), "--act", str(act),
                    "--blocks", "2", "--hidden", "32", "--random", "--seed", "3"], check=True, capture_output=True)
    return str(path)


def offline(model, obs, goal, seed, tick):
    args = [CLI, "sample", model, "--obs", ",".join(repr(v) for v in obs), "--seed", str(seed), "--tick", str(tick), "--json"]
    if goal:
        args += ["--goal", ",".join(repr(v) for v in goal)]
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)["action"]


def test_joint_state_pose_goal_to_joint_trajectory(domain, peer, tmp_path):
    # obs = [a.position, a.velocity, b.position, b.velocity] + pose [x, qz]; goal = [g0]
    model = make_model(tmp_path, 6, 1, 3)
    yaml = tmp_path / "p.yaml"
    yaml.write_text(f"""
/**:
  ros__parameters:
    model: {model}
    rate_hz: 50.0
    seed: 5
    startup_hold: 0.0
    warmup_ticks: 2
    observations: [arm, base]
    goals: [target]
    sources:
      arm: {{type: joint_state, topic: /joint_states, joints: [a, b], fields: [position, velocity]}}
      base: {{type: pose_stamped, topic: /base_pose, components: [x, qz]}}
      target: {{type: float64_multi_array, topic: /target, indices: [2], qos: reliable}}
    action:
      type: joint_trajectory
      topic: /arm_controller/joint_trajectory
      joints: [j1, j2, j3]
""")
    js = peer.node.create_publisher(JointState, "/joint_states", BEST_EFFORT)
    pose = peer.node.create_publisher(PoseStamped, "/base_pose", BEST_EFFORT)
    tgt = peer.node.create_publisher(Float64MultiArray, "/target", RELIABLE)

    def publish():
        m = JointState(name=["c", "b", "a"], position=[9.0, 0.2, 0.1], velocity=[9.0, -0.2, -0.1], effort=[])
        m.header.stamp = peer.node.get_clock().now().to_msg()
        js.publish(m)
        p = PoseStamped()
        p.header.stamp = peer.node.get_clock().now().to_msg()
        p.pose.position.x, p.pose.orientation.z, p.pose.orientation.w = 1.5, 0.3, 0.95
        pose.publish(p)
        tgt.publish(Float64MultiArray(data=[7.0, 8.0, 0.7]))
    peer.node.create_timer(0.02, publish)
    trace = peer.collect(Float64MultiArray, "/flowpilot/action_trace", RELIABLE)
    traj = peer.collect(JointTrajectory, "/arm_controller/joint_trajectory", RELIABLE)
    node = NodeProc(domain, (), params=str(yaml))
    try:
        wait_for(lambda: any(m.data[1] == 0 for _, m in list(trace)), 15, "a policy action")
        wait_for(lambda: len(traj) >= 5, 5, "trajectories")
        d = [list(m.data) for _, m in list(trace) if m.data[1] == 0][-1]
        # [tick, decision, published, log_prob, 3 source stamps, 3 actions]
        stamps, action = d[4:7], d[7:10]
        assert stamps[0] > 0 and stamps[1] > 0 and stamps[2] == 0, "header stamps traced; arrays have none"
        want = offline(model, [0.1, -0.1, 0.2, -0.2, 1.5, 0.3], [0.7], 5, int(d[0]))
        assert all(abs(a - b) < 1e-6 for a, b in zip(action, want)), (action, want)
        t = traj[-1][1]
        assert list(t.joint_names) == ["j1", "j2", "j3"] and len(t.points) == 1
        assert t.points[0].time_from_start.sec == 0 and t.points[0].time_from_start.nanosec == 20_000_000
        assert len(t.points[0].positions) == 3
    finally:
        assert node.stop() == 0


def test_twist_output_and_missing_joint_is_rejected(domain, peer, tmp_path):
    model = make_model(tmp_path, 1, 0, 2)
    yaml = tmp_path / "p.yaml"
    yaml.write_text(f"""
flowpilot:
  ros__parameters:
    model: {model}
    rate_hz: 50.0
    startup_hold: 0.0
    warmup_ticks: 2
    safe_behaviour: stop
    observations: [wheel]
    sources:
      wheel: {{type: joint_state, topic: /joint_states, joints: [wheel], fields: [velocity], max_age: 0.2}}
    action: {{type: twist, topic: /cmd_vel}}
""")
    js = peer.node.create_publisher(JointState, "/joint_states", BEST_EFFORT)
    state = {"name": "wheel"}
    peer.node.create_timer(0.02, lambda: js.publish(JointState(name=[state["name"]], position=[0.0], velocity=[0.5])))
    cmd = peer.collect(Twist, "/cmd_vel", RELIABLE)
    trace = peer.collect(Float64MultiArray, "/flowpilot/action_trace", RELIABLE)
    node = NodeProc(domain, (), params=str(yaml))
    try:
        wait_for(lambda: len(cmd) >= 5, 15, "twist commands")
        d = [list(m.data) for _, m in list(trace) if m.data[1] == 0][-3]
        want = offline(model, [0.5], [], 0, int(d[0]))
        assert all(abs(a - b) < 1e-6 for a, b in zip(d[5:7], want)), (d, want)
        # 2 action values map to (linear.x, angular.z)
        assert any(abs(m.linear.x - d[5]) < 1e-12 and abs(m.angular.z - d[6]) < 1e-12 and m.linear.y == 0.0
                   for _, m in list(cmd)), "the traced action was published as a Twist"
        state["name"] = "other"  # the configured joint disappears: rejected -> stale -> stop publishing
        time.sleep(0.6)
        n = len(cmd)
        time.sleep(0.5)
        assert len(cmd) == n, "safe_behaviour stop publishes nothing"
        assert [m.data[1] for _, m in list(trace)][-1] == 3
        assert node.alive()
    finally:
        assert node.stop() == 0
