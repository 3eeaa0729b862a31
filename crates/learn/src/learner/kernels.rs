//! Batch kernels of the hand-written SAC path ([`super::fast`]): matmuls on
//! row-major slices through the `gemm` crate (the one candle itself calls),
//! the fused Dense-bias → LeakyReLU → LayerNorm layer with its hand-written
//! backward, the critics' fused Dense-bias → LayerNorm (no affine) → ReLU
//! and its LayerNorm backward, the fused AdamW step and the Polyak average.
//!
//! Why hand-written: candle runs each of the ~15 elementwise ops of a
//! composite LayerNorm as its own pass with its own allocation (and as many
//! again for the backward); fused here, one pass over each row does what
//! those did, in buffers that live across updates.
//!
//! Learner only (off the control thread): no real-time promise. Generic over
//! the float type so that the gradient-parity test can run in f64.

use gemm::Parallelism;
use num_traits::Float;

/// The float types the fast path runs in (f32 in the learner, f64 in the
/// parity test).
pub(crate) trait Real:
    Float
    + candle_core::WithDType
    + Default
    + Send
    + Sync
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + std::fmt::Debug
    + 'static
{
    fn of(x: f64) -> Self;

    fn to64(self) -> f64 {
        <Self as candle_core::WithDType>::to_f64(self)
    }

    // Named apart from candle's `VecOps::{max, min}`, which T also has.
    fn max_of(self, o: Self) -> Self {
        Float::max(self, o)
    }

    fn min_of(self, o: Self) -> Self {
        Float::min(self, o)
    }
}

impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
}

/// A matrix operand: a slice and its (row, column) strides in elements, so
/// a transpose is a stride swap and never a copy.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    data: &'a [T],
    rs: usize,
    cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// Row-major (rows, cols) with leading dimension `cols`.
    pub(crate) fn rows(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub(crate) fn t(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }

    fn end(&self, r: usize, c: usize) -> usize {
        if r == 0 || c == 0 {
            0
        } else {
            (r - 1) * self.rs + (c - 1) * self.cs + 1
        }
    }
}

/// dst (m×n, row-major) = [dst +] lhs (m×k) · rhs (k×n).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    accumulate: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
    par: Parallelism,
) {
    // The bounds the unsafe call relies on, checked once per call (a
    // handful per layer, nothing per element).
    assert!(dst.len() >= m * n, "matmul: dst too short");
    assert!(lhs.data.len() >= lhs.end(m, k), "matmul: lhs too short");
    assert!(rhs.data.len() >= rhs.end(k, n), "matmul: rhs too short");
    if m == 0 || n == 0 {
        return;
    }

    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::zero());
        }
        return;
    }
    // SAFETY: every element gemm reads or writes lies inside the slices
    // (asserted above); dst does not alias lhs or rhs (&mut vs &).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}

/// Column sums of a row-major (rows × cols) matrix, added into `acc`.
pub(crate) fn add_col_sums<T: Real>(x: &[T], cols: usize, acc: &mut [T]) {
    for row in x.chunks_exact(cols) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
}

/// Saved state of one fused layer for its backward.
#[derive(Default)]
pub(crate) struct LnCache<T> {
    /// LeakyReLU input (Dense output with bias), (B, n).
    pub(crate) pre: Vec<T>,
    /// Normalised activations before the affine, (B, n).
    pub(crate) norm: Vec<T>,
    /// 1 / sqrt(var + ε) per row.
    pub(crate) rstd: Vec<T>,
}

/// Lanes of the row reductions: a single running sum is one long chain of
/// dependent adds (latency-bound, not vectorised); 16 independent partial
/// sums let the compiler use full vectors.
const LANES: usize = 16;

/// Σ f(i) over 0..n in `LANES` partial sums.
#[inline(always)]
fn lane_sum<T: Real>(n: usize, mut f: impl FnMut(usize) -> T) -> T {
    let mut acc = [T::zero(); LANES];
    let full = n / LANES * LANES;
    let mut i = 0;
    while i < full {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
        i += LANES;
    }
    let mut tail = T::zero();
    for j in full..n {
        tail += f(j);
    }
    acc.iter().fold(tail, |s, &a| s + a)
}

