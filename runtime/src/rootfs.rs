//! The container's root filesystem: mounts, devices, pivot_root, masked and read-only
//! paths. Runs in the container's init, inside its new mount namespace.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, chroot, fchdir, pivot_root};
use oci_spec::runtime::{LinuxDeviceType, Mount, Spec};

use crate::error::{Context, Error, Result};

/// Propagation flags by name (also used for `linux.rootfsPropagation`).
pub fn propagation_flag(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Parsed mount options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for mount(2).
    pub flags: MsFlags,
    /// Propagation changes applied after mounting.
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific data (`mode=755,size=...`).
    pub data: String,
}

/// Split OCI mount options into flags, propagation and data, as runc does.
pub fn parse_options(opts: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        propagation: vec![],
        data: String::new(),
    };
    let mut data = vec![];
    for opt in opts {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "tmpcopyup" | "defaults" => continue,
            other => {
                if let Some(p) = propagation_flag(other) {
                    o.propagation.push(p);
                } else {
                    data.push(other.to_string());
                }
                continue;
            }
        };
        o.flags |= set;
        o.flags &= !clear;
    }
    o.data = data.join(",");
    o
}

/// Resolve `path` inside `root`, following symlinks as if `root` were `/`, so a
/// malicious image cannot point a mount outside its rootfs.
pub fn secure_join(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut queue: VecDeque<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut cur = PathBuf::new();
    let mut links = 0;
    while let Some(part) = queue.pop_front() {
        if part == ".." {
            cur.pop();
            continue;
        }
        let cand = cur.join(&part);
        let full = root.join(&cand);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(Error::Other(format!(
                        "too many symlinks resolving {} in {}",
                        path.display(),
                        root.display()
                    )));
                }
                let target = fs::read_link(&full).ctx(|| format!("readlink {}", full.display()))?;
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => queue.push_front(n.to_os_string()),
                        Component::ParentDir => queue.push_front("..".into()),
                        _ => {}
                    }
                }
            }
            _ => cur = cand,
        }
    }
    Ok(root.join(cur))
}

fn nix_ctx<T>(r: nix::Result<T>, what: impl FnOnce() -> String) -> Result<T> {
    r.ctx(what)
}

/// What the mount code needs besides the spec.
pub struct Context2<'a> {
    /// The bundle directory (relative bind sources are relative to it).
    pub bundle: &'a Path,
    /// Absolute rootfs path.
    pub rootfs: &'a Path,
    /// Sources for a `cgroup` mount: (subdirectory, host directory).
    pub cgroup_sources: &'a [(String, PathBuf)],
    /// Whether the container has its own network namespace (sysfs may be mounted).
    pub new_netns: bool,
    /// Bind mounts the runtime prepared (detached), by index in `mounts`.
    pub bind_trees: &'a [Option<OwnedFd>],
}

/// Detached copies of the bind mount sources, by index in `mounts`, for a container in a
/// user namespace: the init may not be able to look their paths up (their directories
/// belong to host root) and could not bind from our mount namespace anyway.
pub fn prepare_bind_sources(spec: &Spec, bundle: &Path) -> Result<Vec<Option<OwnedFd>>> {
    let mounts = spec.mounts().as_deref().unwrap_or(&[]);
    mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let o = parse_options(m.options().as_deref().unwrap_or(&[]));
            if !is_bind(m, &o) {
                return Ok(None);
            }
            let src = bind_source(m, bundle);
            let at = || format!("mounts[{i}] ({})", m.destination().display());
            let tree = crate::mountapi::clone_tree(&src, o.flags.contains(MsFlags::MS_REC))
                .ctx(|| format!("{}: open_tree {}", at(), src.display()))?;
            // An idmapped bind (runtime-spec 1.1 `mounts[].uidMappings`): a user namespace
            // with the mount's maps lends them to the mount.
            if let (Some(uid), Some(gid)) = (m.uid_mappings(), m.gid_mappings()) {
                let maps = crate::userns::Maps {
                    uid,
                    gid,
                    field: format!("mounts[{i}]"),
                };
                let ns = crate::userns::UserNs::with_maps(&maps)?;
                crate::mountapi::set_idmap(&tree, &ns.file)
                    .ctx(|| format!("{}: idmapped mount of {}", at(), src.display()))?;
            }
            Ok(Some(tree))
        })
        .collect()
}

