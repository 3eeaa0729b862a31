//! Import policies trained with the paper's code (flax and PyTorch
//! checkpoints). Pickles need Python: `scripts/nf4rl_import.py` reads the
//! checkpoint with a restricted unpickler (numpy only, no code from the
//! checkpoint runs) and writes the tensors in flowpilot's layout; this module
//! adds what the checkpoint lacks (normalisers, bounds), then builds,
//! validates and digests the model file like any other.
//!
//! Offline only (spawns Python, allocates); never on the control thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use ndarray_npy::NpzReader;
use serde::Deserialize;

use flowpilot_core::policy::model::{
    Direction, EncoderSpec, ModelFile, ModelSpec, Normalizer, PolicyKind, Tensor, TensorData,
    FORMAT_VERSION,
};

/// Which code produced the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// il-and-cil flax GCBC: params pickle with 'model' and 'encoder'.
    FlaxGcbc,
    /// offline-rl flax agent pickle (NF-RLBC): modules_actor(+_encoder).
    FlaxRlbc,
    /// PyTorch state_dict (torch.save zip) of the NF-BC RealNVP.
    TorchBc,
}

impl CheckpointKind {
    fn arg(self) -> &'static str {
        match self {
            Self::FlaxGcbc => "flax-gcbc",
            Self::FlaxRlbc => "flax-rlbc",
            Self::TorchBc => "torch-bc",
        }
    }
}

/// What the checkpoint does not carry, from the command line.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub goal_dim: usize,
    pub obs_mean: Option<Vec<f32>>,
    pub obs_std: Option<Vec<f32>>,
    pub goal_mean: Option<Vec<f32>>,
    pub goal_std: Option<Vec<f32>>,
    pub action_low: Option<Vec<f32>>,
    pub action_high: Option<Vec<f32>>,
    pub noise_sigma: f32,
    pub denoise: bool,
    /// Action steps per sample (a chunk) and observation steps per sample
    /// (history); 1 each for a plain policy. Normalisers and bounds may be
    /// given per step (repeated over the chunk / history) or whole.
    pub chunk_len: usize,
    pub obs_horizon: usize,
    pub python: Option<PathBuf>,
    pub script: Option<PathBuf>,
}

impl Default for ImportOptions {
    /// A plain policy (no chunk, no history) with unit normalisers, ±1
    /// bounds and the paper's σ = 0.1.
    fn default() -> Self {
        Self {
            goal_dim: 0,
            obs_mean: None,
            obs_std: None,
            goal_mean: None,
            goal_std: None,
            action_low: None,
            action_high: None,
            noise_sigma: 0.1,
            denoise: false,
            chunk_len: 1,
            obs_horizon: 1,
            python: None,
            script: None,
        }
    }
}

#[derive(Deserialize)]
struct Meta {
    act_dim: usize,
    cond_dim: usize,
    blocks: usize,
    hidden: [usize; 2],
    layer_norm_eps: f32,
    encoder: Option<MetaEncoder>,
    direction: Direction,
}

#[derive(Deserialize)]
struct MetaEncoder {
    width: usize,
    layers: usize,
    rep_dim: usize,
    in_dim: usize,
}

fn helper_script(opts: &ImportOptions) -> PathBuf {
    if let Some(s) = &opts.script {
        return s.clone();
    }
    if let Some(dir) = std::env::var_os("FLOWPILOT_SCRIPTS") {
        return Path::new(&dir).join("nf4rl_import.py");
    }
    // The repository's scripts/ (this crate lives in crates/learn).
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join("nf4rl_import.py")
}

