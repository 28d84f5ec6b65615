//! In-place pod resize (upstream's InPlacePodVerticalScaling, beta in 1.33, GA in 1.35)
//! through a real API server's `pods/resize` subresource: a CPU resize reaches the running
//! container's cgroup and its pod cgroup without a restart and shows in its status; a resize
//! the node has no room for stays pending as Deferred, changes nothing, and is applied once
//! the pod holding the room is gone.
//!
//! The subresource exists from 1.33: against CI's 1.20 API server the test prints a SKIP
//! line (unit tests on the fake CRI cover the kubelet's side there). Run it by hand with
//! `NODUS_KUBE_APISERVER` naming a newer kube-apiserver (README, "A newer API server").

mod common;

use std::path::PathBuf;

use common::api::{condition, phase, ApiNode};
use common::BUSYBOX_IMAGE;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};

/// The CPU limit a container status reports, its container ID and restart count.
fn reported(p: &Pod) -> Option<(String, String, i32)> {
    let cs = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    let limits = cs.resources.as_ref()?.limits.as_ref()?;
    Some((
        limits.get("cpu")?.0.clone(),
        cs.container_id.clone()?,
        cs.restart_count,
    ))
}

/// CFS quota (µs per 100 ms period) of a cgroup: v1 `cpu.cfs_quota_us` or v2 `cpu.max`.
fn quota(text: &str) -> Option<i64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The pod cgroup's CFS quota, read on the host (Guaranteed pods live in kubepods/pod<uid>).
fn pod_cgroup_quota(n: &ApiNode, uid: &str) -> Option<i64> {
    let root = n.node.ctrd.cgroup_parent();
    let rel = format!("{}/kubepods/pod{uid}", root.trim_matches('/'));
    let fs = PathBuf::from("/sys/fs/cgroup");
    let path = if fs.join("cgroup.controllers").exists() {
        fs.join(rel).join("cpu.max")
    } else {
        fs.join("cpu").join(rel).join("cpu.cfs_quota_us")
    };
    quota(&std::fs::read_to_string(path).ok()?)
}

/// The container's own CFS quota, read inside it.
async fn container_quota(n: &ApiNode, uid: &str) -> Option<i64> {
    let (_, out) = n
        .exec(
            uid,
            &[
                "sh",
                "-c",
                "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/cpu.max",
            ],
        )
        .await;
    quota(&out)
}

