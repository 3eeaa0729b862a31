//! `flowpilot keygen`: a new ed25519 key pair for signing policy versions
//! (`flowpilot finetune --signing-key KEY`; a node trusts `KEY.pub` with
//! `hot_swap.trusted_keys`). docs/security.md, "Signed policies and keys".

use std::path::PathBuf;

use anyhow::{Context, Result};

use flowpilot_core::signing::PolicySigner;

#[derive(clap::Args)]
pub(crate) struct KeygenArgs {
    /// The private key file to create (mode 0600; never overwritten). The
    /// public key goes to KEY.pub beside it (mode 0644).
    #[arg(long, value_name = "KEY")]
    out: PathBuf,
}

pub(crate) fn run(a: KeygenArgs) -> Result<()> {
    let signer = PolicySigner::generate().context("generating a key")?;
    let public = signer
        .save(&a.out)
        .with_context(|| format!("writing the key pair {}", a.out.display()))?;
    println!(
        "wrote {} (private key, mode 0600: keep it on the learner's host only) and {} (public key)",
        a.out.display(),
        public.display()
    );
    println!("public key: {}", signer.public_key());
    println!(
        "sign versions: flowpilot finetune --signing-key {} ...; trust them on a robot: hot_swap.trusted_keys: [{}]",
        a.out.display(),
        public.display()
    );
    Ok(())
}
