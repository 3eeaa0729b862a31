//! `flowpilot inspect`: a model's architecture, dims, digest and lineage.

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::load;
use flowpilot_core::policy::model::{Direction, ModelFile, PolicyKind};

#[derive(clap::Args)]
pub(crate) struct InspectArgs {
    model: PathBuf,
}

pub(crate) fn run(a: InspectArgs) -> Result<()> {
    print(&load(&a.model)?)
}

pub(crate) fn print(m: &ModelFile) -> Result<()> {
    let s = &m.spec;
    println!("format version : {}", s.format_version);
    println!("kind           : {:?}", s.kind);
    println!(
        "dims           : obs {}, goal {}, act {}",
        s.obs_dim, s.goal_dim, s.act_dim
    );
    if s.chunk_len > 1 || s.obs_horizon > 1 {
        println!(
            "chunks         : {} steps of {} actions per sample; history {} steps of {} observations",
            s.chunk_len,
            s.step_act_dim(),
            s.obs_horizon,
            s.step_obs_dim()
        );
    }
    if s.kind == PolicyKind::Flow {
        let (d1, d2) = s.split();
        let note = if d1 == 0 {
            "; 1-D: nets see the observation only, a conditional Gaussian"
        } else {
            ""
        };
        println!(
            "architecture   : {} coupling blocks (PLU linear + affine coupling, split {d1}/{d2}{note})",
            s.blocks
        );
    }
    println!(
        "mlp hidden     : {:?} (LeakyReLU 0.01, LayerNorm eps {:e})",
        s.hidden, s.layer_norm_eps
    );
    match &s.encoder {
        Some(e) => println!(
            "encoder        : {} x Dense({}) -> rep {}",
            e.layers, e.width, e.rep_dim
        ),
        None => println!(
            "encoder        : none (conditioning on normalised obs/goal, k = {})",
            s.cond_dim()
        ),
    }
    let dir = match s.direction {
        Direction::Inverse => "inverse (blocks map action -> latent; sampling inverts them)",
        Direction::Forward => "forward (blocks map latent -> action)",
    };
    println!("sampling       : {dir}");
    println!(
        "noise sigma    : {} (denoise at sampling: {})",
        s.noise_sigma, s.denoise
    );
    println!(
        "action bounds  : low {:?} high {:?}",
        s.action_low, s.action_high
    );
    println!("parameters     : {}", m.parameter_count());
    println!("kernels stored : {}", s.weights);
    println!("digest         : {}", s.digest);
    println!(
        "version        : {} (parent {} {})",
        s.version,
        s.parent_version.map_or("-".into(), |v| v.to_string()),
        s.parent_digest.as_deref().unwrap_or("-")
    );
    if !s.created_by.is_empty() {
        println!("created by     : {}", s.created_by);
    }
    // Which key signed it (docs/security.md); whether a robot trusts that
    // key is its hot_swap.trusted_keys' say.
    use flowpilot_core::signing::{signer, SignatureError};
    match signer(m) {
        Ok(key) => println!("signed by      : {key}"),
        Err(SignatureError::Unsigned) => println!("signed by      : - (unsigned)"),
        Err(e) => println!("signed by      : - ({e})"),
    }
    Ok(())
}
