//! Pod volumes under `<root-dir>/pods/<uid>/volumes/<plugin>/<name>` as upstream:
//! `emptyDir` (`kubernetes.io~empty-dir`, a directory, or a tmpfs of `sizeLimit` for
//! `medium: Memory`), `hostPath` with its `type` checks, and `downwardAPI`
//! (`kubernetes.io~downward-api`, files written from field and resource references).
//! Containers get CRI mounts with `subPath` and `readOnly` honoured; [`teardown`] unmounts
//! the tmpfs volumes and removes the directories with the pod.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use nodus_proto::runtime::v1 as cri;

use crate::envvars::{field_ref_value, resource_field_value, RuntimeFields};
use crate::resources::{parse_milli, NodeAllocatable};

pub const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
pub const DOWNWARD_API: &str = "kubernetes.io~downward-api";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume:?}: {message}")]
    Invalid { volume: String, message: String },
    #[error("volume {volume:?}: {path}: {source}")]
    Io {
        volume: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(volume: &str, message: impl Into<String>) -> VolumeError {
    VolumeError::Invalid {
        volume: volume.to_string(),
        message: message.into(),
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
pub struct HostVolume {
    pub path: PathBuf,
    pub read_only: bool,
    /// emptyDir: sub-paths may be created inside it.
    pub writable_dir: bool,
}

pub fn pod_volumes_dir(root_dir: &Path, uid: &str) -> PathBuf {
    root_dir.join("pods").join(uid).join("volumes")
}

fn is_mountpoint(path: &Path) -> bool {
    let target = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

fn empty_dir(root: &Path, v: &Volume, fs_group: Option<i64>) -> Result<HostVolume, VolumeError> {
    let ed = v.empty_dir.as_ref().expect("emptyDir");
    let dir = root.join(EMPTY_DIR).join(&v.name);
    std::fs::create_dir_all(&dir).map_err(io(&v.name, &dir))?;
    let medium = ed.medium.as_deref().unwrap_or("");
    match medium {
        "" => {}
        "Memory" => {
            if !is_mountpoint(&dir) {
                let mut opts = String::from("mode=0777");
                if let Some(q) = &ed.size_limit {
                    let bytes = parse_milli(&q.0)
                        .map_err(|e| invalid(&v.name, format!("emptyDir.sizeLimit: {e}")))?
                        / 1000;
                    if bytes <= 0 {
                        return Err(invalid(
                            &v.name,
                            format!("emptyDir.sizeLimit {:?} must be positive", q.0),
                        ));
                    }
                    opts.push_str(&format!(",size={bytes}"));
                }
                nix::mount::mount(
                    Some("tmpfs"),
                    &dir,
                    Some("tmpfs"),
                    nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                    Some(opts.as_str()),
                )
                .map_err(|e| io(&v.name, &dir)(std::io::Error::from(e)))?;
            }
        }
        other => {
            return Err(invalid(
                &v.name,
                format!("emptyDir.medium {other:?} is not supported (\"\" or \"Memory\")"),
            ))
        }
    }
    // Upstream makes emptyDir world-writable; with fsGroup it belongs to that group (setgid).
    let mut mode = 0o777;
    if let Some(g) = fs_group {
        std::os::unix::fs::chown(&dir, None, Some(g as u32)).map_err(io(&v.name, &dir))?;
        mode |= 0o2000;
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
        .map_err(io(&v.name, &dir))?;
    Ok(HostVolume {
        path: dir,
        read_only: false,
        writable_dir: true,
    })
}

fn host_path(v: &Volume) -> Result<HostVolume, VolumeError> {
    let hp = v.host_path.as_ref().expect("hostPath");
    let path = PathBuf::from(&hp.path);
    if !path.is_absolute() {
        return Err(invalid(
            &v.name,
            format!("hostPath.path {:?} must be absolute", hp.path),
        ));
    }
    let ty = hp.type_.as_deref().unwrap_or("");
    let meta = std::fs::metadata(&path);
    let want = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(invalid(
                &v.name,
                format!("hostPath type check failed: {} is not a {what}", hp.path),
            ))
        }
    };
    match ty {
        "" => {}
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(&path).map_err(io(&v.name, &path))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .map_err(io(&v.name, &path))?;
            } else {
                want(path.is_dir(), "directory")?;
            }
        }
        "FileOrCreate" => {
            if meta.is_err() {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io(&v.name, &path))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                    .map_err(io(&v.name, &path))?;
            } else {
                want(path.is_file(), "file")?;
            }
        }
        "Directory" => want(meta.as_ref().is_ok_and(|m| m.is_dir()), "directory")?,
        "File" => want(meta.as_ref().is_ok_and(|m| m.is_file()), "file")?,
        "Socket" => want(
            meta.as_ref().is_ok_and(|m| m.file_type().is_socket()),
            "socket",
        )?,
        "CharDevice" => want(
            meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()),
            "character device",
        )?,
        "BlockDevice" => want(
            meta.as_ref().is_ok_and(|m| m.file_type().is_block_device()),
            "block device",
        )?,
        other => {
            return Err(invalid(
                &v.name,
                format!("hostPath.type {other:?} is not a known type"),
            ))
        }
    }
    Ok(HostVolume {
        path,
        read_only: false,
        writable_dir: false,
    })
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

