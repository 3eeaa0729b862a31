#!/usr/bin/env python3
"""Read a checkpoint of the paper's code ("Normalizing Flows are Capable
Models for RL") and write its flow in flowpilot's tensor layout.

  nf4rl_import.py CHECKPOINT --kind flax-gcbc|flax-rlbc|torch-bc --out-npz T.npz --out-json T.json

Called by `flowpilot import nf4rl`, which builds, validates and digests the
model file from these two outputs. Needs numpy only: pickles are read by a
restricted unpickler that rebuilds arrays and containers and refuses any
other global, so no code from the checkpoint runs; torch zip checkpoints are
read without torch; the flax permutation is recomputed by scripts/jax_perm.py.

Kinds:
  flax-gcbc  params pickle {'model': {'params': {blocks_i...}}, 'encoder': {'params': {Dense_j, LayerNorm_j}}}
             (il-and-cil flax code); blocks map action -> latent; LayerNorm eps 1e-6; hidden [C+k, C].
  flax-rlbc  agent pickle {'agent': {..., 'network': {'params': {'modules_actor': ..., 'modules_actor_encoder': ...}}}}
             (offline-rl code); blocks map latent -> action; eps 1e-6; hidden [C+k, C].
  torch-bc   torch.save of a RealNVP state_dict (blocks.i.l.{P,P_inv,L,U,s}, blocks.i.{s,t}.{0,2,3,5,6}.*),
             optionally with an encoder state_dict under 'encoder.' (fc1..fc4, fc_out, norm1..norm4),
             or as the paper's save_agent writes it: {'model': flow state_dict, 'encoder': encoder state_dict};
             blocks map action -> latent; eps 1e-5; hidden [C, C].
"""
import argparse
import io
import json
import math
import pickle
import sys
import zipfile

import numpy as np

from jax_perm import flax_permutation


class CheckpointError(Exception):
    pass


# ---------------------------------------------------------------- unpickling

try:  # numpy >= 2 (numpy.core is a deprecated alias there)
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _np_multiarray
_NP_RECONSTRUCT = _np_multiarray._reconstruct


def _callable_name(fun):
    mod, name = getattr(fun, "__module__", None), getattr(fun, "__qualname__", None)
    return f"{mod}.{name}" if isinstance(mod, str) and isinstance(name, str) else type(fun).__name__


def _jax_reconstruct(fun, args, arr_state, aval_state=None):
    """jax.Array.__reduce__ -> (_reconstruct_array, (fun, args, arr_state, aval_state)):
    rebuild the numpy value only. fun comes from the pickle, so it is checked to be
    numpy's own _reconstruct building a plain ndarray (anything else is refused)."""
    if fun is not _NP_RECONSTRUCT:
        raise CheckpointError(
            f"a jax array in the checkpoint is rebuilt through {_callable_name(fun)}; the importer refuses "
            "anything but numpy's _reconstruct there")
    if not (isinstance(args, tuple) and len(args) == 3 and args[0] is np.ndarray):
        raise CheckpointError("a jax array in the checkpoint has a malformed numpy reduce record")
    value = _NP_RECONSTRUCT(*args)
    np.ndarray.__setstate__(value, arr_state)
    return value


class _StateDict(dict):
    """collections.OrderedDict: a torch state_dict carries `_metadata` (module
    versions), set by a BUILD opcode. Accept that state and drop it; nothing runs."""

    def __setstate__(self, state):
        pass


class _Inert:
    """Stand-in for objects the flow does not need (e.g. a distrax prior in an
    agent pickle): accepts constructor args and state, runs nothing."""

    def __init__(self, *a, **k):
        pass

    def __setstate__(self, state):
        pass


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _np_multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _np_multiarray.scalar,
    ("collections", "OrderedDict"): _StateDict,
    ("flax.core.frozen_dict", "FrozenDict"): dict,
    ("jax._src.array", "_reconstruct_array"): _jax_reconstruct,
}
# Objects that may sit beside the parameters and are replaced by inert stand-ins.
_INERT_PREFIXES = ("distrax.", "tensorflow_probability.", "optax.")


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, storages=None):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        fn = _ALLOWED.get((module, name))
        if fn is not None:
            return fn
        if module.startswith(_INERT_PREFIXES):
            return _Inert
        if self.storages is not None:
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return _rebuild_tensor
            if module == "torch._utils" and name == "_rebuild_parameter":
                return lambda data, requires_grad, backward_hooks, *a: data
            if module == "torch" and name.endswith("Storage"):
                return _TORCH_DTYPES.get(name) or _unknown(module, name)
        raise CheckpointError(
            f"checkpoint references {module}.{name}; the importer only rebuilds arrays and containers "
            "and refuses anything else (it never runs code from a checkpoint)")

    def persistent_load(self, pid):
        if self.storages is None:
            raise CheckpointError("unexpected persistent id in a plain pickle")
        if not isinstance(pid, tuple) or len(pid) < 5:
            raise CheckpointError(f"unsupported torch storage record {pid!r}")
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage" or not any(storage_type is t for t in _TORCH_DTYPES.values()):
            raise CheckpointError(f"unsupported torch storage record {pid!r}")
        if type(numel) is not int or numel < 0:
            raise CheckpointError(f"torch storage {key!r} has a bad size {numel!r}")
        raw = self.storages(str(key))
        if len(raw) < numel * storage_type.itemsize:
            raise CheckpointError(f"torch storage {key} is truncated ({len(raw) // storage_type.itemsize} of {numel} values)")
        return _Storage(str(key), np.frombuffer(raw, dtype=storage_type.newbyteorder("<"), count=numel))


