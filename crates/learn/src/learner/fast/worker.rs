//! One worker's share of an update: its rows' sampling pass, target,
//! critic and actor losses, forward and backward, into its own gradient
//! buffers (the [`super::Fast`] update sums the workers'). Learner only.

use super::nets::*;
use super::*;

impl<T: Real> Worker<T> {
    /// (s − mean) / std per row: the flow's conditioning and the critics'
    /// state input.
    pub(super) fn normalise(&mut self, v: View<T>, s: &[T], b: usize) {
        let k = v.g.k;
        resize(&mut self.cond, b * k);
        for (c, r) in self.cond.chunks_exact_mut(k).zip(s.chunks_exact(k)) {
            for (((cv, &sv), &m), &is) in c.iter_mut().zip(r).zip(&v.g.in_mean).zip(&v.g.in_inv_std)
            {
                *cv = (sv - m) * is;
            }
        }
    }

    /// The critic input [normalised s, a] from `self.cond`; with `clip`,
    /// a as the robot executes it, clip(a, −1, 1).
    pub(super) fn critic_input(&mut self, v: View<T>, a: &[T], b: usize, clip: bool) {
        let (k, d) = (v.g.k, v.g.d);
        resize(&mut self.x, b * (k + d));
        let (lo, hi) = (-T::one(), T::one());
        for ((x, c), ar) in self
            .x
            .chunks_exact_mut(k + d)
            .zip(self.cond.chunks_exact(k))
            .zip(a.chunks_exact(d))
        {
            x[..k].copy_from_slice(c);
            x[k..].copy_from_slice(ar);
            if clip {
                for xa in &mut x[k..] {
                    *xa = xa.max_of(lo).min_of(hi);
                }
            }
        }
    }

    /// The reparameterised sampling pass from base noise z (B, d) on
    /// `self.cond`, keeping what the backward needs.
    pub(super) fn sample(&mut self, v: View<T>, z: &[T], b: usize) -> Sampled<T> {
        let (d, d1, d2, k) = (v.g.d, v.g.d1, v.g.d2, v.g.k);
        let nb = v.g.blocks.len();
        let mut logdet = vec![T::zero(); b];
        let mut cur = z.to_vec();
        for j in 0..nb {
            let bi = if v.inverse { nb - 1 - j } else { j };
            let bs = v.g.blocks[bi];
            let plu = &v.plu[bi];
            let st = &mut self.steps[j];
            resize(&mut st.x, b * d);
            st.x.copy_from_slice(&cur);
            // The half the nets see: z1 (inverse) or u1 of u = x·W (forward).
            let first: &[T] = if v.inverse {
                &st.x
            } else {
                resize(&mut st.u, b * d);
                matmul(
                    b,
                    d,
                    d,
                    &mut st.u,
                    false,
                    Mat::rows(&st.x, d),
                    Mat::rows(&plu.w, d),
                    Parallelism::None,
                );
                &st.u
            };
            resize(&mut st.inp, b * (d1 + k));
            for ((i, f), c) in st
                .inp
                .chunks_exact_mut(d1 + k)
                .zip(first.chunks_exact(d))
                .zip(self.cond.chunks_exact(k))
            {
                i[..d1].copy_from_slice(&f[..d1]);
                i[d1..].copy_from_slice(c);
            }
            for (ns, nc) in bs.nets.iter().zip(st.nets.iter_mut()) {
                net_forward(v.actor, ns, &st.inp, b, nc, v.g.eps, Parallelism::None);
            }
            resize(&mut st.es, b * d2);
            resize(&mut st.y, b * d);
            let (s_out, t_out) = (&st.nets[0].out, &st.nets[1].out);
            for r in 0..b {
                let (fr, yr) = (&first[r * d..(r + 1) * d], &mut st.y[r * d..(r + 1) * d]);
                yr[..d1].copy_from_slice(&fr[..d1]);
                let mut sum_s = T::zero();
                for c in 0..d2 {
                    let (sv, tv) = (s_out[r * d2 + c], t_out[r * d2 + c]);
                    sum_s += sv;
                    if v.inverse {
                        let e = sv.exp();
                        st.es[r * d2 + c] = e;
                        yr[d1 + c] = fr[d1 + c] * e + tv;
                    } else {
                        let e = (-sv).exp();
                        st.es[r * d2 + c] = e;
                        yr[d1 + c] = (fr[d1 + c] - tv) * e;
                    }
                }
                // The twin's order: logdet ± Σs, then ∓ log|s|.
                logdet[r] = if v.inverse {
                    logdet[r] + sum_s - plu.log_abs_s
                } else {
                    logdet[r] - sum_s + plu.log_abs_s
                };
            }
            if v.inverse {
                matmul(
                    b,
                    d,
                    d,
                    &mut cur,
                    false,
                    Mat::rows(&st.y, d),
                    Mat::rows(&plu.w_inv, d),
                    Parallelism::None,
                );
            } else {
                cur.copy_from_slice(&st.y);
            }
        }
        // log N(z; 0, τ²I) = −|z|²/(2τ²) − d·ln τ − d·ln√(2π); the
        // likelihood pass (`inverse` flipped) reads `logdet`, not this.
        let tau = v.g.tau;
        let c = T::of(d as f64 * (HALF_LN_2PI as f64 + tau.to64().ln()));
        let half = T::of(-0.5) / (tau * tau);
        let lp = z
            .chunks_exact(d)
            .zip(&logdet)
            .map(|(zr, &ld)| {
                let sq = zr.iter().fold(T::zero(), |a, &v| a + v * v);
                (sq * half - c) - ld
            })
            .collect();
        Sampled { a: cur, lp, logdet }
    }

