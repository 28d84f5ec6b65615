//! CRI features through containerd, on whichever runtime `$NODUS_TEST_RUNTIME` names
//! (`runc`, the default; `nodus-shim`, our shim v2; `nodus`, runc's shim running our
//! runtime). The same assertions hold for each: the suite runs them once with runc, the
//! reference, and once with our shim (hack/test.sh).
//!
//! Privileged containers with every host device, mount propagation both ways, seccomp
//! ignored when privileged, container stats, OOM kills reported as `OOMKilled`, ExecSync
//! timeouts that kill the process, and masked paths that are symlinks in the image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{mount, MsFlags};
use nodus_proto::runtime::v1::security_profile::ProfileType;
use nodus_proto::runtime::v1::{
    Capability, ContainerStatsFilter, ContainerStatsRequest, ContainerStatus, ExecSyncResponse,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxSandboxSecurityContext, ListContainerStatsRequest, Mount, MountPropagation,
    PodSandboxConfig, SecurityProfile,
};
use nodus_testkit::cri::{self, Runtime};
use nodus_testkit::{cleanup, wait_until, ContainerdOptions, PrivateContainerd};

const CONTAINER_RUNNING: i32 = 1;

/// A private containerd with one pod sandbox on the runtime under test.
struct Pod {
    ctrd: PrivateContainerd,
    rt: Runtime,
    config: PodSandboxConfig,
    id: String,
}

impl Pod {
    async fn start(name: &str, privileged: bool) -> Pod {
        Pod::start_with(name, privileged, |_| {}).await
    }

    async fn start_with(
        name: &str,
        privileged: bool,
        edit: impl FnOnce(&mut PodSandboxConfig),
    ) -> Pod {
        let ctrd = PrivateContainerd::start(ContainerdOptions::default())
            .await
            .expect("private containerd starts");
        eprintln!("runtime under test: {}", ctrd.default_runtime());
        let mut rt = ctrd.runtime().await.unwrap();
        let mut config = ctrd.sandbox_config(name);
        if privileged {
            let linux = config.linux.get_or_insert_with(Default::default);
            linux
                .security_context
                .get_or_insert_with(LinuxSandboxSecurityContext::default)
                .privileged = true;
        }
        edit(&mut config);
        let id = ctrd.must(
            "RunPodSandbox",
            cri::run_sandbox(&mut rt, &config, "").await,
        );
        Pod {
            ctrd,
            rt,
            config,
            id,
        }
    }

    /// Creates and starts busybox `sh -c script` as container `name`; returns its ID.
    async fn run(
        &mut self,
        name: &str,
        script: &str,
        linux: LinuxContainerConfig,
        mounts: Vec<Mount>,
    ) -> String {
        let id = self.try_run(name, script, linux, mounts).await.unwrap();
        self.wait_log(name, "").await;
        id
    }

    async fn try_run(
        &mut self,
        name: &str,
        script: &str,
        linux: LinuxContainerConfig,
        mounts: Vec<Mount>,
    ) -> anyhow::Result<String> {
        let mut config = cri::busybox_sh(name, script);
        config.linux = Some(linux);
        config.mounts = mounts;
        cri::create_and_start(&mut self.rt, &self.id, &self.config, config)
            .await
            .map_err(|e| anyhow::anyhow!("container {name}: {e}\n{}", self.ctrd.log_tail(40)))
    }

    /// The CRI log of container `name` once it contains `needle`.
    async fn wait_log(&self, name: &str, needle: &str) -> String {
        let log = cri::wait_log(&self.config, name, needle, Duration::from_secs(30)).await;
        self.ctrd.must("the log", log)
    }

