//! The runtime manager (upstream `kuberuntime`): reads a pod's state from CRI
//! ([`RuntimeManager::get_pod_status`]), applies the actions [`actions::compute_pod_actions`]
//! decides ([`RuntimeManager::apply_pod_actions`]: sandbox, image pulls per `imagePullPolicy`,
//! containers with upstream labels and annotations) and tears pods down
//! ([`RuntimeManager::kill_pod`], [`RuntimeManager::remove_pod`]).

pub(crate) mod actions;
pub(crate) mod container;
mod container_lifecycle;
pub(crate) mod cri;
mod gc;
pub(crate) mod handlers;
mod hooks;
mod image;
pub(crate) mod labels;
mod pod_status;
pub(crate) mod sandbox;

#[cfg(test)]
pub(crate) mod manager_tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use nodus_proto::runtime::v1 as api;

use crate::backoff::Backoff;
use crate::container::{ContainerState, ContainerStatus, PodStatus, SandboxState};
use crate::pod_util::{app_containers, init_containers};
use actions::PodActions;
use cri::{Cri, CriError};
pub(crate) use hooks::run_lifecycle_handler;
use hooks::run_pre_stop;
use sandbox::NodePaths;

/// Upstream's minimum grace period when stopping containers.
pub(crate) const MIN_GRACE_SECS: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    #[error(transparent)]
    Cri(#[from] CriError),
    #[error("image {image:?} is not present and imagePullPolicy is Never (ErrImageNeverPull)")]
    ImageNeverPull { image: String },
    #[error("pulling image {image:?} (ErrImagePull): {source}")]
    ImagePull { image: String, source: CriError },
    #[error("Back-off pulling image {image:?}")]
    ImagePullBackOff { image: String },
    #[error("preparing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating container (CreateContainerError): {0}")]
    CreateContainer(CriError),
    #[error("starting container (RunContainerError): {0}")]
    StartContainer(CriError),
    #[error("{0}")]
    Config(String),
    /// The pod's host name cannot be made (bad hostname/subdomain/setHostnameAsFQDN).
    #[error(transparent)]
    Dns(#[from] crate::network::dns::DnsError),
    #[error("postStart hook failed: {0}")]
    PostStartHook(String),
    #[error("pod cgroup: {0}")]
    Cgroup(#[from] crate::resources::CgroupError),
    /// The sandbox cannot be made (its user namespace, or RunPodSandbox failed).
    #[error("Failed to create pod sandbox: {0}")]
    CreateSandbox(String),
}

impl SyncError {
    /// The waiting reason upstream shows for a container that failed this way.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            SyncError::ImageNeverPull { .. } => "ErrImageNeverPull",
            SyncError::ImagePull { .. } => "ErrImagePull",
            SyncError::ImagePullBackOff { .. } => "ImagePullBackOff",
            SyncError::Io { .. } | SyncError::Config(_) | SyncError::Dns(_) => {
                "CreateContainerConfigError"
            }
            SyncError::Cgroup(_) => "CreateContainerError",
            SyncError::CreateSandbox(_) => "CreatePodSandboxError",
            SyncError::PostStartHook(_) => "PostStartHookError",
            SyncError::CreateContainer(_) => "CreateContainerError",
            SyncError::StartContainer(_) | SyncError::Cri(_) => "RunContainerError",
        }
    }
}

/// The outcome of starting each container a sync tried to start.
pub(crate) type StartResults = Vec<(String, Result<(), SyncError>)>;

