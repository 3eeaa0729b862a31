//! The model file: safetensors tensors plus a JSON spec in the header's
//! metadata. Everything that reads a policy goes through [`ModelFile::load`],
//! which validates the whole file before anyone sees a weight.
//! The format is documented in `docs/model-format.md`.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Current model format version. Bump on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// Metadata key holding the JSON spec.
pub const META_KEY: &str = "flowpilot";
/// Metadata key holding a version's signature (JSON, [`crate::signing`]),
/// beside the spec and outside the digest: an unsigned file loads as
/// before, and only the hot swap with `hot_swap.trusted_keys` requires one.
pub const SIGNATURE_META_KEY: &str = "flowpilot_signature";
/// Refuse headers larger than this before parsing them (a corrupt length
/// field must not make us allocate gigabytes).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;
/// The largest model file [`ModelFile::load`] reads (the paper's largest
/// policies are a few MB; this is ample and bounds the hot swap's work).
pub const MAX_FILE_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("model file {path} is over the {MAX_FILE_BYTES}-byte limit")]
    TooLarge { path: String },
    #[error("model file is truncated: {0}")]
    Truncated(String),
    #[error("model header is {0} bytes, over the {MAX_HEADER_BYTES}-byte limit (corrupt file?)")]
    OversizedHeader(u64),
    #[error("not a valid safetensors file: {0}")]
    Safetensors(String),
    #[error("model file has no '{META_KEY}' metadata (not a flowpilot model?)")]
    MissingSpec,
    #[error("model spec is not valid JSON for this format: {0}")]
    BadSpec(String),
    #[error("unknown model format version {found} (this build reads version {FORMAT_VERSION})")]
    UnknownVersion { found: u32 },
    #[error("invalid model spec: {0}")]
    InvalidSpec(String),
    #[error("missing tensor '{0}'")]
    MissingTensor(String),
    #[error("unexpected tensor '{0}' (not part of this architecture)")]
    UnexpectedTensor(String),
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor '{name}' has dtype {found}, expected {expected}")]
    Dtype {
        name: String,
        found: String,
        expected: String,
    },
    #[error("tensor '{name}' is stored as {found}, but the spec's `weights` field records {recorded:?} kernels (file edited or mislabelled)")]
    WeightDtype {
        name: String,
        recorded: WeightDtype,
        found: String,
    },
    #[error("tensor '{name}' value {index} ({value}) is not exactly a {dtype:?} value (convert with ModelFile::with_weights)")]
    NotRepresentable {
        name: String,
        index: usize,
        value: f32,
        dtype: WeightDtype,
    },
    #[error("tensor '{name}' holds a non-finite value at index {index}")]
    NonFinite { name: String, index: usize },
    #[error("tensor '{0}' is not a valid permutation")]
    BadPermutation(String),
    #[error("tensor '{name}': diagonal entry {index} of the invertible linear layer is zero (not invertible)")]
    Singular { name: String, index: usize },
    #[error("digest mismatch: file says {stored}, content hashes to {computed} (file modified or corrupt)")]
    Digest { stored: String, computed: String },
}

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

    fn validate(&self) -> Result<(), ModelError> {
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

/// One named tensor, owned. Integer tensors (permutations) are kept as i64.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self {
            shape,
            data: TensorData::F32(data),
        }
    }
}

/// A validated model: spec plus every tensor the spec requires, and the
/// signature its writer put in the metadata, if any (unchecked here:
/// [`crate::signing`] verifies it).
#[derive(Debug, Clone)]
pub struct ModelFile {
    pub spec: ModelSpec,
    tensors: BTreeMap<String, Tensor>,
    signature: Option<String>,
}

impl ModelFile {
    /// Build from parts, validating shapes and values and stamping the digest.
    pub fn new(mut spec: ModelSpec, tensors: BTreeMap<String, Tensor>) -> Result<Self, ModelError> {
        spec.format_version = FORMAT_VERSION;
        spec.digest.clear();
        let mut m = Self {
            spec,
            tensors,
            signature: None,
        };
        m.validate()?;
        m.spec.digest = m.compute_digest();
        Ok(m)
    }

