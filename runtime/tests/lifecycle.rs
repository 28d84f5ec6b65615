//! Host tier: the container lifecycle through the `nodus-runtime` CLI — create/start/
//! state/kill/delete, run, exec, ps, pause/resume, update, events, console socket,
//! --no-pivot, hooks, and what delete leaves behind (nothing).

mod common;

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::process::Stdio;
use std::time::Duration;

use common::{wait_exit, Bundle};
use nodus_testkit::wait_until;
use serde_json::{json, Value};

#[test]
fn create_start_kill_delete() {
    let b = Bundle::new(&["sleep", "1000"]);
    let pid = b.create();
    let st = b.state();
    assert_eq!(st["status"], "created");
    assert_eq!(st["pid"], pid);
    assert_eq!(st["id"], b.id.as_str());
    assert_eq!(st["ociVersion"], "1.0.2");
    assert_eq!(st["bundle"], b.path().to_str().unwrap());
    assert_eq!(st["rootfs"], b.rootfs().to_str().unwrap());
    assert!(st["created"].as_str().unwrap().ends_with('Z'));
    assert!(st.get("annotations").is_some() && st.get("owner").is_some());
    // Blocked before exec: still the runtime's image, not sleep.
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(!exe.ends_with("busybox"), "{exe:?}");
    // The init is in the container's cgroup already.
    let procs = b.cg_read("pids", "cgroup.procs");
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");

    b.ok(&["start", &b.id]);
    assert_eq!(b.state()["status"], "running");
    let o = b.rt(&["start", &b.id]);
    assert!(!o.status.success(), "second start must fail");

    let ps: Vec<i32> = serde_json::from_str(&b.ok(&["ps", "--format", "json", &b.id])).unwrap();
    assert_eq!(ps, vec![pid]);

    let o = b.rt(&["delete", &b.id]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not stopped"),
        "{o:?}"
    );

    b.ok(&["kill", &b.id, "KILL"]);
    assert_eq!(
        wait_exit(pid, Duration::from_secs(10)),
        Some(128 + libc::SIGKILL)
    );
    assert_eq!(b.state()["status"], "stopped");
    assert_eq!(b.state()["pid"], 0);
    let o = b.rt(&["kill", &b.id, "TERM"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("container not running"),
        "{o:?}"
    );

    b.ok(&["delete", &b.id]);
    assert!(!b.state_root().join(&b.id).exists(), "state dir left");
    assert!(
        b.cgroup_left().is_empty(),
        "cgroups left: {:?}",
        b.cgroup_left()
    );
    let o = b.rt(&["state", &b.id]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}

#[test]
fn delete_of_created_and_force_delete_of_running_leave_nothing() {
    let b = Bundle::new(&["sh", "-c", "sleep 1000 & sleep 1000 & wait"]);
    let pid = b.create();
    b.ok(&["delete", &b.id]);
    assert_eq!(
        wait_exit(pid, Duration::from_secs(10)),
        Some(128 + libc::SIGKILL)
    );
    assert!(!b.state_root().join(&b.id).exists());
    assert!(b.cgroup_left().is_empty(), "{:?}", b.cgroup_left());

    let pid = b.start();
    // Wait for the children to exist.
    wait_until(
        Duration::from_secs(2),
        "the init and its two children",
        || b.cg_read("pids", "cgroup.procs").lines().count() >= 3,
    );
    let ps: Vec<i32> = serde_json::from_str(&b.ok(&["ps", "--format", "json", &b.id])).unwrap();
    assert_eq!(ps.len(), 3, "{ps:?}");
    b.ok(&["delete", "--force", &b.id]);
    assert!(wait_exit(pid, Duration::from_secs(10)).is_some());
    assert!(!b.state_root().join(&b.id).exists());
    assert!(b.cgroup_left().is_empty(), "{:?}", b.cgroup_left());
    let bundle = b.path().display().to_string();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&bundle), "host mounts mention the bundle");
}

