//! Service environment variables (upstream `getServiceEnvVarMap` and `envvars.FromServices`).
//!
//! In API-server mode the kubelet keeps every Service of the cluster in a reflector cache.
//! A container gets, for the `kubernetes` Service of the `default` namespace always and for
//! every Service of its own namespace when `enableServiceLinks` (default true) holds, the
//! variables `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<PORT>]` and the Docker link
//! style `<NAME>_PORT`, `<NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]`. Services without a
//! cluster IP (`None`, headless, or empty) give none. In-cluster clients (client-go,
//! kube-rs) find the API server through `KUBERNETES_SERVICE_HOST`/`_PORT`.

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use std::collections::BTreeMap;

/// The namespace and name of the Service whose variables every pod gets.
const MASTER_NAMESPACE: &str = "default";
const MASTER_SERVICE: &str = "kubernetes";

/// Why a pod's service environment cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ServiceError {
    /// Upstream's message, word for word.
    #[error("services have not yet been read at least once, cannot construct envvars")]
    NotSynced,
}

/// The cluster's Services, cached by a list+watch (upstream's service lister).
#[derive(Clone)]
pub(crate) struct ServiceLister {
    store: Store<Service>,
}

impl ServiceLister {
    /// Starts the list+watch of all Services; the task lives as long as the runtime.
    pub(crate) fn start(client: kube::Client) -> Self {
        let (store, writer) = reflector::store();
        let api: Api<Service> = Api::all(client);
        tokio::spawn(async move {
            let stream = reflector::reflector(writer, watcher::watcher(api, Default::default()))
                .default_backoff();
            futures::pin_mut!(stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "watching services"),
                }
            }
        });
        ServiceLister { store }
    }

    /// The service variables for a pod, or an error while the cache has not been filled
    /// once (upstream refuses to build an environment then, rather than start a container
    /// without them). Static pods are not refused: they get what the cache holds, as
    /// upstream's `IsStaticPod` exemption (a control-plane pod must start before the API
    /// server it would list Services from).
    pub(crate) fn env_for(&self, pod: &Pod) -> Result<Vec<(String, String)>, ServiceError> {
        if !self.synced() && crate::status_manager::api_sync::is_api_pod(pod) {
            return Err(ServiceError::NotSynced);
        }
        let services: Vec<Service> = self.store.state().iter().map(|s| (**s).clone()).collect();
        Ok(service_env(pod, &services))
    }

    /// Waits up to `limit` for the first complete list of Services. Upstream fails the
    /// container at once (CreateContainerConfigError, a Failed event and a back-off) when
    /// an API pod arrives before the Services did, which on a busy node is the usual order
    /// at start; the list normally lands a few milliseconds later, so a short wait here
    /// starts the pod cleanly. Past `limit` the error is upstream's.
    pub(crate) async fn wait_synced(&self, limit: std::time::Duration) {
        if !self.synced() {
            let _ = tokio::time::timeout(limit, self.store.wait_until_ready()).await;
        }
    }

    /// Whether the first complete list is in the store (the reflector marks the store
    /// ready when it applies the list's end).
    fn synced(&self) -> bool {
        matches!(self.store.wait_until_ready().now_or_never(), Some(Ok(())))
    }
}

fn cluster_ip(s: &Service) -> Option<&str> {
    s.spec
        .as_ref()
        .and_then(|sp| sp.cluster_ip.as_deref())
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

/// The variables `pod` gets from `services` (all the cluster's), sorted by name.
pub(crate) fn service_env(pod: &Pod, services: &[Service]) -> Vec<(String, String)> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    // One Service per name: the master service wins over a same-named one of the pod's
    // namespace.
    let mut chosen: BTreeMap<&str, &Service> = BTreeMap::new();
    for s in services.iter().filter(|s| cluster_ip(s).is_some()) {
        let name = s.metadata.name.as_deref().unwrap_or("");
        let sns = s.metadata.namespace.as_deref().unwrap_or("");
        if sns == MASTER_NAMESPACE && name == MASTER_SERVICE {
            chosen.insert(name, s);
        } else if sns == ns && links {
            chosen.entry(name).or_insert(s);
        }
    }
    let mut out = Vec::new();
    for (name, s) in chosen {
        out.extend(variables(name, s));
    }
    out.sort();
    out
}

fn env_name(s: &str) -> String {
    s.replace('-', "_").to_uppercase()
}

