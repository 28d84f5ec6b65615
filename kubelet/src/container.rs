//! The runtime's view of a pod (upstream `kubecontainer.PodStatus`), built only from CRI
//! answers: sandboxes and containers with their states, exit codes, times, and what the
//! kubelet wrote into their labels and annotations (restart count, spec hash). A restarted
//! kubelet rebuilds exactly this and so adopts what the runtime already runs.

/// Nanoseconds since the Unix epoch (the unit CRI uses for times).
pub(crate) type Nanos = i64;

pub(crate) const NANOS_PER_SEC: i64 = 1_000_000_000;

/// The current time in nanoseconds since the epoch.
pub(crate) fn now_nanos() -> Nanos {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// One container of a pod as the runtime reports it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ContainerStatus {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) sandbox_id: String,
    pub(crate) state: ContainerState,
    pub(crate) created_at: Nanos,
    pub(crate) started_at: Nanos,
    pub(crate) finished_at: Nanos,
    pub(crate) exit_code: i32,
    pub(crate) reason: String,
    pub(crate) message: String,
    pub(crate) image: String,
    pub(crate) image_ref: String,
    /// The `io.kubernetes.container.hash` annotation: which spec this container runs.
    pub(crate) hash: String,
    /// The `io.kubernetes.container.restartCount` annotation.
    pub(crate) restart_count: u32,
    /// What the kubelet last applied to this container's cgroup (its actuated resources,
    /// from the allocation manager); None when not known.
    pub(crate) resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// The user the process runs as, when the runtime reports it (CRI 1.31+).
    pub(crate) user: Option<k8s_openapi::api::core::v1::ContainerUser>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SandboxState {
    Ready,
    NotReady,
}

/// One sandbox of a pod.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SandboxStatus {
    pub(crate) id: String,
    pub(crate) state: SandboxState,
    pub(crate) attempt: u32,
    pub(crate) created_at: Nanos,
    /// Pod IPs; the first is the primary one.
    pub(crate) ips: Vec<String>,
}

/// Everything the runtime holds for one pod UID.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PodStatus {
    pub(crate) uid: String,
    pub(crate) name: String,
    pub(crate) namespace: String,
    /// Newest first.
    pub(crate) sandboxes: Vec<SandboxStatus>,
    /// Newest first (by creation time).
    pub(crate) containers: Vec<ContainerStatus>,
}

impl PodStatus {
    /// Sorts sandboxes and containers newest first, as the rest of the kubelet expects.
    pub(crate) fn sort(&mut self) {
        self.sandboxes
            .sort_by_key(|s| std::cmp::Reverse((s.created_at, s.attempt)));
        self.containers
            .sort_by_key(|c| std::cmp::Reverse((c.created_at, c.restart_count)));
    }

    /// The newest container with this name.
    pub(crate) fn find_container(&self, name: &str) -> Option<&ContainerStatus> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// All containers with this name, newest first.
    pub(crate) fn containers_named<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a ContainerStatus> + 'a {
        self.containers.iter().filter(move |c| c.name == name)
    }

    /// The newest exited container with this name.
    pub(crate) fn last_exited(&self, name: &str) -> Option<&ContainerStatus> {
        self.containers
            .iter()
            .find(|c| c.name == name && c.state == ContainerState::Exited)
    }
}