fn bind_source(m: &Mount, bundle: &Path) -> PathBuf {
    let src = m.source().clone().unwrap_or_default();
    if src.is_absolute() {
        src
    } else {
        bundle.join(src)
    }
}

/// `linux.rootfsPropagation` as mount flags; `None` when unset (validated earlier).
pub fn rootfs_propagation(spec: &Spec) -> Option<MsFlags> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation_flag)
}

/// Set the propagation of the whole tree (default rslave), make the rootfs a mount
/// point of its own (bind onto itself) so pivot_root can use it. Only in a mount
/// namespace of the container's own.
pub fn prepare_root(spec: &Spec, rootfs: &Path, idmapped: Option<&OwnedFd>) -> Result<()> {
    let set = rootfs_propagation(spec);
    // As runc, the value goes on the old tree first: an rshared one keeps the copies
    // of the host's shared mounts in the host's peer groups, so binds from them
    // propagate both ways (CRI's Bidirectional mounts). Not an unbindable one, though
    // (runc sets it too): every later bind from the host would be refused (EINVAL).
    // The container's root gets shared and unbindable after the pivot.
    let prop = set
        .filter(|p| !p.contains(MsFlags::MS_UNBINDABLE))
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    nix_ctx(
        mount(None::<&str>, "/", None::<&str>, prop, None::<&str>),
        || "set propagation of /".into(),
    )?;
    // As runc: the mount holding the rootfs becomes private (slave when a slave root
    // was asked for, so host -> container propagation keeps working). A shared parent
    // would make pivot_root fail and leak the bind below to the host; an unbindable
    // one would refuse the bind (EINVAL).
    let parent = if set.is_some_and(|p| p.contains(MsFlags::MS_SLAVE)) {
        MsFlags::MS_SLAVE
    } else {
        MsFlags::MS_PRIVATE
    };
    set_parent_mount_propagation(rootfs, parent)?;
    if let Some(tree) = idmapped {
        return crate::mountapi::attach(tree, rootfs)
            .ctx(|| format!("attach the idmapped rootfs to {}", rootfs.display()));
    }
    nix_ctx(
        mount(
            Some(rootfs),
            rootfs,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
        || format!("bind mount rootfs {}", rootfs.display()),
    )
}

/// Set `flag` on the mount that holds `path`: walk up until mount(2) stops answering
/// EINVAL (not a mount point).
fn set_parent_mount_propagation(path: &Path, flag: MsFlags) -> Result<()> {
    let mut p = path;
    loop {
        match mount(None::<&str>, p, None::<&str>, flag, None::<&str>) {
            Ok(()) => return Ok(()),
            Err(Errno::EINVAL) if p != Path::new("/") => {
                p = p.parent().unwrap_or(Path::new("/"));
            }
            Err(e) => {
                return Err(e).ctx(|| format!("set propagation of the mount at {}", p.display()))
            }
        }
    }
}

/// After entering the root and making its last mounts: `shared` and `unbindable` (and
/// their r- forms) go on the container's root itself. Set before pivot_root they would
/// land on the old tree and be lost with it; private and slave were settled by
/// [`prepare_root`].
pub fn apply_root_propagation(spec: &Spec) -> Result<()> {
    match rootfs_propagation(spec) {
        Some(p) if !p.intersects(MsFlags::MS_PRIVATE | MsFlags::MS_SLAVE) => nix_ctx(
            mount(None::<&str>, "/", None::<&str>, p, None::<&str>),
            || "linux.rootfsPropagation: set propagation of /".into(),
        ),
        _ => Ok(()),
    }
}

/// Enter the rootfs of a container without a mount namespace of its own: chroot.
/// (pivot_root and MS_MOVE would change the runtime's, i.e. the host's, mount tree.)
pub fn chroot_into(rootfs: &Path) -> Result<()> {
    nix_ctx(chdir(rootfs), || format!("chdir {}", rootfs.display()))?;
    nix_ctx(chroot("."), || format!("chroot {}", rootfs.display()))?;
    nix_ctx(chdir("/"), || "chdir /".into())
}

/// Detach every mount strictly below `root` in our mount namespace, the last made
/// first: what a container sharing the runtime's mount namespace mounted there.
pub fn unmount_below(root: &Path) -> Result<()> {
    let info = fs::read_to_string("/proc/self/mountinfo").ctx(|| "read mountinfo".into())?;
    let below: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(unescape_mountinfo(mp)))
        .filter(|mp| mp != root && mp.starts_with(root))
        .collect();
    for mp in below.iter().rev() {
        match umount2(mp, MntFlags::MNT_DETACH) {
            // Gone with a detached parent already.
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e).ctx(|| format!("unmount {}", mp.display())),
        }
    }
    Ok(())
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mountinfo(s: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], octal) {
            let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

fn is_bind(m: &Mount, o: &MountOptions) -> bool {
    m.typ().as_deref() == Some("bind") || o.flags.contains(MsFlags::MS_BIND)
}

/// Do the mounts of config.json in order.
pub fn mount_all(spec: &Spec, cx: &Context2) -> Result<()> {
    for (i, m) in spec.mounts().as_deref().unwrap_or(&[]).iter().enumerate() {
        mount_one(m, cx, cx.bind_trees.get(i).and_then(Option::as_ref)).map_err(|e| {
            Error::Other(format!("mounts[{i}] ({}): {e}", m.destination().display()))
        })?;
    }
    Ok(())
}

fn ensure_dir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).ctx(|| format!("mkdir {}", p.display()))
}

