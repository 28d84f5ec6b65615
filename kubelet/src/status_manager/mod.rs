//! The status manager (upstream `pkg/kubelet/status`): keeps the latest generated status of
//! each pod for `GET /pods` and, in API-server mode, pushes it to the API server
//! ([`api_sync`]). Generation itself is the pure [`generate`] module.

pub(crate) mod api_sync;
pub(crate) mod generate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::PodStatus as ApiPodStatus;
use tokio::sync::Notify;

pub(crate) use generate::{generate, rejected, StartFailures, StatusInputs};

/// The latest status of each pod, shared with the HTTP server and the API sync.
#[derive(Debug, Clone, Default)]
pub(crate) struct StatusManager {
    inner: Arc<Mutex<HashMap<String, ApiPodStatus>>>,
    /// Woken when a status changed (the API sync waits on it).
    changed: Arc<Notify>,
}

impl StatusManager {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn set(&self, uid: &str, status: ApiPodStatus) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if m.get(uid) != Some(&status) {
            m.insert(uid.to_string(), status);
            self.changed.notify_one();
        }
    }

    pub(crate) fn get(&self, uid: &str) -> Option<ApiPodStatus> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
    }

    pub(crate) fn remove(&self, uid: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    /// Every pod's status, by UID.
    pub(crate) fn all(&self) -> Vec<(String, ApiPodStatus)> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Resolves when a status changed since the last call.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await
    }
}
