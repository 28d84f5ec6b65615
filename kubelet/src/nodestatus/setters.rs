//! What a Node's status is made of (upstream `nodestatus/setters.go`): capacity and
//! allocatable, conditions, labels, addresses, images, system info, runtime readiness, taints.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints,
    NodeSpec, NodeStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::config::Config;

#[allow(unused_imports)]
use super::*;

/// Why the node is not Ready; the Display is the Ready condition's message (upstream's words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NodeStatusError {
    /// `error` is the CRI error's text (facts are cloned; CRI errors are not).
    #[error("container runtime is down, PLEG is not healthy: {error}")]
    RuntimeDown { error: String },
    #[error("container runtime not ready: RuntimeReady=false reason:{reason} message:{message}")]
    RuntimeNotReady { reason: String, message: String },
    #[error("container runtime status check may not have completed yet")]
    StatusNotChecked,
    #[error(
        "container runtime network not ready: NetworkReady=false reason:{reason} message:{message}"
    )]
    NetworkNotReady { reason: String, message: String },
    #[error("container runtime network not ready: NetworkReady is missing")]
    NetworkReadyMissing,
}

/// What the node status is made from, gathered from the machine and the runtime.
#[derive(Debug, Clone)]
pub(crate) struct NodeFacts {
    pub(crate) node_name: String,
    pub(crate) hostname: String,
    pub(crate) internal_ip: Option<IpAddr>,
    /// The other family's address of a dual-stack node.
    pub(crate) secondary_ip: Option<IpAddr>,
    pub(crate) cpus: i64,
    pub(crate) memory_bytes: i64,
    pub(crate) memory_available_bytes: i64,
    pub(crate) pods: u32,
    /// The root dir's filesystem: size and free bytes, inodes and free inodes.
    pub(crate) fs_bytes: i64,
    pub(crate) fs_available_bytes: i64,
    pub(crate) fs_inodes: i64,
    pub(crate) fs_inodes_free: i64,
    pub(crate) pid_max: i64,
    pub(crate) pids_running: i64,
    pub(crate) system: NodeSystemInfo,
    pub(crate) port: u16,
    pub(crate) images: Vec<ContainerImage>,
    /// From CRI Status (1.30+): the handlers with their features, and the runtime's own.
    pub(crate) runtime_features: crate::kuberuntime::cri::RuntimeFeatures,
    /// From CRI Status: (RuntimeReady, NetworkReady) and the message of a false one.
    pub(crate) runtime_ready: Result<(), NodeStatusError>,
}

impl Default for NodeFacts {
    fn default() -> Self {
        NodeFacts {
            node_name: String::new(),
            hostname: String::new(),
            internal_ip: None,
            secondary_ip: None,
            cpus: 0,
            memory_bytes: 0,
            memory_available_bytes: 0,
            pods: 0,
            fs_bytes: 0,
            fs_available_bytes: 0,
            fs_inodes: 0,
            fs_inodes_free: 0,
            pid_max: 0,
            pids_running: 0,
            system: NodeSystemInfo::default(),
            port: 0,
            images: Vec::new(),
            runtime_features: Default::default(),
            runtime_ready: Err(NodeStatusError::StatusNotChecked),
        }
    }
}

/// Resource quantities as upstream formats them: `cpu` in cores or millicores, bytes as Ki.
pub(super) fn bytes_quantity(b: i64) -> Quantity {
    let b = b.max(0);
    if b % 1024 == 0 {
        Quantity(format!("{}Ki", b / 1024))
    } else {
        Quantity(b.to_string())
    }
}

pub(super) fn milli_quantity(m: i64) -> Quantity {
    let m = m.max(0);
    if m % 1000 == 0 {
        Quantity((m / 1000).to_string())
    } else {
        Quantity(format!("{m}m"))
    }
}

pub(super) fn reserved(cfg: &Config, name: &str) -> i64 {
    [&cfg.kube_reserved, &cfg.system_reserved]
        .iter()
        .filter_map(|m| m.get(name))
        .filter_map(|q| crate::resources::parse_milli(q).ok())
        .map(|milli| milli as i64)
        .sum()
}

