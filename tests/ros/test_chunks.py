"""A chunked, history-conditioned policy on a real ROS 2 graph: the node
publishes one action step per tick, stepping through each chunk the
sampler made for that seed and tick, and re-plans every H ticks."""
import json
import os
import subprocess
import sys

from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import Float64MultiArray

from flowpilot_py.testkit import BEST_EFFORT, CLI, DECISION, RELIABLE, ROOT, NodeProc, diag, wait_for

# Trace layout: [tick, decision, published, log_prob, stamp, action...]
POLICY = DECISION["policy"]


def params(tmp_path, model, obs_width, chunk="{boundary: replace}",
           action="{type: float64_multi_array, topic: /pointmass/cmd, interface: velocity}", log_dir=None):
    y = tmp_path / "p.yaml"
    y.write_text(f"""
flowpilot:
  ros__parameters:
    model: {model}
    rate_hz: 50.0
    startup_hold: 0.0
    warmup_ticks: 2
    safe_behaviour: {'hold' if 'joint_trajectory' in action else 'zero'}
    observations: [state]
    sources:
      state: {{type: float64_multi_array, topic: /pointmass/state, size: {obs_width}, max_age: 0.5}}
    action: {action}
    chunk: {chunk}
""" + (f"    log: {{dir: {log_dir}}}\n" if log_dir else ""))
    return str(y)


def check_chunk_steps(domain, peer, tmp_path, model, obs, horizon, h, step, n, log_dir=None):
    """Run `model` on a constant observation `obs` and check n policy ticks:
    each published step is step j of the chunk `flowpilot sample` gives for
    (seed 0, the tick j ticks earlier) on the padded history, consecutive
    ticks play consecutive steps, and the log-prob is the whole chunk's."""
    pub = peer.node.create_publisher(Float64MultiArray, "/pointmass/state", BEST_EFFORT)
    peer.node.create_timer(0.01, lambda: pub.publish(Float64MultiArray(data=obs)))
    trace = peer.collect(Float64MultiArray, "/flowpilot/action_trace", RELIABLE)
    cmds = peer.collect(Float64MultiArray, "/pointmass/cmd", RELIABLE)
    diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    node = NodeProc(domain, (), params=params(tmp_path, model, len(obs), log_dir=log_dir))
    try:
        wait_for(lambda: sum(1 for _, m in list(trace) if m.data[1] == POLICY) >= n, 20, f"{n} policy ticks")
        wait_for(lambda: diags, 5, "diagnostics")
        d = diag(diags)
    finally:
        assert node.stop() == 0
    assert cmds and all(len(m.data) == step for _, m in cmds), f"one {step}-D action step per message"
    assert d["chunk_exhausted_ticks"] == "0"
    chunks = {}

    def chunk(s):
        if s not in chunks:
            out = subprocess.run([CLI, "sample", str(model), "--obs", ",".join(map(repr, obs * horizon)), "--seed", "0",
                                  "--tick", str(s), "--json"], check=True, capture_output=True, text=True).stdout
            chunks[s] = json.loads(out)
        return chunks[s]

    entries = [list(m.data) for _, m in list(trace) if m.data[1] == POLICY][:n]
    steps = []
    for e in entries:
        tick, action = int(e[0]), e[5:5 + step]
        found = [j for j in range(h) if tick - j >= 0
                 and all(abs(a - b) < 1e-6 for a, b in zip(action, chunk(tick - j)["action"][step * j:step * (j + 1)]))]
        assert found, f"tick {tick}: {action} is no step of a chunk sampled in the last {h} ticks"
        # A step whose values clip (raw beyond ±1) can equal another chunk's:
        # the continuation of the previous tick's step is the one to check.
        cont = (steps[-1][1] + 1) % h if steps and steps[-1][0] == tick - 1 else None
        j = cont if cont in found else found[0]
        assert abs(e[3] - chunk(tick - j)["log_prob"]) < 1e-4, "the log-prob is the whole chunk's"
        steps.append((tick, j))
    for (t0, j0), (t1, j1) in zip(steps, steps[1:]):
        if t1 == t0 + 1:
            assert j1 == (j0 + 1) % h, steps
    assert sum(1 for _, j in steps if j == 0) >= n // h - 1, steps
    return steps


def test_a_chunked_history_policy_steps_through_the_samplers_chunks(domain, peer, tmp_path):
    model = tmp_path / "chunked.safetensors"
    subprocess.run([CLI, "new", str(model), "--obs", "2", "--act", "2", "--chunk", "4", "--obs-horizon", "2",
                    "--blocks", "2", "--hidden", "16", "--random", "--seed", "3"], check=True, capture_output=True)
    steps = check_chunk_steps(domain, peer, tmp_path, model, [0.3, -0.7], 2, 4, 2, 24, log_dir=tmp_path / "log")
    # The log holds one tick per record: one observation step, one action
    # step, and which chunk and step it came from, as the action trace says.
    from flowpilot_py.logs import read_log
    rec = read_log(str(tmp_path / "log"))
    assert rec["obs"].shape[1] == 2 and rec["action_applied"].shape[1] == 2
    by_tick = dict(zip(rec["tick"].tolist(), zip(rec["chunk"].tolist(), rec["chunk_index"].tolist())))
    for tick, j in steps:
        assert by_tick[tick][1] == j, (tick, j, by_tick[tick])
    chunks = [by_tick[t][0] for t, _ in steps]
    assert chunks == sorted(chunks) and len(set(chunks)) >= 5, chunks


