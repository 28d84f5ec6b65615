//! Who may use the authenticated port, as upstream's kubelet decides it.
//!
//! Authentication is a union, tried in upstream's order: a client certificate verified
//! against `clientCAFile` (CN is the user, each O a group), then a bearer token reviewed by
//! the API server (TokenReview, results cached for `webhook.cacheTTL`), then, only when
//! `anonymous.enabled`, `system:anonymous`. Nothing left means 401.
//!
//! Authorization is `AlwaysAllow` or `Webhook`: a SubjectAccessReview on the node object
//! (`nodes/<subresource>` named after the node) with the verb from the HTTP method and the
//! subresource from the path (`stats`, `metrics`, `log`, `checkpoint`, else `proxy`;
//! `pods`, `healthz` and `configz` first and `proxy` as the fallback, as upstream's
//! fine-grained kubelet authorization does). Allowed answers are cached for
//! `cacheAuthorizedTTL`, denied ones for `cacheUnauthorizedTTL`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::Api;
use sha2::{Digest, Sha256};

use crate::config::{AuthorizationMode, ServerTls};

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct UserInfo {
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) groups: Vec<String>,
}

impl UserInfo {
    pub(crate) fn anonymous() -> Self {
        UserInfo {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
}

/// What a request asks to do, in the API server's terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Attributes {
    pub(crate) verb: &'static str,
    pub(crate) subresource: &'static str,
}

/// The verb upstream derives from the HTTP method.
fn verb(method: &hyper::Method) -> &'static str {
    match *method {
        hyper::Method::POST => "create",
        hyper::Method::GET => "get",
        hyper::Method::PUT => "update",
        hyper::Method::PATCH => "patch",
        hyper::Method::DELETE => "delete",
        _ => "",
    }
}

/// `path` is `base` or below it (`/stats` and `/stats/summary`, not `/statsx`).
fn is_subpath(path: &str, base: &str) -> bool {
    let base = base.trim_end_matches('/');
    path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The attributes to try, in order; the request is allowed when one is.
pub(crate) fn request_attributes(method: &hyper::Method, path: &str) -> Vec<Attributes> {
    let verb = verb(method);
    let mut out = Vec::with_capacity(2);
    let fine = if is_subpath(path, "/pods") || is_subpath(path, "/runningpods") {
        Some("pods")
    } else if is_subpath(path, "/healthz") {
        Some("healthz")
    } else if is_subpath(path, "/configz") {
        Some("configz")
    } else {
        None
    };
    if let Some(subresource) = fine {
        out.push(Attributes { verb, subresource });
    }
    let subresource = if is_subpath(path, "/stats") {
        "stats"
    } else if is_subpath(path, "/metrics") {
        "metrics"
    } else if is_subpath(path, "/logs") {
        "log"
    } else if is_subpath(path, "/checkpoint") {
        "checkpoint"
    } else {
        "proxy"
    };
    out.push(Attributes { verb, subresource });
    out
}

/// A cache of answers with a time to live each.
struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> TtlCache<K, V> {
    fn new() -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
        }
    }
    fn get(&self, k: &K) -> Option<V> {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.get(k)
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, v)| v.clone())
    }
    fn put(&self, k: K, v: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Bounded by the live entries: drop the expired ones once the map grows.
        if map.len() >= 4096 {
            map.retain(|_, (until, _)| now < *until);
        }
        map.insert(k, (now + ttl, v));
    }
}

/// Why an authorization decision could not be made (logged; the client sees a Refusal).
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("authorization mode Webhook needs --kubeconfig")]
    NoKubeconfig,
    /// The SubjectAccessReview request failed (boxed: kube's error is large).
    #[error(transparent)]
    Review(Box<kube::Error>),
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 401, body `Unauthorized`.
    Unauthenticated,
    /// 403, body `Forbidden (user=..., verb=..., resource=..., subresource=...)`.
    Forbidden(String),
    /// 500: the decision could not be made (the API server did not answer).
    Error(String),
}

