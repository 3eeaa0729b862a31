//! The model's spec: what the JSON in a model file's header says (kind,
//! direction, dims, blocks, widths, bounds, normalisers, chunk and history,
//! weight dtype, lineage) and its validation and compatibility rules
//! ([`ModelSpec::validate`], [`ModelSpec::check_compatible`]). Pure data;
//! checked off the control thread.

use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};

use super::ModelError;

/// Which way the stacked blocks run when sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Blocks map action -> latent (paper's imitation code). Likelihood is
    /// the forward pass; sampling runs the inverse on z ~ N(0, I).
    Inverse,
    /// Blocks map latent -> action (paper's offline-RL code). Sampling is the
    /// forward pass; likelihood runs the inverse.
    Forward,
}

/// How the dense kernels (every `*.w` tensor) are stored. Biases,
/// LayerNorm and PLU parameters stay f32 whatever this says: they are a
/// few percent of the bytes and the PLU inverse is precision-sensitive.
/// Half-size kernels halve the bytes the sampler streams per sample; it
/// accumulates in f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightDtype {
    #[default]
    F32,
    /// IEEE 754 binary16: 11-bit significand, range ±65504.
    F16,
    /// bfloat16: 8-bit significand, f32's range.
    Bf16,
}

impl WeightDtype {
    /// The safetensors dtype the kernels are stored as.
    pub fn safetensors(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::F16 => Dtype::F16,
            WeightDtype::Bf16 => Dtype::BF16,
        }
    }

    /// Bytes per stored kernel value.
    pub fn size(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::F16 | WeightDtype::Bf16 => 2,
        }
    }

    /// `x` rounded (to nearest, ties to even) to this dtype, as f32.
    pub fn round(self, x: f32) -> f32 {
        match self {
            WeightDtype::F32 => x,
            WeightDtype::F16 => half::f16::from_f32(x).to_f32(),
            WeightDtype::Bf16 => half::bf16::from_f32(x).to_f32(),
        }
    }

    /// The 16-bit pattern of `x` (callers pass exactly representable values).
    pub fn bits(self, x: f32) -> u16 {
        match self {
            WeightDtype::F16 => half::f16::from_f32(x).to_bits(),
            WeightDtype::Bf16 => half::bf16::from_f32(x).to_bits(),
            WeightDtype::F32 => unreachable!("f32 kernels have no 16-bit pattern"),
        }
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("unknown weight dtype '{other}' (f32, f16, bf16)")),
        }
    }
}

impl std::fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

/// Whether a tensor is a dense kernel (stored in [`ModelSpec::weights`]).
pub fn is_kernel(name: &str) -> bool {
    name.ends_with(".w")
}

/// Which policy family the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// The paper's conditional RealNVP with generalized permutations.
    Flow,
    /// A diagonal Gaussian MLP baseline (for measuring the flow's advantage).
    Gaussian,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderSpec {
    /// Hidden width of each `Dense -> LayerNorm -> SiLU` layer.
    pub width: usize,
    /// Number of hidden layers (paper: 4).
    pub layers: usize,
    /// Output representation size k.
    pub rep_dim: usize,
}

/// Affine normaliser `(x - mean) / std`, stored with the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalizer {
    pub fn identity(n: usize) -> Self {
        Self {
            mean: vec![0.0; n],
            std: vec![1.0; n],
        }
    }
}

/// Everything about a model that is not a weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub format_version: u32,
    pub kind: PolicyKind,
    pub obs_dim: usize,
    #[serde(default)]
    pub goal_dim: usize,
    pub act_dim: usize,
    /// Action steps per sample (an action chunk): the flow's `act_dim`
    /// outputs are `chunk_len` steps of `act_dim / chunk_len` values,
    /// step-major (`a[t * step + j]`). 1: one action per sample. Omitted
    /// from the file when 1, so older files keep their digest.
    #[serde(default = "one_usize", skip_serializing_if = "is_one_usize")]
    pub chunk_len: usize,
    /// Observation steps per sample (history): the `obs_dim` inputs are the
    /// last `obs_horizon` observations of `obs_dim / obs_horizon` values,
    /// oldest first (the goal is not repeated). 1: the current one only.
    #[serde(default = "one_usize", skip_serializing_if = "is_one_usize")]
    pub obs_horizon: usize,
    /// Number of coupling blocks K (0 for the Gaussian baseline).
    pub blocks: usize,
    /// MLP hidden widths [h1, h2]. Paper flax: [C + k, C]; torch: [C, C].
    pub hidden: [usize; 2],
    /// How the dense kernels are stored. Omitted from the file when f32,
    /// so files written before it existed keep their digest.
    #[serde(default, skip_serializing_if = "is_f32")]
    pub weights: WeightDtype,
    pub layer_norm_eps: f32,
    #[serde(default)]
    pub encoder: Option<EncoderSpec>,
    pub direction: Direction,
    /// Training noise sigma; also the step size of the optional denoise.
    pub noise_sigma: f32,
    /// Apply one-step denoising a <- a + sigma^2 * grad log p(a|y) at sampling.
    #[serde(default)]
    pub denoise: bool,
    /// Latent temperature τ ∈ [0, 1] the node samples with unless its
    /// `temperature` parameter says otherwise: z ~ N(0, τ²I); τ = 0 gives
    /// the deterministic z = 0 action. Omitted from the file when 1, so
    /// files written before it existed keep their digest.
    #[serde(default = "one_f32", skip_serializing_if = "is_one")]
    pub temperature: f32,
    pub obs_norm: Normalizer,
    #[serde(default)]
    pub goal_norm: Option<Normalizer>,
    /// Physical action bounds; the normalised action in [-1, 1] maps onto them.
    pub action_low: Vec<f32>,
    pub action_high: Vec<f32>,
    /// Monotonic version within a lineage (1 for a fresh model).
    #[serde(default = "one")]
    pub version: u64,
    #[serde(default)]
    pub parent_digest: Option<String>,
    #[serde(default)]
    pub parent_version: Option<u64>,
    /// Free text: what made this file.
    #[serde(default)]
    pub created_by: String,
    /// `sha256:<hex>` over the tensors and this spec (with `digest` empty).
    #[serde(default)]
    pub digest: String,
}

