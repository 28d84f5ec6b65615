//! Pod sources (upstream `pkg/kubelet/config`): the manifest directory ([`file`]), the
//! manifest URL ([`http`]) and the API server ([`apiserver`]). The file and http sources
//! decode manifests the same way: YAML or JSON, a `Pod` or a `PodList`, validated field by
//! field, then defaulted as upstream's `applyDefaults` does (UID from an MD5 over source +
//! node + object, name suffixed with `-<nodeName>`).

pub(crate) mod apiserver;
pub(crate) mod file;
pub(crate) mod http;
mod validation;

pub(crate) use validation::validate;

use k8s_openapi::api::core::v1::{Pod, Toleration};
use md5::{Digest, Md5};
use serde::Deserialize;

/// Annotation holding the config hash (the generated UID), as upstream.
pub(crate) const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// Annotation naming the source a pod came from (`file`, `http`).
pub(crate) const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// Annotation naming the file or URL a pod came from (ours; used in logs and `GET /pods`).
pub(crate) const CONFIG_ORIGIN_ANNOTATION: &str = "nodus.io/config.origin";

/// Which source a set of pods came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Source {
    File,
    Http,
    /// Pods bound to this node in the API server.
    Api,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Http => "http",
            Source::Api => "api",
        }
    }
}

/// A full snapshot of what one source holds now (upstream's `SET` operation).
#[derive(Debug, Clone)]
pub(crate) struct SourceUpdate {
    pub(crate) source: Source,
    pub(crate) pods: Vec<Pod>,
}

/// A manifest that cannot be used; it names where it came from and the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: field {field}: {reason}")]
pub(crate) struct ManifestError {
    /// File path or URL, with the document number when a file holds several.
    pub(crate) origin: String,
    /// Field path such as `spec.restartPolicy`, or `(document)` for a syntax error.
    pub(crate) field: String,
    pub(crate) reason: String,
}

