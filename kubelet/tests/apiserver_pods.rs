//! API pods as the node conformance specs see them, against a real kube-apiserver
//! (`NODUS_KUBE_APISERVER`; without it the tests print a SKIP line): Service environment
//! variables, logs whose last line has no newline, and an activeDeadlineSeconds set on a
//! running pod.

mod common;

use std::time::Duration;

use common::api::{phase, ApiNode};
use common::BUSYBOX_IMAGE;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};

// kubernetes node conformance: "Pods should contain environment variables for services" and
// "Downward API volume should provide podname as non-root with fsgroup" style log checks
// (`printf` without a newline).
#[tokio::test(flavor = "current_thread")]
async fn api_pod_gets_service_variables_and_its_whole_log() {
    // The API server reads logs from the kubelet's port on the node's address, as a client
    // signed by its CA.
    let Some(n) = ApiNode::start_with(
        |cp| {
            let serving = cp
                .serving_cert("kubelet-serving", &[common::NODE, "10.66.0.1"])
                .expect("kubelet serving cert");
            format!(
                "address: 0.0.0.0\ntlsCertFile: {}\ntlsPrivateKeyFile: {}\n\
                 authentication:\n  x509: {{clientCAFile: {}}}\n",
                serving.cert.display(),
                serving.key.display(),
                cp.ca_path().display()
            )
        },
        &[],
    )
    .await
    else {
        return;
    };
    let services: Api<Service> = Api::namespaced(n.client.clone(), "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "fooservice"},
        "spec": {"ports": [{"name": "http", "port": 8765, "targetPort": 8080}]},
    }))
    .unwrap();
    let svc = services
        .create(&PostParams::default(), &svc)
        .await
        .unwrap_or_else(|e| n.fail(&format!("create service: {e}")));
    let cluster_ip = svc.spec.unwrap().cluster_ip.unwrap();
    let kubernetes = n
        .wait_for("the kubernetes service", Duration::from_secs(30), || {
            let services = services.clone();
            async move { services.get_opt("kubernetes").await.ok().flatten() }
        })
        .await;
    let master_ip = kubernetes.spec.unwrap().cluster_ip.unwrap();

    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: env, namespace: default}}\nspec:\n  \
         restartPolicy: Never\n  automountServiceAccountToken: false\n  containers:\n  \
         - name: main\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    \
         command: [sh, -c, 'env | sort; printf NO-NEWLINE']\n"
    );
    n.create_pod("default", &yaml).await;
    n.wait_pod("default", "env", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    let log = n.kubectl_ok(&["logs", "-n", "default", "env"]);
    for want in [
        format!("FOOSERVICE_SERVICE_HOST={cluster_ip}\n"),
        "FOOSERVICE_SERVICE_PORT=8765\n".to_string(),
        "FOOSERVICE_SERVICE_PORT_HTTP=8765\n".to_string(),
        format!("FOOSERVICE_PORT=tcp://{cluster_ip}:8765\n"),
        format!("FOOSERVICE_PORT_8765_TCP_ADDR={cluster_ip}\n"),
        format!("KUBERNETES_SERVICE_HOST={master_ip}\n"),
        "KUBERNETES_SERVICE_PORT=443\n".to_string(),
    ] {
        assert!(log.contains(&want), "missing {want:?} in:\n{log}");
    }
    assert!(
        log.ends_with("\nNO-NEWLINE"),
        "the last line is lost: {log:?}"
    );
    // kubectl logs --since / --since-time reach the kubelet as sinceSeconds / sinceTime.
    let recent = n.kubectl_ok(&["logs", "-n", "default", "env", "--since=1h"]);
    assert_eq!(recent, log);
    let future = n.kubectl_ok(&[
        "logs",
        "-n",
        "default",
        "env",
        "--since-time=2099-01-01T00:00:00Z",
    ]);
    assert_eq!(future, "", "nothing was written after 2099");
}

// kubernetes node conformance: "Pods should allow activeDeadlineSeconds to be updated".
#[tokio::test(flavor = "current_thread")]
async fn active_deadline_set_on_a_running_pod_fails_it() {
    let Some(n) = ApiNode::start("", &[]).await else {
        return;
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: sleeper, namespace: default}}\nspec:\n  \
         terminationGracePeriodSeconds: 1\n  automountServiceAccountToken: false\n  containers:\n  \
         - name: main\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    \
         command: [sleep, '3600']\n"
    );
    n.create_pod("default", &yaml).await;
    n.wait_pod("default", "sleeper", "Running", |p| phase(p) == "Running")
        .await;
    let patch = serde_json::json!({"spec": {"activeDeadlineSeconds": 5}});
    n.pods("default")
        .patch(
            "sleeper",
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
        .unwrap_or_else(|e| n.fail(&format!("patch activeDeadlineSeconds: {e}")));
    let pod = n
        .wait_pod("default", "sleeper", "Failed", |p| phase(p) == "Failed")
        .await;
    let st = pod.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        st.message.as_deref(),
        Some("Pod was active on the node longer than the specified deadline")
    );
}

// A Node deleted by an operator (`kubectl delete node`) comes back within a few status
// periods (upstream waits for its 5-minute status report or a restart), and the node Lease
// is then owned by the new Node object, so the garbage collector keeps it.
#[tokio::test(flavor = "current_thread")]
async fn deleted_node_registers_again_with_a_lease_it_owns() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Node as KubeNode;
    let Some(n) = ApiNode::start(
        "nodeStatusUpdateFrequency: 2s\nnodeLeaseDurationSeconds: 8\n",
        &[],
    )
    .await
    else {
        return;
    };
    let nodes: Api<KubeNode> = Api::all(n.client.clone());
    let leases: Api<Lease> = Api::namespaced(n.client.clone(), "kube-node-lease");
    let owner_uid = |l: &Lease| {
        l.metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.first())
            .map(|o| o.uid.clone())
    };
    let first = n
        .wait_for(
            "the node and its lease",
            Duration::from_secs(60),
            async || {
                let node = nodes.get_opt(common::NODE).await.ok().flatten()?;
                let lease = leases.get_opt(common::NODE).await.ok().flatten()?;
                (owner_uid(&lease) == node.metadata.uid).then_some(node)
            },
        )
        .await;
    let old_uid = first.metadata.uid.unwrap();
    let t0 = std::time::Instant::now();
    nodes
        .delete(common::NODE, &Default::default())
        .await
        .unwrap_or_else(|e| n.fail(&format!("delete node: {e}")));
    // Within a few 2 s periods, far below the 5-minute report.
    let again = n
        .wait_for(
            "the node registered again",
            Duration::from_secs(20),
            async || {
                nodes
                    .get_opt(common::NODE)
                    .await
                    .ok()
                    .flatten()
                    .filter(|node| node.metadata.uid.as_deref() != Some(old_uid.as_str()))
            },
        )
        .await;
    eprintln!(
        "node back {:.1} s after its deletion",
        t0.elapsed().as_secs_f64()
    );
    let new_uid = again.metadata.uid.clone().unwrap();
    n.wait_for(
        "the lease owned by the new node",
        Duration::from_secs(20),
        async || {
            let lease = leases.get_opt(common::NODE).await.ok().flatten()?;
            (owner_uid(&lease).as_deref() == Some(new_uid.as_str())).then_some(())
        },
    )
    .await;
    // And its status is posted (Ready) on the new object.
    n.wait_for("the new node Ready", Duration::from_secs(20), async || {
        let node = nodes.get_opt(common::NODE).await.ok().flatten()?;
        node.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
}
