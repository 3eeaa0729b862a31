"""The transition log opens in the standard tools: the MCAP files decode
with `mcap` + `mcap-ros2-support` (against the ros2msg schema they embed),
and the log directory is a rosbag2 bag (`metadata.yaml`) that `rosbags`
reads and deserializes, record for record as scripts/read_log.py does."""
import os
import shutil
from pathlib import Path

from std_msgs.msg import Float64MultiArray

from flowpilot_py.testkit import BEST_EFFORT, FILES, NodeProc, policy_file, wait_for
from flowpilot_py.logs import read_log  # noqa: E402


def policy_records(log_dir):
    """Policy ticks logged so far (the log starts with stale and warm-up
    ticks until discovery has brought the first observations)."""
    if not list(log_dir.glob("*.mcap")):
        return 0
    try:
        return int((read_log(str(log_dir))["decision"] == 0).sum())
    except Exception:  # no complete record yet
        return 0


def moving_state(peer):
    """A peer publishing the point mass's state at 100 Hz, moving slowly
    (so that the ticks differ)."""
    pub = peer.node.create_publisher(Float64MultiArray, "/pointmass/state", BEST_EFFORT)
    state = [0.05, -1.1]

    def tick():
        state[0] += 0.001
        pub.publish(Float64MultiArray(data=list(state)))
    peer.node.create_timer(0.01, tick)


def logged_run(domain, peer, log_dir, *args):
    """The bundled point-mass node logging into `log_dir` while a peer
    publishes a slowly moving state, until 20 policy ticks are logged."""
    moving_state(peer)
    node = NodeProc(domain, ("-p", f"log.dir:={log_dir}", *args))
    try:
        wait_for(lambda: policy_records(log_dir) >= 20, 15, "20 policy records in the log")
    finally:
        assert node.stop() == 0


def test_a_node_written_log_opens_in_mcap_ros2_and_rosbags(domain, peer, tmp_path):
    from mcap_ros2.reader import read_ros2_messages
    from rosbags.highlevel import AnyReader
    log_dir = tmp_path / "log"
    logged_run(domain, peer, log_dir, "-p", "log.flush_period:=0.02")
    ours = read_log(str(log_dir))
    n = len(ours["tick"])
    assert n > 20
    # mcap + mcap-ros2-support, against the schema text the file embeds
    (f,) = log_dir.glob("*.mcap")
    msgs = [m for m in read_ros2_messages(str(f))]
    assert {m.channel.topic for m in msgs} == {"/flowpilot/transitions"}
    assert {m.schema.name for m in msgs} == {"flowpilot_msgs/msg/Transition"}
    assert [m.ros_msg.tick for m in msgs] == ours["tick"].tolist()
    assert [list(m.ros_msg.obs) for m in msgs] == ours["obs"].tolist()
    assert [m.ros_msg.policy_digest for m in msgs][-1].startswith("sha256:")
    # the directory is a rosbag2 bag; rosbags registers the type from it
    meta = (log_dir / "metadata.yaml").read_text()
    assert f"message_count: {n}\n" in meta and "storage_identifier: mcap" in meta, meta
    with AnyReader([Path(log_dir)]) as reader:
        (conn,) = [c for c in reader.connections if c.topic == "/flowpilot/transitions"]
        assert conn.msgtype == "flowpilot_msgs/msg/Transition"
        got = [reader.deserialize(raw, conn.msgtype) for _, _, raw in reader.messages(connections=[conn])]
    assert [m.tick for m in got] == ours["tick"].tolist()
    import numpy as np
    lp = np.array([m.log_prob for m in got], dtype=np.float32)
    assert np.array_equal(lp, ours["log_prob"].astype(np.float32), equal_nan=True)
    for m, row in zip(got, ours["action_applied"]):
        if np.isnan(row).all():
            assert len(m.action_applied) == 0
        else:
            assert np.array_equal(np.asarray(m.action_applied), row)
    assert any(len(m.action_applied) for m in got), "some actions were applied"


def test_replay_reproduces_the_logged_samples_bit_for_bit(domain, peer, tmp_path):
    import json
    import subprocess
    from flowpilot_py.testkit import CLI, MODEL
    log_dir = tmp_path / "log"
    logged_run(domain, peer, log_dir, "-p", "temperature:=0.7")

    def replay(model):
        out = subprocess.run([CLI, "replay", str(log_dir), str(model), "--json"], check=True, capture_output=True,
                             text=True).stdout
        return json.loads(out)
    r = replay(MODEL)
    assert r["compared"] >= 10 and r["identical"] == r["compared"] == r["same_policy"], r
    assert r["first_diff_tick"] is None and r["max_action_diff"] == 0.0
    # another policy with the same dims: every sample differs, and says where
    other = tmp_path / "other.safetensors"
    subprocess.run([CLI, "new", str(other), "--obs", "2", "--act", "2", "--blocks", "2", "--hidden", "16", "--random",
                    "--seed", "5"], check=True, capture_output=True)
    r2 = replay(other)
    assert r2["identical"] == 0 and r2["same_policy"] == 0 and r2["max_action_diff"] > 1e-3, r2
    assert r2["first_diff_tick"] is not None


