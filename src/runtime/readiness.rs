//! `/readyz`: ready once every subsystem has finished its first collection and no condition
//! blocks readiness (a target whose model is not discovered).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// A set of named subsystems still to report their first collection.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    pending: Arc<Mutex<BTreeSet<String>>>,
    /// Conditions that keep the daemon not ready, by key, with why.
    blocked: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Readiness {
    /// Adds a subsystem that must report before the daemon is ready; returns its handle.
    pub fn register(&self, name: impl Into<String>) -> ReadySlot {
        let name = name.into();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(name.clone());
        }
        ReadySlot {
            name,
            pending: self.pending.clone(),
        }
    }
    pub fn is_ready(&self) -> bool {
        self.pending.lock().map(|p| p.is_empty()).unwrap_or(false)
            && self.blocked.lock().map(|b| b.is_empty()).unwrap_or(false)
    }
    /// What readiness waits for: subsystems not yet collected, then each blocking condition as
    /// `key (why)`.
    pub fn pending(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .pending
            .lock()
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default();
        if let Ok(b) = self.blocked.lock() {
            out.extend(b.iter().map(|(k, why)| format!("{k} ({why})")));
        }
        out
    }
    /// Keeps the daemon not ready while `key` is blocked; a new `why` replaces the old.
    pub fn block(&self, key: impl Into<String>, why: impl Into<String>) {
        if let Ok(mut b) = self.blocked.lock() {
            b.insert(key.into(), why.into());
        }
    }
    /// Lifts the condition `key` (idempotent).
    pub fn unblock(&self, key: &str) {
        if let Ok(mut b) = self.blocked.lock() {
            b.remove(key);
        }
    }
}

/// One subsystem's readiness; [`ReadySlot::mark_ready`] is idempotent.
#[derive(Debug, Clone)]
pub struct ReadySlot {
    name: String,
    pending: Arc<Mutex<BTreeSet<String>>>,
}

impl ReadySlot {
    pub fn mark_ready(&self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ready_after_all_slots() {
        let r = Readiness::default();
        let a = r.register("a");
        let b = r.register("b");
        assert!(!r.is_ready());
        a.mark_ready();
        a.mark_ready();
        assert_eq!(r.pending(), vec!["b".to_string()]);
        b.mark_ready();
        assert!(r.is_ready());
        r.block("target t", "model discovery failed (malformed)");
        assert!(!r.is_ready());
        assert_eq!(
            r.pending(),
            vec!["target t (model discovery failed (malformed))".to_string()]
        );
        r.unblock("target t");
        assert!(r.is_ready());
    }
}
