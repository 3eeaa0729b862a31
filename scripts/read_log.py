#!/usr/bin/env python3
"""Read flowpilot transition logs (MCAP, ros2msg schema, CDR) with numpy
alone. Stops cleanly at a torn tail (a node killed mid-write), so every
complete record is returned. See docs/log-format.md.

  python3 scripts/read_log.py LOG.mcap            # summary
  python3 scripts/read_log.py LOG_DIR --npz out.npz

As a module: `read_log(path) -> dict of numpy arrays`.
"""
import argparse
import glob
import os
import struct
import sys

import numpy as np

MAGIC = b"\x89MCAP0\r\n"
SCHEMA_NAME = "flowpilot_msgs/msg/Transition"


class _Cdr:
    """Little-endian CDR: primitives aligned to their size from payload start."""

    def __init__(self, buf):
        if buf[:2] != b"\x00\x01":
            raise ValueError("not little-endian CDR")
        self.b, self.p = memoryview(buf)[4:], 0

    def _take(self, fmt, size):
        self.p = (self.p + size - 1) // size * size
        v = struct.unpack_from(fmt, self.b, self.p)[0]
        self.p += size
        return v

    def u8(self):
        return self._take("<B", 1)

    def u32(self):
        return self._take("<I", 4)

    def u64(self):
        return self._take("<Q", 8)

    def i64(self):
        return self._take("<q", 8)

    def f32(self):
        return self._take("<f", 4)

    def f64(self):
        return self._take("<d", 8)

    def string(self):
        n = self.u32()
        s = bytes(self.b[self.p:self.p + n - 1]).decode()
        self.p += n
        return s

    def seq(self, dtype, size):
        n = self.u32()
        self.p = (self.p + size - 1) // size * size
        a = np.frombuffer(self.b, dtype=dtype, count=n, offset=self.p).copy()
        self.p += n * size
        return a


def decode(buf):
    c = _Cdr(buf)
    r = dict(tick=c.u64(), mono_ns=c.i64(), wall_ns=c.i64(), episode=c.u64(), decision=c.u8(),
             intervention=bool(c.u8()), terminated=bool(c.u8()), truncated=bool(c.u8()),
             reward=c.f64(), log_prob=c.f32(), policy_version=c.u64(), seed=c.u64(),
             policy_digest=c.string(), normalizer_digest=c.string())
    r["obs"] = c.seq("<f4", 4)
    r["goal"] = c.seq("<f4", 4)
    r["action_sampled"] = c.seq("<f4", 4)
    r["action_applied"] = c.seq("<f8", 8)
    return r


def _str(b, p):
    n = struct.unpack_from("<I", b, p)[0]
    return bytes(b[p + 4:p + 4 + n]).decode(), p + 4 + n


def records(path):
    """Yield (metadata, record) for every complete message; ignores a torn tail."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != MAGIC:
        raise ValueError(f"{path} is not an MCAP file")
    schemas, ours, meta, p = {}, set(), {}, 8
    while len(data) - p >= 9:
        op, n = data[p], struct.unpack_from("<Q", data, p + 1)[0]
        if p + 9 + n > len(data):
            break  # torn (or still being written)
        body = memoryview(data)[p + 9:p + 9 + n]
        p += 9 + n
        if op == 0x03:  # Schema
            sid = struct.unpack_from("<H", body, 0)[0]
            schemas[sid], _ = _str(body, 2)
        elif op == 0x04:  # Channel
            cid, sid = struct.unpack_from("<HH", body, 0)
            if schemas.get(sid) == SCHEMA_NAME:
                ours.add(cid)
        elif op == 0x0C:  # Metadata
            name, q = _str(body, 0)
            end = q + 4 + struct.unpack_from("<I", body, q)[0]
            q += 4
            kv = {}
            while q < end:
                k, q = _str(body, q)
                v, q = _str(body, q)
                kv[k] = v
            if name == "flowpilot":
                meta = kv
        elif op == 0x05:  # Message
            cid = struct.unpack_from("<H", body, 0)[0]
            if cid in ours:
                yield meta, decode(bytes(body[22:]))
        elif op in (0x0F, 0x02):  # DataEnd / Footer
            break


def read_log(path):
    """All complete records of a file, or of every *.mcap in a directory, as
    numpy arrays (actions NaN where none was applied)."""
    files = sorted(glob.glob(os.path.join(path, "*.mcap"))) if os.path.isdir(path) else [path]
    rows = [r for f in files for _, r in records(f)]
    if not rows:
        return {}
    out = {k: np.array([r[k] for r in rows]) for k in rows[0] if k not in
           ("obs", "goal", "action_sampled", "action_applied")}
    d = max(len(r["action_sampled"]) for r in rows)
    for k in ("obs", "goal", "action_sampled"):
        out[k] = np.stack([r[k] for r in rows]) if rows[0][k].size else np.zeros((len(rows), 0), np.float32)
    out["action_applied"] = np.stack([r["action_applied"] if r["action_applied"].size else np.full(d, np.nan)
                                      for r in rows])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path", help="a .mcap file or a directory of them")
    ap.add_argument("--npz", help="write the arrays to this .npz")
    a = ap.parse_args()
    log = read_log(a.path)
    if not log:
        print("no records", file=sys.stderr)
        return 1
    n = len(log["tick"])
    print(f"{n} records, ticks {log['tick'][0]}..{log['tick'][-1]}, "
          f"{len(np.unique(log['episode']))} episodes, policy versions {sorted(set(log['policy_version'].tolist()))}, "
          f"{int(np.isfinite(log['reward']).sum())} rewards, {int(log['intervention'].sum())} interventions")
    if a.npz:
        np.savez(a.npz, **log)
        print(f"wrote {a.npz}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
