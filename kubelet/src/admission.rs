//! Pod admission (upstream's predicate admit handler, for what this node knows): maxPods,
//! the sum of requests against node allocatable, sysctls and AppArmor.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::Pod;

use crate::events::EventRecorder;
use crate::pod_manager::PodManager;
use crate::pod_util::uid_of;
use crate::resources::{self, NodeAllocatable};
use crate::status_manager::StatusManager;

/// Pod admission (upstream's predicate admit handler, for what a standalone node knows):
/// maxPods, and the sum of requests against node allocatable.
pub(crate) struct Admission {
    pub(crate) max_pods: u32,
    pub(crate) node: NodeAllocatable,
    /// The sysctls pods may set (safe set + allowedUnsafeSysctls).
    pub(crate) sysctls: crate::security::sysctl::Allowlist,
    /// Whether the host enforces AppArmor.
    pub(crate) apparmor_enabled: bool,
    /// Pods that were rejected: kept (Failed) in the pod manager, never run.
    pub(crate) rejected: HashSet<String>,
    pub(crate) status: StatusManager,
    pub(crate) events: EventRecorder,
}

impl Admission {
    /// Ok, or (reason, message) as upstream words them.
    pub(crate) fn admit(&self, pod: &Pod, pods: &PodManager) -> Result<(), (String, String)> {
        self.sysctls.admit(pod)?;
        self.admit_resources(pod, pods)?;
        crate::security::apparmor::admit(pod, self.apparmor_enabled)
    }

    /// maxPods and requests against allocatable (upstream's predicate admit handler).
    pub(crate) fn admit_resources(
        &self,
        pod: &Pod,
        pods: &PodManager,
    ) -> Result<(), (String, String)> {
        let admitted: Vec<_> = pods
            .all()
            .into_iter()
            .filter(|p| !self.rejected.contains(uid_of(p)))
            .collect();
        let (cpu, mem) = resources::pod_requests(pod);
        let (mut used_cpu, mut used_mem) = (0i64, 0i64);
        for p in &admitted {
            let (c, m) = resources::pod_requests(p);
            used_cpu = used_cpu.saturating_add(c);
            used_mem = used_mem.saturating_add(m);
        }
        if cpu > 0 && used_cpu.saturating_add(cpu) > self.node.cpu_milli {
            return Err((
                "OutOfcpu".into(),
                format!(
                    "Node didn't have enough resource: cpu, requested: {cpu}, used: {used_cpu}, capacity: {}",
                    self.node.cpu_milli
                ),
            ));
        }
        if mem > 0 && used_mem.saturating_add(mem) > self.node.memory {
            return Err((
                "OutOfmemory".into(),
                format!(
                    "Node didn't have enough resource: memory, requested: {mem}, used: {used_mem}, capacity: {}",
                    self.node.memory
                ),
            ));
        }
        // Pod count last: a pod that can never fit is reported by the resource it lacks,
        // whatever order the pods of a manifest directory arrive in.
        if admitted.len() >= self.max_pods as usize {
            return Err((
                "OutOfpods".into(),
                format!(
                    "Node didn't have enough resource: pods, requested: 1, used: {}, capacity: {}",
                    admitted.len(),
                    self.max_pods
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{load_manifest, Source};

    fn pod(name: &str, requests: &str) -> Pod {
        let text = format!(
            "kind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: i:1\n    resources: {{requests: {requests}}}\n"
        );
        load_manifest(&text, Source::File, &format!("/m/{name}"), "n")
            .0
            .remove(0)
    }

    #[test]
    fn admission_as_upstream() {
        let pods = PodManager::default();
        let a = Admission {
            max_pods: 2,
            node: NodeAllocatable {
                cpu_milli: 2000,
                memory: 1 << 30,
            },
            sysctls: crate::security::sysctl::Allowlist::safe(),
            apparmor_enabled: false,
            rejected: HashSet::new(),
            status: StatusManager::new(),
            events: EventRecorder::none(),
        };
        pods.set(pod("a", "{cpu: 1500m, memory: 512Mi}"));
        let (reason, msg) = a.admit(&pod("b", "{cpu: 600m}"), &pods).unwrap_err();
        assert_eq!(reason, "OutOfcpu");
        assert_eq!(
            msg,
            "Node didn't have enough resource: cpu, requested: 600, used: 1500, capacity: 2000"
        );
        let (reason, _) = a.admit(&pod("c", "{memory: 600Mi}"), &pods).unwrap_err();
        assert_eq!(reason, "OutOfmemory");
        assert!(a
            .admit(&pod("d", "{cpu: 500m, memory: 512Mi}"), &pods)
            .is_ok());
        pods.set(pod("d", "{}"));
        let (reason, _) = a.admit(&pod("e", "{}"), &pods).unwrap_err();
        assert_eq!(reason, "OutOfpods");
    }
}