    async fn exec(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<ExecSyncResponse, tonic::Status> {
        cri::exec_sync(&mut self.rt, id, cmd, timeout).await
    }

    /// `sh -c script` in container `id`: stdout and stderr together.
    async fn sh(&mut self, id: &str, script: &str) -> String {
        let out = cri::exec_sh(&mut self.rt, id, script, 20).await;
        self.ctrd.must(&format!("ExecSync {script:?}"), out)
    }

    async fn status(&mut self, id: &str) -> ContainerStatus {
        cri::container_status(&mut self.rt, id).await.unwrap()
    }

    async fn wait_exited(&mut self, id: &str) -> ContainerStatus {
        let exited = cri::wait_exited(&mut self.rt, id, Duration::from_secs(60)).await;
        self.ctrd.must("the exit", exited)
    }
}

fn privileged() -> LinuxContainerConfig {
    LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A field of /proc/<pid>/status (`CapEff:`, `CapBnd:`...), trimmed.
fn cap_line(status: &str, field: &str) -> String {
    status
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
        .unwrap_or_default()
}

/// Character devices of the host that no unprivileged container has.
fn host_only_devices() -> Vec<&'static str> {
    [
        "/dev/kmsg",
        "/dev/loop-control",
        "/dev/mem",
        "/dev/vda",
        "/dev/fuse",
    ]
    .into_iter()
    .filter(|p| Path::new(p).exists())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_container_gets_host_devices_and_capabilities() {
    let mut pod = Pod::start("parity-priv", true).await;
    let devices = host_only_devices();
    assert!(
        !devices.is_empty(),
        "this host has none of the test's devices"
    );
    let ctr = pod
        .run(
            "priv",
            "echo started; exec sleep 1000",
            privileged(),
            vec![],
        )
        .await;
    assert_eq!(pod.status(&ctr).await.state, CONTAINER_RUNNING);
    let plain = pod
        .run(
            "plain",
            "echo started; exec sleep 1000",
            LinuxContainerConfig::default(),
            vec![],
        )
        .await;
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    for (id, privileged) in [(ctr.clone(), true), (plain.clone(), false)] {
        let status = pod.sh(&id, "cat /proc/self/status").await;
        let eff = cap_line(&status, "CapEff:");
        if privileged {
            // Every capability root has here (its bounding set), as runc gives.
            assert_eq!(eff, cap_line(&ours, "CapBnd:"), "{status}");
        } else {
            assert_ne!(eff, cap_line(&ours, "CapBnd:"), "{status}");
        }
        for dev in &devices {
            let out = pod
                .sh(&id, &format!("test -c {dev} || test -b {dev}; echo $?"))
                .await;
            let expect = if privileged { "0" } else { "1" };
            assert_eq!(out.trim(), expect, "{dev} in the {id} container");
        }
        // /dev/pts is a devpts of the container's own, with its ptmx.
        let out = pod.sh(&id, "test -c /dev/pts/ptmx; echo $?").await;
        assert_eq!(out.trim(), "0", "/dev/pts/ptmx");
    }
}

/// A directory bind-mounted on itself and made rshared (what CRI requires of a source for
/// Bidirectional and HostToContainer); everything under it unmounted on drop.
struct SharedDir {
    dir: tempfile::TempDir,
}

impl SharedDir {
    fn new() -> SharedDir {
        let dir = tempfile::Builder::new()
            .prefix("nodus-propagation-")
            .tempdir()
            .unwrap();
        let p = dir.path();
        mount(Some(p), p, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        mount(
            None::<&str>,
            p,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap();
        SharedDir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        // Deepest first, the self-bind last.
        for _ in 0..3 {
            cleanup::unmount_all_under(self.dir.path());
        }
    }
}

fn tmpfs(at: &Path) {
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", at.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_propagation_matches_the_mode() {
    let shared = SharedDir::new();
    let modes = [
        ("private", MountPropagation::PropagationPrivate),
        ("slave", MountPropagation::PropagationHostToContainer),
        ("shared", MountPropagation::PropagationBidirectional),
    ];
    for (name, _) in &modes {
        for sub in ["from-host", "from-container"] {
            std::fs::create_dir_all(shared.path().join(name).join(sub)).unwrap();
        }
    }
    let mut pod = Pod::start("parity-prop", true).await;
    let mut ids = HashMap::new();
    for (name, propagation) in &modes {
        let id = pod
            .run(
                name,
                "echo started; exec sleep 1000",
                privileged(),
                vec![Mount {
                    container_path: "/mnt".into(),
                    host_path: shared.path().join(name).display().to_string(),
                    propagation: *propagation as i32,
                    ..Default::default()
                }],
            )
            .await;
        ids.insert(*name, id);
    }
    // Host -> container: a mount made on the host after the start.
    for (name, _) in &modes {
        let at = shared.path().join(name).join("from-host");
        tmpfs(&at);
        std::fs::write(at.join("marker"), name).unwrap();
    }
    // Container -> host: a mount made in the container.
    for (name, _) in &modes {
        let id = ids[name].clone();
        let out = pod
            .sh(
                &id,
                "mount -t tmpfs tmpfs /mnt/from-container && echo in > /mnt/from-container/marker && echo mounted",
            )
            .await;
        assert!(out.contains("mounted"), "{name}: {out}");
    }
    for (name, propagation) in &modes {
        let id = ids[name].clone();
        let seen = pod
            .sh(&id, "cat /mnt/from-host/marker 2>/dev/null || echo absent")
            .await;
        let host_to_container = *propagation != MountPropagation::PropagationPrivate;
        if host_to_container {
            assert_eq!(
                seen.trim(),
                *name,
                "{name}: a host mount reaches the container"
            );
        } else {
            assert_eq!(seen.trim(), "absent", "{name}: a host mount stays out");
        }
        let on_host = shared
            .path()
            .join(name)
            .join("from-container/marker")
            .exists();
        assert_eq!(
            on_host,
            *propagation == MountPropagation::PropagationBidirectional,
            "{name}: the container's mount seen on the host"
        );
    }
    drop(pod);
}

/// A seccomp profile that allows everything but sethostname(2).
fn write_profile(dir: &Path) -> PathBuf {
    let path = dir.join("no-sethostname.json");
    std::fs::write(
        &path,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_container_ignores_seccomp_profile() {
    let mut pod = Pod::start("parity-seccomp", true).await;
    let profile = write_profile(pod.ctrd.dir());
    let localhost = SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: profile.display().to_string(),
    };
    let script =
        "grep Seccomp: /proc/self/status; hostname parity-renamed && echo sethostname-ok; \
                  echo done; exec sleep 1000";
    // Unprivileged with CAP_SYS_ADMIN: the profile applies, sethostname fails.
    pod.run(
        "confined",
        script,
        LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: vec!["SYS_ADMIN".into()],
                    ..Default::default()
                }),
                seccomp: Some(localhost.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        vec![],
    )
    .await;
    let log = pod.wait_log("confined", "done").await;
    assert!(log.contains("Seccomp:\t2"), "{log}");
    assert!(!log.contains("sethostname-ok"), "{log}");
    // Privileged: unconfined, whatever profile it names.
    let mut linux = privileged();
    linux.security_context.as_mut().unwrap().seccomp = Some(localhost);
    pod.run("privileged", script, linux, vec![]).await;
    let log = pod.wait_log("privileged", "done").await;
    assert!(log.contains("Seccomp:\t0"), "{log}");
    assert!(log.contains("sethostname-ok"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_stats_report_cgroup_usage() {
    let mut pod = Pod::start("parity-stats", false).await;
    let id = pod
        .run(
            "busy",
            // Some CPU time and some memory (a 4 MiB file in tmpfs-backed /dev/shm or the
            // writable layer's page cache), then idle.
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; \
             dd if=/dev/zero of=/tmp/fill bs=1M count=4 2>/dev/null; echo started; exec sleep 1000",
            LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    memory_limit_in_bytes: 256 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            },
            vec![],
        )
        .await;
    pod.wait_log("busy", "started").await;
    let one = pod
        .rt
        .container_stats(ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("ContainerStats: {e}\n{}", pod.ctrd.log_tail(40)))
        .into_inner()
        .stats
        .expect("ContainerStats has stats");
    let all = pod
        .rt
        .list_container_stats(ListContainerStatsRequest {
            filter: Some(ContainerStatsFilter {
                id: id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("ListContainerStats: {e}\n{}", pod.ctrd.log_tail(40)))
        .into_inner()
        .stats;
    assert_eq!(all.len(), 1, "{all:?}");
    for stats in [&one, &all[0]] {
        assert_eq!(stats.attributes.as_ref().unwrap().id, id);
        let cpu = stats.cpu.as_ref().expect("cpu stats");
        let cpu_ns = cpu.usage_core_nano_seconds.as_ref().map(|v| v.value);
        assert!(cpu_ns.unwrap_or(0) > 1_000_000, "cpu {cpu:?}");
        let mem = stats.memory.as_ref().expect("memory stats");
        let ws = mem.working_set_bytes.as_ref().map(|v| v.value).unwrap_or(0);
        assert!(ws > 0 && ws < 256 << 20, "memory {mem:?}");
        let usage = mem.usage_bytes.as_ref().map(|v| v.value).unwrap_or(0);
        assert!(usage >= ws, "memory {mem:?}");
    }
}

/// Removes, on drop, a relative cgroup parent's directories (below our own cgroup, where
/// runtimes started by our containerd put it); the containers' cgroups below it are gone
/// with the pod by then.
struct RelativeParent(Vec<PathBuf>);

impl Drop for RelativeParent {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_stats_with_relative_cgroup_parent() {
    if nodus_runtime::cgroups::is_unified() {
        eprintln!(
            "SKIP relative cgroup parent on cgroup v2: the test's own cgroup holds processes, \
             so no runtime may enable controllers below it"
        );
        return;
    }
    let relative = format!("nodus-rel-{}", nodus_testkit::unique_suffix());
    let parent = nodus_runtime::cgroups::Cgroup::resolve(Some(Path::new(&relative)), "")
        .expect("resolve the relative parent");
    // runc on a hybrid host also makes the path in the v2 hierarchy (below our own v2
    // cgroup) and leaves the parent there: that one goes too.
    let mut dirs = parent.dirs();
    let own_v2 = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("0::")
                .map(|p| p.trim_start_matches('/').to_string())
        });
    if let Some(own) = own_v2 {
        dirs.push(
            Path::new("/sys/fs/cgroup/unified")
                .join(own)
                .join(&relative),
        );
    }
    let _cleanup = RelativeParent(dirs);
    let mut pod = Pod::start_with("parity-relcg", false, |c| {
        c.linux.get_or_insert_with(Default::default).cgroup_parent = relative.clone();
    })
    .await;
    let id = pod
        .run(
            "app",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo started; exec sleep 1000",
            LinuxContainerConfig::default(),
            vec![],
        )
        .await;
    pod.wait_log("app", "started").await;
    // The container's cgroup is where the relative path points.
    let memory = parent
        .dirs()
        .into_iter()
        .find(|d| d.starts_with("/sys/fs/cgroup/memory"))
        .expect("a memory hierarchy");
    assert!(memory.join(&id).is_dir(), "{}", memory.join(&id).display());
    let stats = pod
        .rt
        .container_stats(ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("ContainerStats: {e}\n{}", pod.ctrd.log_tail(40)))
        .into_inner()
        .stats
        .expect("ContainerStats has stats");
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref());
    assert!(cpu.map(|v| v.value).unwrap_or(0) > 1_000_000, "{stats:?}");
    let ws = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref());
    assert!(ws.map(|v| v.value).unwrap_or(0) > 0, "{stats:?}");
    drop(pod);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_exceeded_is_oom_killed() {
    let mut pod = Pod::start("parity-oom", false).await;
    let limited = || LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    };
    // runc's shim in containerd 1.6 may report the exit before the OOM event (containerd
    // issue 8180, fixed upstream in 2.x by sending the OOM event first, as ours does): CRI
    // then says Error. Seen in the VM tier on cgroup v2. Counted for runc, never accepted
    // from ours.
    let reference = pod.ctrd.default_runtime() == "runc";
    let mut raced = 0;
    // Three in a row: the reason must hold every time, not only when the OOM event wins.
    for n in 0..3 {
        let name = format!("hog{n}");
        // dd's 256 MiB buffer, filled from /dev/zero, cannot fit in 32 MiB.
        let script = "echo started; exec dd if=/dev/zero of=/dev/null bs=256M count=1";
        let id = pod.try_run(&name, script, limited(), vec![]).await.unwrap();
        let st = pod.wait_exited(&id).await;
        assert_eq!(st.exit_code, 137, "{name}: {st:?}");
        if reference && st.reason == "Error" {
            raced += 1;
            continue;
        }
        assert_eq!(st.reason, "OOMKilled", "{name}: {st:?}");
    }
    eprintln!("OOM kills reported as Error (runc's known race): {raced} of 3");
    assert!(raced < 3, "runc reported no OOM kill as OOMKilled");
    // A container that stays under its limit exits as usual.
    let id = pod
        .try_run(
            "fits",
            "exec dd if=/dev/zero of=/dev/null bs=1M count=1",
            limited(),
            vec![],
        )
        .await
        .unwrap();
    let st = pod.wait_exited(&id).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_timeout_kills_the_process() {
    let mut pod = Pod::start("parity-exec", false).await;
    let id = pod
        .run(
            "app",
            "echo started; exec sleep 1000",
            LinuxContainerConfig::default(),
            vec![],
        )
        .await;
    let marker = format!("{}", 4000 + std::process::id() % 1000);
    let started = std::time::Instant::now();
    let r = pod.exec(&id, &["sleep", &marker], 2).await;
    let took = started.elapsed();
    let err = r.expect_err("ExecSync of a process outliving its timeout fails");
    assert!(
        err.message().contains("timeout") || err.code() == tonic::Code::DeadlineExceeded,
        "{err:?}"
    );
    assert!(
        took < Duration::from_secs(30),
        "ExecSync returned after {took:?}"
    );
    // The process is gone (seen from the host's /proc, which shows the container's).
    wait_until(
        Duration::from_secs(10),
        "the timed-out exec's process to be gone",
        || cleanup::pids_with_cmdline(&["sleep", &marker]).is_empty(),
    );
    // The container itself is untouched and execs still work.
    assert_eq!(pod.status(&id).await.state, CONTAINER_RUNNING);
    assert_eq!(pod.sh(&id, "echo still-here").await.trim(), "still-here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_path_that_is_a_symlink() {
    let mut pod = Pod::start("parity-mask", false).await;
    // /bin/ls is a symlink to /bin/busybox in the image, and so is /bin/sh.
    let started = pod
        .try_run(
            "masked",
            "echo started; exec sleep 1000",
            LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    masked_paths: vec!["/bin/ls".into(), "/etc/group".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
            vec![],
        )
        .await;
    if pod.ctrd.default_runtime() == "runc" {
        // runc (1.1) bind-mounts /dev/null through the symlink onto busybox itself: the
        // shell is gone and the container cannot start. Ours masks the link.
        let err = started.expect_err("runc masks the symlink's target");
        assert!(
            err.to_string().contains("executable file not found"),
            "{err}"
        );
        return;
    }
    let id = started.unwrap();
    pod.wait_log("masked", "started").await;
    // The link itself is masked (now /dev/null), the regular file too; the shell, the
    // link's target, still runs.
    assert_eq!(pod.sh(&id, "test -c /bin/ls; echo $?").await.trim(), "0");
    assert_eq!(pod.sh(&id, "wc -c < /etc/group").await.trim(), "0");
    assert_eq!(pod.sh(&id, "echo shell-ok").await.trim(), "shell-ok");
    assert_eq!(
        pod.sh(&id, "test -c /bin/busybox; echo $?").await.trim(),
        "1"
    );
}
