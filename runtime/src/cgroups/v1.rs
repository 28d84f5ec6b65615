//! cgroup v1: one directory per controller under `<root>/<controller>/<path>`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use super::stats::{CpuUsage, MemoryEntry, MemoryStats, PidsStats, Stats, Throttling};
use super::{
    clean_path, devices, own_cgroups, read_file, read_keyed, read_limit, read_u64, write_file,
};
use crate::error::{Context, Error, Result};

/// The v1 controllers a container joins.
pub const CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer",
];

/// A container's v1 cgroup: the hierarchy root and, per controller, the path below it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct V1 {
    /// Where the hierarchies are mounted (`/sys/fs/cgroup`).
    pub root: PathBuf,
    /// Controller -> path relative to that controller's mount.
    pub paths: BTreeMap<String, PathBuf>,
}

impl V1 {
    /// Resolve `path` (absolute, or relative to our own cgroup) for each mounted controller.
    pub fn resolve(root: &Path, path: &Path) -> Result<V1> {
        let (abs, rel) = clean_path(path);
        let own = if abs {
            vec![]
        } else {
            own_cgroups().ctx(|| "read /proc/self/cgroup".into())?
        };
        let mut paths = BTreeMap::new();
        for c in CONTROLLERS {
            if !root.join(c).is_dir() {
                continue;
            }
            let p = if abs {
                rel.clone()
            } else {
                let base = own
                    .iter()
                    .find(|(ctrls, _)| ctrls.split(',').any(|x| x == *c))
                    .map(|(_, p)| clean_path(p).1)
                    .unwrap_or_default();
                base.join(&rel)
            };
            paths.insert(c.to_string(), p);
        }
        if paths.is_empty() {
            return Err(Error::Other(format!(
                "no cgroup v1 controllers found under {}",
                root.display()
            )));
        }
        Ok(V1 {
            root: root.to_path_buf(),
            paths,
        })
    }

    /// Controller -> absolute directory.
    pub fn dirs(&self) -> BTreeMap<String, PathBuf> {
        self.paths
            .iter()
            .map(|(c, p)| (c.clone(), self.root.join(c).join(p)))
            .collect()
    }

    fn dir(&self, ctrl: &str) -> Option<PathBuf> {
        self.paths.get(ctrl).map(|p| self.root.join(ctrl).join(p))
    }