/// LeakyReLU(0.01) as a select (what max(x, 0.01x) is for finite x),
/// which vectorises where `max`'s NaN rules get in the way.
#[inline(always)]
fn leaky<T: Real>(x: T, slope: T) -> T {
    if x > T::zero() {
        x
    } else {
        x * slope
    }
}

/// h = LayerNorm(LeakyReLU(pre + bias)) · g + beta, per row of width n.
/// `pre` holds the matmul output on entry and pre + bias on return (the
/// backward needs it for the LeakyReLU slope). Same math as the twin's
/// composite: max(x, 0.01x), biased variance of the centred row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn leaky_ln_forward<T: Real>(
    pre: &mut [T],
    bias: &[T],
    g: &[T],
    beta: &[T],
    eps: T,
    norm: &mut [T],
    rstd: &mut [T],
    h: &mut [T],
) {
    let n = bias.len();
    let inv_n = T::one() / T::of(n as f64);
    let slope = T::of(0.01);
    for (((p, nr), r), hr) in pre
        .chunks_exact_mut(n)
        .zip(norm.chunks_exact_mut(n))
        .zip(rstd.iter_mut())
        .zip(h.chunks_exact_mut(n))
    {
        for ((pv, &b), nv) in p.iter_mut().zip(bias).zip(nr.iter_mut()) {
            *pv += b;
            *nv = leaky(*pv, slope);
        }
        let mean = lane_sum(n, |i| nr[i]) * inv_n;
        for nv in nr.iter_mut() {
            *nv -= mean;
        }
        let var = lane_sum(n, |i| nr[i] * nr[i]) * inv_n;
        let rs = T::one() / (var + eps).sqrt();
        *r = rs;
        for (((nv, hv), &gv), &bv) in nr.iter_mut().zip(hr.iter_mut()).zip(g).zip(beta) {
            *nv *= rs;
            *hv = *nv * gv + bv;
        }
    }
}

/// Backward of [`leaky_ln_forward`]: `dh` (B, n) in, the gradient w.r.t.
/// the Dense output (pre-bias) out in `dh`'s place; dg, dbeta and the bias
/// gradient are accumulated.
#[allow(clippy::too_many_arguments)]
pub(crate) fn leaky_ln_backward<T: Real>(
    dh: &mut [T],
    cache: &LnCache<T>,
    g: &[T],
    dg: &mut [T],
    dbeta: &mut [T],
    dbias: &mut [T],
) {
    let n = g.len();
    let inv_n = T::one() / T::of(n as f64);
    let slope = T::of(0.01);
    for (((d, nr), &rs), p) in dh
        .chunks_exact_mut(n)
        .zip(cache.norm.chunks_exact(n))
        .zip(&cache.rstd)
        .zip(cache.pre.chunks_exact(n))
    {
        // dn = dh·g; dl = rstd·(dn − mean(dn) − n̂·mean(dn·n̂)).
        for ((((dv, &nv), &gv), dgv), dbv) in d
            .iter_mut()
            .zip(nr)
            .zip(g)
            .zip(dg.iter_mut())
            .zip(dbeta.iter_mut())
        {
            *dgv += *dv * nv;
            *dbv += *dv;
            *dv *= gv;
        }
        let m1 = lane_sum(n, |i| d[i]) * inv_n;
        let m2 = lane_sum(n, |i| d[i] * nr[i]) * inv_n;
        for (((dv, &nv), &pv), dbb) in d.iter_mut().zip(nr).zip(p).zip(dbias.iter_mut()) {
            let dl = rs * (*dv - m1 - nv * m2);
            // max(x, 0.01x): slope 1 where x > 0, 0.01 where x < 0.
            let da = if pv > T::zero() { dl } else { dl * slope };
            *dv = da;
            *dbb += da;
        }
    }
}

/// The critics' LayerNorm ε (`sac::layer_norm`).
pub(crate) const CRITIC_LN_EPS: f64 = 1e-5;

