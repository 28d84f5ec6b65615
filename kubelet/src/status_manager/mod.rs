//! The status manager (upstream `pkg/kubelet/status`): keeps the latest generated status of
//! each pod for `GET /pods` and, in API-server mode, pushes it to the API server
//! ([`api_sync`]). Generation itself is the pure [`generate`] module.

pub mod api_sync;
pub mod generate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::PodStatus as ApiPodStatus;
use tokio::sync::Notify;

pub use generate::{generate, phase, rejected, StartFailures, StatusInputs, CONTAINER_ID_PREFIX};

/// The latest status of each pod, shared with the HTTP server and the API sync.
#[derive(Debug, Clone, Default)]
pub struct StatusManager {
    inner: Arc<Mutex<HashMap<String, ApiPodStatus>>>,
    /// Woken when a status changed (the API sync waits on it).
    changed: Arc<Notify>,
}

impl StatusManager {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self, uid: &str, status: ApiPodStatus) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(uid) != Some(&status) {
            m.insert(uid.to_string(), status);
            self.changed.notify_one();
        }
    }

    pub fn get(&self, uid: &str) -> Option<ApiPodStatus> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
    }

    pub fn remove(&self, uid: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    /// Every pod's status, by UID.
    pub fn all(&self) -> Vec<(String, ApiPodStatus)> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Resolves when a status changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}
