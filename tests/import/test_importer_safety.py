"""Memory safety of the checkpoint importer (scripts/nf4rl_import.py).

A torch zip describes each tensor as a view (offset, size, stride) of a
storage; a crafted file can describe a view that reaches outside its storage.
The importer must refuse such a view with its own error, naming the tensor,
instead of reading other memory (garbage weights) or crashing. The importer
runs in a subprocess so that a crash shows up as a failed test. Needs numpy
only (no torch, no jax, no flowpilot binary): the writers come from
test_nf4rl.py, which emits the globals torch and jax emit.
"""
import io
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from test_nf4rl import (
    ROOT, FloatStorage, JaxArray, TorchPickler, TorchTensor, _Storage, _fake_module, _rebuild_tensor_v2,
    as_jax, flax_encoder, flax_flow, plu_params, rnd)

SCRIPT = os.path.join(ROOT, "scripts", "nf4rl_import.py")


def import_ckpt(tmp_path, ckpt, kind):
    npz, js = tmp_path / "out.npz", tmp_path / "out.json"
    r = subprocess.run([sys.executable, SCRIPT, str(ckpt), "--kind", kind, "--out-npz", str(npz), "--out-json", str(js)],
                       capture_output=True, text=True, timeout=120)
    return r, npz


# ------------------------------------------------ torch zips with hand-made views

class TensorView:
    """Pickles like a torch tensor with the given view of storage `key`."""

    def __init__(self, key, numel, offset, size, stride):
        self.key, self.numel, self.offset, self.size, self.stride = key, numel, offset, size, stride

    def __reduce__(self):
        storage = _Storage(("storage", FloatStorage, self.key, "cpu", self.numel))
        return (_rebuild_tensor_v2, (storage, self.offset, self.size, self.stride, False, OrderedDict()))


