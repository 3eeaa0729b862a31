#!/usr/bin/env python3
"""The same SAC update as `flowpilot bench MODEL --sac`, in PyTorch eager,
for a side-by-side throughput comparison (optional: torch stays out of CI).

Architecture as crates/learn/src/twin.rs + crates/learn/src/learner/: K affine-coupling blocks, each
with an invertible linear layer W = P·L·U (learned L, U, s), s/t nets
Linear(d1+k, C+k) → LeakyReLU(0.01) → LayerNorm → Linear(C+k, C) → LeakyReLU →
LayerNorm → Linear(C, d2); sampling runs the blocks inverted; twin ReLU critics
2×256 with Polyak targets; temperature tuning; the actor's box penalty.

  python3 bench/sac_torch.py --obs 39 --act 8 --blocks 4 --hidden 256 --batch 256 --threads 1 --n 30

With the same --threads as RAYON_NUM_THREADS/CANDLE_NUM_THREADS for flowpilot.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self, inp, c, k, out):
        super().__init__()
        self.l0, self.l1, self.l2 = nn.Linear(inp, c + k), nn.Linear(c + k, c), nn.Linear(c, out)
        self.ln0, self.ln1 = nn.LayerNorm(c + k, eps=1e-6), nn.LayerNorm(c, eps=1e-6)

    def forward(self, x):
        h = self.ln0(F.leaky_relu(self.l0(x), 0.01))
        h = self.ln1(F.leaky_relu(self.l1(h), 0.01))
        return self.l2(h)


class Flow(nn.Module):
    def __init__(self, d, k, blocks, c):
        super().__init__()
        self.d, self.d1 = d, (d + 1) // 2
        self.d2 = d - self.d1
        self.perms = [torch.randperm(d) for _ in range(blocks)]
        self.L = nn.ParameterList([nn.Parameter(torch.randn(d, d) * 0.1) for _ in range(blocks)])
        self.U = nn.ParameterList([nn.Parameter(torch.randn(d, d) * 0.1) for _ in range(blocks)])
        self.s = nn.ParameterList([nn.Parameter(torch.ones(d)) for _ in range(blocks)])
        self.snet = nn.ModuleList([Net(self.d1 + k, c, k, self.d2) for _ in range(blocks)])
        self.tnet = nn.ModuleList([Net(self.d1 + k, c, k, self.d2) for _ in range(blocks)])
        self.register_buffer("lower", torch.tril(torch.ones(d, d), -1))
        self.register_buffer("upper", torch.triu(torch.ones(d, d), 1))
        self.register_buffer("eye", torch.eye(d))

    def w_inv(self, i):
        lm = self.L[i] * self.lower + self.eye
        um = self.U[i] * self.upper + torch.diag(self.s[i])
        p = self.eye[self.perms[i]]
        # W = P L U  ->  W^-1 = U^-1 L^-1 P^T (triangular solves)
        li = torch.linalg.solve_triangular(lm, self.eye, upper=False, unitriangular=True)
        ui = torch.linalg.solve_triangular(um, self.eye, upper=True)
        return ui @ li @ p.T, torch.log(torch.abs(self.s[i])).sum()

    def sample(self, cond, z):
        """Reparameterised action and its exact log-prob, one pass."""
        logp = -0.5 * (z ** 2).sum(1) - 0.5 * self.d * math.log(2 * math.pi)
        for i in reversed(range(len(self.perms))):
            z1, z2 = z[:, :self.d1], z[:, self.d1:]
            inp = torch.cat([z1, cond], 1)
            s, t = self.snet[i](inp), self.tnet[i](inp)
            w_inv, las = self.w_inv(i)
            z = torch.cat([z1, z2 * torch.exp(s) + t], 1) @ w_inv
            logp = logp - s.sum(1) + las
        return z, logp


def critic(inp, h=256):
    return nn.Sequential(nn.Linear(inp, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--obs", type=int, default=39)
    ap.add_argument("--act", type=int, default=8)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d, k, b = a.act, a.obs, a.batch
    actor = Flow(d, k, a.blocks, a.hidden)
    qs = [critic(k + d) for _ in range(2)]
    qt = [critic(k + d) for _ in range(2)]
    for t, q in zip(qt, qs):
        t.load_state_dict(q.state_dict())
    log_alpha = torch.tensor([math.log(0.01)], requires_grad=True)
    opt_a = torch.optim.AdamW(actor.parameters(), lr=1e-4, weight_decay=0.0)
    opt_q = torch.optim.AdamW([p for q in qs for p in q.parameters()], lr=3e-4, weight_decay=0.0)
    opt_t = torch.optim.AdamW([log_alpha], lr=3e-4, weight_decay=0.0)
    N = 10_000
    S, A, R, S2 = torch.rand(N, k) * 2 - 1, torch.rand(N, d) * 2 - 1, -torch.rand(N), torch.rand(N, k) * 2 - 1

    def update():
        idx = torch.randint(0, N, (b,))
        s, act, r, s2 = S[idx], A[idx], R[idx], S2[idx]
        alpha = log_alpha.exp().detach()
        with torch.no_grad():
            a2, lp2 = actor.sample(s2, torch.randn(b, d))
            x2 = torch.cat([s2, a2], 1)
            y = r + 0.99 * (torch.min(qt[0](x2), qt[1](x2)).squeeze(1) - alpha * lp2)
        x = torch.cat([s, act], 1)
        lq = F.mse_loss(qs[0](x).squeeze(1), y) + F.mse_loss(qs[1](x).squeeze(1), y)
        opt_q.zero_grad()
        lq.backward()
        opt_q.step()
        an, lp = actor.sample(s, torch.randn(b, d))
        xa = torch.cat([s, an], 1)
        qa = torch.min(qs[0](xa), qs[1](xa)).squeeze(1)
        la = (alpha * lp - qa).mean() + 10.0 * (F.relu(an.abs() - 1) ** 2).sum(1).mean()
        opt_a.zero_grad()
        la.backward()
        opt_a.step()
        lt = -(log_alpha * (lp.detach().mean() - d)).mean()
        opt_t.zero_grad()
        lt.backward()
        opt_t.step()
        with torch.no_grad():
            for t, q in zip(qt, qs):
                for pt, p in zip(t.parameters(), q.parameters()):
                    pt.mul_(0.995).add_(0.005 * p)

    for _ in range(5):
        update()
    ts = []
    for _ in range(a.n):
        t0 = time.perf_counter()
        update()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    res = dict(min_ms=ts[0], median_ms=ts[len(ts) // 2], p99_ms=ts[min(len(ts) - 1, int(round(0.99 * (len(ts) - 1))))],
               updates=a.n, torch=torch.__version__, threads=a.threads)
    if a.json:
        print(json.dumps(res))
    else:
        print(f"PyTorch {torch.__version__} SAC update (batch {b}, K={a.blocks} C={a.hidden}, critics 2x256, "
              f"{a.threads} threads): min {res['min_ms']:.2f} ms, median {res['median_ms']:.2f} ms, "
              f"p99 {res['p99_ms']:.2f} ms over {a.n} updates; {1e3 / res['median_ms']:.1f} updates/s at the median")


if __name__ == "__main__":
    main()
