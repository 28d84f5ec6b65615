//! The API objects pods consume (upstream's configmap and secret managers with the `Watch`
//! change-detection strategy, and the token manager):
//!
//! - configMaps and secrets named by a pod's volumes, `envFrom` and `valueFrom` are watched
//!   one by one (`fieldSelector=metadata.name=<name>`, which the node authorizer allows for
//!   objects of pods bound to the node) while some pod uses them; a change wakes the sync
//!   loop so the pods using the object are synced again and their volumes rewritten;
//! - service-account tokens come from TokenRequest, bound to the pod, and are requested
//!   again when 80% of their lifetime (at most 24 h) has passed.
//!
//! Syncing a pod first [`ObjectManager::prefetch`]es what it needs into a [`PodObjects`]
//! snapshot, so the volume and env code stay synchronous.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;

use crate::kubeclient::ApiError;

/// Which kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }
}

/// `(kind, namespace, name)`.
pub(crate) type ObjectKey = (Kind, String, String);

/// A service-account token request: namespace, service account, audience, expiry seconds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TokenKey {
    pub(crate) namespace: String,
    pub(crate) service_account: String,
    pub(crate) audience: String,
    pub(crate) expiration_seconds: i64,
}

/// The configMaps and secrets a pod refers to (volumes, projected sources, env).
pub(crate) fn referenced_objects(pod: &Pod) -> BTreeSet<ObjectKey> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut out = BTreeSet::new();
    let mut add = |k: Kind, name: &str| {
        if !name.is_empty() {
            out.insert((k, ns.clone(), name.to_string()));
        }
    };
    let Some(spec) = &pod.spec else {
        return out;
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            add(Kind::ConfigMap, &c.name);
        }
        if let Some(s) = &v.secret {
            add(Kind::Secret, s.secret_name.as_deref().unwrap_or(""));
        }
        if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(c) = &src.config_map {
                    add(Kind::ConfigMap, &c.name);
                }
                if let Some(s) = &src.secret {
                    add(Kind::Secret, &s.name);
                }
            }
        }
    }
    // The registry credentials images are pulled with.
    for s in spec.image_pull_secrets.iter().flatten() {
        add(Kind::Secret, &s.name);
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for c in containers {
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                add(Kind::ConfigMap, &r.name);
            }
            if let Some(r) = &e.secret_ref {
                add(Kind::Secret, &r.name);
            }
        }
        for e in c.env.iter().flatten() {
            if let Some(v) = &e.value_from {
                if let Some(r) = &v.config_map_key_ref {
                    add(Kind::ConfigMap, &r.name);
                }
                if let Some(r) = &v.secret_key_ref {
                    add(Kind::Secret, &r.name);
                }
            }
        }
    }
    out
}

/// The tokens a pod's projected volumes ask for.
pub(crate) fn referenced_tokens(pod: &Pod, default_audience: &str) -> BTreeSet<TokenKey> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let sa = service_account_name(pod);
    let mut out = BTreeSet::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(t) = &src.service_account_token {
                out.insert(TokenKey {
                    namespace: ns.clone(),
                    service_account: sa.clone(),
                    audience: t
                        .audience
                        .clone()
                        .filter(|a| !a.is_empty())
                        .unwrap_or_else(|| default_audience.to_string()),
                    expiration_seconds: t.expiration_seconds.unwrap_or(3600),
                });
            }
        }
    }
    out
}

