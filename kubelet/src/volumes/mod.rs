//! Pod volumes under `<root-dir>/pods/<uid>/volumes/<plugin>/<name>` as upstream:
//! `emptyDir` (`kubernetes.io~empty-dir`, a directory, or a tmpfs of `sizeLimit` for
//! `medium: Memory`), `hostPath` with its `type` checks, and the API data volumes written
//! through the [`atomic_writer`](crate::volumes::atomic_writer): `downwardAPI`
//! (`kubernetes.io~downward-api`), `configMap` (`kubernetes.io~configmap`), `secret`
//! (`kubernetes.io~secret`, on a tmpfs so secrets never reach the disk) and `projected`
//! (`kubernetes.io~projected`, a tmpfs: serviceAccountToken, configMap, secret and
//! downwardAPI sources). API data volumes are always mounted read-only and are rewritten
//! in place when their objects change ([`refresh`]). Containers get CRI mounts with
//! `subPath` and `readOnly` honoured; [`teardown`] unmounts the tmpfs volumes and removes
//! the directories with the pod.

use std::collections::HashMap;

use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

pub(crate) mod atomic_writer;

mod api_data;
mod empty_dir;
mod host_path;
mod mounts;
mod subpath;
pub(crate) use api_data::VolumeInputs;
use api_data::*;
use empty_dir::*;
use host_path::*;
pub(crate) use mounts::container_mounts;
pub(crate) use subpath::sub_paths_dir;

pub(crate) const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
pub(crate) const DOWNWARD_API: &str = "kubernetes.io~downward-api";
pub(crate) const CONFIG_MAP: &str = "kubernetes.io~configmap";
pub(crate) const SECRET: &str = "kubernetes.io~secret";
pub(crate) const PROJECTED: &str = "kubernetes.io~projected";

/// Plugins whose volumes are tmpfs mounts of the kubelet's.
const TMPFS_PLUGINS: [&str; 3] = [EMPTY_DIR, SECRET, PROJECTED];

#[derive(Debug, thiserror::Error)]
pub(crate) enum VolumeError {
    #[error("volume {volume:?}: {message}")]
    Invalid { volume: String, message: String },
    #[error("volume {volume:?}: {path}: {source}")]
    Io {
        volume: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `message` is a String or the Display of another subsystem's error (objects, env).
fn invalid(volume: &str, message: impl std::fmt::Display) -> VolumeError {
    VolumeError::Invalid {
        volume: volume.to_string(),
        message: message.to_string(),
    }
}

fn io(volume: &str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let (volume, path) = (volume.to_string(), path.to_path_buf());
    move |source| VolumeError::Io {
        volume,
        path,
        source,
    }
}

/// A prepared volume: where it is on the host, and whether it is always read-only.
#[derive(Debug, Clone)]
pub(crate) struct HostVolume {
    pub(crate) path: PathBuf,
    pub(crate) read_only: bool,
    /// emptyDir and hostPath: a `subPath` that does not exist is created inside it.
    pub(crate) writable_dir: bool,
}

pub(crate) fn pod_volumes_dir(root_dir: &Path, uid: &str) -> PathBuf {
    root_dir.join("pods").join(uid).join("volumes")
}

fn is_mountpoint(path: &Path) -> bool {
    let target = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}
/// A relative path without `..` (for `subPath` and downwardAPI item paths).
fn check_relative(volume: &str, field: &str, p: &str) -> Result<(), VolumeError> {
    let path = Path::new(p);
    if path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(invalid(
            volume,
            format!("{field} {p:?} must be a relative path without '..'"),
        ));
    }
    Ok(())
}

/// Rewrites the pod's API data volumes whose objects changed (a running pod's configMap,
/// secret or token updates reach its containers this way). Errors are logged, not fatal.
pub(crate) fn refresh(root_dir: &Path, pod: &Pod, inp: &VolumeInputs) {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let root = pod_volumes_dir(root_dir, uid);
    if !root.exists() {
        return;
    }
    let fs_group = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.fs_group);
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        if v.config_map.is_none()
            && v.secret.is_none()
            && v.projected.is_none()
            && v.downward_api.is_none()
        {
            continue;
        }
        if let Err(e) = api_volume(&root, pod, v, inp, fs_group) {
            tracing::warn!(pod = %crate::pod_util::full_name(pod), volume = %v.name, error = %e, "cannot update volume");
        }
    }
}

/// Prepares every volume of the pod (idempotent: called on each container start).
pub(crate) fn prepare(
    root_dir: &Path,
    pod: &Pod,
    inp: &VolumeInputs,
) -> Result<HashMap<String, HostVolume>, VolumeError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let root = pod_volumes_dir(root_dir, uid);
    let fs_group = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.fs_group);
    let mut out = HashMap::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let hv = if v.empty_dir.is_some() {
            empty_dir(&root, v, fs_group)?
        } else if v.host_path.is_some() {
            host_path(v)?
        } else if let Some(hv) = api_volume(&root, pod, v, inp, fs_group)? {
            hv
        } else {
            return Err(invalid(
                &v.name,
                "unsupported volume type (emptyDir, hostPath, downwardAPI, configMap, secret and projected are supported)",
            ));
        };
        out.insert(v.name.clone(), hv);
    }
    Ok(out)
}

