//! Why a tick's action is what it is: the one owner of the decision codes
//! that the control tick produces, the trace topic and the transition log
//! carry, the learner filters on and the docs list. Plain data; the control
//! thread uses it (no allocation).

/// Why this tick's action is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The policy's sample was applied.
    Policy,
    /// Warm-up (or start-up hold, or no action at all): nothing from the
    /// policy was applied.
    WarmingUp,
    EStop,
    Stale {
        source: usize,
    },
    Invalid,
    /// A human override was live: its action was applied.
    Override,
    /// The node is not active (lifecycle): nothing is published, except
    /// the safe action on the tick that deactivated it.
    Inactive,
}

/// Every code with its name, in code order: the schema text and the docs
/// are written from this table.
pub const CODES: [(u8, &str); 7] = [
    (0, "policy"),
    (1, "warm-up"),
    (2, "e-stop"),
    (3, "stale"),
    (4, "invalid"),
    (5, "human override"),
    (6, "inactive"),
];

impl Decision {
    /// The code used in the trace topic and the transition log.
    pub fn code(self) -> u8 {
        match self {
            Decision::Policy => 0,
            Decision::WarmingUp => 1,
            Decision::EStop => 2,
            Decision::Stale { .. } => 3,
            Decision::Invalid => 4,
            Decision::Override => 5,
            Decision::Inactive => 6,
        }
    }

    /// Whether a logged code says the policy's own sample was applied (the
    /// records SAC may treat as on-policy actions).
    pub fn is_policy_code(code: u8) -> bool {
        code == Decision::Policy.code()
    }

    /// The name of a code, if it is one.
    pub fn name_of(code: u8) -> Option<&'static str> {
        CODES.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
    }

    /// "0 policy, 1 warm-up, ...": the codes as one line for schema and docs.
    pub fn legend() -> String {
        CODES
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_table_matches_the_enum() {
        let all = [
            Decision::Policy,
            Decision::WarmingUp,
            Decision::EStop,
            Decision::Stale { source: 7 },
            Decision::Invalid,
            Decision::Override,
            Decision::Inactive,
        ];
        assert_eq!(all.len(), CODES.len());
        for (d, (c, _)) in all.iter().zip(CODES) {
            assert_eq!(d.code(), c);
        }
        assert!(Decision::is_policy_code(0));
        assert!(!Decision::is_policy_code(5));
        assert_eq!(Decision::name_of(2), Some("e-stop"));
        assert_eq!(Decision::name_of(6), Some("inactive"));
        assert_eq!(Decision::name_of(7), None);
    }

    /// The docs list the codes as the table does (one owner: this file).
    #[test]
    fn log_format_doc_lists_every_code() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/log-format.md"
        ))
        .expect("docs/log-format.md");
        assert!(
            doc.contains(&Decision::legend()),
            "docs/log-format.md must list the decision codes as `{}`",
            Decision::legend()
        );
    }
}