pub(crate) fn service_account_name(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Why an object a pod uses cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ObjectError {
    #[error("{} {name:?} needs an API server (standalone kubelet)", kind.as_str())]
    Standalone { kind: Kind, name: String },
    /// The API server's answer other than not-found (forbidden, unreachable).
    #[error("{} {namespace}/{name}: {error}", kind.as_str())]
    Api {
        kind: Kind,
        namespace: String,
        name: String,
        error: String,
    },
    #[error("{} {namespace}/{name} was not fetched", kind.as_str())]
    NotFetched {
        kind: Kind,
        namespace: String,
        name: String,
    },
    #[error("serviceAccountToken needs an API server (standalone kubelet)")]
    TokenStandalone,
    #[error("requesting a token for service account {namespace}/{service_account}: {error}")]
    TokenRequest {
        namespace: String,
        service_account: String,
        error: String,
    },
    #[error("token for service account {service_account} was not requested")]
    TokenNotRequested { service_account: String },
}

/// What one pod's sync may read: the objects as they are now (None: does not exist).
#[derive(Debug, Clone, Default)]
pub(crate) struct PodObjects {
    /// False for a standalone kubelet: every lookup says an API server is needed.
    pub(crate) api: bool,
    pub(crate) config_maps: HashMap<(String, String), Option<ConfigMap>>,
    pub(crate) secrets: HashMap<(String, String), Option<Secret>>,
    pub(crate) tokens: HashMap<TokenKey, Result<String, ObjectError>>,
    /// Errors other than not-found (forbidden, API server down), by object.
    pub(crate) errors: HashMap<ObjectKey, String>,
    /// The pod's Service environment variables (None: standalone, there are none; Err:
    /// the Services could not be read yet).
    pub(crate) service_env: Option<Result<Vec<(String, String)>, crate::services::ServiceError>>,
}

impl PodObjects {
    fn lookup<'a, T>(
        &self,
        map: &'a HashMap<(String, String), Option<T>>,
        kind: Kind,
        ns: &str,
        name: &str,
    ) -> Result<Option<&'a T>, ObjectError> {
        if !self.api {
            return Err(ObjectError::Standalone {
                kind,
                name: name.to_string(),
            });
        }
        if let Some(e) = self.errors.get(&(kind, ns.to_string(), name.to_string())) {
            return Err(ObjectError::Api {
                kind,
                namespace: ns.to_string(),
                name: name.to_string(),
                error: e.clone(),
            });
        }
        match map.get(&(ns.to_string(), name.to_string())) {
            Some(v) => Ok(v.as_ref()),
            None => Err(ObjectError::NotFetched {
                kind,
                namespace: ns.to_string(),
                name: name.to_string(),
            }),
        }
    }

    /// The configMap, Ok(None) when it does not exist.
    pub(crate) fn config_map(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<&ConfigMap>, ObjectError> {
        self.lookup(&self.config_maps, Kind::ConfigMap, ns, name)
    }

    pub(crate) fn secret(&self, ns: &str, name: &str) -> Result<Option<&Secret>, ObjectError> {
        self.lookup(&self.secrets, Kind::Secret, ns, name)
    }

    pub(crate) fn token(&self, key: &TokenKey) -> Result<&str, ObjectError> {
        if !self.api {
            return Err(ObjectError::TokenStandalone);
        }
        match self.tokens.get(key) {
            Some(Ok(t)) => Ok(t),
            Some(Err(e)) => Err(e.clone()),
            None => Err(ObjectError::TokenNotRequested {
                service_account: key.service_account.clone(),
            }),
        }
    }
}

/// The key/value data of a configMap (data and binaryData) or secret, as bytes.
pub(crate) fn config_map_data(cm: &ConfigMap) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
        .collect();
    out.extend(
        cm.binary_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone())),
    );
    out.sort();
    out
}

pub(crate) fn secret_data(s: &Secret) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    // stringData is write-only in the API, but a manifest-made object may carry it.
    for (k, v) in s.string_data.iter().flatten() {
        if !out.iter().any(|(ok, _)| ok == k) {
            out.push((k.clone(), v.as_bytes().to_vec()));
        }
    }
    out.sort();
    out
}

enum Cached {
    ConfigMap(Option<ConfigMap>),
    Secret(Option<Secret>),
}

struct Watched {
    users: BTreeSet<String>,
    /// The latest value the watch saw (None until its first list).
    value: Option<Cached>,
    task: tokio::task::AbortHandle,
}

struct Token {
    token: String,
    issued: Instant,
    ttl: Duration,
}

