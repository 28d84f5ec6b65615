//! The pod's DNS configuration as upstream's `GetPodDNS` builds it.
//!
//! - `ClusterFirst` (not on the host network) and `ClusterFirstWithHostNet`: the cluster DNS
//!   servers only, searches `<ns>.svc.<domain> svc.<domain> <domain>` then the node's, and
//!   `options ndots:5`. Without `clusterDNS` this falls back to `Default`.
//! - `Default` (and `ClusterFirst` on the host network): the node's resolv.conf; with an
//!   empty `resolvConf` setting, `127.0.0.1` and search `.`, as upstream.
//! - `None`: nothing but `spec.dnsConfig`.
//!
//! `spec.dnsConfig` is then merged in (servers and searches appended without duplicates,
//! options by name, the pod's value winning).

use k8s_openapi::api::core::v1::Pod;
use nodus_proto::runtime::v1 as cri;

/// Node-wide DNS settings (`clusterDNS`, `clusterDomain`, `resolvConf` of
/// KubeletConfiguration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClusterDns {
    /// The cluster DNS servers' addresses; empty: no cluster DNS.
    pub(crate) servers: Vec<String>,
    /// The cluster's domain (e.g. `cluster.local`); empty: none.
    pub(crate) domain: String,
    /// `resolvConf` was set to the empty string: the node's resolver is not used.
    pub(crate) no_resolv_conf: bool,
}

/// Upstream's limits (validation's `MaxDNSNameservers` and the expanded search list).
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;

/// Upstream's options for cluster-first pods.
const CLUSTER_OPTIONS: &[&str] = &["ndots:5"];

/// Parses resolv.conf text into servers, searches and options.
pub(crate) fn parse_resolv_conf(text: &str) -> cri::DnsConfig {
    let mut d = cri::DnsConfig::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("").trim();
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => d.servers.extend(f.next().map(str::to_owned)),
            Some("search") => d.searches = f.map(str::to_owned).collect(),
            Some("options") => d.options.extend(f.map(str::to_owned)),
            _ => {}
        }
    }
    d
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DnsType {
    Cluster,
    Host,
    None,
}

fn dns_type(pod: &Pod) -> DnsType {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    match spec.and_then(|s| s.dns_policy.as_deref()) {
        Some("None") => DnsType::None,
        Some("ClusterFirstWithHostNet") => DnsType::Cluster,
        Some("Default") => DnsType::Host,
        // ClusterFirst, the API default; a host-network pod falls back to Default.
        _ if host_network => DnsType::Host,
        _ => DnsType::Cluster,
    }
}

/// The pod's resolver configuration, from the node's resolv.conf text and the cluster DNS
/// settings.
pub(crate) fn pod_dns_config(
    pod: &Pod,
    cluster: &ClusterDns,
    node_resolv_conf: &str,
) -> cri::DnsConfig {
    let host = || {
        if cluster.no_resolv_conf {
            cri::DnsConfig {
                servers: vec!["127.0.0.1".into()],
                searches: vec![".".into()],
                options: Vec::new(),
            }
        } else {
            parse_resolv_conf(node_resolv_conf)
        }
    };
    let mut d = match dns_type(pod) {
        DnsType::None => cri::DnsConfig::default(),
        DnsType::Cluster if !cluster.servers.is_empty() => {
            let node = host();
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let mut searches = Vec::new();
            if !cluster.domain.is_empty() {
                searches.push(format!("{ns}.svc.{}", cluster.domain));
                searches.push(format!("svc.{}", cluster.domain));
                searches.push(cluster.domain.clone());
            }
            append_unique(&mut searches, &node.searches);
            cri::DnsConfig {
                servers: cluster.servers.clone(),
                searches,
                options: CLUSTER_OPTIONS.iter().map(|s| s.to_string()).collect(),
            }
        }
        DnsType::Cluster => {
            tracing::warn!(
                pod = pod.metadata.name.as_deref().unwrap_or(""),
                "kubelet does not have ClusterDNS IP configured and cannot create Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy. (MissingClusterDNS)"
            );
            host()
        }
        DnsType::Host => host(),
    };
    if let Some(extra) = pod.spec.as_ref().and_then(|s| s.dns_config.as_ref()) {
        append_unique(&mut d.servers, extra.nameservers.as_deref().unwrap_or(&[]));
        append_unique(&mut d.searches, extra.searches.as_deref().unwrap_or(&[]));
        for o in extra.options.iter().flatten() {
            let name = o.name.clone().unwrap_or_default();
            let text = match &o.value {
                Some(v) if !v.is_empty() => format!("{name}:{v}"),
                _ => name.clone(),
            };
            let same = |existing: &String| existing.split(':').next() == Some(name.as_str());
            match d.options.iter_mut().find(|e| same(e)) {
                Some(slot) => *slot = text,
                None => d.options.push(text),
            }
        }
    }
    fits_limits(d)
}

