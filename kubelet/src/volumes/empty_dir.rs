//! `emptyDir` volumes: a directory under the pod's, or a tmpfs for `medium: Memory`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use k8s_openapi::api::core::v1::Volume;

use crate::resources::parse_milli;

#[allow(unused_imports)]
use super::*;

pub(super) fn empty_dir(
    root: &Path,
    v: &Volume,
    fs_group: Option<i64>,
) -> Result<HostVolume, VolumeError> {
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

pub(super) fn mount_tmpfs(volume: &str, dir: &Path, size: Option<i128>) -> Result<(), VolumeError> {
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
