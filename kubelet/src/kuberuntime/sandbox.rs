//! Building the CRI sandbox configuration of a pod (upstream
//! `kuberuntime_sandbox.go` `generatePodSandboxConfig`): metadata, hostname, DNS from the
//! node's resolv.conf (or the pod's dnsConfig), port mappings, the pod's log directory,
//! the per-pod cgroup parent and the Linux namespace options.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use nodus_proto::runtime::v1 as cri;

use crate::kuberuntime::labels;

/// The pod's log directory: `<podLogsDir>/<namespace>_<name>_<uid>`.
pub(crate) fn pod_log_dir(pod_logs_dir: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    pod_logs_dir.join(format!("{namespace}_{name}_{uid}"))
}

/// The pod's cgroup parent under `cgroupRoot` (cgroupfs, absolute):
/// `<root>/kubepods/{burstable,besteffort}/pod<uid>`, Guaranteed pods directly in `kubepods`.
pub(crate) fn pod_cgroup_parent(cgroup_root: &str, pod: &Pod) -> String {
    crate::resources::pod_cgroup_name(
        cgroup_root,
        crate::resources::pod_qos(pod),
        pod.metadata.uid.as_deref().unwrap_or(""),
    )
}

/// Port mappings for every container port with a hostPort.
pub(crate) fn port_mappings(pod: &Pod) -> Vec<cri::PortMapping> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp as i32,
                Some("SCTP") => cri::Protocol::Sctp as i32,
                _ => cri::Protocol::Tcp as i32,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect()
}

/// Where things go on the node, for building configs.
#[derive(Debug, Clone)]
pub(crate) struct NodePaths {
    pub(crate) pod_logs_dir: PathBuf,
    pub(crate) cgroup_root: String,
    /// Cluster DNS settings for the sandboxes' resolver configuration and host names.
    pub(crate) dns: crate::network::dns::ClusterDns,
    /// `<root-dir>/seccomp`: where Localhost seccomp profiles are.
    pub(crate) seccomp_profile_root: PathBuf,
    /// `seccompDefault`: RuntimeDefault for pods that name no profile.
    pub(crate) seccomp_default: bool,
}

fn ns_mode(host: bool, otherwise: cri::NamespaceMode) -> i32 {
    if host {
        cri::NamespaceMode::Node as i32
    } else {
        otherwise as i32
    }
}

/// The pod's namespace options (network and IPC per pod, PID per container as upstream
/// unless `shareProcessNamespace`; host namespaces when asked for).
pub(crate) fn namespace_options(pod: &Pod) -> cri::NamespaceOption {
    let spec = pod.spec.as_ref();
    let flag = |f: fn(&k8s_openapi::api::core::v1::PodSpec) -> Option<bool>| {
        spec.and_then(f).unwrap_or(false)
    };
    let pid = if flag(|s| s.share_process_namespace) {
        cri::NamespaceMode::Pod
    } else {
        cri::NamespaceMode::Container
    };
    cri::NamespaceOption {
        network: ns_mode(flag(|s| s.host_network), cri::NamespaceMode::Pod),
        pid: ns_mode(flag(|s| s.host_pid), pid),
        ipc: ns_mode(flag(|s| s.host_ipc), cri::NamespaceMode::Pod),
        ..Default::default()
    }
}

/// The sandbox's security context: namespaces, the pod's user and groups, and privileged
/// when any container is (upstream `determinePodSandboxSecurityContext`).
pub(crate) fn sandbox_security_context(
    pod: &Pod,
    paths: &NodePaths,
) -> cri::LinuxSandboxSecurityContext {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let privileged = crate::pod_util::app_containers(pod)
        .iter()
        .chain(crate::pod_util::init_containers(pod))
        .any(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false)
        });
    let groups = super::container::supplemental_groups(psc);
    cri::LinuxSandboxSecurityContext {
        namespace_options: Some(namespace_options(pod)),
        run_as_user: psc
            .and_then(|s| s.run_as_user)
            .map(|value| cri::Int64Value { value }),
        run_as_group: psc
            .and_then(|s| s.run_as_group)
            .map(|value| cri::Int64Value { value }),
        supplemental_groups: groups,
        privileged,
        seccomp: Some(crate::security::seccomp::profile_for(
            pod,
            None,
            &paths.seccomp_profile_root,
            paths.seccomp_default,
        )),
        ..Default::default()
    }
}