/// A hard eviction threshold against `capacity` (a quantity or a percentage), in units.
pub(super) fn threshold(cfg: &Config, signal: &str, capacity: i64) -> i64 {
    match cfg.eviction_hard.get(signal).map(String::as_str) {
        // Upstream ignores a threshold of 0% or 100% (it would never or always fire): a
        // node sets one to turn that signal off.
        None | Some("0%" | "100%") => 0,
        Some(v) => match v.strip_suffix('%') {
            Some(p) => (p.parse::<f64>().unwrap_or(0.0) / 100.0 * capacity as f64) as i64,
            None => crate::resources::parse_milli(v)
                .map(|m| (m / 1000) as i64)
                .unwrap_or(0),
        },
    }
}

/// Capacity and allocatable (capacity - kubeReserved - systemReserved - hard eviction).
pub(crate) fn capacity_and_allocatable(
    cfg: &Config,
    f: &NodeFacts,
) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let cpu_milli = f.cpus * 1000;
    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_string(), milli_quantity(cpu_milli));
    capacity.insert("memory".to_string(), bytes_quantity(f.memory_bytes));
    capacity.insert("pods".to_string(), Quantity(f.pods.to_string()));
    capacity.insert("ephemeral-storage".to_string(), bytes_quantity(f.fs_bytes));
    capacity.insert("hugepages-1Gi".to_string(), Quantity("0".into()));
    capacity.insert("hugepages-2Mi".to_string(), Quantity("0".into()));
    let mut alloc = capacity.clone();
    alloc.insert(
        "cpu".into(),
        milli_quantity(cpu_milli - reserved(cfg, "cpu")),
    );
    alloc.insert(
        "memory".into(),
        bytes_quantity(
            f.memory_bytes
                - reserved(cfg, "memory") / 1000
                - threshold(cfg, "memory.available", f.memory_bytes),
        ),
    );
    alloc.insert(
        "ephemeral-storage".into(),
        bytes_quantity(
            f.fs_bytes
                - reserved(cfg, "ephemeral-storage") / 1000
                - threshold(cfg, "nodefs.available", f.fs_bytes),
        ),
    );
    (capacity, alloc)
}

/// One condition, keeping its transition time while its status holds.
pub(super) fn condition(
    previous: &[NodeCondition],
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: &Time,
) -> NodeCondition {
    let status = if status { "True" } else { "False" };
    let prev = previous.iter().find(|c| c.type_ == kind);
    let last_transition_time = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    NodeCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time,
    }
}

/// The four conditions, worded as upstream.
pub(crate) fn conditions(
    cfg: &Config,
    f: &NodeFacts,
    previous: &[NodeCondition],
    now: &Time,
) -> Vec<NodeCondition> {
    let mem_low = f.memory_available_bytes < threshold(cfg, "memory.available", f.memory_bytes);
    let disk_low = f.fs_available_bytes < threshold(cfg, "nodefs.available", f.fs_bytes)
        || (f.fs_inodes > 0 && f.fs_inodes_free < threshold(cfg, "nodefs.inodesFree", f.fs_inodes));
    let pid_low = threshold(cfg, "pid.available", f.pid_max) > 0
        && f.pid_max - f.pids_running < threshold(cfg, "pid.available", f.pid_max);
    let mut out = vec![
        if mem_low {
            condition(
                previous,
                "MemoryPressure",
                true,
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
                now,
            )
        } else {
            condition(
                previous,
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
                now,
            )
        },
        if disk_low {
            condition(
                previous,
                "DiskPressure",
                true,
                "KubeletHasDiskPressure",
                "kubelet has disk pressure",
                now,
            )
        } else {
            condition(
                previous,
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
                now,
            )
        },
        if pid_low {
            condition(
                previous,
                "PIDPressure",
                true,
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
                now,
            )
        } else {
            condition(
                previous,
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
                now,
            )
        },
    ];
    out.push(match &f.runtime_ready {
        Ok(()) => condition(
            previous,
            "Ready",
            true,
            "KubeletReady",
            "kubelet is posting ready status",
            now,
        ),
        Err(why) => condition(
            previous,
            "Ready",
            false,
            "KubeletNotReady",
            &why.to_string(),
            now,
        ),
    });
    out
}

