//! cgroup side of a task: its metrics in the formats containerd understands
//! (`io.containerd.cgroups.v1.Metrics` on cgroup v1 and hybrid hosts,
//! `io.containerd.cgroups.v2.Metrics` on pure cgroup v2) and the OOM watcher that turns
//! the kernel's OOM notifications into TaskOOM events.

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
use nodus_runtime::cgroups as runtime_cgroups;
use nodus_runtime::cgroups::stats::{MemoryEntry, Stats};

/// A container's cgroup and the OOM kills already reported for it.
#[derive(Debug, Clone)]
pub(crate) struct Cgroup {
    /// Resolved and read by the runtime library, as the runtime made it.
    cgroup: runtime_cgroups::Cgroup,
    /// OOM kills already reported; the lock is held while one is reported, so the exit
    /// path and the watcher thread publish in the order they saw the kill.
    oom_seen: Arc<Mutex<u64>>,
}

impl Cgroup {
    /// The cgroup of container `id` in `bundle`: its spec's `linux.cgroupsPath`, resolved by
    /// the runtime library exactly as the runtime resolved it when it made the cgroup
    /// (absolute, relative to our own cgroup, or the id when unset).
    pub(crate) fn from_bundle(bundle: &Path, id: &str) -> Result<Cgroup> {
        let path = bundle.join("config.json");
        let text = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let spec: serde_json::Value =
            serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))?;
        let cgroups_path = spec
            .pointer("/linux/cgroupsPath")
            .and_then(|v| v.as_str())
            .map(Path::new);
        let cgroup = runtime_cgroups::Cgroup::resolve(cgroups_path, id)
            .with_context(|| format!("linux.cgroupsPath {cgroups_path:?}"))?;
        // Kills from before this shim (none, for a new cgroup) are not ours to report.
        let oom_seen = Arc::new(Mutex::new(cgroup.oom_kills()));
        Ok(Cgroup { cgroup, oom_seen })
    }

    /// The processes in the cgroup.
    pub(crate) fn procs(&self) -> Vec<i32> {
        self.cgroup.pids().unwrap_or_default()
    }

    /// Calls `report` (under the lock) if OOM kills happened since the last report: each
    /// kill is reported once, by whichever of the watcher thread and the exit path sees it
    /// first, and always before the exit path goes on to report the exit it caused (else
    /// CRI would record the exit's reason as Error, not OOMKilled).
    pub(crate) fn report_new_oom_kills(&self, report: impl FnOnce()) {
        let mut seen = self.oom_seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.cgroup.oom_kills();
        if now > *seen {
            *seen = now;
            report();
        }
    }

    /// The metrics, wrapped as containerd expects them in StatsResponse.
    pub(crate) fn metrics(&self) -> Result<Any> {
        let stats = self.cgroup.stats();
        let (type_url, value) = match &self.cgroup {
            runtime_cgroups::Cgroup::V1(_) => (
                "io.containerd.cgroups.v1.Metrics",
                metrics_v1(&stats).write_to_bytes()?,
            ),
            runtime_cgroups::Cgroup::V2(_) => (
                "io.containerd.cgroups.v2.Metrics",
                metrics_v2(&stats).write_to_bytes()?,
            ),
        };
        Ok(Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        })
    }

    /// Watches for OOM notifications of this cgroup on a thread, calling `on_oom` for each
    /// new kill, until the cgroup is removed.
    pub(crate) fn watch_oom(&self, on_oom: impl Fn() + Send + 'static) -> Result<()> {
        let Some(dir) = self.cgroup.memory_dir() else {
            return Ok(()); // no memory controller: no OOM kills to see
        };
        let this = self.clone();
        let check = move || this.report_new_oom_kills(&on_oom);
        match &self.cgroup {
            runtime_cgroups::Cgroup::V1(_) => watch_oom_v1(dir, check),
            runtime_cgroups::Cgroup::V2(_) => watch_oom_v2(dir, check),
        }
    }
}

/// containerd's cgroup v1 Metrics (the fields its CRI and `ctr task metrics` read).
fn metrics_v1(st: &Stats) -> v1::Metrics {
    let entry = |e: &MemoryEntry| v1::MemoryEntry {
        usage: e.usage,
        limit: e.limit,
        max: e.max,
        failcnt: e.failcnt,
        ..Default::default()
    };
    let raw = &st.memory.raw;
    let g = |k: &str| raw.get(k).copied().unwrap_or(0);
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
        usage: MessageField::some(entry(&st.memory.usage)),
        swap: MessageField::some(entry(&st.memory.swap)),
        kernel: MessageField::some(entry(&st.memory.kernel)),
        kernel_tcp: MessageField::some(entry(&st.memory.kernel_tcp)),
        ..Default::default()
    };
    let usage = &st.cpu.usage;
    let throttling = &st.cpu.throttling;
    v1::Metrics {
        pids: MessageField::some(v1::PidsStat {
            current: st.pids.current,
            limit: st.pids.limit,
            ..Default::default()
        }),
        cpu: MessageField::some(v1::CPUStat {
            usage: MessageField::some(v1::CPUUsage {
                total: usage.total_ns,
                user: usage.user_ns,
                kernel: usage.kernel_ns,
                per_cpu: usage.per_cpu_ns.clone(),
                ..Default::default()
            }),
            throttling: MessageField::some(v1::Throttle {
                periods: throttling.periods,
                throttled_periods: throttling.throttled_periods,
                throttled_time: throttling.throttled_time_ns,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(memory),
        ..Default::default()
    }
}

/// containerd's cgroup v2 Metrics.
fn metrics_v2(st: &Stats) -> v2::Metrics {
    let raw = &st.memory.raw;
    let m = |k: &str| raw.get(k).copied().unwrap_or(0);
    let events = &st.memory.events;
    let e = |k: &str| events.get(k).copied().unwrap_or(0);
    let usage = &st.cpu.usage;
    let throttling = &st.cpu.throttling;
    v2::Metrics {
        pids: MessageField::some(v2::PidsStat {
            current: st.pids.current,
            limit: st.pids.limit,
            ..Default::default()
        }),
        cpu: MessageField::some(v2::CPUStat {
            usage_usec: usage.total_ns / 1000,
            user_usec: usage.user_ns / 1000,
            system_usec: usage.kernel_ns / 1000,
            nr_periods: throttling.periods,
            nr_throttled: throttling.throttled_periods,
            throttled_usec: throttling.throttled_time_ns / 1000,
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
            usage: st.memory.usage.usage,
            usage_limit: st.memory.usage.limit,
            swap_usage: st.memory.swap.usage,
            swap_limit: st.memory.swap.limit,
            max_usage: st.memory.usage.max,
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

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    crate::thread::spawn(name, f).with_context(|| format!("spawn {name} thread"))
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
