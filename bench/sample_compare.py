#!/usr/bin/env python3
"""Batch-1 sampling latency, side by side in one run: flowpilot's real-time
sampler and its candle twin (`flowpilot bench --twin`), PyTorch eager and
ONNX Runtime, all on the same architecture (K=4 affine couplings with
invertible linear layers, C=256, obs 39, act 8), one thread each.
Optional: needs torch, onnx and onnxruntime (kept out of CI).

  python3 bench/sample_compare.py [--n 20000] [--repeat 3]

The PyTorch/ONNX model precomputes W⁻¹ like flowpilot's sampler does, and
returns the action and its exact log-prob, like the sampler.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn

from sac_torch import Flow

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CLI = os.path.join(ROOT, "target", "release", "flowpilot")


class Sampler(nn.Module):
    """Inference form of sac_torch.Flow: W⁻¹ and log|s| cached."""

    def __init__(self, flow):
        super().__init__()
        self.flow = flow
        with torch.no_grad():
            w = [flow.w_inv(i) for i in range(len(flow.perms))]
        self.w_inv = nn.ParameterList([nn.Parameter(x[0], requires_grad=False) for x in w])
        self.register_buffer("las", torch.stack([x[1] for x in w]))

    def forward(self, cond, z):
        f = self.flow
        logp = -0.5 * (z ** 2).sum(1) - 0.5 * f.d * 1.8378770664093453
        for i in reversed(range(len(f.perms))):
            z1, z2 = z[:, :f.d1], z[:, f.d1:]
            inp = torch.cat([z1, cond], 1)
            s, t = f.snet[i](inp), f.tnet[i](inp)
            z = torch.cat([z1, z2 * torch.exp(s) + t], 1) @ self.w_inv[i]
            logp = logp - s.sum(1) + self.las[i]
        return torch.clamp(z, -1.0, 1.0), logp


def timed(fn, n):
    for _ in range(200):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        ts.append((time.perf_counter_ns() - t0) / 1e3)
    ts.sort()
    return ts[0], statistics.median(ts), ts[int(0.99 * (len(ts) - 1))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tmp = tempfile.mkdtemp()
    model = os.path.join(tmp, "k4.safetensors")
    subprocess.run([CLI, "new", model, "--obs", "39", "--act", "8", "--blocks", "4", "--hidden", "256", "--random"],
                   check=True, capture_output=True)
    sampler = Sampler(Flow(8, 39, 4, 256)).eval()
    cond, z = torch.randn(1, 39), torch.randn(1, 8)
    onnx_path = os.path.join(tmp, "flow.onnx")
    torch.onnx.export(sampler, (cond, z), onnx_path, input_names=["cond", "z"], output_names=["action", "log_prob"],
                      dynamo=False)
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    feeds = {"cond": cond.numpy(), "z": z.numpy()}
    with torch.no_grad():
        ref = sampler(cond, z)[0].numpy()
    assert np.allclose(sess.run(None, feeds)[0], ref, atol=1e-4), "ONNX export differs from eager"
    rows = []
    env = dict(os.environ, RAYON_NUM_THREADS="1", CANDLE_NUM_THREADS="1")
    for r in range(a.repeat):
        out = subprocess.run([CLI, "bench", model, "--twin", "--json", "--n", str(a.n)], check=True,
                             capture_output=True, text=True, env=env).stdout
        fp = json.loads(out)
        with torch.no_grad():
            te = timed(lambda: sampler(cond, z), a.n)
        ox = timed(lambda: sess.run(None, feeds), a.n)
        s, t = fp["sampler"], fp["twin"]
        rows.append((r + 1, (s["min_us"], s["median_us"], s["p99_us"]), (t["min_us"], t["median_us"], t["p99_us"]), te, ox))
    print(f"## batch-1 sampling, K=4 C=256 obs 39 act 8, one thread (torch {torch.__version__}, onnxruntime {ort.__version__})\n")
    print("| run | flowpilot sampler | candle twin | PyTorch eager | ONNX Runtime | eager / sampler | ORT / sampler |")
    print("|---|---|---|---|---|---|---|")
    f = lambda x: f"{x[0]:.1f} / {x[1]:.1f} / {x[2]:.1f}"  # noqa: E731
    for r, s, t, te, ox in rows:
        print(f"| {r} | {f(s)} | {f(t)} | {f(te)} | {f(ox)} | {te[1] / s[1]:.1f}× | {ox[1] / s[1]:.1f}× |")
    print("\n(min / median / p99 µs per sample; ratios of medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
