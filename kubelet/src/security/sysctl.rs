//! Which sysctls a pod may set (upstream `pkg/kubelet/sysctl`): the safe set, namespaced and
//! isolated from the node, plus what `allowedUnsafeSysctls` lists (a name, or a prefix
//! ending in `*`). A sysctl of the network namespace is refused for a host-network pod and
//! one of the IPC namespace for a host-IPC pod. Refusals happen at admission with reason
//! `SysctlForbidden`. Names may use `/` as separator, as upstream accepts.

/// The namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Namespace {
    Ipc,
    Net,
}

impl Namespace {
    fn as_str(self) -> &'static str {
        match self {
            Namespace::Ipc => "ipc",
            Namespace::Net => "net",
        }
    }
}

/// Upstream's safe sysctls (all namespaced on kernels from 4.15 on; this kubelet needs
/// newer ones anyway).
pub(crate) const SAFE: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// The namespace of a sysctl name or prefix (None: not namespaced, so never allowed).
pub(crate) fn namespace_of(name: &str) -> Option<Namespace> {
    const IPC_PREFIXES: &[&str] = &["kernel.shm", "kernel.msg", "fs.mqueue."];
    if name == "kernel.sem" || IPC_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Some(Namespace::Ipc);
    }
    name.starts_with("net.").then_some(Namespace::Net)
}

/// `a/b/c` -> `a.b.c`; a name already dotted is kept (upstream's `NormalizeName`: with a
/// `/` separator, dots inside a component were slashes' equivalents and are swapped).
pub(crate) fn normalize(name: &str) -> String {
    if !name.contains('/') {
        return name.to_string();
    }
    name.chars()
        .map(|c| match c {
            '/' => '.',
            '.' => '/',
            c => c,
        })
        .collect()
}

/// A configured sysctl pattern the kubelet refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SysctlError {
    #[error("allowedUnsafeSysctls: the sysctl pattern {pattern:?} is not known to be namespaced")]
    NotNamespaced { pattern: String },
}

/// The allowlist: exact names and prefixes, each with its namespace.
#[derive(Debug, Clone)]
pub(crate) struct Allowlist {
    names: Vec<(String, Namespace)>,
    prefixes: Vec<(String, Namespace)>,
}

impl Allowlist {
    /// The safe set plus `allowed_unsafe` (`allowedUnsafeSysctls`); Err names a pattern that
    /// is not namespaced (upstream refuses to start with it).
    pub(crate) fn new(allowed_unsafe: &[String]) -> Result<Allowlist, SysctlError> {
        let mut list = Allowlist::safe();
        for raw in allowed_unsafe {
            let pattern = normalize(raw);
            let (target, is_prefix) = match pattern.strip_suffix('*') {
                Some(p) => (p.to_string(), true),
                None => (pattern.clone(), false),
            };
            let ns = namespace_of(&target).ok_or_else(|| SysctlError::NotNamespaced {
                pattern: raw.clone(),
            })?;
            if is_prefix {
                list.prefixes.push((target, ns));
            } else {
                list.names.push((target, ns));
            }
        }
        Ok(list)
    }

    /// The safe set alone.
    pub(crate) fn safe() -> Allowlist {
        Allowlist {
            names: SAFE
                .iter()
                .filter_map(|s| namespace_of(s).map(|ns| (s.to_string(), ns)))
                .collect(),
            prefixes: Vec::new(),
        }
    }