fn downward_api(
    root: &Path,
    pod: &Pod,
    v: &Volume,
    rt: &RuntimeFields,
    node: &NodeAllocatable,
) -> Result<HostVolume, VolumeError> {
    let d = v.downward_api.as_ref().expect("downwardAPI");
    let dir = root.join(DOWNWARD_API).join(&v.name);
    std::fs::create_dir_all(&dir).map_err(io(&v.name, &dir))?;
    let default_mode = d.default_mode.unwrap_or(0o644) as u32;
    for item in d.items.iter().flatten() {
        check_relative(&v.name, "items.path", &item.path)?;
        let value = if let Some(f) = &item.field_ref {
            field_ref_value(pod, f, rt).map_err(|m| invalid(&v.name, m))?
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or("");
            let c = crate::kuberuntime::actions::app_containers(pod)
                .iter()
                .chain(crate::kuberuntime::actions::init_containers(pod))
                .find(|c| c.name == name)
                .ok_or_else(|| {
                    invalid(
                        &v.name,
                        format!(
                            "resourceFieldRef.containerName {name:?} is not a container of the pod"
                        ),
                    )
                })?;
            resource_field_value(c, r, node).map_err(|m| invalid(&v.name, m))?
        } else {
            return Err(invalid(
                &v.name,
                format!("item {:?} has no fieldRef or resourceFieldRef", item.path),
            ));
        };
        let file = dir.join(&item.path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(io(&v.name, parent))?;
        }
        // Write then rename, so a reader never sees half a value.
        let tmp = file.with_extension("nodus-tmp");
        std::fs::write(&tmp, value).map_err(io(&v.name, &tmp))?;
        let mode = item.mode.map(|m| m as u32).unwrap_or(default_mode);
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .map_err(io(&v.name, &tmp))?;
        std::fs::rename(&tmp, &file).map_err(io(&v.name, &file))?;
    }
    Ok(HostVolume {
        path: dir,
        read_only: true,
        writable_dir: false,
    })
}

/// Prepares every volume of the pod (idempotent: called on each container start).
pub fn prepare(
    root_dir: &Path,
    pod: &Pod,
    rt: &RuntimeFields,
    node: &NodeAllocatable,
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
        } else if v.downward_api.is_some() {
            downward_api(&root, pod, v, rt, node)?
        } else {
            return Err(invalid(
                &v.name,
                "unsupported volume type (emptyDir, hostPath and downwardAPI are supported)",
            ));
        };
        out.insert(v.name.clone(), hv);
    }
    Ok(out)
}

/// The CRI mounts of `container`'s `volumeMounts`.
pub fn container_mounts(
    container: &Container,
    volumes: &HashMap<String, HostVolume>,
) -> Result<Vec<cri::Mount>, VolumeError> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let v = volumes.get(&m.name).ok_or_else(|| {
            invalid(
                &m.name,
                format!(
                    "container {:?} mounts a volume the pod does not define",
                    container.name
                ),
            )
        })?;
        let mut host = v.path.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            check_relative(&m.name, "subPath", sub)?;
            host = host.join(sub);
            if !host.exists() {
                if v.writable_dir {
                    std::fs::create_dir_all(&host).map_err(io(&m.name, &host))?;
                    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o777))
                        .map_err(io(&m.name, &host))?;
                } else {
                    return Err(invalid(&m.name, format!("subPath {sub:?} does not exist")));
                }
            }
            // A symlink must not lead out of the volume.
            let real = host.canonicalize().map_err(io(&m.name, &host))?;
            let base = v.path.canonicalize().map_err(io(&m.name, &v.path))?;
            if !real.starts_with(&base) {
                return Err(invalid(
                    &m.name,
                    format!("subPath {sub:?} leads outside the volume"),
                ));
            }
            host = real;
        }
        out.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: v.read_only || m.read_only.unwrap_or(false),
            propagation: match m.mount_propagation.as_deref() {
                Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer as i32,
                Some("Bidirectional") => cri::MountPropagation::PropagationBidirectional as i32,
                _ => cri::MountPropagation::PropagationPrivate as i32,
            },
            ..Default::default()
        });
    }
    Ok(out)
}

/// Unmounts the pod's memory-backed volumes (before its directory is removed).
pub fn teardown(root_dir: &Path, uid: &str) {
    let dir = pod_volumes_dir(root_dir, uid).join(EMPTY_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if is_mountpoint(&p) {
            if let Err(err) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(path = %p.display(), error = %err, "cannot unmount emptyDir");
            }
        }
    }
}
