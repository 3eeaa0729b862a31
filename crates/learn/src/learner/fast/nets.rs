//! Per-row kernels of the hand-written update: the coupling nets' and the
//! critics' forward and backward, and the gradient through W = P·L·U's
//! factors. Learner only.

use super::*;

pub(super) fn transpose64(d: usize, a: &[f64]) -> Vec<f64> {
    let mut o = vec![0f64; d * d];
    for r in 0..d {
        for c in 0..d {
            o[c * d + r] = a[r * d + c];
        }
    }
    o
}

/// From the gradient w.r.t. W (forward) or W⁻¹ (inverse), and the one
/// w.r.t. Σ log|s|, to the gradients of L, U and s.
pub(super) fn plu_backward<T: Real>(
    d: usize,
    plu: &Plu<T>,
    inverse: bool,
    dmat: &[T],
    dlas: T,
    grad: &mut [T],
    bs: &BlockSlots,
) {
    let plu = plu
        .f64
        .as_ref()
        .expect("prepare() builds every block before a backward pass");
    let g: Vec<f64> = dmat.iter().map(|v| v.to64()).collect();
    // d(W⁻¹) = −W⁻¹ dW W⁻¹  ⇒  ∂/∂W = −W⁻ᵀ G W⁻ᵀ.
    let dw = if inverse {
        let wt = transpose64(d, plu.w_inv());
        mm64(d, &mm64(d, &wt, &g), &wt)
            .into_iter()
            .map(|v| -v)
            .collect()
    } else {
        g
    };
    // W = (P·Lm)·Um: ∂Lm = Pᵀ·∂W·Umᵀ, ∂Um = (P·Lm)ᵀ·∂W.
    let dlm = mm64(
        d,
        &mm64(d, &transpose64(d, plu.p()), &dw),
        &transpose64(d, plu.um()),
    );
    let dum = mm64(d, &transpose64(d, plu.p_lm()), &dw);
    let dlas = dlas.to64();
    let gl = bs.l.of_mut(grad);
    for r in 0..d {
        for c in 0..r {
            gl[r * d + c] += T::of(dlm[r * d + c]);
        }
    }
    let gu = bs.u.of_mut(grad);
    for r in 0..d {
        for c in r + 1..d {
            gu[r * d + c] += T::of(dum[r * d + c]);
        }
    }
    let gs = bs.s.of_mut(grad);
    for i in 0..d {
        gs[i] += T::of(dum[i * d + i] + dlas / plu.s()[i]);
    }
}

/// One coupling MLP forward: Dense → LeakyReLU → LayerNorm, twice, Dense.
pub(super) fn net_forward<T: Real>(
    data: &[T],
    ns: &NetSlots,
    inp: &[T],
    b: usize,
    c: &mut NetCache<T>,
    eps: T,
    par: Parallelism,
) {
    let layer = |x: &[T],
                 xw: usize,
                 w: Slot,
                 bias: Slot,
                 g: Slot,
                 be: Slot,
                 n: usize,
                 lc: &mut LnCache<T>,
                 h: &mut Vec<T>| {
        resize(&mut lc.pre, b * n);
        resize(&mut lc.norm, b * n);
        resize(&mut lc.rstd, b);
        resize(h, b * n);
        matmul(
            b,
            n,
            xw,
            &mut lc.pre,
            false,
            Mat::rows(x, xw),
            Mat::rows(w.of(data), n),
            par,
        );
        leaky_ln_forward(
            &mut lc.pre,
            bias.of(data),
            g.of(data),
            be.of(data),
            eps,
            &mut lc.norm,
            &mut lc.rstd,
            h,
        );
    };
    layer(
        inp, ns.inp, ns.w0, ns.b0, ns.g0, ns.be0, ns.h0, &mut c.l0, &mut c.h0,
    );
    layer(
        &c.h0, ns.h0, ns.w1, ns.b1, ns.g1, ns.be1, ns.h1, &mut c.l1, &mut c.h1,
    );
    resize(&mut c.out, b * ns.out);
    matmul(
        b,
        ns.out,
        ns.h1,
        &mut c.out,
        false,
        Mat::rows(&c.h1, ns.h1),
        Mat::rows(ns.w2.of(data), ns.out),
        par,
    );
    let bias = ns.b2.of(data);
    for row in c.out.chunks_exact_mut(ns.out) {
        for (o, &bv) in row.iter_mut().zip(bias) {
            *o += bv;
        }
    }
}

