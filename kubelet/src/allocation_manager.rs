//! In-place pod resize bookkeeping (upstream's `pkg/kubelet/allocation`): the resources each
//! container was admitted at (*allocated*) and the ones last applied to its running instance
//! (*actuated*). Both are checkpointed in the kubelet's root directory, as upstream's
//! `allocated_pods_state` and `actuated_pods_state`, so that a restarted kubelet neither
//! resizes nor restarts what already runs at the right size.
//!
//! A pod whose spec asks for other resources than allocated is a resize request: it is
//! allocated when the node has room (the sync then applies it), otherwise it stays pending,
//! `Infeasible` (more than the node has at all) or `Deferred` (more than is free now), and
//! the pod keeps running at its allocated size.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use serde::{Deserialize, Serialize};

use crate::pod_util::uid_of;
use crate::resources::{self, NodeAllocatable, Resources};

/// Upstream's checkpoint file names in the kubelet's root directory.
pub(crate) const ALLOCATED_STATE: &str = "allocated_pods_state";
pub(crate) const ACTUATED_STATE: &str = "actuated_pods_state";

/// Upstream's PodResizePending reasons.
pub(crate) const INFEASIBLE: &str = "Infeasible";
pub(crate) const DEFERRED: &str = "Deferred";

/// Container resources by pod UID and container name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    pods: BTreeMap<String, PodAllocation>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct PodAllocation {
    containers: BTreeMap<String, ResourceRequirements>,
    /// The pod's effective requests at this allocation (milli-CPU, bytes): what it holds
    /// of the node when other pods resize.
    #[serde(default)]
    cpu_request: i64,
    #[serde(default)]
    memory_request: i64,
}

/// A resize the node cannot take now (upstream's PodResizePending condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResizePending {
    /// `Infeasible` or `Deferred`.
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

