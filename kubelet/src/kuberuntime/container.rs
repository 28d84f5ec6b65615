//! Building the CRI container configuration of one container of a pod (upstream
//! `kuberuntime_container.go` `generateContainerConfig`): metadata with the attempt
//! (restart count), image, command and args, env, mounts, labels and annotations as
//! upstream, the log path `<container>/<restart>.log` and the Linux namespace options.

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext};
use nodus_proto::runtime::v1 as cri;

use crate::kuberuntime::labels;

/// What the config needs besides the pod and the container spec.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContainerOptions {
    pub(crate) restart_count: u32,
    pub(crate) is_init: bool,
    /// The image as the runtime resolved it (ImageStatus/PullImage).
    pub(crate) image_ref: String,
    pub(crate) mounts: Vec<cri::Mount>,
    pub(crate) namespace_options: Option<cri::NamespaceOption>,
    /// The resolved environment (None: literal values only).
    pub(crate) env: Option<Vec<(String, String)>>,
    /// Command and args after `$(VAR)` expansion (None: as written).
    pub(crate) command_args: Option<(Vec<String>, Vec<String>)>,
    pub(crate) resources: Option<cri::LinuxContainerResources>,
    /// The seccomp profile (None: the runtime's default).
    pub(crate) seccomp: Option<cri::SecurityProfile>,
    /// The AppArmor profile and its pre-1.30 string form (None: nothing asked).
    pub(crate) apparmor: Option<(cri::SecurityProfile, String)>,
}

/// Upstream's default masked and read-only paths for unprivileged containers.
pub(crate) const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
pub(crate) const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The effective user settings of a container: the container's security context over the
/// pod's (upstream `determineEffectiveSecurityContext`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EffectiveUser {
    pub(crate) run_as_user: Option<i64>,
    pub(crate) run_as_group: Option<i64>,
    pub(crate) run_as_non_root: bool,
}

pub(crate) fn effective_user(pod: &Pod, container: &Container) -> EffectiveUser {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = container.security_context.as_ref();
    EffectiveUser {
        run_as_user: csc
            .and_then(|s| s.run_as_user)
            .or_else(|| psc.and_then(|s| s.run_as_user)),
        run_as_group: csc
            .and_then(|s| s.run_as_group)
            .or_else(|| psc.and_then(|s| s.run_as_group)),
        run_as_non_root: csc
            .and_then(|s| s.run_as_non_root)
            .or_else(|| psc.and_then(|s| s.run_as_non_root))
            .unwrap_or(false),
    }
}

