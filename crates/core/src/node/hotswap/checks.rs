//! The hot swap's admission checks on a candidate's content: bounds and
//! normalisers unchanged, a smoke sample, the action-divergence cap. Run
//! on the spin thread, off the control thread; they allocate.

use crate::policy::model::{ModelFile, ModelSpec};
use crate::policy::sampler::Sampler;

use super::{SmokeFailure, SwapError};

/// The first differences between two sets of named vectors, as
/// `name[i] old -> new` (at most three, then how many more).
fn differences(fields: &[(&str, &[f32], &[f32])]) -> Option<String> {
    let mut found = Vec::new();
    for (name, old, new) in fields {
        if old.len() != new.len() {
            found.push(format!("{name}: {} -> {} entries", old.len(), new.len()));
            continue;
        }
        for (i, (a, b)) in old.iter().zip(*new).enumerate() {
            if a != b {
                found.push(format!("{name}[{i}] {a:?} -> {b:?}"));
            }
        }
    }
    match found.len() {
        0 => None,
        n if n <= 3 => Some(found.join(", ")),
        n => Some(format!("{} (and {} more)", found[..3].join(", "), n - 3)),
    }
}

/// Refuse a candidate whose action bounds or observation/goal normalisers
/// differ from the running model's: the same robot signals would mean
/// something else to it.
pub(super) fn unchanged_spec(cur: &ModelSpec, new: &ModelSpec) -> Result<(), SwapError> {
    if let Some(d) = differences(&[
        ("action_low", &cur.action_low, &new.action_low),
        ("action_high", &cur.action_high, &new.action_high),
    ]) {
        return Err(SwapError::BoundsChanged(d));
    }
    fn parts(n: &Option<crate::policy::model::Normalizer>) -> (&[f32], &[f32]) {
        n.as_ref()
            .map_or((&[][..], &[][..]), |n| (&n.mean[..], &n.std[..]))
    }
    let (cgm, cgs) = parts(&cur.goal_norm);
    let (ngm, ngs) = parts(&new.goal_norm);
    if let Some(d) = differences(&[
        ("obs_norm.mean", &cur.obs_norm.mean, &new.obs_norm.mean),
        ("obs_norm.std", &cur.obs_norm.std, &new.obs_norm.std),
        ("goal_norm.mean", cgm, ngm),
        ("goal_norm.std", cgs, ngs),
    ]) {
        return Err(SwapError::NormalizerChanged(d));
    }
    Ok(())
}

/// Sample the candidate on each recent observation (the zero observation
/// if there is none), with z = 0 and with one seeded z ~ N(0, I): every
/// action must be finite and within the candidate's bounds, every log-prob
/// finite.
pub(super) fn smoke_sample(
    s: &mut Sampler,
    recent: &[(Vec<f32>, Vec<f32>)],
) -> Result<(), SwapError> {
    let spec = s.spec();
    let (d, low, high) = (
        spec.act_dim,
        spec.action_low.clone(),
        spec.action_high.clone(),
    );
    let zero = [(vec![0.0; spec.obs_dim], vec![0.0; spec.goal_dim])];
    let obs = if recent.is_empty() { &zero[..] } else { recent };
    let n = obs.len();
    let (z, mut act) = (vec![0.0; d], vec![0.0; d]);
    for (index, (o, g)) in obs.iter().enumerate() {
        for seeded in [false, true] {
            let lp = if seeded {
                s.sample_seeded(o, g, 0x5EED, index as u64, &mut act)
            } else {
                s.sample_with_noise(o, g, &z, &mut act)
            };
            let fail = |failure| SwapError::Smoke { index, n, failure };
            let lp = lp.map_err(|e| fail(e.into()))?;
            if !lp.is_finite() {
                return Err(fail(SmokeFailure::LogProbNotFinite(lp)));
            }
            for (dim, &value) in act.iter().enumerate() {
                let (lo, hi) = (low[dim], high[dim]);
                if !value.is_finite() {
                    return Err(fail(SmokeFailure::ActionNotFinite { dim, value }));
                }
                // mid + half·1 may round a few ulps past a bound.
                let tol = 4.0 * f32::EPSILON * lo.abs().max(hi.abs()).max(1.0);
                if value < lo - tol || value > hi + tol {
                    return Err(fail(SmokeFailure::OutOfBounds {
                        dim,
                        value,
                        low: lo,
                        high: hi,
                    }));
                }
            }
        }
    }
    Ok(())
}

/// Mean absolute difference of the running policy's and the candidate's
/// z = 0 actions (physical units) over the given observations.
pub(super) fn divergence(
    a: &ModelFile,
    sb: &mut Sampler,
    recent: &[(Vec<f32>, Vec<f32>)],
) -> Result<f64, SwapError> {
    let mut sa = Sampler::new(a)?;
    let d = a.spec.act_dim;
    let z = vec![0.0; d];
    let (mut xa, mut xb) = (vec![0.0; d], vec![0.0; d]);
    let mut total = 0.0;
    for (obs, goal) in recent {
        sa.sample_with_noise(obs, goal, &z, &mut xa)?;
        sb.sample_with_noise(obs, goal, &z, &mut xb)?;
        total += xa
            .iter()
            .zip(&xb)
            .map(|(p, q)| (p - q).abs() as f64)
            .sum::<f64>()
            / d as f64;
    }
    Ok(total / recent.len() as f64)
}
