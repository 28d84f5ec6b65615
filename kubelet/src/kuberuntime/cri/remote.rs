//! The production CRI client (upstream: the remote runtime and image services): tonic
//! over the runtime's unix socket, a timeout on every call, and reconnection with back-off
//! when the runtime goes away (containerd restarting): a failed call drops the channel, the
//! next call dials again, no sooner than the current back-off allows (100 ms doubling to 5 s).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodus_proto::runtime::v1 as cri;
use nodus_proto::runtime::v1::image_service_client::ImageServiceClient;
use nodus_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use tokio::sync::Mutex;
use tonic::transport::Channel;

use super::{CriError, CriFut, ImageService, RuntimeFeatures, RuntimeService, DEFAULT_TIMEOUT};

const LIST_TIMEOUT: Duration = Duration::from_secs(15);
const SANDBOX_TIMEOUT: Duration = Duration::from_secs(120);
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

struct State {
    channel: Option<Channel>,
    /// No dialing before this instant.
    next_dial: Instant,
    dial_backoff: Duration,
}

/// The tonic client (upstream: the remote runtime service).
pub(crate) struct RemoteRuntime {
    endpoint: Arc<str>,
    state: Arc<Mutex<State>>,
}

const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(100);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl RemoteRuntime {
    pub(crate) fn new(endpoint: &str) -> Self {
        RemoteRuntime {
            endpoint: endpoint.into(),
            state: Arc::new(Mutex::new(State {
                channel: None,
                next_dial: Instant::now(),
                dial_backoff: DIAL_BACKOFF_MIN,
            })),
        }
    }

    async fn channel(&self) -> Result<Channel, CriError> {
        let mut st = self.state.lock().await;
        if let Some(ch) = &st.channel {
            return Ok(ch.clone());
        }
        let now = Instant::now();
        if now < st.next_dial {
            // Wait out the back-off rather than failing at once; callers have timeouts.
            tokio::time::sleep(st.next_dial - now).await;
        }
        match nodus_proto::connect_with_timeout(&self.endpoint, Duration::from_secs(5)).await {
            Ok(ch) => {
                if st.dial_backoff > DIAL_BACKOFF_MIN {
                    tracing::info!(endpoint = %self.endpoint, "reconnected to the container runtime");
                }
                st.dial_backoff = DIAL_BACKOFF_MIN;
                st.channel = Some(ch.clone());
                Ok(ch)
            }
            Err(e) => {
                st.next_dial = Instant::now() + st.dial_backoff;
                st.dial_backoff = (st.dial_backoff * 2).min(DIAL_BACKOFF_MAX);
                Err(CriError::Connect {
                    endpoint: self.endpoint.to_string(),
                    detail: e.to_string(),
                })
            }
        }
    }

    async fn drop_channel(&self) {
        let mut st = self.state.lock().await;
        if st.channel.take().is_some() {
            tracing::warn!(endpoint = %self.endpoint, "lost the container runtime, will reconnect");
        }
    }

    async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, CriError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let r = self.call_inner(op, timeout, f).await;
        crate::metrics::global().runtime_op(op, r.is_err());
        r
    }

    async fn call_inner<T, F, Fut>(
        &self,
        op: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, CriError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let ch = self.channel().await?;
        match tokio::time::timeout(timeout, f(ch)).await {
            Err(_) => Err(CriError::Timeout { op, timeout }),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => {
                // Unavailable (and Unknown from a broken transport) mean the socket is gone.
                let gone = status.code() == tonic::Code::Unavailable
                    || (status.code() == tonic::Code::Unknown
                        && status.message().contains("transport"));
                if gone {
                    self.drop_channel().await;
                }
                Err(CriError::Status {
                    op,
                    code: status.code(),
                    message: status.message().to_string(),
                })
            }
        }
    }

    async fn version(&self) -> Result<cri::VersionResponse, CriError> {
        self.call("Version", LIST_TIMEOUT, |ch| async move {
            RuntimeServiceClient::new(ch)
                .version(cri::VersionRequest::default())
                .await
        })
        .await
    }

    /// One Status call; `verbose` adds containerd's `info` (its configuration).
    async fn status_response(&self, verbose: bool) -> Result<cri::StatusResponse, CriError> {
        self.call("Status", LIST_TIMEOUT, |ch| async move {
            RuntimeServiceClient::new(ch)
                .status(cri::StatusRequest { verbose })
                .await
        })
        .await
    }

    /// The runtime's conditions (RuntimeReady, NetworkReady), for the node's Ready condition.
    async fn status(&self) -> Result<cri::RuntimeStatus, CriError> {
        let r = self.status_response(false).await?;
        r.status.ok_or(CriError::Empty { op: "Status" })
    }

    async fn runtime_features(&self) -> Result<RuntimeFeatures, CriError> {
        let r = self.status_response(false).await?;
        Ok(RuntimeFeatures {
            handlers: r.runtime_handlers,
            features: r.features,
        })
    }

    async fn sandbox_image(&self) -> Result<Option<String>, CriError> {
        let r = self.status_response(true).await?;
        Ok(r.info.get("config").and_then(|c| {
            let config: serde_json::Value = serde_json::from_str(c).ok()?;
            Some(config.get("sandboxImage")?.as_str()?.to_string())
        }))
    }

    async fn run_pod_sandbox(
        &self,
        config: cri::PodSandboxConfig,
        runtime_handler: String,
    ) -> Result<String, CriError> {
        let r = self
            .call("RunPodSandbox", SANDBOX_TIMEOUT, |ch| async move {
                RuntimeServiceClient::new(ch)
                    .run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(config),
                        runtime_handler,
                    })
                    .await
            })
            .await?;
        Ok(r.pod_sandbox_id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let pod_sandbox_id = id.to_string();
        self.call("StopPodSandbox", SANDBOX_TIMEOUT, |ch| async move {
            RuntimeServiceClient::new(ch)
                .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id })
                .await
        })
        .await
        .map(|_| ())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let pod_sandbox_id = id.to_string();
        self.call("RemovePodSandbox", SANDBOX_TIMEOUT, |ch| async move {
            RuntimeServiceClient::new(ch)
                .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id })
                .await
        })
        .await
        .map(|_| ())
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus, CriError> {
        let pod_sandbox_id = id.to_string();
        let r = self
            .call("PodSandboxStatus", DEFAULT_TIMEOUT, |ch| async move {
                RuntimeServiceClient::new(ch)
                    .pod_sandbox_status(cri::PodSandboxStatusRequest {
                        pod_sandbox_id,
                        verbose: false,
                    })
                    .await
            })
            .await?;
        r.status.ok_or(CriError::Empty {
            op: "PodSandboxStatus",
        })
    }

    /// Lists sandboxes, optionally only those with these labels.
    async fn list_pod_sandbox(
        &self,
        label_selector: HashMap<String, String>,
    ) -> Result<Vec<cri::PodSandbox>, CriError> {
        let r = self
            .call("ListPodSandbox", LIST_TIMEOUT, |ch| async move {
                RuntimeServiceClient::new(ch)
                    .list_pod_sandbox(cri::ListPodSandboxRequest {
                        filter: Some(cri::PodSandboxFilter {
                            label_selector,
                            ..Default::default()
                        }),
                    })
                    .await
            })
            .await?;
        Ok(r.items)
    }

    async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let pod_sandbox_id = pod_sandbox_id.to_string();
        let r = self
            .call("CreateContainer", DEFAULT_TIMEOUT, |ch| async move {
                RuntimeServiceClient::new(ch)
                    .create_container(cri::CreateContainerRequest {
                        pod_sandbox_id,
                        config: Some(config),
                        sandbox_config: Some(sandbox_config),
                    })
                    .await
            })
            .await?;
        Ok(r.container_id)
    }

    async fn start_container(&self, id: &str) -> Result<(), CriError> {
        let container_id = id.to_string();
        self.call("StartContainer", DEFAULT_TIMEOUT, |ch| async move {
            RuntimeServiceClient::new(ch)
                .start_container(cri::StartContainerRequest { container_id })
                .await
        })
        .await
        .map(|_| ())
    }

    async fn update_container_resources(
        &self,
        id: &str,
        linux: cri::LinuxContainerResources,
    ) -> Result<(), CriError> {
        let container_id = id.to_string();
        self.call(
            "UpdateContainerResources",
            DEFAULT_TIMEOUT,
            |ch| async move {
                RuntimeServiceClient::new(ch)
                    .update_container_resources(cri::UpdateContainerResourcesRequest {
                        container_id,
                        linux: Some(linux),
                        ..Default::default()
                    })
                    .await
            },
        )
        .await
        .map(|_| ())
    }

    /// Stops a container: the stop signal, then SIGKILL after `grace_secs`.
    async fn stop_container(&self, id: &str, grace_secs: i64) -> Result<(), CriError> {
        let container_id = id.to_string();
        let timeout = Duration::from_secs(grace_secs.max(0) as u64) + DEFAULT_TIMEOUT;
        self.call("StopContainer", timeout, |ch| async move {
            RuntimeServiceClient::new(ch)
                .stop_container(cri::StopContainerRequest {
                    container_id,
                    timeout: grace_secs,
                })
                .await
        })
        .await
        .map(|_| ())
    }

    async fn remove_container(&self, id: &str) -> Result<(), CriError> {
        let container_id = id.to_string();
        self.call("RemoveContainer", DEFAULT_TIMEOUT, |ch| async move {
            RuntimeServiceClient::new(ch)
                .remove_container(cri::RemoveContainerRequest { container_id })
                .await
        })
        .await
        .map(|_| ())
    }

    /// Lists containers, optionally only those with these labels.
    async fn list_containers(
        &self,
        label_selector: HashMap<String, String>,
    ) -> Result<Vec<cri::Container>, CriError> {
        let r = self
            .call("ListContainers", LIST_TIMEOUT, |ch| async move {
                RuntimeServiceClient::new(ch)
                    .list_containers(cri::ListContainersRequest {
                        filter: Some(cri::ContainerFilter {
                            label_selector,
                            ..Default::default()
                        }),
                    })
                    .await
            })
            .await?;
        Ok(r.containers)
    }

    async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, CriError> {
        let container_id = id.to_string();
        let r = self
            .call("ContainerStatus", DEFAULT_TIMEOUT, |ch| async move {
                RuntimeServiceClient::new(ch)
                    .container_status(cri::ContainerStatusRequest {
                        container_id,
                        verbose: false,
                    })
                    .await
            })
            .await?;
        r.status.ok_or(CriError::Empty {
            op: "ContainerStatus",
        })
    }

    /// The image if the runtime has it.
    async fn image_status(&self, image: &str) -> Result<Option<cri::Image>, CriError> {
        let spec = cri::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        };
        let r = self
            .call("ImageStatus", DEFAULT_TIMEOUT, |ch| async move {
                ImageServiceClient::new(ch)
                    .image_status(cri::ImageStatusRequest {
                        image: Some(spec),
                        verbose: false,
                    })
                    .await
            })
            .await?;
        Ok(r.image)
    }

    /// Runs `cmd` in a container and waits for it (up to `timeout`).
    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<cri::ExecSyncResponse, CriError> {
        let container_id = id.to_string();
        let secs = timeout.as_secs().max(1) as i64;
        self.call(
            "ExecSync",
            timeout + Duration::from_secs(5),
            |ch| async move {
                RuntimeServiceClient::new(ch)
                    .exec_sync(cri::ExecSyncRequest {
                        container_id,
                        cmd,
                        timeout: secs,
                    })
                    .await
            },
        )
        .await
    }

    /// Prepares a streaming exec; the answer is the runtime's streaming URL.
    async fn exec(&self, req: cri::ExecRequest) -> Result<String, CriError> {
        self.call("Exec", DEFAULT_TIMEOUT, |ch| async move {
            RuntimeServiceClient::new(ch).exec(req).await
        })
        .await
        .map(|r| r.url)
    }

    /// Prepares a streaming attach.
    async fn attach(&self, req: cri::AttachRequest) -> Result<String, CriError> {
        self.call("Attach", DEFAULT_TIMEOUT, |ch| async move {
            RuntimeServiceClient::new(ch).attach(req).await
        })
        .await
        .map(|r| r.url)
    }

    /// Prepares a streaming port forward into a sandbox's network namespace.
    async fn port_forward(&self, req: cri::PortForwardRequest) -> Result<String, CriError> {
        self.call("PortForward", DEFAULT_TIMEOUT, |ch| async move {
            RuntimeServiceClient::new(ch).port_forward(req).await
        })
        .await
        .map(|r| r.url)
    }

    /// Asks the runtime to reopen a container's log file (after the kubelet renamed it).
    async fn reopen_container_log(&self, id: &str) -> Result<(), CriError> {
        let container_id = id.to_string();
        self.call("ReopenContainerLog", DEFAULT_TIMEOUT, |ch| async move {
            RuntimeServiceClient::new(ch)
                .reopen_container_log(cri::ReopenContainerLogRequest { container_id })
                .await
        })
        .await
        .map(|_| ())
    }

    /// CPU and memory statistics of every container.
    async fn list_container_stats(&self) -> Result<Vec<cri::ContainerStats>, CriError> {
        let r = self
            .call("ListContainerStats", LIST_TIMEOUT, |ch| async move {
                RuntimeServiceClient::new(ch)
                    .list_container_stats(cri::ListContainerStatsRequest { filter: None })
                    .await
            })
            .await?;
        Ok(r.stats)
    }

    /// Every image the runtime holds.
    async fn list_images(&self) -> Result<Vec<cri::Image>, CriError> {
        let r = self
            .call("ListImages", LIST_TIMEOUT, |ch| async move {
                ImageServiceClient::new(ch)
                    .list_images(cri::ListImagesRequest { filter: None })
                    .await
            })
            .await?;
        Ok(r.images)
    }

    async fn remove_image(&self, image: &str) -> Result<(), CriError> {
        let spec = cri::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        };
        self.call("RemoveImage", DEFAULT_TIMEOUT, |ch| async move {
            ImageServiceClient::new(ch)
                .remove_image(cri::RemoveImageRequest { image: Some(spec) })
                .await
        })
        .await
        .map(|_| ())
    }

    /// The image filesystems' usage.
    async fn image_fs_info(&self) -> Result<Vec<cri::FilesystemUsage>, CriError> {
        let r = self
            .call("ImageFsInfo", LIST_TIMEOUT, |ch| async move {
                ImageServiceClient::new(ch)
                    .image_fs_info(cri::ImageFsInfoRequest {})
                    .await
            })
            .await?;
        Ok(r.image_filesystems)
    }

    /// Pulls an image; returns its reference.
    async fn pull_image(
        &self,
        image: &str,
        auth: Option<cri::AuthConfig>,
        sandbox_config: Option<cri::PodSandboxConfig>,
    ) -> Result<String, CriError> {
        let spec = cri::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        };
        let r = self
            .call("PullImage", PULL_TIMEOUT, |ch| async move {
                ImageServiceClient::new(ch)
                    .pull_image(cri::PullImageRequest {
                        image: Some(spec),
                        auth,
                        sandbox_config,
                    })
                    .await
            })
            .await?;
        Ok(r.image_ref)
    }
}

