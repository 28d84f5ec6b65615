//! The Node object (upstream `kubelet_node_status.go` and `pkg/kubelet/nodestatus`):
//! registration with the default labels, `--node-labels` and `--register-with-taints`, and a
//! status made of addresses, capacity and allocatable, nodeInfo, daemonEndpoints, images and
//! the conditions MemoryPressure, DiskPressure, PIDPressure and Ready. The status is computed
//! every `nodeStatusUpdateFrequency` and posted when it changed, or at least every
//! `nodeStatusReportFrequency`.
//!
//! Building the object is pure ([`NodeFacts`] in, `Node` out) so it is unit-tested without an
//! API server; [`NodeStatusManager`] gathers the facts and talks to the API.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::config::Config;
use crate::events::{node_reference, EventRecorder, NORMAL};
use crate::kubeclient::ApiError;
use crate::kuberuntime::cri::Cri;
use crate::version::{go_arch, KUBELET_VERSION};

/// At most this many images are reported in node status (upstream's nodeStatusMaxImages).
pub(crate) const MAX_IMAGES: usize = 50;

mod setters;
use setters::*;
pub(crate) use setters::{allocatable, allocatable_absolute, NodeFacts};

/// The latest posted Node, shared with the kubelet (admission reads allocatable from it).
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeShared {
    inner: Arc<Mutex<Option<Node>>>,
}

impl NodeShared {
    pub(crate) fn get(&self) -> Option<Node> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, n: Node) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = Some(n);
    }
}

/// Registers the node and keeps its status current.
pub(crate) struct NodeStatusManager {
    pub(crate) client: kube::Client,
    pub(crate) cfg: Config,
    pub(crate) cri: Cri,
    pub(crate) root_dir: PathBuf,
    pub(crate) events: EventRecorder,
    pub(crate) shared: NodeShared,
}

fn now() -> Time {
    Time(Timestamp::now())
}

impl NodeStatusManager {
    async fn facts(&self) -> NodeFacts {
        let mut f = machine_facts(&self.cfg, &self.root_dir);
        let version = self
            .cri
            .version()
            .await
            .map(|v| format!("{}://{}", v.runtime_name, v.runtime_version))
            .unwrap_or_default();
        f.system = system_info(&version);
        f.images = self
            .cri
            .list_images()
            .await
            .map(|i| node_images(&i))
            .unwrap_or_default();
        f.runtime_ready = runtime_readiness(&self.cri.status().await);
        f.runtime_features = self.cri.runtime_features().await.unwrap_or_default();
        f
    }

    /// Creates the Node, or takes over the existing one (labels reconciled, status ours).
    async fn register(&self, api: &Api<Node>) -> Result<Node, ApiError> {
        let facts = self.facts().await;
        let node = initial_node(&self.cfg, &facts, &now());
        match api.create(&PostParams::default(), &node).await {
            Ok(n) => {
                tracing::info!(node = %self.cfg.node_name, "successfully registered node");
                self.events.event(
                    node_reference(&self.cfg.node_name),
                    NORMAL,
                    "Starting",
                    "Starting kubelet.".into(),
                );
                Ok(n)
            }
            Err(e) => {
                let e = ApiError::from(e);
                if !e.is_already_exists() {
                    return Err(e);
                }
                // The node was registered before: make sure the default labels are right.
                let labels = node_labels(&self.cfg, &facts.hostname);
                let patch = serde_json::json!({"metadata": {"labels": labels}});
                let n = api
                    .patch(
                        &self.cfg.node_name,
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    )
                    .await?;
                tracing::info!(node = %self.cfg.node_name, "node was previously registered");
                Ok(n)
            }
        }
    }

