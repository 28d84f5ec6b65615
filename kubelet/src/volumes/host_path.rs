//! `hostPath` volumes with upstream's `type` checks.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Volume;

#[allow(unused_imports)]
use super::*;

pub(super) fn host_path(v: &Volume) -> Result<HostVolume, VolumeError> {
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