pub struct Auth {
    node_name: String,
    anonymous: bool,
    /// The API client for TokenReview and SubjectAccessReview (API-server mode only).
    client: Option<kube::Client>,
    webhook_authn: bool,
    token_ttl: Duration,
    tokens: TtlCache<[u8; 32], Option<UserInfo>>,
    mode: AuthorizationMode,
    allowed_ttl: Duration,
    denied_ttl: Duration,
    decisions: TtlCache<(UserInfo, Attributes), bool>,
}

impl Auth {
    pub fn new(cfg: &ServerTls, node_name: &str, client: Option<kube::Client>) -> Arc<Self> {
        Arc::new(Auth {
            node_name: node_name.to_string(),
            anonymous: cfg.anonymous,
            client,
            webhook_authn: cfg.webhook_authn,
            token_ttl: cfg.webhook_authn_ttl,
            tokens: TtlCache::new(),
            mode: cfg.authorization,
            allowed_ttl: cfg.authz_allowed_ttl,
            denied_ttl: cfg.authz_denied_ttl,
            decisions: TtlCache::new(),
        })
    }

    /// The user of a request: its verified certificate's, its token's, or anonymous.
    pub(crate) async fn authenticate(
        &self,
        certificate_user: Option<UserInfo>,
        headers: &hyper::HeaderMap,
    ) -> Result<UserInfo, Refusal> {
        if let Some(u) = certificate_user {
            return Ok(u);
        }
        if let Some(token) = bearer_token(headers) {
            match self.review_token(token).await {
                Ok(Some(u)) => return Ok(u),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "token review failed"),
            }
        }
        if self.anonymous {
            return Ok(UserInfo::anonymous());
        }
        Err(Refusal::Unauthenticated)
    }

    async fn review_token(&self, token: &str) -> Result<Option<UserInfo>, kube::Error> {
        let (true, Some(client)) = (self.webhook_authn, &self.client) else {
            return Ok(None);
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(cached) = self.tokens.get(&key) {
            return Ok(cached);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let user = answer
            .status
            .filter(|s| s.authenticated == Some(true))
            .and_then(|s| s.user)
            .map(|u| UserInfo {
                name: u.username.unwrap_or_default(),
                uid: u.uid.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
            });
        self.tokens.put(key, user.clone(), self.token_ttl);
        Ok(user)
    }

    /// Whether `user` may make this request.
    pub(crate) async fn authorize(
        &self,
        user: &UserInfo,
        method: &hyper::Method,
        path: &str,
    ) -> Result<(), Refusal> {
        let attrs = request_attributes(method, path);
        let mut last = None;
        for a in attrs {
            match self.decide(user, &a).await {
                Ok(true) => return Ok(()),
                Ok(false) => last = Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, "subject access review failed");
                    return Err(Refusal::Error(format!(
                        "Authorization error (user={}, verb={}, resource=nodes, subresource={})",
                        user.name, a.verb, a.subresource
                    )));
                }
            }
        }
        let a = last.unwrap_or(Attributes {
            verb: "",
            subresource: "proxy",
        });
        Err(Refusal::Forbidden(format!(
            "Forbidden (user={}, verb={}, resource=nodes, subresource={})",
            user.name, a.verb, a.subresource
        )))
    }

    async fn decide(&self, user: &UserInfo, a: &Attributes) -> Result<bool, AuthError> {
        if self.mode == AuthorizationMode::AlwaysAllow {
            return Ok(true);
        }
        let Some(client) = &self.client else {
            return Err(AuthError::NoKubeconfig);
        };
        let key = (user.clone(), a.clone());
        if let Some(allowed) = self.decisions.get(&key) {
            return Ok(allowed);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(a.verb.to_string()),
                    version: Some("v1".into()),
                    resource: Some("nodes".into()),
                    subresource: Some(a.subresource.to_string()),
                    name: Some(self.node_name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Review(Box::new(e)))?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        let ttl = if allowed {
            self.allowed_ttl
        } else {
            self.denied_ttl
        };
        self.decisions.put(key, allowed, ttl);
        Ok(allowed)
    }
}

