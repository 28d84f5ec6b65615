//! The QoS cgroups (upstream `cm/qos_container_manager_linux.go`, with the pods' share of
//! `cm/node_container_manager_linux.go`): under `cgroupRoot`, `kubepods` gets the CPU shares
//! and memory limit of node allocatable (capacity minus kubeReserved and systemReserved, as
//! upstream enforces `enforceNodeAllocatable: [pods]`; hard eviction thresholds are not taken
//! off), `kubepods/besteffort` the minimum 2 shares and `kubepods/burstable` the shares of
//! its pods' CPU requests summed. The sync loop updates them on its housekeeping tick,
//! writing only what changed since the last write.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::resources::{
    ensure_pod_cgroup, milli_cpu_to_shares, pod_qos, pod_requests, NodeAllocatable,
    PodCgroupConfig, QosClass, MIN_SHARES,
};

/// What the three QoS cgroups are set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QosCgroups {
    pub(crate) kubepods: PodCgroupConfig,
    pub(crate) burstable: PodCgroupConfig,
    pub(crate) besteffort: PodCgroupConfig,
}

/// Shares and an optional memory limit; no CPU quota (as upstream's QoS cgroups).
fn config(cpu_shares: i64, memory_limit: Option<i64>) -> PodCgroupConfig {
    PodCgroupConfig {
        cpu_shares,
        cpu_quota: -1,
        cpu_period: crate::resources::QUOTA_PERIOD,
        memory_limit,
    }
}

/// The QoS cgroups for node allocatable `node` and the pods the node runs.
pub(crate) fn qos_cgroups(node: NodeAllocatable, pods: &[Arc<Pod>]) -> QosCgroups {
    let burstable_milli: i64 = pods
        .iter()
        .filter(|p| pod_qos(p) == QosClass::Burstable)
        .map(|p| pod_requests(p).0)
        .fold(0i64, i64::saturating_add);
    QosCgroups {
        kubepods: config(
            milli_cpu_to_shares(node.cpu_milli),
            (node.memory > 0 && node.memory < i64::MAX).then_some(node.memory),
        ),
        burstable: config(milli_cpu_to_shares(burstable_milli), None),
        besteffort: config(MIN_SHARES, None),
    }
}

/// Keeps the QoS cgroups of one `cgroupRoot` as [`qos_cgroups`] computes them.
pub(crate) struct QosContainerManager {
    cgroup_root: String,
    node: NodeAllocatable,
    last: Option<QosCgroups>,
}

impl QosContainerManager {
    pub(crate) fn new(cgroup_root: &str, node: NodeAllocatable) -> Self {
        QosContainerManager {
            cgroup_root: cgroup_root.trim_end_matches('/').to_string(),
            node,
            last: None,
        }
    }

    /// Writes the QoS cgroups for `pods` when they differ from the last write. A failure
    /// is logged and tried again on the next call.
    pub(crate) fn update(&mut self, pods: &[Arc<Pod>]) {
        let want = qos_cgroups(self.node, pods);
        if self.last == Some(want) {
            return;
        }
        let path = |parts: &[&str]| crate::cgroup_manager::cgroup_path(&self.cgroup_root, parts);
        let result = ensure_pod_cgroup(&path(&["kubepods"]), &want.kubepods)
            .and_then(|()| ensure_pod_cgroup(&path(&["kubepods", "burstable"]), &want.burstable))
            .and_then(|()| ensure_pod_cgroup(&path(&["kubepods", "besteffort"]), &want.besteffort));
        match result {
            Ok(()) => {
                tracing::debug!(?want, "QoS cgroups updated");
                self.last = Some(want);
            }
            Err(e) => tracing::warn!(error = %e, "cannot update the QoS cgroups"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{load_manifest, Source};

    fn pod(name: &str, resources: &str) -> Arc<Pod> {
        let text = format!(
            "kind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: i:1\n    resources: {resources}\n"
        );
        Arc::new(
            load_manifest(&text, Source::File, &format!("/m/{name}"), "n")
                .0
                .remove(0),
        )
    }

    #[test]
    fn qos_cgroups_as_upstream_sizes_them() {
        let node = NodeAllocatable {
            cpu_milli: 3500,
            memory: 6 << 30,
        };
        let pods = [
            pod("b1", "{requests: {cpu: 250m}}"),
            pod(
                "b2",
                "{requests: {cpu: 500m, memory: 64Mi}, limits: {memory: 128Mi}}",
            ),
            pod(
                "g",
                "{requests: {cpu: 1, memory: 1Gi}, limits: {cpu: 1, memory: 1Gi}}",
            ),
            pod("e", "{}"),
        ];
        let q = qos_cgroups(node, &pods);
        // 3.5 CPUs: 3584 shares; the memory limit is allocatable.
        assert_eq!(q.kubepods.cpu_shares, 3584);
        assert_eq!(q.kubepods.memory_limit, Some(6 << 30));
        assert_eq!(q.kubepods.cpu_quota, -1);
        // Burstable: 750m of requests (the Guaranteed and BestEffort pods do not count).
        assert_eq!(q.burstable.cpu_shares, 768);
        assert_eq!(q.burstable.memory_limit, None);
        assert_eq!(q.besteffort.cpu_shares, 2);
        // No burstable pod: the minimum.
        assert_eq!(qos_cgroups(node, &pods[2..]).burstable.cpu_shares, 2);
    }
}
