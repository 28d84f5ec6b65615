//! User namespaces: the container's own (the runtime writes its uid and gid maps) or one
//! joined by path, and a rootfs made usable by the mapped IDs.
//!
//! Namespaces belong to the user namespace of the process that makes them, and a
//! container's must belong to its user namespace (mounting proc needs the pid namespace's
//! owner, sysfs the network namespace's). With a new user namespace, one clone makes them
//! all in it, as without one. With a joined one, the init joins it first and unshares the
//! others there; only a new pid namespace cannot be unshared by the process that should be
//! its pid 1, so then a helper joins the user namespace, unshares the pid namespace and
//! clones the init as our child (CLONE_PARENT).
//!
//! The rootfs is usually owned by host root, which the container's root is not. The
//! runtime (host root in the initial user namespace, as the kernel requires) makes an
//! idmapped copy of the rootfs mount before the clone, and the init moves it into place
//! instead of binding the rootfs onto itself. An idmapping depends only on the maps, so for
//! a new user namespace a throwaway one with the same maps serves.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::{Linux, LinuxIdMapping, LinuxNamespaceType, Spec};

use crate::container::clone_process;
use crate::error::{Context, Error, Result};
use crate::mountapi;
use crate::namespaces::Plan;

/// The container's user namespace, as the runtime sees it before the clone.
pub(crate) struct UserNs {
    /// The namespace (joined) or one with the same maps (new).
    pub file: File,
    /// Joined by path (the init joins it) rather than new (the clone makes it).
    pub joined: bool,
    /// Its uid map as the runtime sees it: (inside, outside, length).
    pub uid_map: Vec<(u32, u32, u32)>,
}

/// The text of a uid_map or gid_map: one `inside outside length` line per mapping.
fn map_text(m: &[LinuxIdMapping]) -> String {
    m.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// Parse /proc/<pid>/uid_map.
fn parse_map(text: &str) -> Vec<(u32, u32, u32)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some((f.next()??, f.next()??, f.next()??))
        })
        .collect()
}

/// Whether host id `id` is inside one of the map's outside ranges.
fn maps_host_id(map: &[(u32, u32, u32)], id: u32) -> bool {
    map.iter()
        .any(|&(_, out, len)| id >= out && (id as u64) < out as u64 + len as u64)
}

/// The maps of a new user namespace and the config fields they come from.
pub(crate) struct Maps<'a> {
    pub uid: &'a [LinuxIdMapping],
    pub gid: &'a [LinuxIdMapping],
    /// `linux` or `mounts[i]`: where uidMappings and gidMappings are.
    pub field: String,
}

impl<'a> Maps<'a> {
    /// The container's `linux.uidMappings` and `linux.gidMappings`.
    pub(crate) fn of(linux: &'a Linux) -> Maps<'a> {
        Maps {
            uid: linux.uid_mappings().as_deref().unwrap_or(&[]),
            gid: linux.gid_mappings().as_deref().unwrap_or(&[]),
            field: "linux".into(),
        }
    }
}

/// Write `maps` for the new user namespace of process `pid`.
pub(crate) fn write_maps(pid: i32, maps: &Maps) -> Result<()> {
    for (file, name, map) in [
        ("uid_map", "uidMappings", maps.uid),
        ("gid_map", "gidMappings", maps.gid),
    ] {
        let text = map_text(map);
        // One write: the kernel takes the whole map at once or not at all.
        std::fs::write(format!("/proc/{pid}/{file}"), &text).map_err(|e| {
            Error::config(
                format!("{}.{name}", maps.field),
                format!("{}: {e}", text.trim().replace('\n', ", ")),
            )
        })?;
    }
    Ok(())
}

/// Kills and reaps a helper that is still there.
struct Helper(i32);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(self.0), None);
    }
}

impl UserNs {
    /// The container's user namespace; `None` when it has none of its own. A new one is
    /// stood in for by a throwaway namespace with the config's maps.
    pub(crate) fn open(spec: &Spec, plan: &Plan) -> Result<Option<UserNs>> {
        let linux = spec.linux().as_ref().expect("validated");
        match plan.joins(LinuxNamespaceType::User) {
            Some(p) => {
                let f = File::open(p).map_err(|e| {
                    Error::config(
                        "linux.namespaces[user].path",
                        format!("{}: {e}", p.display()),
                    )
                })?;
                UserNs::helper(Some(&f), None).map(Some)
            }
            None if plan.is_new(LinuxNamespaceType::User) => {
                UserNs::helper(None, Some(&Maps::of(linux))).map(Some)
            }
            None => Ok(None),
        }
    }

    /// A user namespace with `maps` and nothing in it (for an idmapped mount).
    pub(crate) fn with_maps(maps: &Maps) -> Result<UserNs> {
        UserNs::helper(None, Some(maps))
    }

