//! The bound on the `model` label: the upstream's own `/v1/models` list.
//!
//! The tap reads the list at start and every `tap.models_refresh`. A request naming a model in
//! the list is labelled with it; any other name (a typo, an unknown model that vLLM answers
//! with 404, a request before the first successful read) is labelled `other`. So the label
//! has at most [`MAX_MODELS`] + 1 values, whatever clients send. The list's `max_model_len` is
//! the fallback limit of the context-length ratio.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;

use super::measure::OTHER_MODEL;

/// The most model names kept from one list (base models and LoRA adapters together).
pub const MAX_MODELS: usize = 64;

/// A model the upstream serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub id: String,
    pub max_model_len: Option<u32>,
}

/// The current list; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct ModelSet(Arc<RwLock<Vec<ModelInfo>>>);

impl ModelSet {
    /// A set with a fixed list (tests).
    pub fn with(models: Vec<ModelInfo>) -> Self {
        let s = Self::default();
        s.replace(models);
        s
    }

    /// Replaces the list (keeping at most [`MAX_MODELS`]).
    pub fn replace(&self, mut models: Vec<ModelInfo>) {
        models.truncate(MAX_MODELS);
        if let Ok(mut g) = self.0.write() {
            *g = models;
        }
    }

    /// Number of models known.
    pub fn len(&self) -> usize {
        self.0.read().map(|g| g.len()).unwrap_or(0)
    }

    /// True before the first successful read (or when the upstream lists none).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The label value for a requested model name.
    pub fn label(&self, requested: Option<&str>) -> String {
        let Some(name) = requested else {
            return OTHER_MODEL.to_string();
        };
        match self.0.read() {
            Ok(g) if g.iter().any(|m| m.id == name) => name.to_string(),
            _ => OTHER_MODEL.to_string(),
        }
    }

    /// The advertised context length of a listed model.
    pub fn max_model_len(&self, name: &str) -> Option<u32> {
        self.0
            .read()
            .ok()?
            .iter()
            .find(|m| m.id == name)
            .and_then(|m| m.max_model_len)
    }
}

#[derive(Deserialize)]
struct List {
    data: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    id: String,
    #[serde(default)]
    max_model_len: Option<u32>,
}

/// Parses a `/v1/models` body.
pub fn parse_models(body: &[u8]) -> Option<Vec<ModelInfo>> {
    let l: List = serde_json::from_slice(body).ok()?;
    Some(
        l.data
            .into_iter()
            .map(|e| ModelInfo {
                id: e.id,
                max_model_len: e.max_model_len,
            })
            .collect(),
    )
}

/// How long to wait before the next read: `refresh` after a success, a shorter retry (at most
/// `refresh`) while no list has been read yet.
pub fn next_delay(refresh: Duration, known: bool) -> Duration {
    if known {
        refresh
    } else {
        refresh.min(Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_is_bounded_by_the_list() {
        let s = ModelSet::default();
        assert_eq!(s.label(Some("tiny")), "other");
        s.replace(vec![ModelInfo {
            id: "tiny".into(),
            max_model_len: Some(2048),
        }]);
        assert_eq!(s.label(Some("tiny")), "tiny");
        assert_eq!(s.label(Some("Tiny")), "other");
        assert_eq!(s.label(None), "other");
        assert_eq!(s.max_model_len("tiny"), Some(2048));
        let many: Vec<_> = (0..100)
            .map(|i| ModelInfo {
                id: format!("m{i}"),
                max_model_len: None,
            })
            .collect();
        s.replace(many);
        assert_eq!(s.len(), MAX_MODELS);
    }

    #[test]
    fn parses_the_real_vllm_list() {
        let body = include_bytes!("../../tests/data/vllm-0.32.0-cpu/v1_models.body");
        let l = parse_models(body).unwrap();
        assert_eq!(
            l,
            vec![ModelInfo {
                id: "tiny".into(),
                max_model_len: Some(2048)
            }]
        );
    }
}
