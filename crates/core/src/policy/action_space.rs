//! The one mapping between the flow's action space ([-1, 1] per dimension,
//! where the policy samples and its log-prob is exact) and the robot's
//! physical units (`action_low..action_high` in the model spec). The sampler
//! uses it on the control thread: both directions are allocation-free.
//!
//! ```
//! use flowpilot_core::policy::action_space::ActionSpace;
//! let s = ActionSpace::from_bounds(&[0.0, -2.0], &[10.0, 2.0]);
//! let mut phys = [0.0; 2];
//! s.to_physical(&[0.5, 3.0], &mut phys); // the flow value is clipped to [-1, 1]
//! assert_eq!(phys, [7.5, 2.0]);
//! let mut back = [0.0; 2];
//! s.to_flow(&phys, &mut back);
//! assert_eq!(back, [0.5, 1.0]);
//! ```

use crate::policy::model::ModelSpec;

/// Per-dimension midpoint and half-range of the physical bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionSpace {
    mid: Vec<f32>,
    half: Vec<f32>,
}

impl ActionSpace {
    /// The model's action space (its validated bounds).
    pub fn new(spec: &ModelSpec) -> Self {
        Self::from_bounds(&spec.action_low, &spec.action_high)
    }

    pub fn from_bounds(low: &[f32], high: &[f32]) -> Self {
        Self {
            mid: low.iter().zip(high).map(|(l, h)| 0.5 * (l + h)).collect(),
            half: low.iter().zip(high).map(|(l, h)| 0.5 * (h - l)).collect(),
        }
    }

    pub fn dim(&self) -> usize {
        self.mid.len()
    }

    /// Flow space -> physical units, clipping the flow value to [-1, 1]
    /// first (the paper clips; no tanh squash).
    #[inline]
    pub fn to_physical(&self, flow: &[f32], out: &mut [f32]) {
        for (i, o) in out.iter_mut().enumerate().take(self.mid.len()) {
            *o = self.mid[i] + self.half[i] * flow[i].clamp(-1.0, 1.0);
        }
    }

    /// Physical units -> flow space (the inverse; not clipped, so an action
    /// outside the bounds maps outside [-1, 1]).
    #[inline]
    pub fn to_flow(&self, physical: &[f32], out: &mut [f32]) {
        for (i, o) in out.iter_mut().enumerate().take(self.mid.len()) {
            *o = (physical[i] - self.mid[i]) / self.half[i];
        }
    }

    /// [`Self::to_flow`] into a new vector (off the control thread).
    pub fn to_flow_vec(&self, physical: &[f32]) -> Vec<f32> {
        let mut v = vec![0.0; self.dim()];
        self.to_flow(physical, &mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_inside_the_bounds() {
        let s = ActionSpace::from_bounds(&[-1.0, -3.0, 0.5], &[2.0, 4.0, 0.75]);
        let flow = [-0.9f32, 0.3, 1.0];
        let mut p = [0.0; 3];
        let mut f = [0.0; 3];
        s.to_physical(&flow, &mut p);
        s.to_flow(&p, &mut f);
        for (a, b) in flow.iter().zip(&f) {
            assert!((a - b).abs() < 1e-6, "{flow:?} -> {p:?} -> {f:?}");
        }
        // the bounds map to ±1
        s.to_flow(&[-1.0, 4.0, 0.5], &mut f);
        assert_eq!(f, [-1.0, 1.0, -1.0]);
    }
}
