//! Pod volumes under `<root-dir>/pods/<uid>/volumes/<plugin>/<name>` as upstream:
//! `emptyDir` (`kubernetes.io~empty-dir`, a directory, or a tmpfs of `sizeLimit` for
//! `medium: Memory`), `hostPath` with its `type` checks, and the API data volumes written
//! through the [`atomic_writer`](crate::atomic_writer): `downwardAPI`
//! (`kubernetes.io~downward-api`), `configMap` (`kubernetes.io~configmap`), `secret`
//! (`kubernetes.io~secret`, on a tmpfs so secrets never reach the disk) and `projected`
//! (`kubernetes.io~projected`, a tmpfs: serviceAccountToken, configMap, secret and
//! downwardAPI sources). API data volumes are always mounted read-only and are rewritten
//! in place when their objects change ([`refresh`]). Containers get CRI mounts with
//! `subPath` and `readOnly` honoured; [`teardown`] unmounts the tmpfs volumes and removes
//! the directories with the pod.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use nodus_proto::runtime::v1 as cri;

use crate::atomic_writer::{self, FileProjection, Payload};
use crate::envvars::{field_ref_value, resource_field_value, RuntimeFields};
use crate::objects::{config_map_data, secret_data, service_account_name, PodObjects, TokenKey};
use crate::resources::{parse_milli, NodeAllocatable};

pub const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
pub const DOWNWARD_API: &str = "kubernetes.io~downward-api";
pub const CONFIG_MAP: &str = "kubernetes.io~configmap";
pub const SECRET: &str = "kubernetes.io~secret";
pub const PROJECTED: &str = "kubernetes.io~projected";

/// Plugins whose volumes are tmpfs mounts of the kubelet's.
const TMPFS_PLUGINS: [&str; 3] = [EMPTY_DIR, SECRET, PROJECTED];

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
    /// emptyDir and hostPath: a `subPath` that does not exist is created inside it.
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
        writable_dir: true,
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

/// Everything the API data volumes need besides the pod.
pub struct VolumeInputs<'a> {
    pub rt: &'a RuntimeFields,
    pub node: &'a NodeAllocatable,
    pub objects: &'a PodObjects,
}

fn file_mode(item_mode: Option<i32>, default_mode: Option<i32>) -> u32 {
    (item_mode.or(default_mode).unwrap_or(0o644) as u32) & 0o7777
}

/// Adds one projected file, refusing a path that is bad or already taken.
fn put(
    volume: &str,
    out: &mut Payload,
    path: &str,
    data: Vec<u8>,
    mode: u32,
) -> Result<(), VolumeError> {
    atomic_writer::check_path(path).map_err(|e| invalid(volume, format!("path {e}")))?;
    if out
        .insert(path.to_string(), FileProjection { data, mode })
        .is_some()
    {
        return Err(invalid(volume, format!("path {path:?} is projected twice")));
    }
    Ok(())
}

fn downward_items(
    volume: &str,
    pod: &Pod,
    items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    inp: &VolumeInputs,
    out: &mut Payload,
) -> Result<(), VolumeError> {
    for item in items {
        check_relative(volume, "items.path", &item.path)?;
        let value = if let Some(f) = &item.field_ref {
            field_ref_value(pod, f, inp.rt).map_err(|m| invalid(volume, m))?
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or("");
            let c = crate::kuberuntime::actions::app_containers(pod)
                .iter()
                .chain(crate::kuberuntime::actions::init_containers(pod))
                .find(|c| c.name == name)
                .ok_or_else(|| {
                    invalid(
                        volume,
                        format!(
                            "resourceFieldRef.containerName {name:?} is not a container of the pod"
                        ),
                    )
                })?;
            resource_field_value(c, r, inp.node).map_err(|m| invalid(volume, m))?
        } else {
            return Err(invalid(
                volume,
                format!("item {:?} has no fieldRef or resourceFieldRef", item.path),
            ));
        };
        put(
            volume,
            out,
            &item.path,
            value.into_bytes(),
            file_mode(item.mode, default_mode),
        )?;
    }
    Ok(())
}