    pub fn f32(&self, name: &str) -> &[f32] {
        match &self.tensors[name].data {
            TensorData::F32(v) => v,
            TensorData::I64(_) => unreachable!("validated: {name} is f32"),
        }
    }

    pub fn i64(&self, name: &str) -> &[i64] {
        match &self.tensors[name].data {
            TensorData::I64(v) => v,
            TensorData::F32(_) => unreachable!("validated: {name} is i64"),
        }
    }

    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// The signature metadata as stored (`__metadata__.flowpilot_signature`),
    /// if the file carries one. Its meaning and checks: [`crate::signing`].
    pub fn signature(&self) -> Option<&str> {
        self.signature.as_deref()
    }

    /// The same model carrying `signature` in its metadata (what
    /// [`crate::signing::PolicySigner::sign`] attaches). The digest does
    /// not cover it. A model rebuilt with [`ModelFile::new`] (another
    /// version, other weights) carries none.
    pub fn with_signature(mut self, signature: String) -> Self {
        self.signature = Some(signature);
        self
    }

    /// Number of scalar parameters (permutations excluded: they are fixed).
    pub fn parameter_count(&self) -> usize {
        self.tensors
            .values()
            .filter_map(|t| match &t.data {
                TensorData::F32(v) => Some(v.len()),
                TensorData::I64(_) => None,
            })
            .sum()
    }

