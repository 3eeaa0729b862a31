//! The sampler's hand-written backward pass: ∇ₐ log p(a|y) through the
//! flow (and the Gaussian head), for the one-step denoising
//! a ← a + σ²·∇ₐ log p(a|y). It runs inside a sample on the control thread:
//! every buffer lives in [`GradScratch`], sized when the sampler is built,
//! so a call allocates nothing. Checked against candle autograd in
//! crates/learn/tests/flow_math.rs.

use super::*;

/// Activations of one MLP recorded for its backward pass.
struct MlpCache {
    /// Pre-activations of the two hidden Dense layers.
    a0: Vec<f32>,
    a1: Vec<f32>,
    /// LayerNorm-normalised values x̂ and 1/std.
    xh0: Vec<f32>,
    xh1: Vec<f32>,
    r0: f32,
    r1: f32,
}

impl MlpCache {
    fn new(m: &Mlp) -> Self {
        Self {
            a0: vec![0.0; m.l0.out],
            a1: vec![0.0; m.l1.out],
            xh0: vec![0.0; m.l0.out],
            xh1: vec![0.0; m.l1.out],
            r0: 0.0,
            r1: 0.0,
        }
    }
}

/// Per-block record of the likelihood pass.
struct BlockCache {
    s: MlpCache,
    t: MlpCache,
    s_out: Vec<f32>,
    t_out: Vec<f32>,
    /// Coupling's transformed half: v2 (forward) or z2 (inverse).
    half: Vec<f32>,
}

/// Buffers for the gradient, sized at construction.
pub(super) struct GradScratch {
    blocks: Vec<BlockCache>,
    gauss: Option<MlpCache>,
    /// The action the gradient is taken at (input).
    pub(super) a: Vec<f32>,
    x: Vec<f32>,
    tmp: Vec<f32>,
    net_in: Vec<f32>,
    h1: Vec<f32>,
    h2: Vec<f32>,
    /// ∇ₐ log p(a|y) (output).
    pub(super) g: Vec<f32>,
    gu: Vec<f32>,
    gs: Vec<f32>,
    gt: Vec<f32>,
    gh1: Vec<f32>,
    gh2: Vec<f32>,
}

impl GradScratch {
    pub(super) fn new(s: &Sampler) -> Self {
        let d = s.spec.act_dim;
        let hmax = s.spec.hidden[0].max(s.spec.hidden[1]);
        let (blocks, gauss) = match &s.head {
            Head::Flow(bs) => (
                bs.iter()
                    .map(|b| BlockCache {
                        s: MlpCache::new(&b.s),
                        t: MlpCache::new(&b.t),
                        s_out: vec![0.0; d],
                        t_out: vec![0.0; d],
                        half: vec![0.0; d],
                    })
                    .collect(),
                None,
            ),
            Head::Gaussian(m) => (Vec::new(), Some(MlpCache::new(m))),
        };
        Self {
            blocks,
            gauss,
            a: vec![0.0; d],
            x: vec![0.0; d],
            tmp: vec![0.0; d],
            net_in: vec![0.0; s.sc.net_in.len().max(s.spec.cond_dim())],
            h1: vec![0.0; hmax],
            h2: vec![0.0; hmax],
            g: vec![0.0; 2 * d],
            gu: vec![0.0; d],
            gs: vec![0.0; d],
            gt: vec![0.0; d],
            gh1: vec![0.0; hmax],
            gh2: vec![0.0; hmax],
        }
    }
}

/// LayerNorm recording x̂ and 1/std; `x` holds the activation on entry and
/// the LayerNorm output on exit.
fn ln_cached(ln: &LayerNorm, x: &mut [f32], xh: &mut [f32]) -> f32 {
    let n = x.len() as f32;
    let mean = lane_sum(x, |v| v) / n;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
    let r = 1.0 / (var + ln.eps).sqrt();
    for i in 0..x.len() {
        xh[i] = (x[i] - mean) * r;
        x[i] = xh[i] * ln.g[i] + ln.b[i];
    }
    r
}