fn append_unique(to: &mut Vec<String>, from: &[String]) {
    for s in from {
        if !to.contains(s) {
            to.push(s.clone());
        }
    }
}

/// Cuts the lists to what resolvers take, as upstream does (it records an event; we log).
fn fits_limits(mut d: cri::DnsConfig) -> cri::DnsConfig {
    if d.servers.len() > MAX_NAMESERVERS {
        tracing::warn!(servers = ?d.servers, "nameserver limits were exceeded, some nameservers have been omitted");
        d.servers.truncate(MAX_NAMESERVERS);
    }
    let mut chars = 0;
    let mut keep = 0;
    for s in d.searches.iter().take(MAX_SEARCHES) {
        if chars + s.len() + usize::from(keep > 0) > MAX_SEARCH_CHARS {
            break;
        }
        chars += s.len() + usize::from(keep > 0);
        keep += 1;
    }
    if keep < d.searches.len() {
        tracing::warn!(searches = ?d.searches, "search line limits were exceeded, some search paths have been omitted");
        d.searches.truncate(keep);
    }
    d
}

/// The pod's host name and domain (upstream `GeneratePodHostNameAndDomain`): `spec.hostname`
/// or the pod name cut to 63 characters; with `spec.subdomain`, the domain
/// `<subdomain>.<ns>.svc.<clusterDomain>`.
pub(crate) fn host_name_and_domain(pod: &Pod, cluster_domain: &str) -> (String, String) {
    let spec = pod.spec.as_ref();
    let name = spec
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let mut host: String = name.chars().take(63).collect();
    while host.ends_with('-') || host.ends_with('.') {
        host.pop();
    }
    let domain = match spec
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty())
    {
        Some(sub) => format!(
            "{sub}.{}.svc.{cluster_domain}",
            pod.metadata.namespace.as_deref().unwrap_or("default")
        ),
        None => String::new(),
    };
    (host, domain)
}

/// A pod's DNS settings that cannot be applied (upstream's messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DnsError {
    #[error("failed to construct FQDN from pod hostname and cluster domain, FQDN {fqdn} is too long (64 characters is the max, {} characters requested)", fqdn.len())]
    FqdnTooLong { fqdn: String },
}