/// The runtime manager. Cheap to share behind an `Arc`.
pub(crate) struct RuntimeManager {
    cri: Cri,
    paths: NodePaths,
    root_dir: PathBuf,
    resolv_conf: PathBuf,
    /// IPs of sandboxes (they never change for a given sandbox).
    sandbox_ips: Mutex<HashMap<String, Vec<String>>>,
    /// Container statuses by ID; refreshed when the listed state differs.
    container_cache: Mutex<HashMap<String, ContainerStatus>>,
    /// The node's allocatable resources (resource references, oom_score_adj).
    pub(crate) node: crate::resources::NodeAllocatable,
    pub(crate) node_name: String,
    /// The node's IPs, the primary first.
    pub(crate) node_ips: Vec<String>,
    /// Dead containers kept per container name (maxPerPodContainer).
    pub(crate) max_per_pod_container: u32,
    /// Pulled, Created, Started, Killing, Failed events.
    pub(crate) events: crate::events::EventRecorder,
    /// Create and remove pod cgroups (unit tests on the fake runtime turn this off).
    pub(crate) pod_cgroups: bool,
    /// Host ID blocks of pods with `hostUsers: false`; the kubelet sets it from its
    /// configuration (None: such pods are refused).
    pub(crate) userns: Option<crate::userns_manager::UsernsManager>,
    /// Failed image pulls by `<pod uid>_<image>` (upstream's image back-off: 10 s doubling
    /// to 300 s).
    image_backoff: Mutex<Backoff>,
    /// The ImageStatus calls in flight, by image: pods asking for the same image at once
    /// share one answer (nothing is kept once it is answered).
    image_lookups: Mutex<HashMap<String, image::ImageLookup>>,
    /// Allocated and actuated resources (in-place resize); the kubelet sets one that
    /// checkpoints in its root directory.
    pub(crate) allocation: Arc<crate::allocation_manager::AllocationManager>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn uid_selector(uid: &str) -> HashMap<String, String> {
    HashMap::from([(labels::POD_UID_LABEL.to_string(), uid.to_string())])
}

fn container_state(s: i32) -> ContainerState {
    match api::ContainerState::try_from(s) {
        Ok(api::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(api::ContainerState::ContainerRunning) => ContainerState::Running,
        Ok(api::ContainerState::ContainerExited) => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

fn sandbox_state(s: i32) -> SandboxState {
    if s == api::PodSandboxState::SandboxReady as i32 {
        SandboxState::Ready
    } else {
        SandboxState::NotReady
    }
}

/// Upstream reports a host-network pod's IPs as the node's: probes, hooks and
/// `status.podIP` then reach the node address.
pub(crate) fn with_host_network_ips(
    pod: &Pod,
    ips: Vec<String>,
    node_ips: &[String],
) -> Vec<String> {
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    if ips.is_empty() && host_network {
        node_ips.to_vec()
    } else {
        ips
    }
}

/// The pod's IPs from its runtime status (the newest sandbox's), or the node's for a
/// host-network pod.
pub(crate) fn status_pod_ips(
    pod: &Pod,
    runtime: &crate::container::PodStatus,
    node_ips: &[String],
) -> Vec<String> {
    let ips = runtime
        .sandboxes
        .first()
        .map(|s| s.ips.clone())
        .unwrap_or_default();
    with_host_network_ips(pod, ips, node_ips)
}

pub(crate) fn pod_grace(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(MIN_GRACE_SECS)
}

impl RuntimeManager {
    pub(crate) fn new(cri: Cri, paths: NodePaths, root_dir: PathBuf, resolv_conf: PathBuf) -> Self {
        RuntimeManager {
            cri,
            paths,
            root_dir,
            resolv_conf,
            sandbox_ips: Mutex::new(HashMap::new()),
            container_cache: Mutex::new(HashMap::new()),
            node: crate::resources::NodeAllocatable::detect(),
            node_name: String::new(),
            node_ips: Vec::new(),
            max_per_pod_container: 1,
            events: crate::events::EventRecorder::none(),
            pod_cgroups: true,
            image_backoff: Mutex::new(Backoff::new()),
            image_lookups: Mutex::new(HashMap::new()),
            userns: None,
            allocation: Arc::new(crate::allocation_manager::AllocationManager::new(
                None,
                crate::resources::NodeAllocatable::detect(),
            )),
        }
    }

    /// Upstream's FailedCreatePodSandBox event (`message` starts "Failed to create pod
    /// sandbox: ").
    fn sandbox_failed(&self, pod: &Pod, message: String) {
        self.events.pod_event(
            pod,
            None,
            crate::events::WARNING,
            "FailedCreatePodSandBox",
            message,
        );
    }

    /// The pod's CRI user namespace option: NODE, or its own block of IDs when it has
    /// `hostUsers: false` and the runtime handler supports user namespaces.
    async fn pod_user_namespace(
        &self,
        pod: &Pod,
        handler: &str,
    ) -> Result<api::UserNamespace, SyncError> {
        let Some(m) = &self.userns else {
            if pod.spec.as_ref().and_then(|s| s.host_users) == Some(false) {
                return Err(SyncError::CreateSandbox(
                    "user namespaces are not configured on this node".into(),
                ));
            }
            return Ok(api::UserNamespace {
                mode: api::NamespaceMode::Node as i32,
                ..Default::default()
            });
        };
        let supported = if pod.spec.as_ref().and_then(|s| s.host_users) == Some(false) {
            match self.cri.runtime_features().await {
                Ok(f) => f
                    .handlers
                    .iter()
                    .find(|h| h.name == handler)
                    .map(|h| h.features.is_some_and(|f| f.user_namespaces))
                    .ok_or_else(|| format!("the handler {handler:?} is not known")),
                Err(e) => Err(format!("runtime handlers are not set: {e}")),
            }
        } else {
            Ok(false)
        };
        m.get_or_create(pod, handler, supported)
            .map_err(|e| SyncError::CreateSandbox(e.to_string()))
    }

    /// The pod's IPs: its sandbox's, or the node's for a host-network pod.
    async fn pod_ips(&self, pod: Option<&Pod>, sandbox_id: &str) -> Vec<String> {
        let ips = self.sandbox_pod_ips(sandbox_id).await;
        match pod {
            Some(pod) => with_host_network_ips(pod, ips, &self.node_ips),
            None => ips,
        }
    }

    /// The IPs of a sandbox (cached; asked from the runtime once).
    async fn sandbox_pod_ips(&self, id: &str) -> Vec<String> {
        if let Some(ips) = lock(&self.sandbox_ips).get(id).cloned() {
            return ips;
        }
        match self.cri.pod_sandbox_status(id).await {
            Ok(st) => {
                let net = st.network.unwrap_or_default();
                let mut ips = Vec::new();
                if !net.ip.is_empty() {
                    ips.push(net.ip);
                }
                ips.extend(net.additional_ips.into_iter().map(|p| p.ip));
                lock(&self.sandbox_ips).insert(id.to_string(), ips.clone());
                ips
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "cannot read sandbox IPs");
                Vec::new()
            }
        }
    }
    /// Applies `actions` to `pod` whose runtime state is `status`.
    pub(crate) async fn apply_pod_actions(
        &self,
        pod: &Pod,
        status: &PodStatus,
        actions: &PodActions,
        backoff: &Mutex<Backoff>,
        objects: &crate::objects::PodObjects,
    ) -> Result<StartResults, SyncError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if actions.kill_pod {
            tracing::info!(pod = %crate::pod_util::full_name(pod), %uid, "stopping pod sandbox and containers");
            self.kill_pod(&uid, Some(pod), None).await?;
        }
        let resolv = self.node_resolv_conf();
        let mut sandbox_config =
            sandbox::sandbox_config(pod, actions.attempt, &self.paths, &resolv)?;
        let handler = pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.clone())
            .unwrap_or_default();
        let userns = match self.pod_user_namespace(pod, &handler).await {
            Ok(u) => u,
            Err(e) => {
                self.sandbox_failed(pod, e.to_string());
                return Err(e);
            }
        };
        if let Some(ns) = sandbox_config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
        {
            ns.userns_options = Some(userns);
        }
        let sandbox_id = if actions.create_sandbox {
            let log_dir = PathBuf::from(&sandbox_config.log_directory);
            mkdir(&log_dir)?;
            if let Some(linux) = sandbox_config.linux.as_ref().filter(|_| self.pod_cgroups) {
                crate::resources::ensure_pod_cgroup(
                    &linux.cgroup_parent,
                    &crate::resources::pod_cgroup_config(pod),
                )?;
            }
            let id = match self
                .cri
                .run_pod_sandbox(sandbox_config.clone(), handler)
                .await
            {
                Ok(id) => id,
                Err(e) => {
                    self.sandbox_failed(pod, format!("Failed to create pod sandbox: {e}"));
                    return Err(e.into());
                }
            };
            tracing::info!(pod = %crate::pod_util::full_name(pod), %uid, sandbox = %id, attempt = actions.attempt, "sandbox started");
            id
        } else {
            match &actions.sandbox_id {
                Some(id) => id.clone(),
                None => return Ok(Vec::new()),
            }
        };
        // After a pod kill every container is stopped already (preStop ran once).
        for k in actions
            .containers_to_kill
            .iter()
            .filter(|_| !actions.kill_pod)
        {
            tracing::info!(pod = %crate::pod_util::full_name(pod), container = %k.name, reason = %k.reason, "stopping container");
            let grace = k
                .grace
                .unwrap_or_else(|| pod_grace(pod))
                .max(MIN_GRACE_SECS);
            self.stop_container(
                Some(pod),
                &k.name,
                &k.id,
                &sandbox_id,
                grace,
                Some(&k.reason),
            )
            .await?;
        }
        if !actions.containers_to_update.is_empty() {
            self.resize_containers(pod, actions, &sandbox_config)
                .await?;
        }
        let mut results = StartResults::new();
        // The next init container, then sidecars to start again, one after the other.
        let inits = actions
            .next_init_container
            .iter()
            .chain(&actions.sidecars_to_start);
        for &i in inits {
            let c = &init_containers(pod)[i];
            let r = self
                .start_container(
                    pod,
                    c,
                    true,
                    None,
                    &sandbox_id,
                    &sandbox_config,
                    status,
                    backoff,
                    objects,
                )
                .await;
            results.push((c.name.clone(), r));
        }
        let ephemeral = crate::pod_util::ephemeral_containers(pod);
        for &i in &actions.ephemeral_to_start {
            let Some((c, target)) = ephemeral.get(i) else {
                continue;
            };
            let target_id = target
                .as_deref()
                .and_then(|t| status.find_container(t))
                .filter(|t| t.state == ContainerState::Running)
                .map(|t| t.id.clone());
            let r = self
                .start_container(
                    pod,
                    c,
                    false,
                    target_id.as_deref(),
                    &sandbox_id,
                    &sandbox_config,
                    status,
                    backoff,
                    objects,
                )
                .await;
            results.push((c.name.clone(), r));
        }
        let (sandbox_id, sandbox_config) = (&sandbox_id, &sandbox_config);
        let starts = actions.containers_to_start.iter().map(|&i| {
            let c = &app_containers(pod)[i];
            async move {
                let r = self
                    .start_container(
                        pod,
                        c,
                        false,
                        None,
                        sandbox_id,
                        sandbox_config,
                        status,
                        backoff,
                        objects,
                    )
                    .await;
                (c.name.clone(), r)
            }
        });
        results.extend(join_all(starts).await);
        for (name, r) in &results {
            if let Err(e) = r {
                tracing::warn!(pod = %crate::pod_util::full_name(pod), container = %name, reason = e.reason(), error = %e, "cannot start container");
                self.events.pod_event(
                    pod,
                    Some(name),
                    crate::events::WARNING,
                    "Failed",
                    format!("Error: {}", e.reason()),
                );
            }
        }
        self.remove_old_containers(status).await;
        Ok(results)
    }

    /// Resizes running containers in place (upstream's `doPodResizeAction`): the pod
    /// cgroup first grows to hold both the old and the new sizes, then each container gets
    /// UpdateContainerResources, then the pod cgroup takes its new size. What each container
    /// now runs with is recorded as actuated; a failure is reported and tried again by the
    /// next sync.
    async fn resize_containers(
        &self,
        pod: &Pod,
        actions: &PodActions,
        sandbox_config: &api::PodSandboxConfig,
    ) -> Result<(), SyncError> {
        let uid = crate::pod_util::uid_of(pod);
        let apps = app_containers(pod);
        let mut before = pod.clone();
        if let Some(spec) = before.spec.as_mut() {
            for u in &actions.containers_to_update {
                spec.containers[u.index].resources =
                    self.allocation.actuated(uid, &apps[u.index].name);
            }
        }
        let cgroup = sandbox_config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .filter(|_| self.pod_cgroups);
        let new_cfg = crate::resources::pod_cgroup_config(pod);
        if let Some(cg) = &cgroup {
            let both = crate::resources::pod_cgroup_config(&before).max(&new_cfg);
            crate::resources::ensure_pod_cgroup(cg, &both)?;
        }
        let mut failed = None;
        for u in &actions.containers_to_update {
            let c = &apps[u.index];
            let res = crate::resources::linux_container_resources(pod, c, &self.node)
                .map_err(|e| SyncError::Config(e.to_string()))?;
            tracing::info!(pod = %crate::pod_util::full_name(pod), container = %c.name, cpu_shares = res.cpu_shares, cpu_quota = res.cpu_quota, memory_limit = res.memory_limit_in_bytes, "resizing container in place");
            match self.cri.update_container_resources(&u.id, res).await {
                Ok(()) => self
                    .allocation
                    .set_actuated(uid, &c.name, c.resources.as_ref()),
                Err(e) => failed = Some((c.name.clone(), e)),
            }
        }
        if let Some((name, e)) = failed {
            let message = format!("Failed to resize container {name}: {e}");
            self.allocation.set_error(uid, Some(message.clone()));
            self.events.pod_event(
                pod,
                None,
                crate::events::WARNING,
                "ResizeError",
                crate::allocation_manager::resize_message(pod, "Pod resize error", &message),
            );
            return Err(e.into());
        }
        if let Some(cg) = &cgroup {
            crate::resources::ensure_pod_cgroup(cg, &new_cfg)?;
        }
        self.allocation.set_error(uid, None);
        self.events.pod_event(
            pod,
            None,
            crate::events::NORMAL,
            "ResizeCompleted",
            crate::allocation_manager::resize_message(pod, "Pod resize completed", ""),
        );
        Ok(())
    }

    /// Stops every running container of the pod with its grace period, then its sandboxes.
    /// `pod` gives the grace period; without it the containers' annotations do.
    pub(crate) async fn kill_pod(
        &self,
        uid: &str,
        pod: Option<&Pod>,
        grace_override: Option<i64>,
    ) -> Result<(), CriError> {
        let containers = self.cri.list_containers(uid_selector(uid)).await?;
        let live: Vec<&api::Container> = containers
            .iter()
            .filter(|c| {
                matches!(
                    container_state(c.state),
                    ContainerState::Running | ContainerState::Created | ContainerState::Unknown
                )
            })
            .collect();
        let name_of = |c: &api::Container| {
            c.labels
                .get(labels::CONTAINER_NAME_LABEL)
                .cloned()
                .unwrap_or_default()
        };
        // Sidecars stop after everything else, the last one first (upstream's order).
        let sidecars: Vec<String> = pod
            .map(|p| {
                crate::pod_util::sidecars(p)
                    .map(|(_, c)| c.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let (last, first): (Vec<&api::Container>, Vec<&api::Container>) = live
            .into_iter()
            .partition(|c| sidecars.contains(&name_of(c)));
        let stop = |c: &'_ api::Container| {
            let grace = grace_override
                .or_else(|| pod.map(pod_grace))
                .or_else(|| labels::termination_grace_period(&c.annotations))
                .unwrap_or(30)
                .max(MIN_GRACE_SECS);
            let name = name_of(c);
            let (id, sandbox) = (c.id.clone(), c.pod_sandbox_id.clone());
            async move {
                tracing::info!(%uid, container = %name, id = %id, grace, "stopping container");
                match self
                    .stop_container(pod, &name, &id, &sandbox, grace, None)
                    .await
                {
                    Err(e) if !e.is_not_found() => Err(e),
                    _ => Ok(()),
                }
            }
        };
        for r in join_all(first.into_iter().map(stop)).await {
            r?;
        }
        for name in sidecars.iter().rev() {
            for c in last.iter().filter(|c| &name_of(c) == name) {
                stop(c).await?;
            }
        }
        for sb in self.cri.list_pod_sandbox(uid_selector(uid)).await? {
            if sandbox_state(sb.state) == SandboxState::Ready {
                match self.cri.stop_pod_sandbox(&sb.id).await {
                    Err(e) if !e.is_not_found() => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Kills the pod and removes everything it left: sandboxes (with their containers),
    /// its cgroup, its log directory and its kubelet directory.
    pub(crate) async fn remove_pod(
        &self,
        uid: &str,
        pod: Option<&Pod>,
        grace_override: Option<i64>,
    ) -> Result<(), CriError> {
        self.kill_pod(uid, pod, grace_override).await?;
        let sandboxes = self.cri.list_pod_sandbox(uid_selector(uid)).await?;
        for sb in &sandboxes {
            match self.cri.remove_pod_sandbox(&sb.id).await {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => {}
            }
            lock(&self.sandbox_ips).remove(&sb.id);
            if let Some(meta) = &sb.metadata {
                let dir = sandbox::pod_log_dir(
                    &self.paths.pod_logs_dir,
                    &meta.namespace,
                    &meta.name,
                    uid,
                );
                remove_dir(&dir);
            }
        }
        // Containers not attached to a listed sandbox (should not happen, but be thorough).
        for c in self.cri.list_containers(uid_selector(uid)).await? {
            let _ = self.cri.remove_container(&c.id).await;
        }
        lock(&self.container_cache).retain(|_, c| !sandboxes.iter().any(|s| s.id == c.sandbox_id));
        if self.pod_cgroups {
            for cg in crate::resources::all_pod_cgroup_names(&self.paths.cgroup_root, uid) {
                remove_pod_cgroup(&cg);
            }
        }
        let unmounted = crate::volumes::teardown(&self.root_dir, uid);
        if let Some(u) = &self.userns {
            u.release(uid);
        }
        if unmounted {
            remove_dir(&self.root_dir.join("pods").join(uid));
        }
        Ok(())
    }
}

fn mkdir(path: &Path) -> Result<(), SyncError> {
    std::fs::create_dir_all(path).map_err(|source| SyncError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn remove_dir(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove directory");
        }
    }
}

/// Removes the (now empty) pod cgroup: its slice with systemd, then what is left of it in
/// every mounted hierarchy.
fn remove_pod_cgroup(cgroup: &str) {
    crate::cgroup_manager::remove_unit(cgroup);
    let rel = cgroup.trim_start_matches('/');
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for root in roots {
        let dir = root.join(rel);
        if dir.is_dir() {
            if let Err(e) = std::fs::remove_dir(&dir) {
                tracing::debug!(path = %dir.display(), error = %e, "cannot remove pod cgroup");
            }
        }
    }
}