    /// mkdir -p each controller's directory; empty cpuset levels inherit cpus/mems from
    /// their parent (a v1 cpuset with empty cpus refuses tasks with ENOSPC).
    ///
    /// A level that already exists is filled too: when several pods start at once, another
    /// `create` may have made the level and not yet written its cpus, and this one would
    /// otherwise copy that emptiness one level down (runc's cpusetEnsureParent does the same).
    pub fn create(&self) -> Result<()> {
        for (ctrl, rel) in &self.paths {
            let mut cur = self.root.join(ctrl);
            for comp in rel.components() {
                let parent = cur.clone();
                cur.push(comp);
                match fs::create_dir(&cur) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e).ctx(|| format!("create cgroup {}", cur.display())),
                }
                if ctrl == "cpuset" {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        if read_file(&cur, f).is_some_and(|v| v.is_empty()) {
                            let v = read_file(&parent, f).unwrap_or_default();
                            write_file(&cur, f, &v)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Apply resource limits.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        if let Some(cpu) = r.cpu() {
            if let Some(d) = self.dir("cpu") {
                if let Some(s) = cpu.shares().filter(|s| *s != 0) {
                    write_file(&d, "cpu.shares", &s.to_string())?;
                }
                if let Some(p) = cpu.period().filter(|p| *p != 0) {
                    write_file(&d, "cpu.cfs_period_us", &p.to_string())?;
                }
                if let Some(q) = cpu.quota().filter(|q| *q != 0) {
                    write_file(&d, "cpu.cfs_quota_us", &q.to_string())?;
                }
                if let Some(p) = cpu.realtime_period().filter(|p| *p != 0) {
                    write_file(&d, "cpu.rt_period_us", &p.to_string())?;
                }
                if let Some(rt) = cpu.realtime_runtime().filter(|p| *p != 0) {
                    write_file(&d, "cpu.rt_runtime_us", &rt.to_string())?;
                }
            }
            if let Some(d) = self.dir("cpuset") {
                if let Some(c) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
                    write_file(&d, "cpuset.cpus", c)?;
                }
                if let Some(m) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
                    write_file(&d, "cpuset.mems", m)?;
                }
            }
        }
        if let (Some(m), Some(d)) = (r.memory(), self.dir("memory")) {
            self.apply_memory(&d, m)?;
        }
        if let (Some(p), Some(d)) = (r.pids(), self.dir("pids")) {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".to_string()
            };
            write_file(&d, "pids.max", &v)?;
        }
        if let (true, Some(d)) = (r.devices().is_some(), self.dir("devices")) {
            let rules = devices::rules(r)?;
            // Start from deny-all unless the first rule allows everything (runc's model).
            if !rules.first().is_some_and(|x| x.allow && x.typ.is_none()) {
                write_file(&d, "devices.deny", "a")?;
            }
            for rule in &rules {
                let f = if rule.allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                write_file(&d, f, &rule.v1_line())?;
            }
        }
        if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
            return Err(Error::config(
                "linux.resources.unified",
                "cgroup v2 settings given but this host uses cgroup v1",
            ));
        }
        Ok(())
    }

    fn apply_memory(&self, d: &Path, m: &oci_spec::runtime::LinuxMemory) -> Result<()> {
        let limit = m.limit().filter(|l| *l != 0);
        let swap = m.swap().filter(|s| *s != 0);
        let have_memsw = d.join("memory.memsw.limit_in_bytes").exists();
        let set_swap = |v: i64| -> Result<()> {
            if have_memsw {
                write_file(d, "memory.memsw.limit_in_bytes", &v.to_string())
            } else {
                tracing::warn!("swap accounting is off: linux.resources.memory.swap ignored");
                Ok(())
            }
        };
        match (limit, swap) {
            (Some(l), Some(s)) => {
                // memsw must stay >= memory: raise memsw first when growing.
                let cur_sw = read_file(d, "memory.memsw.limit_in_bytes")
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(i64::MAX);
                if s == -1 || l == -1 || l > cur_sw || s > cur_sw {
                    set_swap(s)?;
                    write_file(d, "memory.limit_in_bytes", &l.to_string())?;
                } else {
                    write_file(d, "memory.limit_in_bytes", &l.to_string())?;
                    set_swap(s)?;
                }
            }
            (Some(l), None) => write_file(d, "memory.limit_in_bytes", &l.to_string())?,
            (None, Some(s)) => set_swap(s)?,
            (None, None) => {}
        }
        if let Some(r) = m.reservation().filter(|r| *r != 0) {
            write_file(d, "memory.soft_limit_in_bytes", &r.to_string())?;
        }
        if let Some(s) = m.swappiness() {
            if s > 100 {
                return Err(Error::config(
                    "linux.resources.memory.swappiness",
                    format!("{s} is out of range 0-100"),
                ));
            }
            write_file(d, "memory.swappiness", &s.to_string())?;
        }
        if m.disable_oom_killer() == Some(true) {
            write_file(d, "memory.oom_control", "1")?;
        }
        Ok(())
    }

    /// Freeze or thaw via the freezer controller and wait for the state to settle.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let d = self
            .dir("freezer")
            .ok_or_else(|| Error::Other("the freezer cgroup controller is not mounted".into()))?;
        let want = if frozen { "FROZEN" } else { "THAWED" };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            write_file(&d, "freezer.state", want)?;
            if read_file(&d, "freezer.state").as_deref() == Some(want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Other(format!(
                    "cgroup {} did not reach {want}",
                    d.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether the freezer says FROZEN (or FREEZING).
    pub fn is_frozen(&self) -> bool {
        self.dir("freezer")
            .and_then(|d| read_file(&d, "freezer.state"))
            .is_some_and(|s| s != "THAWED")
    }

    /// CPU (cpuacct, cpu), memory and pids accounting of the controllers this host has.
    pub fn stats(&self) -> Stats {
        let mut st = Stats::default();
        if let Some(d) = self.dir("cpuacct") {
            let ticks = read_keyed(&d, "cpuacct.stat");
            // cpuacct.stat is in USER_HZ ticks (100/s); runc reports nanoseconds.
            let tick_ns = 10_000_000u64;
            st.cpu.usage = CpuUsage {
                total_ns: read_u64(&d, "cpuacct.usage").unwrap_or(0),
                per_cpu_ns: read_file(&d, "cpuacct.usage_percpu")
                    .map(|s| {
                        s.split_whitespace()
                            .filter_map(|x| x.parse().ok())
                            .collect()
                    })
                    .unwrap_or_default(),
                kernel_ns: ticks.get("system").copied().unwrap_or(0) * tick_ns,
                user_ns: ticks.get("user").copied().unwrap_or(0) * tick_ns,
            };
        }
        if let Some(d) = self.dir("cpu") {
            let t = read_keyed(&d, "cpu.stat");
            let g = |k: &str| t.get(k).copied().unwrap_or(0);
            st.cpu.throttling = Throttling {
                periods: g("nr_periods"),
                throttled_periods: g("nr_throttled"),
                throttled_time_ns: g("throttled_time"),
            };
        }
        if let Some(d) = self.dir("memory") {
            let entry = |p: &str| MemoryEntry {
                usage: read_u64(&d, &format!("{p}usage_in_bytes")).unwrap_or(0),
                max: read_u64(&d, &format!("{p}max_usage_in_bytes")).unwrap_or(0),
                limit: read_limit(&d, &format!("{p}limit_in_bytes")),
                failcnt: read_u64(&d, &format!("{p}failcnt")).unwrap_or(0),
            };
            st.memory = MemoryStats {
                usage: entry("memory."),
                swap: entry("memory.memsw."),
                kernel: entry("memory.kmem."),
                kernel_tcp: entry("memory.kmem.tcp."),
                raw: read_keyed(&d, "memory.stat"),
                events: read_keyed(&d, "memory.oom_control"),
            };
        }
        if let Some(d) = self.dir("pids") {
            st.pids = PidsStats {
                current: read_u64(&d, "pids.current").unwrap_or(0),
                limit: read_limit(&d, "pids.max"),
            };
        }
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};

    /// A fake v1 hierarchy: one directory per controller with the files the kernel has.
    fn fake() -> (tempfile::TempDir, V1) {
        let tmp = tempfile::tempdir().unwrap();
        let mut paths = BTreeMap::new();
        for c in ["cpu", "cpuset", "memory", "devices"] {
            fs::create_dir_all(tmp.path().join(c)).unwrap();
            paths.insert(c.to_string(), PathBuf::from("pod/ctr"));
        }
        fs::write(tmp.path().join("cpuset/cpuset.cpus"), "0-1").unwrap();
        fs::write(tmp.path().join("cpuset/cpuset.mems"), "0").unwrap();
        let cg = V1 {
            root: tmp.path().to_path_buf(),
            paths,
        };
        (tmp, cg)
    }

    #[test]
    fn apply_writes_v1_files() {
        let (tmp, cg) = fake();
        cg.create().unwrap();
        let d = |c: &str| tmp.path().join(c).join("pod/ctr");
        fs::write(
            d("memory").join("memory.memsw.limit_in_bytes"),
            "9223372036854771712",
        )
        .unwrap();
        let r = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(25_000i64)
                    .period(100_000u64)
                    .cpus("1")
                    .build()
                    .unwrap(),
            )
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .swap(96i64 << 20)
                    .build()
                    .unwrap(),
            )
            .devices(vec![])
            .build()
            .unwrap();
        cg.apply(&r).unwrap();
        let rd = |c: &str, f: &str| fs::read_to_string(d(c).join(f)).unwrap();
        assert_eq!(rd("cpu", "cpu.shares"), "512");
        assert_eq!(rd("cpu", "cpu.cfs_quota_us"), "25000");
        assert_eq!(rd("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(rd("cpuset", "cpuset.cpus"), "1");
        assert_eq!(
            rd("memory", "memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            rd("memory", "memory.memsw.limit_in_bytes"),
            (96u64 << 20).to_string()
        );
        // The last device rule written is the last default rule (files keep the last write).
        assert_eq!(rd("devices", "devices.allow"), "c 10:200 rwm");
        assert_eq!(rd("devices", "devices.deny"), "a");
    }

    #[test]
    fn create_fills_an_empty_cpuset_level_made_by_someone_else() {
        let (tmp, cg) = fake();
        // Another create made "pod" and has not written its cpus yet.
        let pod = tmp.path().join("cpuset/pod");
        fs::create_dir(&pod).unwrap();
        fs::write(pod.join("cpuset.cpus"), "").unwrap();
        fs::write(pod.join("cpuset.mems"), "").unwrap();
        cg.create().unwrap();
        assert_eq!(fs::read_to_string(pod.join("cpuset.cpus")).unwrap(), "0-1");
        assert_eq!(fs::read_to_string(pod.join("cpuset.mems")).unwrap(), "0");
    }

    #[test]
    fn stats_read_v1_files() {
        let (tmp, mut cg) = fake();
        for c in ["cpuacct", "pids"] {
            fs::create_dir_all(tmp.path().join(c)).unwrap();
            cg.paths.insert(c.to_string(), PathBuf::from("pod/ctr"));
        }
        cg.create().unwrap();
        let w = |c: &str, f: &str, v: &str| {
            fs::write(tmp.path().join(c).join("pod/ctr").join(f), v).unwrap()
        };
        w("cpuacct", "cpuacct.usage", "123456789\n");
        w("cpuacct", "cpuacct.usage_percpu", "100 200 \n");
        w("cpuacct", "cpuacct.stat", "user 7\nsystem 3\n");
        w(
            "cpu",
            "cpu.stat",
            "nr_periods 10\nnr_throttled 2\nthrottled_time 5000\n",
        );
        w("memory", "memory.usage_in_bytes", "4096\n");
        w("memory", "memory.limit_in_bytes", "67108864\n");
        w("memory", "memory.failcnt", "1\n");
        w("memory", "memory.stat", "cache 8192\nrss 4096\n");
        w(
            "memory",
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        w("pids", "pids.current", "3\n");
        w("pids", "pids.max", "max\n");
        let st = cg.stats();
        assert_eq!(st.cpu.usage.total_ns, 123_456_789);
        assert_eq!(st.cpu.usage.per_cpu_ns, vec![100, 200]);
        assert_eq!(st.cpu.usage.user_ns, 70_000_000);
        assert_eq!(st.cpu.usage.kernel_ns, 30_000_000);
        assert_eq!(st.cpu.throttling.throttled_periods, 2);
        assert_eq!(st.cpu.throttling.throttled_time_ns, 5000);
        assert_eq!(st.memory.usage.usage, 4096);
        assert_eq!(st.memory.usage.limit, 64 << 20);
        assert_eq!(st.memory.usage.failcnt, 1);
        assert_eq!(st.memory.raw.get("cache"), Some(&8192));
        assert_eq!(st.memory.events.get("oom_kill"), Some(&2));
        assert_eq!(
            (st.pids.current, st.pids.limit),
            (3, 0),
            "max reads as unlimited"
        );
        let oom = super::super::Cgroup::V1(cg.clone()).oom_kills();
        assert_eq!(oom, 2);
        // runc's `events --stats` field names.
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(
            json["cpu"]["usage"]["percpu"],
            serde_json::json!([100, 200])
        );
        assert_eq!(json["memory"]["usage"]["limit"], 67108864);
        assert!(
            json["memory"].get("kernelTCP").is_some() && json["memory"].get("events").is_none()
        );
    }

    #[test]
    fn unified_is_refused_on_v1() {
        let (_tmp, cg) = fake();
        cg.create().unwrap();
        let mut u = std::collections::HashMap::new();
        u.insert("memory.high".to_string(), "1".to_string());
        let r = LinuxResourcesBuilder::default().unified(u).build().unwrap();
        let e = cg.apply(&r).unwrap_err().to_string();
        assert!(e.contains("linux.resources.unified"), "{e}");
    }
}
