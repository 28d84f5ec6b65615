//! Leaving nothing behind: mounts, cgroups, processes, and a file lock for shared build output.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Error, Result};

/// An exclusive `flock` held until drop.
pub struct FileLock {
    _file: fs::File,
}

impl FileLock {
    pub fn exclusive(path: &Path) -> Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        // SAFETY: flock on a file descriptor we own; blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io(path, std::io::Error::last_os_error()));
        }
        Ok(FileLock { _file: file })
    }
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn unescape_mount_path(raw: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&raw[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// Lazily unmounts everything at or below `dir`; returns what was unmounted.
pub fn unmount_all_under(dir: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    // Several rounds: a path can be mounted over more than once.
    for _ in 0..8 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            break;
        }
        for mount in mounts {
            if nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH).is_ok() {
                done.push(mount);
            }
        }
    }
    done
}

/// Cgroup hierarchies of this machine: every v1 controller mount and the unified one.
pub fn cgroup_roots() -> Vec<PathBuf> {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let _src = fields.next()?;
            let target = fields.next()?;
            let fstype = fields.next()?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(target))
        })
        .collect()
}

/// PIDs in `relative` (e.g. "/nodus-test-1-0") or below it, in any hierarchy.
pub fn cgroup_pids(relative: &str) -> Vec<i32> {
    let rel = relative.trim_start_matches('/');
    let mut pids = Vec::new();
    for root in cgroup_roots() {
        collect_pids(&root.join(rel), &mut pids);
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn collect_pids(dir: &Path, pids: &mut Vec<i32>) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_pids(&entry.path(), pids);
            }
        }
    }
}

/// Removes the cgroup `relative` and everything below it in every hierarchy (depth first).
/// Returns the directories that could not be removed.
pub fn remove_cgroup_tree(relative: &str) -> Vec<PathBuf> {
    let rel = relative.trim_start_matches('/');
    if rel.is_empty() {
        return Vec::new();
    }
    let mut left = Vec::new();
    for root in cgroup_roots() {
        let dir = root.join(rel);
        if dir.exists() {
            remove_cgroup_dir(&dir, &mut left);
        }
    }
    left
}

fn remove_cgroup_dir(dir: &Path, left: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_dir(&entry.path(), left);
            }
        }
    }
    // A cgroup whose last task just exited can be briefly busy.
    let removed =
        crate::try_wait_until(
            Duration::from_secs(2),
            "an empty cgroup",
            || match fs::remove_dir(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        );
    if removed.is_err() {
        left.push(dir.to_path_buf());
    }
}

/// Lines of this process's mountinfo that mention `s` (a container ID, a directory).
pub fn mounts_mentioning(s: &str) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(s))
        .map(str::to_string)
        .collect()
}

/// PIDs whose command line contains every one of `needles` (read from /proc).
pub fn pids_with_cmdline(needles: &[&str]) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| {
                    let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
                    needles.iter().all(|n| cmdline.contains(n))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Whether `pid` still exists (and is not a zombie we could reap).
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Sends `signal` to `pid` and waits up to `grace` for it to go; then SIGKILL.
pub fn stop_pid(pid: i32, signal: nix::sys::signal::Signal, grace: Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let _ = kill(Pid::from_raw(pid), signal);
    let gone = || !pid_alive(pid);
    if crate::try_wait_until(grace, "the process to exit", gone).is_err() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = crate::try_wait_until(Duration::from_secs(5), "the process to die", gone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }
}