    /// Backward of [`Self::sample`]: `da` (B, d) and `dlp` (B) in; the actor
    /// gradients accumulate into `self.actor.grad`.
    pub(super) fn sample_backward(&mut self, v: View<T>, da: &[T], dlp: &[T], b: usize) {
        let (d, d1, d2) = (v.g.d, v.g.d1, v.g.d2);
        let nb = v.g.blocks.len();
        let w = &mut self.work;
        let mut dcur = da.to_vec();
        // lp = base − logdet.
        let dlogdet: Vec<T> = dlp.iter().map(|&v| -v).collect();
        let sum_dlogdet = dlogdet.iter().fold(T::zero(), |a, &v| a + v);
        for j in (0..nb).rev() {
            let bi = if v.inverse { nb - 1 - j } else { j };
            let bs = v.g.blocks[bi];
            let plu = &v.plu[bi];
            let st = &mut self.steps[j];
            resize(&mut w.dmat, d * d);
            resize(&mut w.dout, b * d);
            // dy: the gradient w.r.t. the coupling output [first, v2].
            let dlas = if v.inverse {
                // out = y·W⁻¹.
                matmul(
                    d,
                    d,
                    b,
                    &mut w.dmat,
                    false,
                    Mat::t(&st.y, d),
                    Mat::rows(&dcur, d),
                    Parallelism::None,
                );
                matmul(
                    b,
                    d,
                    d,
                    &mut w.dout,
                    false,
                    Mat::rows(&dcur, d),
                    Mat::t(&plu.w_inv, d),
                    Parallelism::None,
                );
                -sum_dlogdet
            } else {
                w.dout.copy_from_slice(&dcur);
                sum_dlogdet
            };
            resize(&mut w.ds, b * d2);
            resize(&mut w.dt, b * d2);
            let first: &[T] = if v.inverse { &st.x } else { &st.u };
            for r in 0..b {
                for c in 0..d2 {
                    let i = r * d2 + c;
                    let dv2 = w.dout[r * d + d1 + c];
                    let e = st.es[i];
                    if v.inverse {
                        // v2 = z2·e^s + t; logdet += Σs.
                        w.ds[i] = dv2 * first[r * d + d1 + c] * e + dlogdet[r];
                        w.dt[i] = dv2;
                        w.dout[r * d + d1 + c] = dv2 * e;
                    } else {
                        // v2 = (u2 − t)·e^{−s}; logdet −= Σs.
                        w.ds[i] = -(dv2 * st.y[r * d + d1 + c]) - dlogdet[r];
                        w.dt[i] = -(dv2 * e);
                        w.dout[r * d + d1 + c] = dv2 * e;
                    }
                }
            }
            // The nets' input gradient flows into the first d1 columns.
            resize(&mut w.dprev, b * d1);
            for r in 0..b {
                w.dprev[r * d1..(r + 1) * d1].copy_from_slice(&w.dout[r * d..r * d + d1]);
            }
            for (n, ns) in bs.nets.iter().enumerate() {
                let dn = if n == 0 { &w.ds } else { &w.dt };
                net_backward(
                    v.actor,
                    &mut self.grad_actor,
                    ns,
                    &st.inp,
                    b,
                    &mut st.nets[n],
                    dn,
                    d1,
                    &mut w.dprev,
                    &mut w.d0,
                    &mut w.d1,
                    Parallelism::None,
                );
            }
            for r in 0..b {
                w.dout[r * d..r * d + d1].copy_from_slice(&w.dprev[r * d1..(r + 1) * d1]);
            }
            if !v.inverse {
                // u = x·W.
                matmul(
                    d,
                    d,
                    b,
                    &mut w.dmat,
                    false,
                    Mat::t(&st.x, d),
                    Mat::rows(&w.dout, d),
                    Parallelism::None,
                );
                if j > 0 {
                    matmul(
                        b,
                        d,
                        d,
                        &mut dcur,
                        false,
                        Mat::rows(&w.dout, d),
                        Mat::t(&plu.w, d),
                        Parallelism::None,
                    );
                }
            } else {
                dcur.copy_from_slice(&w.dout);
            }
            plu_backward(d, plu, v.inverse, &w.dmat, dlas, &mut self.grad_actor, &bs);
        }
    }

