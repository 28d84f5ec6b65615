//! An in-memory CRI runtime for unit tests (upstream: `fake_runtime_service.go` and
//! `fake_image_service.go`). It keeps sandboxes, containers and images the way containerd
//! reports them, records every call, and lets a test inject errors and change state
//! (a container exiting with a code, a sandbox dying).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nodus_proto::runtime::v1 as cri;

use super::{Cri, CriError, CriFut, ImageService, RuntimeFeatures, RuntimeService};
use crate::container::{now_nanos, Nanos};
use crate::kuberuntime::labels;

/// One recorded call: the CRI method and its main argument (an ID, an image, a name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Call {
    pub(crate) op: &'static str,
    pub(crate) arg: String,
}

#[derive(Debug, Clone)]
struct Sandbox {
    sandbox: cri::PodSandbox,
    ip: String,
}

#[derive(Debug, Clone)]
struct Ctr {
    container: cri::Container,
    status: cri::ContainerStatus,
    /// The namespaces the kubelet asked for.
    namespaces: Option<cri::NamespaceOption>,
    /// The resources it was created with, or last updated to.
    resources: Option<cri::LinuxContainerResources>,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    /// Errors the next calls of a method return, in order.
    errors: HashMap<&'static str, VecDeque<tonic::Code>>,
    /// ImageStatus answers only after a few milliseconds (as a real call would), so that
    /// concurrent callers overlap.
    slow_image_status: bool,
    sandboxes: BTreeMap<String, Sandbox>,
    containers: BTreeMap<String, Ctr>,
    images: Vec<cri::Image>,
    /// Exit code of ExecSync per container name (0 when unset).
    exec_exit: HashMap<String, i32>,
    /// (container id, command) of every ExecSync.
    execs: Vec<(String, Vec<String>)>,
    next_id: u64,
    /// The last timestamp handed out (timestamps strictly increase).
    clock: Nanos,
    /// Image filesystem usage reported by ImageFsInfo.
    fs_info: Vec<cri::FilesystemUsage>,
    stats: Vec<cri::ContainerStats>,
    /// Images that only pull with these (user, password).
    registry_auth: HashMap<String, (String, String)>,
    /// The credentials of every PullImage, in order.
    pull_auths: Vec<Option<cri::AuthConfig>>,
    /// The sandbox image the verbose Status names.
    sandbox_image: Option<String>,
    runtime_handlers: Vec<cri::RuntimeHandler>,
}

impl State {
    fn now(&mut self) -> Nanos {
        self.clock = now_nanos().max(self.clock + 1);
        self.clock
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    /// Records a call and returns the error injected for it, if any.
    fn enter(&mut self, op: &'static str, arg: impl Into<String>) -> Result<(), CriError> {
        self.calls.push(Call {
            op,
            arg: arg.into(),
        });
        match self.errors.get_mut(op).and_then(|q| q.pop_front()) {
            Some(code) => Err(status(op, code, "injected error")),
            None => Ok(()),
        }
    }

    fn find_image(&self, name: &str) -> Option<&cri::Image> {
        self.images.iter().find(|i| {
            i.id == name
                || i.repo_tags.iter().any(|t| t == name)
                || i.repo_digests.iter().any(|d| d == name)
        })
    }
}

fn status(op: &'static str, code: tonic::Code, message: &str) -> CriError {
    CriError::Status {
        op,
        code,
        message: message.into(),
    }
}

fn not_found(op: &'static str, id: &str) -> CriError {
    status(op, tonic::Code::NotFound, &format!("{id} not found"))
}

fn matches(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn done<'a, T: Send + 'a>(r: Result<T, CriError>) -> CriFut<'a, T> {
    Box::pin(std::future::ready(r))
}

/// The fake runtime and image service.
#[derive(Default)]
pub(crate) struct FakeRuntime {
    state: Mutex<State>,
}

impl FakeRuntime {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(FakeRuntime::default())
    }

    /// A [`Cri`] handle whose calls all reach this fake.
    pub(crate) fn cri(self: &Arc<Self>) -> Cri {
        Cri::from_services(self.clone(), self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The arguments of the calls of one method, in order.
    pub(crate) fn calls_of(&self, op: &str) -> Vec<String> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.op == op)
            .map(|c| c.arg.clone())
            .collect()
    }