def _unknown(module, name):
    raise CheckpointError(f"checkpoint uses unsupported torch storage {module}.{name}")


_TORCH_DTYPES = {
    "FloatStorage": np.dtype(np.float32), "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16), "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32), "BoolStorage": np.dtype(np.bool_),
}


class _Storage:
    def __init__(self, key, values):
        self.key, self.values = key, values


def _is_ints(xs):
    return isinstance(xs, (tuple, list)) and all(type(x) is int for x in xs)


class _TensorView:
    """A torch tensor as the pickle describes it: a view (offset, size, stride) of
    a storage. Nothing is read until `array` has checked the view lies inside it."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self, name):
        st, off, size, stride = self.storage, self.offset, self.size, self.stride
        if not isinstance(st, _Storage):
            raise CheckpointError(f"torch tensor {name}: its storage is not a storage record")
        where = f"torch tensor {name} (storage {st.key}, offset {off!r}, size {size!r}, stride {stride!r})"
        if type(off) is not int or not _is_ints(size) or not _is_ints(stride) or len(size) != len(stride):
            raise CheckpointError(f"{where}: offset, size and stride must be integers, one stride per dimension")
        if off < 0 or any(n < 0 for n in size) or any(s < 0 for s in stride):
            raise CheckpointError(f"{where}: negative offset, size or stride")
        values, total = st.values, st.values.size
        count = math.prod(size)
        if count == 0:
            if off > total:
                raise CheckpointError(f"{where}: offset lies beyond its storage of {total} values")
            return np.zeros(tuple(size), dtype=values.dtype)
        last = off + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= total:
            raise CheckpointError(f"{where}: reads value {last} of a storage of {total} values")
        if count > total:
            raise CheckpointError(f"{where}: has {count} values, more than its storage of {total} (overlapping view)")
        contiguous, step = True, 1
        for n, s in reversed(list(zip(size, stride))):
            if n != 1 and s != step:
                contiguous = False
            step *= n
        if contiguous:
            return values[off:off + count].reshape(tuple(size)).copy()
        index = np.array(off, dtype=np.int64)
        for n, s in zip(size, stride):  # every index lies in [off, last], checked above
            index = index[..., None] + np.arange(n, dtype=np.int64) * s
        return values[index]

    def __array__(self, *a, **k):  # a tensor outside any named container
        return self.array("(unnamed)")


def _rebuild_tensor(storage, offset, size, stride, *rest):
    return _TensorView(storage, offset, size, stride)


def _materialize(node, name, done):
    """Turn every tensor view into an array, checking it against its storage and
    naming it by its key path in the error. Shared or cyclic containers are walked once."""
    if isinstance(node, _TensorView):
        return node.array(name or "(top level)")
    if not isinstance(node, (dict, list, tuple)):
        return node
    if id(node) in done:  # entries hold the original too, so its id is not reused meanwhile
        return done[id(node)][1]
    label = lambda k: f"{name}.{k}" if name else str(k)
    if isinstance(node, tuple):
        done[id(node)] = (node, node)  # a tuple inside itself goes through a list or dict, already marked
        out = tuple(_materialize(v, label(i), done) for i, v in enumerate(node))
        done[id(node)] = (node, out)
        return out
    done[id(node)] = (node, node)
    for k in (list(node.keys()) if isinstance(node, dict) else range(len(node))):
        node[k] = _materialize(node[k], label(k), done)
    return node


def load_pickle(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        if data[:2] == b"PK":
            return load_torch_zip(data)
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except CheckpointError:
        raise
    except Exception as e:  # truncated, not a pickle, or a broken torch zip
        what = "torch checkpoint" if data[:2] == b"PK" else "pickle"
        raise CheckpointError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None


def load_torch_zip(data):
    z = zipfile.ZipFile(io.BytesIO(data))
    names = z.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
        raise CheckpointError("torch checkpoint has no single data.pkl")
    prefix = pkl[0][: -len("data.pkl")]
    tree = RestrictedUnpickler(io.BytesIO(z.read(pkl[0])), storages=lambda k: z.read(f"{prefix}data/{k}")).load()
    return _materialize(tree, "", {})


# ---------------------------------------------------------------- conversion

def arr(tree, *path):
    node = tree
    for p in path:
        if not isinstance(node, dict) or p not in node:
            raise CheckpointError(f"checkpoint lacks {'/'.join(path)} (missing '{p}')")
        node = node[p]
    a = np.asarray(node)
    if a.dtype.kind not in "fi":
        raise CheckpointError(f"{'/'.join(path)} is not numeric")
    return a.astype(np.float32)


def count(tree, prefix):
    n = 0
    while f"{prefix}{n}" in tree:
        n += 1
    return n


def convert_flax(flow, encoder, direction):
    out = {}
    k_blocks = count(flow, "blocks_")
    if k_blocks == 0:
        raise CheckpointError("no blocks_0 in the flow parameters")
    d = arr(flow, "blocks_0", "l", "s").shape[0]
    perm = np.array(flax_permutation(d), dtype=np.int64)
    for i in range(k_blocks):
        b = flow[f"blocks_{i}"]
        out[f"blocks.{i}.lin.perm"] = perm
        out[f"blocks.{i}.lin.L"] = arr(b, "l", "L")
        out[f"blocks.{i}.lin.U"] = arr(b, "l", "U")
        out[f"blocks.{i}.lin.s"] = arr(b, "l", "s")
        for net in ("s", "t"):
            p = f"blocks.{i}.{net}"
            for j, layer in enumerate(("layers_0", "layers_3", "layers_6")):
                out[f"{p}.l{j}.w"] = arr(b, net, layer, "kernel")  # flax kernels are (in, out)
                out[f"{p}.l{j}.b"] = arr(b, net, layer, "bias")
            for j, layer in enumerate(("layers_2", "layers_5")):
                out[f"{p}.ln{j}.g"] = arr(b, net, layer, "scale")
                out[f"{p}.ln{j}.b"] = arr(b, net, layer, "bias")
    enc = None
    if encoder is not None:
        layers = count(encoder, "LayerNorm_")
        for j in range(layers):
            out[f"enc.l{j}.w"] = arr(encoder, f"Dense_{j}", "kernel")
            out[f"enc.l{j}.b"] = arr(encoder, f"Dense_{j}", "bias")
            out[f"enc.ln{j}.g"] = arr(encoder, f"LayerNorm_{j}", "scale")
            out[f"enc.ln{j}.b"] = arr(encoder, f"LayerNorm_{j}", "bias")
        out["enc.out.w"] = arr(encoder, f"Dense_{layers}", "kernel")
        out["enc.out.b"] = arr(encoder, f"Dense_{layers}", "bias")
        enc = {"width": int(out["enc.l0.w"].shape[1]), "layers": layers, "rep_dim": int(out["enc.out.w"].shape[1]),
               "in_dim": int(out["enc.l0.w"].shape[0])}
    h1, h2 = out["blocks.0.s.l0.w"].shape[1], out["blocks.0.s.l1.w"].shape[1]
    k = out["blocks.0.s.l0.w"].shape[0] - (d + 1) // 2
    return out, {"act_dim": d, "cond_dim": int(k), "blocks": k_blocks, "hidden": [int(h1), int(h2)],
                 "layer_norm_eps": 1e-6, "encoder": enc, "direction": direction}


def convert_torch(sd):
    if not isinstance(sd, dict):
        raise CheckpointError("torch checkpoint is not a state_dict")
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    # The paper's `save_agent` (utils/torch_utils.py): {'model': the flow's
    # state_dict, 'encoder': the observation encoder's}, nested.
    if isinstance(sd.get("model"), dict):
        flat = dict(sd["model"])
        enc = sd.get("encoder")
        if enc is not None and not isinstance(enc, dict):
            raise CheckpointError("the checkpoint's 'encoder' is not a state_dict")
        flat.update({f"encoder.{k}": v for k, v in (enc or {}).items()})
        sd = flat
    keys = {k: v for k, v in sd.items()}

    def t(name):
        if name not in keys:
            raise CheckpointError(f"checkpoint lacks '{name}'")
        return np.asarray(keys[name], dtype=np.float32)

    k_blocks = 0
    while f"blocks.{k_blocks}.l.s" in keys:
        k_blocks += 1
    if k_blocks == 0:
        raise CheckpointError("no blocks.0.l.s in the state_dict")
    out = {}
    d = t("blocks.0.l.s").shape[0]
    for i in range(k_blocks):
        p = t(f"blocks.{i}.l.P")
        if not (np.allclose(np.sort(p, axis=1)[:, :-1], 0) and np.allclose(p.max(axis=1), 1)
                and sorted(p.argmax(axis=1).tolist()) == list(range(d))):
            raise CheckpointError(f"blocks.{i}.l.P is not a permutation matrix")
        out[f"blocks.{i}.lin.perm"] = p.argmax(axis=1).astype(np.int64)  # row i -> column argmax
        out[f"blocks.{i}.lin.L"] = t(f"blocks.{i}.l.L")
        out[f"blocks.{i}.lin.U"] = t(f"blocks.{i}.l.U")
        out[f"blocks.{i}.lin.s"] = t(f"blocks.{i}.l.s")
        for net in ("s", "t"):
            q = f"blocks.{i}.{net}"
            for j, layer in enumerate((0, 3, 6)):
                out[f"{q}.l{j}.w"] = t(f"{q}.{layer}.weight").T.copy()  # torch weights are (out, in)
                out[f"{q}.l{j}.b"] = t(f"{q}.{layer}.bias")
            for j, layer in enumerate((2, 5)):
                out[f"{q}.ln{j}.g"] = t(f"{q}.{layer}.weight")
                out[f"{q}.ln{j}.b"] = t(f"{q}.{layer}.bias")
    enc = None
    if "encoder.fc1.weight" in keys:
        layers = 0
        while f"encoder.fc{layers + 1}.weight" in keys:
            out[f"enc.l{layers}.w"] = t(f"encoder.fc{layers + 1}.weight").T.copy()
            out[f"enc.l{layers}.b"] = t(f"encoder.fc{layers + 1}.bias")
            out[f"enc.ln{layers}.g"] = t(f"encoder.norm{layers + 1}.weight")
            out[f"enc.ln{layers}.b"] = t(f"encoder.norm{layers + 1}.bias")
            layers += 1
        out["enc.out.w"] = t("encoder.fc_out.weight").T.copy()
        out["enc.out.b"] = t("encoder.fc_out.bias")
        enc = {"width": int(out["enc.l0.w"].shape[1]), "layers": layers, "rep_dim": int(out["enc.out.w"].shape[1]),
               "in_dim": int(out["enc.l0.w"].shape[0])}
    h1, h2 = out["blocks.0.s.l0.w"].shape[1], out["blocks.0.s.l1.w"].shape[1]
    k = out["blocks.0.s.l0.w"].shape[0] - (d + 1) // 2
    return out, {"act_dim": d, "cond_dim": int(k), "blocks": k_blocks, "hidden": [int(h1), int(h2)],
                 "layer_norm_eps": 1e-5, "encoder": enc, "direction": "inverse"}


def convert(path, kind):
    tree = load_pickle(path)
    if kind == "flax-gcbc":
        if not isinstance(tree, dict) or "model" not in tree:
            raise CheckpointError("flax-gcbc checkpoint must be a dict with 'model' (and optionally 'encoder')")
        flow = tree["model"].get("params", tree["model"])
        enc = tree.get("encoder")
        enc = enc.get("params", enc) if isinstance(enc, dict) else None
        return convert_flax(flow, enc, "inverse")
    if kind == "flax-rlbc":
        agent = tree.get("agent", tree) if isinstance(tree, dict) else None
        try:
            params = agent["network"]["params"]
        except (TypeError, KeyError):
            raise CheckpointError("flax-rlbc checkpoint must hold agent/network/params") from None
        if "modules_actor" not in params:
            raise CheckpointError("flax-rlbc checkpoint has no modules_actor")
        return convert_flax(params["modules_actor"], params.get("modules_actor_encoder"), "forward")
    if kind == "torch-bc":
        return convert_torch(tree)
    raise CheckpointError(f"unknown kind {kind}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--kind", required=True, choices=["flax-gcbc", "flax-rlbc", "torch-bc"])
    ap.add_argument("--out-npz", required=True)
    ap.add_argument("--out-json", required=True)
    a = ap.parse_args()
    try:
        tensors, meta = convert(a.checkpoint, a.kind)
    except CheckpointError as e:
        print(f"import failed: {e}", file=sys.stderr)
        return 2
    np.savez(a.out_npz, **tensors)
    with open(a.out_json, "w") as f:
        json.dump(meta, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