def test_report_writes_a_self_contained_page_with_plots_and_lineage(domain, peer, tmp_path):
    import base64
    import json
    import re
    import subprocess
    from flowpilot_py.testkit import CLI
    log_dir = tmp_path / "log"
    logged_run(domain, peer, log_dir)
    # a checkpoint directory: v2 accepted, v3 rolled back
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    digests = {}
    for v in (2, 3):
        p = ckpt / policy_file(v)
        subprocess.run([CLI, "new", str(p), "--obs", "2", "--act", "2", "--blocks", "2", "--hidden", "16",
                        "--random", "--seed", str(v), "--version", str(v)], check=True, capture_output=True)
        digests[v] = json.loads(subprocess.run([CLI, "sample", str(p), "--obs", "0,0", "--json"], check=True,
                                               capture_output=True, text=True).stdout)["digest"]
    (ckpt / FILES["accepted"]).write_text(f"revoked {digests[3]}\naccepted {ckpt / policy_file(2)}\n")
    out = tmp_path / "report"
    subprocess.run([CLI, "report", str(log_dir), str(ckpt), "--out", str(out)], check=True, capture_output=True)
    page = (out / "index.html").read_text()
    # every plot is inlined and is a PNG; nothing is fetched from elsewhere
    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    titles = [t for t, _ in imgs]
    assert {"Decision mix over time", "Applied action per dimension", "Exact log-prob of the sampled action",
            "Tick period minus its median", "Missed control periods (overruns) over time"} <= set(titles), titles
    for _, b in imgs:
        assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(re.findall(r"<img ", page)) == len(imgs), "an image that is not inlined"
    assert "0 policy" in page and "1 warm-up" in page
    # the session in numbers on top, safety events, episodes collapsed and as CSV
    assert page.index("<h2>Session</h2>") < page.index("<h2>Safety events</h2>") < page.index("<details>")
    summary = dict(re.findall(r"<tr><th>([^<]+)</th><td>([^<]+)</td></tr>", page))
    assert summary["versions (first → last)"] == "1 → 1", summary
    assert (out / "episodes.csv").read_text().startswith("episode,records,return,end_s,version\n")
    # the lineage: each version with its hot-swap status
    rows = re.findall(r"<tr><td>(\d+)</td><td>(sha256:[0-9a-f]+)</td><td>[^<]*</td><td>([a-z ]+)</td></tr>", page)
    assert [(int(v), s) for v, _, s in rows] == [(2, "accepted"), (3, "rolled back")], rows
    # Rendered in headless Chromium: every plot decodes, and a screenshot
    # of the page is not blank (kept beside the test logs).
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None and os.environ.get("FLOWPILOT_REQUIRE_CHROMIUM"):
        raise AssertionError("chromium is missing (.ci/run installs it)")
    if browser is not None:
        url = (out / "index.html").as_uri()
        flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--virtual-time-budget=5000"]
        dom = subprocess.run(flags + ["--dump-dom", url], check=True, capture_output=True, text=True,
                             timeout=120).stdout
        m = re.search(r'data-images="(\d+)/(\d+)"', dom)
        assert m, "the page's load handler did not run"
        assert m.group(1) == m.group(2) == str(len(imgs)), f"{m.group(0)}: an image the browser could not decode"
        shot = tmp_path / "report.png"
        subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,2400", url], check=True,
                       capture_output=True, timeout=120)
        import numpy as np
        from PIL import Image
        px = np.asarray(Image.open(shot).convert("RGB"))
        assert px.shape[:2] == (2400, 1200), px.shape
        colours = len(np.unique(px.reshape(-1, 3), axis=0))
        assert colours > 50, f"a blank page: {colours} colours"
        keep = os.environ.get("FLOWPILOT_TEST_LOGS")
        if keep:
            shutil.copy(shot, os.path.join(keep, "report_screenshot.png"))


def test_report_every_keeps_the_page_live_while_the_node_logs_and_ends_with_the_session(domain, peer, tmp_path):
    """`flowpilot report --every` beside a running node: the page reloads
    itself and grows with the log (the reader follows a file still being
    written); when the node stops and closes its log, the command writes
    the final page (no reload) by itself and exits; the page's missed
    periods are at most the node's own overrun count."""
    import re
    import subprocess
    import time
    from flowpilot_py.testkit import CLI
    log_dir, out = tmp_path / "log", tmp_path / "report"
    moving_state(peer)
    # started before the node: it waits for the first records
    rep = subprocess.Popen([CLI, "report", str(log_dir), "--out", str(out), "--every", "0.5"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    node = NodeProc(domain, ("-p", f"log.dir:={log_dir}"))
    page = out / "index.html"

    def records():
        try:
            m = re.search(r"<p>(\d+) records from", page.read_text())
        except FileNotFoundError:
            return 0
        return int(m.group(1)) if m else 0
    try:
        wait_for(lambda: page.exists(), 10, "the first page")
        wait_for(lambda: records() > 0, 20, "a page with records")
        first = records()
        live = page.read_text()
        assert '<meta http-equiv="refresh" content="0.5">' in live and 'class="live"' in live
        wait_for(lambda: records() > first + 50, 20, "the page growing with the log")
        assert rep.poll() is None, "the live report ended while the node runs"
    finally:
        assert node.stop() == 0
    t0 = time.monotonic()
    stdout, stderr = rep.communicate(timeout=15)
    assert rep.returncode == 0, stderr
    assert "(final)" in stdout, stdout
    took = time.monotonic() - t0
    final = page.read_text()
    assert "refresh" not in final and 'class="live"' not in final
    # every record the node logged is on the final page
    assert records() == len(read_log(str(log_dir))["tick"]), (records(), took)
    assert not list(out.glob("*.part")), "a half-written page left behind"
    summary = dict(re.findall(r"<tr><th>([^<]+)</th><td>([^<]+)</td></tr>", final))
    missed = int(summary["missed control periods (overruns)"])
    overruns = [int(x) for x in re.findall(r"overruns\W+(\d+)", re.sub(r"\x1b\[[0-9;]*m", "", node.output()))]
    assert overruns, "the node's loop summary names its overruns"
    assert missed <= overruns[-1], (missed, overruns[-1])
