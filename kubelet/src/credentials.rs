//! Registry credentials for image pulls (upstream `pkg/credentialprovider`'s keyring with
//! the pod's `imagePullSecrets`): `kubernetes.io/dockerconfigjson` (`.dockerconfigjson`,
//! `{"auths": {...}}`) and `kubernetes.io/dockercfg` (`.dockercfg`) secrets. An entry's key
//! is a registry (`registry.example:5000`, `https://index.docker.io/v1/`, with an optional
//! path prefix and `*` for one subdomain label); the entries matching an image are tried most
//! specific first, and an image that none matches is pulled anonymously.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Secret};
use nodus_proto::runtime::v1 as cri;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Entry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    /// base64 of `user:password`.
    #[serde(default)]
    auth: String,
}

#[derive(Debug, Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

/// The registry host and the repository path of an image reference (Docker Hub defaults:
/// `busybox` is `docker.io/library/busybox`).
pub(crate) fn split_image(image: &str) -> (String, String) {
    let name = image.split('@').next().unwrap_or(image);
    // A tag is after the last ':' that comes after the last '/'.
    let name = match (name.rfind(':'), name.rfind('/')) {
        (Some(c), Some(s)) if c > s => &name[..c],
        (Some(c), None) => &name[..c],
        _ => name,
    };
    match name.split_once('/') {
        Some((host, rest)) if host.contains('.') || host.contains(':') || host == "localhost" => {
            let host = if host == "index.docker.io" {
                "docker.io"
            } else {
                host
            };
            (host.to_string(), rest.to_string())
        }
        Some(_) => ("docker.io".into(), name.to_string()),
        None => ("docker.io".into(), format!("library/{name}")),
    }
}

/// A keyring key as (host, path prefix).
fn split_key(key: &str) -> (String, String) {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let (host, path) = k.split_once('/').unwrap_or((k, ""));
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    };
    // Docker Hub's legacy key ends in /v1/: that is an API path, not a repository.
    let path = if host == "docker.io" && (path == "v1/" || path == "v1") {
        ""
    } else {
        path.trim_end_matches('/')
    };
    (host.to_string(), path.to_string())
}

/// `*.example.com` matches `a.example.com`; ports must be equal.
fn host_matches(pattern: &str, host: &str) -> bool {
    let (p_name, p_port) = pattern.split_once(':').unwrap_or((pattern, ""));
    let (h_name, h_port) = host.split_once(':').unwrap_or((host, ""));
    if p_port != h_port {
        return false;
    }
    let p: Vec<&str> = p_name.split('.').collect();
    let h: Vec<&str> = h_name.split('.').collect();
    p.len() == h.len() && p.iter().zip(&h).all(|(a, b)| *a == "*" || a == b)
}

fn path_matches(prefix: &str, path: &str) -> bool {
    prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
}

/// An image pull secret that is not a docker config.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialError {
    /// `key` is `.dockerconfigjson` or `.dockercfg`.
    #[error("{key}: {source}")]
    Json {
        key: &'static str,
        source: serde_json::Error,
    },
    #[error("neither .dockerconfigjson nor .dockercfg")]
    NoDockerConfig,
}

fn entries(secret: &Secret) -> Result<Vec<(String, Entry)>, CredentialError> {
    let data = secret.data.as_ref();
    let get = |k: &str| data.and_then(|d| d.get(k)).map(|b| b.0.as_slice());
    let json = |key| move |source| CredentialError::Json { key, source };
    if let Some(raw) = get(".dockerconfigjson") {
        let cfg: DockerConfigJson =
            serde_json::from_slice(raw).map_err(json(".dockerconfigjson"))?;
        return Ok(cfg.auths.into_iter().collect());
    }
    if let Some(raw) = get(".dockercfg") {
        let cfg: BTreeMap<String, Entry> =
            serde_json::from_slice(raw).map_err(json(".dockercfg"))?;
        return Ok(cfg.into_iter().collect());
    }
    Err(CredentialError::NoDockerConfig)
}

