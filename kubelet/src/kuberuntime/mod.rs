//! The runtime manager (upstream `kuberuntime`): reads a pod's state from CRI
//! ([`RuntimeManager::get_pod_status`]), applies the actions [`actions::compute_pod_actions`]
//! decides ([`RuntimeManager::sync_pod`]: sandbox, image pulls per `imagePullPolicy`,
//! containers with upstream labels and annotations) and tears pods down
//! ([`RuntimeManager::kill_pod`], [`RuntimeManager::remove_pod`]).

pub mod actions;
pub mod container;
pub mod sandbox;

#[cfg(test)]
pub(crate) mod manager_tests;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{Container, Pod};
use nodus_proto::runtime::v1 as cri;

use crate::backoff::{self, Backoff};
use crate::container::{
    now_nanos, ContainerState, ContainerStatus, PodStatus, SandboxState, SandboxStatus,
};
use crate::cri::{Cri, CriError};
use crate::labels;
use actions::{app_containers, init_containers, PodActions};
use sandbox::NodePaths;

/// Upstream's minimum grace period when stopping containers.
pub const MIN_GRACE_SECS: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
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
    #[error("postStart hook failed: {0}")]
    PostStartHook(String),
    #[error("pod cgroup: {0}")]
    Cgroup(#[from] crate::resources::CgroupError),
}

impl SyncError {
    /// The waiting reason upstream shows for a container that failed this way.
    pub fn reason(&self) -> &'static str {
        match self {
            SyncError::ImageNeverPull { .. } => "ErrImageNeverPull",
            SyncError::ImagePull { .. } => "ErrImagePull",
            SyncError::ImagePullBackOff { .. } => "ImagePullBackOff",
            SyncError::Io { .. } | SyncError::Config(_) => "CreateContainerConfigError",
            SyncError::Cgroup(_) => "CreateContainerError",
            SyncError::PostStartHook(_) => "PostStartHookError",
            SyncError::CreateContainer(_) => "CreateContainerError",
            SyncError::StartContainer(_) | SyncError::Cri(_) => "RunContainerError",
        }
    }
}

/// The outcome of starting each container a sync tried to start.
pub type StartResults = Vec<(String, Result<(), SyncError>)>;