impl Mlp {
    fn forward_cached(
        &self,
        x: &[f32],
        c: &mut MlpCache,
        h1: &mut [f32],
        h2: &mut [f32],
        y: &mut [f32],
    ) {
        let h1 = &mut h1[..self.l0.out];
        self.l0.forward(x, &mut c.a0);
        h1.copy_from_slice(&c.a0);
        leaky_relu(h1);
        c.r0 = ln_cached(&self.ln0, h1, &mut c.xh0);
        let h2 = &mut h2[..self.l1.out];
        self.l1.forward(h1, &mut c.a1);
        h2.copy_from_slice(&c.a1);
        leaky_relu(h2);
        c.r1 = ln_cached(&self.ln1, h2, &mut c.xh1);
        self.l2.forward(h2, y);
    }

    /// Add ∂(g_y · mlp(x))/∂x[..n] into `g_in[..n]`.
    fn backward_input(
        &self,
        c: &MlpCache,
        g_y: &[f32],
        n: usize,
        gh1: &mut [f32],
        gh2: &mut [f32],
        g_in: &mut [f32],
    ) {
        let gh2 = &mut gh2[..self.l1.out];
        dense_backward(&self.l2, g_y, gh2);
        ln_leaky_backward(&self.ln1, &c.xh1, c.r1, &c.a1, gh2);
        let gh1 = &mut gh1[..self.l0.out];
        dense_backward(&self.l1, gh2, gh1);
        ln_leaky_backward(&self.ln0, &c.xh0, c.r0, &c.a0, gh1);
        for (i, gi) in g_in[..n].iter_mut().enumerate() {
            *gi += self.l0.row_dot(i, gh1);
        }
    }
}

/// g_x = W · g_y for y = x·W (W rows are contiguous: one dot per input).
fn dense_backward(l: &Dense, g_y: &[f32], g_x: &mut [f32]) {
    for (i, gx) in g_x[..l.inp].iter_mut().enumerate() {
        *gx = l.row_dot(i, &g_y[..l.out]);
    }
}

