//! A container's CRI mounts from its `volumeMounts`, with `subPath` made safely.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use k8s_openapi::api::core::v1::Container;
use nodus_proto::runtime::v1 as cri;

#[allow(unused_imports)]
use super::*;

/// The CRI mounts of `container`'s `volumeMounts`.
pub(crate) fn container_mounts(
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
pub(super) fn make_sub_path(
    volume: &str,
    sub: &str,
    base: &Path,
    host: &Path,
) -> Result<(), VolumeError> {
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
