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
         kubeReserved: {cpu: 100m, memory: 50Mi, ephemeral-storage: 1Gi}\n",
        &[
            "--node-labels=nodus.io/pool=blue,example.com/rack=r1",
            "--register-with-taints=dedicated=nodus:NoSchedule",
            "--provider-id=nodus://rack1/testnode",
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
        nodus_kubelet::version::go_arch()
    );
    assert_eq!(labels["nodus.io/pool"], "blue");
    assert_eq!(labels["example.com/rack"], "r1");
    // The API server's TaintNodesByCondition admission adds node.kubernetes.io/not-ready
    // to a new node; ours is there beside it.
    assert_eq!(
        node.spec.as_ref().unwrap().provider_id.as_deref(),
        Some("nodus://rack1/testnode")
    );
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
    // Reservations and the hard eviction thresholds subtract: memory 50Mi reserved + 100Mi
    // evictionHard; ephemeral-storage 1Gi reserved (the test node's 0% nodefs threshold is no
    // threshold).
    let bytes = |q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| -> i64 {
        let s = q.0.as_str();
        for (suffix, shift) in [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40)] {
            if let Some(n) = s.strip_suffix(suffix) {
                return n.parse::<i64>().unwrap() << shift;
            }
        }
        s.parse().unwrap()
    };
    assert_eq!(bytes(&cap["memory"]) - bytes(&alloc["memory"]), 150 << 20);
    assert_eq!(
        bytes(&cap["ephemeral-storage"]) - bytes(&alloc["ephemeral-storage"]),
        1 << 30
    );
    let info = st.node_info.unwrap();
    assert!(
        info.container_runtime_version.starts_with("containerd://"),
        "{info:?}"
    );
    assert_eq!(
        info.kubelet_version,
        nodus_kubelet::version::KUBELET_VERSION
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

    // After an outage the node lifecycle controller marks the node Unknown; once the server
    // is back the kubelet makes it Ready again within nodeStatusUpdateFrequency (2 s here),
    // not on its next 5-minute report. Written here as the controller writes it.
    let ready_of = |node: &KubeNode| {
        node.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready").cloned())
            .unwrap()
    };
    let mut unknown = ready_of(&nodes.get(NODE).await.unwrap());
    unknown.status = "Unknown".into();
    unknown.reason = Some("NodeStatusUnknown".into());
    unknown.message = Some("Kubelet stopped posting node status.".into());
    let patch = serde_json::json!({"status": {"conditions": [unknown]}});
    nodes
        .patch_status(
            NODE,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(&patch),
        )
        .await
        .unwrap();
    assert_eq!(ready_of(&nodes.get(NODE).await.unwrap()).status, "Unknown");
    let marked = std::time::Instant::now();
    let ready = n
        .wait_for("the node Ready again", Duration::from_secs(10), || {
            let nodes = nodes.clone();
            async move {
                let node = nodes.get_opt(NODE).await.ok().flatten()?;
                let ready = ready_of(&node);
                (ready.status == "True").then_some(ready)
            }
        })
        .await;
    eprintln!(
        "Ready again {:?} after it was marked Unknown",
        marked.elapsed()
    );
    assert_eq!(ready.reason.as_deref(), Some("KubeletReady"));
    // A transition: its time is the kubelet's post, not the first registration's.
    assert!(
        ready.last_transition_time.as_ref().map(|t| &t.0)
            > unknown.last_transition_time.as_ref().map(|t| &t.0),
        "{ready:?}"
    );

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
                    let r: Vec<(String, String)> = list
                        .items
                        .iter()
                        .filter(|e| e.involved_object.uid.as_deref() == Some(uid.as_str()))
                        .map(|e| {
                            (
                                e.reason.clone().unwrap_or_default(),
                                e.message.clone().unwrap_or_default(),
                            )
                        })
                        .collect();
                    ["Pulled", "Created", "Started"]
                        .iter()
                        .all(|x| r.iter().any(|(y, _)| y == x))
                        .then_some(r)
                }
            },
        )
        .await;
    if reasons.iter().any(|(r, _)| r == "Failed") {
        n.node.fail(&format!("a Failed event: {reasons:?}"));
    }

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
    // And none comes back: PLEG events of the removed containers must not restart a pod
    // whose deletion the kubelet finished. Looked at until three more relists passed.
    n.node
        .watch_relists(3, async || {
            let again = n
                .node
                .all_sandboxes()
                .await
                .into_iter()
                .any(|s| s.metadata.as_ref().is_some_and(|m| m.uid == uid));
            assert!(!again, "a sandbox of the deleted pod came back");
        })
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