/// Through LayerNorm (y = γ x̂ + β) then LeakyReLU, in place on `g`.
fn ln_leaky_backward(ln: &LayerNorm, xh: &[f32], r: f32, pre: &[f32], g: &mut [f32]) {
    let n = g.len() as f32;
    for (gi, gamma) in g.iter_mut().zip(&ln.g) {
        *gi *= gamma;
    }
    let mean_g = lane_sum(g, |v| v) / n;
    let mut gx = 0.0;
    for (gi, x) in g.iter().zip(xh) {
        gx += gi * x;
    }
    let mean_gx = gx / n;
    for i in 0..g.len() {
        let gh = r * (g[i] - mean_g - xh[i] * mean_gx);
        g[i] = if pre[i] >= 0.0 { gh } else { 0.01 * gh };
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    weights::dot_with(a, b, |v| v)
}

/// S and T of block `b` from its unchanged half `first` and `cond`, with
/// the activations recorded in `c` for the backward pass.
fn record_nets(
    b: &Block,
    c: &mut BlockCache,
    first: &[f32],
    cond: &[f32],
    net_in: &mut [f32],
    h1: &mut [f32],
    h2: &mut [f32],
) {
    let (n, k) = (first.len(), cond.len());
    let d2 = b.s.l2.out;
    net_in[..n].copy_from_slice(first);
    net_in[n..n + k].copy_from_slice(cond);
    b.s.forward_cached(&net_in[..n + k], &mut c.s, h1, h2, &mut c.s_out[..d2]);
    b.t.forward_cached(&net_in[..n + k], &mut c.t, h1, h2, &mut c.t_out[..d2]);
}

/// ∇ₐ log p(a|y) into `g.g[..d]`, for `a = g.a` and conditioning `cond`.
pub(super) fn likelihood_grad(head: &Head, spec: &ModelSpec, cond: &[f32], g: &mut GradScratch) {
    let d = spec.act_dim;
    let (d1, d2) = spec.split();
    let k = cond.len();
    match head {
        Head::Gaussian(mlp) => {
            let c = g.gauss.as_mut().expect("sized for a Gaussian");
            g.net_in[..k].copy_from_slice(cond);
            mlp.forward_cached(&g.net_in[..k], c, &mut g.h1, &mut g.h2, &mut g.g[..2 * d]);
            // ∂/∂a of −½((a−μ)/σ)² − log σ = −(a−μ)/σ²
            for i in 0..d {
                let ls = g.g[d + i].clamp(LOG_STD_MIN, LOG_STD_MAX);
                g.g[i] = -(g.a[i] - g.g[i]) * (-2.0 * ls).exp();
            }
        }
        Head::Flow(blocks) => {
            g.x.copy_from_slice(&g.a);
            match spec.direction {
                Direction::Inverse => {
                    // record: x -> u = xW -> [u1, (u2 - T) e^-S]
                    for (b, c) in blocks.iter().zip(g.blocks.iter_mut()) {
                        gemv_rows(&g.x, &b.w, &mut g.tmp, d);
                        record_nets(
                            b,
                            c,
                            &g.tmp[..d1],
                            cond,
                            &mut g.net_in,
                            &mut g.h1,
                            &mut g.h2,
                        );
                        g.x[..d1].copy_from_slice(&g.tmp[..d1]);
                        for j in 0..d2 {
                            let v = (g.tmp[d1 + j] - c.t_out[j]) * (-c.s_out[j]).exp();
                            g.x[d1 + j] = v;
                            c.half[j] = v;
                        }
                    }
                    // ∂ log N(z)/∂z = −z, then back through the blocks
                    for i in 0..d {
                        g.g[i] = -g.x[i];
                    }
                    for (b, c) in blocks.iter().zip(g.blocks.iter()).rev() {
                        for j in 0..d2 {
                            let e = (-c.s_out[j]).exp();
                            let gv = g.g[d1 + j];
                            g.gu[d1 + j] = gv * e;
                            g.gt[j] = -gv * e;
                            g.gs[j] = -gv * c.half[j] - 1.0;
                        }
                        g.gu[..d1].copy_from_slice(&g.g[..d1]);
                        b.s.backward_input(
                            &c.s,
                            &g.gs[..d2],
                            d1,
                            &mut g.gh1,
                            &mut g.gh2,
                            &mut g.gu,
                        );
                        b.t.backward_input(
                            &c.t,
                            &g.gt[..d2],
                            d1,
                            &mut g.gh1,
                            &mut g.gh2,
                            &mut g.gu,
                        );
                        // g_x = W · g_u
                        for i in 0..d {
                            g.g[i] = dot(&b.w[i * d..(i + 1) * d], &g.gu[..d]);
                        }
                    }
                }
                Direction::Forward => {
                    // record (blocks reversed): z -> [z1, z2 e^S + T] -> · W⁻¹
                    for (b, c) in blocks.iter().zip(g.blocks.iter_mut()).rev() {
                        record_nets(b, c, &g.x[..d1], cond, &mut g.net_in, &mut g.h1, &mut g.h2);
                        g.tmp[..d1].copy_from_slice(&g.x[..d1]);
                        for j in 0..d2 {
                            c.half[j] = g.x[d1 + j];
                            g.tmp[d1 + j] = g.x[d1 + j] * c.s_out[j].exp() + c.t_out[j];
                        }
                        gemv_rows(&g.tmp, &b.w_inv, &mut g.x, d);
                    }
                    for i in 0..d {
                        g.g[i] = -g.x[i];
                    }
                    for (b, c) in blocks.iter().zip(g.blocks.iter()) {
                        // g_v = W⁻¹ · g_x
                        for i in 0..d {
                            g.gu[i] = dot(&b.w_inv[i * d..(i + 1) * d], &g.g[..d]);
                        }
                        for j in 0..d2 {
                            let e = c.s_out[j].exp();
                            let gv = g.gu[d1 + j];
                            g.gt[j] = gv;
                            g.gs[j] = gv * c.half[j] * e + 1.0;
                            g.gu[d1 + j] = gv * e;
                        }
                        b.s.backward_input(
                            &c.s,
                            &g.gs[..d2],
                            d1,
                            &mut g.gh1,
                            &mut g.gh2,
                            &mut g.gu,
                        );
                        b.t.backward_input(
                            &c.t,
                            &g.gt[..d2],
                            d1,
                            &mut g.gh1,
                            &mut g.gh2,
                            &mut g.gu,
                        );
                        g.g[..d].copy_from_slice(&g.gu[..d]);
                    }
                }
            }
        }
    }
}