/// The default labels and `--node-labels`.
pub(crate) fn node_labels(cfg: &Config, hostname: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert("kubernetes.io/hostname".to_string(), hostname.to_string());
    labels.insert(
        "kubernetes.io/os".to_string(),
        std::env::consts::OS.to_string(),
    );
    labels.insert("kubernetes.io/arch".to_string(), go_arch().to_string());
    labels.insert(
        "beta.kubernetes.io/os".to_string(),
        std::env::consts::OS.to_string(),
    );
    labels.insert("beta.kubernetes.io/arch".to_string(), go_arch().to_string());
    for (k, v) in &cfg.node_labels {
        labels.insert(k.clone(), v.clone());
    }
    labels
}

/// The node status from the facts; `previous` keeps the conditions' transition times.
pub(crate) fn node_status(
    cfg: &Config,
    f: &NodeFacts,
    previous: Option<&NodeStatus>,
    now: &Time,
) -> NodeStatus {
    let (capacity, allocatable) = capacity_and_allocatable(cfg, f);
    let prev_conditions = previous
        .and_then(|p| p.conditions.clone())
        .unwrap_or_default();
    let mut addresses = Vec::new();
    for ip in f.internal_ip.iter().chain(&f.secondary_ip) {
        addresses.push(NodeAddress {
            type_: "InternalIP".into(),
            address: ip.to_string(),
        });
    }
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: f.hostname.clone(),
    });
    // With an external cloud provider, the addresses its controller set win (upstream
    // sets its own only until there are some).
    if cfg.external_cloud_provider {
        if let Some(set) = previous
            .and_then(|p| p.addresses.clone())
            .filter(|a| !a.is_empty())
        {
            addresses = set;
        }
    }
    NodeStatus {
        addresses: Some(addresses),
        allocatable: Some(allocatable),
        capacity: Some(capacity),
        conditions: Some(conditions(cfg, f, &prev_conditions, now)),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: f.port as i32,
            }),
        }),
        images: Some(f.images.clone()),
        node_info: Some(f.system.clone()),
        // None when empty: upstream's empty list is omitted from its JSON.
        runtime_handlers: Some(runtime_handlers(&f.runtime_features)).filter(|h| !h.is_empty()),
        features: f
            .runtime_features
            .features
            .map(|r| k8s_openapi::api::core::v1::NodeFeatures {
                supplemental_groups_policy: Some(r.supplemental_groups_policy),
            }),
        ..Default::default()
    }
}

/// `status.runtimeHandlers`, as upstream's RuntimeHandlers setter makes them.
fn runtime_handlers(
    f: &crate::kuberuntime::cri::RuntimeFeatures,
) -> Vec<k8s_openapi::api::core::v1::NodeRuntimeHandler> {
    use k8s_openapi::api::core::v1::{NodeRuntimeHandler, NodeRuntimeHandlerFeatures};
    f.handlers
        .iter()
        .map(|h| {
            let feat = h.features.unwrap_or_default();
            NodeRuntimeHandler {
                name: Some(h.name.clone()),
                features: Some(NodeRuntimeHandlerFeatures {
                    recursive_read_only_mounts: Some(feat.recursive_read_only_mounts),
                    user_namespaces: Some(feat.user_namespaces),
                }),
            }
        })
        .collect()
}

/// The taint a node registers with under `--cloud-provider=external`.
pub(crate) const EXTERNAL_CLOUD_PROVIDER_TAINT: &str =
    "node.cloudprovider.kubernetes.io/uninitialized";
/// The annotation telling the cloud controller which address `--node-ip` chose.
pub(crate) const PROVIDED_NODE_IP: &str = "alpha.kubernetes.io/provided-node-ip";