fn merr(origin: &str, field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError {
        origin: origin.to_string(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// Decodes every pod a manifest text holds (YAML, possibly multi-document, or JSON).
/// Each result is one pod or one error; an error in one document does not hide the others.
pub(crate) fn decode_manifests(text: &str, origin: &str) -> Vec<Result<Pod, ManifestError>> {
    let mut out = Vec::new();
    // Parse every document first (to number them only when there are several). After a
    // syntax error the parser cannot find later documents, and its iterator keeps
    // failing: stop at the first error.
    let mut docs: Vec<Result<serde_yaml::Value, serde_yaml::Error>> = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let r = serde_yaml::Value::deserialize(doc);
        let failed = r.is_err();
        docs.push(r);
        if failed {
            break;
        }
    }
    let multi = docs.len() > 1;
    for (i, value) in docs.into_iter().enumerate() {
        let doc_origin = if multi {
            format!("{origin} (document {})", i + 1)
        } else {
            origin.to_string()
        };
        let value = match value {
            Ok(v) => v,
            Err(e) => {
                out.push(Err(merr(
                    &doc_origin,
                    "(document)",
                    format!("invalid YAML: {e}"),
                )));
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        out.extend(decode_value(value, &doc_origin));
    }
    out
}

fn decode_value(value: serde_yaml::Value, origin: &str) -> Vec<Result<Pod, ManifestError>> {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .map(str::to_owned);
    match kind.as_deref() {
        Some("Pod") => vec![decode_pod(value, origin)],
        Some("PodList") | Some("List") => {
            let items = match value.get("items") {
                Some(serde_yaml::Value::Sequence(items)) => items.clone(),
                Some(serde_yaml::Value::Null) | None => Vec::new(),
                Some(_) => return vec![Err(merr(origin, "items", "must be a list"))],
            };
            items
                .into_iter()
                .enumerate()
                .map(|(i, mut item)| {
                    // Items of a List may omit their kind; of a PodList they usually do.
                    if let serde_yaml::Value::Mapping(m) = &mut item {
                        m.entry("kind".into()).or_insert_with(|| "Pod".into());
                    }
                    let o = format!("{origin} (items[{i}])");
                    match item.get("kind").and_then(|k| k.as_str()) {
                        Some("Pod") => decode_pod(item, &o),
                        other => Err(merr(
                            &o,
                            "kind",
                            format!(
                                "unsupported value {:?}, expected \"Pod\"",
                                other.unwrap_or("")
                            ),
                        )),
                    }
                })
                .collect()
        }
        Some(other) => vec![Err(merr(
            origin,
            "kind",
            format!("unsupported value {other:?}, expected \"Pod\" or \"PodList\""),
        ))],
        None => vec![Err(merr(origin, "kind", "required value"))],
    }
}

fn decode_pod(value: serde_yaml::Value, origin: &str) -> Result<Pod, ManifestError> {
    if let Some(v) = value.get("apiVersion") {
        if v.as_str() != Some("v1") {
            let shown = match v.as_str() {
                Some(s) => format!("{s:?}"),
                None => format!("{v:?}"),
            };
            return Err(merr(
                origin,
                "apiVersion",
                format!("unsupported value {shown}, expected \"v1\""),
            ));
        }
    }
    let pod: Pod = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        merr(origin, path, e.into_inner().to_string())
    })?;
    validate(&pod).map_err(|(field, reason)| merr(origin, field, reason))?;
    Ok(pod)
}

/// Upstream's `generatePodName`: the manifest's name suffixed with the node name.
pub(crate) fn generate_pod_name(name: &str, node_name: &str) -> String {
    format!("{name}-{}", node_name.to_lowercase())
}

/// The UID of a static pod, as upstream derives it: an MD5 over `host:<node>` and
/// `file:<path>` (file source) or `url:<url>` (http source), then the object itself (upstream
/// hashes a dump of the Go struct; we hash its canonical JSON). Deterministic, so a
/// restarted kubelet finds its pods again; any edit gives a new UID (and so a new pod).
pub(crate) fn static_pod_uid(source: Source, origin: &str, node_name: &str, pod: &Pod) -> String {
    let mut h = Md5::new();
    match source {
        Source::File => {
            h.update(format!("host:{node_name}"));
            h.update(format!("file:{origin}"));
        }
        Source::Http | Source::Api => h.update(format!("url:{origin}")),
    }
    // k8s-openapi serializes struct fields in a fixed order and maps as BTreeMaps.
    h.update(serde_json::to_vec(pod).unwrap_or_default());
    hex::encode(h.finalize())
}

/// Upstream's `applyDefaults` for file and http sources, plus the API defaults the kubelet
/// relies on later (restart policy, grace period, pull policy, termination message).
pub(crate) fn apply_defaults(pod: &mut Pod, source: Source, origin: &str, node_name: &str) {
    if pod.metadata.uid.as_deref().unwrap_or("").is_empty() {
        pod.metadata.uid = Some(static_pod_uid(source, origin, node_name, pod));
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    pod.metadata.name = Some(generate_pod_name(&name, node_name));
    if pod.metadata.namespace.as_deref().unwrap_or("").is_empty() {
        pod.metadata.namespace = Some("default".into());
    }
    let ann = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    ann.insert(CONFIG_HASH_ANNOTATION.into(), uid);
    ann.insert(CONFIG_SOURCE_ANNOTATION.into(), source.as_str().into());
    ann.insert(CONFIG_ORIGIN_ANNOTATION.into(), origin.into());

    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node_name.to_string());
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    if source == Source::File {
        // Static pods tolerate every NoExecute taint, as upstream.
        let tol = Toleration {
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        };
        let tols = spec.tolerations.get_or_insert_with(Vec::new);
        if !tols.contains(&tol) {
            tols.push(tol);
        }
    }
    let containers = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for c in containers {
        let image = c.image.clone().unwrap_or_default();
        c.image_pull_policy
            .get_or_insert_with(|| default_pull_policy(&image).into());
        c.termination_message_path
            .get_or_insert_with(|| "/dev/termination-log".into());
        c.termination_message_policy
            .get_or_insert_with(|| "File".into());
    }
    let status = pod.status.get_or_insert_with(Default::default);
    status.phase = Some("Pending".into());
}

/// Upstream's default pull policy: `Always` for `:latest` or untagged images, else `IfNotPresent`.
pub(crate) fn default_pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// Decodes, validates and defaults every pod of one manifest; errors come back separately.
pub(crate) fn load_manifest(
    text: &str,
    source: Source,
    origin: &str,
    node_name: &str,
) -> (Vec<Pod>, Vec<ManifestError>) {
    let mut pods = Vec::new();
    let mut errors = Vec::new();
    for r in decode_manifests(text, origin) {
        match r {
            Ok(mut pod) => {
                apply_defaults(&mut pod, source, origin, node_name);
                pods.push(pod);
            }
            Err(e) => errors.push(e),
        }
    }
    (pods, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: localhost/nodus/busybox:1.35\n    command: [sh, -c, 'echo hi']\n";

    #[test]
    fn decodes_and_defaults_a_pod() {
        let (pods, errs) = load_manifest(POD, Source::File, "/m/web.yaml", "Node1");
        assert!(errs.is_empty(), "{errs:?}");
        let p = &pods[0];
        assert_eq!(p.metadata.name.as_deref(), Some("web-node1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("Node1"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        let uid = p.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        let ann = p.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[CONFIG_HASH_ANNOTATION], uid);
        assert_eq!(ann[CONFIG_SOURCE_ANNOTATION], "file");
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    }

    #[test]
    fn uid_is_deterministic_and_depends_on_source_node_and_content() {
        let uid = |text: &str, origin: &str, node: &str, src: Source| {
            load_manifest(text, src, origin, node).0[0]
                .metadata
                .uid
                .clone()
                .unwrap()
        };
        let a = uid(POD, "/m/a.yaml", "n1", Source::File);
        assert_eq!(a, uid(POD, "/m/a.yaml", "n1", Source::File));
        // JSON and YAML of the same object give the same UID.
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"},"spec":{"containers":[{"name":"c","image":"localhost/nodus/busybox:1.35","command":["sh","-c","echo hi"]}]}}"#;
        assert_eq!(a, uid(json, "/m/a.yaml", "n1", Source::File));
        assert_ne!(a, uid(POD, "/m/b.yaml", "n1", Source::File));
        assert_ne!(a, uid(POD, "/m/a.yaml", "n2", Source::File));
        assert_ne!(a, uid(POD, "/m/a.yaml", "n1", Source::Http));
        let edited = POD.replace("echo hi", "echo ho");
        assert_ne!(a, uid(&edited, "/m/a.yaml", "n1", Source::File));
        // Matches an independent MD5 over the same inputs.
        let pod: Pod = serde_yaml::from_str(POD).unwrap();
        let mut h = Md5::new();
        h.update(b"host:n1file:/m/a.yaml");
        h.update(serde_json::to_vec(&pod).unwrap());
        assert_eq!(a, hex::encode(h.finalize()));
    }

    #[test]
    fn explicit_uid_is_kept() {
        let text = POD.replace("name: web\n", "name: web\n  uid: 1234-abcd\n");
        let (pods, _) = load_manifest(&text, Source::Http, "http://x/p", "n");
        assert_eq!(pods[0].metadata.uid.as_deref(), Some("1234-abcd"));
    }

    #[test]
    fn multiple_documents_and_lists() {
        let two = format!("{POD}---\n{}", POD.replace("name: web", "name: api"));
        let (pods, errs) = load_manifest(&two, Source::File, "/m/x.yaml", "n");
        assert!(errs.is_empty());
        let names: Vec<_> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["web-n", "api-n"]);
        assert_ne!(pods[0].metadata.uid, pods[1].metadata.uid);

        let list = r#"{"kind":"PodList","apiVersion":"v1","items":[{"metadata":{"name":"a"},"spec":{"containers":[{"name":"c","image":"i:1"}]}},{"metadata":{"name":"b"},"spec":{"containers":[{"name":"c","image":"i:1"}]}}]}"#;
        let (pods, errs) = load_manifest(list, Source::Http, "http://h/pods", "n");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(pods.len(), 2);
    }

    fn one_error(text: &str) -> ManifestError {
        let (pods, errs) = load_manifest(text, Source::File, "/m/bad.yaml", "n");
        assert!(pods.is_empty());
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs[0].clone()
    }

    #[test]
    fn bad_manifests_name_file_and_field() {
        let e = one_error("kind: Pod\nmetadata: {name: [x\n");
        assert_eq!(e.field, "(document)");
        assert!(e.to_string().contains("/m/bad.yaml"));

        let e = one_error(&POD.replace("  name: web\n", "  labels: {a: b}\n"));
        assert_eq!(e.field, "metadata.name");

        let e = one_error(&POD.replace("spec:\n", "spec:\n  restartPolicy: Sometimes\n"));
        assert_eq!(e.field, "spec.restartPolicy");
        assert!(e.reason.contains("Sometimes"));

        let e = one_error(&POD.replace("    image: localhost/nodus/busybox:1.35\n", ""));
        assert_eq!(e.field, "spec.containers[0].image");

        let e = one_error(&POD.replace("command: [sh, -c, 'echo hi']", "command: 5"));
        assert_eq!(e.field, "spec.containers[0].command");

        let e = one_error(&POD.replace("kind: Pod", "kind: Deployment"));
        assert_eq!(e.field, "kind");

        let e = one_error(&POD.replace("name: web", "name: Web_1"));
        assert_eq!(e.field, "metadata.name");

        let e = one_error(&POD.replace(
            "    image: l",
            "    imagePullPolicy: Sometimes\n    image: l",
        ));
        assert_eq!(e.field, "spec.containers[0].imagePullPolicy");

        // A user namespace does not go with the host's network, PID or IPC namespaces.
        for (host, field) in [
            ("hostNetwork", "spec.hostNetwork"),
            ("hostPID", "spec.HostPID"),
            ("hostIPC", "spec.HostIPC"),
        ] {
            let e = one_error(&POD.replace(
                "spec:\n",
                &format!("spec:\n  hostUsers: false\n  {host}: true\n"),
            ));
            assert_eq!(
                (e.field.as_str(), e.reason.as_str()),
                (field, "forbidden: when `hostUsers` is false")
            );
        }
        let (pods, errs) = load_manifest(
            &POD.replace("spec:\n", "spec:\n  hostUsers: true\n  hostNetwork: true\n"),
            Source::File,
            "/m/x.yaml",
            "n",
        );
        assert_eq!((pods.len(), errs.len()), (1, 0));
    }

    #[test]
    fn one_bad_document_does_not_hide_others() {
        let text = format!("{POD}---\n{}", POD.replace("name: web", "name: Bad!"));
        let (pods, errs) = load_manifest(&text, Source::File, "/m/x.yaml", "n");
        assert_eq!(pods.len(), 1);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].origin.contains("document 2"));
    }

    #[test]
    fn pull_policy_defaults() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/busybox"), "Always");
        assert_eq!(
            default_pull_policy("localhost/nodus/busybox:1.35"),
            "IfNotPresent"
        );
        assert_eq!(default_pull_policy("busybox@sha256:abcd"), "IfNotPresent");
    }
}