/// Convert a checkpoint into a validated model file (not yet saved).
pub fn import_nf4rl(
    checkpoint: &Path,
    kind: CheckpointKind,
    opts: &ImportOptions,
) -> Result<ModelFile> {
    let tmp = tempdir()?;
    let npz = tmp.join("tensors.npz");
    let json = tmp.join("meta.json");
    let python = opts
        .python
        .clone()
        .or_else(|| std::env::var_os("FLOWPILOT_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| "python3".into());
    let script = helper_script(opts);
    let out = Command::new(&python)
        .arg(&script)
        .arg(checkpoint)
        .args(["--kind", kind.arg()])
        .arg("--out-npz")
        .arg(&npz)
        .arg("--out-json")
        .arg(&json)
        .output()
        .with_context(|| {
            format!(
                "running {} {} (set --python or FLOWPILOT_PYTHON)",
                python.display(),
                script.display()
            )
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let meta: Meta =
        serde_json::from_slice(&std::fs::read(&json)?).context("reading the helper's metadata")?;
    let tensors = read_npz(&npz)?;
    let _ = std::fs::remove_dir_all(&tmp);

    let raw_cond = meta.encoder.as_ref().map_or(meta.cond_dim, |e| e.in_dim);
    if opts.goal_dim > raw_cond {
        bail!(
            "--goal-dim {} exceeds the checkpoint's conditioning input width {raw_cond}",
            opts.goal_dim
        );
    }
    let obs_dim = raw_cond - opts.goal_dim;
    let d = meta.act_dim;
    for (flag, n, width, what) in [
        ("--chunk", opts.chunk_len, d, "action outputs"),
        (
            "--obs-horizon",
            opts.obs_horizon,
            obs_dim,
            "observation inputs",
        ),
    ] {
        if n == 0 || width % n != 0 {
            bail!("{flag} {n} does not divide the checkpoint's {width} {what}");
        }
    }
    // A per-step vector is repeated over the chunk / history.
    let whole = |v: Vec<f32>, n: usize, steps: usize| {
        if steps > 1 && v.len() * steps == n {
            v.repeat(steps)
        } else {
            v
        }
    };
    let norm = |mean: &Option<Vec<f32>>,
                std: &Option<Vec<f32>>,
                n: usize,
                steps: usize,
                what: &str|
     -> Result<Normalizer> {
        let mean = whole(mean.clone().unwrap_or_else(|| vec![0.0; n]), n, steps);
        let std = whole(std.clone().unwrap_or_else(|| vec![1.0; n]), n, steps);
        if mean.len() != n || std.len() != n {
            bail!(
                "--{what}-mean/--{what}-std need {n} values (or {} per step)",
                n / steps
            );
        }
        Ok(Normalizer { mean, std })
    };
    let spec = ModelSpec {
        format_version: FORMAT_VERSION,
        kind: PolicyKind::Flow,
        obs_dim,
        goal_dim: opts.goal_dim,
        act_dim: d,
        chunk_len: opts.chunk_len,
        obs_horizon: opts.obs_horizon,
        blocks: meta.blocks,
        hidden: meta.hidden,
        weights: Default::default(),
        layer_norm_eps: meta.layer_norm_eps,
        encoder: meta.encoder.as_ref().map(|e| EncoderSpec {
            width: e.width,
            layers: e.layers,
            rep_dim: e.rep_dim,
        }),
        direction: meta.direction,
        noise_sigma: opts.noise_sigma,
        denoise: opts.denoise,
        temperature: 1.0,
        obs_norm: norm(
            &opts.obs_mean,
            &opts.obs_std,
            obs_dim,
            opts.obs_horizon,
            "obs",
        )?,
        goal_norm: if opts.goal_dim > 0 {
            Some(norm(
                &opts.goal_mean,
                &opts.goal_std,
                opts.goal_dim,
                1,
                "goal",
            )?)
        } else {
            None
        },
        action_low: whole(
            opts.action_low.clone().unwrap_or_else(|| vec![-1.0; d]),
            d,
            opts.chunk_len,
        ),
        action_high: whole(
            opts.action_high.clone().unwrap_or_else(|| vec![1.0; d]),
            d,
            opts.chunk_len,
        ),
        version: 1,
        parent_digest: None,
        parent_version: None,
        created_by: format!(
            "flowpilot import nf4rl --kind {} {}",
            kind.arg(),
            checkpoint.display()
        ),
        digest: String::new(),
    };
    ModelFile::new(spec, tensors).context("the converted checkpoint is not a valid flow")
}

fn read_npz(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    use ndarray::{ArrayD, IxDyn, OwnedRepr};
    let mut z = NpzReader::new(std::fs::File::open(path)?)?;
    let mut out = BTreeMap::new();
    for name in z.names()? {
        let key = name.trim_end_matches(".npy").to_string();
        let t = if key.ends_with(".perm") {
            let a: ArrayD<i64> = z.by_name::<OwnedRepr<i64>, IxDyn>(&name)?;
            Tensor {
                shape: a.shape().to_vec(),
                data: TensorData::I64(a.iter().copied().collect()),
            }
        } else {
            let a: ArrayD<f32> = z.by_name::<OwnedRepr<f32>, IxDyn>(&name)?;
            let a = a.as_standard_layout().to_owned();
            Tensor::f32(a.shape().to_vec(), a.iter().copied().collect())
        };
        out.insert(key, t);
    }
    Ok(out)
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "flowpilot-import-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