fn one() -> u64 {
    1
}

fn one_usize() -> usize {
    1
}

fn is_one_usize(v: &usize) -> bool {
    *v == 1
}

fn is_f32(w: &WeightDtype) -> bool {
    *w == WeightDtype::F32
}

fn one_f32() -> f32 {
    1.0
}

fn is_one(v: &f32) -> bool {
    *v == 1.0
}

/// Why a model cannot replace another on the same robot wiring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "dims/kind differ from the running model (obs {} goal {} act {} {:?} chunk {} horizon {} vs obs {} goal {} act {} {:?} chunk {} horizon {})",
    new.0, new.1, new.2, new.3, new.4, new.5, running.0, running.1, running.2, running.3, running.4, running.5
)]
pub struct Incompatible {
    running: CompatKey,
    new: CompatKey,
}

/// What must match for one model to replace another: obs, goal and action
/// widths, kind, chunk length, observation horizon.
type CompatKey = (usize, usize, usize, PolicyKind, usize, usize);

impl ModelSpec {
    /// The one rule for whether `new` can take this model's place (hot
    /// swap, resume after restart, a learner resuming from a checkpoint):
    /// same observation, goal and action widths, same policy kind, same
    /// chunk length and observation horizon.
    pub fn check_compatible(&self, new: &ModelSpec) -> Result<(), Incompatible> {
        let key = |s: &ModelSpec| {
            (
                s.obs_dim,
                s.goal_dim,
                s.act_dim,
                s.kind,
                s.chunk_len,
                s.obs_horizon,
            )
        };
        if key(self) == key(new) {
            Ok(())
        } else {
            Err(Incompatible {
                running: key(self),
                new: key(new),
            })
        }
    }

    /// Values of one action step (what the robot receives per tick).
    pub fn step_act_dim(&self) -> usize {
        self.act_dim / self.chunk_len.max(1)
    }
    /// Values of one observation step (what the sources give per tick).
    pub fn step_obs_dim(&self) -> usize {
        self.obs_dim / self.obs_horizon.max(1)
    }

    /// Conditioning width fed to the flow: encoder output, or obs+goal.
    pub fn cond_dim(&self) -> usize {
        match &self.encoder {
            Some(e) => e.rep_dim,
            None => self.obs_dim + self.goal_dim,
        }
    }
    /// Raw conditioning input width (normalised obs ++ goal).
    pub fn raw_cond_dim(&self) -> usize {
        self.obs_dim + self.goal_dim
    }
    /// Sizes of the coupling split: (unchanged first part, transformed part).
    /// A 1-D action has nothing to condition on but the observation, so its
    /// blocks transform the one value with nets that see only the
    /// conditioning input: each block is then an affine map of the action
    /// chosen by the observation, and the stack a conditional Gaussian
    /// (docs/model-format.md, "1-D actions").
    pub fn split(&self) -> (usize, usize) {
        if self.act_dim == 1 {
            return (0, 1);
        }
        (self.act_dim.div_ceil(2), self.act_dim / 2)
    }