    /// A helper in the namespace (joining `join`, else making one with `maps`) lets us
    /// read its map, or write it, and open it.
    fn helper(join: Option<&File>, maps: Option<&Maps>) -> Result<UserNs> {
        let (go_rd, go_wr) = nix::unistd::pipe().ctx(|| "pipe".into())?;
        let (back_rd, back_wr) = nix::unistd::pipe().ctx(|| "pipe".into())?;
        let flags = match join {
            Some(_) => CloneFlags::empty(),
            None => CloneFlags::CLONE_NEWUSER,
        };
        let pid = clone_process(flags)?;
        if pid == 0 {
            drop(go_wr);
            drop(back_rd);
            let r = match join {
                Some(f) => setns(f, CloneFlags::CLONE_NEWUSER).map_err(|e| e.to_string()),
                None => Ok(()),
            };
            helper_report(r, back_wr, go_rd);
        }
        let guard = Helper(pid);
        drop(go_rd);
        drop(back_wr);
        if let (None, Some(maps)) = (join, maps) {
            write_maps(pid, maps)?;
        }
        wait_report(back_rd)?;
        let file = File::open(format!("/proc/{pid}/ns/user"))
            .ctx(|| format!("open /proc/{pid}/ns/user"))?;
        let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map"))
            .map(|t| parse_map(&t))
            .ctx(|| format!("read /proc/{pid}/uid_map"))?;
        // Closing our end of the go pipe lets the helper exit; the guard reaps it.
        drop(go_wr);
        drop(guard);
        Ok(UserNs {
            file,
            joined: join.is_some(),
            uid_map,
        })
    }
}

/// In a helper: report `r` on `back` ("k" or the error), then wait for EOF on `go` and exit.
fn helper_report(r: std::result::Result<(), String>, back: OwnedFd, go: OwnedFd) -> ! {
    let mut back = File::from(back);
    let msg = match &r {
        Ok(()) => "k".to_string(),
        Err(e) => e.clone(),
    };
    let _ = back.write_all(msg.as_bytes());
    drop(back);
    if r.is_ok() {
        let _ = File::from(go).read_to_end(&mut Vec::new());
    }
    // SAFETY: _exit skips the destructors of the parent's copy of our memory.
    unsafe { libc::_exit(i32::from(r.is_err())) }
}

/// Read a helper's report until it closes its end.
fn wait_report(back: OwnedFd) -> Result<Vec<u8>> {
    let mut reply = Vec::new();
    File::from(back)
        .read_to_end(&mut reply)
        .ctx(|| "read the user namespace helper".into())?;
    match reply.first() {
        Some(b'k') => Ok(reply[1..].to_vec()),
        _ if reply.is_empty() => Err(Error::Other("user namespace: helper died".into())),
        _ => Err(Error::Other(format!(
            "user namespace: {}",
            String::from_utf8_lossy(&reply)
        ))),
    }
}

/// Clone the init into a new pid namespace owned by the joined user namespace `user`:
/// a helper joins it, unshares the pid namespace and clones `init` as our child (its pid
/// 1). Returns the init's pid.
pub(crate) fn clone_init_in_new_pidns(
    user: &File,
    init: impl FnOnce() -> std::convert::Infallible,
) -> Result<i32> {
    let (back_rd, back_wr) = nix::unistd::pipe().ctx(|| "pipe".into())?;
    let helper = clone_process(CloneFlags::empty())?;
    if helper == 0 {
        drop(back_rd);
        let mut back = File::from(back_wr);
        let r = (|| -> std::result::Result<i32, String> {
            setns(user, CloneFlags::CLONE_NEWUSER).map_err(|e| format!("join: {e}"))?;
            unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare pid: {e}"))?;
            clone_process(CloneFlags::CLONE_PARENT).map_err(|e| e.to_string())
        })();
        let msg = match r {
            Ok(0) => {
                drop(back);
                #[allow(unreachable_code, unused_variables)]
                let never = init();
                match never {}
            }
            Ok(pid) => format!("k{pid}"),
            Err(e) => e,
        };
        let _ = back.write_all(msg.as_bytes());
        // SAFETY: _exit skips the destructors of the parent's copy of our memory.
        unsafe { libc::_exit(0) }
    }
    drop(back_wr);
    let guard = Helper(helper);
    let reply = wait_report(back_rd);
    drop(guard);
    let reply = reply?;
    String::from_utf8_lossy(&reply)
        .parse()
        .map_err(|_| Error::Other("user namespace: the helper sent no pid".into()))
}

/// An idmapped copy of the mount at `rootfs` for user namespace `user`, when the
/// rootfs's owner is not one of the host IDs the namespace maps (otherwise `None`: the
/// rootfs was made for these IDs already, as containerd's remapped snapshots are).
pub(crate) fn idmapped_rootfs(
    rootfs: &Path,
    user: &File,
    uid_map: &[(u32, u32, u32)],
) -> Result<Option<OwnedFd>> {
    let owner = std::fs::metadata(rootfs)
        .ctx(|| format!("stat {}", rootfs.display()))?
        .uid();
    if maps_host_id(uid_map, owner) {
        return Ok(None);
    }
    let tree =
        mountapi::clone_tree(rootfs, false).ctx(|| format!("open_tree {}", rootfs.display()))?;
    mountapi::set_idmap(&tree, user).ctx(|| {
        format!(
            "idmapped mount of root.path {} (owned by host uid {owner}, which linux.uidMappings does not map; the filesystem must support idmapped mounts)",
            rootfs.display()
        )
    })?;
    Ok(Some(tree))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_covers_the_host_ids_of_its_outside_ranges_only() {
        let m = parse_map("         0     100000      65536\n 65536 0 1\n");
        assert_eq!(m, vec![(0, 100000, 65536), (65536, 0, 1)]);
        assert!(maps_host_id(&m, 100000));
        assert!(maps_host_id(&m, 165535));
        assert!(!maps_host_id(&m, 165536));
        assert!(maps_host_id(&m, 0));
        assert!(!maps_host_id(&m[..1], 0));
        // The last range may end at 2^32.
        assert!(maps_host_id(&[(0, u32::MAX - 1, 2)], u32::MAX));
    }
}