fn bearer_token(headers: &hyper::HeaderMap) -> Option<&str> {
    let v = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;

    fn subresources(method: Method, path: &str) -> Vec<(&'static str, &'static str)> {
        request_attributes(&method, path)
            .into_iter()
            .map(|a| (a.verb, a.subresource))
            .collect()
    }

    #[test]
    fn attributes_follow_upstream_paths() {
        assert_eq!(
            subresources(Method::GET, "/stats/summary"),
            [("get", "stats")]
        );
        assert_eq!(subresources(Method::GET, "/metrics"), [("get", "metrics")]);
        assert_eq!(
            subresources(Method::GET, "/metrics/resource"),
            [("get", "metrics")]
        );
        assert_eq!(subresources(Method::GET, "/logs/syslog"), [("get", "log")]);
        assert_eq!(
            subresources(Method::POST, "/exec/default/p/c"),
            [("create", "proxy")]
        );
        assert_eq!(
            subresources(Method::GET, "/containerLogs/default/p/c"),
            [("get", "proxy")]
        );
        assert_eq!(
            subresources(Method::GET, "/pods"),
            [("get", "pods"), ("get", "proxy")]
        );
        assert_eq!(
            subresources(Method::GET, "/runningpods/"),
            [("get", "pods"), ("get", "proxy")]
        );
        assert_eq!(
            subresources(Method::GET, "/healthz"),
            [("get", "healthz"), ("get", "proxy")]
        );
        assert_eq!(
            subresources(Method::GET, "/configz"),
            [("get", "configz"), ("get", "proxy")]
        );
        // A prefix is not a subpath.
        assert_eq!(subresources(Method::GET, "/statsx"), [("get", "proxy")]);
        assert_eq!(subresources(Method::PUT, "/x"), [("update", "proxy")]);
    }

    fn headers(auth: &str) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        h.insert(hyper::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn bearer_tokens_are_read_as_upstream() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&headers("Bearer ")), None);
        assert_eq!(bearer_token(&hyper::HeaderMap::new()), None);
    }

    fn auth(anonymous: bool) -> Arc<Auth> {
        let mut cfg = crate::config::Config::default().server;
        cfg.anonymous = anonymous;
        Auth::new(&cfg, "node1", None)
    }

    #[tokio::test]
    async fn anonymous_only_when_enabled_and_certificates_win() {
        let cert = UserInfo {
            name: "alice".into(),
            uid: String::new(),
            groups: vec!["devs".into()],
        };
        let a = auth(false);
        assert_eq!(
            a.authenticate(None, &hyper::HeaderMap::new()).await,
            Err(Refusal::Unauthenticated)
        );
        // No webhook: a token authenticates nobody.
        assert_eq!(
            a.authenticate(None, &headers("Bearer x")).await,
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(
            a.authenticate(Some(cert.clone()), &headers("Bearer x"))
                .await,
            Ok(cert)
        );
        let a = auth(true);
        assert_eq!(
            a.authenticate(None, &hyper::HeaderMap::new()).await,
            Ok(UserInfo::anonymous())
        );
    }

    #[tokio::test]
    async fn webhook_authorization_without_a_client_is_an_error_not_an_allow() {
        let mut cfg = crate::config::Config::default().server;
        cfg.authorization = AuthorizationMode::Webhook;
        let a = Auth::new(&cfg, "node1", None);
        let r = a
            .authorize(&UserInfo::anonymous(), &Method::GET, "/pods")
            .await;
        assert!(
            matches!(r, Err(Refusal::Error(ref m)) if m.contains("Authorization error")),
            "{r:?}"
        );
        let a = auth(false);
        assert_eq!(
            a.authorize(&UserInfo::anonymous(), &Method::GET, "/pods")
                .await,
            Ok(())
        );
    }

    #[test]
    fn cache_entries_expire() {
        let c: TtlCache<u8, bool> = TtlCache::new();
        c.put(1, true, Duration::from_secs(60));
        c.put(2, true, Duration::ZERO);
        c.put(3, false, Duration::from_nanos(1));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(c.get(&1), Some(true));
        assert_eq!(c.get(&2), None);
        assert_eq!(c.get(&3), None);
    }
}