    /// Runs forever: registration (retried with back-off), then the status loop.
    pub(crate) async fn run(self) {
        let api: Api<Node> = Api::all(self.client.clone());
        let mut delay = Duration::from_millis(100);
        let mut node = if self.cfg.register_node {
            loop {
                match self.register(&api).await {
                    Ok(n) => break n,
                    Err(e) => {
                        tracing::warn!(node = %self.cfg.node_name, error = %e, "unable to register node with API server, will retry");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(7));
                    }
                }
            }
        } else {
            loop {
                match api.get(&self.cfg.node_name).await {
                    Ok(n) => break n,
                    Err(e) => {
                        tracing::warn!(node = %self.cfg.node_name, error = %e, "node not registered yet (--register-node=false), will retry");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(7));
                    }
                }
            }
        };
        self.shared.set(node.clone());
        let mut last_report: Option<Instant> = None;
        let mut was_ready: Option<bool> = None;
        loop {
            let facts = self.facts().await;
            let status = node_status(&self.cfg, &facts, node.status.as_ref(), &now());
            let due =
                last_report.is_none_or(|t| t.elapsed() >= self.cfg.node_status_report_frequency);
            let changed = node
                .status
                .as_ref()
                .is_none_or(|s| status_changed(s, &status));
            if !changed && !due && self.cfg.register_node {
                // Nothing to post: still look that the Node exists, so that one deleted
                // behind our back is registered again within this period (upstream waits for
                // its next status report or a restart).
                match api.get_opt(&self.cfg.node_name).await {
                    Ok(None) => {
                        tracing::warn!(node = %self.cfg.node_name, "node object was deleted, registering it again");
                        if let Ok(n) = self.register(&api).await {
                            node = n;
                            self.shared.set(node.clone());
                            last_report = None;
                            was_ready = None;
                            continue;
                        }
                    }
                    Ok(Some(server)) => {
                        // Someone else changed a condition (the node lifecycle controller
                        // marks it Unknown after an outage): post ours again now, with
                        // transitions computed from what the server shows.
                        if let (Some(theirs), Some(ours)) =
                            (server.status.as_ref(), node.status.as_ref())
                        {
                            if conditions_differ(theirs, ours) {
                                tracing::info!(node = %self.cfg.node_name, "node conditions changed on the server, posting ours");
                                node = server;
                                continue;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(node = %self.cfg.node_name, error = %e, "cannot read the node object")
                    }
                }
            }
            if changed || due {
                let patch = serde_json::json!({"status": status});
                match api
                    .patch_status(
                        &self.cfg.node_name,
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    )
                    .await
                {
                    Ok(n) => {
                        let ready = facts.runtime_ready.is_ok();
                        if was_ready != Some(ready) {
                            let reason = if ready { "NodeReady" } else { "NodeNotReady" };
                            self.events.event(
                                node_reference(&self.cfg.node_name),
                                NORMAL,
                                reason,
                                format!("Node {} status is now: {reason}", self.cfg.node_name),
                            );
                            was_ready = Some(ready);
                        }
                        node = n;
                        self.shared.set(node.clone());
                        last_report = Some(Instant::now());
                    }
                    Err(e) => {
                        let e = ApiError::from(e);
                        tracing::warn!(node = %self.cfg.node_name, error = %e, "error updating node status, will retry");
                        if e.is_not_found() && self.cfg.register_node {
                            // Deleted behind our back: register again, as upstream.
                            if let Ok(n) = self.register(&api).await {
                                node = n;
                                self.shared.set(node.clone());
                                last_report = None;
                                continue;
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(self.cfg.node_status_update_frequency).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Taint;

    fn facts() -> NodeFacts {
        NodeFacts {
            node_name: "n1".into(),
            hostname: "n1".into(),
            internal_ip: Some("10.0.0.5".parse().unwrap()),
            cpus: 2,
            memory_bytes: 4 << 30,
            memory_available_bytes: 3 << 30,
            pods: 110,
            fs_bytes: 100 << 30,
            fs_available_bytes: 50 << 30,
            fs_inodes: 1000,
            fs_inodes_free: 900,
            pid_max: 32768,
            pids_running: 100,
            port: 10250,
            runtime_ready: Ok(()),
            ..Default::default()
        }
    }

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn capacity_and_allocatable_subtract_reserved_and_eviction() {
        let mut cfg = Config::default();
        cfg.kube_reserved.insert("cpu".into(), "100m".into());
        cfg.system_reserved.insert("cpu".into(), "150m".into());
        cfg.kube_reserved.insert("memory".into(), "100Mi".into());
        let (cap, alloc) = capacity_and_allocatable(&cfg, &facts());
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["memory"].0, "4194304Ki");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(alloc["cpu"].0, "1750m");
        // 4 GiB - 100Mi reserved - 100Mi hard eviction.
        assert_eq!(
            alloc["memory"].0,
            format!("{}Ki", (4u64 << 20) - 200 * 1024)
        );
        // 10% of the filesystem is the nodefs.available threshold.
        assert_eq!(
            alloc["ephemeral-storage"].0,
            format!("{}Ki", (100u64 << 20) * 9 / 10)
        );
    }

    #[test]
    fn conditions_as_upstream() {
        let cfg = Config::default();
        let cs = conditions(&cfg, &facts(), &[], &t(100));
        let names: Vec<_> = cs.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            names,
            ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
        );
        assert_eq!(cs[3].status, "True");
        assert_eq!(cs[3].reason.as_deref(), Some("KubeletReady"));
        assert_eq!(cs[0].reason.as_deref(), Some("KubeletHasSufficientMemory"));
        // Memory below the 100Mi threshold, a runtime whose network is not ready.
        let mut f = facts();
        f.memory_available_bytes = 50 << 20;
        f.runtime_ready = Err(NodeStatusError::NetworkNotReady {
            reason: "NetworkPluginNotReady".into(),
            message: "cni plugin not initialized".into(),
        });
        let cs2 = conditions(&cfg, &f, &cs, &t(200));
        assert_eq!(cs2[0].status, "True");
        assert_eq!(
            cs2[0].reason.as_deref(),
            Some("KubeletHasInsufficientMemory")
        );
        assert_eq!(cs2[3].status, "False");
        assert_eq!(cs2[3].reason.as_deref(), Some("KubeletNotReady"));
        assert!(cs2[3]
            .message
            .as_ref()
            .unwrap()
            .contains("NetworkReady=false"));
        // Transition times move only with the status; heartbeats always.
        assert_eq!(cs2[3].last_transition_time, Some(t(200)));
        assert_eq!(cs2[1].last_transition_time, Some(t(100)));
        assert_eq!(cs2[1].last_heartbeat_time, Some(t(200)));
    }

    #[test]
    fn disk_pressure_follows_nodefs_and_a_0_or_100_percent_threshold_is_off() {
        let disk = |eviction: &[(&str, &str)], available: i64| {
            let mut cfg = Config::default();
            for (k, v) in eviction {
                cfg.eviction_hard.insert(k.to_string(), v.to_string());
            }
            let mut f = facts();
            f.fs_available_bytes = available;
            let cs = conditions(&cfg, &f, &[], &t(100));
            (cs[1].status.clone(), cs[1].reason.clone().unwrap())
        };
        let gib = 1i64 << 30;
        // 100 GiB filesystem: 10% (the default) is 10 GiB.
        assert_eq!(disk(&[], 11 * gib).0, "False");
        assert_eq!(
            disk(&[], 9 * gib),
            ("True".to_string(), "KubeletHasDiskPressure".to_string())
        );
        assert_eq!(disk(&[("nodefs.available", "1%")], 9 * gib).0, "False");
        assert_eq!(disk(&[("nodefs.available", "20Gi")], 19 * gib).0, "True");
        // As upstream's parseThresholdStatement: 0% and 100% are no threshold at all.
        assert_eq!(disk(&[("nodefs.available", "0%")], 0).0, "False");
        assert_eq!(
            disk(
                &[("nodefs.available", "100%"), ("nodefs.inodesFree", "0%")],
                gib
            )
            .0,
            "False"
        );
        let mut cfg = Config::default();
        cfg.eviction_hard
            .insert("nodefs.available".into(), "100%".into());
        let (_, alloc) = capacity_and_allocatable(&cfg, &facts());
        assert_eq!(alloc["ephemeral-storage"].0, format!("{}Ki", 100u64 << 20));
    }

    #[test]
    fn runtime_handlers_and_features_come_from_cri_status() {
        use nodus_proto::runtime::v1 as cri;
        let cfg = Config::default();
        // containerd 1.6 reports neither: an empty list, no features.
        let st = serde_json::to_value(node_status(&cfg, &facts(), None, &t(1))).unwrap();
        assert_eq!(st.get("runtimeHandlers"), None);
        assert_eq!(st.get("features"), None);
        let mut f = facts();
        f.runtime_features = crate::kuberuntime::cri::RuntimeFeatures {
            handlers: vec![
                cri::RuntimeHandler {
                    name: String::new(),
                    features: Some(cri::RuntimeHandlerFeatures {
                        recursive_read_only_mounts: true,
                        user_namespaces: true,
                    }),
                },
                cri::RuntimeHandler {
                    name: "runc".into(),
                    features: None,
                },
            ],
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
                user_namespaces_host_network: false,
            }),
        };
        let st = serde_json::to_value(node_status(&cfg, &f, None, &t(1))).unwrap();
        assert_eq!(
            st["runtimeHandlers"],
            serde_json::json!([
                {"name": "", "features": {"recursiveReadOnlyMounts": true, "userNamespaces": true}},
                {"name": "runc", "features": {"recursiveReadOnlyMounts": false, "userNamespaces": false}}
            ])
        );
        assert_eq!(
            st["features"],
            serde_json::json!({"supplementalGroupsPolicy": true})
        );
        // An API server that drops both fields (1.20) does not make every status a change:
        // the kubelet would post each period without reading the server's conditions.
        let ours = node_status(&cfg, &f, None, &t(1));
        let mut server = ours.clone();
        server.runtime_handlers = None;
        server.features = None;
        assert!(!status_changed(&server, &ours));
        // One that keeps them sees a change of them.
        let mut other = ours.clone();
        other.features = Some(k8s_openapi::api::core::v1::NodeFeatures {
            supplemental_groups_policy: Some(false),
        });
        assert!(status_changed(&other, &ours));
    }

    #[test]
    fn heartbeat_alone_is_no_change() {
        let cfg = Config::default();
        let a = node_status(&cfg, &facts(), None, &t(100));
        let b = node_status(&cfg, &facts(), Some(&a), &t(110));
        assert!(!status_changed(&a, &b));
        let mut f = facts();
        f.runtime_ready = Err(NodeStatusError::RuntimeDown {
            error: "down".into(),
        });
        let c = node_status(&cfg, &f, Some(&a), &t(120));
        assert!(status_changed(&a, &c));
    }

    #[test]
    fn registered_node_has_labels_taints_addresses_and_endpoint() {
        let mut cfg = Config::default();
        cfg.node_labels
            .insert("nodus.io/pool".into(), "blue".into());
        cfg.register_with_taints = vec![Taint {
            key: "dedicated".into(),
            value: Some("x".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        }];
        let n = initial_node(&cfg, &facts(), &t(1));
        let labels = n.metadata.labels.clone().unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "n1");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["kubernetes.io/arch"], go_arch());
        assert_eq!(labels["nodus.io/pool"], "blue");
        assert_eq!(
            n.spec.as_ref().unwrap().taints.as_ref().unwrap()[0].key,
            "dedicated"
        );
        let st = n.status.unwrap();
        let addrs = st.addresses.unwrap();
        assert_eq!(addrs[0].type_, "InternalIP");
        assert_eq!(addrs[0].address, "10.0.0.5");
        assert_eq!(addrs[1].type_, "Hostname");
        assert_eq!(
            st.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port,
            10250
        );
    }

    #[test]
    fn identity_flags_reach_the_node_as_upstream_sets_them() {
        let mut cfg = Config {
            provider_id: Some("nodus://rack1/n1".into()),
            external_cloud_provider: true,
            node_ip: Some("10.0.0.5".parse().unwrap()),
            secondary_node_ip: Some("fd00::5".parse().unwrap()),
            ..Default::default()
        };
        let mut f = facts();
        f.secondary_ip = cfg.secondary_node_ip;
        let n = initial_node(&cfg, &f, &t(1));
        let spec = n.spec.clone().unwrap();
        assert_eq!(spec.provider_id.as_deref(), Some("nodus://rack1/n1"));
        let taint = &spec.taints.unwrap()[0];
        assert_eq!(
            (
                taint.key.as_str(),
                taint.value.as_deref(),
                taint.effect.as_str()
            ),
            (
                "node.cloudprovider.kubernetes.io/uninitialized",
                Some("true"),
                "NoSchedule"
            )
        );
        assert_eq!(
            n.metadata.annotations.unwrap()["alpha.kubernetes.io/provided-node-ip"],
            "10.0.0.5"
        );
        let addrs: Vec<(String, String)> = n
            .status
            .clone()
            .unwrap()
            .addresses
            .unwrap()
            .into_iter()
            .map(|a| (a.type_, a.address))
            .collect();
        assert_eq!(
            addrs,
            [
                ("InternalIP".to_string(), "10.0.0.5".to_string()),
                ("InternalIP".to_string(), "fd00::5".to_string()),
                ("Hostname".to_string(), "n1".to_string()),
            ]
        );
        // The cloud controller's addresses stay once it set them.
        let mut previous = n.status.unwrap();
        previous.addresses = Some(vec![k8s_openapi::api::core::v1::NodeAddress {
            type_: "ExternalIP".into(),
            address: "203.0.113.9".into(),
        }]);
        let st = node_status(&cfg, &f, Some(&previous), &t(2));
        assert_eq!(st.addresses, previous.addresses);
        // Without it, ours.
        cfg.external_cloud_provider = false;
        let st = node_status(&cfg, &f, Some(&previous), &t(2));
        assert_eq!(st.addresses.unwrap().len(), 3);
        assert!(initial_node(&cfg, &f, &t(1)).spec.unwrap().taints.is_none());
    }

    #[test]
    fn conditions_differ_on_status_or_reason_not_on_times() {
        use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
        let cond = |status: &str, reason: &str, at: &str| NodeCondition {
            type_: "Ready".into(),
            status: status.into(),
            reason: Some(reason.into()),
            last_heartbeat_time: Some(Time(at.parse().unwrap())),
            ..Default::default()
        };
        let st = |c: NodeCondition| NodeStatus {
            conditions: Some(vec![c]),
            ..Default::default()
        };
        let ours = st(cond("True", "KubeletReady", "2026-01-01T00:00:00Z"));
        let later = st(cond("True", "KubeletReady", "2026-01-01T00:05:00Z"));
        assert!(!conditions_differ(&ours, &later));
        // What the node lifecycle controller writes after 40 s without a heartbeat.
        let unknown = st(cond("Unknown", "NodeStatusUnknown", "2026-01-01T00:00:00Z"));
        assert!(conditions_differ(&unknown, &ours));
        assert!(conditions_differ(&NodeStatus::default(), &ours));
    }

    #[test]
    fn runtime_readiness_words() {
        use nodus_proto::runtime::v1::{RuntimeCondition, RuntimeStatus};
        let c = |t: &str, s: bool| RuntimeCondition {
            r#type: t.into(),
            status: s,
            reason: if s {
                String::new()
            } else {
                "NetworkPluginNotReady".into()
            },
            message: if s {
                String::new()
            } else {
                "cni plugin not initialized".into()
            },
        };
        let ok = RuntimeStatus {
            conditions: vec![c("RuntimeReady", true), c("NetworkReady", true)],
        };
        assert_eq!(runtime_readiness(&Ok(ok)), Ok(()));
        let net = RuntimeStatus {
            conditions: vec![c("RuntimeReady", true), c("NetworkReady", false)],
        };
        assert_eq!(
            runtime_readiness(&Ok(net)).unwrap_err().to_string(),
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:cni plugin not initialized"
        );
        let down = crate::kuberuntime::cri::CriError::Connect {
            endpoint: "unix:///run/c.sock".into(),
            detail: "connection refused".into(),
        };
        assert_eq!(
            runtime_readiness(&Err(down)).unwrap_err().to_string(),
            "container runtime is down, PLEG is not healthy: connecting to unix:///run/c.sock: connection refused"
        );
        assert_eq!(
            NodeFacts::default().runtime_ready.unwrap_err().to_string(),
            "container runtime status check may not have completed yet"
        );
    }

    #[test]
    fn images_largest_first_and_capped() {
        use nodus_proto::runtime::v1::Image;
        let imgs: Vec<Image> = (0..60)
            .map(|i| Image {
                id: format!("sha256:{i}"),
                repo_tags: vec![format!("img:{i}")],
                size: i as u64,
                ..Default::default()
            })
            .collect();
        let v = node_images(&imgs);
        assert_eq!(v.len(), MAX_IMAGES);
        assert_eq!(v[0].size_bytes, Some(59));
        assert_eq!(v[0].names.as_ref().unwrap()[0], "img:59");
    }
}
