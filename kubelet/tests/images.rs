//! Image pulls per imagePullPolicy through the ImageService: IfNotPresent and Never use the
//! imported image without pulling; Never with a missing image waits with ErrImageNeverPull;
//! Always pulls (and, with no registry here, fails with ErrImagePull).

mod common;

use std::time::Duration;

use common::*;

fn pod(name: &str, image: &str, policy: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: main\n    image: {image}\n    imagePullPolicy: {policy}\n    command: [sleep, '3600']\n"
    )
}

fn waiting_reason(node: &Node, name: &str) -> Option<String> {
    node.api_pod(name)?["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_policies() {
    let node = Node::start().await;
    node.write_manifest(
        "present.yaml",
        &pod("present", BUSYBOX_IMAGE, "IfNotPresent"),
    );
    node.write_manifest("never.yaml", &pod("never", BUSYBOX_IMAGE, "Never"));
    node.write_manifest(
        "absent.yaml",
        &pod("absent", "localhost/nodus/absent:1.0", "Never"),
    );
    node.wait_running("present", 1).await;
    node.wait_running("never", 1).await;
    node.wait_for(
        "ErrImageNeverPull for the absent image",
        Duration::from_secs(20),
        || async {
            (waiting_reason(&node, "absent").as_deref() == Some("ErrImageNeverPull")).then_some(())
        },
    )
    .await;
    assert!(node.containers("absent").await.is_empty());
    assert!(
        !node.log_text().contains("pulling image"),
        "IfNotPresent/Never must not pull"
    );

    // Always pulls even a present image (no registry here: the pull fails).
    node.write_manifest("always.yaml", &pod("always", BUSYBOX_IMAGE, "Always"));
    node.wait_for(
        "ErrImagePull for the Always pod",
        Duration::from_secs(60),
        || async {
            (waiting_reason(&node, "always").as_deref() == Some("ErrImagePull")).then_some(())
        },
    )
    .await;
    assert!(node.log_text().contains("pulling image"));
    // The others keep running.
    node.wait_running("present", 1).await;
}