/// Backward of [`net_forward`]: parameter gradients accumulate into
/// `grad`; the input gradient's first `d1` columns are added to `din`.
#[allow(clippy::too_many_arguments)]
pub(super) fn net_backward<T: Real>(
    data: &[T],
    grad: &mut [T],
    ns: &NetSlots,
    inp: &[T],
    b: usize,
    c: &mut NetCache<T>,
    dout: &[T],
    d1: usize,
    din: &mut [T],
    dh0: &mut Vec<T>,
    dh1: &mut Vec<T>,
    par: Parallelism,
) {
    let (h0, h1, out) = (ns.h0, ns.h1, ns.out);
    matmul(
        h1,
        out,
        b,
        ns.w2.of_mut(grad),
        true,
        Mat::t(&c.h1, h1),
        Mat::rows(dout, out),
        par,
    );
    add_col_sums(dout, out, ns.b2.of_mut(grad));
    resize(dh1, b * h1);
    matmul(
        b,
        h1,
        out,
        dh1,
        false,
        Mat::rows(dout, out),
        Mat::t(ns.w2.of(data), out),
        par,
    );
    {
        let (db, dg, dbe) = three_mut(grad, ns.b1, ns.g1, ns.be1);
        leaky_ln_backward(dh1, &c.l1, ns.g1.of(data), dg, dbe, db);
    }
    matmul(
        h0,
        h1,
        b,
        ns.w1.of_mut(grad),
        true,
        Mat::t(&c.h0, h0),
        Mat::rows(dh1, h1),
        par,
    );
    resize(dh0, b * h0);
    matmul(
        b,
        h0,
        h1,
        dh0,
        false,
        Mat::rows(dh1, h1),
        Mat::t(ns.w1.of(data), h1),
        par,
    );
    {
        let (db, dg, dbe) = three_mut(grad, ns.b0, ns.g0, ns.be0);
        leaky_ln_backward(dh0, &c.l0, ns.g0.of(data), dg, dbe, db);
    }
    matmul(
        ns.inp,
        h0,
        b,
        ns.w0.of_mut(grad),
        true,
        Mat::t(inp, ns.inp),
        Mat::rows(dh0, h0),
        par,
    );
    // Only the first d1 input columns (the flow's own half) need a gradient:
    // the conditioning has none to take (no encoder on this path).
    let w0_first = &ns.w0.of(data)[..d1 * h0];
    matmul(
        b,
        d1,
        h0,
        din,
        true,
        Mat::rows(dh0, h0),
        Mat::t(w0_first, h0),
        par,
    );
}

/// ReLU critic forward: q = relu(relu(x·W0 + b0)·W1 + b1)·W2 + b2, or with
/// a LayerNorm (no affine) inside each relu when `cs.ln`.
pub(super) fn critic_forward<T: Real>(
    data: &[T],
    cs: &CriticSlots,
    x: &[T],
    b: usize,
    c: &mut CriticCache<T>,
    par: Parallelism,
) {
    let h = cs.hid;
    let eps = T::of(CRITIC_LN_EPS);
    let dense_relu = |inp: &[T],
                      iw: usize,
                      w: Slot,
                      bias: Slot,
                      out: &mut Vec<T>,
                      norm: &mut Vec<T>,
                      rstd: &mut Vec<T>| {
        resize(out, b * h);
        matmul(
            b,
            h,
            iw,
            out,
            false,
            Mat::rows(inp, iw),
            Mat::rows(w.of(data), h),
            par,
        );
        let bias = bias.of(data);
        if cs.ln {
            resize(norm, b * h);
            resize(rstd, b);
            ln_relu_forward(out, bias, eps, norm, rstd);
            return;
        }
        for row in out.chunks_exact_mut(h) {
            for (o, &bv) in row.iter_mut().zip(bias) {
                *o = (*o + bv).max_of(T::zero());
            }
        }
    };
    dense_relu(x, cs.inp, cs.w[0], cs.b[0], &mut c.h0, &mut c.n0, &mut c.r0);
    dense_relu(&c.h0, h, cs.w[1], cs.b[1], &mut c.h1, &mut c.n1, &mut c.r1);
    resize(&mut c.q, b);
    matmul(
        b,
        1,
        h,
        &mut c.q,
        false,
        Mat::rows(&c.h1, h),
        Mat::rows(cs.w[2].of(data), 1),
        par,
    );
    let b2 = cs.b[2].of(data)[0];
    for q in c.q.iter_mut() {
        *q += b2;
    }
}