    /// How many times a method was called.
    pub(crate) fn count(&self, op: &str) -> usize {
        self.lock().calls.iter().filter(|c| c.op == op).count()
    }

    pub(crate) fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// ImageStatus takes a few milliseconds to answer.
    pub(crate) fn set_slow_image_status(&self) {
        self.lock().slow_image_status = true;
    }

    /// The next call of `op` fails with `code`.
    pub(crate) fn inject_error(&self, op: &'static str, code: tonic::Code) {
        self.lock().errors.entry(op).or_default().push_back(code);
    }

    /// `image` pulls only with these credentials (a private registry).
    pub(crate) fn require_registry_auth(&self, image: &str, user: &str, password: &str) {
        self.lock()
            .registry_auth
            .insert(image.to_string(), (user.to_string(), password.to_string()));
    }

    /// The credentials of every PullImage so far.
    pub(crate) fn pull_auths(&self) -> Vec<Option<cri::AuthConfig>> {
        self.lock().pull_auths.clone()
    }

    /// Adds an image the runtime holds (ID `sha256:<name>`).
    pub(crate) fn add_image(&self, name: &str, size: u64) {
        let mut st = self.lock();
        st.images.push(cri::Image {
            id: format!("sha256:{name}"),
            repo_tags: vec![name.to_string()],
            size,
            ..Default::default()
        });
    }

    /// Gives an image a repo digest (as a pulled image has).
    pub(crate) fn set_image_digest(&self, name: &str, digest: &str) {
        let mut st = self.lock();
        if let Some(i) = st
            .images
            .iter_mut()
            .find(|i| i.repo_tags.iter().any(|t| t == name))
        {
            i.repo_digests = vec![digest.to_string()];
        }
    }

    /// Sets what an image runs as.
    pub(crate) fn set_image_user(&self, name: &str, uid: Option<i64>, username: &str) {
        let mut st = self.lock();
        if let Some(i) = st
            .images
            .iter_mut()
            .find(|i| i.repo_tags.iter().any(|t| t == name))
        {
            i.uid = uid.map(|value| cri::Int64Value { value });
            i.username = username.to_string();
        }
    }

    pub(crate) fn image_ids(&self) -> Vec<String> {
        self.lock().images.iter().map(|i| i.id.clone()).collect()
    }

    /// The image filesystem ImageFsInfo reports.
    /// What Status reports as runtime handlers (none, as containerd 1.6, by default).
    pub(crate) fn set_runtime_handlers(&self, handlers: Vec<cri::RuntimeHandler>) {
        self.lock().runtime_handlers = handlers;
    }

    pub(crate) fn set_sandbox_image(&self, image: &str) {
        self.lock().sandbox_image = Some(image.to_string());
    }