    /// Forward of critic `c` on `self.x`, with its parameters from `data`.
    pub(super) fn critic_forward(&mut self, v: View<T>, c: usize, targets: bool, b: usize) {
        let data = if targets { v.targ } else { v.critic };
        critic_forward(
            data,
            &v.g.q[c],
            &self.x,
            b,
            &mut self.qc[c],
            Parallelism::None,
        );
    }

    /// The critic target y = r + discount·(min Q̄(s', a') − α log π(a'|s')).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn target_rows(
        &mut self,
        v: View<T>,
        s2: &[T],
        r: &[T],
        discount: &[T],
        z2: &[T],
        alpha: T,
        b: usize,
    ) -> Vec<T> {
        self.normalise(v, s2, b);
        let smp = self.sample(v, z2, b);
        self.critic_input(v, &smp.a, b, v.g.clip);
        self.critic_forward(v, 0, true, b);
        self.critic_forward(v, 1, true, b);
        (0..b)
            .map(|i| {
                let qn = self.qc[0].q[i].min_of(self.qc[1].q[i]);
                let soft = qn - smp.lp[i] * alpha;
                r[i] + soft * discount[i]
            })
            .collect()
    }

    /// This worker's rows of the critic loss Σ_i mean((Q_i(s, a) − y)²)
    /// over the whole batch (`inv_b` = 1/B) and their gradient in
    /// `grad_critic`; returns (its share of the loss, of mean Q_1).
    pub(super) fn critic_rows(
        &mut self,
        v: View<T>,
        s: &[T],
        a: &[T],
        y: &[T],
        inv_b: T,
    ) -> (T, T) {
        let b = y.len();
        self.normalise(v, s, b);
        self.critic_input(v, a, b, false);
        self.grad_critic.fill(T::zero());
        let two = T::of(2.0);
        let mut loss = T::zero();
        let mut q1 = T::zero();
        for c in 0..2 {
            self.critic_forward(v, c, false, b);
            let mut l = T::zero();
            let dq: Vec<T> = self.qc[c]
                .q
                .iter()
                .zip(y)
                .map(|(&q, &yv)| {
                    l += (q - yv) * (q - yv);
                    two * (q - yv) * inv_b
                })
                .collect();
            loss += l * inv_b;
            if c == 0 {
                q1 = self.qc[0].q.iter().fold(T::zero(), |a, &v| a + v) * inv_b;
            }
            critic_backward(
                v.critic,
                Some(&mut self.grad_critic),
                &v.g.q[c],
                &self.x,
                b,
                &self.qc[c],
                &dq,
                None,
                &mut self.work,
                Parallelism::None,
            );
        }
        (loss, q1)
    }

    /// Actor loss mean(α log π(a|s) − min Q(s, a)) + 10·mean(Σ relu(|a|−1)²)
    /// with a reparameterised from z, plus Σ w_r·(−log π(a_data_r|s_r))
    /// with `bc` = (a_data, w), on this worker's rows (`inv_b` = 1/B of the
    /// whole batch); the gradient in `grad_actor`; returns (its share of the
    /// loss, of mean log π).
    // The two BC terms' rows travel apart: either may be off.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn actor_rows(
        &mut self,
        v: View<T>,
        s: &[T],
        z: &[T],
        alpha: T,
        bc: Option<(&[T], &[T])>,
        dist: Option<(&[T], &[T])>,
        inv_b: T,
    ) -> (T, T, T, T) {
        let (d, k) = (v.g.d, v.g.k);
        let b = z.len() / d;
        self.normalise(v, s, b);
        let smp = self.sample(v, z, b);
        self.critic_input(v, &smp.a, b, v.g.clip);
        self.critic_forward(v, 0, false, b);
        self.critic_forward(v, 1, false, b);
        let ten = T::of(10.0);
        let two = T::of(2.0);
        let half = T::of(0.5);
        let mut loss = T::zero();
        let mut outside = T::zero();
        let mut lp_sum = T::zero();
        let (mut dq0, mut dq1) = (vec![T::zero(); b], vec![T::zero(); b]);
        let rows = self.qc[0].q.iter().zip(&self.qc[1].q).zip(&smp.lp);
        for (((&q0, &q1), &lp), (g0, g1)) in rows.zip(dq0.iter_mut().zip(dq1.iter_mut())) {
            loss += lp * alpha - q0.min_of(q1);
            lp_sum += lp;
            // candle's minimum: the gradient goes to the smaller, halved on a tie.
            let g = -inv_b;
            if q0 < q1 {
                *g0 = g;
            } else if q1 < q0 {
                *g1 = g;
            } else {
                *g0 = g * half;
                *g1 = g * half;
            }
        }
        let mut da = vec![T::zero(); b * d];
        for (av, dav) in smp.a.iter().zip(da.iter_mut()) {
            let o = (av.abs() - T::one()).max_of(T::zero());
            outside += o * o;
            // d/da of 10·mean(Σ relu(|a|−1)²).
            let sign = if *av > T::zero() {
                T::one()
            } else if *av < T::zero() {
                -T::one()
            } else {
                T::zero()
            };
            *dav = ten * inv_b * two * o * sign;
        }
        loss = loss * inv_b + outside * inv_b * ten;
        let mut dx = vec![T::zero(); b * d];
        for (c, dq) in [dq0, dq1].iter().enumerate() {
            critic_backward(
                v.critic,
                None,
                &v.g.q[c],
                &self.x,
                b,
                &self.qc[c],
                dq,
                Some((&mut dx, k)),
                &mut self.work,
                Parallelism::None,
            );
        }
        for ((a, x), av) in da.iter_mut().zip(&dx).zip(&smp.a) {
            // clip's gradient: 1 inside the box, 0 outside (as candle's
            // relu form of it in sac.rs)
            if !v.g.clip || av.abs() < T::one() {
                *a += *x;
            }
        }
        // The sample-distance BC term Σ_r w_r·‖a_r − a_data_r‖² on the
        // samples themselves: ∂/∂a_r = 2·w_r·(a_r − a_data_r).
        let mut dist_term = T::zero();
        if let Some((a_data, w)) = dist {
            let rows = smp.a.chunks_exact(d).zip(da.chunks_exact_mut(d));
            for ((ar, dar), (ad, &wr)) in rows.zip(a_data.chunks_exact(d).zip(w)) {
                for ((&x, g), &y) in ar.iter().zip(dar.iter_mut()).zip(ad) {
                    let e = x - y;
                    dist_term += wr * e * e;
                    *g += wr * two * e;
                }
            }
            loss += dist_term;
        }
        let dlp = vec![alpha * inv_b; b];
        self.grad_actor.fill(T::zero());
        self.sample_backward(v, &da, &dlp, b);
        let mut bc_nll = T::zero();
        if let Some((a_data, w)) = bc {
            // log π(a|s) = log N(z(a)) + log|det ∂z/∂a|: the sampling pass in
            // the other direction (the twin's `log_prob`), from a to z.
            let vb = View {
                inverse: !v.inverse,
                ..v
            };
            let lik = self.sample(vb, a_data, b);
            let c = T::of(d as f64 * HALF_LN_2PI as f64);
            let half = T::of(-0.5);
            for ((zr, &ld), &wr) in lik.a.chunks_exact(d).zip(&lik.logdet).zip(w) {
                let sq = zr.iter().fold(T::zero(), |a, &v| a + v * v);
                bc_nll -= ((sq * half - c) + ld) * wr;
            }
            loss += bc_nll;
            // ∂(−w·log N(z))/∂z = w·z; ∂/∂logdet = −w, which the backward
            // takes as dlp (its lp is base − logdet).
            let dz: Vec<T> = lik
                .a
                .chunks_exact(d)
                .zip(w)
                .flat_map(|(zr, &wr)| zr.iter().map(move |&zv| zv * wr))
                .collect();
            self.sample_backward(vb, &dz, w, b);
        }
        (loss, lp_sum * inv_b, bc_nll, dist_term)
    }
}
