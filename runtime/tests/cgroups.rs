//! Host tier: cgroup limits are written where they belong (read back from the cgroup
//! files) and hold (a memory hog is OOM-killed, a fork bomb hits pids.max, a busy loop
//! is throttled). The files are chosen by the host's mode, so the same tests run under
//! cgroup v1 (this host) and pure v2 (the VM tier).

mod common;

use std::time::Duration;

use common::{is_v2, wait_exit, Bundle};
use nodus_testkit::{try_wait_until, wait_until};
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
    // busybox sh gives up (and exits) at its first failed fork, before /tmp/done: wait for
    // the limit to have been hit and the failure reported.
    wait_until(Duration::from_secs(5), "a fork refused by pids.max", || {
        let events = b.cg_read("pids", "pids.events");
        let err = std::fs::read_to_string(b.rootfs().join("tmp/forkerr")).unwrap_or_default();
        events.starts_with("max ") && events != "max 0" && err.contains("fork")
    });
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
    let throttled = wait_until(Duration::from_secs(5), "nr_throttled > 2", || {
        let stat = b.cg_read("cpu", "cpu.stat");
        let throttled: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if throttled > 2 {
            Ok(throttled)
        } else {
            Err(format!("nr_throttled {throttled}"))
        }
    });
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

/// The cgroup2 mount: `/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified` on a
/// hybrid one like ours (device programs work there too: they follow the process's v2
/// cgroup whatever the v1 controllers do).
fn cgroup2_root() -> Option<std::path::PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| nodus_runtime::cgroups::is_unified_at(p))
}

/// Run `script` with sh in the cgroup v2 directory `dir`; its stdout and stderr.
fn sh_in_cgroup(dir: &std::path::Path, script: &str) -> String {
    let procs = dir.join("cgroup.procs");
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} || exit 99; {script}",
            procs.display()
        ))
        .output()
        .unwrap();
    assert_ne!(
        o.status.code(),
        Some(99),
        "could not join {}",
        dir.display()
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The device eBPF program on a real kernel: rules hold, an update swaps the program
/// (one attached, the old one freed), removing the cgroup frees the last one.
#[test]
fn v2_device_program_filters_replaces_and_goes_with_the_cgroup() {
    use nodus_runtime::cgroups::{devices, v2::V2};
    let Some(root) = cgroup2_root() else {
        eprintln!("SKIP v2_device_program: no cgroup2 mount at /sys/fs/cgroup(/unified)");
        return;
    };
    let cg = V2 {
        root: root.clone(),
        path: common::unique("nodus-devcg").into(),
        systemd: None,
    };
    cg.create().unwrap();
    let dir = cg.dir();
    let cleanup = scopeguard(dir.clone());
    let with = |json: serde_json::Value| {
        let mut r = oci_spec::runtime::LinuxResources::default();
        r.set_devices(Some(serde_json::from_value(json).unwrap()));
        devices::rules(&r).unwrap()
    };
    let probe = "echo x > /dev/null; echo null=$?; echo x > /dev/full; echo full=$?; \
                 head -c 1 /dev/zero > /dev/zero; echo zero=$?";

    // The defaults only.
    devices::install(
        &dir,
        &with(serde_json::json!([{"allow": false, "access": "rwm"}])),
    )
    .unwrap();
    let first = devices::attached(&dir).unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    let out = sh_in_cgroup(&dir, probe);
    assert!(out.contains("null=0") && out.contains("zero=0"), "{out}");
    // /dev/full allows the open; the write itself fails (ENOSPC).
    assert!(
        out.contains("full=1") && !out.contains("not permitted"),
        "{out}"
    );

    // Rules straight from the generator, without the defaults: /dev/zero only.
    let only_zero = with(serde_json::json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rw"}
    ]));
    devices::install(&dir, &only_zero[..2]).unwrap();
    let second = devices::attached(&dir).unwrap();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first);
    wait_until(
        Duration::from_secs(10),
        "the replaced program to be freed",
        || !devices::program_exists(first[0]),
    );
    let out = sh_in_cgroup(&dir, probe);
    assert!(!out.contains("null=0") && out.contains("zero=0"), "{out}");
    assert!(out.contains("/dev/null: Operation not permitted"), "{out}");
    assert!(out.contains("/dev/full: Operation not permitted"), "{out}");

    drop(cleanup);
    assert!(!dir.exists());
    wait_until(
        Duration::from_secs(10),
        "the program to go with the cgroup",
        || !devices::program_exists(second[0]),
    );
}

/// Removes a cgroup directory on drop (after its processes have exited).
struct CgroupDir(std::path::PathBuf);

fn scopeguard(dir: std::path::PathBuf) -> CgroupDir {
    CgroupDir(dir)
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        // A cgroup whose last process just exited can be busy for a moment.
        let _ = try_wait_until(Duration::from_secs(2), "the cgroup to be removed", || {
            std::fs::remove_dir(&self.0).is_ok() || !self.0.exists()
        });
    }
}

/// Device rules through the runtime (v1 files here, the eBPF program on v2): a node of
/// an unregistered char device (240:0, "local use") answers ENXIO when the rules let
/// the access through and EPERM when they do not. `update` with devices replaces the
/// rules; an update without devices keeps them.
#[test]
fn device_rules_apply_and_update() {
    let mut b = Bundle::new(&["sh", "-c", "mknod /dev/exp c 240 0 && exec sleep 1000"]);
    b.edit(|c| {
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_MKNOD"));
        }
        c["linux"]["resources"]["devices"] = json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 240, "access": "r"},
            // Overridden by the default rules, which come last (as in runc).
            {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
        ]);
    });
    b.start();
    let probe = || {
        wait_until(Duration::from_secs(10), "the container's /dev/exp", || {
            b.rootfs().join("dev").exists()
                && b.rt(&["exec", &b.id, "test", "-c", "/dev/exp"])
                    .status
                    .success()
        });
        let o = b.rt(&[
            "exec",
            &b.id,
            "sh",
            "-c",
            "cat /dev/exp; echo x > /dev/exp; echo x > /dev/null && echo null-ok",
        ]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let line = |op: &str| {
            err.lines()
                .find(|l| l.contains(op))
                .unwrap_or_else(|| panic!("no {op} error in {err:?}"))
                .to_string()
        };
        assert!(out.contains("null-ok"), "{out} {err}");
        (line("cat"), line("create"))
    };
    let (read, write) = probe();
    assert!(read.contains("No such device or address"), "{read}");
    assert!(write.contains("Operation not permitted"), "{write}");

    let res = b.path().join("devices.json");
    std::fs::write(
        &res,
        json!({"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 240, "minor": 0, "access": "w"}
        ]})
        .to_string(),
    )
    .unwrap();
    b.ok(&["update", "--resources", res.to_str().unwrap(), &b.id]);
    let (read, write) = probe();
    assert!(read.contains("Operation not permitted"), "{read}");
    assert!(write.contains("No such device or address"), "{write}");

    b.ok(&["update", "--pids-limit", "50", &b.id]);
    let (read, write) = probe();
    assert!(read.contains("Operation not permitted"), "{read}");
    assert!(write.contains("No such device or address"), "{write}");
    b.ok(&["delete", "--force", &b.id]);
    assert!(b.cgroup_left().is_empty(), "{:?}", b.cgroup_left());
}
