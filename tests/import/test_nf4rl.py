"""Import parity with the paper's code.

Checkpoints are built here with the same parameter trees and pickle
structure the paper's code writes (flax: nested dicts of jax arrays pickled
through jax's own reduce path; PyTorch: a torch.save zip of a state_dict),
without jax or torch installed: the writers emit exactly the globals those
libraries emit. References come from an independent numpy implementation of
the paper's equations (flax LayerNorm variance E[x^2] - E[x]^2, per-kind
epsilon, array_split, W = P L U). The imported model must match in both
flowpilot implementations (real-time sampler and candle twin) within 1e-5.
"""
import io
import json
import math
import os
import pickle
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLI = os.path.join(ROOT, "target", "release", "flowpilot")
ENV = dict(os.environ, FLOWPILOT_PYTHON=sys.executable)

# jax 0.4.26 permutations from ../shared/DESIGN.md (row i -> column argmax).
FLAX_PERM = {5: [0, 1, 4, 3, 2], 6: [5, 4, 3, 2, 1, 0], 8: [6, 4, 0, 2, 3, 1, 5, 7]}


# ------------------------------------------------ writers mimicking jax / torch

def _fake_module(name, **attrs):
    parts = name.split(".")
    for i in range(1, len(parts)):  # parents must import too
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    mod = sys.modules.get(name) or types.ModuleType(name)
    for k, v in attrs.items():
        v.__module__ = name
        v.__qualname__ = k
        setattr(mod, k, v)
    sys.modules[name] = mod
    return mod


def _reconstruct_array(fun, args, arr_state, aval_state):  # pickled by reference only
    raise AssertionError("never called while writing")


_fake_module("jax._src.array", _reconstruct_array=_reconstruct_array)


class JaxArray:
    """Pickles like jax.Array: (jax._src.array._reconstruct_array, (numpy reduce..., aval_state))."""

    def __init__(self, a):
        self.a = np.asarray(a, dtype=np.float32)

    def __reduce__(self):
        fun, args, state = self.a.__reduce__()
        return (sys.modules["jax._src.array"]._reconstruct_array,
                (fun, args, state, {"weak_type": False, "named_shape": {}}))


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks):
    raise AssertionError("never called while writing")


def _rebuild_parameter(data, requires_grad, backward_hooks):
    raise AssertionError("never called while writing")


_fake_module("torch._utils", _rebuild_tensor_v2=_rebuild_tensor_v2, _rebuild_parameter=_rebuild_parameter)


class FloatStorage:
    pass


_fake_module("torch", FloatStorage=FloatStorage)


class TorchTensor:
    def __init__(self, a, key, param=False):
        self.a, self.key, self.param = np.ascontiguousarray(a, dtype=np.float32), key, param

    def __reduce__(self):
        storage = ("storage", FloatStorage, self.key, "cpu", self.a.size)
        stride = tuple(s // 4 for s in self.a.strides)
        t = (_rebuild_tensor_v2, (_Storage(storage), 0, self.a.shape, stride, False, OrderedDict()))
        if self.param:
            return (_rebuild_parameter, (_Obj(t), self.param, OrderedDict()))
        return t


class _Storage:
    def __init__(self, pid):
        self.pid = pid


class _Obj:
    def __init__(self, red):
        self.red = red

    def __reduce__(self):
        return self.red


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Storage) else None


def write_torch(path, state):
    """torch.save's zip layout of `state`: a state_dict, or a dict of them
    (as the paper's save_agent writes)."""
    buf = io.BytesIO()
    leaves = []

    def tensors_of(d):
        out = OrderedDict()
        for k, v in d.items():
            if isinstance(v, dict):
                out[k] = tensors_of(v)
            else:
                out[k] = TorchTensor(v, str(len(leaves)), param=not k.endswith(".P") and not k.endswith(".P_inv"))
                leaves.append(v)
        return out
    TorchPickler(buf, protocol=2).dump(tensors_of(state))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/version", "3\n")
        for i, v in enumerate(leaves):
            z.writestr(f"archive/data/{i}", np.ascontiguousarray(v, dtype="<f4").tobytes())


