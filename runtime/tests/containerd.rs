//! nodus-runtime driven by containerd: the private containerd of nodus-testkit has a
//! runtime handler `nodus` (`io.containerd.runc.v2` with `BinaryName` = our binary).
//! A pod runs on it, its container's log arrives, ExecSync works, and stop + remove
//! leave no state directory, cgroup or mount behind.

use std::path::Path;
use std::time::{Duration, Instant};

use nodus_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use nodus_proto::runtime::v1::security_profile::ProfileType;
use nodus_proto::runtime::v1::{
    ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest,
    ExecSyncRequest, ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext,
    PodSandboxConfig, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    SecurityProfile, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use nodus_testkit::{ContainerdOptions, PrivateContainerd, BUSYBOX_IMAGE};

fn ctrd_log(ctrd: &PrivateContainerd) -> String {
    let log = std::fs::read_to_string(ctrd.log_path()).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    format!("containerd log (newest first):\n{}", tail.join("\n"))
}

fn mounts_mentioning(s: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(s))
        .map(str::to_string)
        .collect()
}

/// ExecSync `sh -c script` in a container; stdout and stderr together.
async fn exec_out(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
    ctrd: &PrivateContainerd,
    id: &str,
    script: &str,
) -> String {
    let r = rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 20,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}\n{}", ctrd_log(ctrd)))
        .into_inner();
    format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    )
}

/// Creates and starts busybox `sh -c script` as container `name` of `pod`, logging to
/// `<name>/0.log`; returns its ID.
async fn run_container(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
    ctrd: &PrivateContainerd,
    pod: &str,
    sandbox_config: &PodSandboxConfig,
    name: &str,
    script: &str,
    linux: Option<LinuxContainerConfig>,
) -> String {
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: BUSYBOX_IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["sh".into()],
                args: vec!["-c".into(), script.into()],
                log_path: format!("{name}/0.log"),
                linux,
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", ctrd_log(ctrd)))
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", ctrd_log(ctrd)));
    id
}

