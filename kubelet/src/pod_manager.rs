//! The pod manager (upstream `pkg/kubelet/pod`): the desired pods by UID, whatever source
//! they came from, shared by the sync loop, the HTTP server and the status sync.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;

use crate::pod_util::uid_of;

/// The desired pods by UID (upstream's pod manager), shared with the HTTP server.
#[derive(Debug, Clone, Default)]
pub(crate) struct PodManager {
    inner: Arc<RwLock<HashMap<String, Arc<Pod>>>>,
}

impl PodManager {
    pub(crate) fn get(&self, uid: &str) -> Option<Arc<Pod>> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
    }
    pub(crate) fn set(&self, pod: Pod) -> Arc<Pod> {
        let pod = Arc::new(pod);
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid_of(&pod).to_string(), pod.clone());
        pod
    }
    pub(crate) fn remove(&self, uid: &str) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }
    pub(crate) fn contains(&self, uid: &str) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(uid)
    }
    /// All pods, sorted by namespace/name.
    pub(crate) fn all(&self) -> Vec<Arc<Pod>> {
        let mut v: Vec<_> = self
            .inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|p| crate::pod_util::full_name(p));
        v
    }
}
