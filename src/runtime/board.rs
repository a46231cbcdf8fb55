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
    /// Drops targets that are no longer configured (after a reload) and records the URL and
    /// configured model of the ones that are.
    pub fn sync_targets(&self, targets: &[(String, String, Option<String>)]) {
        if let Ok(mut m) = self.inner.lock() {
            m.retain(|name, _| targets.iter().any(|(n, _, _)| n == name));
            for (name, url, model) in targets {
                let e = m.entry(name.clone()).or_default();
                e.url = url.clone();
                if model.is_some() {
                    e.model = model.clone();
                }
            }
        }
    }
    pub fn snapshot(&self) -> Vec<(String, TargetStatus)> {
        self.inner
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_drops_removed_targets_and_keeps_state_of_the_rest() {
        let b = StatusBoard::default();
        b.sync_targets(&[
            ("a".into(), "http://a".into(), None),
            ("b".into(), "http://b".into(), None),
        ]);
        b.update("a", |s| s.up = Some(true));
        b.sync_targets(&[("a".into(), "http://a2".into(), Some("m".into()))]);
        let snap = b.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].0, "a");
        assert_eq!(snap[0].1.url, "http://a2");
        assert_eq!(snap[0].1.up, Some(true));
        assert_eq!(snap[0].1.model.as_deref(), Some("m"));
    }
}