/// Unmounts the pod's `subPath` mounts and memory-backed volumes (before its directory is
/// removed). False when a `subPath` mount stays: the directory must then stay too.
pub(crate) fn teardown(root_dir: &Path, uid: &str) -> bool {
    let sub_paths_gone = subpath::unmount_all(root_dir, uid);
    for plugin in TMPFS_PLUGINS {
        let dir = pod_volumes_dir(root_dir, uid).join(plugin);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if is_mountpoint(&p) {
                if let Err(err) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                    tracing::warn!(path = %p.display(), error = %err, "cannot unmount volume");
                }
            }
        }
    }
    sub_paths_gone
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;
    use nodus_proto::runtime::v1 as cri;
    use std::os::unix::fs::PermissionsExt;

    fn mount_with_sub_path(
        volume: &HostVolume,
        sub: &str,
        sub_paths: &Path,
    ) -> Result<Vec<cri::Mount>, VolumeError> {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "volumeMounts": [{"name": "v", "mountPath": "/data", "subPath": sub}],
        }))
        .unwrap();
        let volumes = HashMap::from([("v".to_string(), volume.clone())]);
        container_mounts(&container, &volumes, sub_paths, &[])
    }

    #[test]
    fn missing_host_path_sub_path_is_made_with_the_volume_mode() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("host");
        std::fs::create_dir(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o751)).unwrap();
        let v = HostVolume {
            path: base.clone(),
            read_only: false,
            writable_dir: true,
        };
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: the subPath bind mount needs root");
            return;
        }
        let subs = dir.path().join("volume-subpaths");
        let mounts = mount_with_sub_path(&v, "a/b", &subs).unwrap();
        let made = base.join("a/b");
        // The runtime gets the kubelet's bind mount of the made directory.
        let target = subs.join("v/c/0");
        std::fs::write(made.join("seen"), "yes").unwrap();
        let seen = std::fs::read_to_string(target.join("seen"));
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
        assert_eq!(mounts[0].host_path, target.display().to_string());
        assert_eq!(seen.unwrap(), "yes");
        for d in [base.join("a"), made] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o751, "{}", d.display());
        }
    }

    #[test]
    fn sub_path_is_not_made_through_a_symlink_out_of_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let (base, outside) = (dir.path().join("vol"), dir.path().join("outside"));
        std::fs::create_dir(&base).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, base.join("link")).unwrap();
        let v = HostVolume {
            path: base,
            read_only: false,
            writable_dir: true,
        };
        let e = mount_with_sub_path(&v, "link/new", &dir.path().join("subs"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("link/new") && e.contains("outside"), "{e}");
        assert!(
            !outside.join("new").exists(),
            "nothing made outside the volume"
        );
    }

    #[test]
    fn sub_path_expr_is_expanded_with_the_container_env_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("vol");
        std::fs::create_dir(&base).unwrap();
        let v = HostVolume {
            path: base.clone(),
            read_only: false,
            writable_dir: true,
        };
        let container = |expr: &str| -> Container {
            serde_json::from_value(serde_json::json!({
                "name": "c",
                "volumeMounts": [{"name": "v", "mountPath": "/data", "subPathExpr": expr}],
            }))
            .unwrap()
        };
        let volumes = HashMap::from([("v".to_string(), v)]);
        let subs = dir.path().join("subs");
        // A variable whose value climbs out is refused after the expansion.
        let env = [("POD".to_string(), "../outside".to_string())];
        let e = container_mounts(&container("$(POD)"), &volumes, &subs, &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("subPathExpr") && e.contains("../outside"), "{e}");
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: the subPath bind mount needs root");
            return;
        }
        let env = [("POD".to_string(), "web-1".to_string())];
        let mounts = container_mounts(&container("logs/$(POD)"), &volumes, &subs, &env).unwrap();
        let target = subs.join("v/c/0");
        let made = base.join("logs/web-1");
        assert!(made.is_dir());
        std::fs::write(made.join("seen"), "yes").unwrap();
        let seen = std::fs::read_to_string(target.join("seen"));
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
        assert_eq!(mounts[0].host_path, target.display().to_string());
        assert_eq!(seen.unwrap(), "yes");
    }

    #[test]
    fn missing_sub_path_of_a_read_only_volume_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let v = HostVolume {
            path: dir.path().to_path_buf(),
            read_only: true,
            writable_dir: false,
        };
        let e = mount_with_sub_path(&v, "nope", &dir.path().join("subs"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"nope\"") && e.contains("does not exist"),
            "{e}"
        );
        assert!(!dir.path().join("nope").exists());
    }
}