/// The CRI log of container `name` once it contains `needle` (fails after 20 s).
async fn wait_for_log(sandbox_config: &PodSandboxConfig, name: &str, needle: &str) -> String {
    let log_file = Path::new(&sandbox_config.log_directory).join(format!("{name}/0.log"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&log_file).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {}: {log:?}",
            log_file.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_on_nodus_runtime_handler() {
    assert!(
        nodus_testkit::bin_path("nodus-runtime").exists(),
        "build nodus-runtime first (cargo build -p nodus-runtime)"
    );
    let ctrd = PrivateContainerd::start(ContainerdOptions::default())
        .await
        .expect("private containerd starts");
    let mut rt = ctrd.runtime().await.unwrap();
    let sandbox_config = ctrd.sandbox_config("nodusrt");
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: "nodus".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctrd_log(&ctrd)))
        .into_inner()
        .pod_sandbox_id;
    // The runc shim keeps runtime state under <Root>/<namespace>.
    let nodus_root = ctrd.dir().join("nodus").join("k8s.io");
    assert!(
        nodus_root.join(&pod).join("state.json").exists(),
        "the sandbox runs under nodus-runtime ({} has its state)",
        nodus_root.display()
    );

    let ctr = run_container(
        &mut rt,
        &ctrd,
        &pod,
        &sandbox_config,
        "app",
        "echo hello-from-nodus; echo data > /tmp/f; exec sleep 1000",
        None,
    )
    .await;
    // The log line arrives in the CRI log file.
    let log = wait_for_log(&sandbox_config, "app", "hello-from-nodus").await;
    assert!(log.contains(" stdout F hello-from-nodus"), "{log}");

    let st = rt
        .container_status(ContainerStatusRequest {
            container_id: ctr.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(st.state, 1, "CONTAINER_RUNNING");

    // ExecSync: output, exit code, same filesystem and cgroup as the container.
    let ex = rt
        .exec_sync(ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "cat /tmp/f; echo err >&2; exit 3".into(),
            ],
            timeout: 20,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", ctrd_log(&ctrd)))
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&ex.stdout), "data\n");
    assert_eq!(String::from_utf8_lossy(&ex.stderr), "err\n");
    assert_eq!(ex.exit_code, 3);
    let missing = rt
        .exec_sync(ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec!["/no/such/program".into()],
            timeout: 20,
        })
        .await;
    assert!(
        missing.is_err() || missing.as_ref().unwrap().get_ref().exit_code != 0,
        "exec of a missing program fails: {missing:?}"
    );

    // Without a seccomp profile a user namespace can be made; RuntimeDefault forbids it.
    let userns = exec_out(&mut rt, &ctrd, &ctr, "unshare -U true; echo unshare=$?").await;
    assert!(userns.contains("unshare=0"), "{userns}");

    // A container asking for CRI's RuntimeDefault seccomp profile (containerd's default
    // profile) runs busybox fine, under a filter, in its init and in exec.
    let secure = run_container(
        &mut rt,
        &ctrd,
        &pod,
        &sandbox_config,
        "secure",
        "grep Seccomp: /proc/self/status; mkdir -p /tmp/a/b && ls -R /tmp >/dev/null \
         && ps >/dev/null && echo busybox-ok; exec sleep 1000",
        Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                seccomp: Some(SecurityProfile {
                    profile_type: ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    )
    .await;
    let log = wait_for_log(&sandbox_config, "secure", "busybox-ok").await;
    assert!(log.contains("Seccomp:\t2"), "{log}");
    let filtered = exec_out(
        &mut rt,
        &ctrd,
        &secure,
        "grep Seccomp: /proc/self/status; unshare -U true; echo unshare=$?",
    )
    .await;
    assert!(filtered.contains("Seccomp:\t2"), "{filtered}");
    assert!(filtered.contains("unshare=1"), "{filtered}");
    rt.stop_container(StopContainerRequest {
        container_id: secure.clone(),
        timeout: 2,
    })
    .await
    .unwrap_or_else(|e| panic!("StopContainer secure: {e}\n{}", ctrd_log(&ctrd)));
    rt.remove_container(RemoveContainerRequest {
        container_id: secure.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemoveContainer secure: {e}\n{}", ctrd_log(&ctrd)));

    // The container's cgroup is below the pod's cgroup parent.
    let cg_parent = sandbox_config.linux.as_ref().unwrap().cgroup_parent.clone();
    let cg_root = if nodus_runtime::cgroups::is_unified() {
        Path::new("/sys/fs/cgroup").join(cg_parent.trim_start_matches('/'))
    } else {
        Path::new("/sys/fs/cgroup/memory").join(cg_parent.trim_start_matches('/'))
    };
    assert!(
        cg_root.join(&ctr).is_dir(),
        "{}",
        cg_root.join(&ctr).display()
    );

    rt.stop_container(StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 2,
    })
    .await
    .unwrap_or_else(|e| panic!("StopContainer: {e}\n{}", ctrd_log(&ctrd)));
    let st = rt
        .container_status(ContainerStatusRequest {
            container_id: ctr.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(st.state, 2, "CONTAINER_EXITED");
    rt.remove_container(RemoveContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemoveContainer: {e}\n{}", ctrd_log(&ctrd)));
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", ctrd_log(&ctrd)));
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", ctrd_log(&ctrd)));

    // Nothing left: state dirs, cgroups, mounts.
    for id in [&pod, &ctr, &secure] {
        assert!(!nodus_root.join(id).exists(), "state dir of {id} left");
        assert!(!cg_root.join(id).exists(), "cgroup of {id} left");
        assert!(
            mounts_mentioning(id).is_empty(),
            "mounts of {id} left: {:?}",
            mounts_mentioning(id)
        );
    }
}
