//! The CRI seam (upstream `internalapi`): [`RuntimeService`] and [`ImageService`], the
//! calls the kubelet makes to the container runtime, implemented by the tonic client
//! ([`remote::RemoteRuntime`]) in production and by an in-memory fake in unit tests.
//! [`Cri`] is the cheap-to-clone handle the rest of the kubelet passes around.

pub(crate) mod remote;

#[cfg(test)]
pub(crate) mod fake;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use nodus_proto::runtime::v1 as cri;

/// Default timeout of a CRI call (upstream's runtime request timeout is 2 minutes; most
/// calls answer in milliseconds).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CriError {
    #[error("connecting to {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    #[error("CRI {op}: timed out after {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("CRI {op}: {code:?}: {message}")]
    Status {
        op: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("CRI {op}: empty answer")]
    Empty { op: &'static str },
}

impl CriError {
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(
            self,
            CriError::Status {
                code: tonic::Code::NotFound,
                ..
            }
        )
    }
}

/// What CRI Status says about the runtime's handlers and its own features.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RuntimeFeatures {
    pub(crate) handlers: Vec<cri::RuntimeHandler>,
    pub(crate) features: Option<cri::RuntimeFeatures>,
}

/// The future of one CRI call.
pub(crate) type CriFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, CriError>> + Send + 'a>>;

/// Sandbox and container calls (upstream `internalapi.RuntimeService`).
pub(crate) trait RuntimeService: Send + Sync {
    fn version(&self) -> CriFut<'_, cri::VersionResponse>;
    /// The runtime's conditions (RuntimeReady, NetworkReady).
    fn status(&self) -> CriFut<'_, cri::RuntimeStatus>;
    /// The sandbox image the runtime is configured with (containerd's `sandboxImage`, in
    /// its verbose Status), if it says.
    fn sandbox_image(&self) -> CriFut<'_, Option<String>>;
    /// The runtime handlers and features Status reports (CRI 1.30+; none from older
    /// runtimes).
    fn runtime_features(&self) -> CriFut<'_, RuntimeFeatures>;
    fn run_pod_sandbox(
        &self,
        config: cri::PodSandboxConfig,
        runtime_handler: String,
    ) -> CriFut<'_, String>;
    fn stop_pod_sandbox<'a>(&'a self, id: &'a str) -> CriFut<'a, ()>;
    fn remove_pod_sandbox<'a>(&'a self, id: &'a str) -> CriFut<'a, ()>;
    fn pod_sandbox_status<'a>(&'a self, id: &'a str) -> CriFut<'a, cri::PodSandboxStatus>;
    /// Sandboxes, only those with these labels when the selector is not empty.
    fn list_pod_sandbox(
        &self,
        label_selector: HashMap<String, String>,
    ) -> CriFut<'_, Vec<cri::PodSandbox>>;
    fn create_container<'a>(
        &'a self,
        pod_sandbox_id: &'a str,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> CriFut<'a, String>;
    fn start_container<'a>(&'a self, id: &'a str) -> CriFut<'a, ()>;
    /// Resizes a running container in place.
    fn update_container_resources<'a>(
        &'a self,
        id: &'a str,
        linux: cri::LinuxContainerResources,
    ) -> CriFut<'a, ()>;
    /// The stop signal, then SIGKILL after `grace_secs`.
    fn stop_container<'a>(&'a self, id: &'a str, grace_secs: i64) -> CriFut<'a, ()>;
    fn remove_container<'a>(&'a self, id: &'a str) -> CriFut<'a, ()>;
    /// Containers, only those with these labels when the selector is not empty.
    fn list_containers(
        &self,
        label_selector: HashMap<String, String>,
    ) -> CriFut<'_, Vec<cri::Container>>;
    fn container_status<'a>(&'a self, id: &'a str) -> CriFut<'a, cri::ContainerStatus>;
    /// Runs `cmd` in a container and waits for it (up to `timeout`).
    fn exec_sync<'a>(
        &'a self,
        id: &'a str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> CriFut<'a, cri::ExecSyncResponse>;
    /// Prepares a streaming exec; the answer is the runtime's streaming URL.
    fn exec(&self, req: cri::ExecRequest) -> CriFut<'_, String>;
    fn attach(&self, req: cri::AttachRequest) -> CriFut<'_, String>;
    fn port_forward(&self, req: cri::PortForwardRequest) -> CriFut<'_, String>;
    fn reopen_container_log<'a>(&'a self, id: &'a str) -> CriFut<'a, ()>;
    fn list_container_stats(&self) -> CriFut<'_, Vec<cri::ContainerStats>>;
}

