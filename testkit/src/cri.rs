//! CRI requests for tests and benchmarks: builders for the fields every caller sets (with
//! defaults the caller then adjusts), and the few call sequences they all make
//! (run a sandbox, create and start a container, wait for an exit, tear a pod down).
//!
//! Errors name the CRI call ([`Error::Cri`]); callers add what they know (a daemon's log).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use nodus_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use nodus_proto::runtime::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ExecSyncResponse, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::Channel;

use crate::{Error, Result, BUSYBOX_IMAGE};

/// The CRI runtime client the helpers take.
pub type Runtime = RuntimeServiceClient<Channel>;

fn cri(call: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |status| Error::Cri { call, status }
}

/// Awaits a CRI call whose answer carries nothing a caller needs.
async fn unit<T>(
    call: &'static str,
    answer: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<()> {
    answer.await.map_err(cri(call))?;
    Ok(())
}

/// A pod sandbox config as the kubelet makes one: metadata (attempt 0), hostname, log
/// directory, the `io.kubernetes.pod.*` labels, a PID namespace per container.
pub fn sandbox_config(name: &str, uid: &str, namespace: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.to_string(),
            namespace: namespace.to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_dir.display().to_string(),
        labels: HashMap::from([
            ("io.kubernetes.pod.name".into(), name.to_string()),
            ("io.kubernetes.pod.namespace".into(), namespace.to_string()),
            ("io.kubernetes.pod.uid".into(), uid.to_string()),
        ]),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(pid_per_container()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Namespace options with a PID namespace per container (the kubelet's default).
pub fn pid_per_container() -> NamespaceOption {
    NamespaceOption {
        pid: NamespaceMode::Container as i32,
        ..Default::default()
    }
}

pub fn image(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

/// A container config: metadata (attempt 0), image, command, log path (relative to the
/// sandbox's log directory); nothing else set.
pub fn container_config(
    name: &str,
    image_ref: &str,
    command: &[&str],
    log_path: &str,
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(image(image_ref)),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: log_path.to_string(),
        ..Default::default()
    }
}

/// Container `name` running busybox `sh -c script`, logging to `<name>/0.log`.
pub fn busybox_sh(name: &str, script: &str) -> ContainerConfig {
    container_config(name, BUSYBOX_IMAGE, &["sh", "-c", script], &log_path(name))
}

/// The log path the kubelet gives attempt 0 of container `name`: `<name>/0.log`.
pub fn log_path(name: &str) -> String {
    format!("{name}/0.log")
}

/// The CRI log file of attempt 0 of container `name` of a sandbox.
pub fn log_file(sandbox: &PodSandboxConfig, name: &str) -> std::path::PathBuf {
    Path::new(&sandbox.log_directory).join(log_path(name))
}

/// The CRI log of attempt 0 of container `name` once it exists and contains `needle`;
/// fails after `timeout` naming the log as last read.
pub async fn wait_log(
    sandbox: &PodSandboxConfig,
    name: &str,
    needle: &str,
    timeout: Duration,
) -> Result<String> {
    let file = log_file(sandbox, name);
    let what = format!("{needle:?} in {}", file.display());
    let log = crate::try_wait_until_async(timeout, &what, async || {
        match std::fs::read_to_string(&file) {
            Ok(log) if log.contains(needle) => Ok(log),
            Ok(log) => Err(format!("{log:?}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    Ok(log)
}

pub fn run_pod_sandbox_request(config: &PodSandboxConfig, handler: &str) -> RunPodSandboxRequest {
    RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.to_string(),
    }
}

pub fn create_container_request(
    sandbox_id: &str,
    config: ContainerConfig,
    sandbox: &PodSandboxConfig,
) -> CreateContainerRequest {
    CreateContainerRequest {
        pod_sandbox_id: sandbox_id.to_string(),
        config: Some(config),
        sandbox_config: Some(sandbox.clone()),
    }
}

/// RunPodSandbox on runtime handler `handler` ("" for the default); the sandbox's ID.
pub async fn run_sandbox(
    rt: &mut Runtime,
    config: &PodSandboxConfig,
    handler: &str,
) -> Result<String> {
    Ok(rt
        .run_pod_sandbox(run_pod_sandbox_request(config, handler))
        .await
        .map_err(cri("RunPodSandbox"))?
        .into_inner()
        .pod_sandbox_id)
}

/// CreateContainer in sandbox `sandbox_id`; the container's ID.
pub async fn create_container(
    rt: &mut Runtime,
    sandbox_id: &str,
    sandbox: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String> {
    Ok(rt
        .create_container(create_container_request(sandbox_id, config, sandbox))
        .await
        .map_err(cri("CreateContainer"))?
        .into_inner()
        .container_id)
}

pub async fn start_container(rt: &mut Runtime, id: &str) -> Result<()> {
    let request = StartContainerRequest {
        container_id: id.to_string(),
    };
    unit("StartContainer", rt.start_container(request)).await
}

/// CreateContainer then StartContainer; the container's ID.
pub async fn create_and_start(
    rt: &mut Runtime,
    sandbox_id: &str,
    sandbox: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String> {
    let id = create_container(rt, sandbox_id, sandbox, config).await?;
    start_container(rt, &id).await?;
    Ok(id)
}

pub async fn container_status(rt: &mut Runtime, id: &str) -> Result<ContainerStatus> {
    rt.container_status(ContainerStatusRequest {
        container_id: id.to_string(),
        verbose: false,
    })
    .await
    .map_err(cri("ContainerStatus"))?
    .into_inner()
    .status
    .ok_or_else(|| Error::Command {
        command: format!("ContainerStatus {id}"),
        detail: "no status in the answer".into(),
    })
}

/// The container's status once it has exited; fails after `timeout` (naming the last
/// status seen).
pub async fn wait_exited(rt: &mut Runtime, id: &str, timeout: Duration) -> Result<ContainerStatus> {
    let what = format!("container {id} to exit");
    let st = crate::try_wait_until_async(timeout, &what, async || {
        match container_status(rt, id).await {
            Ok(st) if st.state == ContainerState::ContainerExited as i32 => Ok(st),
            Ok(st) => Err(format!("{st:?}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    Ok(st)
}

/// ExecSync of `cmd` with a timeout in seconds.
pub async fn exec_sync(
    rt: &mut Runtime,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<ExecSyncResponse, tonic::Status> {
    rt.exec_sync(ExecSyncRequest {
        container_id: id.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    })
    .await
    .map(tonic::Response::into_inner)
}

/// ExecSync of `sh -c script` (`timeout` in seconds); stdout then stderr, as text.
pub async fn exec_sh(rt: &mut Runtime, id: &str, script: &str, timeout: i64) -> Result<String> {
    let r = exec_sync(rt, id, &["sh", "-c", script], timeout)
        .await
        .map_err(cri("ExecSync"))?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    ))
}

/// StopContainer with a grace period of `timeout` seconds.
pub async fn stop_container(rt: &mut Runtime, id: &str, timeout: i64) -> Result<()> {
    let request = StopContainerRequest {
        container_id: id.to_string(),
        timeout,
    };
    unit("StopContainer", rt.stop_container(request)).await
}

/// StopContainer (grace `timeout` seconds) then RemoveContainer.
pub async fn stop_and_remove_container(rt: &mut Runtime, id: &str, timeout: i64) -> Result<()> {
    stop_container(rt, id, timeout).await?;
    remove_container(rt, id).await
}

pub async fn remove_container(rt: &mut Runtime, id: &str) -> Result<()> {
    let request = RemoveContainerRequest {
        container_id: id.to_string(),
    };
    unit("RemoveContainer", rt.remove_container(request)).await
}

pub async fn stop_sandbox(rt: &mut Runtime, id: &str) -> Result<()> {
    let request = StopPodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    };
    unit("StopPodSandbox", rt.stop_pod_sandbox(request)).await
}

pub async fn remove_sandbox(rt: &mut Runtime, id: &str) -> Result<()> {
    let request = RemovePodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    };
    unit("RemovePodSandbox", rt.remove_pod_sandbox(request)).await
}

/// StopPodSandbox then RemovePodSandbox (which removes its containers too).
pub async fn stop_and_remove_sandbox(rt: &mut Runtime, id: &str) -> Result<()> {
    stop_sandbox(rt, id).await?;
    remove_sandbox(rt, id).await
}

/// RemoveContainer of each of `containers` (stopped ones), then StopPodSandbox and
/// RemovePodSandbox: a pod torn down as the kubelet does it.
pub async fn remove_pod(rt: &mut Runtime, sandbox_id: &str, containers: &[&str]) -> Result<()> {
    for id in containers {
        remove_container(rt, id).await?;
    }
    stop_and_remove_sandbox(rt, sandbox_id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_what_the_kubelet_sets() {
        let s = sandbox_config("web", "u-1", "ns", Path::new("/logs/ns_web_u-1"));
        let m = s.metadata.as_ref().unwrap();
        assert_eq!(
            (m.name.as_str(), m.uid.as_str(), m.namespace.as_str()),
            ("web", "u-1", "ns")
        );
        assert_eq!(s.labels["io.kubernetes.pod.uid"], "u-1");
        assert_eq!(s.log_directory, "/logs/ns_web_u-1");
        let pid = s
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap()
            .pid;
        assert_eq!(pid, NamespaceMode::Container as i32);
        let c = busybox_sh("app", "echo hi");
        assert_eq!(c.command, ["sh", "-c", "echo hi"]);
        assert_eq!(c.log_path, "app/0.log");
        assert_eq!(c.image.unwrap().image, BUSYBOX_IMAGE);
    }
}
