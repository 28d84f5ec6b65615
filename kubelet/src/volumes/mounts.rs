//! A container's CRI mounts from its `volumeMounts`, with `subPath` made safely.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use k8s_openapi::api::core::v1::Container;
use nodus_proto::runtime::v1 as cri;

#[allow(unused_imports)]
use super::*;

/// The CRI mounts of `container`'s `volumeMounts`. A `subPath` (or a `subPathExpr`,
/// expanded with the container's `env` as upstream does) is bind-mounted below `sub_paths`
/// (the pod's `volume-subpaths` directory) and the runtime gets that mount.
pub(crate) fn container_mounts(
    container: &Container,
    volumes: &HashMap<String, HostVolume>,
    sub_paths: &Path,
    env: &[(String, String)],
) -> Result<Vec<cri::Mount>, VolumeError> {
    let mut out = Vec::new();
    for (index, m) in container.volume_mounts.iter().flatten().enumerate() {
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
        let nonempty = |s: &&str| !s.is_empty();
        let sub = match (
            m.sub_path.as_deref().filter(nonempty),
            m.sub_path_expr.as_deref().filter(nonempty),
        ) {
            (Some(sub), _) => Some(("subPath", sub.to_string())),
            (None, Some(expr)) => {
                let lookup = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                Some(("subPathExpr", crate::envvars::expand(expr, &lookup)))
            }
            (None, None) => None,
        };
        if let Some((field, sub)) = &sub {
            let sub = sub.as_str();
            check_relative(&m.name, field, sub)?;
            let base = v.path.canonicalize().map_err(io(&m.name, &v.path))?;
            host = base.join(sub);
            if !host.exists() {
                if v.writable_dir {
                    make_sub_path(&m.name, sub, &base, &host)?;
                } else {
                    return Err(invalid(&m.name, format!("subPath {sub:?} does not exist")));
                }
            }
            // A symlink must not lead out of the volume.
            let real = host.canonicalize().map_err(io(&m.name, &host))?;
            if !real.starts_with(&base) {
                return Err(invalid(
                    &m.name,
                    format!("subPath {sub:?} leads outside the volume"),
                ));
            }
            let target = sub_paths
                .join(&m.name)
                .join(&container.name)
                .join(index.to_string());
            host = subpath::bind(&m.name, sub, &base, &real, &target)?;
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
/// `base` is the volume's resolved path.
pub(super) fn make_sub_path(
    volume: &str,
    sub: &str,
    base: &Path,
    host: &Path,
) -> Result<(), VolumeError> {
    let mut existing = host;
    let mut missing = Vec::new();
    while !existing.exists() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            break;
        };
        missing.push(name);
        existing = parent;
    }
    missing.reverse();
    let real = existing.canonicalize().map_err(io(volume, existing))?;
    if !real.starts_with(base) {
        return Err(invalid(
            volume,
            format!("subPath {sub:?} leads outside the volume"),
        ));
    }
    let mode = std::fs::metadata(base)
        .map_err(io(volume, base))?
        .permissions()
        .mode()
        & 0o7777;
    subpath::make_dir(
        volume,
        sub,
        base,
        &real,
        &missing,
        nix::sys::stat::Mode::from_bits_truncate(mode),
    )
}