def torch_state(rng, d=4, k=3, C=8, K=1):
    """A paper-shaped RealNVP state_dict (see test_nf4rl.test_torch_bc_state_dict_matches_reference)."""
    state = OrderedDict()
    for i in range(K):
        L, U, s = plu_params(rng, d)
        P = np.zeros((d, d), np.float32)
        P[np.arange(d), rng.permutation(d)] = 1
        state[f"blocks.{i}.l.s"], state[f"blocks.{i}.l.U"], state[f"blocks.{i}.l.L"] = s, U, L
        state[f"blocks.{i}.l.P"], state[f"blocks.{i}.l.P_inv"] = P, P.T.copy()
        for n in ("t", "s"):
            shapes = {0: (C, (d + 1) // 2 + k), 2: (C,), 3: (C, C), 5: (C,), 6: (d // 2, C)}
            for idx, shape in shapes.items():
                state[f"blocks.{i}.{n}.{idx}.weight"] = rnd(rng, *shape, s=0.1) + (1 if idx in (2, 5) else 0)
                state[f"blocks.{i}.{n}.{idx}.bias"] = rnd(rng, shape[0], s=0.1)
    return state


def write_torch_views(path, state, storages=None, metadata=None, protocol=2):
    """Like test_nf4rl.write_torch, but a value may be a TensorView over one of
    `storages` (key -> float32 values), and the top-level OrderedDict may carry
    torch's `_metadata` attribute (which pickles through a BUILD opcode)."""
    tensors, blobs = OrderedDict(), dict(storages or {})
    for i, (k, v) in enumerate(state.items()):
        if isinstance(v, TensorView):
            tensors[k] = v
        else:
            tensors[k] = TorchTensor(v, f"t{i}")
            blobs[f"t{i}"] = v
    if metadata is not None:
        tensors._metadata = metadata
    buf = io.BytesIO()
    TorchPickler(buf, protocol=protocol).dump(tensors)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/version", "3\n")
        for key, v in blobs.items():
            z.writestr(f"archive/data/{key}", np.ascontiguousarray(v, dtype="<f4").tobytes())


FOUR = {"four": np.arange(1, 5, dtype=np.float32)}  # a 4-float storage


@pytest.mark.parametrize("name,view", [
    # (a) the view's extent exceeds its storage
    ("blocks.0.l.s", TensorView("four", 4, 0, (4,), (1 << 40,))),    # huge stride: crashed the importer
    ("blocks.0.l.U", TensorView("four", 4, 0, (4, 4), (4, 1))),      # size beyond the storage
    ("blocks.0.l.s", TensorView("four", 4, 10, (4,), (1,))),         # offset beyond the storage
    ("blocks.0.l.s", TensorView("four", 4, 1, (4,), (1,))),          # last element one past the end
    # (b) negative stride or offset
    ("blocks.0.l.s", TensorView("four", 4, 0, (4,), (-1,))),
    ("blocks.0.l.s", TensorView("four", 4, 3, (4,), (-1 << 40,))),
    ("blocks.0.l.s", TensorView("four", 4, -2, (4,), (1,))),
    # (c) a stride of 256 over a 4-float storage: used to return heap bytes as weights
    ("blocks.0.l.s", TensorView("four", 4, 0, (4,), (256,))),
    # non-integer geometry
    ("blocks.0.l.s", TensorView("four", 4, 0, (4,), (1.5,))),
    ("blocks.0.l.s", TensorView("four", 4, 0.0, (4,), (1,))),
    ("blocks.0.l.s", TensorView("four", 4, 0, ("4",), (1,))),
    ("blocks.0.l.s", TensorView("four", 4, 0, (4,), (1, 1))),
    # more values than the storage holds (zero stride) must not allocate without bound
    ("blocks.0.l.s", TensorView("four", 4, 0, (1 << 40,), (0,))),
], ids=["huge-stride", "size-beyond", "offset-beyond", "one-past-end", "negative-stride", "negative-huge-stride",
        "negative-offset", "stride-256", "float-stride", "float-offset", "str-size", "stride-rank", "zero-stride-huge"])
def test_torch_view_outside_its_storage_is_refused(tmp_path, name, view):
    state = torch_state(np.random.default_rng(4))
    state[name] = view
    ckpt = tmp_path / "crafted.pt"
    write_torch_views(ckpt, state, FOUR)
    r, npz = import_ckpt(tmp_path, ckpt, "torch-bc")
    assert r.returncode == 2, f"rc {r.returncode} (negative: killed by that signal, -11 a segfault)\n{r.stderr}"
    assert r.stderr.startswith("import failed: ") and "Traceback" not in r.stderr, r.stderr
    assert f"torch tensor {name} " in r.stderr and "storage four" in r.stderr, r.stderr
    assert not npz.exists(), "no weights may be written from a refused checkpoint"


def test_valid_strided_and_offset_views_are_rebuilt(tmp_path):
    """Views inside their storage still import: a transposed weight, a weight at an
    offset into a shared storage, a zero-size tensor beside them."""
    rng = np.random.default_rng(5)
    state = torch_state(rng)
    w = state["blocks.0.s.0.weight"]              # (C, in)
    u = state["blocks.0.l.U"]                     # (d, d)
    shared = np.concatenate([np.full(3, 7, np.float32), u.ravel(), w.T.ravel()])
    state["blocks.0.l.U"] = TensorView("shared", shared.size, 3, u.shape, (u.shape[1], 1))
    state["blocks.0.s.0.weight"] = TensorView("shared", shared.size, 3 + u.size, w.shape, (1, w.shape[0]))
    state["extra.empty"] = TensorView("shared", shared.size, shared.size, (0, 5), (5, 1))
    ckpt = tmp_path / "views.pt"
    write_torch_views(ckpt, state, {"shared": shared})
    r, npz = import_ckpt(tmp_path, ckpt, "torch-bc")
    assert r.returncode == 0, r.stderr
    out = np.load(npz)
    assert np.array_equal(out["blocks.0.lin.U"], u)
    assert np.array_equal(out["blocks.0.s.l0.w"], w.T)   # stored (in, out)


# ------------------------------------------------ the jax reduce path

class Normal:  # pickles as distrax._src.distributions.normal.Normal, read as an inert stand-in
    pass


_fake_module("distrax._src.distributions.normal", Normal=Normal)


class CraftedJaxArray:
    """Pickles like jax.Array, but names another callable where jax names numpy's _reconstruct."""

    def __init__(self, fun):
        self.fun = fun

    def __reduce__(self):
        _, args, state = np.zeros(3, np.float32).__reduce__()
        return (sys.modules["jax._src.array"]._reconstruct_array,
                (self.fun, args, state, {"weak_type": False, "named_shape": {}}))


@pytest.mark.parametrize("fun,shown", [
    (Normal, "_Inert"),                    # an inert stand-in: used to be accepted silently
    (np.dtype, "dtype"),                   # allowed as a global, but not as an array reconstructor
    (OrderedDict, "StateDict"),
    (np.ndarray, "ndarray"),
], ids=["inert-stand-in", "numpy-dtype", "ordered-dict", "numpy-ndarray"])
def test_jax_array_rebuilt_by_another_callable_is_refused(tmp_path, fun, shown):
    rng = np.random.default_rng(6)
    d, obs_dim, rep, C, K = 4, 5, 3, 8, 1
    params = {"modules_actor": as_jax(flax_flow(rng, d, rep, K, C)),
              "modules_actor_encoder": as_jax(flax_encoder(rng, obs_dim, 6, rep)),
              "modules_critic": {"x": CraftedJaxArray(fun)}}
    ckpt = tmp_path / "params_1.pkl"
    with open(ckpt, "wb") as f:
        pickle.dump({"agent": {"rng": JaxArray(np.zeros(2)), "network": {"params": params}}}, f)
    r, npz = import_ckpt(tmp_path, ckpt, "flax-rlbc")
    assert r.returncode == 2, f"rc {r.returncode}\n{r.stderr}"
    assert "jax array" in r.stderr and shown in r.stderr and "refuses" in r.stderr, r.stderr
    assert not npz.exists()


def test_jax_arrays_still_import(tmp_path):
    rng = np.random.default_rng(7)
    flow = flax_flow(rng, 4, 3, 1, 8)
    ckpt = tmp_path / "params_1.pkl"
    with open(ckpt, "wb") as f:
        pickle.dump({"agent": {"network": {"params": {"modules_actor": as_jax(flow)}}}}, f)
    r, npz = import_ckpt(tmp_path, ckpt, "flax-rlbc")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(npz)["blocks.0.lin.L"], flow["blocks_0"]["l"]["L"])


# ------------------------------------------------ torch.save(model.state_dict())

@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_state_dict_with_metadata_loads(tmp_path, protocol):
    """torch.save(model.state_dict()) pickles an OrderedDict whose `_metadata`
    attribute (an OrderedDict of per-module {'version': n}) is set by BUILD,
    with torch's default protocol 2 or a newer one (`pickle_protocol=`)."""
    state = torch_state(np.random.default_rng(8))
    metadata = OrderedDict([("", {"version": 1}), ("blocks", {"version": 1}), ("blocks.0", {"version": 1}),
                            ("blocks.0.s", {"version": 1}), ("blocks.0.s.2", {"version": 1})])
    ckpt = tmp_path / "state_dict.pt"
    write_torch_views(ckpt, state, metadata=metadata, protocol=protocol)
    with zipfile.ZipFile(ckpt) as z:
        data = z.read("archive/data.pkl")
    assert b"_metadata" in data and data.endswith(b"b."), "the state must arrive through BUILD"
    r, npz = import_ckpt(tmp_path, ckpt, "torch-bc")
    assert r.returncode == 0, r.stderr
    out = np.load(npz)
    assert np.array_equal(out["blocks.0.lin.s"], state["blocks.0.l.s"])
    assert np.array_equal(out["blocks.0.t.l1.w"], state["blocks.0.t.3.weight"].T)



def test_a_real_torch_save_state_dict_imports(tmp_path):
    """The same with torch itself, where it is installed (CI has no torch:
    the test above writes the opcode stream torch.save writes). In a clean
    interpreter: this one holds test_nf4rl's stand-in torch modules.
    FLOWPILOT_TORCH_PYTHON names an interpreter with torch (and numpy) when
    the test's own has none."""
    py = os.environ.get("FLOWPILOT_TORCH_PYTHON", sys.executable)
    if subprocess.run([py, "-c", "import torch"], capture_output=True).returncode != 0:
        pytest.skip("torch is not installed")
    state = torch_state(np.random.default_rng(9))
    np.savez(tmp_path / "state.npz", **state)
    for protocol in (2, pickle.DEFAULT_PROTOCOL):
        ckpt = tmp_path / f"real_{protocol}.pt"
        subprocess.run([py, "-c", f"""
import collections, numpy as np, torch
d = np.load({str(tmp_path / "state.npz")!r})
sd = collections.OrderedDict((k, torch.from_numpy(d[k].copy())) for k in {list(state)!r})
sd._metadata = collections.OrderedDict([("", {{"version": 1}}), ("blocks", {{"version": 1}})])
torch.save(sd, {str(ckpt)!r}, pickle_protocol={protocol})
"""], check=True)
        r, npz = import_ckpt(tmp_path, ckpt, "torch-bc")
        assert r.returncode == 0, r.stderr
        assert np.array_equal(np.load(npz)["blocks.0.lin.s"], state["blocks.0.l.s"])
    # And a real module's state_dict, as the paper's training script saves
    # it: nn.Module attributes in the paper's layout, loaded strictly (so the
    # names and shapes are torch's own), then torch.save(model.state_dict()).
    ckpt = tmp_path / "module.pt"
    subprocess.run([py, "-c", f"""
import numpy as np, torch
from torch import nn
d = np.load({str(tmp_path / "state.npz")!r})
class Lin(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.s, self.U, self.L = (nn.Parameter(torch.zeros(*sh)) for sh in ((n,), (n, n), (n, n)))
        self.register_buffer("P", torch.zeros(n, n))
        self.register_buffer("P_inv", torch.zeros(n, n))
def net(i, c, o):
    return nn.Sequential(nn.Linear(i, c), nn.LeakyReLU(), nn.LayerNorm(c), nn.Linear(c, c), nn.LeakyReLU(),
                         nn.LayerNorm(c), nn.Linear(c, o))
class Block(nn.Module):
    def __init__(self, n, k, c):
        super().__init__()
        self.l, self.t, self.s = Lin(n), net((n + 1) // 2 + k, c, n // 2), net((n + 1) // 2 + k, c, n // 2)
class Flow(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(4, 3, 8)])
m = Flow()
m.load_state_dict({{k: torch.from_numpy(d[k].copy()) for k in d.files}}, strict=True)
torch.save(m.state_dict(), {str(ckpt)!r})
"""], check=True)
    r, npz = import_ckpt(tmp_path, ckpt, "torch-bc")
    assert r.returncode == 0, r.stderr
    out = np.load(npz)
    assert np.array_equal(out["blocks.0.lin.s"], state["blocks.0.l.s"])
    assert np.array_equal(out["blocks.0.t.l1.w"], state["blocks.0.t.3.weight"].T)
