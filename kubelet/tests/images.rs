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

async fn image_present(node: &Node, image: &str) -> bool {
    let mut img = node.ctrd.images().await.expect("image client");
    img.image_status(nodus_proto::runtime::v1::ImageStatusRequest {
        image: Some(nodus_proto::runtime::v1::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        verbose: false,
    })
    .await
    .expect("ImageStatus")
    .into_inner()
    .image
    .is_some()
}

/// Image GC above the high threshold (0 % here, so always): an image in use and the
/// sandbox image stay; once its pod is gone the unused image is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_gc_removes_unused_images() {
    let node = Node::start_with(
        "imageGCHighThresholdPercent: 0\nimageGCLowThresholdPercent: 0\nimageMinimumGCAge: 4s\n",
        &[&format!(
            "--pod-infra-container-image={}",
            nodus_testkit::PAUSE_IMAGE
        )],
    )
    .await;
    node.write_manifest("user.yaml", &pod("user", BUSYBOX_IMAGE, "IfNotPresent"));
    node.wait_running("user", 1).await;
    // A second GC pass (the first image age is past imageMinimumGCAge by then) found the
    // filesystem above the threshold while the image was in use.
    node.wait_for("two image GC passes", Duration::from_secs(30), || async {
        (node.log_text().matches("above the high threshold").count() >= 2).then_some(())
    })
    .await;
    assert!(
        image_present(&node, BUSYBOX_IMAGE).await,
        "in-use image removed"
    );
    node.wait_running("user", 1).await;
    node.remove_manifest("user.yaml");
    node.wait_for(
        "the unused image to be removed",
        Duration::from_secs(40),
        || async { (!image_present(&node, BUSYBOX_IMAGE).await).then_some(()) },
    )
    .await;
    assert!(
        image_present(&node, nodus_testkit::PAUSE_IMAGE).await,
        "the sandbox image must stay"
    );
}