/// Backward of [`critic_forward`] from dq (B): weight gradients into `grad`
/// when given; the gradient w.r.t. x's columns from `dx.1` on added to
/// `dx.0` when given.
#[allow(clippy::too_many_arguments)]
pub(super) fn critic_backward<T: Real>(
    data: &[T],
    mut grad: Option<&mut Vec<T>>,
    cs: &CriticSlots,
    x: &[T],
    b: usize,
    c: &CriticCache<T>,
    dq: &[T],
    dx: Option<(&mut Vec<T>, usize)>,
    w: &mut Work<T>,
    par: Parallelism,
) {
    let h = cs.hid;
    if let Some(g) = grad.as_mut() {
        matmul(
            h,
            1,
            b,
            cs.w[2].of_mut(g),
            true,
            Mat::t(&c.h1, h),
            Mat::rows(dq, 1),
            par,
        );
        cs.b[2].of_mut(g)[0] += dq.iter().fold(T::zero(), |a, &v| a + v);
    }
    // dh1 = dq·W2ᵀ, through the ReLU (its output is 0 where it was cut)
    // and the LayerNorm when there is one.
    resize(&mut w.d1, b * h);
    let w2 = cs.w[2].of(data);
    for ((row, &dqv), hr) in w.d1.chunks_exact_mut(h).zip(dq).zip(c.h1.chunks_exact(h)) {
        for ((o, &wv), &hv) in row.iter_mut().zip(w2).zip(hr) {
            *o = if hv > T::zero() { dqv * wv } else { T::zero() };
        }
    }
    if cs.ln {
        ln_backward(&mut w.d1, h, &c.n1, &c.r1);
    }
    if let Some(g) = grad.as_mut() {
        matmul(
            h,
            h,
            b,
            cs.w[1].of_mut(g),
            true,
            Mat::t(&c.h0, h),
            Mat::rows(&w.d1, h),
            par,
        );
        add_col_sums(&w.d1, h, cs.b[1].of_mut(g));
    }
    resize(&mut w.d0, b * h);
    matmul(
        b,
        h,
        h,
        &mut w.d0,
        false,
        Mat::rows(&w.d1, h),
        Mat::t(cs.w[1].of(data), h),
        par,
    );
    for (o, &hv) in w.d0.iter_mut().zip(&c.h0) {
        if hv <= T::zero() {
            *o = T::zero();
        }
    }
    if cs.ln {
        ln_backward(&mut w.d0, h, &c.n0, &c.r0);
    }
    if let Some(g) = grad.as_mut() {
        matmul(
            cs.inp,
            h,
            b,
            cs.w[0].of_mut(g),
            true,
            Mat::t(x, cs.inp),
            Mat::rows(&w.d0, h),
            par,
        );
        add_col_sums(&w.d0, h, cs.b[0].of_mut(g));
    }
    if let Some((dx, from)) = dx {
        let cols = cs.inp - from;
        let w0_tail = &cs.w[0].of(data)[from * h..];
        matmul(
            b,
            cols,
            h,
            dx,
            true,
            Mat::rows(&w.d0, h),
            Mat::t(w0_tail, h),
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    //! Each kernel's backward against central finite differences of its
    //! forward, in f64.
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(seed)
    }

    /// (f(v + h·eᵢ) − f(v − h·eᵢ)) / 2h, with v left as it was.
    fn central_difference(v: &mut [f64], i: usize, f: &dyn Fn(&[f64]) -> f64) -> f64 {
        let (x, h) = (v[i], 1e-6);
        v[i] = x + h;
        let up = f(v);
        v[i] = x - h;
        let down = f(v);
        v[i] = x;
        (up - down) / (2.0 * h)
    }

    fn close(a: f64, b: f64, what: &str) {
        assert!(
            (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs())),
            "{what}: backward {a} vs finite differences {b}"
        );
    }

    /// Σ dout·out for one coupling MLP (Dense → LeakyReLU → LayerNorm with
    /// affine, twice, Dense), and its gradient w.r.t. every weight and the
    /// first `d1` input columns.
    #[test]
    fn net_backward_matches_finite_differences() {
        let (b, inp, h0, h1, out, d1) = (3usize, 6usize, 5usize, 4usize, 3usize, 2usize);
        let mut r = rng(3);
        let mut off = 0;
        let mut slot = |len: usize| {
            let s = Slot { off, len };
            off += len;
            s
        };
        let ns = NetSlots {
            w0: slot(inp * h0),
            b0: slot(h0),
            g0: slot(h0),
            be0: slot(h0),
            w1: slot(h0 * h1),
            b1: slot(h1),
            g1: slot(h1),
            be1: slot(h1),
            w2: slot(h1 * out),
            b2: slot(out),
            inp,
            h0,
            h1,
            out,
        };
        let eps = 1e-5;
        let mut data: Vec<f64> = (0..off).map(|_| r.random_range(-0.8..0.8)).collect();
        let mut x: Vec<f64> = (0..b * inp).map(|_| r.random_range(-1.0..1.0)).collect();
        let dout: Vec<f64> = (0..b * out).map(|_| r.random_range(-1.0..1.0)).collect();
        let loss = |data: &[f64], x: &[f64]| -> f64 {
            let mut c = NetCache::default();
            net_forward(data, &ns, x, b, &mut c, eps, Parallelism::None);
            c.out.iter().zip(&dout).map(|(o, d)| o * d).sum()
        };
        let mut c = NetCache::default();
        net_forward(&data, &ns, &x, b, &mut c, eps, Parallelism::None);
        let mut grad = vec![0.0; off];
        let mut din = vec![0.0; b * d1];
        let (mut dh0, mut dh1) = (Vec::new(), Vec::new());
        net_backward(
            &data,
            &mut grad,
            &ns,
            &x,
            b,
            &mut c,
            &dout,
            d1,
            &mut din,
            &mut dh0,
            &mut dh1,
            Parallelism::None,
        );
        for i in 0..off {
            let want = central_difference(&mut data, i, &|d| loss(d, &x));
            close(grad[i], want, &format!("weight {i}"));
        }
        for row in 0..b {
            for col in 0..d1 {
                let want = central_difference(&mut x, row * inp + col, &|xs| loss(&data, xs));
                close(din[row * d1 + col], want, &format!("x[{row},{col}]"));
            }
        }
    }

    /// Σ dq·q for one ReLU critic, and its gradient w.r.t. every weight and
    /// the input columns from `from` on.
    #[test]
    fn critic_backward_matches_finite_differences() {
        let (b, inp, hid, from) = (3usize, 5usize, 4usize, 2usize);
        for ln in [false, true] {
            let mut r = rng(11 + u64::from(ln));
            let mut off = 0;
            let mut slot = |len: usize| {
                let s = Slot { off, len };
                off += len;
                s
            };
            let cs = CriticSlots {
                w: [slot(inp * hid), slot(hid * hid), slot(hid)],
                b: [slot(hid), slot(hid), slot(1)],
                inp,
                hid,
                ln,
            };
            let mut data: Vec<f64> = (0..off).map(|_| r.random_range(-0.8..0.8)).collect();
            let mut x: Vec<f64> = (0..b * inp).map(|_| r.random_range(-1.0..1.0)).collect();
            let dq: Vec<f64> = (0..b).map(|_| r.random_range(-1.0..1.0)).collect();
            let loss = |data: &[f64], x: &[f64]| -> f64 {
                let mut c = CriticCache::default();
                critic_forward(data, &cs, x, b, &mut c, Parallelism::None);
                c.q.iter().zip(&dq).map(|(q, d)| q * d).sum()
            };
            let mut c = CriticCache::default();
            critic_forward(&data, &cs, &x, b, &mut c, Parallelism::None);
            let mut grad = vec![0.0; off];
            let mut dx = vec![0.0; b * (inp - from)];
            let mut w = Work::default();
            critic_backward(
                &data,
                Some(&mut grad),
                &cs,
                &x,
                b,
                &c,
                &dq,
                Some((&mut dx, from)),
                &mut w,
                Parallelism::None,
            );
            for i in 0..off {
                let want = central_difference(&mut data, i, &|d| loss(d, &x));
                close(grad[i], want, &format!("ln {ln}: weight {i}"));
            }
            for row in 0..b {
                for col in from..inp {
                    let want = central_difference(&mut x, row * inp + col, &|xs| loss(&data, xs));
                    let got = dx[row * (inp - from) + col - from];
                    close(got, want, &format!("ln {ln}: x[{row},{col}]"));
                }
            }
        }
    }

    /// Σ G·W (or Σ G·W⁻¹) + λ·log|det W| against L's strict lower and U's
    /// strict upper triangles and s, through `flowpilot_core`'s one
    /// construction.
    #[test]
    fn plu_backward_matches_finite_differences() {
        let d = 4usize;
        let perm = [2usize, 0, 3, 1];
        for inverse in [false, true] {
            let mut r = rng(5 + u64::from(inverse));
            let l: Vec<f64> = (0..d * d).map(|_| r.random_range(-0.5..0.5)).collect();
            let u: Vec<f64> = (0..d * d).map(|_| r.random_range(-0.5..0.5)).collect();
            let s = vec![1.3, -0.7, 0.9, 1.6];
            let g: Vec<f64> = (0..d * d).map(|_| r.random_range(-1.0..1.0)).collect();
            let lambda = 0.37;
            let loss = |l: &[f64], u: &[f64], s: &[f64]| -> f64 {
                let m = flowpilot_core::policy::plu::Plu::new(&perm, l, u, s);
                let mat = if inverse { m.w_inv() } else { m.w() };
                mat.iter().zip(&g).map(|(a, b)| a * b).sum::<f64>() + lambda * m.log_abs_det()
            };
            let plu = Plu::<f64> {
                f64: Some(flowpilot_core::policy::plu::Plu::new(&perm, &l, &u, &s)),
                ..Default::default()
            };
            let bs = BlockSlots {
                l: Slot { off: 0, len: d * d },
                u: Slot {
                    off: d * d,
                    len: d * d,
                },
                s: Slot {
                    off: 2 * d * d,
                    len: d,
                },
                nets: Default::default(),
            };
            let mut grad = vec![0.0; 2 * d * d + d];
            plu_backward(d, &plu, inverse, &g, lambda, &mut grad, &bs);
            for rr in 0..d {
                for cc in 0..d {
                    let i = rr * d + cc;
                    if cc < rr {
                        let want = central_difference(&mut l.clone(), i, &|l2| loss(l2, &u, &s));
                        close(grad[i], want, &format!("inverse {inverse}: L[{rr},{cc}]"));
                    }
                    if cc > rr {
                        let want = central_difference(&mut u.clone(), i, &|u2| loss(&l, u2, &s));
                        let what = format!("inverse {inverse}: U[{rr},{cc}]");
                        close(grad[d * d + i], want, &what);
                    }
                }
            }
            for i in 0..d {
                let want = central_difference(&mut s.clone(), i, &|s2| loss(&l, &u, s2));
                close(
                    grad[2 * d * d + i],
                    want,
                    &format!("inverse {inverse}: s[{i}]"),
                );
            }
            // L's diagonal and upper triangle are not parameters
            assert!(
                (0..d).all(|c| grad[c] == 0.0),
                "L's diagonal and above take no gradient"
            );
        }
    }
}
