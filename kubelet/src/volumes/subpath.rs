//! `subPath` mounts that a container cannot redirect (the CVE-2017-1002101 class).
//!
//! Checking a path and then handing the path to the runtime leaves a window: a container
//! sharing the volume can swap a directory for a symlink to `/` between the check and
//! containerd's bind mount. As upstream's `pkg/volume/util/subpath`, the kubelet instead
//! opens the path one component at a time with `O_NOFOLLOW` below the volume, and
//! bind-mounts the opened file (`/proc/self/fd/N`) at
//! `<root-dir>/pods/<uid>/volume-subpaths/<volume>/<container>/<index>`; the runtime is
//! given that mount. Whatever is swapped afterwards, the mount holds what was checked.
//! [`make_dir`] creates a missing `subPath` the same way (`mkdirat` below an opened
//! parent), and [`unmount_all`] removes the mounts with the pod.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode, SFlag};

use super::{invalid, io, VolumeError};

/// `<root-dir>/pods/<uid>/volume-subpaths`.
pub(crate) fn sub_paths_dir(root_dir: &Path, uid: &str) -> PathBuf {
    root_dir.join("pods").join(uid).join("volume-subpaths")
}

/// Opens `rel` (no `..`, no symlink in any component) below the directory `base`.
fn open_beneath(volume: &str, sub: &str, base: &Path, rel: &Path) -> Result<OwnedFd, VolumeError> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut fd = open(base, flags | OFlag::O_DIRECTORY, Mode::empty())
        .map_err(|e| io(volume, base)(e.into()))?;
    let mut at = base.to_path_buf();
    for c in rel.components() {
        let Component::Normal(name) = c else {
            continue;
        };
        at.push(name);
        fd = openat(&fd, name, flags, Mode::empty()).map_err(|e| io(volume, &at)(e.into()))?;
        let st = fstat(&fd).map_err(|e| io(volume, &at)(e.into()))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
            return Err(invalid(
                volume,
                format!(
                    "subPath {sub:?}: {} became a symlink while it was mounted",
                    at.display()
                ),
            ));
        }
    }
    Ok(fd)
}

/// Creates the missing directories of `sub` below `base` (its nearest existing ancestor
/// already checked to lie inside) with `mode`, whatever the umask. Each step is a
/// `mkdirat` in a parent opened without following symlinks, so a symlink swapped in cannot
/// make it create outside the volume.
pub(super) fn make_dir(
    volume: &str,
    sub: &str,
    base: &Path,
    existing: &Path,
    missing: &[&OsStr],
    mode: Mode,
) -> Result<(), VolumeError> {
    let rel = existing.strip_prefix(base).unwrap_or(Path::new(""));
    let mut parent = open_beneath(volume, sub, base, rel)?;
    let mut at = existing.to_path_buf();
    for name in missing {
        at.push(name);
        match mkdirat(&parent, *name, mode) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io(volume, &at)(e.into())),
        }
        let dir = openat(
            &parent,
            *name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(volume, &at)(e.into()))?;
        fchmod(&dir, mode).map_err(|e| io(volume, &at)(e.into()))?;
        parent = dir;
    }
    Ok(())
}

/// Bind-mounts `real` (a path inside `base`, both resolved) at `target`, through a file
/// descriptor opened beneath `base`. Returns `target`, the path to give the runtime.
pub(super) fn bind(
    volume: &str,
    sub: &str,
    base: &Path,
    real: &Path,
    target: &Path,
) -> Result<PathBuf, VolumeError> {
    let rel = real
        .strip_prefix(base)
        .map_err(|_| invalid(volume, format!("subPath {sub:?} leads outside the volume")))?;
    let fd = open_beneath(volume, sub, base, rel)?;
    mount_fd(volume, &fd, real, target)?;
    Ok(target.to_path_buf())
}