    /// The tensors this spec requires, with their shapes, in a fixed order.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>, Dtype)> {
        let mut out = Vec::new();
        let kernel = self.weights.safetensors();
        let f = |name: String, shape: Vec<usize>| {
            let dtype = if is_kernel(&name) { kernel } else { Dtype::F32 };
            (name, shape, dtype)
        };
        let k = self.cond_dim();
        let d = self.act_dim;
        let [h1, h2] = self.hidden;
        if let Some(e) = &self.encoder {
            let mut inp = self.raw_cond_dim();
            for j in 0..e.layers {
                out.push(f(format!("enc.l{j}.w"), vec![inp, e.width]));
                out.push(f(format!("enc.l{j}.b"), vec![e.width]));
                out.push(f(format!("enc.ln{j}.g"), vec![e.width]));
                out.push(f(format!("enc.ln{j}.b"), vec![e.width]));
                inp = e.width;
            }
            out.push(f("enc.out.w".into(), vec![inp, e.rep_dim]));
            out.push(f("enc.out.b".into(), vec![e.rep_dim]));
        }
        let mlp = |out: &mut Vec<_>, p: &str, inp: usize, o: usize| {
            out.push(f(format!("{p}.l0.w"), vec![inp, h1]));
            out.push(f(format!("{p}.l0.b"), vec![h1]));
            out.push(f(format!("{p}.ln0.g"), vec![h1]));
            out.push(f(format!("{p}.ln0.b"), vec![h1]));
            out.push(f(format!("{p}.l1.w"), vec![h1, h2]));
            out.push(f(format!("{p}.l1.b"), vec![h2]));
            out.push(f(format!("{p}.ln1.g"), vec![h2]));
            out.push(f(format!("{p}.ln1.b"), vec![h2]));
            out.push(f(format!("{p}.l2.w"), vec![h2, o]));
            out.push(f(format!("{p}.l2.b"), vec![o]));
        };
        match self.kind {
            PolicyKind::Flow => {
                let (d1, d2) = self.split();
                for i in 0..self.blocks {
                    out.push((format!("blocks.{i}.lin.perm"), vec![d], Dtype::I64));
                    out.push(f(format!("blocks.{i}.lin.L"), vec![d, d]));
                    out.push(f(format!("blocks.{i}.lin.U"), vec![d, d]));
                    out.push(f(format!("blocks.{i}.lin.s"), vec![d]));
                    mlp(&mut out, &format!("blocks.{i}.s"), d1 + k, d2);
                    mlp(&mut out, &format!("blocks.{i}.t"), d1 + k, d2);
                }
            }
            PolicyKind::Gaussian => mlp(&mut out, "gauss", k, 2 * d),
        }
        out
    }

    pub(crate) fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::InvalidSpec(m));
        if self.act_dim == 0 {
            return bad("act_dim must be > 0".into());
        }
        for (name, n, dim, dim_name) in [
            ("chunk_len", self.chunk_len, self.act_dim, "act_dim"),
            ("obs_horizon", self.obs_horizon, self.obs_dim, "obs_dim"),
        ] {
            if n == 0 || dim % n != 0 {
                return bad(format!(
                    "{name} {n} must be >= 1 and divide {dim_name} {dim}"
                ));
            }
        }
        if self.kind == PolicyKind::Flow && self.blocks == 0 {
            return bad("a flow needs at least one block".into());
        }
        if self.kind == PolicyKind::Gaussian && self.blocks != 0 {
            return bad("a Gaussian policy has no flow blocks (blocks must be 0)".into());
        }
        if self.hidden.contains(&0) {
            return bad("hidden widths must be > 0".into());
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return bad("layer_norm_eps must be finite and > 0".into());
        }
        if !(self.noise_sigma >= 0.0 && self.noise_sigma.is_finite()) {
            return bad("noise_sigma must be finite and >= 0".into());
        }
        if !(0.0..=1.0).contains(&self.temperature) {
            return bad(format!(
                "temperature must be within 0..1, got {}",
                self.temperature
            ));
        }
        if let Some(e) = &self.encoder {
            if e.width == 0 || e.layers == 0 || e.rep_dim == 0 {
                return bad("encoder width, layers and rep_dim must be > 0".into());
            }
        }
        check_norm("obs_norm", &self.obs_norm, self.obs_dim)?;
        match (&self.goal_norm, self.goal_dim) {
            (None, 0) => {}
            (Some(g), n) if n > 0 => check_norm("goal_norm", g, n)?,
            _ => return bad("goal_norm must be present exactly when goal_dim > 0".into()),
        }
        if self.action_low.len() != self.act_dim || self.action_high.len() != self.act_dim {
            return bad(format!(
                "action bounds must have act_dim = {} entries",
                self.act_dim
            ));
        }
        for (i, (l, h)) in self.action_low.iter().zip(&self.action_high).enumerate() {
            if !(l.is_finite() && h.is_finite() && l < h) {
                return bad(format!(
                    "action bound {i}: need finite low < high, got [{l}, {h}]"
                ));
            }
        }
        Ok(())
    }
}

fn check_norm(what: &str, n: &Normalizer, dim: usize) -> Result<(), ModelError> {
    if n.mean.len() != dim || n.std.len() != dim {
        return Err(ModelError::InvalidSpec(format!(
            "{what} must have {dim} entries (mean {}, std {})",
            n.mean.len(),
            n.std.len()
        )));
    }
    if n.mean.iter().any(|v| !v.is_finite()) || n.std.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return Err(ModelError::InvalidSpec(format!(
            "{what}: means must be finite and stds finite and > 0"
        )));
    }
    Ok(())
}
