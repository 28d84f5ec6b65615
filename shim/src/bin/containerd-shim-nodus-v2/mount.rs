//! The container's root filesystem: the mounts containerd hands to Create (an overlay of
//! the image layers with an upper and work dir, or a bind of a single snapshot) are mounted
//! at `<bundle>/rootfs`, and unmounted again on Delete.

use std::path::Path;

use anyhow::{bail, Context, Result};
use containerd_shim_protos::api::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Splits mount(8)-style options into flags and the data string for the filesystem.
pub fn parse_options(options: &[String]) -> (MsFlags, bool, String) {
    let mut flags = MsFlags::empty();
    let mut propagation_private = false;
    let mut data = Vec::new();
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "private" | "rprivate" => {
                propagation_private = true;
                (MsFlags::empty(), MsFlags::empty())
            }
            _ => {
                data.push(opt.as_str());
                (MsFlags::empty(), MsFlags::empty())
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    (flags, propagation_private, data.join(","))
}

/// Mounts `mounts` in order at `target` (created if missing). On error, what was mounted is
/// unmounted again.
pub fn mount_rootfs(mounts: &[Mount], target: &Path) -> Result<()> {
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
    let (flags, private, data) = parse_options(&m.options);
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
    if private {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .with_context(|| format!("make {} private", target.display()))?;
    }
    Ok(())
}

/// Unmounts every mount stacked at `target` (nothing to do when none is).
pub fn unmount_all(target: &Path) -> Result<()> {
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
        let (flags, private, data) = parse_options(&opts);
        assert_eq!(flags, MsFlags::MS_RDONLY);
        assert!(!private);
        assert_eq!(data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l");
    }

    #[test]
    fn bind_flags() {
        let opts: Vec<String> = ["rbind", "ro", "rprivate"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, private, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert!(private);
        assert!(data.is_empty());
    }
}
