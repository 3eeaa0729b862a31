"""The fixed permutation P of the paper's flax checkpoints, without jax.

The flax model builds every block's InvertiblePLU from
`jax.nn.initializers.orthogonal()(jax.random.PRNGKey(0), (d, d))` and takes
P from its LU decomposition; P is not saved. This module recomputes it in
numpy with jax < 0.5 semantics (threefry2x32, non-partitionable bit
generation, float32): normal = sqrt(2) * erfinv(uniform(nextafter(-1, 0), 1)),
orthogonal = Q of QR with sign(diag(R)) folded in, then partial-pivot LU.
Only the pivot order matters, so tiny float differences (erfinv, QR
rounding) cannot change P unless two pivot candidates tie.
"""
import math

import numpy as np

M32 = 0xFFFFFFFF


def _rotl(x, r):
    return ((x << np.uint32(r)) | (x >> np.uint32(32 - r))).astype(np.uint32)


def threefry2x32(key, x0, x1):
    """Threefry-2x32 with 20 rounds, as jax's threefry_2x32 (uint32 arrays)."""
    k0, k1 = np.uint32(key[0]), np.uint32(key[1])
    k2 = np.uint32(k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    ks = [k0, k1, k2]
    rot = [[13, 15, 26, 6], [17, 29, 16, 24]]
    x0 = (x0 + ks[0]).astype(np.uint32)
    x1 = (x1 + ks[1]).astype(np.uint32)
    with np.errstate(over="ignore"):
        for i in range(5):
            for r in rot[i % 2]:
                x0 = (x0 + x1).astype(np.uint32)
                x1 = _rotl(x1, r)
                x1 = (x1 ^ x0).astype(np.uint32)
            x0 = (x0 + ks[(i + 1) % 3]).astype(np.uint32)
            x1 = (x1 + ks[(i + 2) % 3] + np.uint32(i + 1)).astype(np.uint32)
    return x0, x1


def random_bits(key, n):
    """jax < 0.5 `_threefry_random_bits` for n 32-bit words."""
    count = np.arange(n, dtype=np.uint32)
    if n % 2:
        count = np.concatenate([count, np.zeros(1, np.uint32)])
    half = len(count) // 2
    y0, y1 = threefry2x32(key, count[:half], count[half:])
    return np.concatenate([y0, y1])[:n]


def _erfinv(y):
    """Inverse error function by Newton iterations on math.erf (float64)."""
    out = np.empty_like(y, dtype=np.float64)
    for i, v in enumerate(y.astype(np.float64)):
        # Giles' single-precision approximation as the starting point
        w = -math.log((1.0 - v) * (1.0 + v))
        if w < 5.0:
            w -= 2.5
            p = 2.81022636e-08
            for c in (3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087, -0.00125372503,
                      -0.00417768164, 0.246640727, 1.50140941):
                p = c + p * w
        else:
            w = math.sqrt(w) - 3.0
            p = -0.000200214257
            for c in (0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613,
                      0.00943887047, 1.00167406, 2.83297682):
                p = c + p * w
        x = p * v
        for _ in range(3):
            err = math.erf(x) - v
            x -= err / (2.0 / math.sqrt(math.pi) * math.exp(-x * x))
        out[i] = x
    return out


def normal(key, n):
    bits = random_bits(key, n)
    f = ((bits >> np.uint32(9)) | np.uint32(0x3F800000)).view(np.float32) - np.float32(1.0)
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = np.maximum(lo, f * (np.float32(1.0) - lo) + lo).astype(np.float32)
    return (np.float32(math.sqrt(2.0)) * _erfinv(u)).astype(np.float32)


def orthogonal(d, key=(0, 0)):
    a = normal(key, d * d).reshape(d, d).astype(np.float64)
    q, r = np.linalg.qr(a)
    return q * np.sign(np.diag(r))[None, :]


def lu_pivot_perm(w):
    """Partial-pivot LU, W = P L U: returns perm with P[i, perm[i]] = 1."""
    d = w.shape[0]
    m = w.astype(np.float64).copy()
    rows = list(range(d))
    for k in range(d):
        p = k + int(np.argmax(np.abs(m[k:, k])))
        if p != k:
            m[[k, p]] = m[[p, k]]
            rows[k], rows[p] = rows[p], rows[k]
        m[k + 1:, k] /= m[k, k]
        m[k + 1:, k + 1:] -= np.outer(m[k + 1:, k], m[k, k + 1:])
    # Row i of L·U is row rows[i] of W, so W = P·L·U with P[rows[i], i] = 1.
    perm = [0] * d
    for i, r in enumerate(rows):
        perm[r] = i
    return perm


def flax_permutation(d):
    """P of the paper's flax InvertiblePLU for action dim d (jax < 0.5)."""
    return lu_pivot_perm(orthogonal(d))


if __name__ == "__main__":
    import sys
    for d in map(int, sys.argv[1:] or ["5", "6", "8"]):
        print(d, flax_permutation(d))
