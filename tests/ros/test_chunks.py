"""A chunked, history-conditioned policy on a real ROS 2 graph: the node
publishes one action step per tick, stepping through each chunk the
sampler made for that seed and tick, and re-plans every H ticks."""
import json
import subprocess
import time

from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import Float64MultiArray

from conftest import BEST_EFFORT, CLI, RELIABLE, NodeProc, diag, wait_for

OBS = [0.3, -0.7]
H, STEP = 4, 2
# Trace layout: [tick, decision, published, log_prob, stamp, action...]
POLICY = 0


def params(tmp_path, model, boundary="replace"):
    y = tmp_path / "p.yaml"
    y.write_text(f"""
flowpilot:
  ros__parameters:
    model: {model}
    rate_hz: 50.0
    startup_hold: 0.0
    warmup_ticks: 2
    safe_behaviour: zero
    observations: [state]
    sources:
      state: {{type: float64_multi_array, topic: /pointmass/state, size: 2, max_age: 0.5}}
    action: {{type: float64_multi_array, topic: /pointmass/cmd}}
    chunk: {{boundary: {boundary}}}
""")
    return str(y)


def test_a_chunked_history_policy_steps_through_the_samplers_chunks(domain, peer, tmp_path):
    model = tmp_path / "chunked.safetensors"
    subprocess.run([CLI, "new", str(model), "--obs", "2", "--act", str(STEP), "--chunk", str(H), "--obs-horizon", "2",
                    "--blocks", "2", "--hidden", "16", "--random", "--seed", "3"], check=True, capture_output=True)
    pub = peer.node.create_publisher(Float64MultiArray, "/pointmass/state", BEST_EFFORT)
    peer.node.create_timer(0.01, lambda: pub.publish(Float64MultiArray(data=OBS)))
    trace = peer.collect(Float64MultiArray, "/flowpilot/action_trace", RELIABLE)
    cmds = peer.collect(Float64MultiArray, "/pointmass/cmd", RELIABLE)
    diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    node = NodeProc(domain, (), params=params(tmp_path, model))
    try:
        wait_for(lambda: sum(1 for _, m in list(trace) if m.data[1] == POLICY) >= 24, 20, "24 policy ticks")
        wait_for(lambda: diags, 5, "diagnostics")
        d = diag(diags)
    finally:
        assert node.stop() == 0
    assert cmds and all(len(m.data) == STEP for _, m in cmds), "one 2-D action step per message"
    assert d["chunk_exhausted_ticks"] == "0"
    # The observation is constant, so the history is [OBS, OBS] at every
    # tick; the chunk sampled at tick s is `flowpilot sample` at (seed 0, s).
    chunks = {}

    def chunk(s):
        if s not in chunks:
            out = subprocess.run([CLI, "sample", str(model), "--obs", ",".join(map(repr, OBS + OBS)), "--seed", "0",
                                  "--tick", str(s), "--json"], check=True, capture_output=True, text=True).stdout
            chunks[s] = json.loads(out)
        return chunks[s]

    entries = [list(m.data) for _, m in list(trace) if m.data[1] == POLICY][:24]
    steps = []
    for e in entries:
        tick, action = int(e[0]), e[5:5 + STEP]
        found = [j for j in range(H) if tick - j >= 0
                 and all(abs(a - b) < 1e-6 for a, b in zip(action, chunk(tick - j)["action"][STEP * j:STEP * (j + 1)]))]
        assert found, f"tick {tick}: {action} is no step of a chunk sampled in the last {H} ticks"
        j = found[0]
        assert abs(e[3] - chunk(tick - j)["log_prob"]) < 1e-4, "the log-prob is the whole chunk's"
        steps.append((tick, j))
    # consecutive ticks play consecutive steps; a new chunk every H ticks
    for (t0, j0), (t1, j1) in zip(steps, steps[1:]):
        if t1 == t0 + 1:
            assert j1 == (j0 + 1) % H, steps
    assert sum(1 for _, j in steps if j == 0) >= 24 // H - 1, steps
