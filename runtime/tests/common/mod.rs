//! Helpers for the host-tier tests: busybox bundles with generated config.json, the
//! `nodus-runtime` binary under a private `--root`, cgroup file paths for v1 or v2,
//! and cleanup guards. The runtime library forks and must not run inside the
//! (multi-threaded) test process, so tests drive the binary.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::Duration;

use serde_json::{json, Value};

/// The runtime binary built by cargo for these tests.
pub fn runtime_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nodus-runtime"))
}

/// Unique name part: pid + counter.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Make this test process a child subreaper, so container inits (orphaned when
/// `create` exits) become our children and their exit status can be collected.
pub fn subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    });
}

/// Wait for a (reparented) process to exit; its wait status decoded as exit code or
/// 128+signal. `None` on timeout.
pub fn wait_exit(pid: i32, timeout: Duration) -> Option<i32> {
    // Some(code) once reaped; Some(None) when there is nothing to wait for (no such child).
    let reaped = nodus_testkit::try_wait_until(timeout, "the process to exit", || {
        let mut st = 0;
        // SAFETY: waitpid with WNOHANG on a pid.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            Some(Some(if libc::WIFEXITED(st) {
                libc::WEXITSTATUS(st)
            } else {
                128 + libc::WTERMSIG(st)
            }))
        } else if r < 0 {
            Some(None)
        } else {
            None
        }
    });
    reaped.ok().flatten()
}

pub fn is_v2() -> bool {
    nodus_runtime::cgroups::is_unified()
}

/// A bundle in a temp dir: busybox rootfs + config.json, plus a private state root.
/// Dropping it force-deletes its container and removes its cgroup parent.
pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub id: String,
    pub config: Value,
    /// Absolute cgroup parent of this test (removed on drop).
    pub cg_parent: String,
}

impl Bundle {
    /// A bundle running `args` with all namespaces new and a unique cgroupsPath.
    pub fn new(args: &[&str]) -> Bundle {
        subreaper();
        let dir = tempfile::Builder::new()
            .prefix("nodus-rt-")
            .tempdir()
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "root"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for a in String::from_utf8_lossy(&list.stdout).lines() {
            if a != "busybox" {
                let _ = symlink("busybox", rootfs.join("bin").join(a));
            }
        }
        let id = unique("ctr");
        let cg_parent = format!("/{}", unique("nodus-rt-test"));
        let config = default_config(args, &format!("{cg_parent}/{id}"));
        let b = Bundle {
            dir,
            id,
            config,
            cg_parent,
        };
        b.write_config();
        b
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    pub fn state_root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Rewrite config.json from `self.config`.
    pub fn write_config(&self) {
        fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    /// Change the config with `f` and write it.
    pub fn edit(&mut self, f: impl FnOnce(&mut Value)) {
        f(&mut self.config);
        self.write_config();
    }

    /// A runtime command with this bundle's state root.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(runtime_bin());
        c.arg("--root").arg(self.state_root());
        c
    }

    /// Run the runtime with `args`; stdout/stderr captured.
    pub fn rt(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nodus-runtime")
    }

    /// Like [`Self::rt`] but panics unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.rt(args);
        assert!(
            o.status.success(),
            "nodus-runtime {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `create` with stdout/stderr of the container going to files in the bundle
    /// (never to our pipes, which the container would keep open); returns the pid.
    pub fn create(&self) -> i32 {
        let pidfile = self.dir.path().join("init.pid");
        let out = fs::File::create(self.dir.path().join("stdout")).unwrap();
        let err = fs::File::create(self.dir.path().join("stderr")).unwrap();
        let st = self
            .cmd()
            .args(["create", "--bundle"])
            .arg(self.path())
            .arg("--pid-file")
            .arg(&pidfile)
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "create failed: {}",
            fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
        );
        fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// create + start; returns the init pid.
    pub fn start(&self) -> i32 {
        let pid = self.create();
        self.ok(&["start", &self.id]);
        pid
    }

    /// Run to completion: create, start, wait for the init; returns (exit code, stdout).
    pub fn run_to_end(&self) -> (i32, String) {
        let pid = self.start();
        let code = wait_exit(pid, Duration::from_secs(30)).expect("container exits");
        (code, self.stdout())
    }

    /// What the container wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// `state` as JSON.
    pub fn state(&self) -> Value {
        serde_json::from_str(&self.ok(&["state", &self.id])).unwrap()
    }

    /// The container's cgroup directory for controller `ctrl` (v1) or the v2 directory.
    pub fn cg_dir(&self, ctrl: &str) -> PathBuf {
        let rel = format!("{}/{}", self.cg_parent.trim_start_matches('/'), self.id);
        if is_v2() {
            Path::new("/sys/fs/cgroup").join(rel)
        } else {
            Path::new("/sys/fs/cgroup").join(ctrl).join(rel)
        }
    }

    /// Read a cgroup file of the container.
    pub fn cg_read(&self, ctrl: &str, file: &str) -> String {
        let p = self.cg_dir(ctrl).join(file);
        fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
            .trim()
            .to_string()
    }

    /// Whether any cgroup directory of the container is left.
    pub fn cgroup_left(&self) -> Vec<PathBuf> {
        let ctrls = [
            "cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer",
        ];
        let mut left = vec![];
        for c in ctrls {
            let d = self.cg_dir(c);
            if d.exists() {
                left.push(d);
            }
        }
        left
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["delete", "--force", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let parent = self.cg_parent.trim_start_matches('/');
        if is_v2() {
            let _ = fs::remove_dir(Path::new("/sys/fs/cgroup").join(parent));
        } else if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                let _ = fs::remove_dir(e.path().join(parent));
            }
        }
    }
}

/// runc's default spec (as `runc spec` writes it), not a terminal, running `args`.
pub fn default_config(args: &[&str], cgroups_path: &str) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "nodus-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// Namespace inode of a process, e.g. ns_of(pid, "net") -> "net:[4026531840]".
pub fn ns_of(pid: &str, ns: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// A network namespace with a unique name (`ip netns add`), deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new() -> Netns {
        let name = unique("nodus-rt-ns");
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success());
        Netns(name)
    }
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}
