//! The kubelet-managed `/etc/hosts` of a pod (upstream `makeHostsMount` and
//! `ensureHostsFile`): one file per pod, `<root-dir>/pods/<uid>/etc-hosts`, bind-mounted into
//! each container that does not mount its own `/etc/hosts`, once the pod has an IP.
//!
//! - A pod on the pod network gets the localhost entries, a line per pod IP with its host
//!   name (and FQDN when it has a subdomain), then `hostAliases`.
//! - A host-network pod gets the node's `/etc/hosts` under a header saying so, then
//!   `hostAliases`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, HostAlias, Pod};

/// The first line of a managed file; e2e suites look for it.
pub(crate) const MANAGED_HEADER: &str = "# Kubernetes-managed hosts file.\n";
/// The first line of a host-network pod's file.
pub(crate) const MANAGED_HEADER_HOST_NETWORK: &str =
    "# Kubernetes-managed hosts file (host network).\n";

/// Where the container sees the file.
pub(crate) const ETC_HOSTS: &str = "/etc/hosts";

/// The file's content for a pod on the pod network.
pub(crate) fn managed_content(
    ips: &[String],
    host: &str,
    domain: &str,
    aliases: &[HostAlias],
) -> String {
    let mut s = String::from(MANAGED_HEADER);
    s.push_str("127.0.0.1\tlocalhost\n");
    s.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    s.push_str("fe00::0\tip6-localnet\n");
    s.push_str("fe00::0\tip6-mcastprefix\n");
    s.push_str("fe00::1\tip6-allnodes\n");
    s.push_str("fe00::2\tip6-allrouters\n");
    for ip in ips {
        if domain.is_empty() {
            s.push_str(&format!("{ip}\t{host}\n"));
        } else {
            s.push_str(&format!("{ip}\t{host}.{domain}\t{host}\n"));
        }
    }
    s.push_str(&alias_entries(aliases));
    s
}

/// The file's content for a host-network pod: the node's file, then the aliases.
pub(crate) fn host_network_content(node_hosts: &str, aliases: &[HostAlias]) -> String {
    let mut s = String::from(MANAGED_HEADER_HOST_NETWORK);
    s.push_str(node_hosts);
    if !node_hosts.is_empty() && !node_hosts.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(&alias_entries(aliases));
    s
}

fn alias_entries(aliases: &[HostAlias]) -> String {
    if aliases.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n# Entries added by HostAliases.\n");
    for a in aliases {
        let names = a.hostnames.as_deref().unwrap_or(&[]).join("\t");
        s.push_str(&format!("{}\t{names}\n", a.ip));
    }
    s
}

/// Whether `container` gets the managed file: the pod has an IP and the container does not
/// mount something of its own at `/etc/hosts`.
pub(crate) fn should_mount(container: &Container, pod_ips: &[String]) -> bool {
    !pod_ips.is_empty()
        && !container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| Path::new(&m.mount_path) == Path::new(ETC_HOSTS))
}

/// Writes the pod's file (replacing it atomically) and returns its path.
pub(crate) fn ensure_file(
    pod_dir: &Path,
    pod: &Pod,
    pod_ips: &[String],
    cluster_domain: &str,
    node_hosts_file: &Path,
) -> std::io::Result<PathBuf> {
    let spec = pod.spec.as_ref();
    let aliases = spec.and_then(|s| s.host_aliases.as_deref()).unwrap_or(&[]);
    let content = if spec.and_then(|s| s.host_network).unwrap_or(false) {
        let node = std::fs::read_to_string(node_hosts_file)?;
        host_network_content(&node, aliases)
    } else {
        let (host, domain) = super::dns::host_name_and_domain(pod, cluster_domain);
        managed_content(pod_ips, &host, &domain, aliases)
    };
    std::fs::create_dir_all(pod_dir)?;
    let path = pod_dir.join("etc-hosts");
    let tmp = pod_dir.join(".etc-hosts.tmp");
    std::fs::write(&tmp, content)?;
    // Readable by any user in the container, whatever the umask.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{load_manifest, Source};

    fn pod(extra: &str) -> Pod {
        let text = format!(
            "kind: Pod\nmetadata: {{name: web, namespace: ns1}}\nspec:\n{extra}  containers:\n  - name: c\n    image: 'i:1'\n  - name: own\n    image: 'i:1'\n    volumeMounts: [{{name: h, mountPath: /etc/hosts}}]\n  volumes: [{{name: h, hostPath: {{path: /etc/hosts}}}}]\n"
        );
        load_manifest(&text, Source::File, "/m/w", "node1")
            .0
            .remove(0)
    }

    #[test]
    fn pod_network_file_names_the_pod_and_its_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let p = pod("  hostname: h\n  subdomain: sub\n  hostAliases: [{ip: 1.2.3.4, hostnames: [foo, bar]}]\n");
        let path = ensure_file(
            dir.path(),
            &p,
            &["10.1.0.5".into()],
            "cluster.local",
            Path::new("/nonexistent"),
        )
        .unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.starts_with(MANAGED_HEADER), "{text}");
        assert!(text.contains("127.0.0.1\tlocalhost\n"), "{text}");
        assert!(
            text.contains("10.1.0.5\th.sub.ns1.svc.cluster.local\th\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\n# Entries added by HostAliases.\n1.2.3.4\tfoo\tbar\n"),
            "{text}"
        );
    }

    #[test]
    fn host_network_file_is_the_nodes_with_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("hosts");
        std::fs::write(&node, "127.0.0.1 localhost\n10.0.0.1 node1").unwrap();
        let p = pod("  hostNetwork: true\n");
        let path = ensure_file(dir.path(), &p, &["10.0.0.1".into()], "", &node).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            text,
            "# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n10.0.0.1 node1\n"
        );
        assert!(!text.contains(MANAGED_HEADER));
    }

    #[test]
    fn mounted_only_with_an_ip_and_no_own_etc_hosts() {
        let p = pod("");
        let spec = p.spec.as_ref().unwrap();
        let ips = vec!["10.1.0.5".to_string()];
        assert!(should_mount(&spec.containers[0], &ips));
        assert!(!should_mount(&spec.containers[1], &ips));
        assert!(!should_mount(&spec.containers[0], &[]));
    }
}