/// Bind-mounts the file `fd` (opened from `real`) at `target`, made as a file or a
/// directory to match; a mount already there (a container started again) is replaced.
fn mount_fd(volume: &str, fd: &OwnedFd, real: &Path, target: &Path) -> Result<(), VolumeError> {
    let is_dir = fstat(fd)
        .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
        .map_err(|e| io(volume, real)(e.into()))?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io(volume, parent))?;
    }
    // A container started again gets a fresh mount of what is there now.
    unmount(target).map_err(|e| io(volume, target)(e.into()))?;
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() == is_dir => {}
        Ok(m) => {
            let removed = if m.is_dir() {
                std::fs::remove_dir(target)
            } else {
                std::fs::remove_file(target)
            };
            removed.map_err(io(volume, target))?;
            make_target(volume, target, is_dir)?;
        }
        Err(_) => make_target(volume, target, is_dir)?,
    }
    let source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()));
    nix::mount::mount(
        Some(&source),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| io(volume, target)(e.into()))
}

fn make_target(volume: &str, target: &Path, is_dir: bool) -> Result<(), VolumeError> {
    let made = if is_dir {
        std::fs::create_dir(target)
    } else {
        std::fs::write(target, b"")
    };
    made.map_err(io(volume, target))
}

/// Unmounts every `subPath` mount of the pod and removes what the mounts were made on,
/// one entry at a time (`remove_dir` and `remove_file` refuse a busy mount point, where a
/// recursive removal would reach through it into the volume's source). False when
/// something stays: the pod's directory must then not be removed.
pub(crate) fn unmount_all(root_dir: &Path, uid: &str) -> bool {
    let dir = sub_paths_dir(root_dir, uid);
    if !dir.exists() {
        return true;
    }
    let mut ok = true;
    let mut warn = |path: &Path, what: &str, e: &dyn std::fmt::Display| {
        tracing::warn!(path = %path.display(), error = %e, "{what}");
        ok = false;
    };
    for volume in read_dir(&dir) {
        for container in read_dir(&volume) {
            for target in read_dir(&container) {
                if let Err(e) = unmount(&target) {
                    warn(&target, "cannot unmount subPath", &e);
                    continue;
                }
                let removed = if target.is_dir() {
                    std::fs::remove_dir(&target)
                } else {
                    std::fs::remove_file(&target)
                };
                if let Err(e) = removed {
                    warn(&target, "cannot remove subPath mount point", &e);
                }
            }
            if let Err(e) = std::fs::remove_dir(&container) {
                warn(&container, "cannot remove subPath mount point", &e);
            }
        }
        if let Err(e) = std::fs::remove_dir(&volume) {
            warn(&volume, "cannot remove subPath mount point", &e);
        }
    }
    if let Err(e) = std::fs::remove_dir(&dir) {
        warn(&dir, "cannot remove subPath mount point", &e);
    }
    ok
}