def test_an_imported_pusht_layout_checkpoint_runs_in_16_step_chunks(domain, peer, tmp_path):
    # The paper's PyTorch NF-BC on PushT by layout (test_nf4rl.py writes it
    # as torch.save does): 16 x 2-D actions, 2 x 5-D observations.
    sys.path.insert(0, os.path.join(ROOT, "tests", "import"))
    from test_nf4rl import pusht_checkpoint
    ckpt, model = tmp_path / "pusht.pt", tmp_path / "pusht.safetensors"
    pusht_checkpoint(ckpt)
    subprocess.run([CLI, "import", "nf4rl", str(ckpt), "--kind", "torch-bc", "--chunk", "16", "--obs-horizon", "2",
                    "--out", str(model)], check=True, capture_output=True, env=dict(os.environ, FLOWPILOT_PYTHON=sys.executable))
    steps = check_chunk_steps(domain, peer, tmp_path, model, [0.1, -0.2, 0.3, 0.05, 0.4], 2, 16, 2, 40)
    assert any(j == 15 for _, j in steps), "a whole 16-step chunk was played"


def test_chunks_go_out_whole_as_joint_trajectories(domain, peer, tmp_path):
    from trajectory_msgs.msg import JointTrajectory
    model = tmp_path / "chunked.safetensors"
    subprocess.run([CLI, "new", str(model), "--obs", "2", "--act", "2", "--chunk", "4", "--blocks", "2", "--hidden", "16",
                    "--random", "--seed", "3"], check=True, capture_output=True)
    y = params(tmp_path, model, 2, chunk="{as_trajectory: true}",
               action="{type: joint_trajectory, topic: /arm/joint_trajectory, joints: [shoulder, elbow]}")
    obs = [0.3, -0.7]
    pub = peer.node.create_publisher(Float64MultiArray, "/pointmass/state", BEST_EFFORT)
    peer.node.create_timer(0.01, lambda: pub.publish(Float64MultiArray(data=obs)))
    trace = peer.collect(Float64MultiArray, "/flowpilot/action_trace", RELIABLE)
    trajs = peer.collect(JointTrajectory, "/arm/joint_trajectory", RELIABLE)
    node = NodeProc(domain, (), params=y)
    try:
        wait_for(lambda: len(trajs) >= 6, 20, "6 chunk trajectories")
    finally:
        assert node.stop() == 0

    def policy_ticks():
        return {int(m.data[0]): list(m.data[5:7]) for _, m in list(trace) if m.data[1] == POLICY}
    # only whole chunks were sent while the policy ran (safe actions before
    # the first observation and at shutdown are one point each)
    sizes = [len(m.points) for _, m in list(trajs)]
    first = sizes.index(4)
    body = sizes[first:-1] if sizes[-1] == 1 else sizes[first:]
    assert set(sizes[:first]) <= {1} and set(body) == {4}, sizes
    msgs = [m for _, m in list(trajs)][first:]
    assert list(msgs[0].joint_names) == ["shoulder", "elbow"]
    # The trace is another topic: its last entries may still be in flight.
    last = max(int(m.data[0]) for _, m in list(trace))
    wait_for(lambda: len(policy_ticks()) >= 16 and max(policy_ticks()) >= last, 5, "the trace of those ticks")
    policy = policy_ticks()
    for m in msgs[:3]:
        # its first point is the action of the policy tick that sampled it
        first = list(m.points[0].positions)
        s = [t for t, a in policy.items() if all(abs(x - y) < 1e-9 for x, y in zip(a, first))]
        assert len(s) == 1, (first, s)
        out = json.loads(subprocess.run([CLI, "sample", str(model), "--obs", ",".join(map(repr, obs)), "--seed", "0",
                                         "--tick", str(s[0]), "--json"], check=True, capture_output=True,
                                        text=True).stdout)["action"]
        got = [v for p in m.points for v in p.positions]
        assert all(abs(a - b) < 1e-6 for a, b in zip(got, out)), (got, out)
        # point j is reached at (j + 1) periods of 20 ms
        assert [p.time_from_start.nanosec for p in m.points] == [20_000_000 * (j + 1) for j in range(4)]
        # the three ticks after it sent nothing of their own: steps 1..3 of this chunk
        for j in range(1, 4):
            assert all(abs(x - y) < 1e-9 for x, y in zip(policy[s[0] + j], got[2 * j:2 * j + 2]))
