//! Ephemeral containers (what `kubectl debug` adds) through containerd: started once in the
//! running pod, sharing the processes of `targetContainerName`, reported in
//! `ephemeralContainerStatuses`, never restarted. The API server of CI (1.20) has them
//! behind an alpha gate, so the pod here is a static pod carrying the field.

mod common;

use std::time::Duration;

use common::*;
use nodus_proto::runtime::v1 as cri;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_container_sees_its_targets_processes_and_runs_once() {
    let node = Node::start().await;
    let yaml = pod_yaml("dbg", "Always", "exec sleep 3600")
        + &format!(
            "  ephemeralContainers:\n  - name: debug\n    image: {BUSYBOX_IMAGE}\n    targetContainerName: main\n    command: [sh, -c, \"tr '\\\\0' ' ' < /proc/1/cmdline; echo\"]\n"
        );
    node.write_manifest("dbg.yaml", &yaml);
    let log = node.exited_log("dbg", "debug").await;
    assert_eq!(log.trim(), "sleep 3600", "PID 1 is the target's process");
    let pod = node
        .wait_for(
            "the ephemeral container's status",
            Duration::from_secs(20),
            || async {
                let p = node.api_pod("dbg")?;
                let st = p["status"]["ephemeralContainerStatuses"][0].clone();
                (st["state"]["terminated"]["exitCode"] == 0).then_some(p)
            },
        )
        .await;
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(
        pod["status"]["ephemeralContainerStatuses"][0]["name"],
        "debug"
    );
    node.wait_relists(3).await;
    let debug: Vec<cri::Container> = node
        .containers("dbg")
        .await
        .into_iter()
        .filter(|c| c.metadata.as_ref().is_some_and(|m| m.name == "debug"))
        .collect();
    assert_eq!(debug.len(), 1, "never started again");
}