fn ensure_file(p: &Path) -> Result<()> {
    if p.exists() {
        return Ok(());
    }
    if let Some(parent) = p.parent() {
        ensure_dir(parent)?;
    }
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .map(drop)
        .ctx(|| format!("create {}", p.display()))
}

/// Remount a bind mount with its final flags (mount(2) ignores them on the first call).
fn remount_bind(dest: &Path, flags: MsFlags) -> Result<()> {
    let extra = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    if extra.is_empty() {
        return Ok(());
    }
    let f = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra;
    match mount(None::<&str>, dest, None::<&str>, f, None::<&str>) {
        Ok(()) => Ok(()),
        Err(Errno::EPERM) => {
            // Locked flags of the source (nodev, nosuid, noexec) must be kept.
            let st =
                nix::sys::statvfs::statvfs(dest).ctx(|| format!("statvfs {}", dest.display()))?;
            let mut keep = MsFlags::empty();
            use nix::sys::statvfs::FsFlags;
            for (a, b) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            ] {
                if st.flags().contains(a) {
                    keep |= b;
                }
            }
            nix_ctx(
                mount(None::<&str>, dest, None::<&str>, f | keep, None::<&str>),
                || format!("remount {}", dest.display()),
            )
        }
        Err(e) => Err(e).ctx(|| format!("remount {}", dest.display())),
    }
}

