//! cgroup management for containers: v1 (one hierarchy per controller, as on this
//! project's hybrid hosts) and v2 (the unified hierarchy).
//!
//! The mode is detected as runc does: `/sys/fs/cgroup` is cgroup2 (statfs magic) means
//! pure v2, anything else means v1 controllers at `/sys/fs/cgroup/<controller>`.
//! `cgroupsPath` is read as runc reads it with the cgroupfs driver: an absolute path is
//! taken from each hierarchy's root, a relative one from the runtime's own cgroup; when
//! it is missing the container id is used (relative). A path in systemd's form
//! `slice:prefix:name` is a systemd scope (see [`systemd`]; pure v2 only).

pub mod devices;
pub mod stats;
pub mod systemd;
pub mod v1;
pub mod v2;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};
pub use stats::Stats;

/// Where the cgroup hierarchies are mounted.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// Whether `root` is a cgroup2 mount (pure v2 host).
pub fn is_unified_at(root: &Path) -> bool {
    nix::sys::statfs::statfs(root)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// Whether this host runs pure cgroup v2.
pub fn is_unified() -> bool {
    is_unified_at(Path::new(DEFAULT_ROOT))
}

/// A container's cgroup, as stored in the container state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "version")]
pub enum Cgroup {
    /// cgroup v1: one directory per controller.
    #[serde(rename = "v1")]
    V1(v1::V1),
    /// cgroup v2: one directory in the unified hierarchy.
    #[serde(rename = "v2")]
    V2(v2::V2),
}

/// Clean a cgroupsPath the way runc does: no `..` escaping the root, no empty parts.
/// Returns whether the path was absolute and the cleaned relative form.
pub fn clean_path(p: &Path) -> (bool, PathBuf) {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    (p.is_absolute(), out)
}

/// Parse /proc/self/cgroup into (controller list, path) pairs.
pub(crate) fn own_cgroups() -> io::Result<Vec<(String, PathBuf)>> {
    let s = fs::read_to_string("/proc/self/cgroup")?;
    Ok(s.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?.to_string();
            let path = PathBuf::from(it.next()?);
            Some((ctrls, path))
        })
        .collect())
}

impl Cgroup {
    /// Resolve the container's cgroup from `linux.cgroupsPath` on this host.
    pub fn resolve(cgroups_path: Option<&Path>, id: &str) -> Result<Cgroup> {
        let root = Path::new(DEFAULT_ROOT);
        let path = match cgroups_path {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from(id),
        };
        if let Some(unit) = path.to_str().and_then(systemd::Unit::parse) {
            let unit = unit?;
            if !is_unified_at(root) {
                return Err(Error::config(
                    "linux.cgroupsPath",
                    format!(
                        "{}: the systemd cgroup driver needs a pure cgroup v2 host",
                        path.display()
                    ),
                ));
            }
            return Ok(Cgroup::V2(v2::V2 {
                root: root.to_path_buf(),
                path: unit.cgroup_path(),
                systemd: Some(unit),
            }));
        }
        if is_unified_at(root) {
            Ok(Cgroup::V2(v2::V2::resolve(root, &path)?))
        } else {
            Ok(Cgroup::V1(v1::V1::resolve(root, &path)?))
        }
    }

    /// The systemd unit that owns the cgroup (systemd driver), if any.
    pub fn systemd_unit(&self) -> Option<&systemd::Unit> {
        match self {
            Cgroup::V2(c) => c.systemd.as_ref(),
            Cgroup::V1(_) => None,
        }
    }

    /// Puts `pid` (the container's init, waiting to be released) into the cgroup. With
    /// cgroupfs the cgroup was made by [`Cgroup::create`] before; with systemd the scope
    /// starts now, with `pid` as its first process, and takes `resources` after.
    pub fn enter(&self, pid: i32, resources: Option<&LinuxResources>) -> Result<()> {
        match self.systemd_unit() {
            Some(unit) => {
                unit.start(pid, resources)?;
                self.create(resources)
            }
            None => self.add_pid(pid),
        }
    }

    /// Create the cgroup directories and apply `resources`. Device rules always apply
    /// (as runc): without `devices` only the default devices are allowed.
    pub fn create(&self, resources: Option<&LinuxResources>) -> Result<()> {
        match self {
            Cgroup::V1(c) => c.create()?,
            Cgroup::V2(c) => c.create()?,
        }
        let mut r = resources.cloned().unwrap_or_default();
        if r.devices().is_none() {
            r.set_devices(Some(vec![]));
        }
        self.apply(&r)
    }

