//! The per-target state shown on the landing page.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetStatus {
    pub url: String,
    pub model: Option<String>,
    /// Whether the last scrape of the server's `/metrics` worked (`None`: not yet tried).
    pub up: Option<bool>,
    pub last_error: Option<String>,
}

/// Shared, cheap-to-clone map from target label to its status.
#[derive(Debug, Clone, Default)]
pub struct StatusBoard {
    inner: Arc<Mutex<BTreeMap<String, TargetStatus>>>,
}

impl StatusBoard {
    pub fn update(&self, target: &str, f: impl FnOnce(&mut TargetStatus)) {
        if let Ok(mut m) = self.inner.lock() {
            f(m.entry(target.to_string()).or_default());
        }
    }
    pub fn snapshot(&self) -> Vec<(String, TargetStatus)> {
        self.inner
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}