fn mount_one(m: &Mount, cx: &Context2, tree: Option<&OwnedFd>) -> Result<()> {
    let o = parse_options(m.options().as_deref().unwrap_or(&[]));
    let dest = secure_join(cx.rootfs, m.destination())?;
    let typ = m.typ().as_deref().unwrap_or("");
    let data = (!o.data.is_empty()).then_some(o.data.as_str());
    if is_bind(m, &o) {
        let src = bind_source(m, cx.bundle);
        let is_dir = match tree {
            Some(t) => nix::sys::stat::fstat(t)
                .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
                .ctx(|| format!("bind source {}", src.display()))?,
            None => fs::metadata(&src)
                .ctx(|| format!("bind source {}", src.display()))?
                .is_dir(),
        };
        if is_dir {
            ensure_dir(&dest)?;
        } else {
            ensure_file(&dest)?;
        }
        match tree {
            Some(t) => crate::mountapi::attach(t, &dest)
                .ctx(|| format!("attach {} to {}", src.display(), dest.display()))?,
            None => {
                let first = MsFlags::MS_BIND | (o.flags & MsFlags::MS_REC);
                nix_ctx(
                    mount(Some(&src), &dest, None::<&str>, first, None::<&str>),
                    || format!("bind {} to {}", src.display(), dest.display()),
                )?;
            }
        }
        remount_bind(&dest, o.flags)?;
    } else if typ == "cgroup" || typ == "cgroup2" {
        mount_cgroup(&dest, &o, cx)?;
    } else {
        ensure_dir(&dest)?;
        let src = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        let r = mount(Some(&src), &dest, Some(typ), o.flags, data);
        match r {
            Ok(()) => {}
            Err(Errno::EPERM) | Err(Errno::EBUSY) if typ == "sysfs" && !cx.new_netns => {
                // sysfs needs its own network namespace; share the host's /sys instead.
                nix_ctx(
                    mount(
                        Some("/sys"),
                        &dest,
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None::<&str>,
                    ),
                    || format!("bind /sys to {}", dest.display()),
                )?;
                remount_bind(&dest, o.flags)?;
            }
            Err(e) => {
                return Err(e).ctx(|| format!("mount {typ} on {}", dest.display()));
            }
        }
        if typ == "devpts" && m.destination() == Path::new("/dev/pts") {
            let ptmx = secure_join(cx.rootfs, Path::new("/dev/ptmx"))?;
            let _ = fs::remove_file(&ptmx);
            symlink("pts/ptmx", &ptmx).ctx(|| format!("symlink {}", ptmx.display()))?;
        }
    }
    for p in &o.propagation {
        nix_ctx(
            mount(None::<&str>, &dest, None::<&str>, *p, None::<&str>),
            || format!("set propagation of {}", dest.display()),
        )?;
    }
    Ok(())
}