/// The full sandbox config for `attempt`; Err names what cannot be made (a host name too
/// long for the kernel). The error is the Display of a [`DnsError`] as a String because
/// `SyncError::Config` (kuberuntime/mod.rs) takes one.
///
/// [`DnsError`]: crate::network::dns::DnsError
pub(crate) fn sandbox_config(
    pod: &Pod,
    attempt: u32,
    paths: &NodePaths,
    node_resolv_conf: &str,
) -> Result<cri::PodSandboxConfig, crate::network::dns::DnsError> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    Ok(cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: namespace.clone(),
            attempt,
        }),
        hostname: if host_network {
            String::new()
        } else {
            crate::network::dns::kernel_host_name(pod, &paths.dns.domain)?
        },
        log_directory: pod_log_dir(&paths.pod_logs_dir, &namespace, &name, &uid)
            .display()
            .to_string(),
        dns_config: Some(crate::network::dns::pod_dns_config(
            pod,
            &paths.dns,
            node_resolv_conf,
        )),
        port_mappings: port_mappings(pod),
        labels: labels::pod_labels(pod),
        annotations: labels::pod_annotations(pod),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: pod_cgroup_parent(&paths.cgroup_root, pod),
            security_context: Some(sandbox_security_context(pod, paths)),
            sysctls: pod
                .spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|sc| sc.sysctls.as_ref())
                .map(|v| {
                    v.iter()
                        .map(|s| (s.name.clone(), s.value.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            ..Default::default()
        }),
        windows: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{load_manifest, Source};

    fn pod(extra: &str) -> Pod {
        let text = format!(
            "kind: Pod\nmetadata: {{name: web, namespace: ns1}}\nspec:\n{extra}  containers:\n  - name: c\n    image: 'i:1'\n    ports: [{{containerPort: 80, hostPort: 8080}}, {{containerPort: 53, protocol: UDP}}]\n"
        );
        load_manifest(&text, Source::File, "/m/w", "node1")
            .0
            .remove(0)
    }

    #[test]
    fn sandbox_config_as_upstream() {
        let p = pod("");
        let uid = p.metadata.uid.clone().unwrap();
        let paths = NodePaths {
            pod_logs_dir: "/var/log/pods".into(),
            cgroup_root: "/".into(),
            dns: Default::default(),
            seccomp_profile_root: "/var/lib/kubelet/seccomp".into(),
            seccomp_default: false,
        };
        let c = sandbox_config(
            &p,
            2,
            &paths,
            "nameserver 10.0.0.53\nsearch a.local b.local\noptions ndots:2\n",
        )
        .unwrap();
        let m = c.metadata.as_ref().unwrap();
        assert_eq!(
            (m.name.as_str(), m.namespace.as_str(), m.attempt),
            ("web-node1", "ns1", 2)
        );
        assert_eq!(c.hostname, "web-node1");
        assert_eq!(
            c.log_directory,
            format!("/var/log/pods/ns1_web-node1_{uid}")
        );
        let dns = c.dns_config.as_ref().unwrap();
        assert_eq!(dns.servers, ["10.0.0.53"]);
        assert_eq!(dns.searches, ["a.local", "b.local"]);
        assert_eq!(dns.options, ["ndots:2"]);
        assert_eq!(c.port_mappings.len(), 1);
        assert_eq!(c.port_mappings[0].host_port, 8080);
        let linux = c.linux.as_ref().unwrap();
        assert_eq!(
            linux.cgroup_parent,
            format!("/kubepods/besteffort/pod{uid}")
        );
        let ns = linux
            .security_context
            .as_ref()
            .unwrap()
            .namespace_options
            .as_ref()
            .unwrap();
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
        assert_eq!(ns.network, cri::NamespaceMode::Pod as i32);
        assert_eq!(c.labels[labels::POD_UID_LABEL], uid);
    }

    #[test]
    fn cgroup_parent_is_absolute_under_root() {
        let p = pod("");
        let uid = p.metadata.uid.clone().unwrap();
        assert_eq!(
            pod_cgroup_parent("/nodus-test-1/", &p),
            format!("/nodus-test-1/kubepods/besteffort/pod{uid}")
        );
        assert_eq!(
            pod_cgroup_parent("/", &p),
            format!("/kubepods/besteffort/pod{uid}")
        );
    }

    #[test]
    fn host_namespaces_and_hostname() {
        let p = pod("  hostNetwork: true\n  hostPID: true\n  hostname: custom\n");
        let ns = namespace_options(&p);
        assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
        assert_eq!(ns.pid, cri::NamespaceMode::Node as i32);
        let host = |p: &Pod| crate::network::dns::host_name_and_domain(p, "").0;
        assert_eq!(host(&p), "custom");
        let long = pod(&format!("  hostname: {}-\n", "a".repeat(62)));
        assert_eq!(host(&long), "a".repeat(62));
    }
}
