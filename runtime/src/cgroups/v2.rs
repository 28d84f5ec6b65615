//! cgroup v2: one directory in the unified hierarchy. Device rules are an eBPF program
//! attached to it (see [`super::devices`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use super::stats::{CpuStats, CpuUsage, MemoryEntry, MemoryStats, PidsStats, Stats, Throttling};
use super::{
    clean_path, devices, own_cgroups, read_file, read_keyed, read_limit, read_u64, write_file,
};
use crate::error::{Context, Error, Result};

/// A container's v2 cgroup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct V2 {
    /// The cgroup2 mount (`/sys/fs/cgroup`).
    pub root: PathBuf,
    /// Path below the mount.
    pub path: PathBuf,
    /// With the systemd driver, the unit that owns the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd: Option<super::systemd::Unit>,
}

/// cpu.weight from cpu.shares, as runc converts: shares 2..262144 map linearly onto
/// weight 1..10000; 0 means "not set".
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// The cpu.max line for quota/period (µs); `None` when neither is set. A quota <= 0 is
/// "max"; a zero period is left out (the kernel keeps its current period).
pub fn cpu_max(quota: Option<i64>, period: Option<u64>) -> Option<String> {
    let q = quota.unwrap_or(0);
    let p = period.unwrap_or(0);
    if q == 0 && p == 0 {
        return None;
    }
    let mut s = if q > 0 { q.to_string() } else { "max".into() };
    if p != 0 {
        s.push_str(&format!(" {p}"));
    }
    Some(s)
}

/// memory.swap.max from the OCI memory+swap total, as runc converts it (v2 limits swap
/// alone). `Ok(None)`: leave unset.
pub fn swap_max(swap: Option<i64>, limit: Option<i64>) -> Result<Option<String>> {
    let field = "linux.resources.memory.swap";
    match swap.unwrap_or(0) {
        0 => Ok(None),
        -1 => Ok(Some("max".into())),
        s => {
            let l = limit.unwrap_or(0);
            if l == 0 || l == -1 {
                return Err(Error::config(
                    field,
                    format!("{s}: a swap limit needs a memory limit"),
                ));
            }
            if s < l {
                return Err(Error::config(
                    field,
                    format!("{s} is below the memory limit {l} (swap is memory+swap)"),
                ));
            }
            Ok(Some((s - l).to_string()))
        }
    }
}