/// A `cgroup` mount: the container's own cgroup directories, bind-mounted (v1: a
/// tmpfs holding one directory per controller; v2: the cgroup directory itself).
fn mount_cgroup(dest: &Path, o: &MountOptions, cx: &Context2) -> Result<()> {
    ensure_dir(dest)?;
    let bind_flags = o.flags
        & (MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    let v2 = cx.cgroup_sources.len() == 1 && cx.cgroup_sources[0].0.is_empty();
    if v2 {
        let src = &cx.cgroup_sources[0].1;
        nix_ctx(
            mount(
                Some(src),
                dest,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ),
            || format!("bind {} to {}", src.display(), dest.display()),
        )?;
        return remount_bind(
            dest,
            bind_flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        );
    }
    let tmpfs_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    nix_ctx(
        mount(
            Some("tmpfs"),
            dest,
            Some("tmpfs"),
            tmpfs_flags,
            Some("mode=755"),
        ),
        || format!("mount tmpfs on {}", dest.display()),
    )?;
    for (name, src) in cx.cgroup_sources {
        let d = dest.join(name);
        ensure_dir(&d)?;
        nix_ctx(
            mount(Some(src), &d, None::<&str>, MsFlags::MS_BIND, None::<&str>),
            || format!("bind {} to {}", src.display(), d.display()),
        )?;
        remount_bind(&d, bind_flags | tmpfs_flags)?;
    }
    if o.flags.contains(MsFlags::MS_RDONLY) {
        nix_ctx(
            mount(
                None::<&str>,
                dest,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | tmpfs_flags,
                None::<&str>,
            ),
            || format!("remount {} read-only", dest.display()),
        )?;
    }
    Ok(())
}

/// Whether config.json bind-mounts /dev (then devices are not created).
fn dev_is_bind(spec: &Spec) -> bool {
    spec.mounts().as_deref().unwrap_or(&[]).iter().any(|m| {
        m.destination() == Path::new("/dev")
            && is_bind(m, &parse_options(m.options().as_deref().unwrap_or(&[])))
    })
}

/// The devices every container gets: (path, major, minor).
const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// Create the default devices, `linux.devices` and the /dev symlinks.
pub fn setup_dev(spec: &Spec, rootfs: &Path) -> Result<()> {
    if dev_is_bind(spec) {
        return Ok(());
    }
    let mk = |path: &Path,
              kind: SFlag,
              major: u64,
              minor: u64,
              mode: u32,
              uid: u32,
              gid: u32|
     -> Result<()> {
        let dest = secure_join(rootfs, path)?;
        if let Some(p) = dest.parent() {
            ensure_dir(p)?;
        }
        let node = || {
            mknod(
                &dest,
                kind,
                Mode::from_bits_truncate(mode),
                makedev(major, minor),
            )
        };
        match node() {
            Ok(()) => {}
            // The node is there already (a privileged container gets every host device,
            // /dev/pts/ptmx included, and a devpts mounted at /dev/pts has its own): keep
            // it, as runc does, when it is the same device.
            Err(Errno::EEXIST) if is_device(&dest, kind, major, minor) => return Ok(()),
            Err(Errno::EEXIST) => {
                fs::remove_file(&dest).ctx(|| format!("replace {}", dest.display()))?;
                nix_ctx(node(), || format!("mknod {}", dest.display()))?;
            }
            // Where mknod is not allowed (a devpts, a user namespace), bind the host's node.
            Err(Errno::EPERM | Errno::EACCES) if path.exists() => {
                ensure_file(&dest)?;
                return nix_ctx(
                    mount(
                        Some(path),
                        &dest,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    ),
                    || format!("bind {} to {}", path.display(), dest.display()),
                );
            }
            Err(e) => return Err(e).ctx(|| format!("mknod {}", dest.display())),
        }
        if uid != 0 || gid != 0 {
            nix_ctx(
                nix::unistd::chown(&dest, Some(uid.into()), Some(gid.into())),
                || format!("chown {}", dest.display()),
            )?;
        }
        Ok(())
    };
    for (p, ma, mi) in DEFAULT_DEVICES {
        mk(Path::new(p), SFlag::S_IFCHR, *ma, *mi, 0o666, 0, 0)?;
    }
    let devs = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    for (i, d) in devs.iter().enumerate() {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(Error::config(
                    format!("linux.devices[{i}].type"),
                    "\"a\" is not a device type",
                ))
            }
        };
        mk(
            d.path(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666) & 0o7777,
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        )?;
    }
    let dev = secure_join(rootfs, Path::new("/dev"))?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        match symlink(target, dev.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).ctx(|| format!("symlink /dev/{name}")),
        }
    }
    Ok(())
}