#[test]
fn kill_all_signals_every_process() {
    // The init is pid 1 of its namespace: without a handler, TERM does not reach it.
    let b = Bundle::new(&["sh", "-c", "sleep 1000 & sleep 1000 & wait"]);
    let pid = b.start();
    wait_until(
        Duration::from_secs(2),
        "the init and its two children",
        || b.cg_read("pids", "cgroup.procs").lines().count() >= 3,
    );
    // Plain kill: the init (pid 1, no handler) ignores TERM and keeps running.
    b.ok(&["kill", &b.id, "TERM"]);
    assert_eq!(wait_exit(pid, Duration::from_millis(300)), None);
    // --all: the sleeps die of it, then the init's wait returns.
    b.ok(&["kill", "--all", &b.id, "TERM"]);
    assert!(
        wait_exit(pid, Duration::from_secs(10)).is_some(),
        "init exits once its children died"
    );
    assert_eq!(b.state()["status"], "stopped");
}

#[test]
fn run_returns_the_exit_code_and_deletes() {
    let b = Bundle::new(&["sh", "-c", "echo out; exit 7"]);
    let o = b
        .cmd()
        .args(["run", "--bundle"])
        .arg(b.path())
        .arg(&b.id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert!(!b.state_root().join(&b.id).exists());
    assert!(b.cgroup_left().is_empty());
}

#[test]
fn fast_exit_is_not_missed() {
    // /bin/true exits immediately after start; run must not hang (youki's bug).
    let b = Bundle::new(&["/bin/true"]);
    for i in 0..5 {
        let o = b
            .cmd()
            .args(["run", "--bundle"])
            .arg(b.path())
            .arg(format!("{}-{i}", b.id))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{o:?}");
    }
}

#[test]
fn exec_into_a_running_container() {
    let b = Bundle::new(&["sh", "-c", "echo ready > /tmp/ready; exec sleep 1000"]);
    let pid = b.start();
    wait_until(
        Duration::from_secs(3),
        "/tmp/ready in the container",
        || b.rootfs().join("tmp/ready").exists(),
    );
    // Args form: same pid namespace (sleep is pid 1), same hostname, same rootfs.
    let out = b.ok(&[
        "exec",
        &b.id,
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '; hostname; cat /tmp/ready",
    ]);
    assert_eq!(out, "sleep 1000 nodus-test\nready\n");
    // Exit codes pass through.
    let o = b.rt(&["exec", &b.id, "sh", "-c", "exit 5"]);
    assert_eq!(o.status.code(), Some(5));
    // --cap adds a capability, --env an environment variable, --cwd the directory.
    let out = b.ok(&[
        "exec",
        "--cap",
        "CAP_SYS_ADMIN",
        "--env",
        "EXTRA=1",
        "--cwd",
        "/tmp",
        &b.id,
        "sh",
        "-c",
        "grep CapEff /proc/self/status; echo $EXTRA; pwd",
    ]);
    assert_eq!(out, "CapEff:\t0000000020200420\n1\n/tmp\n");
    // A missing program is an error of exec itself.
    let o = b.rt(&["exec", &b.id, "/no/such/thing"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/no/such/thing"),
        "{o:?}"
    );

    // --process file + --detach + --pid-file, as containerd's runc shim calls it.
    let mut p = b.config["process"].clone();
    p["args"] = json!(["sh", "-c", "echo $$ > /tmp/exec.pid; exec sleep 1000"]);
    p["env"] = json!(["PATH=/bin", "FOO=bar"]);
    let pf = b.path().join("process.json");
    fs::write(&pf, serde_json::to_vec(&p).unwrap()).unwrap();
    let pidfile = b.path().join("exec.pid");
    let o = b
        .cmd()
        .args(["exec", "--detach", "--process"])
        .arg(&pf)
        .arg("--pid-file")
        .arg(&pidfile)
        .arg(&b.id)
        // The detached process keeps its stdio: never our pipes.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(b.path().join("exec.err")).unwrap())
        .status()
        .unwrap();
    assert!(
        o.success(),
        "{}",
        fs::read_to_string(b.path().join("exec.err")).unwrap()
    );
    let exec_pid: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The process replaces itself (sh's `exec sleep`), and while it does its
    // /proc/PID/environ can read empty (seen once in a full run): look until it settles.
    let environ = wait_until(
        Duration::from_secs(5),
        "FOO=bar in the exec's environ",
        || {
            let e = fs::read(format!("/proc/{exec_pid}/environ")).unwrap();
            let e = String::from_utf8_lossy(&e).into_owned();
            if e.contains("FOO=bar") {
                Ok(e)
            } else {
                Err(format!("{e:?}"))
            }
        },
    );
    assert!(environ.contains("FOO=bar"), "{environ:?}");
    assert_eq!(
        common::ns_of(&exec_pid.to_string(), "pid"),
        common::ns_of(&pid.to_string(), "pid")
    );
    assert_eq!(
        common::ns_of(&exec_pid.to_string(), "mnt"),
        common::ns_of(&pid.to_string(), "mnt")
    );
    let ps: Vec<i32> = serde_json::from_str(&b.ok(&["ps", "--format", "json", &b.id])).unwrap();
    assert!(ps.contains(&pid) && ps.contains(&exec_pid), "{ps:?}");
    // The exec'd process got the capabilities of its process.json.
    let status = fs::read_to_string(format!("/proc/{exec_pid}/status")).unwrap();
    assert!(status.contains("CapEff:\t0000000020000420"), "{status}");
    b.ok(&["delete", "--force", &b.id]);
    assert!(b.cgroup_left().is_empty());
}

#[test]
fn pause_resume_update_events() {
    let b = Bundle::new(&["sleep", "1000"]);
    let _pid = b.start();
    b.ok(&["pause", &b.id]);
    assert_eq!(b.state()["status"], "paused");
    if !common::is_v2() {
        assert_eq!(b.cg_read("freezer", "freezer.state"), "FROZEN");
    }
    b.ok(&["resume", &b.id]);
    assert_eq!(b.state()["status"], "running");

    let mut c = b
        .cmd()
        .args(["update", "--resources", "-", &b.id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(br#"{"pids":{"limit":42},"memory":{"limit":67108864}}"#)
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(b.cg_read("pids", "pids.max"), "42");
    let mem = if common::is_v2() {
        b.cg_read("memory", "memory.max")
    } else {
        b.cg_read("memory", "memory.limit_in_bytes")
    };
    assert_eq!(mem, "67108864");
    b.ok(&["update", "--pids-limit", "43", &b.id]);
    assert_eq!(b.cg_read("pids", "pids.max"), "43");

    let ev: Value = serde_json::from_str(b.ok(&["events", "--stats", &b.id]).trim()).unwrap();
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["data"]["pids"]["current"], 1);
    assert_eq!(ev["data"]["pids"]["limit"], 43);
    assert_eq!(ev["data"]["memory"]["usage"]["limit"], 67108864);
}

#[test]
fn console_socket_gets_the_pty_master() {
    let mut b = Bundle::new(&["sh", "-c", "tty; echo hello-tty"]);
    b.edit(|c| c["process"]["terminal"] = json!(true));
    let sock_path = b.path().join("console.sock");
    let listener = UnixListener::bind(&sock_path).unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = nix::sys::socket::recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
        let fd = msg
            .cmsgs()
            .unwrap()
            .find_map(|c| match c {
                nix::sys::socket::ControlMessageOwned::ScmRights(f) => f.first().copied(),
                _ => None,
            })
            .expect("an fd");
        // SAFETY: the fd just arrived over SCM_RIGHTS and is ours.
        unsafe { OwnedFd::from_raw_fd(fd) }
    });
    let o = b
        .cmd()
        .args(["create", "--bundle"])
        .arg(b.path())
        .arg("--console-socket")
        .arg(&sock_path)
        .arg("--pid-file")
        .arg(b.path().join("pid"))
        .arg(&b.id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let master = t.join().unwrap();
    let pid: i32 = fs::read_to_string(b.path().join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    b.ok(&["start", &b.id]);
    let mut out = Vec::new();
    let mut f = fs::File::from(master);
    let mut buf = [0u8; 1024];
    while let Ok(n) = std::io::Read::read(&mut f, &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&out).contains("hello-tty") {
            break;
        }
    }
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("/dev/pts/0"), "{out:?}");
    assert!(out.contains("hello-tty"), "{out:?}");
    assert_eq!(wait_exit(pid, Duration::from_secs(10)), Some(0));
}

#[test]
fn no_pivot_works() {
    let b = Bundle::new(&["sh", "-c", "cat /proc/1/cmdline >/dev/null && ls /"]);
    let out = fs::File::create(b.path().join("stdout")).unwrap();
    let st = b
        .cmd()
        .args(["run", "--no-pivot", "--bundle"])
        .arg(b.path())
        .arg(&b.id)
        .stdin(Stdio::null())
        .stdout(out)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(b.stdout().contains("bin\n"), "{}", b.stdout());
}

#[test]
fn hooks_run_with_the_state_on_stdin() {
    let mut b = Bundle::new(&["sh", "-c", "echo container-ran > /tmp/ran"]);
    let out = b.path().join("hooks");
    fs::create_dir(&out).unwrap();
    let host_hook = |name: &str| {
        json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}/{name}.json", out.display())],
               "env": ["X=1"], "timeout": 10})
    };
    // startContainer runs inside the container: its path and output are container paths.
    let start_hook =
        json!({"path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/startContainer.json"]});
    b.edit(|c| {
        c["hooks"] = json!({
            "prestart": [host_hook("prestart")],
            "createRuntime": [host_hook("createRuntime")],
            "createContainer": [host_hook("createContainer")],
            "startContainer": [start_hook],
            "poststart": [host_hook("poststart")],
            "poststop": [host_hook("poststop")],
        })
    });
    let pid = b.create();
    for h in ["prestart", "createRuntime", "createContainer"] {
        let v: Value =
            serde_json::from_slice(&fs::read(out.join(format!("{h}.json"))).unwrap()).unwrap();
        assert_eq!(v["id"], b.id.as_str(), "{h}");
        assert_eq!(v["bundle"], b.path().to_str().unwrap(), "{h}");
    }
    assert!(!out.join("poststart.json").exists());
    b.ok(&["start", &b.id]);
    assert_eq!(wait_exit(pid, Duration::from_secs(10)), Some(0));
    assert!(out.join("poststart.json").exists());
    let v: Value =
        serde_json::from_slice(&fs::read(b.rootfs().join("tmp/startContainer.json")).unwrap())
            .unwrap();
    assert_eq!(v["id"], b.id.as_str());
    assert_eq!(
        fs::read_to_string(b.rootfs().join("tmp/ran")).unwrap(),
        "container-ran\n"
    );
    b.ok(&["delete", &b.id]);
    assert!(out.join("poststop.json").exists());
}

