//! containerd-shim-nodus-v2 driven by a real containerd (nodus-testkit's private instance):
//! a runtime handler `nodus-shim` with `runtime_type = "io.containerd.nodus.v2"`, the shim
//! found in containerd's PATH (the cargo target dir, prepended by the test).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nodus_proto::runtime::v1::{
    ContainerStatsRequest, ExecSyncRequest, LinuxContainerConfig, LinuxContainerResources,
    ListContainersRequest, ListPodSandboxRequest, PodSandboxConfig, PodSandboxStatusRequest,
    UpdateContainerResourcesRequest,
};
use nodus_testkit::cleanup::{self, mounts_mentioning};
use nodus_testkit::cri::{self, Runtime};
use nodus_testkit::{
    wait_until, wait_until_async, ContainerdOptions, PrivateContainerd, BUSYBOX_IMAGE,
};

const HANDLER: &str = "nodus-shim";
const SHIM: &str = "containerd-shim-nodus-v2";

/// The tests run one at a time: each starts its own containerd, and on a 2-core machine
/// several at once mostly add load. (The exec output they lost now and then was the
/// output FIFO race fixed in the shim, seen more often under load, not their sharing.)
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Starts a private containerd that knows our shim as runtime handler `nodus-shim`.
async fn containerd() -> PrivateContainerd {
    let shim = nodus_testkit::bin_path(SHIM);
    assert!(
        shim.exists() && nodus_testkit::bin_path("nodus-runtime").exists(),
        "build the shim and nodus-runtime first (cargo build -p nodus-runtime -p nodus-shim)"
    );
    // testkit declares the handler and puts the shim's directory first in containerd's PATH.
    PrivateContainerd::start(ContainerdOptions::default())
        .await
        .expect("private containerd starts")
}

/// Our shim processes serving this containerd.
fn shims(ctrd: &PrivateContainerd) -> Vec<i32> {
    let socket = ctrd.socket().display().to_string();
    cleanup::pids_with_cmdline(&[SHIM, &socket])
}

/// Waits until no shim serves this containerd any more (the last pod is gone).
async fn wait_shims_gone(ctrd: &PrivateContainerd) {
    wait_until_async(Duration::from_secs(10), "the shim to exit", async || {
        shims(ctrd).is_empty()
    })
    .await;
}

/// A sandbox of `name` on our shim: its config and ID.
async fn run_sandbox(
    rt: &mut Runtime,
    ctrd: &PrivateContainerd,
    name: &str,
) -> (PodSandboxConfig, String) {
    let sandbox = ctrd.sandbox_config(name);
    let id = ctrd.must(
        "RunPodSandbox",
        cri::run_sandbox(rt, &sandbox, HANDLER).await,
    );
    (sandbox, id)
}

/// A container's cgroup directory: in the unified hierarchy, or in the v1 `controller`'s.
fn container_cgroup(controller: &str, cgroup_parent: &str, id: &str) -> PathBuf {
    let base = if nodus_runtime::cgroups::is_unified() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup").join(controller)
    };
    base.join(cgroup_parent.trim_start_matches('/')).join(id)
}

/// Busybox `sh -c script` as container `name` (256 MiB memory limit), created and started.
async fn create_started(
    rt: &mut Runtime,
    ctrd: &PrivateContainerd,
    pod: &str,
    sandbox: &PodSandboxConfig,
    name: &str,
    script: &str,
) -> String {
    let mut config = cri::busybox_sh(name, script);
    config.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 256 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    ctrd.must(
        &format!("container {name}"),
        cri::create_and_start(rt, pod, sandbox, config).await,
    )
}

async fn container_state(rt: &mut Runtime, id: &str) -> (i32, i32, String) {
    let st = cri::container_status(rt, id)
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    (st.state, st.exit_code, st.reason)
}