fn variables(name: &str, s: &Service) -> Vec<(String, String)> {
    let (Some(ip), Some(ports)) = (
        cluster_ip(s),
        s.spec.as_ref().and_then(|sp| sp.ports.as_ref()),
    ) else {
        return Vec::new();
    };
    let Some(first) = ports.first() else {
        return Vec::new();
    };
    let prefix = env_name(name);
    let mut out = vec![
        (format!("{prefix}_SERVICE_HOST"), ip.to_string()),
        (format!("{prefix}_SERVICE_PORT"), first.port.to_string()),
    ];
    for p in ports {
        if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!("{prefix}_SERVICE_PORT_{}", env_name(pn)),
                p.port.to_string(),
            ));
        }
    }
    let host_port = |port: i32| match ip.contains(':') {
        true => format!("[{ip}]:{port}"),
        false => format!("{ip}:{port}"),
    };
    for (i, p) in ports.iter().enumerate() {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let url = format!("{}://{}", proto.to_lowercase(), host_port(p.port));
        if i == 0 {
            out.push((format!("{prefix}_PORT"), url.clone()));
        }
        let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
        out.push((format!("{pp}_PROTO"), proto.to_lowercase()));
        out.push((format!("{pp}_PORT"), p.port.to_string()));
        out.push((format!("{pp}_ADDR"), ip.to_string()));
        out.push((pp, url));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ip, "ports": ports},
        }))
        .unwrap()
    }

    fn pod(ns: &str, links: Option<bool>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": "p"},
            "spec": {"containers": [], "enableServiceLinks": links},
        }))
        .unwrap()
    }

    fn services() -> Vec<Service> {
        vec![
            svc(
                "default",
                "kubernetes",
                "10.96.0.1",
                serde_json::json!([{"name": "https", "port": 443}]),
            ),
            svc(
                "ns1",
                "foo-service",
                "10.96.0.7",
                serde_json::json!([{"port": 8765, "protocol": "TCP"}, {"name": "dns-udp", "port": 53, "protocol": "UDP"}]),
            ),
            svc("ns1", "headless", "None", serde_json::json!([{"port": 80}])),
            svc(
                "ns2",
                "other",
                "10.96.0.8",
                serde_json::json!([{"port": 80}]),
            ),
        ]
    }

    fn with_source(mut p: Pod, source: &str) -> Pod {
        p.metadata.annotations = Some(
            [(
                crate::sources::CONFIG_SOURCE_ANNOTATION.to_string(),
                source.to_string(),
            )]
            .into(),
        );
        p
    }

    #[tokio::test]
    async fn an_api_pod_waits_for_the_first_list_and_a_static_pod_does_not() {
        let (store, mut writer) = reflector::store();
        let lister = ServiceLister { store };
        let api_pod = with_source(pod("ns1", None), "api");
        let static_pod = with_source(pod("ns1", None), "file");
        assert_eq!(lister.env_for(&api_pod), Err(ServiceError::NotSynced));
        assert_eq!(lister.env_for(&static_pod), Ok(vec![]));
        // No list within the limit: the wait ends and the error stays upstream's.
        lister
            .wait_synced(std::time::Duration::from_millis(20))
            .await;
        assert_eq!(lister.env_for(&api_pod), Err(ServiceError::NotSynced));
        // The list lands while the pod waits.
        let list = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            writer.apply_watcher_event(&watcher::Event::Init);
            for s in services() {
                writer.apply_watcher_event(&watcher::Event::InitApply(s));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
            writer
        });
        lister.wait_synced(std::time::Duration::from_secs(30)).await;
        let env = lister.env_for(&api_pod).unwrap();
        assert!(env.contains(&("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into())));
        assert!(env.contains(&("FOO_SERVICE_SERVICE_HOST".into(), "10.96.0.7".into())));
        drop(list.await.unwrap());
    }

    #[test]
    fn variables_as_upstream_names_them() {
        let env: BTreeMap<_, _> = service_env(&pod("ns1", None), &services())
            .into_iter()
            .collect();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT"), Some("tcp://10.96.0.1:443"));
        assert_eq!(get("FOO_SERVICE_SERVICE_HOST"), Some("10.96.0.7"));
        assert_eq!(get("FOO_SERVICE_SERVICE_PORT"), Some("8765"));
        assert_eq!(get("FOO_SERVICE_SERVICE_PORT_DNS_UDP"), Some("53"));
        assert_eq!(get("FOO_SERVICE_PORT"), Some("tcp://10.96.0.7:8765"));
        assert_eq!(
            get("FOO_SERVICE_PORT_8765_TCP"),
            Some("tcp://10.96.0.7:8765")
        );
        assert_eq!(get("FOO_SERVICE_PORT_8765_TCP_PROTO"), Some("tcp"));
        assert_eq!(get("FOO_SERVICE_PORT_8765_TCP_PORT"), Some("8765"));
        assert_eq!(get("FOO_SERVICE_PORT_8765_TCP_ADDR"), Some("10.96.0.7"));
        assert_eq!(get("FOO_SERVICE_PORT_53_UDP"), Some("udp://10.96.0.7:53"));
        assert!(
            !env.keys().any(|k| k.starts_with("HEADLESS_")),
            "no cluster IP, no variables"
        );
        assert!(
            !env.keys().any(|k| k.starts_with("OTHER_")),
            "another namespace's"
        );
    }

    #[test]
    fn service_links_off_keeps_only_the_master_service() {
        let env = service_env(&pod("ns1", Some(false)), &services());
        assert!(env.iter().any(|(k, _)| k == "KUBERNETES_SERVICE_HOST"));
        assert!(
            !env.iter().any(|(k, _)| k.starts_with("FOO_SERVICE")),
            "{env:?}"
        );
    }
}
