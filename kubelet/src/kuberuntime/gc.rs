//! Container garbage collection (upstream `kuberuntime_gc.go`), run on each sync.

use std::collections::HashMap;

use super::*;
use crate::container::{ContainerState, PodStatus};

impl RuntimeManager {
    /// Removes exited containers beyond the newest `maxPerPodContainer` exited ones per
    /// name (upstream's container GC, run on each sync), so restarts do not pile up.
    pub(super) async fn remove_old_containers(&self, status: &PodStatus) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for c in &status.containers {
            if c.state != ContainerState::Exited {
                continue;
            }
            let n = seen.entry(c.name.as_str()).or_default();
            *n += 1;
            if *n > self.max_per_pod_container as usize {
                if let Err(e) = self.cri.remove_container(&c.id).await {
                    tracing::warn!(container = %c.name, id = %c.id, error = %e, "cannot remove old container");
                }
                lock(&self.container_cache).remove(&c.id);
            }
        }
    }
}