# ------------------------------------------------ random paper-shaped parameters

def rnd(rng, *shape, s=0.3):
    return (rng.standard_normal(shape) * s).astype(np.float32)


def plu_params(rng, d):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    # full L/U matrices with junk outside the used triangles, as trained checkpoints may hold
    L = np.tril(rng.standard_normal((d, d)), -1) + np.triu(rng.standard_normal((d, d)))
    U = np.triu(rng.standard_normal((d, d)) * 0.3, 1) + np.tril(rng.standard_normal((d, d)))
    s = (np.sign(rng.standard_normal(d)) * rng.uniform(0.5, 1.5, d))
    return L.astype(np.float32), U.astype(np.float32), s.astype(np.float32)


def mlp_flax(rng, inp, h1, h2, out):
    return {"layers_0": {"kernel": rnd(rng, inp, h1), "bias": rnd(rng, h1, s=0.1)},
            "layers_2": {"scale": 1 + rnd(rng, h1, s=0.1), "bias": rnd(rng, h1, s=0.1)},
            "layers_3": {"kernel": rnd(rng, h1, h2, s=0.1), "bias": rnd(rng, h2, s=0.1)},
            "layers_5": {"scale": 1 + rnd(rng, h2, s=0.1), "bias": rnd(rng, h2, s=0.1)},
            "layers_6": {"kernel": rnd(rng, h2, out, s=0.05), "bias": rnd(rng, out, s=0.05)}}


