//! Image pulls from a private registry as a cluster's pods make them: Debian's
//! `docker-registry` on the node's loopback, serving TLS (a certificate of the test CA,
//! which containerd trusts) and asking for htpasswd credentials. A pod pulls with its
//! `imagePullSecrets`; a wrong password gives upstream's `ErrImagePull` then
//! `ImagePullBackOff`, with pulls backed off; a pod without a secret pulls with the node's
//! own credentials (`<root-dir>/config.json`). Needs `NODUS_KUBE_APISERVER` (a SKIP line
//! without it): static pods cannot name secrets.

mod common;

use std::time::{Duration, Instant};

use common::api::{phase, ApiNode};
use common::BUSYBOX_IMAGE;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use nodus_testkit::registry::{Registry, RegistryOptions};

/// Not loopback: containerd speaks plain HTTP to a registry on localhost unless told
/// otherwise. The address is added to the node namespace's `lo`.
const IP: &str = "10.77.0.1";
const ADDR: &str = "10.77.0.1:5443";
const USER: &str = "puller";
const PASSWORD: &str = "s3cret-pull";

fn docker_config(user: &str, password: &str) -> String {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    serde_json::json!({"auths": {ADDR: {"auth": auth}}}).to_string()
}

async fn pull_secret(n: &ApiNode, name: &str, password: &str) {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": docker_config(USER, password)},
    }))
    .unwrap();
    Api::<Secret>::namespaced(n.client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| n.fail(&format!("create secret {name}: {e}")));
}

fn pod_yaml(name: &str, image: &str, secret: Option<&str>) -> String {
    let secrets = secret
        .map(|s| format!("  imagePullSecrets: [{{name: {s}}}]\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
         terminationGracePeriodSeconds: 1\n  automountServiceAccountToken: false\n{secrets}  \
         containers:\n  - name: main\n    image: {image}\n    imagePullPolicy: Always\n    \
         command: [sleep, '3600']\n"
    )
}

/// The times (seconds of the day) at which refused pulls began: refusals less than 1 s
/// apart belong to one pull (containerd retries within a pull for some 20 ms).
fn denied_pulls(log: &str) -> Vec<f64> {
    let mut starts: Vec<f64> = Vec::new();
    let mut last = f64::MIN;
    for line in log
        .lines()
        .filter(|l| l.contains("error authenticating user"))
    {
        let Some(t) = line
            .split("time=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|stamp| stamp.split('T').nth(1))
            .and_then(|clock| clock.strip_suffix('Z'))
        else {
            continue;
        };
        let secs: f64 = t
            .split(':')
            .map(|p| p.parse::<f64>().unwrap_or(0.0))
            .fold(0.0, |acc, p| acc * 60.0 + p);
        if secs - last > 1.0 {
            starts.push(secs);
        }
        last = secs;
    }
    starts
}

fn waiting_reason(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

#[tokio::test(flavor = "current_thread")]
async fn private_tls_registry_pulls_with_pod_and_node_credentials() {
    // containerd trusts the registry's CA from this path; the file is written once the
    // control plane (whose CA signs the registry's certificate) exists: containerd reads it
    // at each pull.
    let trust = tempfile::tempdir().unwrap();
    let ca = trust.path().join("registry-ca.crt");
    let containerd_config = format!(
        "[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"{ADDR}\".tls]\n  ca_file = \"{}\"\n",
        ca.display()
    );
    let Some(n) = ApiNode::start_with_containerd(&containerd_config, |_| String::new(), &[]).await
    else {
        return;
    };
    std::fs::copy(n.cp.ca_path(), &ca).unwrap();
    // The test thread is in the node's network namespace: so are `ip` and the registry.
    let ip = std::process::Command::new("ip")
        .args(["addr", "add", &format!("{IP}/32"), "dev", "lo"])
        .output()
        .unwrap();
    assert!(ip.status.success(), "{ip:?}");
    let cert =
        n.cp.serving_cert("registry", &[IP])
            .unwrap_or_else(|e| n.fail(&format!("registry certificate: {e}")));
    let registry = Registry::start(RegistryOptions {
        addr: ADDR.into(),
        tls: Some((cert.cert, cert.key)),
        auth: Some((USER.into(), PASSWORD.into())),
    })
    .unwrap_or_else(|e| n.fail(&format!("registry: {e}")));
    let image = registry
        .push(
            &n.node.ctrd.socket(),
            BUSYBOX_IMAGE,
            "private/busybox:1.0",
            Some(&ca),
        )
        .unwrap_or_else(|e| n.fail(&format!("push: {e}\n{}", registry.log())));

    // The pod's secret.
    pull_secret(&n, "regcred", PASSWORD).await;
    n.create_pod("default", &pod_yaml("private", &image, Some("regcred")))
        .await;
    let running = n
        .wait_pod("default", "private", "Running", |p| phase(p) == "Running")
        .await;
    let cs = &running.status.unwrap().container_statuses.unwrap()[0];
    assert_eq!(cs.image, image);
    assert!(cs.image_id.contains("sha256:"), "{cs:?}");

    // A wrong password: ErrImagePull, then ImagePullBackOff, pulls 10 s apart and more.
    pull_secret(&n, "badcred", "not-the-password").await;
    let started = Instant::now();
    n.create_pod("default", &pod_yaml("denied", &image, Some("badcred")))
        .await;
    n.wait_pod("default", "denied", "ErrImagePull", |p| {
        waiting_reason(p).as_deref() == Some("ErrImagePull")
    })
    .await;
    n.wait_pod("default", "denied", "ImagePullBackOff", |p| {
        waiting_reason(p).as_deref() == Some("ImagePullBackOff")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(25).saturating_sub(started.elapsed())).await;
    // A pull with a wrong password is a burst of refused requests in the registry's log;
    // the bursts are the kubelet's pulls: the first, then after 10 s of back-off, then 20 s
    // more, never one per sync (2 s while the pod waits).
    let pulls = denied_pulls(&registry.log());
    assert!(
        (1..=3).contains(&pulls.len()),
        "{} pulls in 25 s at {pulls:?}",
        pulls.len()
    );
    for gap in pulls.windows(2).map(|w| w[1] - w[0]) {
        assert!(gap >= 9.0, "pulls {gap:.1} s apart: {pulls:?}");
    }
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(n.client.clone(), "default");
    let failed: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("denied"))
        .filter(|e| e.reason.as_deref() == Some("Failed"))
        .filter_map(|e| e.message)
        .collect();
    assert!(
        failed
            .iter()
            .any(|m| m.starts_with(&format!("Failed to pull image \"{image}\""))),
        "{failed:?}"
    );

    // No secret: the node's own credentials.
    std::fs::write(
        n.node.root_dir.join("config.json"),
        docker_config(USER, PASSWORD),
    )
    .unwrap();
    n.create_pod("default", &pod_yaml("nodecreds", &image, None))
        .await;
    n.wait_pod("default", "nodecreds", "Running", |p| phase(p) == "Running")
        .await;
}