fn limit_str(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

impl V2 {
    /// Resolve `path` (absolute, or relative to our own cgroup).
    pub fn resolve(root: &Path, path: &Path) -> Result<V2> {
        let (abs, rel) = clean_path(path);
        let path = if abs {
            rel
        } else {
            let own = own_cgroups().ctx(|| "read /proc/self/cgroup".into())?;
            let base = own
                .iter()
                .find(|(c, _)| c.is_empty())
                .map(|(_, p)| clean_path(p).1)
                .unwrap_or_default();
            base.join(rel)
        };
        Ok(V2 {
            root: root.to_path_buf(),
            path,
            systemd: None,
        })
    }

    /// The cgroup directory.
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.path)
    }

    /// mkdir -p, enabling the available controllers in every ancestor's subtree_control.
    pub fn create(&self) -> Result<()> {
        let avail = read_file(&self.root, "cgroup.controllers").unwrap_or_default();
        let enable: Vec<String> = avail
            .split_whitespace()
            .filter(|c| ["cpu", "cpuset", "memory", "pids", "io", "hugetlb"].contains(c))
            .map(|c| format!("+{c}"))
            .collect();
        let mut cur = self.root.clone();
        for comp in self.path.components() {
            if !enable.is_empty() {
                // Fails with EBUSY when the level holds processes itself; the controllers
                // are then simply unavailable below, which apply() reports.
                let _ = fs::write(cur.join("cgroup.subtree_control"), enable.join(" "));
            }
            cur.push(comp);
            match fs::create_dir(&cur) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).ctx(|| format!("create cgroup {}", cur.display())),
            }
        }
        Ok(())
    }

    /// Apply resource limits.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        let d = self.dir();
        if let Some(cpu) = r.cpu() {
            let w = shares_to_weight(cpu.shares().unwrap_or(0));
            if w != 0 {
                write_file(&d, "cpu.weight", &w.to_string())?;
            }
            if let Some(m) = cpu_max(cpu.quota(), cpu.period()) {
                write_file(&d, "cpu.max", &m)?;
            }
            if let Some(i) = cpu.idle() {
                write_file(&d, "cpu.idle", &i.to_string())?;
            }
            if let Some(c) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
                write_file(&d, "cpuset.cpus", c)?;
            }
            if let Some(m) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
                write_file(&d, "cpuset.mems", m)?;
            }
        }
        if let Some(m) = r.memory() {
            let limit = m.limit().filter(|l| *l != 0);
            if let Some(s) = swap_max(m.swap(), limit)? {
                if d.join("memory.swap.max").exists() || s != "max" {
                    write_file(&d, "memory.swap.max", &s)?;
                }
            }
            if let Some(l) = limit {
                write_file(&d, "memory.max", &limit_str(l))?;
            }
            if let Some(r) = m.reservation().filter(|r| *r != 0) {
                write_file(&d, "memory.low", &limit_str(r))?;
            }
        }
        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            write_file(&d, "pids.max", &v)?;
        }
        if let Some(u) = r.unified() {
            for (k, v) in u {
                if k.contains('/') || k.starts_with('.') || !k.contains('.') {
                    return Err(Error::config(
                        format!("linux.resources.unified[{k:?}]"),
                        "not a cgroup v2 interface file name",
                    ));
                }
                write_file(&d, k, v)?;
            }
        }
        if r.devices().is_some() {
            devices::install(&d, &devices::rules(r)?)?;
        }
        Ok(())
    }

    /// Freeze or thaw through cgroup.freeze and wait for cgroup.events to agree.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let d = self.dir();
        write_file(&d, "cgroup.freeze", if frozen { "1" } else { "0" })?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !read_file(&d, "cgroup.events").is_some_and(|e| e.lines().any(|l| l == want)) {
            if Instant::now() > deadline {
                return Err(Error::Other(format!(
                    "cgroup {} did not reach {want}",
                    d.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Whether cgroup.freeze is set.
    pub fn is_frozen(&self) -> bool {
        read_file(&self.dir(), "cgroup.freeze").as_deref() == Some("1")
    }

    /// CPU, memory and pids accounting (cpu.stat, memory.*, pids.*).
    pub fn stats(&self) -> Stats {
        let d = self.dir();
        let cpu = read_keyed(&d, "cpu.stat");
        let c = |k: &str| cpu.get(k).copied().unwrap_or(0);
        let events = read_keyed(&d, "memory.events");
        Stats {
            cpu: CpuStats {
                usage: CpuUsage {
                    total_ns: c("usage_usec") * 1000,
                    per_cpu_ns: vec![],
                    kernel_ns: c("system_usec") * 1000,
                    user_ns: c("user_usec") * 1000,
                },
                throttling: Throttling {
                    periods: c("nr_periods"),
                    throttled_periods: c("nr_throttled"),
                    throttled_time_ns: c("throttled_usec") * 1000,
                },
            },
            memory: MemoryStats {
                usage: MemoryEntry {
                    usage: read_u64(&d, "memory.current").unwrap_or(0),
                    max: read_u64(&d, "memory.peak").unwrap_or(0),
                    limit: read_limit(&d, "memory.max"),
                    // Times the limit was hit: "max" of memory.events.
                    failcnt: events.get("max").copied().unwrap_or(0),
                },
                swap: MemoryEntry {
                    usage: read_u64(&d, "memory.swap.current").unwrap_or(0),
                    max: read_u64(&d, "memory.swap.peak").unwrap_or(0),
                    limit: read_limit(&d, "memory.swap.max"),
                    failcnt: 0,
                },
                raw: read_keyed(&d, "memory.stat"),
                events,
                ..Default::default()
            },
            pids: PidsStats {
                current: read_u64(&d, "pids.current").unwrap_or(0),
                limit: read_limit(&d, "pids.max"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1), 1);
        assert_eq!(shares_to_weight(10_000_000), 10_000);
    }

    #[test]
    fn cpu_max_lines() {
        assert_eq!(cpu_max(None, None), None);
        assert_eq!(
            cpu_max(Some(50_000), Some(100_000)).as_deref(),
            Some("50000 100000")
        );
        assert_eq!(
            cpu_max(Some(-1), Some(100_000)).as_deref(),
            Some("max 100000")
        );
        assert_eq!(cpu_max(Some(20_000), None).as_deref(), Some("20000"));
        assert_eq!(cpu_max(None, Some(10_000)).as_deref(), Some("max 10000"));
    }

    #[test]
    fn swap_conversion() {
        assert_eq!(swap_max(None, Some(100)).unwrap(), None);
        assert_eq!(swap_max(Some(-1), None).unwrap().as_deref(), Some("max"));
        assert_eq!(
            swap_max(Some(300), Some(100)).unwrap().as_deref(),
            Some("200")
        );
        let e = swap_max(Some(50), Some(100)).unwrap_err().to_string();
        assert!(e.contains("linux.resources.memory.swap"), "{e}");
        assert!(swap_max(Some(50), None).is_err());
    }

    /// Apply onto a directory of fake interface files and read back what was written.
    #[test]
    fn apply_writes_files() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = V2 {
            root: tmp.path().to_path_buf(),
            path: PathBuf::from("pod/ctr"),
            systemd: None,
        };
        fs::write(tmp.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(tmp.path().join("cgroup.subtree_control"), "").unwrap();
        cg.create().unwrap();
        assert!(cg.dir().is_dir());
        assert_eq!(
            fs::read_to_string(tmp.path().join("cgroup.subtree_control")).unwrap(),
            "+cpu +memory +pids"
        );
        fs::write(cg.dir().join("memory.swap.max"), "max").unwrap();
        let r = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(25_000i64)
                    .period(100_000u64)
                    .cpus("0")
                    .build()
                    .unwrap(),
            )
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .swap(128i64 << 20)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(16i64).build().unwrap())
            .build()
            .unwrap();
        cg.apply(&r).unwrap();
        let rd = |f: &str| fs::read_to_string(cg.dir().join(f)).unwrap();
        assert_eq!(rd("cpu.weight"), "20");
        assert_eq!(rd("cpu.max"), "25000 100000");
        assert_eq!(rd("cpuset.cpus"), "0");
        assert_eq!(rd("memory.max"), (64u64 << 20).to_string());
        assert_eq!(rd("memory.swap.max"), (64u64 << 20).to_string());
        assert_eq!(rd("pids.max"), "16");
    }

    #[test]
    fn stats_read_v2_files() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = V2 {
            root: tmp.path().to_path_buf(),
            path: PathBuf::new(),
            systemd: None,
        };
        let w = |f: &str, v: &str| fs::write(tmp.path().join(f), v).unwrap();
        w("cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 20\n");
        w("memory.current", "8192\n");
        w("memory.peak", "16384\n");
        w("memory.max", "max\n");
        w("memory.events", "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n");
        w("memory.stat", "anon 4096\nfile 4096\n");
        w("pids.current", "2\n");
        w("pids.max", "32\n");
        let st = cg.stats();
        assert_eq!(st.cpu.usage.total_ns, 1_500_000);
        assert_eq!(st.cpu.usage.kernel_ns, 500_000);
        assert_eq!(st.cpu.throttling.throttled_time_ns, 20_000);
        assert_eq!(st.memory.usage.usage, 8192);
        assert_eq!(st.memory.usage.max, 16384);
        assert_eq!(st.memory.usage.limit, 0, "max reads as unlimited");
        assert_eq!(st.memory.usage.failcnt, 5);
        assert_eq!(st.memory.raw.get("anon"), Some(&4096));
        assert_eq!((st.pids.current, st.pids.limit), (2, 32));
        assert_eq!(super::super::Cgroup::V2(cg).oom_kills(), 1);
    }

    #[test]
    fn unified_keys_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = V2 {
            root: tmp.path().to_path_buf(),
            path: PathBuf::new(),
            systemd: None,
        };
        let mut u = std::collections::HashMap::new();
        u.insert("../escape".to_string(), "1".to_string());
        let r = LinuxResourcesBuilder::default().unified(u).build().unwrap();
        let e = cg.apply(&r).unwrap_err().to_string();
        assert!(e.contains("linux.resources.unified"), "{e}");
        let mut u = std::collections::HashMap::new();
        u.insert("memory.high".to_string(), "1000000".to_string());
        let r = LinuxResourcesBuilder::default().unified(u).build().unwrap();
        cg.apply(&r).unwrap();
        assert_eq!(
            fs::read_to_string(tmp.path().join("memory.high")).unwrap(),
            "1000000"
        );
    }
}
