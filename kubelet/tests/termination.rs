//! Termination and bad input: the grace period is honoured (a process ignoring SIGTERM is
//! killed after it), bad manifests are reported with file and field while the others run.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nodus_proto::runtime::v1 as cri;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_then_kill() {
    let node = Node::start().await;
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: stubborn\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [sh, -c, 'trap \"echo got TERM\" TERM; echo ready; while true; do sleep 1; done']\n"
    );
    node.write_manifest("stubborn.yaml", &manifest);
    let c = node.wait_running("stubborn", 1).await.remove(0);
    let log_path = node.container_status(&c.id).await.unwrap().log_path;
    // The shell has installed its trap once it says "ready".
    node.wait_for(
        "the trap to be installed",
        Duration::from_secs(10),
        || async { std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("ready")) },
    )
    .await;
    let t0 = Instant::now();
    node.remove_manifest("stubborn.yaml");
    // It gets SIGTERM and ignores it (read the log now: the pod's logs go with the pod).
    node.wait_for(
        "SIGTERM to reach the container",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&log_path)
                .ok()
                .filter(|l| l.contains("got TERM"))
        },
    )
    .await;
    let gone = node
        .wait_for("the container to stop", Duration::from_secs(40), || async {
            match node.container_status(&c.id).await {
                None => Some(t0.elapsed()),
                Some(st) if st.state == cri::ContainerState::ContainerExited as i32 => {
                    Some(t0.elapsed())
                }
                Some(_) => None,
            }
        })
        .await;
    eprintln!(
        "container stopped {:.1} s after the manifest was deleted",
        gone.as_secs_f64()
    );
    // Killed once the 5 s grace period ran out: later than 4 s, well before the 30 s default.
    assert!(gone >= Duration::from_secs(4), "killed too early: {gone:?}");
    assert!(
        gone < Duration::from_secs(20),
        "grace period not honoured: {gone:?}"
    );
    node.wait_for("the pod to be removed", Duration::from_secs(30), || async {
        node.sandboxes("stubborn").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_reported_and_others_run() {
    let node = Node::start().await;
    node.write_manifest(
        "a-good.yaml",
        &pod_yaml("good", "Always", "exec sleep 3600"),
    );
    node.write_manifest(
        "b-syntax.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: [oops\n",
    );
    node.write_manifest(
        "c-noname.yaml",
        &pod_yaml("x", "Always", "true").replace("  name: x\n", "  labels: {a: b}\n"),
    );
    node.write_manifest("d-policy.yaml", &pod_yaml("policy", "Sometimes", "true"));
    // Same name as the good pod, in a later file: rejected.
    node.write_manifest(
        "e-dup.yaml",
        &pod_yaml("good", "Always", "echo dup; exec sleep 3600"),
    );
    node.wait_running("good", 1).await;
    let dir = node.pod_dir().display().to_string();
    let log = node
        .wait_for(
            "every bad manifest to be logged",
            Duration::from_secs(20),
            || async {
                let log = node.log_text();
                (log.contains("d-policy.yaml") && log.contains("e-dup.yaml")).then_some(log)
            },
        )
        .await;
    let line = |file: &str| {
        log.lines()
            .find(|l| l.contains(&format!("{dir}/{file}")))
            .unwrap_or_else(|| panic!("{file} not logged:\n{log}"))
            .to_string()
    };
    assert!(line("b-syntax.yaml").contains("(document)"));
    assert!(line("c-noname.yaml").contains("metadata.name"));
    let l = line("d-policy.yaml");
    assert!(
        l.contains("spec.restartPolicy") && l.contains("Sometimes"),
        "{l}"
    );
    let l = line("e-dup.yaml");
    assert!(
        l.contains("duplicate") && l.contains("good-testnode"),
        "{l}"
    );
    // Only the good pod runs, and it is the first one's. Every file was read (all logged);
    // a sandbox for a bad or duplicate manifest would (wrongly) appear within a few relists.
    node.wait_relists(2).await;
    assert_eq!(node.all_sandboxes().await.len(), 1);
    let c = node.wait_running("good", 1).await.remove(0);
    let log_path = node.container_status(&c.id).await.unwrap().log_path;
    assert!(!std::fs::read_to_string(log_path)
        .unwrap_or_default()
        .contains("dup"));
}
