"""Records only from the robots they name (docs/security.md, "Robot keys"):
a real flowpilot_node streaming as robot r1 (`fleet.signing_key`), a real
`flowpilot_fleet --robot-keys` listing r1's public key, and a foreign rclpy
peer on the graph that captures r1's genuine batches on
/flowpilot/fleet/records and publishes forgeries of them:

- (a) r1's batch moved a million positions ahead, unsigned (before: stored
  as a gap, r1's position jumped there and every genuine record after it
  was dropped as a duplicate);
- (b) the same move keeping r1's genuine signature (a replay at another
  position);
- (c) signed by a key the learner does not list for r1;
- (d) r1's records under a robot id nobody listed (before: a new robot that
  took its share of every training batch).

What is asserted is what the learner stored: every record r1 logged,
exactly once and in order, field for field; nothing under the unlisted id;
each forgery refused, counted on /diagnostics and named in the log.

Environment: FLOWPILOT_NODE_BIN / FLOWPILOT_FLEET_BIN pick the binaries.
FLOWPILOT_ATTACK_LEGACY=1 leaves the robot and learner keys out, for
binaries built before they existed: it shows what such a learner stores.
"""
import array
import base64
import os
import signal
import struct
import subprocess
import time

from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import UInt8MultiArray

from flowpilot_py.testkit import CLI, RELIABLE, ROOT, wait_for
from test_attack_policy import AttackedNode
from test_fleet import FLEET_BIN, REACH_MODEL, log_stream, streams_of

LEGACY = os.environ.get("FLOWPILOT_ATTACK_LEGACY") == "1"
RECORDS = "/flowpilot/fleet/records"
AHEAD = 1_000_000


class Batch:
    """A records batch (crates/core/src/fleet/wire.rs, FPB2), decoded."""

    def __init__(self, raw):
        b = bytes(raw)
        assert b[:4] == b"FPB2", b[:4]
        i = 4

        def take(fmt):
            nonlocal i
            v = struct.unpack_from(fmt, b, i)
            i += struct.calcsize(fmt)
            return v[0]

        def s16():
            nonlocal i
            n = take("<H")
            i += n
            return b[i - n:i]

        self.robot = s16().decode()
        self.epoch = take("<Q")
        self.file = s16()
        self.seq = take("<Q")
        self.prev_end = take("<Q")
        self.meta = [(s16(), s16()) for _ in range(take("<H"))]
        self.records = []
        for _ in range(take("<I")):
            n = take("<I")
            self.records.append(b[i:i + n])
            i += n
        self.auth = s16()
        assert i == len(b)

    def encode(self):
        def s16(x):
            return struct.pack("<H", len(x)) + x
        out = b"FPB2" + s16(self.robot.encode()) + struct.pack("<Q", self.epoch) + s16(self.file)
        out += struct.pack("<QQH", self.seq, self.prev_end, len(self.meta))
        out += b"".join(s16(k) + s16(v) for k, v in self.meta)
        out += struct.pack("<I", len(self.records))
        out += b"".join(struct.pack("<I", len(r)) + r for r in self.records)
        return out + s16(self.auth)


def keygen(path):
    subprocess.run([CLI, "keygen", "--out", str(path)], check=True, capture_output=True)
    return f"{path}.pub"


def robot_params(tmp_path, key):
    y = tmp_path / "r1.yaml"
    signing = f"\n      signing_key: {key}" if key else ""
    y.write_text(f"""
/**:
  ros__parameters:
    model: {REACH_MODEL}
    rate_hz: 20.0
    safe_behaviour: zero
    warmup_ticks: 3
    startup_hold: 0.3
    observations: [state]
    sources:
      state: {{type: float64_multi_array, topic: /r1/reach/state, size: 2, max_age: 0.25}}
    action: {{type: float64_multi_array, topic: /r1/reach/cmd, interface: velocity}}
    log: {{dir: {tmp_path}/r1/log, flush_period: 0.05}}
    fleet:
      robot_id: r1
      policy: none{signing}
""")
    return str(y)