/// Image calls (upstream `internalapi.ImageManagerService`).
pub(crate) trait ImageService: Send + Sync {
    /// The image if the runtime has it.
    fn image_status<'a>(&'a self, image: &'a str) -> CriFut<'a, Option<cri::Image>>;
    fn list_images(&self) -> CriFut<'_, Vec<cri::Image>>;
    fn remove_image<'a>(&'a self, image: &'a str) -> CriFut<'a, ()>;
    fn image_fs_info(&self) -> CriFut<'_, Vec<cri::FilesystemUsage>>;
    /// Pulls an image with the registry credentials given (None: anonymously); returns its
    /// reference.
    fn pull_image<'a>(
        &'a self,
        image: &'a str,
        auth: Option<cri::AuthConfig>,
        sandbox_config: Option<cri::PodSandboxConfig>,
    ) -> CriFut<'a, String>;
}

/// A cheap-to-clone handle on the runtime and image services.
#[derive(Clone)]
pub(crate) struct Cri {
    runtime: Arc<dyn RuntimeService>,
    images: Arc<dyn ImageService>,
}

impl Cri {
    /// The tonic client of the runtime at `endpoint` (connects on first use).
    pub(crate) fn new(endpoint: &str) -> Self {
        let remote = Arc::new(remote::RemoteRuntime::new(endpoint));
        Cri {
            runtime: remote.clone(),
            images: remote,
        }
    }

    #[cfg(test)]
    /// A handle on other implementations (the fake in tests).
    pub(crate) fn from_services(
        runtime: Arc<dyn RuntimeService>,
        images: Arc<dyn ImageService>,
    ) -> Self {
        Cri { runtime, images }
    }
    pub(crate) async fn version(&self) -> Result<cri::VersionResponse, CriError> {
        self.runtime.version().await
    }

    /// The runtime's conditions (RuntimeReady, NetworkReady), for the node's Ready condition.
    pub(crate) async fn status(&self) -> Result<cri::RuntimeStatus, CriError> {
        self.runtime.status().await
    }

    pub(crate) async fn sandbox_image(&self) -> Result<Option<String>, CriError> {
        self.runtime.sandbox_image().await
    }

    pub(crate) async fn runtime_features(&self) -> Result<RuntimeFeatures, CriError> {
        self.runtime.runtime_features().await
    }

    pub(crate) async fn run_pod_sandbox(
        &self,
        config: cri::PodSandboxConfig,
        runtime_handler: String,
    ) -> Result<String, CriError> {
        self.runtime.run_pod_sandbox(config, runtime_handler).await
    }

