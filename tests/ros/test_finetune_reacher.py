"""On-robot fine-tuning on real physics: the bundled BC flow on MuJoCo
Reacher (sim/mujoco_sim.py, real time, 50 Hz) is fine-tuned over ROS 2 by
the learner the node starts (config/reacher.yaml: step-synchronous log,
expert demos as prior data, critic pre-training, BC term, latent
temperature 0.3), through scripts/finetune_session.py exactly as
`scripts/run.sh reacher N --finetune` runs it.

The gain threshold comes from measured noise (docs/finetuning.md): the
20-episode evaluation of one fixed policy on the fixed seeds varies by
about ±0.3 between runs, and the gain after TRAIN episodes was measured
over several sessions; the test asserts a gain of more than MIN_GAIN.

The session's paired baseline is checked too: the scripted expert's
return that the sim reports beside each training episode (shadow_expert)
is the expert's own return on that very episode, as an expert-driven sim
run on the same seed measures it.
"""
import json
import os
import re
import subprocess
import sys

from flowpilot_py.testkit import CLI, ROOT, NodeProc

TRAIN = 200
MIN_GAIN = 1.0


def test_reacher_finetune_session_improves_on_the_bc_policy(domain, tmp_path):
    cfg = open(os.path.join(ROOT, "config", "reacher.yaml")).read()
    cfg = cfg.replace("~/.local/state/flowpilot/reacher", str(tmp_path))
    params = tmp_path / "reacher.yaml"
    params.write_text(cfg)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "sim", "record_demos.py"), "--task", "reacher",
                          "--episodes", "300", "--seed", "0", "--out", str(tmp_path / "demos.npz")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    node = NodeProc(domain, params=str(params))
    summary = tmp_path / "summary.json"
    try:
        out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "finetune_session.py"),
                              "--task", "reacher", "--train-episodes", str(TRAIN), "--eval-every", "0",
                              "--expert-return", "-4.97", "--ckpt-dir", str(tmp_path / "ckpt"),
                              "--plot", str(tmp_path / "curve.png"), "--summary", str(summary)],
                             env=env, capture_output=True, text=True, timeout=900)
    finally:
        rc = node.stop(timeout=30)
    print(out.stdout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert rc == 0
    s = json.loads(summary.read_text())
    # The report, from the log and the checkpoint directory, shows the
    # session's evaluations as its summary has them.
    rep = tmp_path / "report"
    subprocess.run([CLI, "report", str(tmp_path / "log"), str(tmp_path / "ckpt"), "--out", str(rep)],
                   check=True, capture_output=True)
    page = (rep / "index.html").read_text()
    table = page[page.index("<h2>Evaluations</h2>"):]
    rows = re.findall(r"<tr>" + r"<td>([^<]*)</td>" * 7 + r"</tr>", table[:table.index("</table>")])
    assert [r[0] for r in rows] == [e["label"] for e in s["evals"]], rows
    for r, e in zip(rows, s["evals"]):
        assert abs(float(r[3]) - e["return"]) <= 5e-4, (r, e["return"])
        m, se = (float(x) for x in r[4].split(" ± "))
        assert (m, se) == tuple(e["minus_expert"]), (r, e["minus_expert"])
        assert int(r[2]) == e["episodes"]
    # and marks each of them on the return plot, where the log has it
    marks = re.search(r"marked: (\d+) versions swapped in, (\d+) returns to an earlier version, (\d+) evaluations",
                      page)
    assert marks and int(marks.group(3)) == len(s["evals"]), marks and marks.group(0)
    assert int(marks.group(1)) >= 1, marks.group(0)
    assert int(s["log_dropped"]) == 0
    assert int(s["policy_swaps"]) >= 1 and s["learner_updates"] > 0
    assert (tmp_path / "curve.png").stat().st_size > 10_000, "learning curve written"
    # the session ends on the best version the return guard judged
    assert s["kept_version"] is not None and s["return_kept"] is not None, s.get("kept_version")
    # The paired baseline: one chunk (--eval-every 0) of TRAIN episodes, each
    # with the expert's return on the same episode (the session's training
    # chunk runs sim seed 1), equal to what the expert scores driving the sim.
    shadow = [e["expert_return"] for e in s["train"]]
    assert len(shadow) == TRAIN and all(x is not None for x in shadow)
    expert = subprocess.run([sys.executable, os.path.join(ROOT, "sim", "mujoco_sim.py"), "--ros-args",
                             "-p", "task:=reacher", "-p", f"episodes:={TRAIN}", "-p", "seed:=1",
                             "-p", "rate_hz:=1000.0", "-p", "expert:=true",
                             "-r", "/joint_states:=/shadow_check/joint_states", "-r", "/task/obs:=/shadow_check/obs",
                             "-r", "/reward:=/shadow_check/reward", "-r", "/episode:=/shadow_check/episode",
                             "-r", "/terminal:=/shadow_check/terminal"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert expert.returncode == 0, expert.stderr[-2000:]
    driven = [float(m) for m in re.findall(r"episode\s+\d+: return\s+(-?[\d.]+)", expert.stdout)]
    assert len(driven) == TRAIN
    worst = max(abs(a - b) for a, b in zip(shadow, driven))
    assert worst <= 0.011, f"shadow expert differs from the driven expert by up to {worst:.3f}"
    (chunk,) = s["online_vs_expert"]
    assert chunk["episodes"] == [1, TRAIN]
    assert abs(chunk["expert"] - sum(driven) / TRAIN) < 0.01
    assert abs(chunk["policy"] - chunk["expert"] - chunk["minus_expert"]) < 0.002
    # each evaluation is paired with the shadow expert on its own episodes
    assert all(e["minus_expert"] is not None for e in s["evals"]), [e["label"] for e in s["evals"]]
    assert s["change"] > MIN_GAIN, (
        f"fine-tuning changed the return by {s['change']:+.2f} "
        f"({s['return_before']:.2f} -> {s['return_after']:.2f}); needs > {MIN_GAIN}")
