//! The optimised policy's latent temperature: its entropy is that of
//! z ~ N(0, τ²I) pushed through the flow, and τ outside (0, 1] is refused.

use super::*;
use flowpilot_core::policy::init::{default_spec, init_model, Init};

fn entropy_at(tau: f64) -> Result<f64> {
    // Paper init: zero last layers make every coupling the identity and
    // the linear layers are orthogonal, so the flow keeps volume and the
    // entropy is exactly Gaussian's, d/2·ln(2πe) + d·ln τ.
    let model = init_model(default_spec(4, 0, 2, 2, 16), Init::Paper, 1).unwrap();
    let cfg = SacConfig {
        latent_temperature: tau,
        ..Default::default()
    };
    let mut sac = Sac::new(&model, cfg)?;
    let mut rb = ReplayBuffer::new(4, 2, 64);
    for i in 0..64 {
        let s = [i as f32 / 64.0, 0.5, -0.25, 1.0];
        rb.push(&s, &[0.0, 0.0], 0.0, &s, 0.99);
    }
    sac.policy_entropy(&rb, 8192)
}

#[test]
fn the_entropy_is_that_of_the_tempered_policy() {
    let gauss = (2.0 * std::f64::consts::PI * std::f64::consts::E).ln();
    // 8192 draws: the estimate's SE is √(d/2 / 8192) ≈ 0.011.
    for tau in [1.0, 0.3] {
        let h = entropy_at(tau).unwrap();
        let want = gauss + 2.0 * tau.ln();
        assert!(
            (h - want).abs() < 0.06,
            "tau {tau}: entropy {h}, want {want}"
        );
    }
}

#[test]
fn a_temperature_outside_0_1_is_refused() {
    for tau in [0.0, -0.5, 1.5, f64::NAN] {
        assert!(matches!(
            entropy_at(tau),
            Err(LearnerError::LatentTemperature(_))
        ));
    }
}