    pub(crate) fn set_image_fs(&self, mountpoint: &str) {
        self.lock().fs_info = vec![cri::FilesystemUsage {
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: mountpoint.to_string(),
            }),
            ..Default::default()
        }];
    }

    /// ExecSync in containers named `name` exits with `code`.
    pub(crate) fn set_exec_exit(&self, name: &str, code: i32) {
        self.lock().exec_exit.insert(name.to_string(), code);
    }

    /// (container id, command) of every ExecSync.
    pub(crate) fn execs(&self) -> Vec<(String, Vec<String>)> {
        self.lock().execs.clone()
    }

    /// A running container exits with `code`, as if its process ended.
    pub(crate) fn exit_container(&self, id: &str, code: i32) {
        let mut st = self.lock();
        let now = st.now();
        if let Some(c) = st.containers.get_mut(id) {
            c.container.state = cri::ContainerState::ContainerExited as i32;
            c.status.state = cri::ContainerState::ContainerExited as i32;
            c.status.exit_code = code;
            c.status.finished_at = now;
            c.status.reason = if code == 0 { "Completed" } else { "Error" }.into();
        }
    }

    /// Changes a container's times (to place it in the past, for back-off and GC).
    pub(crate) fn set_container_times(&self, id: &str, started_at: Nanos, finished_at: Nanos) {
        let mut st = self.lock();
        if let Some(c) = st.containers.get_mut(id) {
            c.status.started_at = started_at;
            c.status.finished_at = finished_at;
        }
    }

    /// A sandbox dies (its containers with it), as when its pause process is killed.
    pub(crate) fn kill_sandbox(&self, id: &str) {
        let mut st = self.lock();
        stop_sandbox(&mut st, id);
    }

    /// A sandbox's network answers no IP (it lost its network).
    pub(crate) fn clear_sandbox_ip(&self, id: &str) {
        if let Some(s) = self.lock().sandboxes.get_mut(id) {
            s.ip.clear();
        }
    }

    /// The ID of the newest container named `name` (the container name label).
    /// The namespace options a container was created with.
    pub(crate) fn container_namespaces(&self, id: &str) -> Option<cri::NamespaceOption> {
        self.lock().containers.get(id)?.namespaces.clone()
    }

    pub(crate) fn container_id(&self, name: &str) -> Option<String> {
        let st = self.lock();
        st.containers
            .values()
            .filter(|c| {
                c.container
                    .labels
                    .get(labels::CONTAINER_NAME_LABEL)
                    .map(String::as_str)
                    == Some(name)
            })
            .max_by_key(|c| c.container.created_at)
            .map(|c| c.container.id.clone())
    }

    /// Every container: (name, state, exit code), oldest first.
    pub(crate) fn containers(&self) -> Vec<(String, cri::ContainerState, i32)> {
        let st = self.lock();
        let mut v: Vec<&Ctr> = st.containers.values().collect();
        v.sort_by_key(|c| c.container.created_at);
        v.iter()
            .map(|c| {
                (
                    c.container
                        .labels
                        .get(labels::CONTAINER_NAME_LABEL)
                        .cloned()
                        .unwrap_or_default(),
                    cri::ContainerState::try_from(c.status.state)
                        .unwrap_or(cri::ContainerState::ContainerUnknown),
                    c.status.exit_code,
                )
            })
            .collect()
    }

    /// The annotations of a container.
    /// The CRI resources a container was created with or last updated to.
    pub(crate) fn container_resources(&self, id: &str) -> Option<cri::LinuxContainerResources> {
        self.lock()
            .containers
            .get(id)
            .and_then(|c| c.resources.clone())
    }

    pub(crate) fn container_annotations(&self, id: &str) -> HashMap<String, String> {
        self.lock()
            .containers
            .get(id)
            .map(|c| c.container.annotations.clone())
            .unwrap_or_default()
    }

    /// Every sandbox: (id, ready, attempt), oldest first.
    pub(crate) fn sandboxes(&self) -> Vec<(String, bool, u32)> {
        let st = self.lock();
        let mut v: Vec<&Sandbox> = st.sandboxes.values().collect();
        v.sort_by_key(|s| s.sandbox.created_at);
        v.iter()
            .map(|s| {
                (
                    s.sandbox.id.clone(),
                    s.sandbox.state == cri::PodSandboxState::SandboxReady as i32,
                    s.sandbox
                        .metadata
                        .as_ref()
                        .map(|m| m.attempt)
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Adds a sandbox and containers directly (objects a previous kubelet left).
    pub(crate) fn add_sandbox(&self, uid: &str, ready: bool) -> String {
        let mut st = self.lock();
        let id = st.id("s");
        let now = st.now();
        let state = if ready {
            cri::PodSandboxState::SandboxReady
        } else {
            cri::PodSandboxState::SandboxNotready
        };
        let sandbox = cri::PodSandbox {
            id: id.clone(),
            metadata: Some(cri::PodSandboxMetadata {
                name: "p".into(),
                uid: uid.into(),
                namespace: "n".into(),
                attempt: 0,
            }),
            state: state as i32,
            created_at: now,
            labels: HashMap::from([(labels::POD_UID_LABEL.to_string(), uid.to_string())]),
            ..Default::default()
        };
        st.sandboxes.insert(
            id.clone(),
            Sandbox {
                sandbox,
                ip: "10.88.0.9".into(),
            },
        );
        id
    }

    /// Adds a container in `state` to a sandbox, with only the pod UID and name labels.
    pub(crate) fn add_container(
        &self,
        uid: &str,
        sandbox_id: &str,
        name: &str,
        state: cri::ContainerState,
    ) -> String {
        let mut st = self.lock();
        let id = st.id("c");
        let now = st.now();
        let lbl = HashMap::from([
            (labels::POD_UID_LABEL.to_string(), uid.to_string()),
            (labels::CONTAINER_NAME_LABEL.to_string(), name.to_string()),
        ]);
        let container = cri::Container {
            id: id.clone(),
            pod_sandbox_id: sandbox_id.into(),
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            state: state as i32,
            created_at: now,
            labels: lbl.clone(),
            ..Default::default()
        };
        let status = cri::ContainerStatus {
            id: id.clone(),
            metadata: container.metadata.clone(),
            state: state as i32,
            created_at: now,
            started_at: if state == cri::ContainerState::ContainerCreated {
                0
            } else {
                now
            },
            labels: lbl,
            ..Default::default()
        };
        st.containers.insert(
            id.clone(),
            Ctr {
                container,
                status,
                namespaces: None,
                resources: None,
            },
        );
        id
    }

    /// Sets a container's image name and reference.
    pub(crate) fn set_container_image(&self, id: &str, image: &str, image_ref: &str) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            let spec = cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            };
            c.container.image = Some(spec.clone());
            c.container.image_ref = image_ref.to_string();
            c.status.image = Some(spec);
            c.status.image_ref = image_ref.to_string();
        }
    }

    pub(crate) fn set_stats(&self, stats: Vec<cri::ContainerStats>) {
        self.lock().stats = stats;
    }
}

