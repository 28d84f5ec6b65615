//! The container's root filesystem: the mounts containerd hands to Create (an overlay of
//! the image layers with an upper and work dir, or a bind of a single snapshot) are mounted
//! at `<bundle>/rootfs`, and unmounted again on Delete.

use std::path::Path;

use anyhow::{bail, Context, Result};
use containerd_shim_protos::api::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nodus_runtime::rootfs::{parse_options, MountOptions};

/// Mounts `mounts` in order at `target` (created if missing). On error, what was mounted is
/// unmounted again.
pub(crate) fn mount_rootfs(mounts: &[Mount], target: &Path) -> Result<()> {
    if mounts.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(target).with_context(|| format!("create {}", target.display()))?;
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            if i > 0 {
                let _ = unmount_all(target);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    // The runtime library's parser: the same option names as config.json mounts.
    let MountOptions {
        flags,
        propagation,
        data,
    } = parse_options(&m.options);
    let fstype = if m.type_.is_empty() {
        "none"
    } else {
        m.type_.as_str()
    };
    if fstype == "bind" || fstype == "rbind" || flags.contains(MsFlags::MS_BIND) {
        // A bind mount ignores most flags on the first call: bind, then remount with them.
        let bind = flags & (MsFlags::MS_BIND | MsFlags::MS_REC) | MsFlags::MS_BIND;
        mount(
            Some(m.source.as_str()),
            target,
            None::<&str>,
            bind,
            None::<&str>,
        )
        .with_context(|| format!("bind {} at {}", m.source, target.display()))?;
        let rest = flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !rest.is_empty() {
            mount(
                None::<&str>,
                target,
                None::<&str>,
                rest | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                None::<&str>,
            )
            .with_context(|| format!("remount {} with {:?}", target.display(), m.options))?;
        }
    } else {
        if data.len() >= 4096 {
            bail!(
                "mount data of {} at {} is {} bytes, over the kernel's page limit",
                fstype,
                target.display(),
                data.len()
            );
        }
        let data = (!data.is_empty()).then_some(data.as_str());
        mount(Some(m.source.as_str()), target, Some(fstype), flags, data).with_context(|| {
            format!(
                "mount {} ({}) at {} with {:?}",
                m.source,
                fstype,
                target.display(),
                m.options
            )
        })?;
    }
    for p in propagation {
        mount(None::<&str>, target, None::<&str>, p, None::<&str>)
            .with_context(|| format!("set propagation {p:?} on {}", target.display()))?;
    }
    Ok(())
}

/// Unmounts every mount stacked at `target` (nothing to do when none is).
pub(crate) fn unmount_all(target: &Path) -> Result<()> {
    for _ in 0..32 {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                umount2(target, MntFlags::MNT_DETACH)
                    .with_context(|| format!("detach {}", target.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("unmount {}", target.display())),
        }
    }
    bail!("{} still mounted after 32 unmounts", target.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_go_to_data() {
        let opts: Vec<String> = [
            "index=off",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/l",
            "ro",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let o = parse_options(&opts);
        assert_eq!(o.flags, MsFlags::MS_RDONLY);
        assert!(o.propagation.is_empty());
        assert_eq!(o.data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l");
    }

    #[test]
    fn bind_flags() {
        let opts: Vec<String> = ["rbind", "ro", "rprivate"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = parse_options(&opts);
        assert!(o
            .flags
            .contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert_eq!(o.propagation, [MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        assert!(o.data.is_empty());
    }
}