fn decode_auth(auth: &str) -> Option<(String, String)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// The entries of `list` that match an image's host and path, most specific first.
fn matching(list: Vec<(String, Entry)>, host: &str, path: &str) -> Vec<cri::AuthConfig> {
    let mut found: Vec<(usize, cri::AuthConfig)> = Vec::new();
    for (key, e) in list {
        let (k_host, k_path) = split_key(&key);
        if !host_matches(&k_host, host) || !path_matches(&k_path, path) {
            continue;
        }
        let (username, password) = if e.username.is_empty() && !e.auth.is_empty() {
            decode_auth(&e.auth).unwrap_or_default()
        } else {
            (e.username, e.password)
        };
        // No server_address, as upstream sends none: containerd parses it as a URL,
        // which a `host:port` key is not, and the match was made here already.
        found.push((
            k_host.len() + k_path.len(),
            cri::AuthConfig {
                username,
                password,
                ..Default::default()
            },
        ));
    }
    found.sort_by_key(|(s, _)| std::cmp::Reverse(*s));
    found.into_iter().map(|(_, a)| a).collect()
}

/// The node's own registry credentials (upstream's default keyring): the first of
/// `<root-dir>/config.json`, `$HOME/.docker/config.json`, `/.docker/config.json`, then of the
/// legacy `.dockercfg` in `<root-dir>`, `$HOME` and `/`. Read at each pull, so an edit
/// counts at once; a malformed file is skipped with a warning (the search goes on, as
/// upstream's).
pub(crate) fn node_entries(root_dir: &std::path::Path) -> Vec<(String, Entry)> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let dirs: Vec<std::path::PathBuf> = [Some(root_dir.to_path_buf()), home.clone()]
        .into_iter()
        .flatten()
        .collect();
    let mut json_paths: Vec<std::path::PathBuf> = vec![root_dir.join("config.json")];
    json_paths.extend(home.iter().map(|h| h.join(".docker/config.json")));
    json_paths.push("/.docker/config.json".into());
    for p in &json_paths {
        if let Ok(raw) = std::fs::read(p) {
            match serde_json::from_slice::<DockerConfigJson>(&raw) {
                Ok(cfg) => return cfg.auths.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "node registry credentials: not a docker config.json");
                }
            }
        }
    }
    for d in dirs
        .iter()
        .map(|d| d.as_path())
        .chain([std::path::Path::new("/")])
    {
        let p = d.join(".dockercfg");
        if let Ok(raw) = std::fs::read(&p) {
            match serde_json::from_slice::<BTreeMap<String, Entry>>(&raw) {
                Ok(cfg) => return cfg.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "node registry credentials: not a .dockercfg");
                }
            }
        }
    }
    Vec::new()
}