/// The files of a configMap or secret: every key, or the listed `items` (a missing key is an
/// error unless `optional`).
#[allow(clippy::too_many_arguments)]
fn key_items(
    volume: &str,
    what: &str,
    data: Option<Vec<(String, Vec<u8>)>>,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    optional: bool,
    default_mode: Option<i32>,
    out: &mut Payload,
) -> Result<(), VolumeError> {
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(invalid(volume, format!("{what} not found")));
    };
    match items {
        None => {
            for (k, v) in data {
                put(volume, out, &k, v, file_mode(None, default_mode))?;
            }
        }
        Some(items) => {
            for it in items {
                match data.iter().find(|(k, _)| *k == it.key) {
                    Some((_, v)) => put(
                        volume,
                        out,
                        &it.path,
                        v.clone(),
                        file_mode(it.mode, default_mode),
                    )?,
                    None if optional => {}
                    None => {
                        return Err(invalid(
                            volume,
                            format!("configuration error: key {:?} not found in {what}", it.key),
                        ))
                    }
                }
            }
        }
    }
    Ok(())
}

/// The payload of an API data volume (downwardAPI, configMap, secret, projected).
fn api_payload(
    pod: &Pod,
    v: &Volume,
    inp: &VolumeInputs,
) -> Result<Option<(&'static str, Payload)>, VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = Payload::new();
    let plugin = if let Some(d) = &v.downward_api {
        downward_items(
            &v.name,
            pod,
            d.items.as_deref().unwrap_or(&[]),
            d.default_mode,
            inp,
            &mut out,
        )?;
        DOWNWARD_API
    } else if let Some(c) = &v.config_map {
        let cm = inp
            .objects
            .config_map(ns, &c.name)
            .map_err(|e| invalid(&v.name, e))?;
        key_items(
            &v.name,
            &format!("configmap {:?}", c.name),
            cm.map(config_map_data),
            c.items.as_ref(),
            c.optional.unwrap_or(false),
            c.default_mode,
            &mut out,
        )?;
        CONFIG_MAP
    } else if let Some(sv) = &v.secret {
        let name = sv.secret_name.as_deref().unwrap_or("");
        let sec = inp
            .objects
            .secret(ns, name)
            .map_err(|e| invalid(&v.name, e))?;
        key_items(
            &v.name,
            &format!("secret {name:?}"),
            sec.map(secret_data),
            sv.items.as_ref(),
            sv.optional.unwrap_or(false),
            sv.default_mode,
            &mut out,
        )?;
        SECRET
    } else if let Some(p) = &v.projected {
        for src in p.sources.iter().flatten() {
            if let Some(c) = &src.config_map {
                let cm = inp
                    .objects
                    .config_map(ns, &c.name)
                    .map_err(|e| invalid(&v.name, e))?;
                key_items(
                    &v.name,
                    &format!("configmap {:?}", c.name),
                    cm.map(config_map_data),
                    c.items.as_ref(),
                    c.optional.unwrap_or(false),
                    p.default_mode,
                    &mut out,
                )?;
            } else if let Some(sv) = &src.secret {
                let sec = inp
                    .objects
                    .secret(ns, &sv.name)
                    .map_err(|e| invalid(&v.name, e))?;
                key_items(
                    &v.name,
                    &format!("secret {:?}", sv.name),
                    sec.map(secret_data),
                    sv.items.as_ref(),
                    sv.optional.unwrap_or(false),
                    p.default_mode,
                    &mut out,
                )?;
            } else if let Some(d) = &src.downward_api {
                downward_items(
                    &v.name,
                    pod,
                    d.items.as_deref().unwrap_or(&[]),
                    p.default_mode,
                    inp,
                    &mut out,
                )?;
            } else if let Some(t) = &src.service_account_token {
                let key = TokenKey {
                    namespace: ns.to_string(),
                    service_account: service_account_name(pod),
                    audience: t.audience.clone().unwrap_or_default(),
                    expiration_seconds: t.expiration_seconds.unwrap_or(3600),
                };
                let token = inp.objects.token(&key).map_err(|e| invalid(&v.name, e))?;
                // As upstream, the token file takes the volume's defaultMode.
                put(
                    &v.name,
                    &mut out,
                    &t.path,
                    token.as_bytes().to_vec(),
                    file_mode(None, p.default_mode),
                )?;
            }
        }
        PROJECTED
    } else {
        return Ok(None);
    };
    Ok(Some((plugin, out)))
}