#[tokio::test(flavor = "current_thread")]
async fn config_map_secret_and_token_reach_the_pod_and_follow_updates() {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::api::{Patch, PatchParams, PostParams};
    let Some(n) = ApiNode::start("", &[]).await else {
        return;
    };
    let cms: Api<ConfigMap> = Api::namespaced(n.client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(n.client.clone(), "default");
    let cm: ConfigMap = serde_yaml::from_str(
        "metadata: {name: app-config}\ndata: {greeting: hello, color: blue}\n",
    )
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let sec: Secret =
        serde_yaml::from_str("metadata: {name: app-secret}\nstringData: {password: hunter2}\n")
            .unwrap();
    secrets.create(&PostParams::default(), &sec).await.unwrap();
    // The pod gets the service-account volume from the API server's admission (a projected
    // token, kube-root-ca.crt and the namespace), as every pod of a real cluster does.
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: consumer, namespace: default}}\nspec:\n  \
         terminationGracePeriodSeconds: 2\n  volumes:\n  - {{name: cfg, configMap: {{name: app-config}}}}\n  \
         - {{name: sec, secret: {{secretName: app-secret, defaultMode: 256}}}}\n  containers:\n  \
         - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [sleep, '3600']\n    \
         envFrom: [{{configMapRef: {{name: app-config}}, prefix: CFG_}}]\n    env:\n    \
         - {{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: app-secret, key: password}}}}}}\n    \
         - {{name: MISSING, valueFrom: {{configMapKeyRef: {{name: app-config, key: nope, optional: true}}}}}}\n    \
         volumeMounts:\n    - {{name: cfg, mountPath: /etc/app}}\n    - {{name: sec, mountPath: /etc/secret}}\n"
    );
    let pod = n.create_pod("default", &yaml).await;
    let uid = pod.metadata.uid.clone().unwrap();
    n.wait_pod("default", "consumer", "Running", |p| phase(p) == "Running")
        .await;
    assert_eq!(
        n.exec(&uid, &["cat", "/etc/app/greeting"]).await,
        (0, "hello".into())
    );
    assert_eq!(
        n.exec(&uid, &["cat", "/etc/secret/password"]).await,
        (0, "hunter2".into())
    );
    let (_, mode) = n
        .exec(&uid, &["stat", "-L", "-c", "%a", "/etc/secret/password"])
        .await;
    assert_eq!(mode.trim(), "400");
    let (_, env) = n.exec(&uid, &["env"]).await;
    for want in ["CFG_greeting=hello", "CFG_color=blue", "PASSWORD=hunter2"] {
        assert!(env.lines().any(|l| l == want), "{want} in {env}");
    }
    assert!(!env.contains("MISSING="), "{env}");
    // A volume cannot be written from the container.
    let (code, _) = n.exec(&uid, &["sh", "-c", "echo x > /etc/app/new"]).await;
    assert_ne!(code, 0, "configMap volumes are read-only");

    // The service-account token: a JWT the API server accepts as this pod's account.
    let sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let (code, token) = n.exec(&uid, &["cat", &format!("{sa_dir}/token")]).await;
    assert_eq!(code, 0);
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let (_, ca) = n.exec(&uid, &["cat", &format!("{sa_dir}/ca.crt")]).await;
    assert_eq!(ca, n.cp.ca_pem());
    assert_eq!(
        n.exec(&uid, &["cat", &format!("{sa_dir}/namespace")])
            .await
            .1,
        "default"
    );
    let reviews: Api<TokenReview> = Api::all(n.client.clone());
    let review = reviews
        .create(
            &PostParams::default(),
            &TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let st = review.status.unwrap();
    assert_eq!(st.authenticated, Some(true), "{st:?}");
    assert_eq!(
        st.user.unwrap().username.as_deref(),
        Some("system:serviceaccount:default:default")
    );

    // Updates reach the running container in place, through the ..data swap.
    cms.patch(
        "app-config",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"greeting": "bonjour"}})),
    )
    .await
    .unwrap();
    secrets
        .patch(
            "app-secret",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"stringData": {"password": "correct-horse"}})),
        )
        .await
        .unwrap();
    n.wait_for(
        "the configMap update in the container",
        Duration::from_secs(30),
        || async {
            (n.exec(&uid, &["cat", "/etc/app/greeting"]).await.1 == "bonjour").then_some(())
        },
    )
    .await;
    n.wait_for(
        "the secret update in the container",
        Duration::from_secs(30),
        || async {
            (n.exec(&uid, &["cat", "/etc/secret/password"]).await.1 == "correct-horse")
                .then_some(())
        },
    )
    .await;
    let (_, link) = n.exec(&uid, &["readlink", "/etc/app/greeting"]).await;
    assert_eq!(link.trim(), "..data/greeting");
    // The container that started before the update keeps its environment (as upstream).
    let (_, env) = n.exec(&uid, &["env"]).await;
    assert!(env.lines().any(|l| l == "CFG_greeting=hello"), "{env}");

    // Secrets live on a tmpfs, never on the node's disk.
    let sec_dir = n
        .node
        .root_dir
        .join("pods")
        .join(&uid)
        .join("volumes/kubernetes.io~secret/sec");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(sec_dir.to_str().unwrap())
                && l.contains(" - tmpfs ")),
        "{} is a tmpfs",
        sec_dir.display()
    );
    n.pods("default")
        .delete("consumer", &Default::default())
        .await
        .unwrap();
    n.wait_for("consumer gone", Duration::from_secs(60), || async {
        n.pods("default")
            .get_opt("consumer")
            .await
            .ok()
            .and_then(|p| p.is_none().then_some(()))
    })
    .await;
    assert!(
        !mounts_under(&n.node.root_dir),
        "volume mounts left after the pod was deleted"
    );
}

