//! Building the CRI container configuration of one container of a pod (upstream
//! `kuberuntime_container.go` `generateContainerConfig`): metadata with the attempt
//! (restart count), image, command and args, env, mounts, labels and annotations as
//! upstream, the log path `<container>/<restart>.log` and the Linux namespace options.

use k8s_openapi::api::core::v1::{Container, Pod};
use nodus_proto::runtime::v1 as cri;

use crate::labels;

/// What the config needs besides the pod and the container spec.
#[derive(Debug, Clone, Default)]
pub struct ContainerOptions {
    pub restart_count: u32,
    pub is_init: bool,
    /// The image as the runtime resolved it (ImageStatus/PullImage).
    pub image_ref: String,
    pub mounts: Vec<cri::Mount>,
    pub namespace_options: Option<cri::NamespaceOption>,
}

/// The container log path, relative to the sandbox log directory.
pub fn log_path(container: &str, restart_count: u32) -> String {
    format!("{container}/{restart_count}.log")
}

/// Literal env values (`valueFrom` is resolved by later work).
pub fn envs(container: &Container) -> Vec<cri::KeyValue> {
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

pub fn container_config(
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
        command: container.command.clone().unwrap_or_default(),
        args: container.args.clone().unwrap_or_default(),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: envs(container),
        mounts: o.mounts.clone(),
        labels: labels::container_labels(container, pod),
        annotations: labels::container_annotations(container, pod, o.restart_count, o.is_init),
        log_path: log_path(&container.name, o.restart_count),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources::default()),
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: o.namespace_options.clone(),
                ..Default::default()
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
}