/// runtime.md: `created` is every state after step 2 (the environment made) until the
/// program runs, so prestart, createRuntime, createContainer and startContainer read
/// `created` (the runtime-tools hooks_stdin check and crun agree; runc says `creating`
/// for the first three); poststart reads `running`, poststop `stopped`. The pid is
/// the runtime's view for hooks run in its namespaces, the container's view (1 in a
/// new pid namespace) for createContainer and startContainer.
#[test]
fn each_hook_reads_the_status_and_pid_the_spec_gives_its_stage() {
    let mut b = Bundle::new(&["true"]);
    let out = b.path().join("hooks");
    fs::create_dir(&out).unwrap();
    let save =
        |path: String| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {path}")]});
    let host = |name: &str| save(format!("{}/{name}.json", out.display()));
    b.edit(|c| {
        c["annotations"] = json!({"org.example/hooks": "yes"});
        c["hooks"] = json!({
            "prestart": [host("prestart")],
            "createRuntime": [host("createRuntime")],
            "createContainer": [host("createContainer")],
            "startContainer": [save("/tmp/startContainer.json".into())],
            "poststart": [host("poststart")],
            "poststop": [host("poststop")],
        })
    });
    let pid = b.create();
    let read = |p: std::path::PathBuf| -> Value {
        serde_json::from_slice(&fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .unwrap()
    };
    let hook = |name: &str| read(out.join(format!("{name}.json")));
    let mut seen = vec![];
    for h in ["prestart", "createRuntime", "createContainer"] {
        seen.push((h, hook(h)));
    }
    b.ok(&["start", &b.id]);
    assert_eq!(wait_exit(pid, Duration::from_secs(10)), Some(0));
    seen.push((
        "startContainer",
        read(b.rootfs().join("tmp/startContainer.json")),
    ));
    seen.push(("poststart", hook("poststart")));
    b.ok(&["delete", &b.id]);
    seen.push(("poststop", hook("poststop")));
    let got: Vec<(&str, String, i64)> = seen
        .iter()
        .map(|(h, v)| {
            assert_eq!(v["id"], b.id.as_str(), "{h}");
            assert_eq!(v["bundle"], b.path().to_str().unwrap(), "{h}");
            assert_eq!(v["annotations"]["org.example/hooks"], "yes", "{h}");
            let status = v["status"].as_str().unwrap_or_default().to_string();
            (*h, status, v["pid"].as_i64().unwrap_or(0))
        })
        .collect();
    let pid = pid as i64;
    assert_eq!(
        got,
        vec![
            ("prestart", "created".to_string(), pid),
            ("createRuntime", "created".to_string(), pid),
            ("createContainer", "created".to_string(), 1),
            ("startContainer", "created".to_string(), 1),
            ("poststart", "running".to_string(), pid),
            ("poststop", "stopped".to_string(), 0),
        ]
    );
}

#[test]
fn failing_hook_aborts_create_and_leaves_nothing() {
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| {
        c["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]}]})
    });
    let o = b.rt(&["create", "--bundle", b.path().to_str().unwrap(), &b.id]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("hooks.createRuntime[0]") && err.contains("nope"),
        "{err}"
    );
    assert!(!b.state_root().join(&b.id).exists());
    assert!(b.cgroup_left().is_empty(), "{:?}", b.cgroup_left());
}

#[test]
fn json_log_for_containerd() {
    let b = Bundle::new(&["true"]);
    let log = b.path().join("log.json");
    let o = b
        .cmd()
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "start", "no-such-ctr"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let text = fs::read_to_string(&log).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");
    assert!(
        last["msg"].as_str().unwrap().contains("does not exist"),
        "{last}"
    );
    assert!(last["time"].is_string());
}

#[test]
fn version_features_and_systemd_flag() {
    let mut b = Bundle::new(&["true"]);
    assert!(b.ok(&["--version"]).contains("spec: 1.0.2"));
    let f: Value = serde_json::from_str(&b.ok(&["features"])).unwrap();
    assert_eq!(f["ociVersionMax"], "1.0.2");
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("network")));
    assert_eq!(f["linux"]["cgroup"]["systemd"], true);
    // runc's --systemd-cgroup is accepted: the command itself decides.
    let o = b.rt(&["--systemd-cgroup", "state", "x"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("container x does not exist"), "{err}");
    // A systemd scope needs a pure v2 host (the VM tier runs them); on a v1 or hybrid host
    // the create is refused naming the field, and leaves nothing.
    if !common::is_v2() {
        b.edit(|c| c["linux"]["cgroupsPath"] = json!("system.slice:nodus-test:x"));
        let o = b.rt(&[
            "--systemd-cgroup",
            "create",
            "--bundle",
            b.path().to_str().unwrap(),
            &b.id,
        ]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("linux.cgroupsPath") && err.contains("pure cgroup v2"),
            "{err}"
        );
        assert!(!b.state_root().join(&b.id).exists());
    }
}

#[test]
fn force_delete_clears_a_corrupt_state() {
    let b = Bundle::new(&["true"]);
    let dir = b.state_root().join(&b.id);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("state.json"), "{garbage").unwrap();
    let o = b.rt(&["delete", &b.id]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("corrupt state"),
        "{o:?}"
    );
    b.ok(&["delete", "--force", &b.id]);
    assert!(!dir.exists());
}