    /// Read and fully validate a model file.
    /// Read and validate a model file of at most [`MAX_FILE_BYTES`] (a
    /// larger or still-growing file is refused before it is read whole).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        use std::io::Read;
        let path = path.as_ref();
        let io = |source| ModelError::Io {
            path: path.display().to_string(),
            source,
        };
        let f = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        f.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(ModelError::TooLarge {
                path: path.display().to_string(),
            });
        }
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        // Check the header length ourselves first: safetensors would report a
        // generic error, and we want "truncated" and "oversized" to be clear.
        if bytes.len() < 8 {
            return Err(ModelError::Truncated(format!(
                "{} bytes, too short for a safetensors header",
                bytes.len()
            )));
        }
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if n > MAX_HEADER_BYTES {
            return Err(ModelError::OversizedHeader(n));
        }
        if 8 + n > bytes.len() as u64 {
            return Err(ModelError::Truncated(format!(
                "header claims {n} bytes, file has {}",
                bytes.len() - 8
            )));
        }
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| classify(e, bytes.len()))?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| classify(e, bytes.len()))?;
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or(ModelError::MissingSpec)?;
        let signature = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(SIGNATURE_META_KEY))
            .cloned();
        // Check the version before the full parse so an old build reading a
        // newer file says "unknown version", not "missing field".
        let version: serde_json::Value =
            serde_json::from_str(json).map_err(|e| ModelError::BadSpec(e.to_string()))?;
        match version.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == FORMAT_VERSION as u64 => {}
            Some(v) => return Err(ModelError::UnknownVersion { found: v as u32 }),
            None => return Err(ModelError::BadSpec("missing format_version".into())),
        }
        let spec: ModelSpec =
            serde_json::from_value(version).map_err(|e| ModelError::BadSpec(e.to_string()))?;
        spec.validate()?;
        let mut tensors = BTreeMap::new();
        for (name, shape, dtype) in spec.expected_tensors() {
            let view = st
                .tensor(&name)
                .map_err(|_| ModelError::MissingTensor(name.clone()))?;
            if view.dtype() != dtype && is_kernel(&name) {
                return Err(ModelError::WeightDtype {
                    name,
                    recorded: spec.weights,
                    found: format!("{:?}", view.dtype()),
                });
            }
            tensors.insert(name.clone(), read_tensor(&name, &view, &shape, dtype)?);
        }
        if let Some(extra) = st.names().into_iter().find(|n| !tensors.contains_key(*n)) {
            return Err(ModelError::UnexpectedTensor(extra.to_string()));
        }
        let m = Self {
            spec,
            tensors,
            signature,
        };
        m.validate()?;
        let computed = m.compute_digest();
        if m.spec.digest != computed {
            return Err(ModelError::Digest {
                stored: m.spec.digest.clone(),
                computed,
            });
        }
        Ok(m)
    }

    /// Serialise to safetensors bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let half: BTreeMap<&str, Vec<u8>> = self
            .tensors
            .iter()
            .filter_map(|(n, t)| Some((n.as_str(), self.half_bytes(n, t)?)))
            .collect();
        let views: Vec<(String, TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(n, t)| {
                let (dtype, bytes): (Dtype, &[u8]) = match (&t.data, half.get(n.as_str())) {
                    (_, Some(h)) => (self.spec.weights.safetensors(), h),
                    (TensorData::F32(v), None) => (Dtype::F32, bytemuck_f32(v)),
                    (TensorData::I64(v), None) => (Dtype::I64, bytemuck_i64(v)),
                };
                (
                    n.clone(),
                    TensorView::new(dtype, t.shape.clone(), bytes).expect("shape matches data"),
                )
            })
            .collect();
        let mut meta = std::collections::HashMap::new();
        meta.insert(
            META_KEY.to_string(),
            serde_json::to_string(&self.spec).expect("spec serialises"),
        );
        if let Some(sig) = &self.signature {
            meta.insert(SIGNATURE_META_KEY.to_string(), sig.clone());
        }
        safetensors::serialize(views, Some(meta)).expect("in-memory serialisation")
    }

    /// The little-endian 16-bit bytes of a kernel stored half-size, or None
    /// for a tensor stored as it is held (f32, i64).
    fn half_bytes(&self, name: &str, t: &Tensor) -> Option<Vec<u8>> {
        let w = self.spec.weights;
        match &t.data {
            TensorData::F32(v) if w != WeightDtype::F32 && is_kernel(name) => {
                Some(v.iter().flat_map(|x| w.bits(*x).to_le_bytes()).collect())
            }
            _ => None,
        }
    }

    /// The same model with its kernels stored as `dtype`: each kernel value
    /// rounded to nearest (ties to even), the spec's `weights` set, the
    /// digest restamped. A value beyond the dtype's range (|x| > 65504 for
    /// f16) becomes infinite and is refused as [`ModelError::NonFinite`].
    pub fn with_weights(&self, dtype: WeightDtype) -> Result<Self, ModelError> {
        let mut spec = self.spec.clone();
        spec.weights = dtype;
        let tensors = self
            .tensors
            .iter()
            .map(|(n, t)| {
                let mut t = t.clone();
                if let TensorData::F32(v) = &mut t.data {
                    if is_kernel(n) {
                        v.iter_mut().for_each(|x| *x = dtype.round(*x));
                    }
                }
                (n.clone(), t)
            })
            .collect();
        Self::new(spec, tensors)
    }

    /// Write atomically: temp file in the same directory, fsync, rename.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), crate::checkpoint::StoreError> {
        crate::checkpoint::write_atomic(path.as_ref(), |tmp| std::fs::write(tmp, self.to_bytes()))
    }

    fn validate(&self) -> Result<(), ModelError> {
        self.spec.validate()?;
        for (name, shape, dtype) in self.spec.expected_tensors() {
            let t = self
                .tensors
                .get(&name)
                .ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
            if t.shape != shape {
                return Err(ModelError::Shape {
                    name,
                    found: t.shape.clone(),
                    expected: shape,
                });
            }
            match (&t.data, dtype) {
                (TensorData::F32(v), Dtype::F32 | Dtype::F16 | Dtype::BF16) => {
                    if let Some(index) = v.iter().position(|x| !x.is_finite()) {
                        return Err(ModelError::NonFinite { name, index });
                    }
                    // Half-size kernels are held as their exact f32 values
                    // (every reader sees plain f32); they must be values
                    // the stored dtype can hold, or saving would round them.
                    let w = self.spec.weights;
                    if dtype != Dtype::F32 {
                        if let Some(index) = v.iter().position(|x| w.round(*x) != *x) {
                            return Err(ModelError::NotRepresentable {
                                name,
                                index,
                                value: v[index],
                                dtype: w,
                            });
                        }
                    }
                    if name.ends_with(".lin.s") {
                        if let Some(index) = v.iter().position(|x| *x == 0.0) {
                            return Err(ModelError::Singular { name, index });
                        }
                    }
                }
                (TensorData::I64(v), Dtype::I64) => {
                    let mut seen = vec![false; v.len()];
                    for &p in v {
                        let ok = p >= 0 && (p as usize) < v.len() && !seen[p as usize];
                        if !ok {
                            return Err(ModelError::BadPermutation(name));
                        }
                        seen[p as usize] = true;
                    }
                }
                (d, _) => {
                    return Err(ModelError::Dtype {
                        name,
                        found: format!("{:?}", d).chars().take(3).collect(),
                        expected: format!("{dtype:?}"),
                    })
                }
            }
        }
        if let Some(extra) = self
            .tensors
            .keys()
            .find(|n| !self.spec.expected_tensors().iter().any(|(e, _, _)| e == *n))
        {
            return Err(ModelError::UnexpectedTensor(extra.clone()));
        }
        Ok(())
    }

    /// sha256 over the spec (digest field blanked) and every tensor's name,
    /// dtype, shape and little-endian bytes, in name order.
    pub fn compute_digest(&self) -> String {
        let mut spec = self.spec.clone();
        spec.digest.clear();
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&spec).expect("spec serialises"));
        for (name, t) in &self.tensors {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            for s in &t.shape {
                h.update((*s as u64).to_le_bytes());
            }
            match (&t.data, self.half_bytes(name, t)) {
                (_, Some(b)) => {
                    h.update(self.spec.weights.to_string().as_bytes());
                    h.update(&b);
                }
                (TensorData::F32(v), None) => {
                    h.update(b"f32");
                    h.update(bytemuck_f32(v));
                }
                (TensorData::I64(v), None) => {
                    h.update(b"i64");
                    h.update(bytemuck_i64(v));
                }
            }
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }

    /// Short digest for logs and diagnostics.
    pub fn short_digest(&self) -> &str {
        let d = self.spec.digest.trim_start_matches("sha256:");
        &d[..d.len().min(12)]
    }
}