    fn namespace(&self, name: &str) -> Option<Namespace> {
        self.names
            .iter()
            .find(|(n, _)| n == name)
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| name.starts_with(p.as_str()))
            })
            .map(|(_, ns)| *ns)
    }

    /// Upstream's admit handler: Err((reason, message)) for the first sysctl the pod may
    /// not set.
    pub(crate) fn admit(
        &self,
        pod: &k8s_openapi::api::core::v1::Pod,
    ) -> Result<(), (String, String)> {
        let Some(spec) = &pod.spec else {
            return Ok(());
        };
        let sysctls = spec
            .security_context
            .as_ref()
            .and_then(|s| s.sysctls.as_deref())
            .unwrap_or(&[]);
        let host_net = spec.host_network.unwrap_or(false);
        let host_ipc = spec.host_ipc.unwrap_or(false);
        for s in sysctls {
            let name = normalize(&s.name);
            let err = match self.namespace(&name) {
                None => Some(format!("{:?} not allowlisted", s.name)),
                Some(ns @ Namespace::Net) if host_net => Some(format!(
                    "{:?} not allowed with host {} enabled",
                    s.name,
                    ns.as_str()
                )),
                Some(ns @ Namespace::Ipc) if host_ipc => Some(format!(
                    "{:?} not allowed with host {} enabled",
                    s.name,
                    ns.as_str()
                )),
                Some(_) => None,
            };
            if let Some(e) = err {
                return Err(("SysctlForbidden".into(), format!("forbidden sysctl: {e}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(sysctls: &[(&str, &str)], host_net: bool, host_ipc: bool) -> Pod {
        let list: Vec<_> = sysctls
            .iter()
            .map(|(n, v)| serde_json::json!({"name": n, "value": v}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"hostNetwork": host_net, "hostIPC": host_ipc, "containers": [],
                     "securityContext": {"sysctls": list}},
        }))
        .unwrap()
    }

    #[test]
    fn safe_sysctls_pass_and_others_are_forbidden() {
        let list = Allowlist::new(&[]).unwrap();
        assert!(list
            .admit(&pod(
                &[
                    ("kernel.shm_rmid_forced", "1"),
                    ("net.ipv4.tcp_syncookies", "1")
                ],
                false,
                false
            ))
            .is_ok());
        let (reason, msg) = list
            .admit(&pod(&[("kernel.msgmax", "10000")], false, false))
            .unwrap_err();
        assert_eq!(reason, "SysctlForbidden");
        assert_eq!(msg, "forbidden sysctl: \"kernel.msgmax\" not allowlisted");
        // Slash separators are the same names.
        assert!(list
            .admit(&pod(
                &[("net/ipv4/ip_local_port_range", "1024 65000")],
                false,
                false
            ))
            .is_ok());
    }

    #[test]
    fn host_namespaces_refuse_their_sysctls() {
        let list = Allowlist::new(&[]).unwrap();
        let (_, msg) = list
            .admit(&pod(
                &[("net.ipv4.ip_local_port_range", "1024 65000")],
                true,
                false,
            ))
            .unwrap_err();
        assert_eq!(
            msg,
            "forbidden sysctl: \"net.ipv4.ip_local_port_range\" not allowed with host net enabled"
        );
        let (_, msg) = list
            .admit(&pod(&[("kernel.shm_rmid_forced", "1")], false, true))
            .unwrap_err();
        assert!(msg.contains("host ipc"), "{msg}");
    }

    #[test]
    fn allowed_unsafe_names_and_prefixes() {
        let list = Allowlist::new(&["kernel.msg*".into(), "net.core.somaxconn".into()]).unwrap();
        assert!(list
            .admit(&pod(
                &[("kernel.msgmax", "1"), ("net.core.somaxconn", "1024")],
                false,
                false
            ))
            .is_ok());
        assert!(list
            .admit(&pod(&[("net.core.rmem_max", "1")], false, false))
            .is_err());
        let e = Allowlist::new(&["vm.swappiness".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "allowedUnsafeSysctls: the sysctl pattern \"vm.swappiness\" is not known to be namespaced"
        );
    }

    #[test]
    fn names_normalize_as_upstream() {
        assert_eq!(
            normalize("net/ipv4/conf/eno2.100/rp_filter"),
            "net.ipv4.conf.eno2/100.rp_filter"
        );
        assert_eq!(
            normalize("net.ipv4.tcp_syncookies"),
            "net.ipv4.tcp_syncookies"
        );
    }
}