fn mount_tmpfs(volume: &str, dir: &Path, size: Option<i128>) -> Result<(), VolumeError> {
    if is_mountpoint(dir) {
        return Ok(());
    }
    let mut opts = String::from("mode=0755");
    if let Some(bytes) = size {
        opts.push_str(&format!(",size={bytes}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| io(volume, dir)(std::io::Error::from(e)))
}

/// Writes an API data volume (only when its content changed).
fn api_volume(
    root: &Path,
    pod: &Pod,
    v: &Volume,
    inp: &VolumeInputs,
    fs_group: Option<i64>,
) -> Result<Option<HostVolume>, VolumeError> {
    let Some((plugin, payload)) = api_payload(pod, v, inp)? else {
        return Ok(None);
    };
    let dir = root.join(plugin).join(&v.name);
    std::fs::create_dir_all(&dir).map_err(io(&v.name, &dir))?;
    if plugin == SECRET || plugin == PROJECTED {
        mount_tmpfs(&v.name, &dir, None)?;
    }
    let gid = if plugin == DOWNWARD_API {
        None
    } else {
        fs_group.map(|g| g as u32)
    };
    match atomic_writer::write(&dir, &payload, gid) {
        Ok(true) => {
            tracing::debug!(volume = %v.name, plugin, files = payload.len(), "volume written")
        }
        Ok(false) => {}
        Err(e) => return Err(io(&v.name, &dir)(e)),
    }
    Ok(Some(HostVolume {
        path: dir,
        read_only: true,
        writable_dir: false,
    }))
}

/// Rewrites the pod's API data volumes whose objects changed (a running pod's configMap,
/// secret or token updates reach its containers this way). Errors are logged, not fatal.
pub fn refresh(root_dir: &Path, pod: &Pod, inp: &VolumeInputs) {
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
            tracing::warn!(pod = %crate::pod_config::full_name(pod), volume = %v.name, error = %e, "cannot update volume");
        }
    }
}

/// Prepares every volume of the pod (idempotent: called on each container start).
pub fn prepare(
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
                    make_sub_path(&m.name, sub, &v.path, &host)?;
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

/// Creates a missing `subPath` directory as upstream does: with the mode of the volume's
/// own directory (what a user creating it by hand would get), and only when its nearest
/// existing ancestor lies inside the volume, so a symlink cannot make it create outside.
fn make_sub_path(volume: &str, sub: &str, base: &Path, host: &Path) -> Result<(), VolumeError> {
    let real_base = base.canonicalize().map_err(io(volume, base))?;
    let mut existing = host;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(base);
    }
    let real = existing.canonicalize().map_err(io(volume, existing))?;
    if !real.starts_with(&real_base) {
        return Err(invalid(
            volume,
            format!("subPath {sub:?} leads outside the volume"),
        ));
    }
    let mode = std::fs::metadata(&real_base)
        .map_err(io(volume, base))?
        .permissions()
        .mode()
        & 0o7777;
    std::fs::create_dir_all(host).map_err(io(volume, host))?;
    // Every directory made here gets the volume's mode, whatever the umask.
    let mut dir = host;
    while dir != existing {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(io(volume, dir))?;
        dir = dir.parent().unwrap_or(existing);
    }
    Ok(())
}

/// Unmounts the pod's memory-backed volumes (before its directory is removed).
pub fn teardown(root_dir: &Path, uid: &str) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_with_sub_path(volume: &HostVolume, sub: &str) -> Result<Vec<cri::Mount>, VolumeError> {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "volumeMounts": [{"name": "v", "mountPath": "/data", "subPath": sub}],
        }))
        .unwrap();
        let volumes = HashMap::from([("v".to_string(), volume.clone())]);
        container_mounts(&container, &volumes)
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
        let mounts = mount_with_sub_path(&v, "a/b").unwrap();
        let made = base.join("a/b");
        assert_eq!(
            mounts[0].host_path,
            made.canonicalize().unwrap().display().to_string()
        );
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
        let e = mount_with_sub_path(&v, "link/new").unwrap_err().to_string();
        assert!(e.contains("link/new") && e.contains("outside"), "{e}");
        assert!(
            !outside.join("new").exists(),
            "nothing made outside the volume"
        );
    }

    #[test]
    fn missing_sub_path_of_a_read_only_volume_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let v = HostVolume {
            path: dir.path().to_path_buf(),
            read_only: true,
            writable_dir: false,
        };
        let e = mount_with_sub_path(&v, "nope").unwrap_err().to_string();
        assert!(
            e.contains("\"nope\"") && e.contains("does not exist"),
            "{e}"
        );
        assert!(!dir.path().join("nope").exists());
    }
}
