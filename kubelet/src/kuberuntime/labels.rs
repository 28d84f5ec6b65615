//! Labels and annotations on CRI objects, named as upstream's kubelet names them
//! (`pkg/kubelet/kuberuntime/labels.go`, `pkg/kubelet/types/labels.go`), so that
//! `crictl pods/ps/inspect` read right and a restarted kubelet can rebuild its state.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use md5::{Digest, Md5};

pub(crate) const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
pub(crate) const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub(crate) const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
pub(crate) const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";

pub(crate) const POD_DELETION_GRACE_PERIOD: &str = "io.kubernetes.pod.deletionGracePeriod";
pub(crate) const POD_TERMINATION_GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";
pub(crate) const CONTAINER_HASH: &str = "io.kubernetes.container.hash";
pub(crate) const CONTAINER_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
pub(crate) const CONTAINER_TERMINATION_MESSAGE_PATH: &str =
    "io.kubernetes.container.terminationMessagePath";
pub(crate) const CONTAINER_TERMINATION_MESSAGE_POLICY: &str =
    "io.kubernetes.container.terminationMessagePolicy";
pub(crate) const CONTAINER_PORTS: &str = "io.kubernetes.container.ports";
pub(crate) const CONTAINER_TYPE: &str = "io.kubernetes.container.type";

/// The container type annotation values.
pub(crate) const CONTAINER_TYPE_INIT: &str = "init";
pub(crate) const CONTAINER_TYPE_APP: &str = "container";

/// Sandbox labels: the pod's own labels plus name, namespace and UID.
pub(crate) fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    let mut l: HashMap<String, String> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    insert_pod_identity(&mut l, pod);
    l
}

/// The pod name, namespace and UID labels every sandbox and container carries.
fn insert_pod_identity(l: &mut HashMap<String, String>, pod: &Pod) {
    let meta = &pod.metadata;
    for (key, value) in [
        (POD_NAME_LABEL, &meta.name),
        (POD_NAMESPACE_LABEL, &meta.namespace),
        (POD_UID_LABEL, &meta.uid),
    ] {
        l.insert(key.into(), value.clone().unwrap_or_default());
    }
}

