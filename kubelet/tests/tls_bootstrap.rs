//! TLS bootstrap and client certificate rotation end to end (issue 24): the kubelet starts
//! with only kubeadm's bootstrap kubeconfig (a bootstrap token), asks for its client
//! certificate with a CSR, runs as `system:node:testnode` with what kube-controller-manager's
//! CSR approver and signer give it, and renews it before it expires (real etcd,
//! kube-apiserver and kube-controller-manager built from the same source).

mod common;

use std::path::Path;
use std::time::Duration;

use common::api::{phase, ApiNode};
use common::{BUSYBOX_IMAGE, NODE};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::api::{Api, Patch, PatchParams};

/// The CSRs of the cluster, by name.
async fn csrs(n: &ApiNode) -> Vec<CertificateSigningRequest> {
    let api: Api<CertificateSigningRequest> = Api::all(n.client.clone());
    api.list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn condition(csr: &CertificateSigningRequest, kind: &str) -> Option<String> {
    csr.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .and_then(|c| c.reason.clone())
}

async fn wait_node_ready(n: &ApiNode) {
    let nodes: Api<KubeNode> = Api::all(n.client.clone());
    n.wait_for("node Ready", Duration::from_secs(90), || {
        let nodes = nodes.clone();
        async move {
            let node = nodes.get_opt(NODE).await.ok().flatten()?;
            node.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        }
    })
    .await;
}

/// A busybox pod of `default` bound by name, running `sh -c script`.
fn pod_yaml(name: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
         automountServiceAccountToken: false\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    \
         imagePullPolicy: IfNotPresent\n    command: [sh, -c, '{script}']\n"
    )
}

