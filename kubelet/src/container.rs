//! The runtime's view of a pod (upstream `kubecontainer.PodStatus`), built only from CRI
//! answers: sandboxes and containers with their states, exit codes, times, and what the
//! kubelet wrote into their labels and annotations (restart count, spec hash). A restarted
//! kubelet rebuilds exactly this and so adopts what the runtime already runs.

/// Nanoseconds since the Unix epoch (the unit CRI uses for times).
pub type Nanos = i64;

pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// The current time in nanoseconds since the epoch.
pub fn now_nanos() -> Nanos {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// One container of a pod as the runtime reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    pub sandbox_id: String,
    pub state: ContainerState,
    pub created_at: Nanos,
    pub started_at: Nanos,
    pub finished_at: Nanos,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub image: String,
    pub image_ref: String,
    /// The `io.kubernetes.container.hash` annotation: which spec this container runs.
    pub hash: String,
    /// The `io.kubernetes.container.restartCount` annotation.
    pub restart_count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    Ready,
    NotReady,
}

/// One sandbox of a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxStatus {
    pub id: String,
    pub state: SandboxState,
    pub attempt: u32,
    pub created_at: Nanos,
    /// Pod IPs; the first is the primary one.
    pub ips: Vec<String>,
}

/// Everything the runtime holds for one pod UID.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodStatus {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// Newest first.
    pub sandboxes: Vec<SandboxStatus>,
    /// Newest first (by creation time).
    pub containers: Vec<ContainerStatus>,
}

impl PodStatus {
    /// Sorts sandboxes and containers newest first, as the rest of the kubelet expects.
    pub fn sort(&mut self) {
        self.sandboxes
            .sort_by_key(|s| std::cmp::Reverse((s.created_at, s.attempt)));
        self.containers
            .sort_by_key(|c| std::cmp::Reverse((c.created_at, c.restart_count)));
    }

    /// The newest container with this name.
    pub fn find_container(&self, name: &str) -> Option<&ContainerStatus> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// All containers with this name, newest first.
    pub fn containers_named<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a ContainerStatus> + 'a {
        self.containers.iter().filter(move |c| c.name == name)
    }

    /// The newest exited container with this name.
    pub fn last_exited(&self, name: &str) -> Option<&ContainerStatus> {
        self.containers
            .iter()
            .find(|c| c.name == name && c.state == ContainerState::Exited)
    }

    pub fn running_containers(&self) -> impl Iterator<Item = &ContainerStatus> {
        self.containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
    }
}