fn classify(e: safetensors::SafeTensorError, len: usize) -> ModelError {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer | E::HeaderTooSmall => {
            ModelError::Truncated(format!("{e} ({len} bytes on disk)"))
        }
        E::HeaderTooLarge => ModelError::OversizedHeader(len as u64),
        other => ModelError::Safetensors(other.to_string()),
    }
}

fn read_tensor(
    name: &str,
    view: &TensorView<'_>,
    shape: &[usize],
    dtype: Dtype,
) -> Result<Tensor, ModelError> {
    if view.dtype() != dtype {
        return Err(ModelError::Dtype {
            name: name.into(),
            found: format!("{:?}", view.dtype()),
            expected: format!("{dtype:?}"),
        });
    }
    if view.shape() != shape {
        return Err(ModelError::Shape {
            name: name.into(),
            found: view.shape().to_vec(),
            expected: shape.to_vec(),
        });
    }
    let b = view.data();
    let data = match dtype {
        Dtype::F32 => TensorData::F32(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        ),
        // Half-size kernels become their exact f32 values: every reader
        // (twin, learner, inspect) keeps working on plain f32, and the
        // sampler narrows them back to 16 bits without loss.
        Dtype::F16 => TensorData::F32(
            b.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => TensorData::F32(
            b.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::I64 => TensorData::I64(
            b.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        _ => unreachable!("only f32, f16, bf16 and i64 are expected"),
    };
    Ok(Tensor {
        shape: shape.to_vec(),
        data,
    })
}

fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; the
    // format is little-endian and so are all targets we build for.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn bytemuck_i64(v: &[i64]) -> &[u8] {
    // SAFETY: as above.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

#[cfg(target_endian = "big")]
compile_error!("flowpilot's model format is little-endian; big-endian targets are unsupported");
