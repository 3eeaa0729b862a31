//! The learner's SAC flags: the defaults are what no flags parse to, and
//! each flag keeps its name.

use super::SacConfig;
use clap::Parser;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    sac: SacConfig,
}

#[test]
fn default_equals_the_parse_of_no_flags() {
    let parsed = Flags::try_parse_from(["finetune"]).unwrap().sac;
    assert_eq!(parsed, SacConfig::default());
}

#[test]
fn flags_keep_their_names() {
    let f = Flags::try_parse_from([
        "finetune",
        "--critic-warmup",
        "20",
        "--bc-lambda",
        "0.5",
        "--target-entropy",
        "-3",
        "--lr-actor",
        "1e-3",
    ])
    .unwrap()
    .sac;
    assert_eq!(f.critic_warmup, 20);
    assert_eq!(f.bc_lambda, 0.5);
    assert_eq!(f.target_entropy, Some(-3.0));
    assert_eq!(f.lr_actor, 1e-3);
}
