#!/usr/bin/env python3
"""Read flowpilot transition logs (MCAP, ros2msg schema, CDR) with numpy
alone. Stops cleanly at a torn tail (a node killed mid-write), so every
complete record is returned. See docs/log-format.md.

  python3 scripts/read_log.py LOG.mcap            # summary
  python3 scripts/read_log.py LOG_DIR --npz out.npz

As a module: `read_log(path) -> dict of numpy arrays`.

Records are decoded against the ros2msg schema text each file embeds, so
fields appended to the schema later decode without a change here; a record
that ends before them (written by an older node) gets their defaults. The
fields after action_applied (action_executed, robot_steps, temperature,
chunk, chunk_index, stop) are always in the output: NaN rows / 0 / NaN / 0
/ 0 / 0 when a log lacks them.
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


# The fields up to action_applied: every log has them (the layout used when a
# file's schema text is missing or unreadable).
BASE_FIELDS = [("uint64", "tick"), ("int64", "mono_ns"), ("int64", "wall_ns"), ("uint64", "episode"),
               ("uint8", "decision"), ("bool", "intervention"), ("bool", "terminated"), ("bool", "truncated"),
               ("float64", "reward"), ("float32", "log_prob"), ("uint64", "policy_version"), ("uint64", "seed"),
               ("string", "policy_digest"), ("string", "normalizer_digest"), ("float32[]", "obs"),
               ("float32[]", "goal"), ("float32[]", "action_sampled"), ("float64[]", "action_applied")]
# ros2msg type -> (struct format, size, numpy dtype)
_SCALAR = {"bool": ("<B", 1, "u1"), "uint8": ("<B", 1, "u1"), "byte": ("<B", 1, "u1"), "char": ("<B", 1, "u1"),
           "int8": ("<b", 1, "i1"), "uint16": ("<H", 2, "<u2"), "int16": ("<h", 2, "<i2"),
           "uint32": ("<I", 4, "<u4"), "int32": ("<i", 4, "<i4"), "uint64": ("<Q", 8, "<u8"),
           "int64": ("<q", 8, "<i8"), "float32": ("<f", 4, "<f4"), "float64": ("<d", 8, "<f8")}


def parse_schema(text):
    """[(type, name)] of a flat ros2msg schema (comments and constants skipped)."""
    fields = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or "=" in line:
            continue
        typ, name = line.split()[:2]
        fields.append((typ, name))
    return fields


def _field(c, typ):
    if typ == "string":
        return c.string()
    if typ.endswith("[]"):
        _, size, dtype = _SCALAR[typ[:-2]]
        return c.seq(dtype, size)
    fmt, size, _ = _SCALAR[typ]
    v = c._take(fmt, size)
    return bool(v) if typ == "bool" else v


def decode(buf, fields=None):
    """One record as a dict. With `fields` (from the file's schema), decode
    against them; a record that ends after action_applied stops there."""
    if fields is not None:
        c = _Cdr(buf)
        r, past_base = {}, False
        for typ, name in fields:
            if past_base and c.p >= len(c.b):
                break  # written before the later fields existed
            r[name] = _field(c, typ)
            past_base = past_base or name == "action_applied"
        return r
    c = _Cdr(buf)
    r = dict(tick=c.u64(), mono_ns=c.i64(), wall_ns=c.i64(), episode=c.u64(), decision=c.u8(),
             intervention=bool(c.u8()), terminated=bool(c.u8()), truncated=bool(c.u8()),
             reward=c.f64(), log_prob=c.f32(), policy_version=c.u64(), seed=c.u64(),
             policy_digest=c.string(), normalizer_digest=c.string())
    r["obs"] = c.seq("<f4", 4)
    r["goal"] = c.seq("<f4", 4)
    r["action_sampled"] = c.seq("<f4", 4)
    r["action_applied"] = c.seq("<f8", 8)
    if c.p < len(c.b):  # the fields of the step contract (docs/log-format.md)
        r["action_executed"] = c.seq("<f8", 8)
        r["robot_step"] = c.u64()
        r["temperature"] = c.f32()
    if c.p < len(c.b):  # added with action chunks
        r["chunk"] = c.u64()
        r["chunk_index"] = c.u32()
    if c.p < len(c.b):  # added with the per-interface stop
        r["stop"] = c.u8()
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
    schemas, texts, ours, meta, p = {}, {}, set(), {}, 8
    fields = {}
    while len(data) - p >= 9:
        op, n = data[p], struct.unpack_from("<Q", data, p + 1)[0]
        if p + 9 + n > len(data):
            break  # torn (or still being written)
        body = memoryview(data)[p + 9:p + 9 + n]
        p += 9 + n
        if op == 0x03:  # Schema
            sid = struct.unpack_from("<H", body, 0)[0]
            schemas[sid], q = _str(body, 2)
            enc, q = _str(body, q)
            try:
                texts[sid] = parse_schema(_str(body, q)[0]) if enc == "ros2msg" else None
            except Exception:
                texts[sid] = None
        elif op == 0x04:  # Channel
            cid, sid = struct.unpack_from("<HH", body, 0)
            if schemas.get(sid) == SCHEMA_NAME:
                ours.add(cid)
                f = texts.get(sid)
                # the schema text drives decoding if it starts with the base layout
                fields[cid] = f if f and f[:len(BASE_FIELDS)] == BASE_FIELDS else None
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
                yield meta, decode(bytes(body[22:]), fields.get(cid))
        elif op in (0x0F, 0x02):  # DataEnd / Footer
            break


ARRAYS = ("obs", "goal", "action_sampled", "action_applied", "action_executed")


def _steps_from_counter(rows):
    """robot_steps (new steps since the previous record) from a cumulative
    robot_step counter, per file: the first record of a file counts 1 when
    the counter is running (0 when it is 0, i.e. no step source)."""
    prev = None
    for r in rows:
        n = int(r["robot_step"])
        r["robot_steps"] = 0 if n == 0 else (1 if prev is None or prev == 0 else n - prev)
        prev = n


def read_log(path):
    """All complete records of a file, or of every *.mcap in a directory, as
    numpy arrays (actions NaN where none was applied / reported)."""
    files = sorted(glob.glob(os.path.join(path, "*.mcap"))) if os.path.isdir(path) else [path]
    rows = []
    for f in files:
        file_rows = [r for _, r in records(f)]
        if file_rows and "robot_steps" not in file_rows[0] and "robot_step" in file_rows[0]:
            _steps_from_counter(file_rows)
        rows += file_rows
    if not rows:
        return {}
    for r in rows:  # defaults for records written before the step contract
        r.setdefault("action_executed", np.zeros(0))
        r.setdefault("robot_steps", 0)
        r.setdefault("temperature", np.nan)
        r.setdefault("chunk", 0)
        r.setdefault("chunk_index", 0)
        r.setdefault("stop", 0)
    keys = list(rows[0])
    for r in rows[1:]:
        keys += [k for k in r if k not in keys]
    out = {k: np.array([r.get(k, 0) for r in rows]) for k in keys if k not in ARRAYS}
    out["robot_steps"] = out["robot_steps"].astype(np.uint32)
    out["temperature"] = out["temperature"].astype(np.float32)
    if "robot_step" in out:
        out["robot_step"] = out["robot_step"].astype(np.uint64)
    d = max(len(r["action_sampled"]) for r in rows)
    d = max([d] + [len(r[k]) for r in rows for k in ("action_applied", "action_executed")])
    for k in ("obs", "goal", "action_sampled"):
        out[k] = np.stack([r[k] for r in rows]) if rows[0][k].size else np.zeros((len(rows), 0), np.float32)
    for k in ("action_applied", "action_executed"):
        out[k] = np.stack([r[k].astype(np.float64) if r[k].size else np.full(d, np.nan) for r in rows])
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
    if np.isfinite(log["action_executed"]).all(axis=1).any() or log["robot_steps"].any():
        rs = log["robot_steps"]
        print(f"step contract: {int(np.isfinite(log['action_executed']).all(axis=1).sum())} records report the "
              f"executed action; robot steps per record: {int((rs == 1).sum())} x1, {int((rs == 0).sum())} x0, "
              f"{int((rs > 1).sum())} >1 (gaps); temperatures "
              f"{sorted(set(np.round(log['temperature'][np.isfinite(log['temperature'])], 4).tolist()))[:5]}")
    if a.npz:
        np.savez(a.npz, **log)
        print(f"wrote {a.npz}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