impl RuntimeService for RemoteRuntime {
    fn version(&self) -> CriFut<'_, cri::VersionResponse> {
        Box::pin(self.version())
    }
    fn status(&self) -> CriFut<'_, cri::RuntimeStatus> {
        Box::pin(self.status())
    }
    fn sandbox_image(&self) -> CriFut<'_, Option<String>> {
        Box::pin(self.sandbox_image())
    }
    fn runtime_features(&self) -> CriFut<'_, RuntimeFeatures> {
        Box::pin(self.runtime_features())
    }
    fn run_pod_sandbox(
        &self,
        config: cri::PodSandboxConfig,
        runtime_handler: String,
    ) -> CriFut<'_, String> {
        Box::pin(self.run_pod_sandbox(config, runtime_handler))
    }
    fn stop_pod_sandbox<'a>(&'a self, id: &'a str) -> CriFut<'a, ()> {
        Box::pin(self.stop_pod_sandbox(id))
    }
    fn remove_pod_sandbox<'a>(&'a self, id: &'a str) -> CriFut<'a, ()> {
        Box::pin(self.remove_pod_sandbox(id))
    }
    fn pod_sandbox_status<'a>(&'a self, id: &'a str) -> CriFut<'a, cri::PodSandboxStatus> {
        Box::pin(self.pod_sandbox_status(id))
    }
    fn list_pod_sandbox(
        &self,
        label_selector: HashMap<String, String>,
    ) -> CriFut<'_, Vec<cri::PodSandbox>> {
        Box::pin(self.list_pod_sandbox(label_selector))
    }
    fn create_container<'a>(
        &'a self,
        pod_sandbox_id: &'a str,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> CriFut<'a, String> {
        Box::pin(self.create_container(pod_sandbox_id, config, sandbox_config))
    }
    fn start_container<'a>(&'a self, id: &'a str) -> CriFut<'a, ()> {
        Box::pin(self.start_container(id))
    }
    fn update_container_resources<'a>(
        &'a self,
        id: &'a str,
        linux: cri::LinuxContainerResources,
    ) -> CriFut<'a, ()> {
        Box::pin(self.update_container_resources(id, linux))
    }
    fn stop_container<'a>(&'a self, id: &'a str, grace_secs: i64) -> CriFut<'a, ()> {
        Box::pin(self.stop_container(id, grace_secs))
    }
    fn remove_container<'a>(&'a self, id: &'a str) -> CriFut<'a, ()> {
        Box::pin(self.remove_container(id))
    }
    fn list_containers(
        &self,
        label_selector: HashMap<String, String>,
    ) -> CriFut<'_, Vec<cri::Container>> {
        Box::pin(self.list_containers(label_selector))
    }
    fn container_status<'a>(&'a self, id: &'a str) -> CriFut<'a, cri::ContainerStatus> {
        Box::pin(self.container_status(id))
    }
    fn exec_sync<'a>(
        &'a self,
        id: &'a str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> CriFut<'a, cri::ExecSyncResponse> {
        Box::pin(self.exec_sync(id, cmd, timeout))
    }
    fn exec(&self, req: cri::ExecRequest) -> CriFut<'_, String> {
        Box::pin(self.exec(req))
    }
    fn attach(&self, req: cri::AttachRequest) -> CriFut<'_, String> {
        Box::pin(self.attach(req))
    }
    fn port_forward(&self, req: cri::PortForwardRequest) -> CriFut<'_, String> {
        Box::pin(self.port_forward(req))
    }
    fn reopen_container_log<'a>(&'a self, id: &'a str) -> CriFut<'a, ()> {
        Box::pin(self.reopen_container_log(id))
    }
    fn list_container_stats(&self) -> CriFut<'_, Vec<cri::ContainerStats>> {
        Box::pin(self.list_container_stats())
    }
}

impl ImageService for RemoteRuntime {
    fn image_status<'a>(&'a self, image: &'a str) -> CriFut<'a, Option<cri::Image>> {
        Box::pin(self.image_status(image))
    }
    fn list_images(&self) -> CriFut<'_, Vec<cri::Image>> {
        Box::pin(self.list_images())
    }
    fn remove_image<'a>(&'a self, image: &'a str) -> CriFut<'a, ()> {
        Box::pin(self.remove_image(image))
    }
    fn image_fs_info(&self) -> CriFut<'_, Vec<cri::FilesystemUsage>> {
        Box::pin(self.image_fs_info())
    }
    fn pull_image<'a>(
        &'a self,
        image: &'a str,
        auth: Option<cri::AuthConfig>,
        sandbox_config: Option<cri::PodSandboxConfig>,
    ) -> CriFut<'a, String> {
        Box::pin(self.pull_image(image, auth, sandbox_config))
    }
}