/// Sandbox annotations: the pod's annotations.
pub(crate) fn pod_annotations(pod: &Pod) -> HashMap<String, String> {
    pod.metadata
        .annotations
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Container labels: pod name, namespace, UID and the container name.
pub(crate) fn container_labels(container: &Container, pod: &Pod) -> HashMap<String, String> {
    let mut l = HashMap::new();
    insert_pod_identity(&mut l, pod);
    l.insert(CONTAINER_NAME_LABEL.into(), container.name.clone());
    l
}

/// A hash of what a running container cannot change (hex of a u64, as upstream prints it):
/// its name and image, as upstream's `HashContainer` since 1.31. A running container whose
/// hash differs from its spec's is restarted. The rest of a pod's spec is immutable in the
/// API (a static pod's edit makes a new pod), except resources, which a resize changes in
/// place.
pub(crate) fn hash_container(container: &Container) -> String {
    let fields = serde_json::json!({"image": container.image, "name": container.name});
    hash_json(&serde_json::to_vec(&fields).unwrap_or_default())
}

/// The hash Nodus kubelets before in-place resize gave a container (its whole spec): a
/// container one of them started and that still matches its spec is not restarted by an
/// upgrade.
pub(crate) fn legacy_hash_container(container: &Container) -> String {
    hash_json(&serde_json::to_vec(container).unwrap_or_default())
}

fn hash_json(json: &[u8]) -> String {
    let digest = Md5::digest(json);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    format!("{:x}", u64::from_be_bytes(first))
}

/// Container annotations as upstream's `newContainerAnnotations`.
pub(crate) fn container_annotations(
    container: &Container,
    pod: &Pod,
    restart_count: u32,
    is_init: bool,
) -> HashMap<String, String> {
    let mut a = HashMap::new();
    a.insert(CONTAINER_HASH.into(), hash_container(container));
    a.insert(CONTAINER_RESTART_COUNT.into(), restart_count.to_string());
    a.insert(
        CONTAINER_TERMINATION_MESSAGE_PATH.into(),
        container
            .termination_message_path
            .clone()
            .unwrap_or_default(),
    );
    a.insert(
        CONTAINER_TERMINATION_MESSAGE_POLICY.into(),
        container
            .termination_message_policy
            .clone()
            .unwrap_or_default(),
    );
    if let Some(g) = pod.metadata.deletion_grace_period_seconds {
        a.insert(POD_DELETION_GRACE_PERIOD.into(), g.to_string());
    }
    if let Some(g) = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
    {
        a.insert(POD_TERMINATION_GRACE_PERIOD.into(), g.to_string());
    }
    if let Some(ports) = container.ports.as_ref().filter(|p| !p.is_empty()) {
        if let Ok(j) = serde_json::to_string(ports) {
            a.insert(CONTAINER_PORTS.into(), j);
        }
    }
    a.insert(
        CONTAINER_TYPE.into(),
        if is_init {
            CONTAINER_TYPE_INIT
        } else {
            CONTAINER_TYPE_APP
        }
        .into(),
    );
    a
}

/// Reads the restart count annotation (0 when absent or malformed, as upstream).
pub(crate) fn restart_count(annotations: &HashMap<String, String>) -> u32 {
    annotations
        .get(CONTAINER_RESTART_COUNT)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads the pod's termination grace period annotation.
pub(crate) fn termination_grace_period(annotations: &HashMap<String, String>) -> Option<i64> {
    annotations
        .get(POD_DELETION_GRACE_PERIOD)
        .or_else(|| annotations.get(POD_TERMINATION_GRACE_PERIOD))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{load_manifest, Source};

    fn pod() -> Pod {
        let text = "kind: Pod\nmetadata: {name: web, labels: {app: w}}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers: [{name: c, image: 'i:1', ports: [{containerPort: 80}]}]\n";
        load_manifest(text, Source::File, "/m/w", "n").0.remove(0)
    }

    #[test]
    fn labels_and_annotations_as_upstream() {
        let p = pod();
        let l = pod_labels(&p);
        assert_eq!(l[POD_NAME_LABEL], "web-n");
        assert_eq!(l[POD_NAMESPACE_LABEL], "default");
        assert_eq!(l[POD_UID_LABEL], p.metadata.uid.clone().unwrap());
        assert_eq!(l["app"], "w");
        let c = &p.spec.as_ref().unwrap().containers[0];
        let cl = container_labels(c, &p);
        assert_eq!(cl[CONTAINER_NAME_LABEL], "c");
        assert_eq!(cl.len(), 4);
        let a = container_annotations(c, &p, 3, false);
        assert_eq!(restart_count(&a), 3);
        assert_eq!(termination_grace_period(&a), Some(5));
        assert_eq!(
            a[CONTAINER_TERMINATION_MESSAGE_PATH],
            "/dev/termination-log"
        );
        assert_eq!(a[CONTAINER_TYPE], "container");
        assert!(a[CONTAINER_PORTS].contains("\"containerPort\":80"));
        assert_eq!(a[CONTAINER_HASH], hash_container(c));
    }

    #[test]
    fn hash_follows_the_spec() {
        let p = pod();
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        assert_eq!(hash_container(&c), hash_container(&c.clone()));
        let mut c2 = c.clone();
        c2.image = Some("other:2".into());
        assert_ne!(hash_container(&c), hash_container(&c2));
        // Resources change in place (a resize), not by a restart.
        let mut c3 = c.clone();
        c3.resources = Some(Default::default());
        c3.resize_policy = Some(Vec::new());
        assert_eq!(hash_container(&c), hash_container(&c3));
        assert!(u64::from_str_radix(&hash_container(&c), 16).is_ok());
    }

    #[test]
    fn malformed_annotations_read_as_zero() {
        let mut a = HashMap::new();
        assert_eq!(restart_count(&a), 0);
        a.insert(CONTAINER_RESTART_COUNT.to_string(), "x".to_string());
        assert_eq!(restart_count(&a), 0);
        assert_eq!(termination_grace_period(&a), None);
    }
}