    pub(crate) async fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        self.runtime.stop_pod_sandbox(id).await
    }

    pub(crate) async fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        self.runtime.remove_pod_sandbox(id).await
    }

    pub(crate) async fn pod_sandbox_status(
        &self,
        id: &str,
    ) -> Result<cri::PodSandboxStatus, CriError> {
        self.runtime.pod_sandbox_status(id).await
    }

    /// Lists sandboxes, optionally only those with these labels.
    pub(crate) async fn list_pod_sandbox(
        &self,
        label_selector: HashMap<String, String>,
    ) -> Result<Vec<cri::PodSandbox>, CriError> {
        self.runtime.list_pod_sandbox(label_selector).await
    }

    pub(crate) async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String, CriError> {
        self.runtime
            .create_container(pod_sandbox_id, config, sandbox_config)
            .await
    }

    pub(crate) async fn start_container(&self, id: &str) -> Result<(), CriError> {
        self.runtime.start_container(id).await
    }

    /// Resizes a running container in place.
    pub(crate) async fn update_container_resources(
        &self,
        id: &str,
        linux: cri::LinuxContainerResources,
    ) -> Result<(), CriError> {
        self.runtime.update_container_resources(id, linux).await
    }

    /// Stops a container: the stop signal, then SIGKILL after `grace_secs`.
    pub(crate) async fn stop_container(&self, id: &str, grace_secs: i64) -> Result<(), CriError> {
        self.runtime.stop_container(id, grace_secs).await
    }

    pub(crate) async fn remove_container(&self, id: &str) -> Result<(), CriError> {
        self.runtime.remove_container(id).await
    }

    /// Lists containers, optionally only those with these labels.
    pub(crate) async fn list_containers(
        &self,
        label_selector: HashMap<String, String>,
    ) -> Result<Vec<cri::Container>, CriError> {
        self.runtime.list_containers(label_selector).await
    }

    pub(crate) async fn container_status(
        &self,
        id: &str,
    ) -> Result<cri::ContainerStatus, CriError> {
        self.runtime.container_status(id).await
    }

    /// The image's ID if the runtime has it.
    pub(crate) async fn image_status(&self, image: &str) -> Result<Option<cri::Image>, CriError> {
        self.images.image_status(image).await
    }

    /// Runs `cmd` in a container and waits for it (up to `timeout`).
    pub(crate) async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<cri::ExecSyncResponse, CriError> {
        self.runtime.exec_sync(id, cmd, timeout).await
    }

    /// Prepares a streaming exec; the answer is the runtime's streaming URL.
    pub(crate) async fn exec(&self, req: cri::ExecRequest) -> Result<String, CriError> {
        self.runtime.exec(req).await
    }

    /// Prepares a streaming attach.
    pub(crate) async fn attach(&self, req: cri::AttachRequest) -> Result<String, CriError> {
        self.runtime.attach(req).await
    }

    /// Prepares a streaming port forward into a sandbox's network namespace.
    pub(crate) async fn port_forward(
        &self,
        req: cri::PortForwardRequest,
    ) -> Result<String, CriError> {
        self.runtime.port_forward(req).await
    }

    /// Asks the runtime to reopen a container's log file (after the kubelet renamed it).
    pub(crate) async fn reopen_container_log(&self, id: &str) -> Result<(), CriError> {
        self.runtime.reopen_container_log(id).await
    }

    /// CPU and memory statistics of every container.
    pub(crate) async fn list_container_stats(&self) -> Result<Vec<cri::ContainerStats>, CriError> {
        self.runtime.list_container_stats().await
    }

    /// Every image the runtime holds.
    pub(crate) async fn list_images(&self) -> Result<Vec<cri::Image>, CriError> {
        self.images.list_images().await
    }

    pub(crate) async fn remove_image(&self, image: &str) -> Result<(), CriError> {
        self.images.remove_image(image).await
    }

    /// The image filesystems' usage.
    pub(crate) async fn image_fs_info(&self) -> Result<Vec<cri::FilesystemUsage>, CriError> {
        self.images.image_fs_info().await
    }

    /// The user an image runs as: (uid, username) from ImageStatus.
    pub(crate) async fn image_user(&self, image: &str) -> Result<(Option<i64>, String), CriError> {
        let img = self.images.image_status(image).await?.unwrap_or_default();
        Ok((img.uid.map(|u| u.value), img.username))
    }

    /// Pulls an image with the registry credentials given (None: anonymously); returns its
    /// reference.
    pub(crate) async fn pull_image(
        &self,
        image: &str,
        auth: Option<cri::AuthConfig>,
        sandbox_config: Option<cri::PodSandboxConfig>,
    ) -> Result<String, CriError> {
        self.images.pull_image(image, auth, sandbox_config).await
    }
}