/// StopPodSandbox: the sandbox is not ready and its containers are stopped.
fn stop_sandbox(st: &mut State, id: &str) {
    let now = st.now();
    if let Some(s) = st.sandboxes.get_mut(id) {
        s.sandbox.state = cri::PodSandboxState::SandboxNotready as i32;
    }
    for c in st.containers.values_mut() {
        if c.container.pod_sandbox_id == id
            && c.status.state != cri::ContainerState::ContainerExited as i32
        {
            kill(c, now);
        }
    }
}

/// A container killed by the stop signal's SIGKILL fallback: exited with 137.
fn kill(c: &mut Ctr, now: Nanos) {
    c.container.state = cri::ContainerState::ContainerExited as i32;
    c.status.state = cri::ContainerState::ContainerExited as i32;
    c.status.exit_code = 137;
    c.status.reason = "Error".into();
    c.status.finished_at = now;
}

impl RuntimeService for FakeRuntime {
    fn version(&self) -> CriFut<'_, cri::VersionResponse> {
        let mut st = self.lock();
        done(st.enter("Version", "").map(|_| cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "fake".into(),
            runtime_version: "0".into(),
            runtime_api_version: "v1".into(),
        }))
    }

    fn status(&self) -> CriFut<'_, cri::RuntimeStatus> {
        let mut st = self.lock();
        let cond = |t: &str| cri::RuntimeCondition {
            r#type: t.into(),
            status: true,
            ..Default::default()
        };
        done(st.enter("Status", "").map(|_| cri::RuntimeStatus {
            conditions: vec![cond("RuntimeReady"), cond("NetworkReady")],
        }))
    }

    fn runtime_features(&self) -> CriFut<'_, RuntimeFeatures> {
        let mut st = self.lock();
        let f = RuntimeFeatures {
            handlers: st.runtime_handlers.clone(),
            features: None,
        };
        done(st.enter("Status", "").map(|_| f))
    }

    fn sandbox_image(&self) -> CriFut<'_, Option<String>> {
        let mut st = self.lock();
        let image = st.sandbox_image.clone();
        done(st.enter("Status", "verbose").map(|_| image))
    }

    fn run_pod_sandbox(
        &self,
        config: cri::PodSandboxConfig,
        _runtime_handler: String,
    ) -> CriFut<'_, String> {
        let mut st = self.lock();
        let meta = config.metadata.clone().unwrap_or_default();
        if let Err(e) = st.enter("RunPodSandbox", meta.name.clone()) {
            return done(Err(e));
        }
        let id = st.id("s");
        let now = st.now();
        let host_network = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .is_some_and(|n| n.network == cri::NamespaceMode::Node as i32);
        let ip = if host_network {
            String::new()
        } else {
            format!("10.88.0.{}", st.next_id)
        };
        let sandbox = cri::PodSandbox {
            id: id.clone(),
            metadata: Some(meta),
            state: cri::PodSandboxState::SandboxReady as i32,
            created_at: now,
            labels: config.labels,
            annotations: config.annotations,
            runtime_handler: String::new(),
        };
        st.sandboxes.insert(id.clone(), Sandbox { sandbox, ip });
        done(Ok(id))
    }

    fn stop_pod_sandbox<'a>(&'a self, id: &'a str) -> CriFut<'a, ()> {
        let mut st = self.lock();
        if let Err(e) = st.enter("StopPodSandbox", id) {
            return done(Err(e));
        }
        // Stopping a sandbox that is gone succeeds (CRI: idempotent).
        stop_sandbox(&mut st, id);
        done(Ok(()))
    }

    fn remove_pod_sandbox<'a>(&'a self, id: &'a str) -> CriFut<'a, ()> {
        let mut st = self.lock();
        if let Err(e) = st.enter("RemovePodSandbox", id) {
            return done(Err(e));
        }
        st.sandboxes.remove(id);
        st.containers
            .retain(|_, c| c.container.pod_sandbox_id != id);
        done(Ok(()))
    }

    fn pod_sandbox_status<'a>(&'a self, id: &'a str) -> CriFut<'a, cri::PodSandboxStatus> {
        let mut st = self.lock();
        if let Err(e) = st.enter("PodSandboxStatus", id) {
            return done(Err(e));
        }
        let Some(s) = st.sandboxes.get(id) else {
            return done(Err(not_found("PodSandboxStatus", id)));
        };
        done(Ok(cri::PodSandboxStatus {
            id: id.to_string(),
            metadata: s.sandbox.metadata.clone(),
            state: s.sandbox.state,
            created_at: s.sandbox.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: s.ip.clone(),
                additional_ips: Vec::new(),
            }),
            labels: s.sandbox.labels.clone(),
            annotations: s.sandbox.annotations.clone(),
            ..Default::default()
        }))
    }

    fn list_pod_sandbox(
        &self,
        label_selector: HashMap<String, String>,
    ) -> CriFut<'_, Vec<cri::PodSandbox>> {
        let mut st = self.lock();
        if let Err(e) = st.enter("ListPodSandbox", "") {
            return done(Err(e));
        }
        done(Ok(st
            .sandboxes
            .values()
            .filter(|s| matches(&s.sandbox.labels, &label_selector))
            .map(|s| s.sandbox.clone())
            .collect()))
    }

    fn create_container<'a>(
        &'a self,
        pod_sandbox_id: &'a str,
        config: cri::ContainerConfig,
        _sandbox_config: cri::PodSandboxConfig,
    ) -> CriFut<'a, String> {
        let mut st = self.lock();
        let meta = config.metadata.clone().unwrap_or_default();
        if let Err(e) = st.enter("CreateContainer", meta.name.clone()) {
            return done(Err(e));
        }
        if !st.sandboxes.contains_key(pod_sandbox_id) {
            return done(Err(not_found("CreateContainer", pod_sandbox_id)));
        }
        let id = st.id("c");
        let now = st.now();
        let namespaces = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        let resources = config.linux.as_ref().and_then(|l| l.resources.clone());
        let image = config.image.clone().unwrap_or_default();
        // containerd lists the image ID, and reports the first repo digest when the image
        // has one in ContainerStatus.
        let found = st.find_image(&image.image);
        let image_ref = found
            .map(|i| i.id.clone())
            .unwrap_or_else(|| image.image.clone());
        let status_image_ref = found
            .and_then(|i| i.repo_digests.first().cloned())
            .unwrap_or_else(|| image_ref.clone());
        let container = cri::Container {
            id: id.clone(),
            pod_sandbox_id: pod_sandbox_id.to_string(),
            metadata: Some(meta.clone()),
            image: Some(image.clone()),
            image_ref,
            state: cri::ContainerState::ContainerCreated as i32,
            created_at: now,
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            ..Default::default()
        };
        let status = cri::ContainerStatus {
            id: id.clone(),
            metadata: Some(meta),
            state: cri::ContainerState::ContainerCreated as i32,
            created_at: now,
            image: Some(image),
            image_ref: status_image_ref,
            labels: config.labels,
            annotations: config.annotations,
            mounts: config.mounts,
            log_path: config.log_path,
            ..Default::default()
        };
        st.containers.insert(
            id.clone(),
            Ctr {
                container,
                status,
                namespaces,
                resources,
            },
        );
        done(Ok(id))
    }

    fn start_container<'a>(&'a self, id: &'a str) -> CriFut<'a, ()> {
        let mut st = self.lock();
        if let Err(e) = st.enter("StartContainer", id) {
            return done(Err(e));
        }
        let now = st.now();
        let Some(c) = st.containers.get_mut(id) else {
            return done(Err(not_found("StartContainer", id)));
        };
        if c.status.state != cri::ContainerState::ContainerCreated as i32 {
            return done(Err(status(
                "StartContainer",
                tonic::Code::FailedPrecondition,
                "container is not in created state",
            )));
        }
        c.container.state = cri::ContainerState::ContainerRunning as i32;
        c.status.state = cri::ContainerState::ContainerRunning as i32;
        c.status.started_at = now;
        done(Ok(()))
    }

    fn update_container_resources<'a>(
        &'a self,
        id: &'a str,
        linux: cri::LinuxContainerResources,
    ) -> CriFut<'a, ()> {
        let mut st = self.lock();
        if let Err(e) = st.enter("UpdateContainerResources", id) {
            return done(Err(e));
        }
        let Some(c) = st.containers.get_mut(id) else {
            return done(Err(not_found("UpdateContainerResources", id)));
        };
        if c.status.state == cri::ContainerState::ContainerExited as i32 {
            return done(Err(status(
                "UpdateContainerResources",
                tonic::Code::FailedPrecondition,
                "container is not running",
            )));
        }
        c.resources = Some(linux);
        done(Ok(()))
    }

    fn stop_container<'a>(&'a self, id: &'a str, grace_secs: i64) -> CriFut<'a, ()> {
        let mut st = self.lock();
        if let Err(e) = st.enter("StopContainer", format!("{id} {grace_secs}")) {
            return done(Err(e));
        }
        let now = st.now();
        let Some(c) = st.containers.get_mut(id) else {
            return done(Err(not_found("StopContainer", id)));
        };
        if c.status.state != cri::ContainerState::ContainerExited as i32 {
            kill(c, now);
        }
        done(Ok(()))
    }

    fn remove_container<'a>(&'a self, id: &'a str) -> CriFut<'a, ()> {
        let mut st = self.lock();
        if let Err(e) = st.enter("RemoveContainer", id) {
            return done(Err(e));
        }
        st.containers.remove(id);
        done(Ok(()))
    }

    fn list_containers(
        &self,
        label_selector: HashMap<String, String>,
    ) -> CriFut<'_, Vec<cri::Container>> {
        let mut st = self.lock();
        if let Err(e) = st.enter("ListContainers", "") {
            return done(Err(e));
        }
        done(Ok(st
            .containers
            .values()
            .filter(|c| matches(&c.container.labels, &label_selector))
            .map(|c| c.container.clone())
            .collect()))
    }

    fn container_status<'a>(&'a self, id: &'a str) -> CriFut<'a, cri::ContainerStatus> {
        let mut st = self.lock();
        if let Err(e) = st.enter("ContainerStatus", id) {
            return done(Err(e));
        }
        done(
            st.containers
                .get(id)
                .map(|c| c.status.clone())
                .ok_or_else(|| not_found("ContainerStatus", id)),
        )
    }

    fn exec_sync<'a>(
        &'a self,
        id: &'a str,
        cmd: Vec<String>,
        _timeout: Duration,
    ) -> CriFut<'a, cri::ExecSyncResponse> {
        let mut st = self.lock();
        if let Err(e) = st.enter("ExecSync", id) {
            return done(Err(e));
        }
        let Some(c) = st.containers.get(id) else {
            return done(Err(not_found("ExecSync", id)));
        };
        let name = c
            .container
            .labels
            .get(labels::CONTAINER_NAME_LABEL)
            .cloned()
            .unwrap_or_default();
        let exit_code = st.exec_exit.get(&name).copied().unwrap_or(0);
        st.execs.push((id.to_string(), cmd));
        done(Ok(cri::ExecSyncResponse {
            stdout: Vec::new(),
            stderr: if exit_code == 0 {
                Vec::new()
            } else {
                b"failed".to_vec()
            },
            exit_code,
        }))
    }

    fn exec(&self, req: cri::ExecRequest) -> CriFut<'_, String> {
        let mut st = self.lock();
        done(
            st.enter("Exec", req.container_id.clone())
                .map(|_| format!("http://fake/exec/{}", req.container_id)),
        )
    }

    fn attach(&self, req: cri::AttachRequest) -> CriFut<'_, String> {
        let mut st = self.lock();
        done(
            st.enter("Attach", req.container_id.clone())
                .map(|_| format!("http://fake/attach/{}", req.container_id)),
        )
    }

    fn port_forward(&self, req: cri::PortForwardRequest) -> CriFut<'_, String> {
        let mut st = self.lock();
        done(
            st.enter("PortForward", req.pod_sandbox_id.clone())
                .map(|_| format!("http://fake/portforward/{}", req.pod_sandbox_id)),
        )
    }

    fn reopen_container_log<'a>(&'a self, id: &'a str) -> CriFut<'a, ()> {
        let mut st = self.lock();
        done(st.enter("ReopenContainerLog", id))
    }

    fn list_container_stats(&self) -> CriFut<'_, Vec<cri::ContainerStats>> {
        let mut st = self.lock();
        done(st.enter("ListContainerStats", "").map(|_| st.stats.clone()))
    }
}