/// (subject, issuer) of the first certificate in a PEM file.
fn names_of(pem_file: &Path) -> (String, String) {
    let data = std::fs::read(pem_file).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&data).unwrap();
    let cert = pem.parse_x509().unwrap();
    (cert.subject().to_string(), cert.issuer().to_string())
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_bootstraps_its_client_certificate_from_a_token() {
    let Some(mut n) = ApiNode::start_bootstrapping(true, &[], |_| String::new()).await else {
        return;
    };
    wait_node_ready(&n).await;
    let dir = n.ctrd.dir().to_path_buf();
    let pki = dir.join("pki");

    // One CSR, sent as the bootstrap token's user, approved and signed by the controllers.
    let list = csrs(&n).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let csr = &list[0];
    let name = csr.metadata.name.clone().unwrap();
    assert!(name.starts_with("node-csr-"), "{name}");
    assert_eq!(
        csr.spec.signer_name,
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    assert_eq!(
        csr.spec.username.as_deref(),
        Some("system:bootstrap:abcdef")
    );
    assert_eq!(condition(csr, "Approved").as_deref(), Some("AutoApproved"));

    // Upstream's files: kubelet-client-<timestamp>.pem, the -current symlink to it, the
    // kubeconfig naming it, and no key left waiting.
    let current = pki.join("kubelet-client-current.pem");
    let target = std::fs::read_link(&current).unwrap();
    let target = target.to_str().unwrap();
    assert!(target.starts_with("kubelet-client-20"), "{target}");
    assert!(!pki.join("kubelet-client.key.tmp").exists());
    let (subject, issuer) = names_of(&current);
    assert!(subject.contains("CN=system:node:testnode"), "{subject}");
    assert!(subject.contains("O=system:nodes"), "{subject}");
    assert!(issuer.contains("CN=nodus-test-ca"), "{issuer}");
    let kubeconfig = std::fs::read_to_string(dir.join("kubelet.conf")).unwrap();
    assert!(
        kubeconfig.contains(&format!("client-certificate: {}", current.display())),
        "{kubeconfig}"
    );

    // The node identity works: a pod bound to the node runs and reports its status.
    let yaml = pod_yaml("after-bootstrap", "sleep 3600");
    n.create_pod("default", &yaml).await;
    n.wait_pod("default", "after-bootstrap", "Running", |p| {
        phase(p) == "Running"
    })
    .await;

    // A restart with a valid kubeconfig sends no other CSR.
    n.node.stop_kubelet(false);
    n.node.start_kubelet();
    n.wait_for(
        "the restarted kubelet skips bootstrap",
        Duration::from_secs(30),
        || {
            let text = n.log_text();
            async move {
                (text
                    .matches("exists and is valid, skipping bootstrap")
                    .count()
                    == 1)
                    .then_some(())
            }
        },
    )
    .await;
    wait_node_ready(&n).await;
    assert_eq!(csrs(&n).await.len(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_denied_csr_is_reported_and_a_new_one_follows() {
    let Some(n) = ApiNode::start_bootstrapping(false, &[], |_| String::new()).await else {
        return;
    };
    let api: Api<CertificateSigningRequest> = Api::all(n.client.clone());
    let decide = |name: String, kind: &'static str| {
        let api = api.clone();
        async move {
            let patch = serde_json::json!({"status": {"conditions": [{
                "type": kind, "status": "True", "reason": "NodusTest",
                "message": format!("{kind} by the test"),
            }]}});
            api.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap_or_else(|e| panic!("{kind} {name}: {e}"));
        }
    };
    // Nothing approves it: the CSR waits.
    let first = n
        .wait_for("a pending CSR", Duration::from_secs(60), || async {
            csrs(&n).await.first().and_then(|c| c.metadata.name.clone())
        })
        .await;
    decide(first.clone(), "Denied").await;
    n.wait_for(
        "the denial in the kubelet log",
        Duration::from_secs(30),
        || {
            let text = n.log_text();
            let first = first.clone();
            async move {
                text.contains(&format!(
                    "certificate signing request {first} is denied, reason: NodusTest"
                ))
                .then_some(())
            }
        },
    )
    .await;
    let dir = n.ctrd.dir().to_path_buf();
    assert!(!dir.join("kubelet.conf").exists());
    assert!(!dir.join("pki/kubelet-client-current.pem").exists());
    // The next try is a new request (a new key); approved by hand, it is signed and used.
    let second = n
        .wait_for("a second CSR", Duration::from_secs(60), || async {
            csrs(&n)
                .await
                .into_iter()
                .filter_map(|c| c.metadata.name)
                .find(|name| *name != first)
        })
        .await;
    decide(second, "Approved").await;
    wait_node_ready(&n).await;
    assert!(dir.join("kubelet.conf").exists());
    assert!(!dir.join("pki/kubelet-client.key.tmp").exists());
}

#[tokio::test(flavor = "current_thread")]
async fn the_client_certificate_rotates_while_pods_keep_running() {
    // The 1.20 signer backdates notBefore by 5 min: a 7 min certificate has about 2 min left
    // when issued and is renewed 0 to 80 s after it (70 to 90% of its lifetime). Newer
    // signers (1.22+) keep notAfter 7 min ahead, so the renewal comes 3.4 to 5.8 min after
    // issue: the wait allows for both.
    let Some(n) = ApiNode::start_bootstrapping(true, &["--cluster-signing-duration=7m"], |cp| {
        let serving = cp
            .serving_cert("kubelet-serving", &[NODE, "10.66.0.1"])
            .expect("kubelet serving cert");
        format!(
            "rotateCertificates: true\naddress: 0.0.0.0\ntlsCertFile: {}\ntlsPrivateKeyFile: {}\n\
             authentication:\n  x509: {{clientCAFile: {}}}\n  webhook: {{enabled: true}}\n\
             authorization:\n  mode: Webhook\n",
            serving.cert.display(),
            serving.key.display(),
            cp.ca_path().display()
        )
    })
    .await
    else {
        return;
    };
    wait_node_ready(&n).await;
    let yaml = pod_yaml("steady", "echo up; sleep 3600");
    n.create_pod("default", &yaml).await;
    let pod = n
        .wait_pod("default", "steady", "Running", |p| phase(p) == "Running")
        .await;
    let container_id = |p: &k8s_openapi::api::core::v1::Pod| {
        p.status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .container_id
            .clone()
    };
    let first_container = container_id(&pod);
    let pki = n.ctrd.dir().join("pki");
    let mut seen = vec![std::fs::read_link(pki.join("kubelet-client-current.pem")).unwrap()];
    for round in 1..=2 {
        let target = n
            .wait_for(
                &format!("client certificate rotation {round}"),
                Duration::from_secs(420),
                || {
                    let seen = seen.clone();
                    let link = std::fs::read_link(pki.join("kubelet-client-current.pem")).ok();
                    async move { link.filter(|l| !seen.contains(l)) }
                },
            )
            .await;
        seen.push(target);
        // The renewals were CSRs of the node itself, approved as selfnodeclient. There may be
        // more than `round`: a new certificate whose random deadline (70 to 90% of its 7 min)
        // falls before the backdated 5 min are over is renewed again at once.
        let renewals: Vec<CertificateSigningRequest> = csrs(&n)
            .await
            .into_iter()
            .filter(|c| c.spec.username.as_deref() == Some("system:node:testnode"))
            .collect();
        assert!(renewals.len() >= round, "{renewals:?}");
        assert!(renewals
            .iter()
            .all(|c| condition(c, "Approved").as_deref() == Some("AutoApproved")));
        // After the switch the kubelet talks to the API server with the new certificate:
        // a new pod is picked up (pod watch), started and reported (status).
        let name = format!("after-rotation-{round}");
        n.create_pod(
            "default",
            &yaml.replace("name: steady", &format!("name: {name}")),
        )
        .await;
        n.wait_pod("default", &name, "Running", |p| phase(p) == "Running")
            .await;
        // kubectl logs and exec reach the kubelet through the API server; the pod from
        // before runs on, not restarted.
        assert_eq!(n.kubectl_ok(&["logs", "steady"]), "up\n");
        assert_eq!(
            n.kubectl_ok(&["exec", "steady", "--", "echo", "round", &round.to_string()]),
            format!("round {round}\n")
        );
        let pod = n
            .wait_pod("default", "steady", "Running", |p| phase(p) == "Running")
            .await;
        assert_eq!(container_id(&pod), first_container);
    }
    assert!(n.log_text().contains("client certificate rotated"));
    // Once the bootstrap certificate has expired, the API server would refuse a connection
    // made with it: a pod that still starts and reports Running shows the kubelet's new
    // connections carry the new certificate.
    let data = std::fs::read(pki.join(&seen[0])).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&data).unwrap();
    let expiry = pem.parse_x509().unwrap().validity().not_after.timestamp();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if expiry + 2 > now {
        tokio::time::sleep(Duration::from_secs((expiry + 2 - now) as u64)).await;
    }
    n.create_pod(
        "default",
        &yaml.replace("name: steady", "name: after-expiry"),
    )
    .await;
    n.wait_pod("default", "after-expiry", "Running", |p| {
        phase(p) == "Running"
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_serving_certificate_comes_from_an_approved_csr() {
    let Some(n) = ApiNode::start_bootstrapping(true, &[], |cp| {
        format!(
            "serverTLSBootstrap: true\naddress: 0.0.0.0\n\
             authentication:\n  x509: {{clientCAFile: {}}}\n  webhook: {{enabled: true}}\n\
             authorization:\n  mode: Webhook\n",
            cp.ca_path().display()
        )
    })
    .await
    else {
        return;
    };
    wait_node_ready(&n).await;
    let yaml = pod_yaml("web", "echo started; sleep 3600");
    n.create_pod("default", &yaml).await;
    n.wait_pod("default", "web", "Running", |p| phase(p) == "Running")
        .await;
    // No serving certificate until one is approved: the API server cannot reach the
    // kubelet API.
    let out = n.kubectl(&["logs", "web"]);
    assert!(!out.status.success(), "{out:?}");
    let serving = n
        .wait_for("a kubelet-serving CSR", Duration::from_secs(60), || async {
            csrs(&n)
                .await
                .into_iter()
                .find(|c| c.spec.signer_name == "kubernetes.io/kubelet-serving")
        })
        .await;
    assert_eq!(
        serving.spec.username.as_deref(),
        Some("system:node:testnode")
    );
    let mut usages = serving.spec.usages.clone().unwrap_or_default();
    usages.sort();
    assert_eq!(
        usages,
        ["digital signature", "key encipherment", "server auth"]
    );
    assert_eq!(
        condition(&serving, "Approved"),
        None,
        "nobody approves serving CSRs by itself"
    );
    let api: Api<CertificateSigningRequest> = Api::all(n.client.clone());
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": "Approved", "status": "True", "reason": "NodusTest",
        "message": "approved by the test"}]}});
    api.patch_approval(
        serving.metadata.name.as_deref().unwrap(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();
    // Signed by the cluster CA, which the API server trusts for kubelets: logs and exec work.
    let logs = n
        .wait_for(
            "kubectl logs through the new certificate",
            Duration::from_secs(60),
            || async {
                let out = n.kubectl(&["logs", "web"]);
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            },
        )
        .await;
    assert_eq!(logs, "started\n");
    assert_eq!(n.kubectl_ok(&["exec", "web", "--", "echo", "hi"]), "hi\n");
    let current = n.ctrd.dir().join("pki/kubelet-server-current.pem");
    let (subject, issuer) = names_of(&current);
    assert!(subject.contains("CN=system:node:testnode"), "{subject}");
    assert!(issuer.contains("CN=nodus-test-ca"), "{issuer}");
}