/// The runtime manager. Cheap to share behind an `Arc`.
pub struct RuntimeManager {
    cri: Cri,
    paths: NodePaths,
    root_dir: PathBuf,
    resolv_conf: PathBuf,
    /// IPs of sandboxes (they never change for a given sandbox).
    sandbox_ips: Mutex<HashMap<String, Vec<String>>>,
    /// Container statuses by ID; refreshed when the listed state differs.
    container_cache: Mutex<HashMap<String, ContainerStatus>>,
    /// The node's allocatable resources (resource references, oom_score_adj).
    pub node: crate::resources::NodeAllocatable,
    pub node_name: String,
    pub node_ip: Option<String>,
    /// Dead containers kept per container name (maxPerPodContainer).
    pub max_per_pod_container: u32,
    /// Pulled, Created, Started, Killing, Failed events.
    pub events: crate::events::EventRecorder,
    /// Create and remove pod cgroups (unit tests on the fake runtime turn this off).
    pub pod_cgroups: bool,
    /// Failed image pulls by `<pod uid>_<image>` (upstream's image back-off: 10 s doubling
    /// to 300 s).
    image_backoff: Mutex<Backoff>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn uid_selector(uid: &str) -> HashMap<String, String> {
    HashMap::from([(labels::POD_UID_LABEL.to_string(), uid.to_string())])
}

fn container_state(s: i32) -> ContainerState {
    match cri::ContainerState::try_from(s) {
        Ok(cri::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(cri::ContainerState::ContainerRunning) => ContainerState::Running,
        Ok(cri::ContainerState::ContainerExited) => ContainerState::Exited,
        _ => ContainerState::Unknown,
    }
}

fn sandbox_state(s: i32) -> SandboxState {
    if s == cri::PodSandboxState::SandboxReady as i32 {
        SandboxState::Ready
    } else {
        SandboxState::NotReady
    }
}

/// Upstream reports a host-network pod's IPs as the node's: probes, hooks and
/// `status.podIP` then reach the node address.
pub fn with_host_network_ips(pod: &Pod, ips: Vec<String>, node_ip: Option<&String>) -> Vec<String> {
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    if ips.is_empty() && host_network {
        node_ip.cloned().into_iter().collect()
    } else {
        ips
    }
}

/// The pod's IPs from its runtime status (the newest sandbox's), or the node's for a
/// host-network pod.
pub fn status_pod_ips(
    pod: &Pod,
    runtime: &crate::container::PodStatus,
    node_ip: Option<&String>,
) -> Vec<String> {
    let ips = runtime
        .sandboxes
        .first()
        .map(|s| s.ips.clone())
        .unwrap_or_default();
    with_host_network_ips(pod, ips, node_ip)
}

pub fn pod_grace(pod: &Pod) -> i64 {
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
    pub fn new(cri: Cri, paths: NodePaths, root_dir: PathBuf, resolv_conf: PathBuf) -> Self {
        RuntimeManager {
            cri,
            paths,
            root_dir,
            resolv_conf,
            sandbox_ips: Mutex::new(HashMap::new()),
            container_cache: Mutex::new(HashMap::new()),
            node: crate::resources::NodeAllocatable::detect(),
            node_name: String::new(),
            node_ip: None,
            max_per_pod_container: 1,
            events: crate::events::EventRecorder::none(),
            pod_cgroups: true,
            image_backoff: Mutex::new(Backoff::new()),
        }
    }

    /// The pod's IPs: its sandbox's, or the node's for a host-network pod.
    async fn pod_ips(&self, pod: Option<&Pod>, sandbox_id: &str) -> Vec<String> {
        let ips = self.sandbox_pod_ips(sandbox_id).await;
        match pod {
            Some(pod) => with_host_network_ips(pod, ips, self.node_ip.as_ref()),
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

    pub fn cri(&self) -> &Cri {
        &self.cri
    }

    /// The runtime's view of one pod, from CRI only.
    pub async fn get_pod_status(&self, uid: &str) -> Result<PodStatus, CriError> {
        let (sandboxes, containers) = tokio::try_join!(
            self.cri.list_pod_sandbox(uid_selector(uid)),
            self.cri.list_containers(uid_selector(uid)),
        )?;
        self.pod_status_from(uid, sandboxes, containers).await
    }

    /// The runtime's view of one pod from listed sandboxes and containers (already those
    /// of `uid`). Asks CRI only for what the lists lack and no earlier answer holds: a
    /// ready sandbox's IPs, a container whose state changed.
    pub(crate) async fn pod_status_from(
        &self,
        uid: &str,
        sandboxes: impl IntoIterator<Item = cri::PodSandbox>,
        containers: impl IntoIterator<Item = cri::Container>,
    ) -> Result<PodStatus, CriError> {
        let mut status = PodStatus {
            uid: uid.to_string(),
            ..Default::default()
        };
        for sb in sandboxes {
            let meta = sb.metadata.clone().unwrap_or_default();
            status.name = meta.name.clone();
            status.namespace = meta.namespace.clone();
            let state = sandbox_state(sb.state);
            let cached = lock(&self.sandbox_ips).get(&sb.id).cloned();
            let ips = match (cached, state) {
                (Some(ips), _) => ips,
                (None, SandboxState::Ready) => {
                    let st = self.cri.pod_sandbox_status(&sb.id).await?;
                    let net = st.network.unwrap_or_default();
                    let mut ips = Vec::new();
                    if !net.ip.is_empty() {
                        ips.push(net.ip);
                    }
                    ips.extend(net.additional_ips.into_iter().map(|p| p.ip));
                    lock(&self.sandbox_ips).insert(sb.id.clone(), ips.clone());
                    ips
                }
                (None, SandboxState::NotReady) => Vec::new(),
            };
            status.sandboxes.push(SandboxStatus {
                id: sb.id,
                state,
                attempt: meta.attempt,
                created_at: sb.created_at,
                ips,
            });
        }
        for c in containers {
            let state = container_state(c.state);
            let cached = lock(&self.container_cache)
                .get(&c.id)
                .filter(|s| s.state == state)
                .cloned();
            let cs = match cached {
                Some(cs) => cs,
                None => match self.cri.container_status(&c.id).await {
                    Ok(st) => {
                        let cs = self.convert_container(&c, &st);
                        lock(&self.container_cache).insert(c.id.clone(), cs.clone());
                        cs
                    }
                    // Removed between the list and the status call.
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                },
            };
            status.containers.push(cs);
        }
        status.sort();
        Ok(status)
    }

    fn convert_container(&self, c: &cri::Container, st: &cri::ContainerStatus) -> ContainerStatus {
        let meta = c.metadata.clone().unwrap_or_default();
        let state = container_state(st.state);
        let mut message = st.message.clone();
        if message.is_empty() && state == ContainerState::Exited {
            message = termination_message(c, st).unwrap_or_default();
        }
        ContainerStatus {
            id: c.id.clone(),
            name: c
                .labels
                .get(labels::CONTAINER_NAME_LABEL)
                .cloned()
                .unwrap_or(meta.name),
            sandbox_id: c.pod_sandbox_id.clone(),
            state,
            created_at: st.created_at,
            started_at: st.started_at,
            finished_at: st.finished_at,
            exit_code: st.exit_code,
            reason: st.reason.clone(),
            message,
            image: c
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
            image_ref: st.image_ref.clone(),
            hash: c
                .annotations
                .get(labels::CONTAINER_HASH)
                .cloned()
                .unwrap_or_default(),
            restart_count: labels::restart_count(&c.annotations),
        }
    }

    fn node_resolv_conf(&self) -> String {
        std::fs::read_to_string(&self.resolv_conf).unwrap_or_else(|e| {
            tracing::warn!(path = %self.resolv_conf.display(), error = %e, "cannot read resolv.conf, pods get no DNS servers");
            String::new()
        })
    }

    /// Applies `actions` to `pod` whose runtime state is `status`.
    pub async fn sync_pod(
        &self,
        pod: &Pod,
        status: &PodStatus,
        actions: &PodActions,
        backoff: &Mutex<Backoff>,
        objects: &crate::objects::PodObjects,
    ) -> Result<StartResults, SyncError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if actions.kill_pod {
            tracing::info!(pod = %status_name(pod), %uid, "stopping pod sandbox and containers");
            self.kill_pod(&uid, Some(pod), None).await?;
        }
        let resolv = self.node_resolv_conf();
        let sandbox_config = sandbox::sandbox_config(pod, actions.attempt, &self.paths, &resolv)
            .map_err(SyncError::Config)?;
        let sandbox_id = if actions.create_sandbox {
            let log_dir = PathBuf::from(&sandbox_config.log_directory);
            mkdir(&log_dir)?;
            if let Some(linux) = sandbox_config.linux.as_ref().filter(|_| self.pod_cgroups) {
                crate::resources::ensure_pod_cgroup(
                    &linux.cgroup_parent,
                    &crate::resources::pod_cgroup_config(pod),
                )?;
            }
            let handler = pod
                .spec
                .as_ref()
                .and_then(|s| s.runtime_class_name.clone())
                .unwrap_or_default();
            let id = self
                .cri
                .run_pod_sandbox(sandbox_config.clone(), handler)
                .await?;
            tracing::info!(pod = %status_name(pod), %uid, sandbox = %id, attempt = actions.attempt, "sandbox started");
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
            tracing::info!(pod = %status_name(pod), container = %k.name, reason = %k.reason, "stopping container");
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
        let mut results = StartResults::new();
        if let Some(i) = actions.next_init_container {
            let c = &init_containers(pod)[i];
            let r = self
                .start_container(
                    pod,
                    c,
                    true,
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
                tracing::warn!(pod = %status_name(pod), container = %name, reason = e.reason(), error = %e, "cannot start container");
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

    /// The image of `container`, pulled per its imagePullPolicy with the pod's pull secrets
    /// (upstream `EnsureImageExists`); a failed pull backs that image off for the pod.
    async fn ensure_image(
        &self,
        pod: &Pod,
        container: &Container,
        sandbox_config: &cri::PodSandboxConfig,
        objects: &crate::objects::PodObjects,
    ) -> Result<String, SyncError> {
        use crate::events::{NORMAL, WARNING};
        let name = Some(container.name.as_str());
        let image = container.image.clone().unwrap_or_default();
        let policy = container
            .image_pull_policy
            .as_deref()
            .unwrap_or("IfNotPresent");
        if policy != "Always" {
            if let Some(id) = self.cri.image_status(&image).await? {
                self.events.pod_event(
                    pod,
                    name,
                    NORMAL,
                    "Pulled",
                    format!("Container image {image:?} already present on machine"),
                );
                return Ok(id);
            }
            if policy == "Never" {
                self.events.pod_event(
                    pod,
                    name,
                    WARNING,
                    "ErrImageNeverPull",
                    format!("Container image {image:?} is not present with pull policy of Never"),
                );
                return Err(SyncError::ImageNeverPull { image });
            }
        }
        let backoff_key = format!("{}_{image}", pod.metadata.uid.as_deref().unwrap_or(""));
        if lock(&self.image_backoff).in_backoff_since_update(&backoff_key, now_nanos()) {
            let err = SyncError::ImagePullBackOff { image };
            self.events
                .pod_event(pod, name, NORMAL, "BackOff", err.to_string());
            return Err(err);
        }
        tracing::info!(%image, "pulling image");
        self.events.pod_event(
            pod,
            name,
            NORMAL,
            "Pulling",
            format!("Pulling image {image:?}"),
        );
        let start = std::time::Instant::now();
        // Each matching credential in turn, most specific first; none: anonymously.
        let mut creds: Vec<Option<cri::AuthConfig>> =
            crate::credentials::for_image(pod, &image, objects)
                .into_iter()
                .map(Some)
                .collect();
        if creds.is_empty() {
            creds.push(None);
        }
        let mut result = Err(CriError::Empty { op: "PullImage" });
        for auth in creds {
            result = self
                .cri
                .pull_image(&image, auth, Some(sandbox_config.clone()))
                .await;
            if result.is_ok() {
                break;
            }
        }
        match result {
            Ok(id) => {
                lock(&self.image_backoff).reset(&backoff_key);
                self.events.pod_event(
                    pod,
                    name,
                    NORMAL,
                    "Pulled",
                    format!(
                        "Successfully pulled image {image:?} in {:?}",
                        start.elapsed()
                    ),
                );
                Ok(id)
            }
            Err(source) => {
                lock(&self.image_backoff).failed_at(&backoff_key, now_nanos());
                self.events.pod_event(
                    pod,
                    name,
                    WARNING,
                    "Failed",
                    format!("Failed to pull image {image:?}: {source}"),
                );
                Err(SyncError::ImagePull {
                    image: image.clone(),
                    source,
                })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_container(
        &self,
        pod: &Pod,
        container: &Container,
        is_init: bool,
        sandbox_id: &str,
        sandbox_config: &cri::PodSandboxConfig,
        status: &PodStatus,
        backoff: &Mutex<Backoff>,
        objects: &crate::objects::PodObjects,
    ) -> Result<(), SyncError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let previous = status.find_container(&container.name);
        let restart_count = previous.map(|p| p.restart_count + 1).unwrap_or(0);
        if let Some(last) = status.last_exited(&container.name) {
            let key = backoff::key(&uid, &container.name, &labels::hash_container(container));
            lock(backoff).next(&key, last.started_at, last.finished_at, now_nanos());
        }
        let image_ref = self
            .ensure_image(pod, container, sandbox_config, objects)
            .await?;
        let user = container::effective_user(pod, container);
        if user.run_as_non_root {
            self.verify_non_root(pod, container, &user, &image_ref)
                .await?;
        }
        let rt_fields = crate::envvars::RuntimeFields {
            pod_ips: self.pod_ips(Some(pod), sandbox_id).await,
            host_ip: self.node_ip.clone(),
            node_name: self.node_name.clone(),
        };
        let env = crate::envvars::make_env(pod, container, &rt_fields, &self.node, objects)
            .map_err(SyncError::Config)?;
        let command_args = crate::envvars::expand_command(container, &env);
        let resources = crate::resources::linux_container_resources(pod, container, &self.node)
            .map_err(SyncError::Config)?;
        let inputs = crate::volumes::VolumeInputs {
            rt: &rt_fields,
            node: &self.node,
            objects,
        };
        let volumes = crate::volumes::prepare(&self.root_dir, pod, &inputs)
            .map_err(|e| SyncError::Config(e.to_string()))?;
        let log_dir = PathBuf::from(&sandbox_config.log_directory).join(&container.name);
        mkdir(&log_dir)?;
        let mut mounts = crate::volumes::container_mounts(container, &volumes)
            .map_err(|e| SyncError::Config(e.to_string()))?;
        if let Some(path) = container
            .termination_message_path
            .as_deref()
            .filter(|p| !p.is_empty())
        {
            let dir = self
                .root_dir
                .join("pods")
                .join(&uid)
                .join("containers")
                .join(&container.name);
            mkdir(&dir)?;
            let file = dir.join(restart_count.to_string());
            // 0666 whatever the umask, as upstream: a container running as any user writes it.
            std::fs::write(&file, b"")
                .and_then(|()| {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))
                })
                .map_err(|source| SyncError::Io {
                    path: file.clone(),
                    source,
                })?;
            mounts.push(cri::Mount {
                container_path: path.to_string(),
                host_path: file.display().to_string(),
                ..Default::default()
            });
        }
        if crate::network::hosts::should_mount(container, &rt_fields.pod_ips) {
            let pod_dir = self.root_dir.join("pods").join(&uid);
            let file = crate::network::hosts::ensure_file(
                &pod_dir,
                pod,
                &rt_fields.pod_ips,
                &self.paths.dns.domain,
                Path::new(crate::network::hosts::ETC_HOSTS),
            )
            .map_err(|source| SyncError::Io {
                path: pod_dir.join("etc-hosts"),
                source,
            })?;
            mounts.push(cri::Mount {
                container_path: crate::network::hosts::ETC_HOSTS.into(),
                host_path: file.display().to_string(),
                ..Default::default()
            });
        }
        let config = container::container_config(
            pod,
            container,
            &container::ContainerOptions {
                restart_count,
                is_init,
                image_ref,
                mounts,
                env: Some(env),
                command_args: Some(command_args),
                resources: Some(resources),
                namespace_options: sandbox_config
                    .linux
                    .as_ref()
                    .and_then(|l| l.security_context.as_ref())
                    .and_then(|s| s.namespace_options.clone()),
                seccomp: Some(crate::security::seccomp::profile_for(
                    pod,
                    Some(container),
                    &self.paths.seccomp_profile_root,
                    self.paths.seccomp_default,
                )),
                apparmor: crate::security::apparmor::profile_for(pod, container)
                    .map_err(SyncError::Config)?,
            },
        );
        let id = self
            .cri
            .create_container(sandbox_id, config, sandbox_config.clone())
            .await
            .map_err(SyncError::CreateContainer)?;
        self.events.pod_event(
            pod,
            Some(&container.name),
            crate::events::NORMAL,
            "Created",
            format!("Created container {}", container.name),
        );
        if let Err(e) = self.cri.start_container(&id).await {
            // Do not leave a created container behind; the next sync tries again.
            let _ = self.cri.remove_container(&id).await;
            return Err(SyncError::StartContainer(e));
        }
        tracing::info!(pod = %status_name(pod), container = %container.name, id = %id, restart_count, init = is_init, "container started");
        self.events.pod_event(
            pod,
            Some(&container.name),
            crate::events::NORMAL,
            "Started",
            format!("Started container {}", container.name),
        );
        if let Some(h) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
        {
            let ip = rt_fields.pod_ips.first().map(String::as_str);
            let timeout = std::time::Duration::from_secs(pod_grace(pod).max(30) as u64);
            if let Err(msg) = run_lifecycle_handler(&self.cri, h, container, &id, ip, timeout).await
            {
                tracing::warn!(pod = %status_name(pod), container = %container.name, error = %msg, "postStart hook failed, killing the container (FailedPostStartHook)");
                let _ = self.cri.stop_container(&id, pod_grace(pod)).await;
                return Err(SyncError::PostStartHook(msg));
            }
        }
        Ok(())
    }

    /// Stops one container: its preStop hook (when `pod` knows one) within the grace
    /// period, then the stop signal with what is left of it. `reason` is the `Killing`
    /// event's message (default: "Stopping container <name>").
    pub async fn stop_container(
        &self,
        pod: Option<&Pod>,
        name: &str,
        id: &str,
        sandbox_id: &str,
        grace: i64,
        reason: Option<&str>,
    ) -> Result<(), CriError> {
        let spec = pod.and_then(|p| {
            app_containers(p)
                .iter()
                .chain(init_containers(p))
                .find(|c| c.name == name)
        });
        let mut grace = grace;
        if let Some(p) = pod {
            self.events.pod_event(
                p,
                Some(name),
                crate::events::NORMAL,
                "Killing",
                reason
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("Stopping container {name}")),
            );
        }
        if let Some((c, h)) = spec.and_then(|c| Some((c, c.lifecycle.as_ref()?.pre_stop.as_ref()?)))
        {
            let ip = self.pod_ips(pod, sandbox_id).await;
            let start = std::time::Instant::now();
            run_pre_stop(&self.cri, h, c, id, ip.first().map(String::as_str), grace).await;
            grace = (grace - start.elapsed().as_secs() as i64).max(MIN_GRACE_SECS);
        }
        self.cri.stop_container(id, grace).await
    }

    /// Upstream's `verifyRunAsNonRoot`: refuses a container that would run as root.
    async fn verify_non_root(
        &self,
        pod: &Pod,
        container: &Container,
        user: &container::EffectiveUser,
        image_ref: &str,
    ) -> Result<(), SyncError> {
        let who = format!("pod: {:?}, container: {}", status_name(pod), container.name);
        if let Some(uid) = user.run_as_user {
            if uid == 0 {
                return Err(SyncError::Config(format!(
                    "container's runAsUser breaks non-root policy ({who})"
                )));
            }
            return Ok(());
        }
        let (uid, username) = self.cri.image_user(image_ref).await?;
        match uid {
            Some(0) => Err(SyncError::Config(format!(
                "container has runAsNonRoot and image will run as root ({who})"
            ))),
            Some(_) => Ok(()),
            None if !username.is_empty() => Err(SyncError::Config(format!(
                "container has runAsNonRoot and image has non-numeric user ({username}), cannot verify user is non-root ({who})"
            ))),
            // No user in the image: it runs as root.
            None => Err(SyncError::Config(format!(
                "container has runAsNonRoot and image will run as root ({who})"
            ))),
        }
    }

    /// Removes exited containers beyond the newest `maxPerPodContainer` exited ones per
    /// name (upstream's container GC, run on each sync), so restarts do not pile up.
    async fn remove_old_containers(&self, status: &PodStatus) {
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

    /// Stops every running container of the pod with its grace period, then its sandboxes.
    /// `pod` gives the grace period; without it the containers' annotations do.
    pub async fn kill_pod(
        &self,
        uid: &str,
        pod: Option<&Pod>,
        grace_override: Option<i64>,
    ) -> Result<(), CriError> {
        let containers = self.cri.list_containers(uid_selector(uid)).await?;
        let stops = containers
            .iter()
            .filter(|c| {
                matches!(
                    container_state(c.state),
                    ContainerState::Running | ContainerState::Created | ContainerState::Unknown
                )
            })
            .map(|c| {
                let grace = grace_override
                    .or_else(|| pod.map(pod_grace))
                    .or_else(|| labels::termination_grace_period(&c.annotations))
                    .unwrap_or(30)
                    .max(MIN_GRACE_SECS);
                let name = c.labels.get(labels::CONTAINER_NAME_LABEL).cloned().unwrap_or_default();
                async move {
                    tracing::info!(%uid, container = %name, id = %c.id, grace, "stopping container");
                    match self.stop_container(pod, &name, &c.id, &c.pod_sandbox_id, grace, None).await {
                        Err(e) if !e.is_not_found() => Err(e),
                        _ => Ok(()),
                    }
                }
            });
        for r in join_all(stops).await {
            r?;
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
    pub async fn remove_pod(
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
        crate::volumes::teardown(&self.root_dir, uid);
        remove_dir(&self.root_dir.join("pods").join(uid));
        Ok(())
    }
}

/// Runs a lifecycle handler (exec, httpGet, sleep) with a deadline.
pub async fn run_lifecycle_handler(
    cri: &Cri,
    h: &k8s_openapi::api::core::v1::LifecycleHandler,
    container: &Container,
    container_id: &str,
    pod_ip: Option<&str>,
    timeout: std::time::Duration,
) -> crate::handlers::Outcome {
    if let Some(e) = &h.exec {
        crate::handlers::exec(cri, container_id, e, timeout).await
    } else if let Some(g) = &h.http_get {
        crate::handlers::http_get(g, container, pod_ip, timeout).await
    } else if let Some(s) = &h.sleep {
        let d = std::time::Duration::from_secs(s.seconds.max(0) as u64).min(timeout);
        tokio::time::sleep(d).await;
        Ok(())
    } else if let Some(t) = &h.tcp_socket {
        // Deprecated for hooks; upstream treats it as a connect.
        crate::handlers::tcp(t, container, pod_ip, timeout).await
    } else {
        Err("lifecycle handler has no action".into())
    }
}

/// Runs a preStop hook within `grace` seconds; failures are logged (upstream goes on
/// to stop the container).
pub async fn run_pre_stop(
    cri: &Cri,
    h: &k8s_openapi::api::core::v1::LifecycleHandler,
    container: &Container,
    container_id: &str,
    pod_ip: Option<&str>,
    grace: i64,
) {
    let timeout = std::time::Duration::from_secs(grace.max(1) as u64);
    tracing::info!(container = %container.name, id = %container_id, "running preStop hook");
    if let Err(e) = run_lifecycle_handler(cri, h, container, container_id, pod_ip, timeout).await {
        tracing::warn!(container = %container.name, id = %container_id, error = %e, "preStop hook failed (FailedPreStopHook)");
    }
}

/// Upstream's limit on a termination message.
const MAX_TERMINATION_MESSAGE: u64 = 4096;

/// What the container wrote to its `terminationMessagePath` (the file the kubelet mounted
/// there, found through the container's mounts), cut to 4096 bytes.
fn termination_message(c: &cri::Container, st: &cri::ContainerStatus) -> Option<String> {
    use std::io::Read;
    let path = c
        .annotations
        .get(labels::CONTAINER_TERMINATION_MESSAGE_PATH)?;
    let mount = st.mounts.iter().find(|m| &m.container_path == path)?;
    let mut buf = Vec::new();
    std::fs::File::open(&mount.host_path)
        .ok()?
        .take(MAX_TERMINATION_MESSAGE)
        .read_to_end(&mut buf)
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    if !text.is_empty() {
        return Some(text);
    }
    // FallbackToLogsOnError: the end of the log of a failed container.
    let fallback = c
        .annotations
        .get(labels::CONTAINER_TERMINATION_MESSAGE_POLICY)
        .is_some_and(|p| p == "FallbackToLogsOnError");
    if fallback && st.exit_code != 0 && !st.log_path.is_empty() {
        let opts = crate::logs::LogOptions {
            tail_lines: Some(MAX_TERMINATION_MESSAGE_LOG_LINES),
            ..Default::default()
        };
        let (mut text, _) = crate::logs::read_all(Path::new(&st.log_path), &opts).ok()?;
        if text.len() > MAX_TERMINATION_MESSAGE_LOG_BYTES {
            let mut cut = text.len() - MAX_TERMINATION_MESSAGE_LOG_BYTES;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text.drain(..cut);
        }
        return (!text.is_empty()).then_some(text);
    }
    None
}

/// Upstream's limits on a termination message taken from the log.
const MAX_TERMINATION_MESSAGE_LOG_LINES: usize = 80;
const MAX_TERMINATION_MESSAGE_LOG_BYTES: usize = 2048;

fn status_name(pod: &Pod) -> String {
    crate::pod_config::full_name(pod)
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

/// Removes the (now empty) pod cgroup from every mounted hierarchy.
fn remove_pod_cgroup(cgroup: &str) {
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