impl ImageService for FakeRuntime {
    fn image_status<'a>(&'a self, image: &'a str) -> CriFut<'a, Option<cri::Image>> {
        let mut st = self.lock();
        let answer = st
            .enter("ImageStatus", image)
            .map(|()| st.find_image(image).cloned());
        if st.slow_image_status {
            return Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                answer
            });
        }
        done(answer)
    }

    fn list_images(&self) -> CriFut<'_, Vec<cri::Image>> {
        let mut st = self.lock();
        done(st.enter("ListImages", "").map(|_| st.images.clone()))
    }

    fn remove_image<'a>(&'a self, image: &'a str) -> CriFut<'a, ()> {
        let mut st = self.lock();
        if let Err(e) = st.enter("RemoveImage", image) {
            return done(Err(e));
        }
        let Some(id) = st.find_image(image).map(|i| i.id.clone()) else {
            return done(Err(not_found("RemoveImage", image)));
        };
        st.images.retain(|i| i.id != id);
        done(Ok(()))
    }

    fn image_fs_info(&self) -> CriFut<'_, Vec<cri::FilesystemUsage>> {
        let mut st = self.lock();
        done(st.enter("ImageFsInfo", "").map(|_| st.fs_info.clone()))
    }

    /// Pulling finds the image (a test makes it fail with an injected error, or by asking
    /// for credentials the pull does not carry).
    fn pull_image<'a>(
        &'a self,
        image: &'a str,
        auth: Option<cri::AuthConfig>,
        _sandbox_config: Option<cri::PodSandboxConfig>,
    ) -> CriFut<'a, String> {
        let mut st = self.lock();
        if let Err(e) = st.enter("PullImage", image) {
            return done(Err(e));
        }
        st.pull_auths.push(auth.clone());
        if let Some((user, password)) = st.registry_auth.get(image).cloned() {
            let ok = auth.is_some_and(|a| a.username == user && a.password == password);
            if !ok {
                return done(Err(CriError::Status {
                    op: "PullImage",
                    code: tonic::Code::Unknown,
                    message: format!("pulling {image}: 401 Unauthorized"),
                }));
            }
        }
        if st.find_image(image).is_none() {
            st.images.push(cri::Image {
                id: format!("sha256:{image}"),
                repo_tags: vec![image.to_string()],
                size: 1,
                ..Default::default()
            });
        }
        done(Ok(format!("sha256:{image}")))
    }
}