/// Unmounts everything stacked at `target` (nothing when nothing is). umount2 answers
/// EINVAL for a path that is not a mount point: that ends it, whatever mountinfo spells
/// (a root dir given through a symlink, spaces written as `\040`).
fn unmount(target: &Path) -> nix::Result<()> {
    loop {
        match nix::mount::umount2(
            target,
            nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
        ) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mounting needs root (CI runs the suite as root); elsewhere these tests say so.
    fn root() -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            eprintln!("skipped: bind mounts need root");
        }
        root
    }

    /// `<tmp>/vol/dir/marker` = "inside", `<tmp>/outside/marker` = "outside".
    fn layout() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let (vol, outside) = (tmp.path().join("vol"), tmp.path().join("outside"));
        std::fs::create_dir_all(vol.join("dir")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(vol.join("dir/marker"), "inside").unwrap();
        std::fs::write(outside.join("marker"), "outside").unwrap();
        (tmp, vol, outside)
    }

    /// Replaces `vol/dir` by a symlink to `outside`, as a container sharing the volume could.
    fn swap(vol: &Path, outside: &Path) {
        std::fs::rename(vol.join("dir"), vol.join("dir.old")).unwrap();
        std::os::unix::fs::symlink(outside, vol.join("dir")).unwrap();
    }

    fn unmount(target: &Path) {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
    }

    #[test]
    fn a_swap_after_the_open_does_not_redirect_the_mount() {
        if !root() {
            return;
        }
        let (tmp, vol, outside) = layout();
        let fd = open_beneath("v", "dir", &vol, Path::new("dir")).unwrap();
        swap(&vol, &outside);
        let target = tmp.path().join("target");
        mount_fd("v", &fd, &vol.join("dir"), &target).unwrap();
        let seen = std::fs::read_to_string(target.join("marker"));
        unmount(&target);
        assert_eq!(seen.unwrap(), "inside");
    }

    #[test]
    fn a_swap_after_the_check_is_refused_and_mounts_nothing() {
        if !root() {
            return;
        }
        let (tmp, vol, outside) = layout();
        // Checked (resolved inside the volume), then swapped before the mount.
        let real = vol.join("dir").canonicalize().unwrap();
        swap(&vol, &outside);
        let target = tmp.path().join("subpaths/v/c/0");
        let e = bind("v", "dir", &vol, &real, &target)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"dir\"") && e.contains("became a symlink"),
            "{e}"
        );
        assert!(!super::super::is_mountpoint(&target));
    }

    #[test]
    fn a_symlink_in_any_component_is_refused() {
        let (_tmp, vol, outside) = layout();
        std::os::unix::fs::symlink(&outside, vol.join("link")).unwrap();
        for rel in ["link", "link/marker"] {
            assert!(
                open_beneath("v", rel, &vol, Path::new(rel)).is_err(),
                "{rel} opened through a symlink"
            );
        }
        assert!(open_beneath("v", "dir/marker", &vol, Path::new("dir/marker")).is_ok());
    }

    #[test]
    fn make_dir_does_not_create_through_a_swapped_symlink() {
        let (_tmp, vol, outside) = layout();
        // The caller found `vol` as the nearest existing ancestor; then `a` appeared as a
        // symlink out of the volume.
        std::os::unix::fs::symlink(&outside, vol.join("a")).unwrap();
        let missing = [OsStr::new("a"), OsStr::new("b")];
        let made = make_dir(
            "v",
            "a/b",
            &vol,
            &vol,
            &missing,
            Mode::from_bits_truncate(0o750),
        );
        assert!(made.is_err());
        assert!(!outside.join("b").exists(), "made outside the volume");
    }

    #[test]
    fn make_dir_gives_every_new_directory_the_mode() {
        let (_tmp, vol, _outside) = layout();
        let missing = [OsStr::new("a"), OsStr::new("b")];
        make_dir(
            "v",
            "a/b",
            &vol,
            &vol,
            &missing,
            Mode::from_bits_truncate(0o751),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        for d in [vol.join("a"), vol.join("a/b")] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o751, "{}", d.display());
        }
    }

    #[test]
    fn unmount_all_removes_the_mounts_and_keeps_the_source() {
        if !root() {
            return;
        }
        let (tmp, vol, _outside) = layout();
        let root_dir = tmp.path().join("kubelet");
        let real = vol.join("dir").canonicalize().unwrap();
        let subs = sub_paths_dir(&root_dir, "uid1");
        let dir_target = bind("v", "dir", &vol, &real, &subs.join("v/c/0")).unwrap();
        let file_target = bind(
            "v",
            "dir/marker",
            &vol,
            &real.join("marker"),
            &subs.join("v/c/1"),
        )
        .unwrap();
        // A second start of the container replaces its mount rather than stacking one.
        bind("v", "dir", &vol, &real, &dir_target).unwrap();
        let seen = std::fs::read_to_string(&file_target);
        let removed = unmount_all(&root_dir, "uid1");
        if !removed {
            unmount(&dir_target);
            unmount(&file_target);
        }
        assert_eq!(seen.unwrap(), "inside");
        assert!(removed);
        assert!(!subs.exists());
        assert_eq!(
            std::fs::read_to_string(vol.join("dir/marker")).unwrap(),
            "inside"
        );
    }
}