/// The Node object a kubelet registers.
pub(crate) fn initial_node(cfg: &Config, f: &NodeFacts, now: &Time) -> Node {
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
        "true".to_string(),
    );
    let mut taints = cfg.register_with_taints.clone();
    if cfg.external_cloud_provider {
        // The cloud controller removes it once it has initialized the node.
        taints.push(Taint {
            key: EXTERNAL_CLOUD_PROVIDER_TAINT.into(),
            value: Some("true".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
        if let Some(ip) = cfg.node_ip.filter(|ip| !ip.is_unspecified()) {
            annotations.insert(PROVIDED_NODE_IP.to_string(), ip.to_string());
        }
    }
    Node {
        metadata: ObjectMeta {
            name: Some(f.node_name.clone()),
            labels: Some(node_labels(cfg, &f.hostname)),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: (!taints.is_empty()).then_some(taints),
            provider_id: cfg.provider_id.clone(),
            ..Default::default()
        }),
        status: Some(node_status(cfg, f, None, now)),
    }
}

/// True when two statuses differ in more than the heartbeat times.
pub(crate) fn status_changed(server: &NodeStatus, ours: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s
    };
    let mut ours = strip(ours);
    // Fields an older API server drops (1.20 knows neither) would differ forever, and a
    // status that always differs is posted every period without looking at the server's
    // conditions first. The first report (always posted) gives a newer server both.
    if server.runtime_handlers.is_none() {
        ours.runtime_handlers = None;
    }
    if server.features.is_none() {
        ours.features = None;
    }
    strip(server) != ours
}

/// True when a condition's status or reason differs between two node statuses (times and
/// messages aside), or one has a condition type the other lacks.
pub(crate) fn conditions_differ(a: &NodeStatus, b: &NodeStatus) -> bool {
    let key = |s: &NodeStatus| {
        let mut v: Vec<(String, String, Option<String>)> = s
            .conditions
            .iter()
            .flatten()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect();
        v.sort();
        v
    };
    key(a) != key(b)
}

/// The images as node status lists them: names (tags and digests) and size, largest first.
pub(crate) fn node_images(images: &[nodus_proto::runtime::v1::Image]) -> Vec<ContainerImage> {
    let mut v: Vec<ContainerImage> = images
        .iter()
        .map(|i| ContainerImage {
            names: Some(
                i.repo_digests
                    .iter()
                    .chain(i.repo_tags.iter())
                    .cloned()
                    .collect(),
            ),
            size_bytes: Some(i.size as i64),
        })
        .filter(|i| i.names.as_ref().is_some_and(|n| !n.is_empty()))
        .collect();
    v.sort_by_key(|i| std::cmp::Reverse(i.size_bytes));
    v.truncate(MAX_IMAGES);
    v
}

pub(super) fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub(super) fn os_image() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

pub(super) fn meminfo_kb(key: &str, text: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The machine's system info (nodeInfo) with the runtime's version.
pub(crate) fn system_info(runtime_version: &str) -> NodeSystemInfo {
    let uname = nix::sys::utsname::uname().ok();
    NodeSystemInfo {
        machine_id: read_trim("/etc/machine-id"),
        system_uuid: read_trim("/sys/class/dmi/id/product_uuid"),
        boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
        kernel_version: uname
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        os_image: os_image(),
        container_runtime_version: runtime_version.to_string(),
        kubelet_version: KUBELET_VERSION.to_string(),
        kube_proxy_version: String::new(),
        operating_system: std::env::consts::OS.to_string(),
        architecture: go_arch().to_string(),
        ..Default::default()
    }
}

/// The IPv4 address of the interface holding the default route, else the first global one.
pub(crate) fn detect_internal_ip() -> Option<IpAddr> {
    let default_if = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| {
            t.lines()
                .skip(1)
                .find(|l| l.split_whitespace().nth(1) == Some("00000000"))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        });
    let addrs: Vec<(String, IpAddr)> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            Some((a.interface_name, IpAddr::V4(ip)))
        })
        .filter(|(_, ip)| !ip.is_loopback())
        .collect();
    default_if
        .and_then(|name| addrs.iter().find(|(n, _)| *n == name).map(|(_, ip)| *ip))
        .or_else(|| addrs.first().map(|(_, ip)| *ip))
}

