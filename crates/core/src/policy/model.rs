//! The model file: safetensors tensors plus a JSON spec in the header's
//! metadata. Everything that reads a policy goes through [`ModelFile::load`],
//! which validates the whole file before anyone sees a weight.
//! The format is documented in `docs/model-format.md`.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
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

mod spec;
pub use spec::*;

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