async fn resize(n: &ApiNode, cpu: &str) -> Result<Pod, kube::Error> {
    let patch = serde_json::json!({"spec": {"containers": [{"name": "main", "resources": {
        "requests": {"cpu": cpu, "memory": "64Mi"},
        "limits": {"cpu": cpu, "memory": "64Mi"}}}]}});
    n.pods("default")
        .patch_subresource(
            "resize",
            "resizer",
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
}

#[tokio::test(flavor = "current_thread")]
async fn a_pod_is_resized_in_place_through_the_resize_subresource() {
    let Some(n) = ApiNode::start("", &[]).await else {
        return;
    };
    let version = n.client.apiserver_version().await.expect("server version");
    let minor: u32 = version
        .minor
        .trim_end_matches('+')
        .parse()
        .unwrap_or_default();
    if version.major == "1" && minor < 33 {
        eprintln!(
            "SKIP: the API server is {}: pods/resize needs 1.33 or newer",
            version.git_version
        );
        return;
    }
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: resizer, namespace: default}}\nspec:\n  \
         terminationGracePeriodSeconds: 1\n  automountServiceAccountToken: false\n  containers:\n  \
         - name: main\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    \
         command: [sleep, '3600']\n    \
         resources: {{requests: {{cpu: 200m, memory: 64Mi}}, limits: {{cpu: 200m, memory: 64Mi}}}}\n    \
         resizePolicy: [{{resourceName: cpu, restartPolicy: NotRequired}}]\n"
    );
    let pod = n.create_pod("default", &yaml).await;
    let uid = pod.metadata.uid.clone().unwrap();
    let running = n
        .wait_pod("default", "resizer", "Running with resources", |p| {
            phase(p) == "Running" && reported(p).is_some()
        })
        .await;
    let (cpu, id, restarts) = reported(&running).unwrap();
    assert_eq!((cpu.as_str(), restarts), ("200m", 0));
    assert_eq!(container_quota(&n, &uid).await, Some(20_000));
    assert_eq!(pod_cgroup_quota(&n, &uid), Some(20_000));

    // 200m -> 400m: the same container, its cgroup and the pod's changed in place.
    resize(&n, "400m")
        .await
        .unwrap_or_else(|e| n.fail(&format!("resize to 400m: {e}")));
    let resized = n
        .wait_pod("default", "resizer", "resized to 400m", |p| {
            reported(p).is_some_and(|(cpu, _, _)| cpu == "400m")
                && condition(p, "PodResizeInProgress").is_none()
        })
        .await;
    assert_eq!(reported(&resized).unwrap(), ("400m".into(), id.clone(), 0));
    let allocated = resized
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .allocated_resources
        .clone()
        .unwrap();
    assert_eq!(allocated["cpu"].0, "400m");
    assert_eq!(container_quota(&n, &uid).await, Some(40_000));
    assert_eq!(pod_cgroup_quota(&n, &uid), Some(40_000));
    let events: Api<Event> = Api::namespaced(n.client.clone(), "default");
    let reasons: Vec<String> = n
        .wait_for(
            "ResizeCompleted event",
            std::time::Duration::from_secs(30),
            || {
                let events = events.clone();
                let uid = uid.clone();
                async move {
                    let list = events.list(&ListParams::default()).await.ok()?;
                    let reasons: Vec<String> = list
                        .items
                        .into_iter()
                        .filter(|e| e.involved_object.uid.as_deref() == Some(uid.as_str()))
                        .filter_map(|e| e.reason)
                        .collect();
                    reasons
                        .iter()
                        .any(|r| r == "ResizeCompleted")
                        .then_some(reasons)
                }
            },
        )
        .await;
    assert!(reasons.iter().any(|r| r == "ResizeStarted"), "{reasons:?}");
    assert!(!reasons.iter().any(|r| r == "Killing"), "{reasons:?}");

    // A resize the node has no room for now: Deferred, the container keeps 400m, until the
    // pod holding the room is gone. (The API server itself refuses a resize beyond the
    // node's allocatable, so Infeasible is for the unit tests.)
    let cpus = std::thread::available_parallelism().unwrap().get() as i64;
    let hog = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: hog, namespace: default}}\nspec:\n  \
         terminationGracePeriodSeconds: 1\n  automountServiceAccountToken: false\n  containers:\n  \
         - name: main\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    \
         command: [sleep, '3600']\n    resources: {{requests: {{cpu: {}m}}}}\n",
        cpus * 1000 - 600
    );
    n.create_pod("default", &hog).await;
    n.wait_pod("default", "hog", "Running", |p| phase(p) == "Running")
        .await;
    resize(&n, "800m")
        .await
        .unwrap_or_else(|e| n.fail(&format!("resize to 800m: {e}")));
    let pending = n
        .wait_pod("default", "resizer", "PodResizePending", |p| {
            condition(p, "PodResizePending").is_some()
        })
        .await;
    let c = pending
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodResizePending")
        .unwrap()
        .clone();
    assert_eq!(c.status, "True");
    assert_eq!(c.reason.as_deref(), Some("Deferred"));
    assert_eq!(
        c.message.as_deref(),
        Some(
            format!(
                "Node didn't have enough resource: cpu, requested: 800, used: {}, capacity: {}",
                cpus * 1000 - 600,
                cpus * 1000
            )
            .as_str()
        )
    );
    assert_eq!(reported(&pending).unwrap(), ("400m".into(), id.clone(), 0));
    assert_eq!(container_quota(&n, &uid).await, Some(40_000));
    // The hog goes: the deferred resize is taken and applied, the condition deleted.
    n.pods("default")
        .delete("hog", &Default::default())
        .await
        .unwrap_or_else(|e| n.fail(&format!("delete hog: {e}")));
    let done = n
        .wait_pod("default", "resizer", "resized to 800m", |p| {
            reported(p).is_some_and(|(cpu, _, _)| cpu == "800m")
                && condition(p, "PodResizePending").is_none()
                && condition(p, "PodResizeInProgress").is_none()
        })
        .await;
    assert_eq!(reported(&done).unwrap(), ("800m".into(), id, 0));
    assert_eq!(container_quota(&n, &uid).await, Some(80_000));
    assert_eq!(pod_cgroup_quota(&n, &uid), Some(80_000));
}
