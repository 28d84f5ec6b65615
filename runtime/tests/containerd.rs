//! nodus-runtime driven by containerd: the private containerd of nodus-testkit has a
//! runtime handler `nodus` (`io.containerd.runc.v2` with `BinaryName` = our binary).
//! A pod runs on it, its container's log arrives, ExecSync works, and stop + remove
//! leave no state directory, cgroup or mount behind.

use std::path::Path;
use std::time::Duration;

use nodus_proto::runtime::v1::security_profile::ProfileType;
use nodus_proto::runtime::v1::{
    LinuxContainerConfig, LinuxContainerSecurityContext, PodSandboxConfig, SecurityProfile,
};
use nodus_testkit::cleanup::mounts_mentioning;
use nodus_testkit::cri::{self, Runtime};
use nodus_testkit::{ContainerdOptions, PrivateContainerd};

/// How long a container's first log lines may take.
const LOG_TIMEOUT: Duration = Duration::from_secs(20);

/// ExecSync `sh -c script` in a container; stdout and stderr together.
async fn exec_out(rt: &mut Runtime, ctrd: &PrivateContainerd, id: &str, script: &str) -> String {
    ctrd.must(
        &format!("ExecSync {script:?}"),
        cri::exec_sh(rt, id, script, 20).await,
    )
}

/// Creates and starts busybox `sh -c script` as container `name` of `pod`, logging to
/// `<name>/0.log`; returns its ID.
async fn run_container(
    rt: &mut Runtime,
    ctrd: &PrivateContainerd,
    pod: &str,
    sandbox_config: &PodSandboxConfig,
    name: &str,
    script: &str,
    linux: Option<LinuxContainerConfig>,
) -> String {
    let mut config = cri::busybox_sh(name, script);
    config.linux = linux;
    ctrd.must(
        &format!("container {name}"),
        cri::create_and_start(rt, pod, sandbox_config, config).await,
    )
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
    let pod = ctrd.must(
        "RunPodSandbox",
        cri::run_sandbox(&mut rt, &sandbox_config, "nodus").await,
    );
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
    let log = ctrd.must(
        "the app's log",
        cri::wait_log(&sandbox_config, "app", "hello-from-nodus", LOG_TIMEOUT).await,
    );
    assert!(log.contains(" stdout F hello-from-nodus"), "{log}");

    let st = cri::container_status(&mut rt, &ctr).await.unwrap();
    assert_eq!(st.state, 1, "CONTAINER_RUNNING");

    // ExecSync: output, exit code, same filesystem and cgroup as the container.
    let ex = ctrd.must(
        "ExecSync",
        cri::exec_sync(
            &mut rt,
            &ctr,
            &["sh", "-c", "cat /tmp/f; echo err >&2; exit 3"],
            20,
        )
        .await,
    );
    assert_eq!(String::from_utf8_lossy(&ex.stdout), "data\n");
    assert_eq!(String::from_utf8_lossy(&ex.stderr), "err\n");
    assert_eq!(ex.exit_code, 3);
    let missing = cri::exec_sync(&mut rt, &ctr, &["/no/such/program"], 20).await;
    assert!(
        missing.is_err() || missing.as_ref().unwrap().exit_code != 0,
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
    let log = ctrd.must(
        "the secure container's log",
        cri::wait_log(&sandbox_config, "secure", "busybox-ok", LOG_TIMEOUT).await,
    );
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
    ctrd.must(
        "stop and remove secure",
        cri::stop_and_remove_container(&mut rt, &secure, 2).await,
    );

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

    ctrd.must("StopContainer", cri::stop_container(&mut rt, &ctr, 2).await);
    let st = cri::container_status(&mut rt, &ctr).await.unwrap();
    assert_eq!(st.state, 2, "CONTAINER_EXITED");
    ctrd.must(
        "remove the pod",
        cri::remove_pod(&mut rt, &pod, &[&ctr]).await,
    );

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
