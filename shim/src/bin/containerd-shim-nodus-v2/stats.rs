//! cgroup side of a task: its metrics in the formats containerd understands
//! (`io.containerd.cgroups.v1.Metrics` on cgroup v1 and hybrid hosts,
//! `io.containerd.cgroups.v2.Metrics` on pure cgroup v2) and the OOM watcher that turns
//! the kernel's OOM notifications into TaskOOM events.

use crate::THREAD_STACK;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use nodus_shim::cgroups as runtime_cgroups;

/// USER_HZ, the unit of cpuacct.stat.
const NS_PER_TICK: u64 = 10_000_000;

/// Where a container's cgroup is.
#[derive(Debug, Clone)]
pub enum Location {
    /// v1 (or hybrid): controller -> directory.
    V1 { dirs: BTreeMap<String, PathBuf> },
    /// Pure v2: one directory.
    V2 { dir: PathBuf },
}

/// A container's cgroup and the OOM kills already reported for it.
#[derive(Debug, Clone)]
pub struct Cgroup {
    loc: Location,
    /// OOM kills already reported; the lock is held while one is reported, so the exit
    /// path and the watcher thread publish in the order they saw the kill.
    oom_seen: Arc<Mutex<u64>>,
}

impl Cgroup {
    /// The cgroup of container `id` in `bundle`: its spec's `linux.cgroupsPath`, resolved by
    /// the runtime library exactly as the runtime resolved it when it made the cgroup
    /// (absolute, relative to our own cgroup, or the id when unset).
    pub fn from_bundle(bundle: &Path, id: &str) -> Result<Cgroup> {
        let path = bundle.join("config.json");
        let text = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let spec: serde_json::Value =
            serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))?;
        let cgroups_path = spec
            .pointer("/linux/cgroupsPath")
            .and_then(|v| v.as_str())
            .map(Path::new);
        let loc = match runtime_cgroups::Cgroup::resolve(cgroups_path, id)
            .with_context(|| format!("linux.cgroupsPath {cgroups_path:?}"))?
        {
            runtime_cgroups::Cgroup::V1(v1) => Location::V1 { dirs: v1.dirs() },
            runtime_cgroups::Cgroup::V2(v2) => Location::V2 { dir: v2.dir() },
        };
        let cgroup = Cgroup {
            loc,
            oom_seen: Arc::default(),
        };
        // Kills from before this shim (none, for a new cgroup) are not ours to report.
        *cgroup.oom_seen.lock().unwrap_or_else(|e| e.into_inner()) = cgroup.oom_kills();
        Ok(cgroup)
    }

    /// The directory of a v1 controller (empty, so reads find nothing, when the host does
    /// not mount it).
    fn v1(&self, controller: &str) -> PathBuf {
        match &self.loc {
            Location::V1 { dirs } => dirs.get(controller).cloned().unwrap_or_default(),
            Location::V2 { dir } => dir.clone(),
        }
    }

    /// The processes in the cgroup.
    pub fn procs(&self) -> Vec<i32> {
        let file = match &self.loc {
            Location::V1 { .. } => self.v1("memory").join("cgroup.procs"),
            Location::V2 { dir } => dir.join("cgroup.procs"),
        };
        fs::read_to_string(file)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// The kernel's count of OOM kills in this cgroup (`oom_kill` of memory.oom_control on
    /// v1, of memory.events on v2).
    fn oom_kills(&self) -> u64 {
        let file = match &self.loc {
            Location::V1 { .. } => self.v1("memory").join("memory.oom_control"),
            Location::V2 { dir } => dir.join("memory.events"),
        };
        read_kv(&file).get("oom_kill").copied().unwrap_or(0)
    }

    /// Calls `report` (under the lock) if OOM kills happened since the last report: each
    /// kill is reported once, by whichever of the watcher thread and the exit path sees it
    /// first, and always before the exit path goes on to report the exit it caused (else
    /// CRI would record the exit's reason as Error, not OOMKilled).
    pub fn report_new_oom_kills(&self, report: impl FnOnce()) {
        let mut seen = self.oom_seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.oom_kills();
        if now > *seen {
            *seen = now;
            report();
        }
    }

    /// The metrics, wrapped as containerd expects them in StatsResponse.
    pub fn metrics(&self) -> Result<Any> {
        let (type_url, value) = match &self.loc {
            Location::V1 { .. } => (
                "io.containerd.cgroups.v1.Metrics",
                self.metrics_v1().write_to_bytes()?,
            ),
            Location::V2 { dir } => (
                "io.containerd.cgroups.v2.Metrics",
                metrics_v2(dir).write_to_bytes()?,
            ),
        };
        Ok(Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        })
    }

    fn metrics_v1(&self) -> v1::Metrics {
        let pids_dir = self.v1("pids");
        let pids = v1::PidsStat {
            current: read_u64(&pids_dir.join("pids.current")),
            limit: read_u64(&pids_dir.join("pids.max")),
            ..Default::default()
        };
        let acct = self.v1("cpuacct");
        let stat = read_kv(&acct.join("cpuacct.stat"));
        let per_cpu = fs::read_to_string(acct.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let cpu_stat = read_kv(&self.v1("cpu").join("cpu.stat"));
        let cpu = v1::CPUStat {
            usage: MessageField::some(v1::CPUUsage {
                total: read_u64(&acct.join("cpuacct.usage")),
                user: stat.get("user").copied().unwrap_or(0) * NS_PER_TICK,
                kernel: stat.get("system").copied().unwrap_or(0) * NS_PER_TICK,
                per_cpu,
                ..Default::default()
            }),
            throttling: MessageField::some(v1::Throttle {
                periods: cpu_stat.get("nr_periods").copied().unwrap_or(0),
                throttled_periods: cpu_stat.get("nr_throttled").copied().unwrap_or(0),
                throttled_time: cpu_stat.get("throttled_time").copied().unwrap_or(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mem = self.v1("memory");
        let entry = |prefix: &str| v1::MemoryEntry {
            usage: read_u64(&mem.join(format!("{prefix}usage_in_bytes"))),
            limit: read_u64(&mem.join(format!("{prefix}limit_in_bytes"))),
            max: read_u64(&mem.join(format!("{prefix}max_usage_in_bytes"))),
            failcnt: read_u64(&mem.join(format!("{prefix}failcnt"))),
            ..Default::default()
        };
        let s = read_kv(&mem.join("memory.stat"));
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        let memory = v1::MemoryStat {
            cache: g("cache"),
            rss: g("rss"),
            rss_huge: g("rss_huge"),
            mapped_file: g("mapped_file"),
            dirty: g("dirty"),
            writeback: g("writeback"),
            pg_pg_in: g("pgpgin"),
            pg_pg_out: g("pgpgout"),
            pg_fault: g("pgfault"),
            pg_maj_fault: g("pgmajfault"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            hierarchical_memory_limit: g("hierarchical_memory_limit"),
            hierarchical_swap_limit: g("hierarchical_memsw_limit"),
            total_cache: g("total_cache"),
            total_rss: g("total_rss"),
            total_rss_huge: g("total_rss_huge"),
            total_mapped_file: g("total_mapped_file"),
            total_dirty: g("total_dirty"),
            total_writeback: g("total_writeback"),
            total_pg_pg_in: g("total_pgpgin"),
            total_pg_pg_out: g("total_pgpgout"),
            total_pg_fault: g("total_pgfault"),
            total_pg_maj_fault: g("total_pgmajfault"),
            total_inactive_anon: g("total_inactive_anon"),
            total_active_anon: g("total_active_anon"),
            total_inactive_file: g("total_inactive_file"),
            total_active_file: g("total_active_file"),
            total_unevictable: g("total_unevictable"),
            usage: MessageField::some(entry("memory.")),
            swap: MessageField::some(entry("memory.memsw.")),
            kernel: MessageField::some(entry("memory.kmem.")),
            kernel_tcp: MessageField::some(entry("memory.kmem.tcp.")),
            ..Default::default()
        };
        v1::Metrics {
            pids: MessageField::some(pids),
            cpu: MessageField::some(cpu),
            memory: MessageField::some(memory),
            ..Default::default()
        }
    }

    /// Watches for OOM notifications of this cgroup on a thread, calling `on_oom` for each
    /// new kill, until the cgroup is removed.
    pub fn watch_oom(&self, on_oom: impl Fn() + Send + 'static) -> Result<()> {
        let this = self.clone();
        let check = move || this.report_new_oom_kills(&on_oom);
        match &self.loc {
            Location::V1 { .. } => watch_oom_v1(self.v1("memory"), check),
            Location::V2 { dir } => watch_oom_v2(dir.clone(), check),
        }
    }
}

fn metrics_v2(dir: &Path) -> v2::Metrics {
    let cpu = read_kv(&dir.join("cpu.stat"));
    let c = |k: &str| cpu.get(k).copied().unwrap_or(0);
    let mem = read_kv(&dir.join("memory.stat"));
    let m = |k: &str| mem.get(k).copied().unwrap_or(0);
    let ev = read_kv(&dir.join("memory.events"));
    let e = |k: &str| ev.get(k).copied().unwrap_or(0);
    v2::Metrics {
        pids: MessageField::some(v2::PidsStat {
            current: read_u64(&dir.join("pids.current")),
            limit: read_u64(&dir.join("pids.max")),
            ..Default::default()
        }),
        cpu: MessageField::some(v2::CPUStat {
            usage_usec: c("usage_usec"),
            user_usec: c("user_usec"),
            system_usec: c("system_usec"),
            nr_periods: c("nr_periods"),
            nr_throttled: c("nr_throttled"),
            throttled_usec: c("throttled_usec"),
            ..Default::default()
        }),
        memory: MessageField::some(v2::MemoryStat {
            anon: m("anon"),
            file: m("file"),
            kernel_stack: m("kernel_stack"),
            slab: m("slab"),
            sock: m("sock"),
            shmem: m("shmem"),
            file_mapped: m("file_mapped"),
            file_dirty: m("file_dirty"),
            file_writeback: m("file_writeback"),
            anon_thp: m("anon_thp"),
            inactive_anon: m("inactive_anon"),
            active_anon: m("active_anon"),
            inactive_file: m("inactive_file"),
            active_file: m("active_file"),
            unevictable: m("unevictable"),
            slab_reclaimable: m("slab_reclaimable"),
            slab_unreclaimable: m("slab_unreclaimable"),
            pgfault: m("pgfault"),
            pgmajfault: m("pgmajfault"),
            usage: read_u64(&dir.join("memory.current")),
            usage_limit: read_u64(&dir.join("memory.max")),
            swap_usage: read_u64(&dir.join("memory.swap.current")),
            swap_limit: read_u64(&dir.join("memory.swap.max")),
            max_usage: read_u64(&dir.join("memory.peak")),
            ..Default::default()
        }),
        memory_events: MessageField::some(v2::MemoryEvents {
            low: e("low"),
            high: e("high"),
            max: e("max"),
            oom: e("oom"),
            oom_kill: e("oom_kill"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A cgroup file holding one number; "max" and missing files read as 0.
fn read_u64(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A flat-keyed cgroup file (`key value` lines).
fn read_kv(path: &Path) -> HashMap<String, u64> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(THREAD_STACK)
        .spawn(f)
        .map(|_| ())
        .with_context(|| format!("spawn {name} thread"))
}

/// cgroup v1: an eventfd registered on memory.oom_control through cgroup.event_control.
/// The kernel also signals it when the cgroup goes away, which ends the watch.
fn watch_oom_v1(dir: PathBuf, on_event: impl Fn() + Send + 'static) -> Result<()> {
    let control = fs::File::open(dir.join("memory.oom_control"))
        .with_context(|| format!("open {}/memory.oom_control", dir.display()))?;
    // SAFETY: eventfd returns a new fd or -1.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(std::io::Error::last_os_error()).context("eventfd");
    }
    // SAFETY: efd is a fresh fd we own.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()),
    )
    .with_context(|| format!("write {}/cgroup.event_control", dir.display()))?;
    spawn("oom", move || {
        let _control = control;
        let mut file = fs::File::from(efd);
        let mut buf = [0u8; 8];
        // The event also fires when the cgroup is removed, which ends the watch.
        while file.read_exact(&mut buf).is_ok() && dir.exists() {
            on_event();
        }
    })
}

/// cgroup v2: inotify on memory.events.
fn watch_oom_v2(dir: PathBuf, on_event: impl Fn() + Send + 'static) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let events = dir.join("memory.events");
    // SAFETY: inotify_init1 returns a new fd or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("inotify_init1");
    }
    // SAFETY: fd is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let cpath = std::ffi::CString::new(events.as_os_str().as_bytes())
        .context("memory.events path has a NUL byte")?;
    // SAFETY: valid fd and NUL-terminated path.
    if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), cpath.as_ptr(), libc::IN_MODIFY) } < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("watch {}", events.display()));
    }
    spawn("oom", move || {
        let mut file = fs::File::from(fd);
        let mut buf = [0u8; 4096];
        loop {
            match file.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if !dir.exists() {
                return;
            }
            on_event();
        }
    })
}
