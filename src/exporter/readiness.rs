//! `/readyz`: ready once every subsystem has finished its first collection.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// A set of named subsystems still to report their first collection.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    pending: Arc<Mutex<BTreeSet<String>>>,
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
    }
    pub fn pending(&self) -> Vec<String> {
        self.pending
            .lock()
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default()
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
    }
}
