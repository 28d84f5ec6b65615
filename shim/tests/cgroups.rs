//! Host tier: cgroup limits are written where they belong (read back from the cgroup
//! files) and hold (a memory hog is OOM-killed, a fork bomb hits pids.max, a busy loop
//! is throttled). The files are chosen by the host's mode, so the same tests run under
//! cgroup v1 (this host) and pure v2 (the VM tier).

mod common;

use std::time::Duration;

use common::{is_v2, wait_exit, Bundle};
use serde_json::json;

fn limited(args: &[&str], resources: serde_json::Value) -> Bundle {
    let mut b = Bundle::new(args);
    b.edit(|c| {
        let r = &mut c["linux"]["resources"];
        for (k, v) in resources.as_object().unwrap() {
            r[k] = v.clone();
        }
    });
    b
}

#[test]
fn limits_are_written() {
    let b = limited(
        &["sleep", "1000"],
        json!({
            "memory": {"limit": 33554432, "reservation": 16777216},
            "cpu": {"shares": 512, "quota": 20000, "period": 100000, "cpus": "0", "mems": "0"},
            "pids": {"limit": 20}
        }),
    );
    let _pid = b.start();
    assert_eq!(b.cg_read("pids", "pids.max"), "20");
    assert_eq!(b.cg_read("cpuset", "cpuset.cpus"), "0");
    assert_eq!(b.cg_read("cpuset", "cpuset.mems"), "0");
    if is_v2() {
        assert_eq!(b.cg_read("memory", "memory.max"), "33554432");
        assert_eq!(b.cg_read("memory", "memory.low"), "16777216");
        assert_eq!(b.cg_read("cpu", "cpu.weight"), "20");
        assert_eq!(b.cg_read("cpu", "cpu.max"), "20000 100000");
    } else {
        assert_eq!(b.cg_read("memory", "memory.limit_in_bytes"), "33554432");
        assert_eq!(
            b.cg_read("memory", "memory.soft_limit_in_bytes"),
            "16777216"
        );
        assert_eq!(b.cg_read("cpu", "cpu.shares"), "512");
        assert_eq!(b.cg_read("cpu", "cpu.cfs_quota_us"), "20000");
        assert_eq!(b.cg_read("cpu", "cpu.cfs_period_us"), "100000");
        let devs = b.cg_read("devices", "devices.list");
        assert!(
            devs.contains("c 1:3 rwm") && !devs.contains("a *:* rwm"),
            "{devs}"
        );
    }
    b.ok(&["delete", "--force", &b.id]);
    assert!(b.cgroup_left().is_empty(), "{:?}", b.cgroup_left());
}

#[test]
fn memory_hog_is_oom_killed() {
    let b = limited(
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
        json!({"memory": {"limit": 33554432, "swap": 33554432}}),
    );
    let pid = b.start();
    let code = wait_exit(pid, Duration::from_secs(60)).expect("hog ends");
    assert_eq!(code, 128 + libc::SIGKILL, "stdout: {}", b.stdout());
    assert!(!b.stdout().contains("survived"));
    if is_v2() {
        let ev = b.cg_read("memory", "memory.events");
        assert!(!ev.contains("oom_kill 0"), "{ev}");
    } else {
        let oc = b.cg_read("memory", "memory.oom_control");
        assert!(
            oc.contains("oom_kill ") && !oc.contains("oom_kill 0"),
            "{oc}"
        );
    }
}

#[test]
fn fork_bomb_hits_pids_max() {
    let b = limited(
        &["sh", "-c", "for i in $(seq 1 40); do sleep 1000 & done 2>/tmp/forkerr; echo spawned > /tmp/done; exec sleep 1000"],
        json!({"pids": {"limit": 8}}),
    );
    let _pid = b.start();
    for _ in 0..500 {
        if b.rootfs().join("tmp/done").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let current: u64 = b.cg_read("pids", "pids.current").parse().unwrap();
    assert!(current <= 8, "pids.current {current}");
    let events = b.cg_read("pids", "pids.events");
    assert!(events.starts_with("max ") && events != "max 0", "{events}");
    let err = std::fs::read_to_string(b.rootfs().join("tmp/forkerr")).unwrap();
    assert!(err.contains("fork"), "{err}");
    b.ok(&["delete", "--force", &b.id]);
    assert!(b.cgroup_left().is_empty(), "{:?}", b.cgroup_left());
}

#[test]
fn busy_loop_is_throttled_by_quota() {
    let b = limited(
        &["sh", "-c", "while :; do :; done"],
        json!({"cpu": {"quota": 10000, "period": 100000}}),
    );
    let _pid = b.start();
    let mut throttled = 0u64;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let stat = b.cg_read("cpu", "cpu.stat");
        throttled = stat
            .lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if throttled > 2 {
            break;
        }
    }
    assert!(throttled > 2, "nr_throttled {throttled}");
    b.ok(&["delete", "--force", &b.id]);
}

#[test]
fn relative_cgroups_path_is_below_our_own_cgroup() {
    let mut b = Bundle::new(&["sleep", "1000"]);
    let rel = common::unique("nodus-rel");
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(rel));
    let pid = b.start();
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own_pids = own
        .lines()
        .find(|l| {
            if is_v2() {
                l.starts_with("0::")
            } else {
                l.contains(":pids:")
            }
        })
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let want = format!("{own_pids}/{rel}");
    assert!(
        cg.lines()
            .any(|l| l.ends_with(&want) && (is_v2() || l.contains(":pids:"))),
        "{cg} should have {want}"
    );
    b.ok(&["delete", "--force", &b.id]);
    let dir = if is_v2() {
        format!("/sys/fs/cgroup{want}")
    } else {
        format!("/sys/fs/cgroup/pids{want}")
    };
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left");
}
