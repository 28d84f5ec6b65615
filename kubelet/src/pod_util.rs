//! Accessors of a pod's spec and metadata that every subsystem uses (upstream's
//! `podutil` and `kubecontainer` helpers): UID, full name, restart policy, containers.

use k8s_openapi::api::core::v1::{Container, Pod};

/// The UID of a pod ("" if it has none; sources always set one).
pub(crate) fn uid_of(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or("")
}

/// `namespace/name`.
pub(crate) fn full_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

pub(crate) fn restart_policy(pod: &Pod) -> RestartPolicy {
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("OnFailure") => RestartPolicy::OnFailure,
        Some("Never") => RestartPolicy::Never,
        _ => RestartPolicy::Always,
    }
}

pub(crate) fn init_containers(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or(&[])
}

pub(crate) fn app_containers(pod: &Pod) -> &[Container] {
    pod.spec.as_ref().map(|s| &s.containers[..]).unwrap_or(&[])
}

pub(crate) fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    init_containers(pod).iter().chain(app_containers(pod))
}

/// A native sidecar (upstream's restartable init container): an init container with
/// `restartPolicy: Always`. It starts in init order, the next init container starts once it
/// has started, it is restarted whenever it exits, and it stops after the app containers.
pub(crate) fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// The pod's sidecars with their index in `spec.initContainers`.
pub(crate) fn sidecars(pod: &Pod) -> impl Iterator<Item = (usize, &Container)> {
    init_containers(pod)
        .iter()
        .enumerate()
        .filter(|(_, c)| is_sidecar(c))
}

/// The pod's ephemeral containers as containers (the same fields) and the container whose
/// processes each one shares (`targetContainerName`).
pub(crate) fn ephemeral_containers(pod: &Pod) -> Vec<(Container, Option<String>)> {
    pod.spec
        .as_ref()
        .and_then(|s| s.ephemeral_containers.as_deref())
        .unwrap_or(&[])
        .iter()
        .filter_map(|e| {
            let mut v = serde_json::to_value(e).ok()?;
            let target = v
                .as_object_mut()?
                .remove("targetContainerName")
                .and_then(|t| t.as_str().map(str::to_string));
            Some((serde_json::from_value(v).ok()?, target))
        })
        .collect()
}