/// The pod's supplementalGroups plus its fsGroup (upstream adds fsGroup to every
/// container's and the sandbox's groups).
pub(crate) fn supplemental_groups(psc: Option<&PodSecurityContext>) -> Vec<i64> {
    let mut groups: Vec<i64> = psc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default();
    if let Some(g) = psc.and_then(|s| s.fs_group) {
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    groups
}

/// The container's CRI security context (user, groups incl. fsGroup, privileged,
/// read-only root, no_new_privs, capabilities, masked paths, namespaces).
pub(crate) fn security_context(
    pod: &Pod,
    container: &Container,
    namespace_options: Option<cri::NamespaceOption>,
) -> cri::LinuxContainerSecurityContext {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = container.security_context.as_ref();
    let user = effective_user(pod, container);
    let privileged = csc.and_then(|s| s.privileged).unwrap_or(false);
    let groups = supplemental_groups(psc);
    let caps = csc.and_then(|s| s.capabilities.as_ref());
    let (masked, readonly) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        (
            DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
    };
    cri::LinuxContainerSecurityContext {
        capabilities: caps.map(|c| cri::Capability {
            add_capabilities: c.add.clone().unwrap_or_default(),
            drop_capabilities: c.drop.clone().unwrap_or_default(),
            ..Default::default()
        }),
        privileged,
        namespace_options,
        run_as_user: user.run_as_user.map(|value| cri::Int64Value { value }),
        run_as_group: user.run_as_group.map(|value| cri::Int64Value { value }),
        readonly_rootfs: csc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        supplemental_groups: groups,
        no_new_privs: csc
            .and_then(|s| s.allow_privilege_escalation)
            .map(|a| !a)
            .unwrap_or(false),
        masked_paths: masked,
        readonly_paths: readonly,
        ..Default::default()
    }
}

/// The container log path, relative to the sandbox log directory.
pub(crate) fn log_path(container: &str, restart_count: u32) -> String {
    format!("{container}/{restart_count}.log")
}

/// Literal env values (`valueFrom` is resolved by later work).
pub(crate) fn envs(container: &Container) -> Vec<cri::KeyValue> {
    container
        .env
        .iter()
        .flatten()
        .filter(|e| e.value_from.is_none())
        .map(|e| cri::KeyValue {
            key: e.name.clone(),
            value: e.value.clone().unwrap_or_default(),
        })
        .collect()
}

pub(crate) fn container_config(
    pod: &Pod,
    container: &Container,
    o: &ContainerOptions,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: container.name.clone(),
            attempt: o.restart_count,
        }),
        image: Some(cri::ImageSpec {
            image: o.image_ref.clone(),
            user_specified_image: container.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: match &o.command_args {
            Some((c, _)) => c.clone(),
            None => container.command.clone().unwrap_or_default(),
        },
        args: match &o.command_args {
            Some((_, a)) => a.clone(),
            None => container.args.clone().unwrap_or_default(),
        },
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: match &o.env {
            Some(env) => env
                .iter()
                .map(|(key, value)| cri::KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            None => envs(container),
        },
        mounts: o.mounts.clone(),
        labels: labels::container_labels(container, pod),
        annotations: labels::container_annotations(container, pod, o.restart_count, o.is_init),
        log_path: log_path(&container.name, o.restart_count),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(o.resources.clone().unwrap_or_default()),
            security_context: Some(cri::LinuxContainerSecurityContext {
                seccomp: o.seccomp.clone(),
                apparmor: o.apparmor.as_ref().map(|(p, _)| p.clone()),
                #[allow(deprecated)]
                apparmor_profile: o
                    .apparmor
                    .as_ref()
                    .map(|(_, s)| s.clone())
                    .unwrap_or_default(),
                ..security_context(pod, container, o.namespace_options.clone())
            }),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{load_manifest, Source};

    #[test]
    fn config_as_upstream() {
        let text = "kind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: c\n    image: 'i:1'\n    command: [sh]\n    args: [-c, 'echo $A']\n    workingDir: /w\n    env: [{name: A, value: x}, {name: B, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]\n";
        let pod = load_manifest(text, Source::File, "/m/w", "n").0.remove(0);
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let cfg = container_config(
            &pod,
            c,
            &ContainerOptions {
                restart_count: 4,
                image_ref: "sha256:abc".into(),
                ..Default::default()
            },
        );
        let m = cfg.metadata.as_ref().unwrap();
        assert_eq!((m.name.as_str(), m.attempt), ("c", 4));
        assert_eq!(cfg.log_path, "c/4.log");
        assert_eq!(cfg.image.as_ref().unwrap().image, "sha256:abc");
        assert_eq!(cfg.image.as_ref().unwrap().user_specified_image, "i:1");
        assert_eq!(cfg.command, ["sh"]);
        assert_eq!(cfg.args, ["-c", "echo $A"]);
        assert_eq!(cfg.working_dir, "/w");
        assert_eq!(cfg.envs.len(), 1);
        assert_eq!(
            (cfg.envs[0].key.as_str(), cfg.envs[0].value.as_str()),
            ("A", "x")
        );
        assert_eq!(cfg.labels[labels::CONTAINER_NAME_LABEL], "c");
        assert_eq!(cfg.annotations[labels::CONTAINER_RESTART_COUNT], "4");
        assert_eq!(cfg.annotations[labels::CONTAINER_TYPE], "container");
    }

    #[test]
    fn security_context_as_upstream() {
        let text = "kind: Pod\nmetadata: {name: web}\nspec:\n  securityContext: {runAsUser: 1000, runAsGroup: 3000, supplementalGroups: [4000], fsGroup: 2000}\n  containers:\n  - name: c\n    image: 'i:1'\n    securityContext: {runAsUser: 1001, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {add: [NET_ADMIN], drop: [ALL]}}\n";
        let pod = load_manifest(text, Source::File, "/m/w", "n").0.remove(0);
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let sc = security_context(&pod, c, None);
        assert_eq!(sc.run_as_user.unwrap().value, 1001);
        assert_eq!(sc.run_as_group.unwrap().value, 3000);
        assert_eq!(sc.supplemental_groups, [4000, 2000]);
        assert!(sc.readonly_rootfs && sc.no_new_privs && !sc.privileged);
        let caps = sc.capabilities.unwrap();
        assert_eq!(
            (caps.add_capabilities, caps.drop_capabilities),
            (vec!["NET_ADMIN".to_string()], vec!["ALL".to_string()])
        );
        assert!(sc.masked_paths.contains(&"/proc/kcore".to_string()));
    }
}