struct Inner {
    watched: HashMap<ObjectKey, Watched>,
    tokens: HashMap<(String, TokenKey), Token>,
}

/// How long an API pod's first sync waits for the first list of Services before its
/// containers fail as upstream's do (see [`crate::services::ServiceLister::wait_synced`]).
const SERVICES_SYNC_WAIT: Duration = Duration::from_secs(5);

/// Watches and fetches what pods consume; one per kubelet in API-server mode.
#[derive(Clone)]
pub(crate) struct ObjectManager {
    client: kube::Client,
    inner: Arc<Mutex<Inner>>,
    /// Object changes, for the sync loop to resync the pods that use them.
    changed: mpsc::UnboundedSender<ObjectKey>,
    pub(crate) default_audience: String,
    /// The cluster's Services, for the pods' service environment variables.
    services: crate::services::ServiceLister,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ObjectManager {
    pub(crate) fn new(client: kube::Client, changed: mpsc::UnboundedSender<ObjectKey>) -> Self {
        ObjectManager {
            client: client.clone(),
            inner: Arc::new(Mutex::new(Inner {
                watched: HashMap::new(),
                tokens: HashMap::new(),
            })),
            changed,
            default_audience: String::new(),
            services: crate::services::ServiceLister::start(client),
        }
    }

    /// Starts watching what `pod` uses (and stops watching what it no longer uses).
    pub(crate) fn register_pod(&self, pod: &Pod) {
        let uid = crate::pod_util::uid_of(pod).to_string();
        let wanted = referenced_objects(pod);
        let mut inner = lock(&self.inner);
        for key in &wanted {
            if let Some(w) = inner.watched.get_mut(key) {
                w.users.insert(uid.clone());
                continue;
            }
            let task = tokio::spawn(watch_object(
                self.client.clone(),
                key.clone(),
                self.inner.clone(),
                self.changed.clone(),
            ))
            .abort_handle();
            inner.watched.insert(
                key.clone(),
                Watched {
                    users: [uid.clone()].into(),
                    value: None,
                    task,
                },
            );
        }
        release(&mut inner, &uid, &wanted);
    }

    /// Stops the watches only `uid` used and drops its tokens.
    pub(crate) fn unregister_pod(&self, uid: &str) {
        let mut inner = lock(&self.inner);
        release(&mut inner, uid, &BTreeSet::new());
        inner.tokens.retain(|(u, _), _| u != uid);
    }

    /// The pods (by UID) that use `key`.
    pub(crate) fn users(&self, key: &ObjectKey) -> Vec<String> {
        lock(&self.inner)
            .watched
            .get(key)
            .map(|w| w.users.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Everything `pod` needs, from the watches' cache or fetched now.
    pub(crate) async fn prefetch(&self, pod: &Pod) -> PodObjects {
        if crate::status_manager::api_sync::is_api_pod(pod) {
            self.services.wait_synced(SERVICES_SYNC_WAIT).await;
        }
        let mut out = PodObjects {
            api: true,
            service_env: Some(self.services.env_for(pod)),
            ..Default::default()
        };
        for key in referenced_objects(pod) {
            let cached = {
                let inner = lock(&self.inner);
                inner.watched.get(&key).and_then(|w| match &w.value {
                    Some(Cached::ConfigMap(c)) => Some(Cached::ConfigMap(c.clone())),
                    Some(Cached::Secret(s)) => Some(Cached::Secret(s.clone())),
                    None => None,
                })
            };
            let value = match cached {
                Some(v) => Ok(v),
                None => self.get(&key).await,
            };
            let (kind, ns, name) = key.clone();
            match value {
                Ok(Cached::ConfigMap(c)) => {
                    out.config_maps.insert((ns, name), c);
                }
                Ok(Cached::Secret(s)) => {
                    out.secrets.insert((ns, name), s);
                }
                Err(e) => {
                    let _ = kind;
                    out.errors.insert(key, e.to_string());
                }
            }
        }
        let uid = crate::pod_util::uid_of(pod).to_string();
        for key in referenced_tokens(pod, &self.default_audience) {
            let t = self
                .token(&uid, pod, &key)
                .await
                .map_err(|e| ObjectError::TokenRequest {
                    namespace: key.namespace.clone(),
                    service_account: key.service_account.clone(),
                    error: e.to_string(),
                });
            out.tokens.insert(key, t);
        }
        out
    }

    async fn get(&self, key: &ObjectKey) -> Result<Cached, ApiError> {
        let (kind, ns, name) = key;
        Ok(match kind {
            Kind::ConfigMap => {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
                Cached::ConfigMap(api.get_opt(name).await?)
            }
            Kind::Secret => {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
                Cached::Secret(api.get_opt(name).await?)
            }
        })
    }

    /// A token bound to the pod, requested again after 80% of its lifetime or 24 h.
    async fn token(&self, uid: &str, pod: &Pod, key: &TokenKey) -> Result<String, ApiError> {
        let cache_key = (uid.to_string(), key.clone());
        if let Some(t) = lock(&self.inner).tokens.get(&cache_key) {
            let refresh_after = (t.ttl.mul_f64(0.8)).min(Duration::from_secs(24 * 3600));
            if t.issued.elapsed() < refresh_after {
                return Ok(t.token.clone());
            }
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &key.namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![key.audience.clone()]
                    .into_iter()
                    .filter(|a| !a.is_empty())
                    .collect(),
                expiration_seconds: Some(key.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let answer: TokenRequest = api
            .create_subresource(
                "token",
                &key.service_account,
                &PostParams::default(),
                &request,
            )
            .await?;
        let Some(status) = answer.status else {
            return Err(ApiError::Empty {
                what: "TokenRequest status",
            });
        };
        let ttl = status
            .expiration_timestamp
            .0
            .duration_since(k8s_openapi::jiff::Timestamp::now())
            .try_into()
            .unwrap_or(Duration::from_secs(key.expiration_seconds.max(600) as u64));
        tracing::info!(pod = %crate::pod_util::full_name(pod), service_account = %key.service_account, ttl_s = ttl.as_secs(), "requested a service account token");
        lock(&self.inner).tokens.insert(
            cache_key,
            Token {
                token: status.token.clone(),
                issued: Instant::now(),
                ttl,
            },
        );
        Ok(status.token)
    }
}

fn release(inner: &mut Inner, uid: &str, keep: &BTreeSet<ObjectKey>) {
    inner.watched.retain(|key, w| {
        if !keep.contains(key) {
            w.users.remove(uid);
        }
        if w.users.is_empty() {
            w.task.abort();
            false
        } else {
            true
        }
    });
}

/// One object's watch: keeps its latest value in the cache and reports changes.
async fn watch_object(
    client: kube::Client,
    key: ObjectKey,
    inner: Arc<Mutex<Inner>>,
    changed: mpsc::UnboundedSender<ObjectKey>,
) {
    let (kind, ns, name) = key.clone();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    match kind {
        Kind::ConfigMap => {
            let api: Api<ConfigMap> = Api::namespaced(client, &ns);
            follow(
                watcher::watcher(api, config),
                key,
                inner,
                changed,
                Cached::ConfigMap,
            )
            .await
        }
        Kind::Secret => {
            let api: Api<Secret> = Api::namespaced(client, &ns);
            follow(
                watcher::watcher(api, config),
                key,
                inner,
                changed,
                Cached::Secret,
            )
            .await
        }
    }
}

async fn follow<K, S>(
    stream: S,
    key: ObjectKey,
    inner: Arc<Mutex<Inner>>,
    changed: mpsc::UnboundedSender<ObjectKey>,
    wrap: fn(Option<K>) -> Cached,
) where
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>>,
{
    use kube::runtime::WatchStreamExt;
    let stream = stream.backoff(crate::kubeclient::WatchBackoff::new(Duration::from_secs(
        10,
    )));
    tokio::pin!(stream);
    let mut listed: Option<K> = None;
    while let Some(ev) = stream.next().await {
        let value = match ev {
            Ok(Event::Init) => {
                listed = None;
                continue;
            }
            Ok(Event::InitApply(o)) => {
                listed = Some(o);
                continue;
            }
            Ok(Event::InitDone) => listed.take(),
            Ok(Event::Apply(o)) => Some(o),
            Ok(Event::Delete(_)) => None,
            Err(e) => {
                tracing::debug!(object = %format!("{}/{}/{}", key.0.as_str(), key.1, key.2), error = %e, "watch failed, retrying");
                continue;
            }
        };
        if let Some(w) = lock(&inner).watched.get_mut(&key) {
            w.value = Some(wrap(value));
        } else {
            return;
        }
        let _ = changed.send(key.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_of_volumes_projected_and_env() {
        let text = r#"
kind: Pod
metadata: {name: p, namespace: ns1}
spec:
  volumes:
  - {name: a, configMap: {name: cm1}}
  - {name: b, secret: {secretName: s1}}
  - name: c
    projected:
      sources:
      - serviceAccountToken: {path: token, expirationSeconds: 3607}
      - configMap: {name: kube-root-ca.crt}
  containers:
  - name: c
    image: i:1
    envFrom: [{configMapRef: {name: cm2}, prefix: X_}]
    env:
    - {name: S, valueFrom: {secretKeyRef: {name: s2, key: k}}}
"#;
        let pod = crate::sources::load_manifest(text, crate::sources::Source::File, "/m/p", "n")
            .0
            .remove(0);
        let refs: Vec<String> = referenced_objects(&pod)
            .into_iter()
            .map(|(k, ns, n)| format!("{}:{ns}/{n}", k.as_str()))
            .collect();
        assert_eq!(
            refs,
            [
                "configmap:ns1/cm1",
                "configmap:ns1/cm2",
                "configmap:ns1/kube-root-ca.crt",
                "secret:ns1/s1",
                "secret:ns1/s2"
            ]
        );
        let tokens = referenced_tokens(&pod, "https://api");
        let t = tokens.iter().next().unwrap();
        assert_eq!(
            (
                t.service_account.as_str(),
                t.audience.as_str(),
                t.expiration_seconds
            ),
            ("default", "https://api", 3607)
        );
    }

    #[test]
    fn standalone_lookups_say_why() {
        let o = PodObjects::default();
        let e = o.config_map("ns", "cm").unwrap_err();
        assert_eq!(
            e.to_string(),
            "configmap \"cm\" needs an API server (standalone kubelet)"
        );
    }

    #[test]
    fn lookup_and_token_errors_name_the_object() {
        let key = TokenKey {
            namespace: "ns".into(),
            service_account: "sa".into(),
            audience: "https://api".into(),
            expiration_seconds: 3600,
        };
        let standalone = PodObjects::default();
        assert_eq!(
            standalone.token(&key).unwrap_err().to_string(),
            "serviceAccountToken needs an API server (standalone kubelet)"
        );
        let mut o = PodObjects {
            api: true,
            ..Default::default()
        };
        assert_eq!(
            o.secret("ns", "s").unwrap_err().to_string(),
            "secret ns/s was not fetched"
        );
        o.errors
            .insert((Kind::Secret, "ns".into(), "s".into()), "forbidden".into());
        assert_eq!(
            o.secret("ns", "s").unwrap_err().to_string(),
            "secret ns/s: forbidden"
        );
        assert_eq!(
            o.token(&key).unwrap_err().to_string(),
            "token for service account sa was not requested"
        );
        o.tokens.insert(
            key.clone(),
            Err(ObjectError::TokenRequest {
                namespace: "ns".into(),
                service_account: "sa".into(),
                error: "denied".into(),
            }),
        );
        assert_eq!(
            o.token(&key).unwrap_err().to_string(),
            "requesting a token for service account ns/sa: denied"
        );
    }
}