/// Make `rootfs` the root: pivot_root (old root detached) or, with `no_pivot`, move
/// the mount onto / and chroot (for ramdisk roots where pivot_root is impossible).
pub fn enter_root(rootfs: &Path, no_pivot: bool) -> Result<()> {
    if no_pivot {
        nix_ctx(chdir(rootfs), || format!("chdir {}", rootfs.display()))?;
        nix_ctx(
            mount(
                Some(rootfs),
                "/",
                None::<&str>,
                MsFlags::MS_MOVE,
                None::<&str>,
            ),
            || "move rootfs to /".into(),
        )?;
        nix_ctx(chroot("."), || "chroot".into())?;
        return nix_ctx(chdir("/"), || "chdir /".into());
    }
    let old = nix_ctx(
        open(
            "/",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || "open /".into(),
    )?;
    let new = nix_ctx(
        open(
            rootfs,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || format!("open {}", rootfs.display()),
    )?;
    nix_ctx(fchdir(&new), || "fchdir rootfs".into())?;
    // pivot_root(".", ".") stacks the old root on top of the new one; detach it after.
    nix_ctx(pivot_root(".", "."), || {
        format!("pivot_root {}", rootfs.display())
    })?;
    nix_ctx(fchdir(&old), || "fchdir old root".into())?;
    nix_ctx(
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        ),
        || "make old root rslave".into(),
    )?;
    nix_ctx(umount2(".", MntFlags::MNT_DETACH), || {
        "detach old root".into()
    })?;
    nix_ctx(chdir("/"), || "chdir /".into())
}

/// After entering the root: read-only rootfs, masked and read-only paths.
pub fn finalize(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or(&[])
    {
        mask_path(Path::new(p))?;
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_deref())
        .unwrap_or(&[])
    {
        readonly_path(Path::new(p))?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

/// Whether `p` is a device node of `kind` with this major and minor.
fn is_device(p: &Path, kind: SFlag, major: u64, minor: u64) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    fs::symlink_metadata(p).is_ok_and(|m| {
        let t = m.file_type();
        let same_kind = match kind {
            SFlag::S_IFBLK => t.is_block_device(),
            SFlag::S_IFIFO => t.is_fifo(),
            _ => t.is_char_device(),
        };
        same_kind && (kind == SFlag::S_IFIFO || m.rdev() == makedev(major, minor))
    })
}

fn mask_path(p: &Path) -> Result<()> {
    if fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
        return mask_symlink(p);
    }
    match mount(
        Some("/dev/null"),
        p,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        Ok(()) => Ok(()),
        Err(Errno::ENOENT) => Ok(()),
        Err(Errno::ENOTDIR) => nix_ctx(
            mount(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0k"),
            ),
            || format!("mask {}", p.display()),
        ),
        Err(e) => Err(e).ctx(|| format!("mask {}", p.display())),
    }
}

/// Masks the symlink `p` itself. mount(2) follows a symlink and would mask its target
/// instead (runc does: masking `/bin/ls -> busybox` hides the shell and the container
/// cannot start); the new mount API attaches /dev/null onto the link without following it.
fn mask_symlink(p: &Path) -> Result<()> {
    let null = crate::mountapi::clone_tree(Path::new("/dev/null"), false)
        .ctx(|| format!("mask {}: open_tree /dev/null", p.display()))?;
    // The link is the mount point (attach does not follow it).
    crate::mountapi::attach(&null, p).ctx(|| format!("mask {}", p.display()))
}

fn readonly_path(p: &Path) -> Result<()> {
    match mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        Ok(()) => remount_bind(p, MsFlags::MS_RDONLY | MsFlags::MS_REC),
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e).ctx(|| format!("make {} read-only", p.display())),
    }
}

/// Make the console: bind the pty slave on /dev/console.
pub fn bind_console(slave: &Path) -> Result<()> {
    let c = Path::new("/dev/console");
    if !c.exists() {
        fs::File::create(c).ctx(|| "create /dev/console".into())?;
        let _ = fs::set_permissions(c, fs::Permissions::from_mode(0o600));
    }
    nix_ctx(
        mount(Some(slave), c, None::<&str>, MsFlags::MS_BIND, None::<&str>),
        || format!("bind {} to /dev/console", slave.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn options() {
        let o = parse_options(&[
            "nosuid".into(),
            "strictatime".into(),
            "mode=755".into(),
            "size=65536k".into(),
        ]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        let o = parse_options(&["rbind".into(), "ro".into(), "rw".into(), "rprivate".into()]);
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(
            unescape_mountinfo(r"/tmp/a\040b/c\134d\011e"),
            OsString::from("/tmp/a b/c\\d\te")
        );
        // Not an escape: kept as written, no panic.
        assert_eq!(unescape_mountinfo(r"/x\9/y\"), OsString::from(r"/x\9/y\"));
        assert_eq!(
            unescape_mountinfo(r"/z\777"),
            OsString::from_vec(vec![b'/', b'z', 0xff])
        );
    }

    #[test]
    fn secure_join_stays_inside() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        symlink("/etc", r.join("a/abs")).unwrap();
        symlink("../../../..", r.join("a/b/up")).unwrap();
        assert_eq!(
            secure_join(r, Path::new("/a/abs/passwd")).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(secure_join(r, Path::new("/a/b/up/x")).unwrap(), r.join("x"));
        assert_eq!(secure_join(r, Path::new("/../../y")).unwrap(), r.join("y"));
        symlink("loop", r.join("loop")).unwrap();
        assert!(secure_join(r, Path::new("/loop")).is_err());
    }
}
