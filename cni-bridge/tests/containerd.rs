//! nodus-bridge driven by containerd's CRI (the private containerd of nodus-testkit, whose
//! CNI plugins run in a private node network namespace): pods get addresses and reach
//! each other; stopping a pod releases its lease.

use std::process::Command;

use nodus_proto::runtime::v1::PodSandboxStatusRequest;
use nodus_testkit::{cri, Cni, ContainerdOptions, PrivateContainerd};
use serde_json::Value;

/// The pod's IP and the path of its network namespace, from a verbose PodSandboxStatus.
async fn pod_net(ctrd: &PrivateContainerd, id: &str) -> (String, String) {
    let mut rt = ctrd.runtime().await.unwrap();
    let st = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let ip = st
        .status
        .as_ref()
        .and_then(|s| s.network.as_ref())
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    let info: Value = serde_json::from_str(st.info.get("info").expect("verbose info")).unwrap();
    let ns = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .expect("network namespace path")
        .to_string();
    (ip, ns)
}

fn ping_from(netns: &str, target: &str) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ping", "-c", "1", "-W", "2", target])
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_started_through_cri_get_addresses_and_reach_each_other() {
    let ctrd = PrivateContainerd::start(ContainerdOptions {
        cni: Cni::NodusBridge {
            subnet: "10.77.0.0/24".into(),
        },
        ..Default::default()
    })
    .await
    .expect("private containerd starts");
    let mut rt = ctrd.runtime().await.unwrap();
    let mut ids = Vec::new();
    for name in ["web", "client"] {
        let config = ctrd.sandbox_config(name);
        let id = ctrd.must(name, cri::run_sandbox(&mut rt, &config, "").await);
        ids.push(id);
    }
    let (ip_web, ns_web) = pod_net(&ctrd, &ids[0]).await;
    let (ip_client, ns_client) = pod_net(&ctrd, &ids[1]).await;
    assert!(ip_web.starts_with("10.77.0."), "{ip_web}");
    assert!(ip_client.starts_with("10.77.0."), "{ip_client}");
    assert_ne!(ip_web, ip_client);
    assert!(ping_from(&ns_client, &ip_web), "client -> web {ip_web}");
    assert!(ping_from(&ns_web, &ip_client), "web -> client {ip_client}");
    assert!(ping_from(&ns_client, "10.77.0.1"), "client -> gateway");

    let lease_dir = ctrd.cni_data_dir().join(ctrd.network_name());
    assert!(lease_dir.join(&ip_web).exists());
    cri::stop_sandbox(&mut rt, &ids[0])
        .await
        .expect("StopPodSandbox");
    assert!(
        !lease_dir.join(&ip_web).exists(),
        "lease of a stopped pod released"
    );
    assert!(lease_dir.join(&ip_client).exists());
    cri::remove_sandbox(&mut rt, &ids[0])
        .await
        .expect("RemovePodSandbox");
}