    /// Apply (or update) resource limits; device rules only when `devices` is set
    /// (then they replace the previous ones).
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        match self {
            Cgroup::V1(c) => c.apply(r),
            Cgroup::V2(c) => c.apply(r),
        }
    }

    /// Move process `pid` into the cgroup.
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        for dir in self.dirs() {
            let f = dir.join("cgroup.procs");
            fs::write(&f, pid.to_string()).ctx(|| format!("add pid {pid} to {}", f.display()))?;
        }
        Ok(())
    }

    /// The directories making up this cgroup (one per v1 controller, one for v2).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match self {
            Cgroup::V1(c) => c.dirs().into_values().collect(),
            Cgroup::V2(c) => vec![c.dir()],
        }
    }

    /// The directory whose `cgroup.procs` lists all the container's processes.
    fn procs_dir(&self) -> Option<PathBuf> {
        match self {
            Cgroup::V1(c) => {
                let dirs = c.dirs();
                ["pids", "freezer", "memory", "cpu", "devices"]
                    .iter()
                    .find_map(|k| dirs.get(*k).cloned())
                    .or_else(|| dirs.into_values().next())
            }
            Cgroup::V2(c) => Some(c.dir()),
        }
    }

    /// PIDs of all processes in the cgroup (host PID namespace).
    pub fn pids(&self) -> Result<Vec<i32>> {
        let Some(d) = self.procs_dir() else {
            return Ok(vec![]);
        };
        let f = d.join("cgroup.procs");
        match fs::read_to_string(&f) {
            Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(e).ctx(|| format!("read {}", f.display())),
        }
    }

    /// Freeze (pause) or thaw (resume) all processes.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        match self {
            Cgroup::V1(c) => c.freeze(frozen),
            Cgroup::V2(c) => c.freeze(frozen),
        }
    }

    /// Whether the cgroup is frozen.
    pub fn is_frozen(&self) -> bool {
        match self {
            Cgroup::V1(c) => c.is_frozen(),
            Cgroup::V2(c) => c.is_frozen(),
        }
    }

    /// Remove the cgroup directories, waiting briefly for exiting processes to leave.
    pub fn destroy(&self) -> Result<()> {
        if let (Some(unit), Cgroup::V2(c)) = (self.systemd_unit(), self) {
            // The directory goes below even when systemd cannot be asked.
            if let Err(e) = unit.stop(&c.root) {
                tracing::warn!("{e}");
            }
        }
        for dir in self.dirs() {
            rmdir_retry(&dir)?;
        }
        Ok(())
    }

    /// A snapshot of the cgroup's CPU, memory and pids accounting.
    pub fn stats(&self) -> Stats {
        match self {
            Cgroup::V1(c) => c.stats(),
            Cgroup::V2(c) => c.stats(),
        }
    }

    /// The kernel's count of OOM kills in the cgroup (`oom_kill` of memory.oom_control on
    /// v1, of memory.events on v2); 0 without a memory controller. Cheaper than
    /// [`Cgroup::stats`]: one file.
    pub fn oom_kills(&self) -> u64 {
        let (dir, file) = match self {
            Cgroup::V1(c) => (c.dirs().remove("memory"), "memory.oom_control"),
            Cgroup::V2(c) => (Some(c.dir()), "memory.events"),
        };
        dir.and_then(|d| read_keyed(&d, file).get("oom_kill").copied())
            .unwrap_or(0)
    }

    /// The directory of the memory controller (the one directory on v2), where OOM
    /// notifications come from; None when a v1 host does not mount it.
    pub fn memory_dir(&self) -> Option<PathBuf> {
        match self {
            Cgroup::V1(c) => c.dirs().remove("memory"),
            Cgroup::V2(c) => Some(c.dir()),
        }
    }

    /// What to mount at the container's /sys/fs/cgroup: (subdirectory, host source).
    /// v1: one entry per controller; v2: one entry with an empty name.
    pub fn mount_sources(&self) -> Vec<(String, PathBuf)> {
        match self {
            Cgroup::V1(c) => c.dirs().into_iter().collect(),
            Cgroup::V2(c) => vec![(String::new(), c.dir())],
        }
    }
}

/// rmdir that tolerates a missing directory and retries while the kernel still counts
/// exiting tasks (EBUSY) for up to 2 s.
pub(crate) fn rmdir_retry(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut delay = Duration::from_micros(200);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(e).ctx(|| format!("remove cgroup {}", dir.display())),
        }
    }
}

/// Write `value` to `dir/file`, naming both in the error.
pub(crate) fn write_file(dir: &Path, file: &str, value: &str) -> Result<()> {
    let p = dir.join(file);
    fs::write(&p, value).map_err(|e| Error::Io {
        context: format!("write {value:?} to {}", p.display()),
        source: e,
    })
}

/// Read a cgroup file, trimmed.
pub(crate) fn read_file(dir: &Path, file: &str) -> Option<String> {
    fs::read_to_string(dir.join(file))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Parse a flat-keyed file (`key value` per line) such as memory.stat or cpu.stat.
pub(crate) fn read_keyed(dir: &Path, file: &str) -> BTreeMap<String, u64> {
    read_file(dir, file)
        .map(|s| {
            s.lines()
                .filter_map(|l| {
                    let mut it = l.split_whitespace();
                    Some((it.next()?.to_string(), it.next()?.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A limit from a cgroup file as the stats report it: "max" (unlimited) and a missing
/// file read as 0.
pub(crate) fn read_limit(dir: &Path, file: &str) -> u64 {
    read_u64(dir, file).filter(|&v| v != u64::MAX).unwrap_or(0)
}

/// Read a number from a cgroup file ("max" reads as u64::MAX).
pub(crate) fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    let s = read_file(dir, file)?;
    if s == "max" {
        return Some(u64::MAX);
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_like_runc() {
        assert_eq!(
            clean_path(Path::new("/a/b/../c")),
            (true, PathBuf::from("a/c"))
        );
        assert_eq!(
            clean_path(Path::new("../../x/./y")),
            (false, PathBuf::from("x/y"))
        );
        assert_eq!(clean_path(Path::new("/")), (true, PathBuf::new()));
    }
}
