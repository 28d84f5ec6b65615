//! End to end through containerd: a static pod manifest runs, its output lands in the CRI
//! log, `/pods` and `/healthz` answer, an edit replaces the pod, a delete removes it; two
//! pods reach each other by pod IP.

mod common;

use std::time::Duration;

use common::*;
use nodus_proto::runtime::v1 as cri;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_runs_then_edit_replaces_then_delete_removes() {
    let node = Node::start().await;
    node.write_manifest(
        "web.yaml",
        &pod_yaml("web", "Always", "echo hello-from-nodus; exec sleep 3600"),
    );
    let running = node.wait_running("web", 1).await;
    let c = &running[0];
    // What crictl shows: names, namespace, UID, attempts.
    let meta = c.metadata.clone().unwrap();
    assert_eq!((meta.name.as_str(), meta.attempt), ("main", 0));
    assert_eq!(c.labels["io.kubernetes.container.name"], "main");
    assert_eq!(c.labels["io.kubernetes.pod.namespace"], "default");
    assert_eq!(c.annotations["io.kubernetes.container.restartCount"], "0");
    let sandboxes = node.sandboxes("web").await;
    assert_eq!(sandboxes.len(), 1);
    let sb = &sandboxes[0];
    let sm = sb.metadata.clone().unwrap();
    assert_eq!(sm.name, format!("web-{NODE}"));
    assert_eq!(sm.namespace, "default");
    assert_eq!(sm.uid.len(), 32, "static pod UID is an MD5 hex");
    assert_eq!(c.labels["io.kubernetes.pod.uid"], sm.uid);
    // The pod runs on the suite's runtime (NODUS_TEST_RUNTIME): containerd says which
    // runtime type, and the pause process is the child of that runtime's shim.
    let (runtime_type, shim) = match node.ctrd.default_runtime().as_str() {
        "nodus-shim" => ("io.containerd.nodus.v2", "containerd-shim-nodus-v2"),
        _ => ("io.containerd.runc.v2", "containerd-shim-runc-v2"),
    };
    let info = node.sandbox_info(&sb.id).await;
    assert_eq!(info["runtimeType"], runtime_type, "{info}");
    let pause = node.sandbox_pid(&sb.id).await;
    let stat = std::fs::read_to_string(format!("/proc/{pause}/stat")).unwrap();
    let ppid = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap();
    let parent = std::fs::read_link(format!("/proc/{ppid}/exe")).unwrap();
    assert_eq!(parent.file_name().unwrap(), shim, "{}", parent.display());
    if node.ctrd.default_runtime() == "nodus" {
        // containerd's runc shim driving nodus-runtime: its state is under the handler's Root.
        let state = node
            .ctrd
            .dir()
            .join("nodus/k8s.io")
            .join(&sb.id)
            .join("state.json");
        assert!(state.exists(), "{}", state.display());
    }

    // The output is in the CRI log file the kubelet asked for.
    let status = node.container_status(&c.id).await.unwrap();
    let expected_log = node
        .ctrd
        .pod_logs_dir()
        .join(format!("default_web-{NODE}_{}", sm.uid))
        .join("main/0.log");
    assert_eq!(status.log_path, expected_log.display().to_string());
    let log = node
        .wait_for(
            "container output in the CRI log",
            Duration::from_secs(20),
            || async {
                std::fs::read_to_string(&expected_log)
                    .ok()
                    .filter(|t| t.contains("hello-from-nodus"))
            },
        )
        .await;
    // CRI log format: "<RFC3339Nano> stdout F <line>".
    assert!(
        log.lines()
            .any(|l| l.contains(" stdout F hello-from-nodus")),
        "{log}"
    );

    // /pods shows the pod running with its IP; /healthz answers.
    let ip = node.sandbox_ip(&sb.id).await;
    let api = node
        .wait_for(
            "/pods to report the pod Running",
            Duration::from_secs(20),
            || async {
                node.api_pod("web")
                    .filter(|p| p["status"]["phase"] == "Running")
            },
        )
        .await;
    assert_eq!(api["status"]["podIP"], ip.as_str());
    assert_eq!(api["metadata"]["uid"], sm.uid.as_str());
    let cs = &api["status"]["containerStatuses"][0];
    assert_eq!(cs["name"], "main");
    assert_eq!(cs["ready"], true);
    assert_eq!(cs["restartCount"], 0);
    assert_eq!(cs["containerID"], format!("containerd://{}", c.id).as_str());
    assert!(cs["state"]["running"]["startedAt"].is_string());
    let conds = api["status"]["conditions"].as_array().unwrap();
    for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(
            conds
                .iter()
                .any(|c| c["type"] == kind && c["status"] == "True"),
            "{kind} in {conds:?}"
        );
    }
    let (code, body) = node.http_get(HEALTHZ_PORT, "/healthz").unwrap();
    assert_eq!((code, body.as_str()), (200, "ok"));

    // Editing the manifest replaces the pod (new UID, new sandbox; the old one goes).
    node.write_manifest(
        "web.yaml",
        &pod_yaml("web", "Always", "echo edited; exec sleep 3600"),
    );
    let new_sb = node
        .wait_for(
            "the edited pod to replace the old one",
            Duration::from_secs(60),
            || async {
                let sbs = node.sandboxes("web").await;
                let running = node
                    .containers("web")
                    .await
                    .into_iter()
                    .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
                    .count();
                (sbs.len() == 1 && sbs[0].id != sb.id && running == 1).then(|| sbs[0].clone())
            },
        )
        .await;
    assert_ne!(new_sb.metadata.as_ref().unwrap().uid, sm.uid);

    // Deleting it stops and removes the pod and its sandbox.
    let new_uid = new_sb.metadata.as_ref().unwrap().uid.clone();
    let cgroup = std::path::PathBuf::from("/sys/fs/cgroup/pids")
        .join(node.ctrd.cgroup_parent().trim_start_matches('/'))
        .join("kubepods/besteffort")
        .join(format!("pod{new_uid}"));
    assert!(cgroup.is_dir(), "pod cgroup {} missing", cgroup.display());
    node.remove_manifest("web.yaml");
    node.wait_for("the pod to be removed", Duration::from_secs(60), || async {
        (node.sandboxes("web").await.is_empty() && node.containers("web").await.is_empty())
            .then_some(())
    })
    .await;
    // Its cgroup and log directory are gone too.
    node.wait_for(
        "the pod cgroup and logs to be removed",
        Duration::from_secs(10),
        || async {
            let logs = node
                .ctrd
                .pod_logs_dir()
                .join(format!("default_web-{NODE}_{new_uid}"));
            (!cgroup.exists() && !logs.exists()).then_some(())
        },
    )
    .await;
    node.wait_for("/pods to drop the pod", Duration::from_secs(10), || async {
        node.get_pods()
            .filter(|p| p["items"].as_array().is_some_and(|i| i.is_empty()))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_static_pods_reach_each_other_by_pod_ip() {
    let node = Node::start().await;
    node.write_manifest("a.yaml", &pod_yaml("a", "Always", "exec sleep 3600"));
    node.write_manifest(
        "b.yaml",
        &pod_yaml(
            "b",
            "Always",
            "mkdir -p /www && echo pong-from-b > /www/index.html && exec httpd -f -p 8080 -h /www",
        ),
    );
    let a = node.wait_running("a", 1).await.remove(0);
    node.wait_running("b", 1).await;
    let sb_b = node.sandboxes("b").await.remove(0);
    let ip_b = node.sandbox_ip(&sb_b.id).await;
    let ip_a = node.sandbox_ip(&node.sandboxes("a").await[0].id).await;
    assert_ne!(ip_a, ip_b);
    let mut rt = node.rt().await;
    let out = node
        .wait_for("pod a to fetch from pod b", Duration::from_secs(20), || {
            let mut rt = rt.clone();
            let (id, ip) = (a.id.clone(), ip_b.clone());
            async move {
                let r = rt
                    .exec_sync(cri::ExecSyncRequest {
                        container_id: id,
                        // busybox-static's wget segfaults (static glibc NSS); nc does not
                        // resolve when given an address.
                        cmd: vec![
                            "sh".into(),
                            "-c".into(),
                            format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080"),
                        ],
                        timeout: 10,
                    })
                    .await
                    .ok()?
                    .into_inner();
                if r.exit_code != 0 {
                    eprintln!(
                        "fetch from a to b failed ({}): {}{}",
                        r.exit_code,
                        String::from_utf8_lossy(&r.stdout),
                        String::from_utf8_lossy(&r.stderr)
                    );
                }
                (r.exit_code == 0).then(|| String::from_utf8_lossy(&r.stdout).to_string())
            }
        })
        .await;
    assert!(out.contains("pong-from-b"), "{out}");
    let _ = &mut rt;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_from_the_manifest_url() {
    let port = 18099;
    let node = Node::start_with(
        "httpCheckFrequency: 1s\n",
        &[&format!("--manifest-url=http://127.0.0.1:{port}/pods")],
    )
    .await;
    // A PodList in YAML.
    let item = |name: &str| {
        format!(
            "- metadata: {{name: {name}}}\n  spec:\n    terminationGracePeriodSeconds: 2\n    containers: [{{name: main, image: '{BUSYBOX_IMAGE}', command: [sleep, '3600']}}]\n"
        )
    };
    let header = "apiVersion: v1\nkind: PodList\nitems:\n";
    let server = ManifestServer::start(
        &node,
        port,
        &format!("{header}{}{}", item("url-a"), item("url-b")),
    );
    node.wait_running("url-a", 1).await;
    node.wait_running("url-b", 1).await;
    let api = node
        .wait_for(
            "/pods to list the URL pods",
            Duration::from_secs(20),
            || async { node.api_pod("url-a") },
        )
        .await;
    assert_eq!(
        api["metadata"]["annotations"]["kubernetes.io/config.source"],
        "http"
    );
    // Only url-b left at the URL: url-a goes, url-b stays as it is.
    let b_before = node.containers("url-b").await;
    server.set(&format!("{header}{}", item("url-b")));
    node.wait_for("url-a to be removed", Duration::from_secs(30), || async {
        node.sandboxes("url-a").await.is_empty().then_some(())
    })
    .await;
    let b_after = node.containers("url-b").await;
    assert_eq!(b_after.len(), 1);
    assert_eq!(b_after[0].id, b_before[0].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverted_edit_runs_the_original_again() {
    let node = Node::start().await;
    let original = pod_yaml("rev", "Always", "exec sleep 3600");
    node.write_manifest("rev.yaml", &original);
    node.wait_running("rev", 1).await;
    let uid_a = node.sandboxes("rev").await[0].metadata.clone().unwrap().uid;
    // Edit: the original (same UID) starts terminating (its grace period is 2 s)...
    node.write_manifest(
        "rev.yaml",
        &pod_yaml("rev", "Always", "echo b; exec sleep 3600"),
    );
    node.wait_for(
        "the edited pod's sandbox",
        Duration::from_secs(30),
        || async {
            node.sandboxes("rev")
                .await
                .iter()
                .any(|s| s.metadata.as_ref().unwrap().uid != uid_a)
                .then_some(())
        },
    )
    .await;
    // ...and is asked for again while that is under way.
    node.write_manifest("rev.yaml", &original);
    node.wait_for(
        "only the original pod, running again",
        Duration::from_secs(60),
        || async {
            let sbs = node.sandboxes("rev").await;
            let running: Vec<_> = node
                .containers("rev")
                .await
                .into_iter()
                .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
                .collect();
            (sbs.len() == 1
                && sbs[0].metadata.as_ref().unwrap().uid == uid_a
                && sbs[0].state == cri::PodSandboxState::SandboxReady as i32
                && running.len() == 1)
                .then_some(())
        },
    )
    .await;
}