/// What [`AllocationManager::allocate`] decided for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Allocation {
    /// The spec's resources are the allocated ones (nothing asked, or first seen).
    Current,
    /// A resize was admitted now: the spec's resources are allocated from here on.
    ResizeAdmitted,
    /// A resize waits; the pod runs at its allocated resources.
    ResizePending(ResizePending),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckpointError {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(crate) struct AllocationManager {
    node: NodeAllocatable,
    /// Where the checkpoints live (None: kept in memory only, as in unit tests).
    dir: Option<PathBuf>,
    allocated: Mutex<Checkpoint>,
    actuated: Mutex<Checkpoint>,
    pending: Mutex<HashMap<String, ResizePending>>,
    /// The last failed UpdateContainerResources of a pod (PodResizeInProgress's message).
    errors: Mutex<HashMap<String, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn load(dir: Option<&Path>, name: &str) -> Checkpoint {
    let Some(path) = dir.map(|d| d.join(name)) else {
        return Checkpoint::default();
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            // Upstream starts empty on a corrupt checkpoint too: every pod is then
            // allocated at its current spec.
            tracing::warn!(path = %path.display(), error = %e, "ignoring a corrupt resource checkpoint");
            Checkpoint::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Checkpoint::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read a resource checkpoint");
            Checkpoint::default()
        }
    }
}

/// The resources of the containers a resize may change: app containers and sidecars
/// (upstream's `IsResizableContainer`).
fn resizable(pod: &Pod) -> impl Iterator<Item = &Container> {
    crate::pod_util::app_containers(pod).iter().chain(
        crate::pod_util::init_containers(pod)
            .iter()
            .filter(|c| crate::pod_util::is_sidecar(c)),
    )
}

/// CPU and memory of a container's resources (requests default to limits); bad
/// quantities count as unset, as the API server refuses them before they get here.
pub(crate) fn cpu_memory(r: Option<&ResourceRequirements>) -> Resources {
    let c = Container {
        resources: r.cloned(),
        ..Default::default()
    };
    resources::container_resources(&c).unwrap_or_default()
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    crate::pod_util::app_containers(pod)
        .iter()
        .chain(crate::pod_util::init_containers(pod).iter())
}

fn pod_allocation(pod: &Pod) -> PodAllocation {
    let (cpu_request, memory_request) = resources::pod_requests(pod);
    PodAllocation {
        containers: all_containers(pod)
            .map(|c| (c.name.clone(), c.resources.clone().unwrap_or_default()))
            .collect(),
        cpu_request,
        memory_request,
    }
}

/// Whether every container of `pod` asks exactly the allocated resources.
fn runs_at(pod: &Pod, a: &PodAllocation) -> bool {
    all_containers(pod).all(|c| {
        let allocated = a.containers.get(&c.name);
        match &c.resources {
            Some(r) => allocated == Some(r),
            None => allocated == Some(&ResourceRequirements::default()),
        }
    })
}

/// `pod` with its containers' resources replaced by the allocated ones.
fn with_allocation(pod: &Pod, a: &PodAllocation) -> Pod {
    let mut out = pod.clone();
    if let Some(spec) = out.spec.as_mut() {
        let inits = spec.init_containers.iter_mut().flatten();
        for c in spec.containers.iter_mut().chain(inits) {
            if let Some(r) = a.containers.get(&c.name) {
                c.resources = Some(r.clone()).filter(|r| *r != ResourceRequirements::default());
            }
        }
    }
    out
}

/// A resize event's message as upstream words it: `<prefix>: ` and the JSON of each
/// container's resources, the pod's generation and the error, if any.
pub(crate) fn resize_message(pod: &Pod, prefix: &str, error: &str) -> String {
    let list = |cs: &[Container]| -> Vec<serde_json::Value> {
        cs.iter()
            .map(|c| serde_json::json!({"name": c.name, "resources": c.resources.clone().unwrap_or_default()}))
            .collect()
    };
    let mut summary = serde_json::Map::new();
    let inits = crate::pod_util::init_containers(pod);
    if !inits.is_empty() {
        summary.insert("initContainers".into(), list(inits).into());
    }
    summary.insert(
        "containers".into(),
        list(crate::pod_util::app_containers(pod)).into(),
    );
    summary.insert(
        "generation".into(),
        pod.metadata.generation.unwrap_or(0).into(),
    );
    if !error.is_empty() {
        summary.insert("error".into(), error.into());
    }
    format!("{prefix}: {}", serde_json::Value::Object(summary))
}

impl AllocationManager {
    /// Reads the checkpoints in `dir` (None: memory only).
    pub(crate) fn new(dir: Option<&Path>, node: NodeAllocatable) -> Self {
        AllocationManager {
            node,
            dir: dir.map(Path::to_path_buf),
            allocated: Mutex::new(load(dir, ALLOCATED_STATE)),
            actuated: Mutex::new(load(dir, ACTUATED_STATE)),
            pending: Mutex::new(HashMap::new()),
            errors: Mutex::new(HashMap::new()),
        }
    }

    fn save(&self, name: &str, state: &Checkpoint) {
        let Some(dir) = &self.dir else { return };
        let path = dir.join(name);
        let write = || -> Result<(), CheckpointError> {
            let tmp = dir.join(format!(".{name}.tmp"));
            let bytes = serde_json::to_vec(state).unwrap_or_default();
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|source| CheckpointError::Write {
                    path: path.clone(),
                    source,
                })
        };
        if let Err(e) = write() {
            // The state in memory stays right; a restart would allocate pods at their spec.
            tracing::warn!(error = %e, "cannot checkpoint pod resources");
        }
    }

    /// The pod as the kubelet runs it: with its allocated resources, after admitting a
    /// resize its spec asks for when the node has room (upstream's
    /// `handlePodResourcesResize` and `UpdatePodFromAllocation`). A pod seen for the first
    /// time (admission let it in) is allocated at its spec.
    pub(crate) fn allocate<'a>(&self, pod: &'a Pod) -> (Cow<'a, Pod>, Allocation) {
        let uid = uid_of(pod).to_string();
        let mut state = lock(&self.allocated);
        let Some(current) = state.pods.get(&uid) else {
            state.pods.insert(uid, pod_allocation(pod));
            self.save(ALLOCATED_STATE, &state);
            return (Cow::Borrowed(pod), Allocation::Current);
        };
        let asks = resizable(pod).any(|c| {
            current
                .containers
                .get(&c.name)
                .is_some_and(|a| cpu_memory(Some(a)) != cpu_memory(c.resources.as_ref()))
        });
        if !asks {
            lock(&self.pending).remove(&uid);
            if runs_at(pod, current) {
                return (Cow::Borrowed(pod), Allocation::Current);
            }
            // Only what a resize cannot change differs (another spelling of the same
            // quantities, a non-resizable container): run at the allocation.
            return (
                Cow::Owned(with_allocation(pod, current)),
                Allocation::Current,
            );
        }
        let (cpu, memory) = resources::pod_requests(pod);
        let (mut used_cpu, mut used_memory) = (0i64, 0i64);
        for (_, a) in state.pods.iter().filter(|(u, _)| **u != uid) {
            used_cpu = used_cpu.saturating_add(a.cpu_request);
            used_memory = used_memory.saturating_add(a.memory_request);
        }
        let pending = if cpu > self.node.cpu_milli {
            Some(ResizePending {
                reason: INFEASIBLE,
                message: format!(
                    "Node didn't have enough capacity: cpu, requested: {cpu}, capacity: {}",
                    self.node.cpu_milli
                ),
            })
        } else if memory > self.node.memory {
            Some(ResizePending {
                reason: INFEASIBLE,
                message: format!(
                    "Node didn't have enough capacity: memory, requested: {memory}, capacity: {}",
                    self.node.memory
                ),
            })
        } else if used_cpu.saturating_add(cpu) > self.node.cpu_milli {
            Some(ResizePending {
                reason: DEFERRED,
                message: format!(
                    "Node didn't have enough resource: cpu, requested: {cpu}, used: {used_cpu}, capacity: {}",
                    self.node.cpu_milli
                ),
            })
        } else if used_memory.saturating_add(memory) > self.node.memory {
            Some(ResizePending {
                reason: DEFERRED,
                message: format!(
                    "Node didn't have enough resource: memory, requested: {memory}, used: {used_memory}, capacity: {}",
                    self.node.memory
                ),
            })
        } else {
            None
        };
        match pending {
            Some(p) => {
                let allocated = Cow::Owned(with_allocation(pod, current));
                lock(&self.pending).insert(uid, p.clone());
                (allocated, Allocation::ResizePending(p))
            }
            None => {
                state.pods.insert(uid.clone(), pod_allocation(pod));
                self.save(ALLOCATED_STATE, &state);
                lock(&self.pending).remove(&uid);
                lock(&self.errors).remove(&uid);
                (Cow::Borrowed(pod), Allocation::ResizeAdmitted)
            }
        }
    }

    /// The pod with its allocated resources, deciding nothing (the QoS cgroups' sizes):
    /// the same `Arc` unless a resize is pending.
    pub(crate) fn allocated_pod(&self, pod: &Arc<Pod>) -> Arc<Pod> {
        match lock(&self.allocated).pods.get(uid_of(pod)) {
            Some(a) if !runs_at(pod, a) => Arc::new(with_allocation(pod, a)),
            _ => pod.clone(),
        }
    }

    /// Forgets every pod `keep` does not name (housekeeping: pods removed while the kubelet
    /// was down would otherwise hold resources in resize decisions forever).
    pub(crate) fn retain_pods(&self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = lock(&self.allocated)
            .pods
            .keys()
            .chain(lock(&self.actuated).pods.keys())
            .filter(|u| !keep(u))
            .cloned()
            .collect();
        for uid in gone {
            self.remove_pod(&uid);
        }
    }

    /// The resize of this pod that waits, if any.
    pub(crate) fn pending(&self, uid: &str) -> Option<ResizePending> {
        lock(&self.pending).get(uid).cloned()
    }

    /// Records what a container of a pod now runs with (started, or resized).
    pub(crate) fn set_actuated(
        &self,
        uid: &str,
        container: &str,
        r: Option<&ResourceRequirements>,
    ) {
        let mut state = lock(&self.actuated);
        let entry = state.pods.entry(uid.to_string()).or_default();
        let r = r.cloned().unwrap_or_default();
        if entry.containers.get(container) != Some(&r) {
            entry.containers.insert(container.to_string(), r);
            self.save(ACTUATED_STATE, &state);
        }
    }

    /// What the kubelet last applied to a container of a pod (None: not known, as for a
    /// container a kubelet without this record started).
    pub(crate) fn actuated(&self, uid: &str, container: &str) -> Option<ResourceRequirements> {
        lock(&self.actuated)
            .pods
            .get(uid)
            .and_then(|p| p.containers.get(container))
            .cloned()
    }

    /// A failed resize of the pod (None clears it).
    pub(crate) fn set_error(&self, uid: &str, message: Option<String>) {
        let mut errors = lock(&self.errors);
        match message {
            Some(m) => errors.insert(uid.to_string(), m),
            None => errors.remove(uid),
        };
    }

    pub(crate) fn error(&self, uid: &str) -> Option<String> {
        lock(&self.errors).get(uid).cloned()
    }

    /// Forgets a pod that is gone (its resources are free for others' resizes).
    pub(crate) fn remove_pod(&self, uid: &str) {
        for (state, name) in [
            (&self.allocated, ALLOCATED_STATE),
            (&self.actuated, ACTUATED_STATE),
        ] {
            let mut s = lock(state);
            if s.pods.remove(uid).is_some() {
                self.save(name, &s);
            }
        }
        lock(&self.pending).remove(uid);
        lock(&self.errors).remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, cpu: &str, memory: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": uid, "namespace": "default", "uid": uid},
            "spec": {"containers": [{
                "name": "c", "image": "busybox",
                "resources": {"requests": {"cpu": cpu, "memory": memory},
                              "limits": {"cpu": cpu, "memory": memory}}
            }]}
        }))
        .unwrap()
    }

    fn node() -> NodeAllocatable {
        NodeAllocatable {
            cpu_milli: 2000,
            memory: 4 << 30,
        }
    }

    fn cpu_of(p: &Pod) -> String {
        p.spec.as_ref().unwrap().containers[0]
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["cpu"]
            .0
            .clone()
    }

    #[test]
    fn a_resize_is_admitted_deferred_or_infeasible_as_the_node_allows() {
        let m = AllocationManager::new(None, node());
        assert_eq!(m.allocate(&pod("a", "500m", "1Gi")).1, Allocation::Current);
        assert_eq!(m.allocate(&pod("b", "1", "1Gi")).1, Allocation::Current);
        // a: 500m -> 1 fits (1 + 1 of 2 CPUs).
        let q = pod("a", "1", "1Gi");
        let (p, d) = m.allocate(&q);
        assert_eq!(d, Allocation::ResizeAdmitted);
        assert_eq!(cpu_of(&p), "1");
        assert_eq!(m.allocate(&pod("a", "1", "1Gi")).1, Allocation::Current);
        // a: 1 -> 1500m does not fit beside b now: deferred, runs at 1.
        let q = pod("a", "1500m", "1Gi");
        let (p, d) = m.allocate(&q);
        assert_eq!(
            d,
            Allocation::ResizePending(ResizePending {
                reason: DEFERRED,
                message: "Node didn't have enough resource: cpu, requested: 1500, used: 1000, capacity: 2000".into()
            })
        );
        assert_eq!(cpu_of(&p), "1");
        assert_eq!(m.pending("a").unwrap().reason, DEFERRED);
        // More than the node has: infeasible.
        let q = pod("a", "3", "1Gi");
        let (_, d) = m.allocate(&q);
        assert_eq!(
            d,
            Allocation::ResizePending(ResizePending {
                reason: INFEASIBLE,
                message: "Node didn't have enough capacity: cpu, requested: 3000, capacity: 2000"
                    .into()
            })
        );
        // b goes away: the deferred resize fits.
        m.remove_pod("b");
        let q = pod("a", "1500m", "1Gi");
        let (p, d) = m.allocate(&q);
        assert_eq!(d, Allocation::ResizeAdmitted);
        assert_eq!(cpu_of(&p), "1500m");
        assert!(m.pending("a").is_none());
    }

    #[test]
    fn allocations_and_actuations_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let m = AllocationManager::new(Some(dir.path()), node());
        m.allocate(&pod("a", "500m", "1Gi"));
        m.allocate(&pod("a", "1", "1Gi"));
        let r = pod("a", "1", "1Gi").spec.unwrap().containers[0]
            .resources
            .clone();
        m.set_actuated("a", "c", r.as_ref());
        let m2 = AllocationManager::new(Some(dir.path()), node());
        assert_eq!(m2.actuated("a", "c"), r);
        // The restarted kubelet sees no resize for the spec it already allocated.
        assert_eq!(m2.allocate(&pod("a", "1", "1Gi")).1, Allocation::Current);
        m2.remove_pod("a");
        let m3 = AllocationManager::new(Some(dir.path()), node());
        assert_eq!(m3.actuated("a", "c"), None);
        // A corrupt checkpoint is ignored: the pod is allocated at its spec again.
        std::fs::write(dir.path().join(ALLOCATED_STATE), b"{not json").unwrap();
        let m4 = AllocationManager::new(Some(dir.path()), node());
        assert_eq!(m4.allocate(&pod("a", "2", "1Gi")).1, Allocation::Current);
    }

    #[test]
    fn the_same_quantity_spelled_differently_is_no_resize() {
        let m = AllocationManager::new(None, node());
        m.allocate(&pod("a", "1", "1Gi"));
        let q = pod("a", "1000m", "1024Mi");
        let (p, d) = m.allocate(&q);
        assert_eq!(d, Allocation::Current);
        // The allocation's spelling stays what the kubelet runs.
        assert_eq!(cpu_of(&p), "1");
    }
}
