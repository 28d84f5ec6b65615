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

/// True when `container`'s env or one of the pod's downward API volumes asks for
/// `status.podIP` or `status.podIPs`. Only then must a container's start wait for the
/// sandbox's IPs (a PodSandboxStatus call); the pod's status gets them from the relist.
pub(crate) fn uses_pod_ips(pod: &Pod, container: &Container) -> bool {
    let is_ip = |path: &str| path == "status.podIP" || path == "status.podIPs";
    let in_env = container.env.iter().flatten().any(|e| {
        e.value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .is_some_and(|f| is_ip(&f.field_path))
    });
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref());
    let in_volumes = volumes.unwrap_or(&[]).iter().any(|v| {
        let plain = v.downward_api.iter().flat_map(|d| d.items.iter().flatten());
        let projected = v
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .filter_map(|s| s.downward_api.as_ref())
            .flat_map(|d| d.items.iter().flatten());
        plain
            .chain(projected)
            .filter_map(|i| i.field_ref.as_ref())
            .any(|f| is_ip(&f.field_path))
    });
    in_env || in_volumes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn pod_ips_are_needed_only_where_env_or_a_downward_volume_names_them() {
        let base = "metadata: {name: p}\nspec:\n  containers:\n  - name: c\n    image: i\n";
        let plain = pod(base);
        assert!(!uses_pod_ips(
            &plain,
            &plain.spec.as_ref().unwrap().containers[0]
        ));
        let other_field = pod(&format!(
            "{base}    env:\n    - {{name: N, valueFrom: {{fieldRef: {{fieldPath: status.hostIP}}}}}}\n"
        ));
        assert!(!uses_pod_ips(
            &other_field,
            &other_field.spec.as_ref().unwrap().containers[0]
        ));
        for field in ["status.podIP", "status.podIPs"] {
            let env = pod(&format!(
                "{base}    env:\n    - {{name: N, valueFrom: {{fieldRef: {{fieldPath: {field}}}}}}}\n"
            ));
            assert!(
                uses_pod_ips(&env, &env.spec.as_ref().unwrap().containers[0]),
                "{field}"
            );
        }
        let volume = pod(&format!(
            "{base}  volumes:\n  - name: d\n    downwardAPI:\n      items:\n      - {{path: ip, fieldRef: {{fieldPath: status.podIP}}}}\n"
        ));
        assert!(uses_pod_ips(
            &volume,
            &volume.spec.as_ref().unwrap().containers[0]
        ));
        let projected = pod(&format!(
            "{base}  volumes:\n  - name: d\n    projected:\n      sources:\n      - downwardAPI:\n          items:\n          - {{path: ip, fieldRef: {{fieldPath: status.podIPs}}}}\n"
        ));
        assert!(uses_pod_ips(
            &projected,
            &projected.spec.as_ref().unwrap().containers[0]
        ));
        let labels_only = pod(&format!(
            "{base}  volumes:\n  - name: d\n    downwardAPI:\n      items:\n      - {{path: l, fieldRef: {{fieldPath: metadata.labels}}}}\n"
        ));
        assert!(!uses_pod_ips(
            &labels_only,
            &labels_only.spec.as_ref().unwrap().containers[0]
        ));
    }
}