fn mounts_under(dir: &std::path::Path) -> bool {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
}

#[tokio::test(flavor = "current_thread")]
async fn static_pod_gets_a_mirror_pod_that_is_recreated_and_removed() {
    let Some(n) = ApiNode::start("", &[]).await else {
        return;
    };
    n.node.write_manifest(
        "static.yaml",
        &common::pod_yaml("static-web", "Always", "echo up; sleep 3600"),
    );
    let name = format!("static-web-{NODE}");
    let mirror = n
        .wait_pod("default", &name, "the mirror pod Running", |p| {
            phase(p) == "Running"
        })
        .await;
    let ann = mirror.metadata.annotations.clone().unwrap();
    let hash = ann["kubernetes.io/config.mirror"].clone();
    assert_eq!(ann["kubernetes.io/config.hash"], hash);
    assert_eq!(ann["kubernetes.io/config.source"], "file");
    let owner = &mirror.metadata.owner_references.clone().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", NODE));
    // The mirror's status is the static pod's: its container and the pod IP.
    let st = mirror.status.clone().unwrap();
    assert!(st.pod_ip.unwrap_or_default().starts_with("10.66.0."));
    let cid = st.container_statuses.unwrap()[0]
        .container_id
        .clone()
        .unwrap();
    let running = n.node.wait_running("static-web", 1).await;
    assert_eq!(cid, format!("containerd://{}", running[0].id));

    // Deleted by a user: the kubelet puts it back; the static pod itself keeps running.
    let first_uid = mirror.metadata.uid.clone().unwrap();
    n.pods("default")
        .delete(&name, &Default::default())
        .await
        .unwrap();
    let again = n
        .wait_pod("default", &name, "a new mirror pod", |p| {
            p.metadata.uid.as_deref() != Some(first_uid.as_str())
                && p.metadata.deletion_timestamp.is_none()
        })
        .await;
    assert_eq!(
        again.metadata.annotations.unwrap()["kubernetes.io/config.mirror"],
        hash
    );
    let still = n.node.wait_running("static-web", 1).await;
    assert_eq!(
        still[0].id, running[0].id,
        "the static pod was not restarted"
    );

    // The manifest goes: so does the mirror pod.
    n.node.remove_manifest("static.yaml");
    n.wait_for(
        "the mirror pod removed",
        Duration::from_secs(60),
        || async {
            n.pods("default")
                .get_opt(&name)
                .await
                .ok()
                .and_then(|p| p.is_none().then_some(()))
        },
    )
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn pods_keep_running_across_api_server_and_kubelet_restarts() {
    let Some(mut n) = ApiNode::start("", &[]).await else {
        return;
    };
    let yaml = |name: &str, script: &str, policy: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
             restartPolicy: {policy}\n  terminationGracePeriodSeconds: 2\n  automountServiceAccountToken: false\n  \
             containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [sh, -c, {script:?}]\n"
        )
    };
    let long = n
        .create_pod("default", &yaml("long", "sleep 3600", "Always"))
        .await;
    let long_uid = long.metadata.uid.clone().unwrap();
    n.wait_pod("default", "long", "Running", |p| phase(p) == "Running")
        .await;
    let short = n
        .create_pod("default", &yaml("short", "sleep 6; exit 0", "Never"))
        .await;
    let short_uid = short.metadata.uid.clone().unwrap();
    n.wait_pod("default", "short", "Running", |p| phase(p) == "Running")
        .await;
    let before = running_ids(&n, &long_uid).await;
    assert_eq!(before.len(), 1);

    // The API server goes away; the pods do not. The short pod finishes meanwhile, and the
    // kubelet relists (sees it) before the API server comes back.
    n.cp.stop_apiserver();
    n.wait_for(
        "the short pod's container to exit",
        Duration::from_secs(30),
        async || !exited_ids(&n, &short_uid).await.is_empty(),
    )
    .await;
    n.node.wait_relists(2).await;
    assert_eq!(
        running_ids(&n, &long_uid).await,
        before,
        "the long pod kept running"
    );
    assert!(n.node.kubelet_alive());
    n.cp.restart_apiserver().expect("API server back");
    // The kubelet catches up: the finished pod's status arrives, new pods are run.
    n.wait_pod("default", "short", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    n.create_pod("default", &yaml("after", "sleep 3600", "Always"))
        .await;
    n.wait_pod("default", "after", "Running", |p| phase(p) == "Running")
        .await;

    // A kubelet restart restarts nothing.
    let sandboxes_before = n.node.all_sandboxes().await.len();
    n.node.stop_kubelet(false);
    n.node.start_kubelet();
    // Several relists of the new kubelet pass (nothing may be restarted meanwhile); the
    // node was Ready before, so waiting for Ready alone would not give it that time.
    n.node.wait_relists(6).await;
    let nodes: Api<KubeNode> = Api::all(n.client.clone());
    n.wait_for(
        "node Ready after the restart",
        Duration::from_secs(30),
        || async {
            let node = nodes.get_opt(NODE).await.ok().flatten()?;
            node.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        running_ids(&n, &long_uid).await,
        before,
        "the long pod's container is the same"
    );
    assert_eq!(
        n.node.all_sandboxes().await.len(),
        sandboxes_before,
        "no new sandbox"
    );
    let long = n.pods("default").get("long").await.unwrap();
    let cs = &long.status.unwrap().container_statuses.unwrap()[0];
    assert_eq!(cs.restart_count, 0);
    let short = n.pods("default").get("short").await.unwrap();
    assert_eq!(phase(&short), "Succeeded", "a finished pod stays finished");
    assert!(
        running_ids(&n, &short_uid).await.is_empty(),
        "a finished pod is not started again"
    );
}

async fn running_ids(n: &ApiNode, uid: &str) -> Vec<String> {
    ids_in_state(
        n,
        uid,
        nodus_proto::runtime::v1::ContainerState::ContainerRunning,
    )
    .await
}

async fn exited_ids(n: &ApiNode, uid: &str) -> Vec<String> {
    ids_in_state(
        n,
        uid,
        nodus_proto::runtime::v1::ContainerState::ContainerExited,
    )
    .await
}

/// IDs of the containers of pod `uid` in `state`.
async fn ids_in_state(
    n: &ApiNode,
    uid: &str,
    state: nodus_proto::runtime::v1::ContainerState,
) -> Vec<String> {
    use nodus_proto::runtime::v1 as cri;
    let mut rt = n.node.rt().await;
    rt.list_containers(cri::ListContainersRequest {
        filter: Some(cri::ContainerFilter {
            label_selector: [("io.kubernetes.pod.uid".to_string(), uid.to_string())].into(),
            state: Some(cri::ContainerStateValue {
                state: state as i32,
            }),
            ..Default::default()
        }),
    })
    .await
    .unwrap()
    .into_inner()
    .containers
    .into_iter()
    .map(|c| c.id)
    .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn admission_rejections_probes_and_back_off_become_events() {
    use k8s_openapi::api::core::v1::Event;
    let Some(n) = ApiNode::start("", &[]).await else {
        return;
    };
    let big = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: too-big, namespace: default}}\nspec:\n  \
         automountServiceAccountToken: false\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    \
         command: [sleep, '3600']\n    resources: {{requests: {{cpu: '500'}}}}\n"
    );
    let big = n.create_pod("default", &big).await;
    let p = n
        .wait_pod("default", "too-big", "Failed", |p| phase(p) == "Failed")
        .await;
    let st = p.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("OutOfcpu"));
    assert!(st
        .message
        .unwrap()
        .starts_with("Pod was rejected: Node didn't have enough resource: cpu"));
    let crashing = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: crashing, namespace: default}}\nspec:\n  \
         terminationGracePeriodSeconds: 2\n  automountServiceAccountToken: false\n  containers:\n  \
         - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [sh, -c, 'exit 3']\n  \
         - name: probed\n    image: {BUSYBOX_IMAGE}\n    command: [sleep, '3600']\n    \
         readinessProbe: {{exec: {{command: ['false']}}, periodSeconds: 1}}\n"
    );
    let crashing = n.create_pod("default", &crashing).await;
    let events: Api<Event> = Api::namespaced(n.client.clone(), "default");
    let want = [
        (big.metadata.uid.clone().unwrap(), "OutOfcpu", "Warning"),
        (crashing.metadata.uid.clone().unwrap(), "BackOff", "Warning"),
        (
            crashing.metadata.uid.clone().unwrap(),
            "Unhealthy",
            "Warning",
        ),
        (crashing.metadata.uid.clone().unwrap(), "Started", "Normal"),
    ];
    let found = n
        .wait_for(
            "OutOfcpu, BackOff, Unhealthy and Started events",
            Duration::from_secs(90),
            || {
                let events = events.clone();
                let want = want.clone();
                async move {
                    let list = events.list(&Default::default()).await.ok()?.items;
                    let all = want.iter().all(|(uid, reason, kind)| {
                        list.iter().any(|e| {
                            e.involved_object.uid.as_deref() == Some(uid.as_str())
                                && e.reason.as_deref() == Some(*reason)
                                && e.type_.as_deref() == Some(*kind)
                        })
                    });
                    all.then_some(list)
                }
            },
        )
        .await;
    let unhealthy = found
        .iter()
        .find(|e| e.reason.as_deref() == Some("Unhealthy"))
        .unwrap();
    assert!(
        unhealthy
            .message
            .as_deref()
            .unwrap_or("")
            .starts_with("Readiness probe failed"),
        "{unhealthy:?}"
    );
    assert_eq!(
        unhealthy.source.as_ref().unwrap().host.as_deref(),
        Some(NODE)
    );
    assert_eq!(
        unhealthy.involved_object.field_path.as_deref(),
        Some("spec.containers{probed}")
    );
    // Repeated failures fold into one event with a count, as upstream's correlator does.
    n.wait_for(
        "the Unhealthy event counted up",
        Duration::from_secs(30),
        || async {
            let list = events.list(&Default::default()).await.ok()?.items;
            list.iter()
                .any(|e| e.reason.as_deref() == Some("Unhealthy") && e.count.unwrap_or(0) >= 3)
                .then_some(())
        },
    )
    .await;
}