/// h = ReLU(LayerNorm(pre + bias)) per row of width n, the LayerNorm without
/// affine (the `--critic-layer-norm` critics, as in RLPD). `pre` holds the
/// matmul output on entry and h on return; `norm` gets the normalised row
/// before the ReLU and `rstd` 1 / sqrt(var + ε), for the backward. Same math
/// as `sac::layer_norm`: biased variance of the centred row.
pub(crate) fn ln_relu_forward<T: Real>(
    pre: &mut [T],
    bias: &[T],
    eps: T,
    norm: &mut [T],
    rstd: &mut [T],
) {
    let n = bias.len();
    let inv_n = T::one() / T::of(n as f64);
    for ((p, nr), r) in pre
        .chunks_exact_mut(n)
        .zip(norm.chunks_exact_mut(n))
        .zip(rstd.iter_mut())
    {
        for (pv, &b) in p.iter_mut().zip(bias) {
            *pv += b;
        }
        let mean = lane_sum(n, |i| p[i]) * inv_n;
        for (nv, &pv) in nr.iter_mut().zip(p.iter()) {
            *nv = pv - mean;
        }
        let var = lane_sum(n, |i| nr[i] * nr[i]) * inv_n;
        let rs = T::one() / (var + eps).sqrt();
        *r = rs;
        for (nv, pv) in nr.iter_mut().zip(p.iter_mut()) {
            *nv *= rs;
            *pv = nv.max_of(T::zero());
        }
    }
}

/// Backward of the LayerNorm of [`ln_relu_forward`]: `dn` (B, n), the
/// gradient w.r.t. the normalised rows (the ReLU's mask already applied
/// by the caller), rows of width n, in; the gradient w.r.t. pre + bias out in its place:
/// rstd·(dn − mean(dn) − n̂·mean(dn·n̂)).
pub(crate) fn ln_backward<T: Real>(dn: &mut [T], n: usize, norm: &[T], rstd: &[T]) {
    let inv_n = T::one() / T::of(n as f64);
    for ((d, nr), &rs) in dn.chunks_exact_mut(n).zip(norm.chunks_exact(n)).zip(rstd) {
        let m1 = lane_sum(n, |i| d[i]) * inv_n;
        let m2 = lane_sum(n, |i| d[i] * nr[i]) * inv_n;
        for (dv, &nv) in d.iter_mut().zip(nr) {
            *dv = rs * (*dv - m1 - nv * m2);
        }
    }
}

/// AdamW hyper-parameters (candle-nn's `ParamsAdamW`, same meaning).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamCfg {
    pub(crate) lr: f64,
    pub(crate) beta1: f64,
    pub(crate) beta2: f64,
    pub(crate) eps: f64,
    pub(crate) weight_decay: f64,
}

/// One AdamW step over flat buffers, step count `t` (1-based): the same
/// arithmetic, in the same order, as candle-nn's `AdamW::step`, fused into
/// one pass instead of ten tensors per parameter.
pub(crate) fn adamw_step<T: Real>(
    c: &AdamCfg,
    t: u64,
    theta: &mut [T],
    grad: &[T],
    m: &mut [T],
    v: &mut [T],
) {
    let scale_m = T::of(1.0 / (1.0 - c.beta1.powi(t as i32)));
    let scale_v = T::of(1.0 / (1.0 - c.beta2.powi(t as i32)));
    let (b1, b1c) = (T::of(c.beta1), T::of(1.0 - c.beta1));
    let (b2, b2c) = (T::of(c.beta2), T::of(1.0 - c.beta2));
    let decay = T::of(1.0 - c.lr * c.weight_decay);
    let (lr, eps) = (T::of(c.lr), T::of(c.eps));
    for (((th, &g), mv), vv) in theta
        .iter_mut()
        .zip(grad)
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        let nm = *mv * b1 + g * b1c;
        let nv = *vv * b2 + (g * g) * b2c;
        let adj = (nm * scale_m) / ((nv * scale_v).sqrt() + eps);
        *th = *th * decay - adj * lr;
        *mv = nm;
        *vv = nv;
    }
}

/// target ← target·(1 − τ) + source·τ.
pub(crate) fn polyak<T: Real>(target: &mut [T], source: &[T], tau: f64) {
    let (keep, take) = (T::of(1.0 - tau), T::of(tau));
    for (t, &s) in target.iter_mut().zip(source) {
        *t = *t * keep + s * take;
    }
}
