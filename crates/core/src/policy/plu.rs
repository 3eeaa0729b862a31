//! The invertible linear layer's one construction: W = P·L·U with
//! L = tril(L, −1) + I and U = triu(U, 1) + diag(s), its exact inverse and
//! its factors, in f64 (DESIGN.md, "the invertible linear layer"). The
//! sampler builds its blocks from it and the learner's hand-written update
//! rebuilds it after each step (and differentiates through its factors);
//! the candle twin (`flowpilot_learn::twin`) writes the same product on
//! tensors so that autograd sees it, and the parity tests hold the two
//! together.
//!
//! Not real-time: it allocates; callers build it off the control thread
//! (the sampler once per model, the learner once per update).
//!
//! ```
//! use flowpilot_core::policy::plu::Plu;
//! // d = 2: P swaps the rows, L has 0.5 below the diagonal, s = (2, −1)
//! let m = Plu::new(&[1, 0], &[0.0, 0.0, 0.5, 0.0], &[0.0, 3.0, 0.0, 0.0], &[2.0, -1.0]);
//! let (w, wi) = (m.w(), m.w_inv());
//! for r in 0..2 {
//!     for c in 0..2 {
//!         let i: f64 = (0..2).map(|k| w[r * 2 + k] * wi[k * 2 + c]).sum();
//!         assert!((i - f64::from(u8::from(r == c))).abs() < 1e-12);
//!     }
//! }
//! assert!((m.log_abs_det() - 2f64.ln()).abs() < 1e-12);
//! ```

/// W, W⁻¹ and the factors of one block, row-major d×d.
#[derive(Debug, Clone)]
pub struct Plu {
    d: usize,
    s: Vec<f64>,
    p: Vec<f64>,
    lm: Vec<f64>,
    um: Vec<f64>,
    p_lm: Vec<f64>,
    w: Vec<f64>,
    w_inv: Vec<f64>,
}

impl Plu {
    /// `perm[i]`: the column of row i's 1 in P; `l` and `u`: d×d
    /// row-major, of which only the strict lower (`l`) and strict upper
    /// (`u`) triangles are read; `s`: U's diagonal (every entry non-zero,
    /// which the model file's validation guarantees).
    pub fn new(perm: &[usize], l: &[f64], u: &[f64], s: &[f64]) -> Self {
        let d = s.len();
        let mut p = vec![0.0; d * d];
        let mut lm = vec![0.0; d * d];
        let mut um = vec![0.0; d * d];
        for r in 0..d {
            p[r * d + perm[r]] = 1.0;
            for c in 0..d {
                (lm[r * d + c], um[r * d + c]) = match r.cmp(&c) {
                    std::cmp::Ordering::Greater => (l[r * d + c], 0.0),
                    std::cmp::Ordering::Equal => (1.0, s[r]),
                    std::cmp::Ordering::Less => (0.0, u[r * d + c]),
                };
            }
        }
        // (P·M)[i, :] = M[perm[i], :]
        let mut p_lm = vec![0.0; d * d];
        for r in 0..d {
            p_lm[r * d..(r + 1) * d].copy_from_slice(&lm[perm[r] * d..(perm[r] + 1) * d]);
        }
        let w = matmul(d, &p_lm, &um);
        // W⁻¹ = U⁻¹ · L⁻¹ · Pᵀ, by triangular solves column by column.
        let mut linv = vec![0.0; d * d];
        let mut uinv = vec![0.0; d * d];
        for c in 0..d {
            for i in 0..d {
                let e = f64::from(u8::from(i == c));
                linv[i * d + c] = e - (0..i).map(|k| lm[i * d + k] * linv[k * d + c]).sum::<f64>();
            }
            for i in (0..d).rev() {
                let e = f64::from(u8::from(i == c));
                let v = e
                    - (i + 1..d)
                        .map(|k| um[i * d + k] * uinv[k * d + c])
                        .sum::<f64>();
                uinv[i * d + c] = v / um[i * d + i];
            }
        }
        let ul = matmul(d, &uinv, &linv);
        // (M·Pᵀ)[:, j] = M[:, perm[j]]
        let mut w_inv = vec![0.0; d * d];
        for r in 0..d {
            for j in 0..d {
                w_inv[r * d + j] = ul[r * d + perm[j]];
            }
        }
        Self {
            d,
            s: s.to_vec(),
            p,
            lm,
            um,
            p_lm,
            w,
            w_inv,
        }
    }

    pub fn dim(&self) -> usize {
        self.d
    }
    /// W = P·L·U.
    pub fn w(&self) -> &[f64] {
        &self.w
    }
    /// W⁻¹ = U⁻¹·L⁻¹·Pᵀ.
    pub fn w_inv(&self) -> &[f64] {
        &self.w_inv
    }
    /// P as a matrix.
    pub fn p(&self) -> &[f64] {
        &self.p
    }
    /// L with its unit diagonal.
    pub fn lm(&self) -> &[f64] {
        &self.lm
    }
    /// U with s on its diagonal.
    pub fn um(&self) -> &[f64] {
        &self.um
    }
    /// P·L, the left factor of W = (P·L)·U.
    pub fn p_lm(&self) -> &[f64] {
        &self.p_lm
    }
    /// U's diagonal.
    pub fn s(&self) -> &[f64] {
        &self.s
    }
    /// log|det W| = Σ log|sᵢ|.
    pub fn log_abs_det(&self) -> f64 {
        self.s.iter().map(|v| v.abs().ln()).sum()
    }
}

/// (d×d)·(d×d), row-major; also what a gradient through the factors is
/// made of (the learner's backward pass).
pub fn matmul(d: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut o = vec![0.0; d * d];
    for r in 0..d {
        for k in 0..d {
            let av = a[r * d + k];
            for c in 0..d {
                o[r * d + c] += av * b[k * d + c];
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn w_times_its_inverse_is_the_identity_and_the_factors_multiply_to_w() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for d in [1usize, 2, 5, 10] {
            let mut perm: Vec<usize> = (0..d).collect();
            for i in (1..d).rev() {
                perm.swap(i, rng.random_range(0..=i));
            }
            let l: Vec<f64> = (0..d * d).map(|_| rng.random_range(-1.0..1.0)).collect();
            let u: Vec<f64> = (0..d * d).map(|_| rng.random_range(-1.0..1.0)).collect();
            let s: Vec<f64> = (0..d)
                .map(|_| rng.random_range(0.5..2.0) * if rng.random_bool(0.5) { -1.0 } else { 1.0 })
                .collect();
            let m = Plu::new(&perm, &l, &u, &s);
            let i = matmul(d, m.w(), m.w_inv());
            for r in 0..d {
                for c in 0..d {
                    let want = f64::from(u8::from(r == c));
                    assert!(
                        (i[r * d + c] - want).abs() < 1e-10,
                        "d {d}: W·W⁻¹[{r},{c}] = {}",
                        i[r * d + c]
                    );
                }
            }
            let w = matmul(d, &matmul(d, m.p(), m.lm()), m.um());
            assert!(w.iter().zip(m.w()).all(|(a, b)| (a - b).abs() < 1e-12));
            assert!(m
                .p_lm()
                .iter()
                .zip(&matmul(d, m.p(), m.lm()))
                .all(|(a, b)| a == b));
            let det: f64 = s.iter().map(|v| v.abs().ln()).sum();
            assert_eq!(m.log_abs_det(), det);
        }
    }
}
