//! Fresh models: the paper's initialisation (LeCun-normal kernels, zero
//! biases, unit LayerNorms, PLU from a random orthogonal matrix, zero last
//! layers so every block starts as the identity), or a fully random model
//! for tests and benchmarks.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::policy::model::{ModelError, ModelFile, ModelSpec, Tensor, TensorData};

/// How to initialise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Training start: last layers zero, LayerNorms unit (paper).
    Paper,
    /// Every tensor random (last layers scaled by the factor), so that a
    /// test or benchmark exercises every weight.
    Random { last_scale: f32 },
}

/// A random orthogonal d×d matrix, LU-decomposed with partial pivoting:
/// Q = P·L·U. Returns (perm with `P[i, perm[i]] = 1`, L, U) row-major f64.
pub fn orthogonal_plu(d: usize, rng: &mut impl Rng) -> (Vec<i64>, Vec<f64>, Vec<f64>) {
    // Gram-Schmidt on a Gaussian matrix (rows).
    let mut q = vec![0.0f64; d * d];
    for i in 0..d {
        loop {
            let mut v: Vec<f64> = (0..d).map(|_| rng.sample(StandardNormal)).collect();
            for r in 0..i {
                let dot: f64 = (0..d).map(|c| v[c] * q[r * d + c]).sum();
                for c in 0..d {
                    v[c] -= dot * q[r * d + c];
                }
            }
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if n > 1e-6 {
                for c in 0..d {
                    q[i * d + c] = v[c] / n;
                }
                break;
            }
        }
    }
    lu_partial_pivot(&q, d)
}

/// A = P·L·U with partial pivoting (unit-diagonal L).
pub fn lu_partial_pivot(a: &[f64], d: usize) -> (Vec<i64>, Vec<f64>, Vec<f64>) {
    let mut m = a.to_vec();
    let mut rows: Vec<usize> = (0..d).collect();
    for k in 0..d {
        let p = (k..d)
            .max_by(|&x, &y| m[x * d + k].abs().total_cmp(&m[y * d + k].abs()))
            .expect("non-empty");
        if p != k {
            for c in 0..d {
                m.swap(k * d + c, p * d + c);
            }
            rows.swap(k, p);
        }
        for r in k + 1..d {
            let f = m[r * d + k] / m[k * d + k];
            m[r * d + k] = f;
            for c in k + 1..d {
                m[r * d + c] -= f * m[k * d + c];
            }
        }
    }
    let mut l = vec![0.0; d * d];
    let mut u = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            if i > j {
                l[i * d + j] = m[i * d + j];
            } else {
                u[i * d + j] = m[i * d + j];
            }
        }
        l[i * d + i] = 1.0;
    }
    // Row i of (L·U) is row rows[i] of A, so A = P·L·U with P[rows[i], i] = 1,
    // i.e. perm[rows[i]] = i.
    let mut perm = vec![0i64; d];
    for (i, &r) in rows.iter().enumerate() {
        perm[r] = i as i64;
    }
    (perm, l, u)
}

/// Build a model for `spec` with the given initialisation and seed. With
/// half-size `weights` the kernels are drawn in f32 and then rounded, so an
/// f16 model and the f32 model of the same seed differ only by rounding.
pub fn init_model(mut spec: ModelSpec, init: Init, seed: u64) -> Result<ModelFile, ModelError> {
    let weights = std::mem::take(&mut spec.weights);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tensors = BTreeMap::new();
    let random = matches!(init, Init::Random { .. });
    for (name, shape, _) in spec.expected_tensors() {
        let n: usize = shape.iter().product();
        let t = if name.ends_with(".lin.perm") {
            continue; // filled with L/U/s below
        } else if name.ends_with(".lin.L") || name.ends_with(".lin.U") || name.ends_with(".lin.s") {
            continue;
        } else if name.ends_with(".w") {
            let fan_in = shape[0] as f32;
            let last = name.ends_with(".l2.w");
            let scale = match (last, init) {
                (true, Init::Paper) => 0.0,
                (true, Init::Random { last_scale }) => last_scale / fan_in.sqrt(),
                _ => 1.0 / fan_in.sqrt(),
            };
            Tensor::f32(
                shape,
                (0..n)
                    .map(|_| scale * rng.sample::<f32, _>(StandardNormal))
                    .collect(),
            )
        } else if name.ends_with(".g") {
            let v = (0..n)
                .map(|_| {
                    if random {
                        1.0 + 0.1 * rng.sample::<f32, _>(StandardNormal)
                    } else {
                        1.0
                    }
                })
                .collect();
            Tensor::f32(shape, v)
        } else {
            // biases (dense and LayerNorm)
            let v = (0..n)
                .map(|_| {
                    if random {
                        0.05 * rng.sample::<f32, _>(StandardNormal)
                    } else {
                        0.0
                    }
                })
                .collect();
            Tensor::f32(shape, v)
        };
        tensors.insert(name, t);
    }
    let d = spec.act_dim;
    for i in 0..spec.blocks {
        let (perm, l, u) = orthogonal_plu(d, &mut rng);
        let p = format!("blocks.{i}.lin");
        let mut lf: Vec<f32> = l.iter().map(|&v| v as f32).collect();
        let mut uf: Vec<f32> = u.iter().map(|&v| v as f32).collect();
        let s: Vec<f32> = (0..d).map(|j| u[j * d + j] as f32).collect();
        // Stored L and U are full matrices; only the strict triangles are used.
        // Fill the unused parts with junk in random mode to prove that.
        for r in 0..d {
            for c in 0..d {
                if random && r <= c {
                    lf[r * d + c] = 7.0;
                }
                if random && r >= c {
                    uf[r * d + c] = -3.0;
                }
            }
        }
        tensors.insert(
            format!("{p}.perm"),
            Tensor {
                shape: vec![d],
                data: TensorData::I64(perm),
            },
        );
        tensors.insert(format!("{p}.L"), Tensor::f32(vec![d, d], lf));
        tensors.insert(format!("{p}.U"), Tensor::f32(vec![d, d], uf));
        tensors.insert(format!("{p}.s"), Tensor::f32(vec![d], s));
    }
    let m = ModelFile::new(spec, tensors)?;
    if weights == crate::policy::model::WeightDtype::F32 {
        Ok(m)
    } else {
        m.with_weights(weights)
    }
}

/// A spec with paper defaults for the given dims (no encoder, hidden [C+k, C]).
pub fn default_spec(
    obs_dim: usize,
    goal_dim: usize,
    act_dim: usize,
    blocks: usize,
    c: usize,
) -> ModelSpec {
    use crate::policy::model::{Direction, Normalizer, PolicyKind, FORMAT_VERSION};
    let k = obs_dim + goal_dim;
    ModelSpec {
        format_version: FORMAT_VERSION,
        kind: PolicyKind::Flow,
        obs_dim,
        goal_dim,
        act_dim,
        chunk_len: 1,
        obs_horizon: 1,
        blocks,
        hidden: [c + k, c],
        weights: Default::default(),
        layer_norm_eps: 1e-6,
        encoder: None,
        direction: Direction::Inverse,
        noise_sigma: 0.1,
        denoise: false,
        temperature: 1.0,
        obs_norm: Normalizer::identity(obs_dim),
        goal_norm: (goal_dim > 0).then(|| Normalizer::identity(goal_dim)),
        action_low: vec![-1.0; act_dim],
        action_high: vec![1.0; act_dim],
        version: 1,
        parent_digest: None,
        parent_version: None,
        created_by: String::new(),
        digest: String::new(),
    }
}