/// The credentials to try for `image`: those of the pod's pull secrets as `objects` holds
/// them, then the node's (`node`, from [`node_entries`]), each most specific first.
/// Secrets that are missing or malformed are skipped with a warning, as upstream goes on
/// without them.
pub(crate) fn for_image(
    pod: &Pod,
    image: &str,
    objects: &crate::objects::PodObjects,
    node: Vec<(String, Entry)>,
) -> Vec<cri::AuthConfig> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let (host, path) = split_image(image);
    let mut from_secrets: Vec<(String, Entry)> = Vec::new();
    let names = pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_deref())
        .unwrap_or(&[]);
    for r in names {
        let secret = match objects.secret(ns, &r.name) {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::warn!(secret = %r.name, "imagePullSecrets: secret not found, pulling without it");
                continue;
            }
            Err(e) => {
                tracing::warn!(secret = %r.name, error = %e, "imagePullSecrets: secret unavailable, pulling without it");
                continue;
            }
        };
        let list = match entries(secret) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(secret = %r.name, error = %e, "imagePullSecrets: not a docker config secret");
                continue;
            }
        };
        from_secrets.extend(list);
    }
    let mut found = matching(from_secrets, &host, &path);
    found.extend(matching(node, &host, &path));
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(key: &str, json: &str) -> Secret {
        Secret {
            data: Some([(key.to_string(), ByteString(json.as_bytes().to_vec()))].into()),
            ..Default::default()
        }
    }

    fn pod(secrets: &[&str]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [], "imagePullSecrets": secrets.iter().map(|s| serde_json::json!({"name": s})).collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    fn objects(secrets: Vec<(&str, Secret)>) -> crate::objects::PodObjects {
        crate::objects::PodObjects {
            api: true,
            secrets: secrets
                .into_iter()
                .map(|(n, s)| (("ns".to_string(), n.to_string()), Some(s)))
                .chain([(("ns".to_string(), "gone".to_string()), None)])
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn image_references_split_as_docker_does() {
        assert_eq!(
            split_image("busybox"),
            ("docker.io".into(), "library/busybox".into())
        );
        assert_eq!(
            split_image("user/app:1"),
            ("docker.io".into(), "user/app".into())
        );
        assert_eq!(
            split_image("127.0.0.1:5000/e2e/agnhost:2.21"),
            ("127.0.0.1:5000".into(), "e2e/agnhost".into())
        );
        assert_eq!(
            split_image("gcr.io/p/img@sha256:abcd"),
            ("gcr.io".into(), "p/img".into())
        );
        assert_eq!(split_image("localhost/x"), ("localhost".into(), "x".into()));
    }

    #[test]
    fn matching_entries_most_specific_first_and_auth_decoded() {
        // "u2:p2" in base64.
        let json = r#"{"auths": {
            "registry.test:5000": {"username": "u1", "password": "p1"},
            "registry.test:5000/team": {"auth": "dTI6cDI="},
            "other.test": {"username": "x", "password": "y"},
            "*.wild.test": {"username": "w", "password": "w"}
        }}"#;
        let p = pod(&["regcred", "gone"]);
        let o = objects(vec![("regcred", secret(".dockerconfigjson", json))]);
        let creds = for_image(&p, "registry.test:5000/team/app:1", &o, Vec::new());
        let users: Vec<&str> = creds.iter().map(|c| c.username.as_str()).collect();
        assert_eq!(users, ["u2", "u1"]);
        assert_eq!(creds[0].password, "p2");
        assert_eq!(creds[0].server_address, "");
        let creds = for_image(&p, "registry.test:5000/solo/app", &o, Vec::new());
        assert_eq!(creds.len(), 1);
        assert_eq!(
            for_image(&p, "registry.test/app", &o, Vec::new()).len(),
            0,
            "another port"
        );
        assert_eq!(
            for_image(&p, "a.wild.test/app", &o, Vec::new())[0].username,
            "w"
        );
        assert_eq!(for_image(&p, "busybox", &o, Vec::new()).len(), 0);
    }

    #[test]
    fn legacy_dockercfg_and_docker_hub_keys() {
        let json = r#"{"https://index.docker.io/v1/": {"username": "hub", "password": "pw"}}"#;
        let p = pod(&["old"]);
        let o = objects(vec![("old", secret(".dockercfg", json))]);
        let creds = for_image(&p, "busybox:1.29", &o, Vec::new());
        assert_eq!(creds.len(), 1);
        assert_eq!(creds[0].username, "hub");
    }

    #[test]
    fn bad_secrets_are_skipped() {
        let p = pod(&["bad", "notdocker"]);
        let o = objects(vec![
            ("bad", secret(".dockerconfigjson", "{not json")),
            ("notdocker", secret("password", "x")),
        ]);
        assert!(for_image(&p, "registry.test/app", &o, Vec::new()).is_empty());
        let e = entries(&secret(".dockerconfigjson", "{not json")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(".dockerconfigjson: key must be a string"),
            "{e}"
        );
        let e = entries(&secret("password", "x")).unwrap_err();
        assert_eq!(e.to_string(), "neither .dockerconfigjson nor .dockercfg");
    }

    #[test]
    fn node_credentials_come_after_the_pods_and_from_the_root_dir_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths": {"registry.test:5000": {"auth": "bm9kZTpub2RlcGFzcw=="}}}"#,
        )
        .unwrap();
        let node = node_entries(dir.path());
        let json = r#"{"auths": {"registry.test:5000": {"username": "pod", "password": "p"}}}"#;
        let o = objects(vec![("a", secret(".dockerconfigjson", json))]);
        let users: Vec<(String, String)> =
            for_image(&pod(&["a"]), "registry.test:5000/x:1", &o, node)
                .into_iter()
                .map(|a| (a.username, a.password))
                .collect();
        assert_eq!(
            users,
            [
                ("pod".to_string(), "p".to_string()),
                ("node".to_string(), "nodepass".to_string())
            ]
        );
        // Another registry: only what matches it (nothing here).
        let node = node_entries(dir.path());
        assert!(for_image(&pod(&[]), "other.test/x:1", &o, node).is_empty());
        // A malformed root-dir file is skipped, whatever comes after it.
        std::fs::write(dir.path().join("config.json"), b"{not json").unwrap();
        assert!(!node_entries(dir.path())
            .iter()
            .any(|(k, _)| k == "registry.test:5000"));
    }
}