def test_forged_records_are_refused_and_every_genuine_record_arrives_once_in_order(tmp_path, domain, peer):
    r1_pub = keygen(tmp_path / "r1.key")
    attacker_pub = keygen(tmp_path / "attacker.key")
    robot_keys = tmp_path / "robot_keys"
    robot_keys.write_text(f"# the fleet\nr1 {r1_pub}\n")
    os.chmod(robot_keys, 0o644)
    attacker_key = base64.b64decode(open(attacker_pub).read().split()[0].split(":")[1])

    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), RUST_LOG="info")
    flog_path = tmp_path / "fleet.log"
    flog = open(flog_path, "w")
    args = [FLEET_BIN, "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "lckpt")]
    if not LEGACY:
        args += ["--robot-keys", str(robot_keys)]
    fleet = subprocess.Popen(args, env=env, stdout=flog, stderr=subprocess.STDOUT, cwd=ROOT)
    genuine = peer.collect(UInt8MultiArray, RECORDS, RELIABLE)
    diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    forger = peer.node.create_publisher(UInt8MultiArray, RECORDS, RELIABLE)
    node = AttackedNode(domain, robot_params(tmp_path, None if LEGACY else tmp_path / "r1.key"))
    sent = {}
    try:
        wait_for(lambda: len(genuine) >= 3, 30, "r1's batches on the graph")
        with peer.lock:
            real = Batch(genuine[-1][1].data)
        assert real.robot == "r1" and (LEGACY or len(real.auth) == 96), (real.robot, len(real.auth))

        def forge(name, edit):
            b = Batch(genuine[-1][1].data)
            edit(b)
            sent[name] = b
            return b

        def ahead(b):
            # "the robot holds nothing in [0, seq)": stored as a gap by a
            # learner that believes it
            b.seq += AHEAD
            b.prev_end = 0

        def stranger(b):
            b.robot, b.seq, b.prev_end, b.auth = "r9", 0, 0, b""

        forgeries = [
            forge("a unsigned, ahead", lambda b: (ahead(b), setattr(b, "auth", b""))),
            forge("b genuine signature, ahead", ahead),
            forge("c another key", lambda b: (ahead(b), setattr(b, "auth", attacker_key + os.urandom(64)))),
            forge("d unlisted robot", stranger),
        ]
        for _ in range(3):
            for b in forgeries:
                forger.publish(UInt8MultiArray(data=array.array("B", b.encode())))
            time.sleep(0.3)
        time.sleep(3.0)  # r1 keeps streaming after the forgeries
    finally:
        assert node.stop(signal.SIGINT, timeout=20) == 0, node.output()[-3000:]
        time.sleep(0.5)
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(timeout=20)
        flog.close()
    text = flog_path.read_text()
    logged = log_stream(str(tmp_path / "r1" / "log"))
    held = streams_of(str(tmp_path / "shards" / "r1"))
    ticks, mono = held.get(logged[0], ([], []))
    assert len(logged[1]) > 50
    bad = []
    if (ticks, mono) != (logged[1], logged[2]):
        bad.append(f"the learner holds {len(ticks)} of r1's records (of {len(logged[1])} logged), "
                   f"not each exactly once in order; streams held: {sorted(map(str, held))}")
    if os.path.exists(tmp_path / "shards" / "r9"):
        bad.append("records stored under the unlisted robot id r9")
    if "records batch refused" not in text:
        bad.append("no refusal in the learner's log")
    assert not bad, "\n".join(bad) + "\n" + text[-2000:]
    refused = [int(v.value) for _, m in diags for s in m.status for v in s.values if v.key == "refused_batches"]
    assert refused and max(refused) >= len(sent), refused
    for why in ("unsigned", "does not verify", "not the key listed for it", "robot 'r9' is not in the robot keys"):
        assert why in text, (why, text[-2000:])