/// The kernel host name of the pod's sandbox: the fully qualified name with
/// `setHostnameAsFQDN` and a domain, else the short one. Err when the FQDN is longer than
/// the kernel's 64 characters (upstream's message).
pub(crate) fn kernel_host_name(pod: &Pod, cluster_domain: &str) -> Result<String, DnsError> {
    let (host, domain) = host_name_and_domain(pod, cluster_domain);
    let fqdn = pod
        .spec
        .as_ref()
        .and_then(|s| s.set_hostname_as_fqdn)
        .unwrap_or(false);
    if !fqdn || domain.is_empty() {
        return Ok(host);
    }
    let full = format!("{host}.{domain}");
    if full.len() > 64 {
        return Err(DnsError::FqdnTooLong { fqdn: full });
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{load_manifest, Source};

    fn pod(extra: &str) -> Pod {
        let text = format!(
            "kind: Pod\nmetadata: {{name: web, namespace: ns1}}\nspec:\n{extra}  containers:\n  - name: c\n    image: 'i:1'\n"
        );
        load_manifest(&text, Source::File, "/m/w", "node1")
            .0
            .remove(0)
    }

    const NODE: &str = "nameserver 10.0.0.53\nsearch a.local b.local\noptions ndots:2 edns0\n";

    fn cluster() -> ClusterDns {
        ClusterDns {
            servers: vec!["10.96.0.10".into()],
            domain: "cluster.local".into(),
            no_resolv_conf: false,
        }
    }

    #[test]
    fn cluster_first_uses_cluster_dns_and_searches() {
        let d = pod_dns_config(&pod(""), &cluster(), NODE);
        assert_eq!(d.servers, ["10.96.0.10"]);
        assert_eq!(
            d.searches,
            [
                "ns1.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "a.local",
                "b.local"
            ]
        );
        assert_eq!(d.options, ["ndots:5"]);
    }

    #[test]
    fn cluster_first_without_cluster_dns_falls_back_to_the_node() {
        let d = pod_dns_config(&pod(""), &ClusterDns::default(), NODE);
        assert_eq!(d.servers, ["10.0.0.53"]);
        assert_eq!(d.searches, ["a.local", "b.local"]);
        assert_eq!(d.options, ["ndots:2", "edns0"]);
    }

    #[test]
    fn host_network_pods_get_the_node_unless_cluster_first_with_host_net() {
        let d = pod_dns_config(&pod("  hostNetwork: true\n"), &cluster(), NODE);
        assert_eq!(d.servers, ["10.0.0.53"]);
        let d = pod_dns_config(
            &pod("  hostNetwork: true\n  dnsPolicy: ClusterFirstWithHostNet\n"),
            &cluster(),
            NODE,
        );
        assert_eq!(d.servers, ["10.96.0.10"]);
        let d = pod_dns_config(&pod("  dnsPolicy: Default\n"), &cluster(), NODE);
        assert_eq!(d.servers, ["10.0.0.53"]);
    }

    #[test]
    fn empty_resolv_conf_setting_gives_localhost() {
        let c = ClusterDns {
            no_resolv_conf: true,
            ..ClusterDns::default()
        };
        let d = pod_dns_config(&pod("  dnsPolicy: Default\n"), &c, NODE);
        assert_eq!(d.servers, ["127.0.0.1"]);
        assert_eq!(d.searches, ["."]);
    }

    #[test]
    fn none_uses_only_the_pod_config_and_options_merge_by_name() {
        let p = pod("  dnsPolicy: None\n  dnsConfig: {nameservers: [1.1.1.1], searches: [x.y], options: [{name: ndots, value: '1'}]}\n");
        let d = pod_dns_config(&p, &cluster(), NODE);
        assert_eq!(d.servers, ["1.1.1.1"]);
        assert_eq!(d.searches, ["x.y"]);
        assert_eq!(d.options, ["ndots:1"]);
        let p = pod("  dnsConfig: {nameservers: [10.96.0.10, 1.1.1.1], options: [{name: ndots, value: '2'}, {name: single-request}]}\n");
        let d = pod_dns_config(&p, &cluster(), NODE);
        assert_eq!(d.servers, ["10.96.0.10", "1.1.1.1"]);
        assert_eq!(d.options, ["ndots:2", "single-request"]);
    }

    #[test]
    fn lists_are_cut_to_resolver_limits() {
        let p = pod(
            "  dnsPolicy: None\n  dnsConfig: {nameservers: [1.1.1.1, 2.2.2.2, 3.3.3.3, 4.4.4.4]}\n",
        );
        let d = pod_dns_config(&p, &cluster(), NODE);
        assert_eq!(d.servers, ["1.1.1.1", "2.2.2.2", "3.3.3.3"]);
    }

    #[test]
    fn host_name_domain_and_fqdn() {
        let p = pod("  hostname: h\n  subdomain: sub\n  setHostnameAsFQDN: true\n");
        assert_eq!(
            host_name_and_domain(&p, "cluster.local"),
            ("h".to_string(), "sub.ns1.svc.cluster.local".to_string())
        );
        assert_eq!(
            kernel_host_name(&p, "cluster.local").unwrap(),
            "h.sub.ns1.svc.cluster.local"
        );
        let short = pod("  subdomain: sub\n");
        assert_eq!(
            kernel_host_name(&short, "cluster.local").unwrap(),
            "web-node1"
        );
        let long = pod(&format!(
            "  hostname: {}\n  subdomain: sub\n  setHostnameAsFQDN: true\n",
            "a".repeat(50)
        ));
        let e = kernel_host_name(&long, "cluster.local").unwrap_err();
        let fqdn = format!("{}.sub.ns1.svc.cluster.local", "a".repeat(50));
        assert_eq!(
            e.to_string(),
            format!("failed to construct FQDN from pod hostname and cluster domain, FQDN {fqdn} is too long (64 characters is the max, 76 characters requested)")
        );
    }
}
