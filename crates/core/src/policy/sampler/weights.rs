//! Dense kernels as the sampler holds them, and the gemv over them: f32, or
//! 16-bit (IEEE f16 / bfloat16) kept 16-bit in memory and widened to f32
//! inside the gemv, with f32 accumulation. The sampler is bound by the bytes
//! it streams, so half-size kernels halve its floor.
//!
//! Real-time promise: everything here runs inside a sample on the control
//! thread; it reads preallocated buffers only (no allocation, no lock, a
//! fixed amount of work). Which instructions to use (AVX2 + FMA + F16C, or
//! the portable path) is decided once, when the sampler is built.

use super::fma;
use crate::policy::model::WeightDtype;

/// A kernel (in, out) row-major, in its stored width.
pub(super) enum Weights {
    F32(Vec<f32>),
    /// IEEE binary16 bit patterns.
    F16(Vec<u16>),
    /// bfloat16 bit patterns (the upper 16 bits of an f32).
    Bf16(Vec<u16>),
}

/// Whether this CPU has the vector widening path (AVX2, FMA, F16C).
/// `is_x86_feature_detected!` caches its answer; it is called at load only.
pub(super) fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[inline(always)]
fn f16_to_f32(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

#[inline(always)]
fn bf16_to_f32(b: u16) -> f32 {
    // bfloat16 is the top half of an f32: widening is exact and a shift.
    f32::from_bits((b as u32) << 16)
}

impl Weights {
    /// The model's kernel values (exactly representable in `dtype`, as
    /// `ModelFile` validates) in the width the sampler streams.
    pub(super) fn new(values: &[f32], dtype: WeightDtype) -> Self {
        match dtype {
            WeightDtype::F32 => Weights::F32(values.to_vec()),
            WeightDtype::F16 => Weights::F16(values.iter().map(|&v| dtype.bits(v)).collect()),
            WeightDtype::Bf16 => Weights::Bf16(values.iter().map(|&v| dtype.bits(v)).collect()),
        }
    }

    /// Bytes streamed per pass over the kernel.
    pub(super) fn bytes(&self) -> usize {
        match self {
            Weights::F32(w) => 4 * w.len(),
            Weights::F16(w) | Weights::Bf16(w) => 2 * w.len(),
        }
    }

    /// y += x · W for W (inp, out); `simd` as detected at load.
    #[inline]
    pub(super) fn gemv_acc(&self, x: &[f32], y: &mut [f32], inp: usize, out: usize, simd: bool) {
        match self {
            Weights::F32(w) => gemv_f32(w, x, y, inp, out),
            #[cfg(target_arch = "x86_64")]
            Weights::F16(w) if simd => {
                // SAFETY: `simd` is true only where AVX2, FMA and F16C were
                // detected at load; the function checks the slice lengths.
                unsafe { x86::gemv16::<false>(w, x, y, inp, out) }
            }
            #[cfg(target_arch = "x86_64")]
            Weights::Bf16(w) if simd => {
                // SAFETY: as above.
                unsafe { x86::gemv16::<true>(w, x, y, inp, out) }
            }
            Weights::F16(w) => gemv16_portable(w, x, y, inp, out, f16_to_f32),
            Weights::Bf16(w) => gemv16_portable(w, x, y, inp, out, bf16_to_f32),
        }
    }

    /// Row `i` (length `out`) dotted with `g`: the backward pass's
    /// `g_x[i] = W[i, :] · g_y`.
    #[inline]
    pub(super) fn row_dot(&self, i: usize, out: usize, g: &[f32]) -> f32 {
        let r = i * out..(i + 1) * out;
        match self {
            Weights::F32(w) => dot_with(&w[r], g, |v| v),
            Weights::F16(w) => dot_with(&w[r], g, f16_to_f32),
            Weights::Bf16(w) => dot_with(&w[r], g, bf16_to_f32),
        }
    }
}

/// Σ cv(a)·b with 8 independent partial sums (a serial chain of dependent
/// adds is several times slower: floats do not reassociate).
#[inline]
pub(super) fn dot_with<T: Copy>(a: &[T], b: &[f32], cv: impl Fn(T) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| cv(*x) * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = fma(cv(x[l]), y[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// y += x · W, streaming W row by row (axpy form: no float reductions, so
/// it vectorises without fast-math). Eight rows per pass over y halve its
/// loads/stores (measured faster than four).
#[inline]
fn gemv_f32(w: &[f32], x: &[f32], y: &mut [f32], inp: usize, out: usize) {
    let y = &mut y[..out];
    let x = &x[..inp];
    let mut rows = w[..inp * out].chunks_exact(8 * out);
    let mut xs = x.chunks_exact(8);
    for (r, xc) in (&mut rows).zip(&mut xs) {
        let (a, rest) = r.split_at(4 * out);
        let (r0, a) = a.split_at(out);
        let (r1, a) = a.split_at(out);
        let (r2, r3) = a.split_at(out);
        let (r4, rest) = rest.split_at(out);
        let (r5, rest) = rest.split_at(out);
        let (r6, r7) = rest.split_at(out);
        for j in 0..out {
            let mut v = y[j];
            v = fma(xc[0], r0[j], v);
            v = fma(xc[1], r1[j], v);
            v = fma(xc[2], r2[j], v);
            v = fma(xc[3], r3[j], v);
            v = fma(xc[4], r4[j], v);
            v = fma(xc[5], r5[j], v);
            v = fma(xc[6], r6[j], v);
            v = fma(xc[7], r7[j], v);
            y[j] = v;
        }
    }
    for (r, &xi) in rows.remainder().chunks_exact(out).zip(xs.remainder()) {
        for (yj, wj) in y.iter_mut().zip(r) {
            *yj = fma(xi, *wj, *yj);
        }
    }
}

/// The portable 16-bit gemv (no F16C): the f32 loop's shape with each
/// weight widened as it is read. Correct everywhere; fast only where the
/// compiler can vectorise the widening (bf16 is a shift).
#[inline]
fn gemv16_portable(
    w: &[u16],
    x: &[f32],
    y: &mut [f32],
    inp: usize,
    out: usize,
    cv: impl Fn(u16) -> f32 + Copy,
) {
    let y = &mut y[..out];
    let x = &x[..inp];
    let mut rows = w[..inp * out].chunks_exact(4 * out);
    let mut xs = x.chunks_exact(4);
    for (r, xc) in (&mut rows).zip(&mut xs) {
        let (a, b) = r.split_at(2 * out);
        let (r0, r1) = a.split_at(out);
        let (r2, r3) = b.split_at(out);
        for j in 0..out {
            let mut v = y[j];
            v = fma(xc[0], cv(r0[j]), v);
            v = fma(xc[1], cv(r1[j]), v);
            v = fma(xc[2], cv(r2[j]), v);
            v = fma(xc[3], cv(r3[j]), v);
            y[j] = v;
        }
    }
    for (r, &xi) in rows.remainder().chunks_exact(out).zip(xs.remainder()) {
        for (yj, wj) in y.iter_mut().zip(r) {
            *yj = fma(xi, cv(*wj), *yj);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Eight 16-bit weights at `p` widened to eight f32 lanes.
    macro_rules! widen {
        ($bf16:expr, $p:expr) => {{
            let h = _mm_loadu_si128($p as *const __m128i);
            if $bf16 {
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            } else {
                _mm256_cvtph_ps(h)
            }
        }};
    }

    #[inline(always)]
    fn widen1(bf16: bool, b: u16) -> f32 {
        if bf16 {
            super::bf16_to_f32(b)
        } else {
            super::f16_to_f32(b)
        }
    }

    /// y += x · W for 16-bit W (inp, out) row-major: eight rows per pass
    /// over y (as the f32 loop), eight output lanes per step, each weight
    /// widened in a register (`vcvtph2ps`, or a shift for bf16) and
    /// accumulated by FMA in f32.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn gemv16<const BF16: bool>(
        w: &[u16],
        x: &[f32],
        y: &mut [f32],
        inp: usize,
        out: usize,
    ) {
        // Every pointer below stays inside these bounds.
        assert!(w.len() >= inp * out && x.len() >= inp && y.len() >= out);
        let (wp, yp) = (w.as_ptr(), y.as_mut_ptr());
        let cols = out / 8 * 8;
        let groups = inp / 8;
        for g in 0..groups {
            let i0 = 8 * g;
            let xb: [__m256; 8] = std::array::from_fn(|r| _mm256_set1_ps(x[i0 + r]));
            let base = wp.add(i0 * out);
            let mut j = 0;
            while j < cols {
                let mut acc = _mm256_loadu_ps(yp.add(j));
                for (r, xr) in xb.iter().enumerate() {
                    acc = _mm256_fmadd_ps(*xr, widen!(BF16, base.add(r * out + j)), acc);
                }
                _mm256_storeu_ps(yp.add(j), acc);
                j += 8;
            }
            for j in cols..out {
                let mut v = y[j];
                for r in 0..8 {
                    v = x[i0 + r].mul_add(widen1(BF16, w[(i0 + r) * out + j]), v);
                }
                y[j] = v;
            }
        }
        for i in 8 * groups..inp {
            let xi = _mm256_set1_ps(x[i]);
            let row = wp.add(i * out);
            let mut j = 0;
            while j < cols {
                let acc = _mm256_fmadd_ps(xi, widen!(BF16, row.add(j)), _mm256_loadu_ps(yp.add(j)));
                _mm256_storeu_ps(yp.add(j), acc);
                j += 8;
            }
            for j in cols..out {
                y[j] = x[i].mul_add(widen1(BF16, w[i * out + j]), y[j]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::vals;

    /// Every path computes the f32 loop's result for the same values, for
    /// shapes with and without 8-row / 8-lane remainders.
    #[test]
    fn every_gemv_path_matches_f32_storage_of_the_same_values() {
        for (inp, out) in [(1, 1), (7, 9), (8, 8), (19, 35), (64, 256), (295, 256)] {
            let x = vals(inp, inp as u64, 2.0);
            let y0 = vals(out, 7, 1.0);
            for dtype in [WeightDtype::F16, WeightDtype::Bf16] {
                let w: Vec<f32> = vals(inp * out, out as u64, 1.5)
                    .into_iter()
                    .map(|v| dtype.round(v))
                    .collect();
                let mut want = y0.clone();
                Weights::F32(w.clone()).gemv_acc(&x, &mut want, inp, out, false);
                let h = Weights::new(&w, dtype);
                for simd in [false, simd_available()] {
                    let mut got = y0.clone();
                    h.gemv_acc(&x, &mut got, inp, out, simd);
                    let tol = if cfg!(target_feature = "fma") {
                        0.0
                    } else {
                        1e-5
                    };
                    for (a, b) in got.iter().zip(&want) {
                        assert!(
                            (a - b).abs() <= tol,
                            "{dtype} {inp}x{out} simd {simd}: {a} vs {b}"
                        );
                    }
                }
                for i in 0..inp {
                    let (a, b) = (
                        h.row_dot(i, out, &y0),
                        Weights::F32(w.clone()).row_dot(i, out, &y0),
                    );
                    assert_eq!(a, b, "{dtype} row {i}");
                }
            }
        }
    }
}
