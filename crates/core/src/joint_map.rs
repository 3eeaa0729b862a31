//! Bounded work per observation message: size caps, and the joint-name
//! lookup for `sensor_msgs/JointState` sources.
//!
//! A JointState names its joints in any order. Looking each configured
//! joint up by a linear scan costs O(joints × names) per message, which a
//! message with 10⁵ names turns into a stall of the spin thread (the one
//! that also serves the e-stop). [`JointMap`] instead remembers the last
//! name list and the positions of the configured joints in it: a message
//! with the same list (the usual case: a driver's order never changes)
//! costs one O(names) comparison; a new list is indexed once with a hash
//! map. Messages past [`MAX_NAMES`] / [`MAX_VALUES`] are refused before
//! any of that.
//!
//! Runs on the spin thread (subscription callbacks), never on the control
//! thread. Allocates only when the name list changes.

use std::collections::HashMap;

/// The most joint names a JointState source accepts in one message.
pub const MAX_NAMES: usize = 4096;

/// The most values a Float64MultiArray source accepts in one message.
pub const MAX_VALUES: usize = 65_536;

/// Positions of the configured joints in the latest name list.
#[derive(Debug, Clone)]
pub struct JointMap {
    joints: Vec<String>,
    /// The name list `index` was built for.
    names: Vec<String>,
    /// For each configured joint, its position in `names` (None: absent).
    index: Vec<Option<usize>>,
}

impl JointMap {
    /// A map for these configured joints (in their configured order).
    pub fn new(joints: Vec<String>) -> Self {
        let n = joints.len();
        Self {
            joints,
            names: Vec::new(),
            index: vec![None; n],
        }
    }

    /// Each configured joint's position in `names`, in configured order;
    /// None if the message is too large or lacks a configured joint.
    pub fn positions(&mut self, names: &[String]) -> Option<&[Option<usize>]> {
        if names.len() > MAX_NAMES {
            return None;
        }
        if self.names.as_slice() != names {
            let at: HashMap<&str, usize> = names
                .iter()
                .enumerate()
                .rev() // the first occurrence wins, as a scan would find
                .map(|(i, n)| (n.as_str(), i))
                .collect();
            for (slot, j) in self.index.iter_mut().zip(&self.joints) {
                *slot = at.get(j.as_str()).copied();
            }
            self.names = names.to_vec();
        }
        self.index
            .iter()
            .all(Option::is_some)
            .then_some(&self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_joints_in_any_order_and_follows_a_changed_list() {
        let mut m = JointMap::new(names(&["b", "a"]));
        let p = m.positions(&names(&["a", "x", "b"])).unwrap();
        assert_eq!(p, [Some(2), Some(0)]);
        let p = m.positions(&names(&["b", "a"])).unwrap();
        assert_eq!(p, [Some(0), Some(1)], "a new order is re-indexed");
        assert!(m.positions(&names(&["a", "c"])).is_none(), "missing joint");
        assert_eq!(
            m.positions(&names(&["b", "a"])).unwrap(),
            [Some(0), Some(1)]
        );
    }

    #[test]
    fn duplicate_names_resolve_to_the_first() {
        let mut m = JointMap::new(names(&["a"]));
        assert_eq!(m.positions(&names(&["a", "a"])).unwrap(), [Some(0)]);
    }

    #[test]
    fn oversized_name_lists_are_refused() {
        let mut m = JointMap::new(names(&["j0"]));
        let big: Vec<String> = (0..=MAX_NAMES).map(|i| format!("j{i}")).collect();
        assert!(m.positions(&big).is_none());
        assert!(m.positions(&big[..MAX_NAMES]).is_some());
    }
}
