//! API-server mode end to end, against a real etcd + kube-apiserver (`NODUS_KUBE_APISERVER`;
//! without it every test prints `SKIP api-server tests: NODUS_KUBE_APISERVER not set`).
//! Each test runs a whole node (containerd, nodus-bridge, our kubelet with `--kubeconfig`)
//! and looks at it through the API as a cluster user would.

mod common;

use std::time::Duration;

use common::api::{condition, phase, ApiNode};
use common::{BUSYBOX_IMAGE, NODE};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::api::Api;

#[tokio::test(flavor = "current_thread")]
async fn node_registers_with_its_fields_and_renews_its_lease() {
    let Some(n) = ApiNode::start(
        "nodeLeaseDurationSeconds: 8\nnodeStatusUpdateFrequency: 2s\nmaxPods: 42\n\
         kubeReserved: {cpu: 100m, memory: 50Mi}\n",
        &[
            "--node-labels=nodus.io/pool=blue,example.com/rack=r1",
            "--register-with-taints=dedicated=nodus:NoSchedule",
        ],
    )
    .await
    else {
        return;
    };
    let nodes: Api<KubeNode> = Api::all(n.client.clone());
    let node = n
        .wait_for("node Ready", Duration::from_secs(60), || {
            let nodes = nodes.clone();
            async move {
                let node = nodes.get_opt(NODE).await.ok().flatten()?;
                let ready = node
                    .status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                ready.then_some(node)
            }
        })
        .await;
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], NODE);
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(
        labels["kubernetes.io/arch"],
        nodus_kubelet::nodestatus::go_arch()
    );
    assert_eq!(labels["nodus.io/pool"], "blue");
    assert_eq!(labels["example.com/rack"], "r1");
    // The API server's TaintNodesByCondition admission adds node.kubernetes.io/not-ready
    // to a new node; ours is there beside it.
    let taints = node.spec.as_ref().unwrap().taints.clone().unwrap();
    assert!(
        taints
            .iter()
            .any(|t| (t.key.as_str(), t.value.as_deref(), t.effect.as_str())
                == ("dedicated", Some("nodus"), "NoSchedule")),
        "{taints:?}"
    );
    let st = node.status.clone().unwrap();
    let addrs = st.addresses.unwrap();
    assert!(
        addrs
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "10.66.0.1"),
        "{addrs:?}"
    );
    assert!(addrs
        .iter()
        .any(|a| a.type_ == "Hostname" && a.address == NODE));
    let cap = st.capacity.unwrap();
    let alloc = st.allocatable.unwrap();
    assert_eq!(cap["pods"].0, "42");
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(cap["cpu"].0, cpus.to_string());
    assert_eq!(alloc["cpu"].0, format!("{}m", cpus * 1000 - 100));
    for r in ["memory", "ephemeral-storage"] {
        assert!(cap.contains_key(r) && alloc.contains_key(r), "{r}");
        assert_ne!(
            cap[r], alloc[r],
            "{r}: reservations and eviction thresholds subtract"
        );
    }
    let info = st.node_info.unwrap();
    assert!(
        info.container_runtime_version.starts_with("containerd://"),
        "{info:?}"
    );
    assert_eq!(
        info.kubelet_version,
        nodus_kubelet::nodestatus::KUBELET_VERSION
    );
    assert_eq!(
        info.kernel_version,
        nix::sys::utsname::uname()
            .unwrap()
            .release()
            .to_string_lossy()
    );
    assert_eq!(info.operating_system, "linux");
    assert!(!info.boot_id.is_empty());
    assert_eq!(
        st.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port,
        10250
    );
    let images = st.images.unwrap();
    assert!(
        images
            .iter()
            .any(|i| i.names.iter().flatten().any(|n| n == BUSYBOX_IMAGE)),
        "{images:?}"
    );
    let conds = st.conditions.unwrap();
    for (kind, status, reason) in [
        ("Ready", "True", "KubeletReady"),
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
    ] {
        let c = conds.iter().find(|c| c.type_ == kind).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            (status, Some(reason)),
            "{kind}"
        );
    }

    // The lease: held by the node, owned by the Node object, renewed every 2 s (8 s / 4).
    let leases: Api<Lease> = Api::namespaced(n.client.clone(), "kube-node-lease");
    let renew_time = |l: &Lease| l.spec.as_ref().and_then(|s| s.renew_time.clone());
    let first = n
        .wait_for("node lease", Duration::from_secs(30), || {
            let leases = leases.clone();
            async move { leases.get_opt(NODE).await.ok().flatten() }
        })
        .await;
    let spec = first.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(NODE));
    assert_eq!(spec.lease_duration_seconds, Some(8));
    let owner = first.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        owner
            .iter()
            .any(|o| o.kind == "Node" && o.uid == node.metadata.uid.clone().unwrap()),
        "{owner:?}"
    );
    let mut seen = vec![renew_time(&first)];
    for _ in 0..2 {
        let last = seen.last().cloned().flatten();
        let next = n
            .wait_for("the lease renewed", Duration::from_secs(20), || {
                let leases = leases.clone();
                let last = last.clone();
                async move {
                    let l = leases.get_opt(NODE).await.ok().flatten()?;
                    let t = renew_time(&l);
                    (t.is_some() && t != last).then_some(t)
                }
            })
            .await;
        seen.push(next);
    }
    assert!(seen[0] < seen[1] && seen[1] < seen[2], "{seen:?}");

    // kubectl sees the node as users do.
    if nodus_testkit::apiserver::kubectl_binary().is_some() {
        let out = n.kubectl_ok(&["get", "nodes", "--no-headers"]);
        assert!(out.starts_with(NODE) && out.contains(" Ready "), "{out}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn api_pod_runs_reports_status_and_is_deleted_gracefully() {
    let Some(n) = ApiNode::start("", &[]).await else {
        return;
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: default}}\nspec:\n  \
         terminationGracePeriodSeconds: 20\n  automountServiceAccountToken: false\n  \
         containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    \
         command: [sh, -c, 'trap \"echo got-term; exit 0\" TERM; echo started; while true; do sleep 0.2; done']\n"
    );
    let created = n.create_pod("default", &yaml).await;
    let uid = created.metadata.uid.clone().unwrap();
    let pod = n
        .wait_pod("default", "web", "Running and Ready", |p| {
            phase(p) == "Running" && condition(p, "Ready").as_deref() == Some("True")
        })
        .await;
    let st = pod.status.clone().unwrap();
    let ip = st.pod_ip.clone().unwrap_or_default();
    assert!(ip.starts_with("10.66.0."), "podIP {ip}");
    assert_eq!(st.host_ip.as_deref(), Some("10.66.0.1"));
    let cs = &st.container_statuses.clone().unwrap()[0];
    assert!(cs.ready);
    assert_eq!(cs.restart_count, 0);
    assert!(cs.state.as_ref().unwrap().running.is_some());
    let cid = cs.container_id.clone().unwrap();
    assert!(cid.starts_with("containerd://"), "{cid}");
    for c in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&pod, c).as_deref(), Some("True"), "{c}");
    }
    // The CRI sandbox carries the API pod's UID.
    let sandboxes = n.node.all_sandboxes().await;
    assert!(sandboxes
        .iter()
        .any(|s| s.metadata.as_ref().is_some_and(|m| m.uid == uid)));

    // Events as upstream.
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(n.client.clone(), "default");
    let reasons = n
        .wait_for(
            "Pulled, Created and Started events",
            Duration::from_secs(30),
            || {
                let events = events.clone();
                let uid = uid.clone();
                async move {
                    let list = events.list(&Default::default()).await.ok()?;
                    let r: Vec<String> = list
                        .items
                        .iter()
                        .filter(|e| e.involved_object.uid.as_deref() == Some(uid.as_str()))
                        .filter_map(|e| e.reason.clone())
                        .collect();
                    ["Pulled", "Created", "Started"]
                        .iter()
                        .all(|x| r.iter().any(|y| y == x))
                        .then_some(r)
                }
            },
        )
        .await;
    assert!(reasons.iter().all(|r| r != "Failed"), "{reasons:?}");

    // Graceful deletion: SIGTERM, the container exits, then the object goes.
    let start = std::time::Instant::now();
    if nodus_testkit::apiserver::kubectl_binary().is_some() {
        n.kubectl_ok(&["delete", "pod", "web", "--timeout=60s"]);
    } else {
        n.pods("default")
            .delete("web", &Default::default())
            .await
            .unwrap();
        n.wait_for("pod object gone", Duration::from_secs(60), || {
            let api = n.pods("default");
            async move {
                api.get_opt("web")
                    .await
                    .ok()
                    .and_then(|p| p.is_none().then_some(()))
            }
        })
        .await;
    }
    let took = start.elapsed();
    assert!(n.pods("default").get_opt("web").await.unwrap().is_none());
    // The container left on SIGTERM, well within its 20 s grace period.
    assert!(took < Duration::from_secs(20), "deletion took {took:?}");
    let logs = std::fs::read_dir(n.node.ctrd.pod_logs_dir())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(logs, 0, "the pod's log dir is removed with it");
    n.wait_for(
        "no sandbox left for the pod",
        Duration::from_secs(20),
        || async {
            let left = n
                .node
                .all_sandboxes()
                .await
                .into_iter()
                .filter(|s| s.metadata.as_ref().is_some_and(|m| m.uid == uid))
                .count();
            (left == 0).then_some(())
        },
    )
    .await;
    let killing = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .any(|e| {
            e.involved_object.uid.as_deref() == Some(uid.as_str())
                && e.reason.as_deref() == Some("Killing")
        });
    assert!(killing, "a Killing event");
}
