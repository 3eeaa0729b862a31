#!/usr/bin/env python3
"""Scaling table (docs/performance.md): batch-1 sampler latency (and its
median over the weight-bandwidth bound) and SAC update time against the
number of blocks K and the coupling width C, with the weight bytes beside
this CPU's L2 and L3 sizes, so where each crosses a cache shows.

    python3 bench/scaling.py [--blocks 2 4 6 12] [--hidden 64 128 256 512] [--sac-n 20]

obs 39, act 8 (the reference shapes), random weights, 1 thread
(RAYON_NUM_THREADS=1), SAC batch 256 with 2x256 critics.
"""
import argparse
import json
import os
import subprocess
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FP = os.path.join(ROOT, "target", "release", "flowpilot")


def cache_sizes():
    """Per-core L2 and shared L3 in bytes, from sysfs (None if unknown)."""
    out = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    for idx in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        try:
            level = open(f"{base}/{idx}/level").read().strip()
            kind = open(f"{base}/{idx}/type").read().strip()
            size = open(f"{base}/{idx}/size").read().strip()
        except OSError:
            continue
        if kind in ("Unified", "Data") and level in ("2", "3"):
            mult = {"K": 1 << 10, "M": 1 << 20}.get(size[-1], 1)
            out[f"L{level}"] = int(size.rstrip("KM")) * mult
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 6, 12])
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--n", type=int, default=5000, help="sampler samples per point")
    ap.add_argument("--sac-n", type=int, default=20, help="SAC updates per point (0: skip)")
    a = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    caches = cache_sizes()
    print(f"caches: {', '.join(f'{k} {v / 2**20:.1f} MiB' for k, v in caches.items())}\n")
    print("| K | C | weight bytes | fits | sampler min / median / p99 (µs) | median ÷ bound | SAC update median (ms) |")
    print("|---|---|---|---|---|---|---|")
    tmp = tempfile.mkdtemp()
    for k in a.blocks:
        for c in a.hidden:
            m = os.path.join(tmp, f"k{k}c{c}.safetensors")
            subprocess.run([FP, "new", m, "--obs", "39", "--act", "8", "--hidden", str(c), "--blocks", str(k), "--random"],
                           check=True, capture_output=True)
            r = json.loads(subprocess.run([FP, "bench", m, "--json", "--n", str(a.n)], check=True,
                                          capture_output=True, text=True, env=env).stdout)
            wb = r["weight_bytes"]
            fits = "L2" if wb <= caches.get("L2", 0) else ("L3" if wb <= caches.get("L3", 0) else "DRAM")
            s = r["sampler"]
            sac = ""
            if a.sac_n:
                j = json.loads(subprocess.run([FP, "bench", m, "--sac", "--json", "--n", str(a.sac_n)], check=True,
                                              capture_output=True, text=True, env=env).stdout)
                sac = f"{j['median_us'] / 1e3:.1f}"
            print(f"| {k} | {c} | {wb / 2**20:.2f} MiB | {fits} | {s['min_us']:.1f} / {s['median_us']:.1f} / "
                  f"{s['p99_us']:.1f} | {r['median_over_bound']:.2f} | {sac} |", flush=True)


if __name__ == "__main__":
    main()