def flax_flow(rng, d, k, blocks, C):
    tree = {}
    for i in range(blocks):
        L, U, s = plu_params(rng, d)
        tree[f"blocks_{i}"] = {"l": {"L": L, "U": U, "s": s},
                               "s": mlp_flax(rng, (d + 1) // 2 + k, C + k, C, d // 2),
                               "t": mlp_flax(rng, (d + 1) // 2 + k, C + k, C, d // 2)}
    return tree


def flax_encoder(rng, inp, width, rep):
    tree = {}
    for j in range(4):
        tree[f"Dense_{j}"] = {"kernel": rnd(rng, inp if j == 0 else width, width, s=0.2), "bias": rnd(rng, width, s=0.1)}
        tree[f"LayerNorm_{j}"] = {"scale": 1 + rnd(rng, width, s=0.1), "bias": rnd(rng, width, s=0.1)}
    tree["Dense_4"] = {"kernel": rnd(rng, width, rep, s=0.2), "bias": rnd(rng, rep, s=0.1)}
    return tree


def as_jax(tree):
    return {k: as_jax(v) for k, v in tree.items()} if isinstance(tree, dict) else JaxArray(tree)


# ------------------------------------------------ independent numpy reference

def ln(x, g, b, eps, flax):
    m = x.mean(-1, keepdims=True)
    v = (x * x).mean(-1, keepdims=True) - m * m if flax else ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * g + b


def lrelu(x):
    return np.where(x >= 0, x, 0.01 * x)


class Ref:
    """The paper's flow in float64 numpy, from the paper-layout parameters."""

    def __init__(self, blocks, perm, eps, flax, encoder=None):
        self.blocks, self.eps, self.flax, self.encoder = blocks, eps, flax, encoder
        self.W, self.logs = [], []
        for b in blocks:
            d = len(b["s_diag"])
            P = np.zeros((d, d))
            P[np.arange(d), perm] = 1.0
            L = np.tril(b["L"], -1) + np.eye(d)
            U = np.triu(b["U"], 1) + np.diag(b["s_diag"])
            self.W.append(P @ L @ U)
            self.logs.append(np.log(np.abs(b["s_diag"])).sum())

    def mlp(self, net, x):
        h = ln(lrelu(x @ net[0][0] + net[0][1]), *net[1], self.eps, self.flax)
        h = ln(lrelu(h @ net[2][0] + net[2][1]), *net[3], self.eps, self.flax)
        return h @ net[4][0] + net[4][1]

    def cond(self, y):
        if self.encoder is None:
            return y
        h = y
        for (w, b), (g, bb) in self.encoder[:-1]:
            h = ln(h @ w + b, g, bb, self.eps_enc, self.flax)
            h = h / (1 + np.exp(-h))
        w, b = self.encoder[-1]
        return h @ w + b

    def fwd(self, x, y):
        ld = 0.0
        for b, W, logs in zip(self.blocks, self.W, self.logs):
            u = x @ W
            c = math.ceil(u.shape[-1] / 2)
            u1, u2 = u[:c], u[c:]
            inp = np.concatenate([u1, y])
            S, T = self.mlp(b["s"], inp), self.mlp(b["t"], inp)
            x = np.concatenate([u1, (u2 - T) * np.exp(-S)])
            ld += logs - S.sum()
        return x, ld

    def inv(self, z, y):
        ld = 0.0
        for b, W, logs in reversed(list(zip(self.blocks, self.W, self.logs))):
            c = math.ceil(z.shape[-1] / 2)
            z1, z2 = z[:c], z[c:]
            inp = np.concatenate([z1, y])
            S, T = self.mlp(b["s"], inp), self.mlp(b["t"], inp)
            z = np.concatenate([z1, z2 * np.exp(S) + T]) @ np.linalg.inv(W)
            ld += S.sum() - logs
        return z, ld


def log_normal(z):
    return -0.5 * (z ** 2).sum() - len(z) * 0.5 * math.log(2 * math.pi)


def flax_ref_blocks(tree):
    out = []
    i = 0
    while f"blocks_{i}" in tree:
        b = tree[f"blocks_{i}"]
        net = lambda n: [(b[n]["layers_0"]["kernel"], b[n]["layers_0"]["bias"]),
                         (b[n]["layers_2"]["scale"], b[n]["layers_2"]["bias"]),
                         (b[n]["layers_3"]["kernel"], b[n]["layers_3"]["bias"]),
                         (b[n]["layers_5"]["scale"], b[n]["layers_5"]["bias"]),
                         (b[n]["layers_6"]["kernel"], b[n]["layers_6"]["bias"])]
        out.append({"L": b["l"]["L"], "U": b["l"]["U"], "s_diag": b["l"]["s"], "s": net("s"), "t": net("t")})
        i += 1
    return out


def run(*args):
    r = subprocess.run([CLI, *args], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    return r.stdout


def check_parity(model, ref, direction, obs, goal, rng, d):
    y_raw = np.concatenate([obs, goal]).astype(np.float64)
    y = ref.cond(y_raw)
    fmt = lambda v: ",".join(repr(float(x)) for x in v)
    base = ["--obs", fmt(obs)] + (["--goal", fmt(goal)] if len(goal) else [])
    for trial in range(3):
        z = rng.standard_normal(d).astype(np.float32)
        if direction == "inverse":   # sampling runs the inverse of the blocks
            a, ld = ref.inv(z.astype(np.float64), y)
            lp_ref = log_normal(z) - ld
        else:                        # blocks map latent -> action
            a, ld = ref.fwd(z.astype(np.float64), y)
            lp_ref = log_normal(z) - ld
        for extra in ([], ["--twin"]):
            out = json.loads(run("sample", model, *base, "--z", fmt(z), "--json", *extra))
            got = np.array(out["raw_action"])
            assert np.abs(got - a).max() < 1e-5 * max(1, np.abs(a).max()), (extra, got, a)
            assert abs(out["log_prob"] - lp_ref) < 1e-5 * max(1, abs(lp_ref)), (extra, out["log_prob"], lp_ref)
            # likelihood direction on the reference's action
            lp = json.loads(run("log-prob", model, *base, "--action", fmt(a.astype(np.float32)), *extra))["log_prob"]
            if direction == "inverse":
                zz, ld2 = ref.fwd(a.astype(np.float32).astype(np.float64), y)
            else:
                zz, ld2 = ref.inv(a.astype(np.float32).astype(np.float64), y)
            lp_like = log_normal(zz) + ld2
            assert abs(lp - lp_like) < 1e-5 * max(1, abs(lp_like)), (extra, lp, lp_like)


def test_flax_gcbc_with_encoder_matches_reference(tmp_path):
    rng = np.random.default_rng(0)
    d, obs_dim, rep, C, K = 5, 4, 6, 16, 3
    flow = flax_flow(rng, d, rep, K, C)
    enc = flax_encoder(rng, 2 * obs_dim, 12, rep)
    ckpt = tmp_path / "params_1000000.pkl"
    with open(ckpt, "wb") as f:
        pickle.dump({"model": {"params": as_jax(flow)}, "encoder": {"params": as_jax(enc)}}, f)
    model = str(tmp_path / "gcbc.safetensors")
    info = run("import", "nf4rl", str(ckpt), "--kind", "flax-gcbc", "--out", model, "--goal-dim", str(obs_dim))
    assert "sampling       : inverse" in info and f"obs {obs_dim}, goal {obs_dim}, act {d}" in info, info
    ref = Ref(flax_ref_blocks(flow), FLAX_PERM[d], 1e-6, True,
              encoder=[((enc[f"Dense_{j}"]["kernel"], enc[f"Dense_{j}"]["bias"]),
                        (enc[f"LayerNorm_{j}"]["scale"], enc[f"LayerNorm_{j}"]["bias"])) for j in range(4)]
              + [(enc["Dense_4"]["kernel"], enc["Dense_4"]["bias"])])
    ref.eps_enc = 1e-6
    obs, goal = rng.standard_normal(obs_dim), rng.standard_normal(obs_dim)
    check_parity(model, ref, "inverse", obs, goal, rng, d)


def test_flax_rlbc_agent_matches_reference(tmp_path):
    rng = np.random.default_rng(1)
    d, obs_dim, rep, C, K = 6, 7, 5, 16, 2
    flow = flax_flow(rng, d, rep, K, C)
    enc = flax_encoder(rng, obs_dim, 10, rep)
    params = {"modules_actor": as_jax(flow), "modules_actor_encoder": as_jax(enc),
              "modules_critic": {"x": JaxArray(np.zeros(3))}, "modules_target_critic": {"x": JaxArray(np.zeros(3))}}
    ckpt = tmp_path / "params_1.pkl"
    with open(ckpt, "wb") as f:
        pickle.dump({"agent": {"rng": JaxArray(np.zeros(2)), "network": {"step": 7, "params": params, "opt_state": {}}}}, f)
    model = str(tmp_path / "rlbc.safetensors")
    info = run("import", "nf4rl", str(ckpt), "--kind", "flax-rlbc", "--out", model)
    assert "sampling       : forward" in info, info
    ref = Ref(flax_ref_blocks(flow), FLAX_PERM[d], 1e-6, True,
              encoder=[((enc[f"Dense_{j}"]["kernel"], enc[f"Dense_{j}"]["bias"]),
                        (enc[f"LayerNorm_{j}"]["scale"], enc[f"LayerNorm_{j}"]["bias"])) for j in range(4)]
              + [(enc["Dense_4"]["kernel"], enc["Dense_4"]["bias"])])
    ref.eps_enc = 1e-6
    check_parity(model, ref, "forward", rng.standard_normal(obs_dim), np.zeros(0), rng, d)


def torch_bc_state(rng, d, k, C, K):
    """A state_dict of the paper's PyTorch NF-BC RealNVP (d actions, k
    conditioning inputs, width C, K blocks), and its blocks for the
    reference."""
    state = OrderedDict()
    blocks = []
    for i in range(K):
        L, U, s = plu_params(rng, d)
        perm = rng.permutation(d)
        P = np.zeros((d, d), np.float32)
        P[np.arange(d), perm] = 1
        state[f"blocks.{i}.l.s"], state[f"blocks.{i}.l.U"], state[f"blocks.{i}.l.L"] = s, U, L
        state[f"blocks.{i}.l.P"], state[f"blocks.{i}.l.P_inv"] = P, P.T.copy()
        nets = {}
        for n in ("t", "s"):
            w0, b0 = rnd(rng, C, (d + 1) // 2 + k), rnd(rng, C, s=0.1)
            g0, bb0 = 1 + rnd(rng, C, s=0.1), rnd(rng, C, s=0.1)
            w1, b1 = rnd(rng, C, C, s=0.1), rnd(rng, C, s=0.1)
            g1, bb1 = 1 + rnd(rng, C, s=0.1), rnd(rng, C, s=0.1)
            w2, b2 = rnd(rng, d // 2, C, s=0.05), rnd(rng, d // 2, s=0.05)
            for idx, (w, b) in ((0, (w0, b0)), (2, (g0, bb0)), (3, (w1, b1)), (5, (g1, bb1)), (6, (w2, b2))):
                state[f"blocks.{i}.{n}.{idx}.weight"], state[f"blocks.{i}.{n}.{idx}.bias"] = w, b
            nets[n] = [(w0.T, b0), (g0, bb0), (w1.T, b1), (g1, bb1), (w2.T, b2)]
        blocks.append({"L": L, "U": U, "s_diag": s, "s": nets["s"], "t": nets["t"], "perm": perm})
    return state, blocks


def test_torch_bc_state_dict_matches_reference(tmp_path):
    rng = np.random.default_rng(2)
    d, k, C, K = 8, 9, 16, 3
    state, blocks = torch_bc_state(rng, d, k, C, K)
    ckpt = tmp_path / "nfbc.pt"
    write_torch(ckpt, state)
    model = str(tmp_path / "torch.safetensors")
    run("import", "nf4rl", str(ckpt), "--kind", "torch-bc", "--out", model)
    check_parity(model, torch_ref(blocks, d), "inverse", rng.standard_normal(k), np.zeros(0), rng, d)


def torch_ref(blocks, d, encoder=None):
    """The reference for a torch checkpoint: torch stores each block's own
    P, so W is built per block; LayerNorm eps 1e-5 (torch's)."""
    ref = Ref.__new__(Ref)
    ref.blocks, ref.eps, ref.flax, ref.encoder, ref.eps_enc = blocks, 1e-5, False, encoder, 1e-5
    ref.W, ref.logs = [], []
    for b in blocks:
        P = np.zeros((d, d))
        P[np.arange(d), b["perm"]] = 1
        ref.W.append(P @ (np.tril(b["L"], -1) + np.eye(d)) @ (np.triu(b["U"], 1) + np.diag(b["s_diag"])))
        ref.logs.append(np.log(np.abs(b["s_diag"])).sum())
    return ref


def test_save_agent_layout_with_encoder_matches_reference(tmp_path):
    """What the paper's `save_agent` writes (utils/torch_utils.py):
    {'model': flow.state_dict(), 'encoder': encoder.state_dict()}, the
    encoder's fc1..fc4 / norm1..norm4 / fc_out (before: "no blocks.0.l.s in
    the state_dict")."""
    rng = np.random.default_rng(5)
    d, obs_dim, rep, C, K, width = 4, 7, 6, 16, 2, 12
    flow, blocks = torch_bc_state(rng, d, rep, C, K)
    enc, ref_enc = OrderedDict(), []
    inp = obs_dim
    for j in range(1, 5):
        w, b = rnd(rng, width, inp, s=0.2), rnd(rng, width, s=0.1)
        g, bb = 1 + rnd(rng, width, s=0.1), rnd(rng, width, s=0.1)
        enc[f"fc{j}.weight"], enc[f"fc{j}.bias"] = w, b
        enc[f"norm{j}.weight"], enc[f"norm{j}.bias"] = g, bb
        ref_enc.append(((w.T, b), (g, bb)))
        inp = width
    w, b = rnd(rng, rep, width, s=0.2), rnd(rng, rep, s=0.1)
    enc["fc_out.weight"], enc["fc_out.bias"] = w, b
    ref_enc.append((w.T, b))
    ckpt = tmp_path / "params_100.pth"
    write_torch(ckpt, {"model": flow, "encoder": enc})
    model = str(tmp_path / "agent.safetensors")
    info = run("import", "nf4rl", str(ckpt), "--kind", "torch-bc", "--out", model)
    assert f"obs {obs_dim}, goal 0, act {d}" in info, info
    check_parity(model, torch_ref(blocks, d, ref_enc), "inverse", rng.standard_normal(obs_dim), np.zeros(0), rng, d)


def pusht_checkpoint(path, seed=4):
    """The paper's PyTorch NF-BC on PushT, by layout: 16-step chunks of 2-D
    actions (32 outputs), conditioned on 2 stacked 5-D observations (10)."""
    state, _ = torch_bc_state(np.random.default_rng(seed), 32, 10, 32, 2)
    # Tamed so that actions land inside the ±1 bounds (unscaled, 32-wide
    # random PLU factors reach 1e8 and every action clips): a test that
    # compares actions needs them distinct.
    for name in state:
        if name.endswith((".l.L", ".l.U", ".6.weight", ".6.bias")):
            state[name] = (state[name] * 0.05).astype(np.float32)
    write_torch(path, state)


def test_pusht_layout_imports_as_a_chunked_history_policy(tmp_path):
    ckpt = tmp_path / "pusht.pt"
    pusht_checkpoint(ckpt)
    model = str(tmp_path / "pusht.safetensors")
    # per-step bounds and normalisers are repeated over the chunk / history
    out = run("import", "nf4rl", str(ckpt), "--kind", "torch-bc", "--chunk", "16", "--obs-horizon", "2",
              "--action-low=-1,-2", "--action-high", "1,2", "--obs-mean", "0,0,0,0,0.5", "--obs-std", "1,1,1,1,2",
              "--out", model)
    assert "16 steps of 2 actions per sample; history 2 steps of 5 observations" in out, out
    header = json.loads(open(model, "rb").read()[8:8 + int.from_bytes(open(model, "rb").read(8), "little")])
    spec = json.loads(header["__metadata__"]["flowpilot"])
    assert (spec["chunk_len"], spec["obs_horizon"], spec["act_dim"], spec["obs_dim"]) == (16, 2, 32, 10)
    assert spec["action_low"] == [-1.0, -2.0] * 16 and spec["obs_norm"]["std"] == [1, 1, 1, 1, 2] * 2
    # the shapes alone cannot tell 16x2 from 8x4, but a flag that does not
    # divide them is refused
    for flags, msg in ((("--chunk", "5"), "--chunk 5 does not divide the checkpoint's 32 action outputs"),
                       (("--obs-horizon", "3"), "--obs-horizon 3 does not divide the checkpoint's 10 observation inputs")):
        r = subprocess.run([CLI, "import", "nf4rl", str(ckpt), "--kind", "torch-bc", *flags, "--out", model + "x"],
                           env=ENV, capture_output=True, text=True)
        assert r.returncode != 0 and msg in r.stderr, r.stderr
        assert not os.path.exists(model + "x")


def test_malicious_or_broken_checkpoints_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {"params": {"blocks_0": Evil()}}}, f)
    r = subprocess.run([CLI, "import", "nf4rl", str(evil), "--kind", "flax-gcbc", "--out", str(tmp_path / "x.st")],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode != 0 and "refuses" in r.stderr and "system" in r.stderr, r.stderr
    assert not (tmp_path / "pwned").exists(), "no code from the checkpoint may run"
    assert not (tmp_path / "x.st").exists()

    trunc = tmp_path / "trunc.pkl"
    data = pickle.dumps({"model": {"params": {}}})
    trunc.write_bytes(data[: len(data) // 2])
    r = subprocess.run([CLI, "import", "nf4rl", str(trunc), "--kind", "flax-gcbc", "--out", str(tmp_path / "y.st")],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode != 0 and "not a readable pickle" in r.stderr, r.stderr

    missing = tmp_path / "missing.pkl"
    rng = np.random.default_rng(3)
    flow = flax_flow(rng, 5, 3, 1, 8)
    del flow["blocks_0"]["s"]["layers_3"]
    with open(missing, "wb") as f:
        pickle.dump({"model": {"params": as_jax(flow)}}, f)
    r = subprocess.run([CLI, "import", "nf4rl", str(missing), "--kind", "flax-gcbc", "--out", str(tmp_path / "z.st")],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode != 0 and "layers_3" in r.stderr, r.stderr


def test_flax_permutation_recomputed_without_jax():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from jax_perm import flax_permutation
    for d, p in FLAX_PERM.items():
        assert flax_permutation(d) == p
