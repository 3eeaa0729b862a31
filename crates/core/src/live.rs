//! Parameters that may change while the node runs, and their hand-off to
//! the control thread. Which names are live is decided here
//! ([`is_live`]); the values are checked by the same rules as at start-up
//! (the caller re-parses the whole parameter set with the change). The
//! control thread takes a new [`LiveSettings`] between two ticks from a
//! one-slot lock-free queue ([`LiveChannel`]): a copy of fixed-size
//! arrays, no allocation, no lock.

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use crate::config::NodeConfig;
use crate::control::SafeBehaviour;
use crate::log::MAX_ACT;
use crate::runner::MAX_SOURCES;

/// Whether a parameter may change at run time: `safe_behaviour`,
/// `max_delta`, `temperature`, `max_future_stamp`, `log.every` and every
/// source's `max_age`. Everything else shapes the node (model, sources,
/// topics, rates, threads) and is read-only once it runs.
pub fn is_live(name: &str) -> bool {
    matches!(
        name,
        "safe_behaviour" | "max_delta" | "temperature" | "max_future_stamp" | "log.every"
    ) || (name.starts_with("sources.") && name.ends_with(".max_age"))
}

/// The live parameters' values, as the control thread applies them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveSettings {
    pub safe: SafeBehaviour,
    /// None: the model's own temperature.
    pub temperature: Option<f32>,
    /// Per action value (the first `n_act`); `rate_limit` false: off.
    pub rate_limit: bool,
    pub max_delta: [f64; MAX_ACT],
    pub n_act: usize,
    /// Per source, board order (observations then goals).
    pub max_age_s: [f64; MAX_SOURCES],
    pub n_sources: usize,
    pub max_future_stamp_s: f64,
    pub log_every: u64,
}

impl LiveSettings {
    /// The live part of a checked configuration, for a model whose action
    /// step has `n_act` values.
    pub fn of(cfg: &NodeConfig, n_act: usize) -> Self {
        let mut s = Self {
            safe: cfg.safe,
            temperature: cfg.temperature,
            rate_limit: cfg.max_delta.is_some(),
            max_delta: [f64::INFINITY; MAX_ACT],
            n_act: n_act.min(MAX_ACT),
            max_age_s: [0.0; MAX_SOURCES],
            n_sources: 0,
            max_future_stamp_s: cfg.max_future_stamp_s,
            log_every: cfg.log.as_ref().map_or(1, |l| l.every),
        };
        if let Some(md) = &cfg.max_delta {
            for (d, v) in s.max_delta.iter_mut().zip(md) {
                *d = *v;
            }
        }
        for (a, src) in s.max_age_s.iter_mut().zip(cfg.sources()) {
            *a = src.max_age_s;
            s.n_sources += 1;
        }
        s
    }
}

/// The one-slot hand-off from the parameter service to the control thread:
/// a newer offer replaces one not yet taken.
pub struct LiveChannel {
    slot: ArrayQueue<LiveSettings>,
}

impl LiveChannel {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            slot: ArrayQueue::new(1),
        })
    }

    /// Offer new settings (parameter service thread).
    pub fn offer(&self, s: LiveSettings) {
        self.slot.force_push(s);
    }

    /// The newest settings not yet taken (control thread: lock-free, no
    /// allocation).
    pub fn take(&self) -> Option<LiveSettings> {
        self.slot.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_behaviour_limits_and_freshness_are_live() {
        for n in [
            "safe_behaviour",
            "max_delta",
            "temperature",
            "max_future_stamp",
            "log.every",
            "sources.arm.max_age",
        ] {
            assert!(is_live(n), "{n}");
        }
        for n in [
            "model",
            "rate_hz",
            "sources.arm.topic",
            "action.topic",
            "log.dir",
            "rt.cpu",
            "hot_swap.dir",
            "seed",
        ] {
            assert!(!is_live(n), "{n}");
        }
    }
}
