//! `flowpilot convert`: the same model with its dense kernels stored in
//! another width (f32, f16, bf16). Offline; allocates freely.

use std::path::PathBuf;

use anyhow::{Context, Result};
use flowpilot_core::policy::model::WeightDtype;

use crate::cli::load;

#[derive(clap::Args)]
pub(crate) struct ConvertArgs {
    input: PathBuf,
    out: PathBuf,
    /// Kernel storage of the output: f32, f16 or bf16. Each kernel value is
    /// rounded to nearest (ties to even); biases, LayerNorm and the PLU
    /// layer stay f32. Version and lineage are kept; the digest changes.
    #[arg(long)]
    weights: WeightDtype,
}

pub(crate) fn run(a: ConvertArgs) -> Result<()> {
    let m = load(&a.input)?;
    let from = m.spec.weights;
    let mut c = m
        .with_weights(a.weights)
        .with_context(|| format!("converting {} to {}", a.input.display(), a.weights))?;
    if from != a.weights {
        let mut spec = c.spec.clone();
        spec.created_by = format!("{} (kernels {from} -> {})", spec.created_by, a.weights)
            .trim_start()
            .to_string();
        c = flowpilot_core::policy::model::ModelFile::new(spec, c.tensors().clone())?;
    }
    c.save(&a.out)?;
    let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({} kernels, {} -> {} bytes on disk, {})",
        a.out.display(),
        a.weights,
        size(&a.input),
        size(&a.out),
        c.spec.digest
    );
    Ok(())
}