async fn exec(
    rt: &mut Runtime,
    ctrd: &PrivateContainerd,
    id: &str,
    script: &str,
) -> (String, String, i32) {
    let call = rt.exec_sync(ExecSyncRequest {
        container_id: id.to_string(),
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        timeout: 20,
    });
    let out = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .unwrap_or_else(|_| panic!("ExecSync {script:?} hangs\n{}", ctrd.log_tail(40)))
        .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}\n{}", ctrd.log_tail(40)))
        .into_inner();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.exit_code,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_with_two_containers_runs_on_the_shim() {
    let _serial = serial().await;
    let mut ctrd = containerd().await;
    let mut rt = ctrd.runtime().await.unwrap();
    let (sandbox, pod) = run_sandbox(&mut rt, &ctrd, "shimpod").await;
    let cg_parent = sandbox.linux.as_ref().unwrap().cgroup_parent.clone();
    let shim_pids = shims(&ctrd);
    assert_eq!(
        shim_pids.len(),
        1,
        "one shim serves the sandbox: {shim_pids:?}"
    );

    let app = create_started(
        &mut rt,
        &ctrd,
        &pod,
        &sandbox,
        "app",
        "echo hello-from-shim; echo oops >&2; echo data > /tmp/f; exec sleep 1000",
    )
    .await;
    let side = create_started(
        &mut rt,
        &ctrd,
        &pod,
        &sandbox,
        "side",
        "sleep 999 & exec sleep 1000",
    )
    .await;
    assert_eq!(
        shims(&ctrd),
        shim_pids,
        "the containers of the pod share the sandbox's shim"
    );
    for id in [&app, &side] {
        assert_eq!(
            container_state(&mut rt, id).await.0,
            1,
            "{id} CONTAINER_RUNNING"
        );
    }

    // CRI logs arrive through the stdio FIFOs.
    let log_file = cri::log_file(&sandbox, "app");
    wait_until_async(Duration::from_secs(20), "the app's log lines", async || {
        let log = std::fs::read_to_string(&log_file).unwrap_or_default();
        log.contains(" stdout F hello-from-shim") && log.contains(" stderr F oops")
    })
    .await;

    // The containers' processes hold their stdio and nothing of the shim's (socket, pipes).
    // Right after StartContainer an init may still be on its way to execve with the
    // runtime's own descriptors open, so each container gets a moment to settle.
    let open_fds = |pid: &str| -> Vec<String> {
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        fds.sort();
        fds
    };
    for id in [&pod, &app, &side] {
        let procs = container_cgroup("memory", &cg_parent, id).join("cgroup.procs");
        let what = format!(
            "the processes of {id} ({}) to hold fds 0, 1, 2 only",
            procs.display()
        );
        wait_until_async(Duration::from_secs(10), &what, async || {
            let pids = std::fs::read_to_string(&procs).unwrap_or_default();
            let fds: Vec<(String, Vec<String>)> = pids
                .split_whitespace()
                .map(|pid| (pid.to_string(), open_fds(pid)))
                .collect();
            if !fds.is_empty() && fds.iter().all(|(_, f)| f == &["0", "1", "2"]) {
                Ok(())
            } else {
                Err(format!("{fds:?}"))
            }
        })
        .await;
    }

    // ExecSync: output, exit code, the container's filesystem.
    let (out, err, code) = exec(&mut rt, &ctrd, &app, "cat /tmp/f; echo e >&2; exit 3").await;
    assert_eq!((out.as_str(), err.as_str(), code), ("data\n", "e\n", 3));
    let (out, _, code) = exec(
        &mut rt,
        &ctrd,
        &side,
        "cat /tmp/f 2>/dev/null || echo separate",
    )
    .await;
    assert_eq!((out.as_str(), code), ("separate\n", 0));

    // Stats come from the container's cgroup.
    let stats = rt
        .container_stats(ContainerStatsRequest {
            container_id: app.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("ContainerStats: {e}\n{}", ctrd.log_tail(40)))
        .into_inner()
        .stats
        .unwrap();
    let mem = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    assert!(mem.unwrap_or(0) > 0, "memory working set reported: {mem:?}");

    // UpdateContainerResources reaches the cgroup.
    let cg = container_cgroup("memory", &cg_parent, &app);
    let limit_file = if nodus_runtime::cgroups::is_unified() {
        cg.join("memory.max")
    } else {
        cg.join("memory.limit_in_bytes")
    };
    let read_limit = || {
        std::fs::read_to_string(&limit_file)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    assert_eq!(
        read_limit(),
        (256u64 << 20).to_string(),
        "{}",
        limit_file.display()
    );
    let read_quota = || {
        if nodus_runtime::cgroups::is_unified() {
            let max =
                std::fs::read_to_string(container_cgroup("cpu", &cg_parent, &app).join("cpu.max"));
            max.unwrap_or_default().trim().to_string()
        } else {
            let dir = container_cgroup("cpu", &cg_parent, &app);
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            format!(
                "{} {}",
                read("cpu.cfs_quota_us").trim(),
                read("cpu.cfs_period_us").trim()
            )
        }
    };
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: app.clone(),
        linux: Some(LinuxContainerResources {
            memory_limit_in_bytes: 128 << 20,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}\n{}", ctrd.log_tail(40)));
    assert_eq!(read_limit(), (128u64 << 20).to_string());
    assert_eq!(read_quota(), "50000 100000", "CPU quota and period");

    // containerd restarts: the pod is still there, running and controllable.
    ctrd.restart().await.expect("containerd restarts");
    let mut rt = ctrd.runtime().await.unwrap();
    assert_eq!(
        shims(&ctrd),
        shim_pids,
        "the shim outlived containerd's restart"
    );
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(
        pods.iter().any(|p| p.id == pod && p.state == 0),
        "pod ready after restart: {pods:?}"
    );
    let ctrs = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    for id in [&app, &side] {
        assert!(
            ctrs.iter().any(|c| &c.id == id && c.state == 1),
            "{id} running after restart: {ctrs:?}"
        );
    }
    let (out, _, code) = exec(&mut rt, &ctrd, &app, "echo after-restart").await;
    assert_eq!((out.as_str(), code), ("after-restart\n", 0));

    // Stop one container: it exits by signal and its status says so.
    ctrd.must(
        "StopContainer",
        cri::stop_container(&mut rt, &side, 1).await,
    );
    let (state, exit_code, _) = container_state(&mut rt, &side).await;
    assert_eq!(state, 2, "CONTAINER_EXITED");
    assert!(
        exit_code == 137 || exit_code == 143,
        "exit code {exit_code}"
    );
    ctrd.must(
        "RemoveContainer",
        cri::remove_container(&mut rt, &side).await,
    );

    ctrd.must("StopPodSandbox", cri::stop_sandbox(&mut rt, &pod).await);
    let status = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.state, 1, "SANDBOX_NOTREADY after stop");
    ctrd.must("RemovePodSandbox", cri::remove_sandbox(&mut rt, &pod).await);

    // Nothing left: the shim, mounts, cgroups, processes, runtime state.
    wait_shims_gone(&ctrd).await;
    for id in [&pod, &app, &side] {
        assert!(
            mounts_mentioning(id).is_empty(),
            "mounts of {id} left: {:?}",
            mounts_mentioning(id)
        );
        let left: Vec<PathBuf> = cleanup::cgroup_roots()
            .into_iter()
            .map(|root| root.join(cg_parent.trim_start_matches('/')).join(id))
            .filter(|dir| dir.exists())
            .collect();
        assert!(left.is_empty(), "cgroups of {id} left: {left:?}");
        assert!(
            !Path::new("/run/nodus-shim/k8s.io").join(id).exists(),
            "runtime state of {id} left"
        );
    }
    assert!(
        cleanup::cgroup_pids(&cg_parent).is_empty(),
        "processes left in {cg_parent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_run_prints_output() {
    let _serial = serial().await;
    let ctrd = containerd().await;
    let mut tasks = CtrTasks(Vec::new());
    let id = format!("ctr-{}", nodus_testkit::unique_suffix());
    tasks.0.push(id.clone());
    let cgroup = format!("{}/{id}", ctrd.cgroup_parent());
    let socket = ctrd.socket().display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("ctr")
            .args(["--address", &socket, "-n", "k8s.io", "run", "--rm"])
            .args(["--runtime", "io.containerd.nodus.v2", "--cgroup", &cgroup])
            .args([
                BUSYBOX_IMAGE,
                &id,
                "sh",
                "-c",
                "echo hello-from-ctr; exit 0",
            ])
            .output()
            .expect("run ctr")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "ctr run failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        ctrd.log_tail(40)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello-from-ctr"
    );
    wait_shims_gone(&ctrd).await;

    // stdin reaches the process, and its end is the process's EOF; the exit code comes back.
    let id = format!("ctr-{}", nodus_testkit::unique_suffix());
    tasks.0.push(id.clone());
    let cgroup = format!("{}/{id}", ctrd.cgroup_parent());
    let socket = ctrd.socket().display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("ctr")
            .args(["--address", &socket, "-n", "k8s.io", "run", "--rm"])
            .args(["--runtime", "io.containerd.nodus.v2", "--cgroup", &cgroup])
            .args([BUSYBOX_IMAGE, &id, "sh", "-c", "tr a-z A-Z; exit 7"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ctr");
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"piped-in\n").unwrap();
        drop(stdin);
        child.wait_with_output().expect("ctr output")
    })
    .await
    .unwrap();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        (Some(7), "PIPED-IN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_shims_gone(&ctrd).await;
}

/// Tasks started with `ctr` are not pods, so the testkit's CRI cleanup misses them: on drop
/// (also when the test fails) the runtime deletes whatever of them is left.
struct CtrTasks(Vec<String>);

impl Drop for CtrTasks {
    fn drop(&mut self) {
        let runtime = nodus_testkit::bin_path("nodus-runtime");
        for id in &self.0 {
            if Path::new("/run/nodus-shim/k8s.io").join(id).exists() {
                let _ = std::process::Command::new(&runtime)
                    .args(["--root", "/run/nodus-shim/k8s.io", "delete", "--force", id])
                    .status();
            }
        }
    }
}

/// `ctr` against the private containerd, namespace k8s.io; returns (status code, stdout, stderr).
fn ctr(socket: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new("ctr")
        .args(["--address", socket, "-n", "k8s.io"])
        .args(args)
        .output()
        .expect("run ctr");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ctr events` of a containerd (namespace k8s.io), read as ctr prints them.
struct CtrEvents {
    child: std::process::Child,
    seen: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl CtrEvents {
    /// Starts `ctr events` and returns once its subscription is in place: ctr says nothing
    /// when it is, so this labels the busybox image (an /images/update event) until that
    /// event shows.
    fn subscribe(socket: &str) -> CtrEvents {
        use std::io::BufRead;
        let mut child = std::process::Command::new("ctr")
            .args(["--address", socket, "-n", "k8s.io", "events"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("ctr events");
        let stdout = child.stdout.take().expect("ctr events' stdout");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let lines = seen.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let mut text = lines.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        let events = CtrEvents {
            child,
            seen,
            reader: Some(reader),
        };
        let mark = format!("nodus-test-mark={}", nodus_testkit::unique_suffix());
        wait_until(Duration::from_secs(10), "ctr events to subscribe", || {
            let (code, _, err) = ctr(socket, &["images", "label", BUSYBOX_IMAGE, &mark]);
            assert_eq!(code, 0, "ctr images label: {err}");
            events.text().contains("/images/update")
        });
        events
    }

    fn text(&self) -> String {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops ctr; all it printed.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.text()
    }
}

impl Drop for CtrEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The STATUS column of `ctr task ls` for `id`.
fn task_status(socket: &str, id: &str) -> String {
    let (_, out, _) = ctr(socket, &["task", "ls"]);
    out.lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_task_exec_tty_pause_ps_metrics_kill() {
    let _serial = serial().await;
    let ctrd = containerd().await;
    let id = format!("ctrtask-{}", nodus_testkit::unique_suffix());
    let _tasks = CtrTasks(vec![id.clone(), format!("{id}-tty")]);
    let cgroup = format!("{}/{id}", ctrd.cgroup_parent());
    let socket = ctrd.socket().display().to_string();
    let log = ctrd.log_tail(40);
    let (s, i) = (socket.clone(), id.clone());
    tokio::task::spawn_blocking(move || {
        let (socket, id) = (s.as_str(), i.as_str());
        // Everything the shim publishes for this task, as containerd forwards it.
        let events = CtrEvents::subscribe(socket);
        let (code, _, err) = ctr(
            socket,
            &[
                "run",
                "-d",
                "--runtime",
                "io.containerd.nodus.v2",
                "--cgroup",
                &cgroup,
                BUSYBOX_IMAGE,
                id,
                "sh",
                "-c",
                "sleep 1000 & exec sleep 1001",
            ],
        );
        assert_eq!(code, 0, "ctr run -d: {err}\n{log}");
        assert_eq!(task_status(socket, id), "RUNNING");

        // Pids: init and its background child.
        // (the shell may not have forked its background child yet: give it a moment)
        wait_until(Duration::from_secs(10), "two processes", || {
            let (code, out, err) = ctr(socket, &["task", "ps", id]);
            assert_eq!(code, 0, "task ps: {err}");
            if out.lines().skip(1).count() == 2 {
                Ok(())
            } else {
                Err(out)
            }
        });
        // A detached exec shows up with its exec ID.
        let (code, _, err) = ctr(socket, &["task", "exec", "-d", "--exec-id", "bg", id, "sleep", "999"]);
        assert_eq!(code, 0, "exec -d: {err}");
        let (_, out, _) = ctr(socket, &["task", "ps", id]);
        assert_eq!(out.lines().skip(1).count(), 3, "three processes: {out}");
        assert!(out.contains("bg"), "the exec's details name it: {out}");

        // Exec without a terminal: output and exit code, every time (a fast exec once lost
        // its output when containerd's reader saw a writerless FIFO and took it for EOF).
        for n in 0..5 {
            let exec_id = format!("e{n}");
            let (code, out, err) = ctr(
                socket,
                &[
                    "task",
                    "exec",
                    "--exec-id",
                    &exec_id,
                    id,
                    "sh",
                    "-c",
                    "echo out; exit 5",
                ],
            );
            assert_eq!((code, out.as_str()), (5, "out\n"), "exec {n}: {err}");
        }

        // Exec with a terminal (ctr needs one itself: script(1) gives it a pty).
        let cmd = format!(
            "ctr --address {socket} -n k8s.io task exec -t --exec-id e2 {id} sh -c 'tty; stty size'"
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
            .expect("run script");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "exec -t: {text}");
        assert!(
            text.contains("/dev/pts/"),
            "the exec has a terminal: {text:?}"
        );
        // All of a terminal's output arrives, also what was written just before the exit.
        for n in 0..5 {
            let cmd = format!(
                "ctr --address {socket} -n k8s.io task exec -t --exec-id t{n} {id} sh -c 'seq 1 3000; echo END-OF-OUTPUT'"
            );
            let out = std::process::Command::new("script")
                .args(["-qec", &cmd, "/dev/null"])
                .output()
                .expect("run script");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("\n3000\r") && text.contains("END-OF-OUTPUT"),
                "exec -t output cut short (run {n}): ...{:?}",
                &text[text.len().saturating_sub(200)..]
            );
        }

        // A task whose init has the terminal.
        let cmd = format!(
            "ctr --address {socket} -n k8s.io run --rm -t --runtime io.containerd.nodus.v2 \
             --cgroup {cgroup}-tty {BUSYBOX_IMAGE} {id}-tty sh -c 'tty; exit 3'"
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
            .expect("run script");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(3), "run -t: {text}");
        assert!(
            text.contains("/dev/pts/"),
            "the init has a terminal: {text:?}"
        );

        // Pause and resume (freezer), metrics from the cgroup.
        assert_eq!(ctr(socket, &["task", "pause", id]).0, 0);
        assert_eq!(task_status(socket, id), "PAUSED");
        assert_eq!(ctr(socket, &["task", "resume", id]).0, 0);
        assert_eq!(task_status(socket, id), "RUNNING");
        let (code, out, err) = ctr(socket, &["task", "metrics", id]);
        assert_eq!(code, 0, "task metrics: {err}");
        assert!(
            out.contains("memory.usage_in_bytes") || out.contains("memory.usage"),
            "{out}"
        );
        assert!(out.contains("pids.current"), "{out}");

        // Kill all: the task stops, delete leaves nothing.
        assert_eq!(
            ctr(socket, &["task", "kill", "-a", "-s", "SIGKILL", id]).0,
            0
        );
        wait_until(Duration::from_secs(20), "the task to stop", || {
            task_status(socket, id) == "STOPPED"
        });
        let (code, _, err) = ctr(socket, &["task", "delete", id]);
        assert_eq!(code, 0, "task delete: {err}");
        let (code, _, err) = ctr(socket, &["container", "delete", id]);
        assert_eq!(code, 0, "container delete: {err}");

        let seen = events.stop();
        for topic in [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete",
        ] {
            assert!(
                seen.lines().any(|l| l.contains(topic) && l.contains(id)),
                "no {topic} event for {id}:\n{seen}"
            );
        }
    })
    .await
    .unwrap();
    wait_shims_gone(&ctrd).await;
    assert!(
        mounts_mentioning(&id).is_empty(),
        "{:?}",
        mounts_mentioning(&id)
    );
    assert!(!Path::new("/run/nodus-shim/k8s.io").join(&id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_past_its_memory_limit_is_oom_killed() {
    let _serial = serial().await;
    let ctrd = containerd().await;
    let mut rt = ctrd.runtime().await.unwrap();
    let (sandbox, pod) = run_sandbox(&mut rt, &ctrd, "oompod").await;
    // dd fills a 256 MiB buffer: far past the 32 MiB limit.
    let mut hog = cri::container_config(
        "hog",
        BUSYBOX_IMAGE,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
        "hog/0.log",
    );
    hog.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = ctrd.must(
        "CreateContainer",
        cri::create_container(&mut rt, &pod, &sandbox, hog).await,
    );
    // The events containerd receives from the shim, TaskOOM among them.
    let socket = ctrd.socket().display().to_string();
    let events = tokio::task::spawn_blocking(move || CtrEvents::subscribe(&socket))
        .await
        .unwrap();
    ctrd.must("StartContainer", cri::start_container(&mut rt, &id).await);
    let st = ctrd.must(
        "the hog's exit",
        cri::wait_exited(&mut rt, &id, Duration::from_secs(30)).await,
    );
    let (exit_code, reason) = (st.exit_code, st.reason);
    assert_eq!(exit_code, 137, "killed by SIGKILL");
    assert_eq!(
        reason,
        "OOMKilled",
        "TaskOOM reached containerd\n{}",
        ctrd.log_tail(40)
    );
    let seen = events.stop();
    assert!(
        seen.lines()
            .any(|l| l.contains("/tasks/oom") && l.contains(&id)),
        "a TaskOOM event for {id}:\n{seen}"
    );
    cri::remove_pod(&mut rt, &pod, &[&id]).await.unwrap();
    wait_shims_gone(&ctrd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shim_is_cleaned_up_by_delete() {
    let _serial = serial().await;
    let ctrd = containerd().await;
    let mut rt = ctrd.runtime().await.unwrap();
    let (sandbox, pod) = run_sandbox(&mut rt, &ctrd, "crashpod").await;
    let cg_parent = sandbox.linux.as_ref().unwrap().cgroup_parent.clone();
    let app = create_started(&mut rt, &ctrd, &pod, &sandbox, "app", "exec sleep 1000").await;
    let shim_pids = shims(&ctrd);
    assert_eq!(shim_pids.len(), 1);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", shim_pids[0])).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let socket = args
        .iter()
        .position(|a| a == "-socket")
        .and_then(|i| args.get(i + 1))
        .and_then(|a| a.strip_prefix("unix://"))
        .map(PathBuf::from)
        .expect("the shim's -socket argument");
    assert!(socket.exists(), "{}", socket.display());
    // SAFETY: kill(2) on the shim process this test's containerd started.
    unsafe { libc::kill(shim_pids[0], libc::SIGKILL) };

    // containerd notices, runs `containerd-shim-nodus-v2 delete` and reports the exit.
    ctrd.must(
        "app reported exited",
        cri::wait_exited(&mut rt, &app, Duration::from_secs(30)).await,
    );
    ctrd.must(
        "remove the pod",
        cri::remove_pod(&mut rt, &pod, &[&app]).await,
    );
    // containerd cleans up after a dead shim in the background: give it a moment.
    for id in [&pod, &app] {
        let state = Path::new("/run/nodus-shim/k8s.io").join(id);
        wait_until_async(
            Duration::from_secs(10),
            &format!("mounts and runtime state of {id} to go"),
            async || mounts_mentioning(id).is_empty() && !state.exists(),
        )
        .await;
    }
    // The delete action removes the socket last, after the runtime state.
    wait_until_async(
        Duration::from_secs(10),
        &format!("the dead shim's socket {} to go", socket.display()),
        async || !socket.exists(),
    )
    .await;
    wait_until_async(
        Duration::from_secs(10),
        "the pod's processes to go",
        async || cleanup::cgroup_pids(&cg_parent).is_empty(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_cannot_start_reports_why_and_leaves_nothing() {
    let _serial = serial().await;
    let ctrd = containerd().await;
    let mut rt = ctrd.runtime().await.unwrap();
    let (sandbox, pod) = run_sandbox(&mut rt, &ctrd, "badpod").await;
    let bad = cri::container_config("bad", BUSYBOX_IMAGE, &["/no/such/program"], "bad/0.log");
    let id = ctrd.must(
        "CreateContainer",
        cri::create_container(&mut rt, &pod, &sandbox, bad).await,
    );
    let err = cri::start_container(&mut rt, &id)
        .await
        .expect_err("a missing program cannot start")
        .to_string();
    assert!(
        err.contains("/no/such/program"),
        "the error names the program: {err}"
    );
    // The pod's shim still serves the sandbox.
    assert_eq!(shims(&ctrd).len(), 1);
    ctrd.must("RemoveContainer", cri::remove_container(&mut rt, &id).await);
    assert!(
        mounts_mentioning(&id).is_empty(),
        "{:?}",
        mounts_mentioning(&id)
    );
    assert!(!Path::new("/run/nodus-shim/k8s.io").join(&id).exists());
    cri::stop_and_remove_sandbox(&mut rt, &pod).await.unwrap();
    wait_shims_gone(&ctrd).await;
}

/// A minimal WebSocket client for CRI's streaming server (Kubernetes' channel protocol
/// `v4.channel.k8s.io`: each message starts with its channel, 0 stdin, 1 stdout, 2 stderr,
/// 3 the final status). Sends `stdin` (if any) on channel 0 without closing it, then reads
/// every frame up to the server's close. Returns (stdout and stderr, status).
fn stream_exec(url: &str, stdin: Option<&[u8]>) -> (String, String) {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .expect("an http:// streaming URL");
    let (host, path) = rest.split_at(rest.find('/').expect("a path"));
    let mut tcp = std::net::TcpStream::connect(host).expect("connect to the stream server");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: bm9kdXMtc2hpbS10ZXN0IQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
    )
    .unwrap();
    // The HTTP response head, byte by byte up to the blank line.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).expect("upgrade response");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
    if let Some(data) = stdin {
        // One binary frame, FIN set, masked as a client's must be (RFC 6455 5.3).
        let mut payload = vec![0u8];
        payload.extend_from_slice(data);
        assert!(payload.len() < 126, "short stdin only");
        let key = [0x6e, 0x6f, 0x64, 0x75];
        let mut frame = vec![0x82, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        tcp.write_all(&frame).expect("send stdin");
    }
    let (mut output, mut status) = (String::new(), String::new());
    loop {
        let mut hdr = [0u8; 2];
        if tcp.read_exact(&mut hdr).is_err() {
            break;
        }
        let opcode = hdr[0] & 0x0f;
        let mut len = u64::from(hdr[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            tcp.read_exact(&mut b).unwrap();
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            tcp.read_exact(&mut b).unwrap();
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        tcp.read_exact(&mut payload).unwrap();
        match opcode {
            0x8 => break, // close: the status came before it
            0x1 | 0x2 if !payload.is_empty() => {
                let text = String::from_utf8_lossy(&payload[1..]).into_owned();
                match payload[0] {
                    1 | 2 => output.push_str(&text),
                    3 => status.push_str(&text),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    (output, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_through_the_cri_stream_server() {
    let _serial = serial().await;
    let ctrd = containerd().await;
    let mut rt = ctrd.runtime().await.unwrap();
    let (sandbox, pod) = run_sandbox(&mut rt, &ctrd, "streampod").await;
    let app = create_started(&mut rt, &ctrd, &pod, &sandbox, "app", "exec sleep 1000").await;
    // A terminal comes with stdin, as `kubectl exec -it` asks for it. containerd 1.6 closes
    // a terminal exec's output as soon as its stdin stream ends, and its WebSocket server
    // hands over an (empty, at once ended) stdin stream even when none was asked for: a
    // terminal without stdin loses its output there for io.containerd.runc.v2 + runc as
    // much as for this shim (all of it when the process writes after a moment).
    for round in 0..3 {
        for tty in [false, true] {
            let (cmd, stdin): (&str, Option<&[u8]>) = if tty {
                (
                    "tty; read line; echo \"got:$line\"; echo streamed-ok; exit 3",
                    Some(b"hello\n"),
                )
            } else {
                ("tty; echo streamed-ok; echo to-stderr >&2", None)
            };
            let url = rt
                .exec(nodus_proto::runtime::v1::ExecRequest {
                    container_id: app.clone(),
                    cmd: vec!["sh".into(), "-c".into(), cmd.into()],
                    tty,
                    stdin: stdin.is_some(),
                    stdout: true,
                    stderr: !tty,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("Exec: {e}\n{}", ctrd.log_tail(40)))
                .into_inner()
                .url;
            let (out, status) = tokio::task::spawn_blocking(move || stream_exec(&url, stdin))
                .await
                .unwrap();
            let what = format!("round {round}, tty={tty}: output {out:?}, status {status:?}");
            assert!(out.contains("streamed-ok"), "{what}");
            if tty {
                assert!(out.contains("/dev/pts/"), "a terminal: {what}");
                assert!(
                    out.contains("got:hello"),
                    "stdin through the terminal: {what}"
                );
                // The exit code comes back on the status channel.
                assert!(
                    status.contains("NonZeroExitCode") && status.contains("\"message\":\"3\""),
                    "{what}"
                );
            } else {
                assert!(out.contains("not a tty"), "no terminal: {what}");
                assert!(out.contains("to-stderr"), "stderr: {what}");
                assert!(status.contains("Success"), "{what}");
            }
        }
    }
    cri::stop_and_remove_sandbox(&mut rt, &pod).await.unwrap();
    wait_shims_gone(&ctrd).await;
}

/// A shim `start`ed for a task that never comes (containerd died between `start` and
/// Create, as the chaos runs showed) exits by itself once it has held no container for its
/// idle period, and removes its socket. (The other tests keep the 60 s default: their
/// shims live as long as their pods.)
#[test]
fn an_orphan_shim_exits_when_idle() {
    let bundle = tempfile::tempdir().unwrap();
    std::fs::write(bundle.path().join("config.json"), "{}").unwrap();
    let id = format!("orphan-{}", nodus_testkit::unique_suffix());
    let out = std::process::Command::new(nodus_testkit::bin_path(SHIM))
        .current_dir(bundle.path())
        .env("NODUS_SHIM_IDLE_EXIT_SECONDS", "2")
        .args(["-namespace", "k8s.io", "-id", &id])
        .args([
            "-address",
            "/nonexistent/containerd.sock",
            "-publish-binary",
            "/bin/true",
        ])
        .arg("start")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let address = String::from_utf8(out.stdout).unwrap();
    let socket = PathBuf::from(address.strip_prefix("unix://").unwrap());
    let pid: i32 = std::fs::read_to_string(bundle.path().join("shim.pid"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(socket.exists() && Path::new(&format!("/proc/{pid}")).exists());
    // Two idle periods and a check interval, with room for a loaded machine.
    wait_until(Duration::from_secs(20), "the orphan shim to exit", || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.is_empty() || stat.contains(") Z ")
    });
    assert!(!socket.exists(), "{} left", socket.display());
}