/// Everything [`NodeFacts`] holds that the machine tells (not the runtime).
pub(super) fn machine_facts(cfg: &Config, root_dir: &std::path::Path) -> NodeFacts {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let (fs_bytes, fs_available_bytes, fs_inodes, fs_inodes_free) =
        match nix::sys::statvfs::statvfs(root_dir) {
            Ok(s) => (
                (s.blocks() as i64).saturating_mul(s.fragment_size() as i64),
                (s.blocks_available() as i64).saturating_mul(s.fragment_size() as i64),
                s.files() as i64,
                s.files_available() as i64,
            ),
            Err(_) => (0, 0, 0, 0),
        };
    let pids_running = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count() as i64
        })
        .unwrap_or(0);
    NodeFacts {
        node_name: cfg.node_name.clone(),
        hostname: cfg.node_name.clone(),
        internal_ip: cfg.node_ip.or_else(detect_internal_ip),
        secondary_ip: cfg.secondary_node_ip,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as i64)
            .unwrap_or(1),
        memory_bytes: meminfo_kb("MemTotal:", &meminfo).unwrap_or(0) * 1024,
        memory_available_bytes: meminfo_kb("MemAvailable:", &meminfo).unwrap_or(0) * 1024,
        pods: cfg.max_pods,
        fs_bytes,
        fs_available_bytes,
        fs_inodes,
        fs_inodes_free,
        pid_max: read_trim("/proc/sys/kernel/pid_max")
            .parse()
            .unwrap_or(32768),
        pids_running,
        port: cfg.port,
        ..Default::default()
    }
}

/// The node's allocatable cpu and memory (admission, resource references, OOM scores).
pub(crate) fn allocatable(cfg: &Config) -> crate::resources::NodeAllocatable {
    let f = machine_facts(cfg, &cfg.root_dir);
    let cpu_milli = f.cpus * 1000 - reserved(cfg, "cpu");
    let memory = f.memory_bytes
        - reserved(cfg, "memory") / 1000
        - threshold(cfg, "memory.available", f.memory_bytes);
    crate::resources::NodeAllocatable {
        cpu_milli: cpu_milli.max(0),
        memory: memory.max(0),
    }
}

/// Node allocatable as the `kubepods` cgroup enforces it (upstream's
/// `GetNodeAllocatableAbsolute`): capacity minus kubeReserved and systemReserved, with no
/// eviction threshold taken off.
pub(crate) fn allocatable_absolute(cfg: &Config) -> crate::resources::NodeAllocatable {
    let f = machine_facts(cfg, &cfg.root_dir);
    crate::resources::NodeAllocatable {
        cpu_milli: (f.cpus * 1000 - reserved(cfg, "cpu")).max(0),
        memory: (f.memory_bytes - reserved(cfg, "memory") / 1000).max(0),
    }
}

/// The runtime's readiness as the Ready condition words it.
pub(crate) fn runtime_readiness(
    status: &Result<nodus_proto::runtime::v1::RuntimeStatus, crate::kuberuntime::cri::CriError>,
) -> Result<(), NodeStatusError> {
    let st = match status {
        Ok(s) => s,
        Err(e) => {
            return Err(NodeStatusError::RuntimeDown {
                error: e.to_string(),
            })
        }
    };
    let cond = |name: &str| st.conditions.iter().find(|c| c.r#type == name);
    match cond("RuntimeReady") {
        Some(c) if c.status => {}
        Some(c) => {
            return Err(NodeStatusError::RuntimeNotReady {
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
        }
        None => return Err(NodeStatusError::StatusNotChecked),
    }
    match cond("NetworkReady") {
        Some(c) if c.status => Ok(()),
        Some(c) => Err(NodeStatusError::NetworkNotReady {
            reason: c.reason.clone(),
            message: c.message.clone(),
        }),
        None => Err(NodeStatusError::NetworkReadyMissing),
    }
}
