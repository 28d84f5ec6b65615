//! Recovery: a restarted kubelet adopts what containerd runs (same sandbox and container
//! IDs, no restarts); a restarted containerd is reconnected to and the kubelet keeps working.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_kubelet_adopts_running_pods() {
    let mut node = Node::start().await;
    node.write_manifest("keep.yaml", &pod_yaml("keep", "Always", "exec sleep 3600"));
    node.write_manifest("done.yaml", &pod_yaml("done", "OnFailure", "exit 0"));
    node.write_manifest("gone.yaml", &pod_yaml("gone", "Always", "exec sleep 3600"));
    node.wait_running("gone", 1).await;
    let before = node.wait_running("keep", 1).await;
    let sandbox_before = node.sandboxes("keep").await;
    node.wait_for(
        "the finished pod to complete",
        Duration::from_secs(30),
        || async {
            node.api_pod("done")
                .filter(|p| p["status"]["phase"] == "Succeeded")
        },
    )
    .await;
    let done_before = node.containers("done").await;

    node.stop_kubelet(true);
    // Removed while no kubelet runs: housekeeping of the next one must clean it up.
    node.remove_manifest("gone.yaml");
    node.start_kubelet();
    // Wait until the new kubelet has synced the pods (it reports them through /pods).
    node.wait_for(
        "the new kubelet to report the pods",
        Duration::from_secs(30),
        || async {
            let keep = node.api_pod("keep")?;
            let done = node.api_pod("done")?;
            (keep["status"]["phase"] == "Running" && done["status"]["phase"] == "Succeeded")
                .then_some(())
        },
    )
    .await;
    // A few more relists, after which nothing may have been replaced.
    node.wait_relists(4).await;
    let after = node.containers("keep").await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].id, before[0].id, "container was replaced");
    assert_eq!(after[0].metadata.as_ref().unwrap().attempt, 0);
    let sandbox_after = node.sandboxes("keep").await;
    assert_eq!(sandbox_after.len(), 1);
    assert_eq!(
        sandbox_after[0].id, sandbox_before[0].id,
        "sandbox was replaced"
    );
    let api = node.api_pod("keep").unwrap();
    assert_eq!(api["status"]["containerStatuses"][0]["restartCount"], 0);
    node.wait_for(
        "housekeeping to remove the orphaned pod",
        Duration::from_secs(30),
        || async {
            (node.sandboxes("gone").await.is_empty() && node.containers("gone").await.is_empty())
                .then_some(())
        },
    )
    .await;
    // The completed pod was not run again either.
    let done_after = node.containers("done").await;
    assert_eq!(
        done_after.iter().map(|c| &c.id).collect::<Vec<_>>(),
        done_before.iter().map(|c| &c.id).collect::<Vec<_>>()
    );
}

/// The PID of the private containerd this test process started (child of this process,
/// running with the node's config file).
fn containerd_pid(node: &Node) -> i32 {
    let config = node.ctrd.dir().join("config.toml").display().to_string();
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1));
        if cmdline.starts_with("containerd ")
            && cmdline.contains(&config)
            && ppid == Some(me.as_str())
        {
            return pid;
        }
    }
    panic!("containerd of this test not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_survives_a_containerd_restart() {
    let mut node = Node::start().await;
    node.write_manifest("one.yaml", &pod_yaml("one", "Always", "exec sleep 3600"));
    let before = node.wait_running("one", 1).await;

    // containerd goes away for a few seconds (stopped by PID), and a pod is asked for
    // meanwhile; then containerd comes back (same root and state).
    let pid = containerd_pid(&node);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    node.wait_for("containerd to exit", Duration::from_secs(20), || async {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().chars().next());
        (state.flatten() == Some('Z') || stat.is_empty()).then_some(())
    })
    .await;
    node.write_manifest("two.yaml", &pod_yaml("two", "Always", "exec sleep 3600"));
    node.wait_for(
        "the kubelet to notice the runtime is gone",
        Duration::from_secs(20),
        || async { node.log_text().contains("PLEG relist failed").then_some(()) },
    )
    .await;
    // The kubelet keeps running with containerd down: it tries to relist again and again
    // (the failed ListPodSandbox calls are counted; a failed relist is not).
    node.watch_metric_grows(
        "kubelet_runtime_operations_errors_total{operation_type=\"list_pod_sandbox\"}",
        2,
        Duration::from_secs(20),
        async || {},
    )
    .await;
    assert!(
        node.kubelet_alive(),
        "kubelet exited while containerd was down"
    );
    node.ctrd.restart().await.expect("containerd start");

    // It reconnects: the pod asked for meanwhile runs, the old pod is untouched.
    node.wait_running("two", 1).await;
    let after = node.wait_running("one", 1).await;
    assert_eq!(after[0].id, before[0].id);
    // And it still removes pods.
    node.remove_manifest("one.yaml");
    node.wait_for("pod one to be removed", Duration::from_secs(30), || async {
        node.sandboxes("one").await.is_empty().then_some(())
    })
    .await;
    let log = node.log_text();
    for l in log
        .lines()
        .filter(|l| l.contains("runtime") || l.contains("relist"))
    {
        eprintln!("kubelet: {l}");
    }
    assert!(
        log.contains("PLEG relist works again"),
        "no recovery logged"
    );
    assert!(!log.contains("panicked"), "the kubelet panicked");
    assert!(node.kubelet_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_sandbox_is_recreated() {
    let node = Node::start().await;
    node.write_manifest(
        "phoenix.yaml",
        &pod_yaml("phoenix", "Always", "exec sleep 3600"),
    );
    let first = node.wait_running("phoenix", 1).await.remove(0);
    let sb = node.sandboxes("phoenix").await.remove(0);
    // The sandbox dies behind the kubelet's back.
    let mut rt = node.rt().await;
    rt.stop_pod_sandbox(nodus_proto::runtime::v1::StopPodSandboxRequest {
        pod_sandbox_id: sb.id.clone(),
    })
    .await
    .unwrap();
    let (new_sb, c) = node
        .wait_for(
            "a new sandbox with the container running again",
            Duration::from_secs(60),
            || async {
                let sbs = node.sandboxes("phoenix").await;
                let ready = sbs
                    .iter()
                    .find(|s| {
                        s.id != sb.id
                            && s.state
                                == nodus_proto::runtime::v1::PodSandboxState::SandboxReady as i32
                    })?
                    .clone();
                let c = node.containers("phoenix").await.into_iter().find(|c| {
                    c.pod_sandbox_id == ready.id
                        && c.state
                            == nodus_proto::runtime::v1::ContainerState::ContainerRunning as i32
                })?;
                Some((ready, c))
            },
        )
        .await;
    // Attempts go on from the old ones.
    assert_eq!(new_sb.metadata.unwrap().attempt, 1);
    assert_eq!(c.metadata.unwrap().attempt, 1);
    assert_ne!(c.id, first.id);
}
