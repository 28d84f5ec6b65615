//! Pod startup benchmark (not a test; run by `hack/bench-kubelet.sh`).
//!
//! In one private containerd (testkit) it measures, for one pod and for a burst of pods,
//! the time from "the pod is asked for" to "its container started" (CRI `started_at`):
//! - floor: a small client making the kubelet's CRI calls itself (ImageStatus,
//!   RunPodSandbox, CreateContainer, StartContainer), one pod in sequence, and for the burst
//!   one such sequence per pod, all at once; in the bursts also the matched floor, whose
//!   requests are the ones our kubelet sends for the same pod (a kubelet-style pod cgroup,
//!   PodSandboxStatus for the pod IP, the `/etc/hosts` and termination-log mounts, the
//!   BestEffort CPU shares and OOM score), so that its ratio is the kubelet's own work;
//! - ours: the kubelet, from the manifest written to its static pod directory.
//!
//! Prints p50/p99 and the ratios ours/floor, and the kubelet's RSS with the burst running.
//!
//! With `PEER=upstream` it measures instead ours beside the upstream kubelet 1.20.2
//! (`hack/kube-build.sh kubelet`; `NODUS_UPSTREAM_KUBELET` names another), each on a fresh
//! private containerd whose default runtime is `OURS_RUNTIME` / `PEER_RUNTIME` (default
//! runc for both; `nodus-shim` for ours compares whole stacks): kubelet RSS idle and with the
//! burst running, CPU seconds for the burst, and the burst's wall time (manifests written ->
//! every container started), with the ratios upstream/ours.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nodus_proto::runtime::v1 as cri;
use nodus_proto::runtime::v1::image_service_client::ImageServiceClient;
use nodus_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use nodus_testkit::procstat::{cpu_secs, rss_kib};
use nodus_testkit::{Cni, ContainerdOptions, PrivateContainerd, BUSYBOX_IMAGE};
use tonic::transport::Channel;

const NODE: &str = "bench";

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

struct Clients {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
}

/// Which floor: the four calls with the smallest requests (`Bare`), or the requests our
/// kubelet sends for the bench's pod (`Matched`: the sandbox in a kubelet-style pod cgroup,
/// `PodSandboxStatus` for the pod IP, the container with the kubelet's `/etc/hosts` and
/// termination-log mounts and its BestEffort resources), so that the ratio measures the
/// kubelet's own work rather than a difference in what is asked of containerd.
#[derive(Clone, Copy, PartialEq)]
enum Floor {
    Bare,
    Matched,
}

/// The kubelet's CRI sequence for one pod, made directly. Returns the container's started_at.
async fn floor_pod(
    c: &mut Clients,
    ctrd: &PrivateContainerd,
    name: &str,
    floor: Floor,
) -> Result<(String, i64)> {
    let mut config = ctrd.sandbox_config(name);
    config.dns_config = Some(cri::DnsConfig::default());
    let mut mounts = Vec::new();
    let mut resources = cri::LinuxContainerResources::default();
    if floor == Floor::Matched {
        let uid = config
            .metadata
            .as_ref()
            .map(|m| m.uid.clone())
            .unwrap_or_default();
        if let Some(linux) = config.linux.as_mut() {
            linux.cgroup_parent = format!("{}/kubepods/besteffort/pod{uid}", ctrd.cgroup_parent());
        }
        let dir = ctrd.dir().join("floor-pods").join(&uid);
        std::fs::create_dir_all(&dir)?;
        let (hosts, term) = (dir.join("etc-hosts"), dir.join("termination-log"));
        std::fs::write(&hosts, "127.0.0.1\tlocalhost\n")?;
        std::fs::write(&term, "")?;
        for (container_path, host) in [("/etc/hosts", &hosts), ("/dev/termination-log", &term)] {
            mounts.push(cri::Mount {
                container_path: container_path.into(),
                host_path: host.display().to_string(),
                ..Default::default()
            });
        }
        resources.cpu_shares = 2;
        resources.oom_score_adj = 1000;
    }
    // Without the kubelet's labels: the kubelet running beside must not adopt (and so
    // garbage-collect) the floor's pods.
    config.labels.clear();
    c.img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: BUSYBOX_IMAGE.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await?;
    std::fs::create_dir_all(&config.log_directory)?;
    let sandbox =
        c.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    if floor == Floor::Matched {
        c.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: false,
        })
        .await?;
    }
    let container =
        c.rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: BUSYBOX_IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "3600".into()],
                log_path: "main/0.log".into(),
                mounts,
                linux: Some(cri::LinuxContainerConfig {
                    resources: Some(resources),
                    security_context: Some(cri::LinuxContainerSecurityContext {
                        namespace_options: Some(cri::NamespaceOption {
                            pid: cri::NamespaceMode::Container as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            sandbox_config: Some(config),
        })
        .await?
        .into_inner()
        .container_id;
    c.rt.start_container(cri::StartContainerRequest {
        container_id: container.clone(),
    })
    .await?;
    let st =
        c.rt.container_status(cri::ContainerStatusRequest {
            container_id: container,
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("no status")?;
    Ok((sandbox, st.started_at))
}

async fn remove_sandboxes(rt: &mut RuntimeServiceClient<Channel>, ids: &[String]) -> Result<()> {
    for id in ids {
        let not_found = |e: &tonic::Status| e.code() == tonic::Code::NotFound;
        if let Err(e) = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
        {
            if !not_found(&e) {
                return Err(e.into());
            }
        }
        if let Err(e) = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
        {
            if !not_found(&e) {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

fn manifest(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [sleep, '3600']\n"
    )
}

fn write_manifest(dir: &Path, name: &str) -> Result<i64> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, manifest(name))?;
    let t0 = now_ns();
    std::fs::rename(&tmp, dir.join(format!("{name}.yaml")))?;
    Ok(t0)
}

/// started_at of the running container of each of `names`, waiting until all run.
async fn wait_started(
    rt: &mut RuntimeServiceClient<Channel>,
    names: &[String],
    timeout: Duration,
) -> Result<HashMap<String, i64>> {
    let deadline = Instant::now() + timeout;
    let mut out = HashMap::new();
    while out.len() < names.len() {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} pods started in {timeout:?}",
                out.len(),
                names.len()
            );
        }
        let list = rt
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    state: Some(cri::ContainerStateValue {
                        state: cri::ContainerState::ContainerRunning as i32,
                    }),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .containers;
        for c in list {
            let Some(pod) = c.labels.get("io.kubernetes.pod.name") else {
                continue;
            };
            let Some(name) = pod.strip_suffix(&format!("-{NODE}")) else {
                continue;
            };
            if names.iter().any(|n| n == name) && !out.contains_key(name) {
                let st = rt
                    .container_status(cri::ContainerStatusRequest {
                        container_id: c.id.clone(),
                        verbose: false,
                    })
                    .await?
                    .into_inner()
                    .status
                    .context("no status")?;
                out.insert(name.to_string(), st.started_at);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(out)
}

async fn wait_no_sandboxes(rt: &mut RuntimeServiceClient<Channel>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items
            .len();
        if n == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{n} sandboxes left after removal");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The kubelet's read-only port in the node's network namespace (serves /metrics).
const READ_ONLY_PORT: u16 = 10255;

/// `kubelet_runtime_operations_total` by operation type, read from the kubelet's /metrics in
/// the node network namespace (curl under nsenter); empty if it cannot be read.
fn runtime_operations(netns: &Path) -> HashMap<String, f64> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "curl", "-sf"])
        .arg(format!("http://127.0.0.1:{READ_ONLY_PORT}/metrics"))
        .output();
    let text = out
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("kubelet_runtime_operations_total{")?;
            let op = rest.split("operation_type=\"").nth(1)?.split('"').next()?;
            let value = l.rsplit(' ').next()?.parse().ok()?;
            Some((op.to_string(), value))
        })
        .collect()
}

/// Waits until the kubelet is idle again: its CRI calls over one relist period (1 s) are
/// no more than one relist's two lists. The sandboxes being gone does not mean the kubelet
/// is done: its teardown lists the pod's containers once more. Gives up after 30 s.
async fn settle(netns: &Path) {
    let total = || runtime_operations(netns).values().sum::<f64>();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = total();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let now = total();
        if now - last <= 2.0 {
            return;
        }
        last = now;
    }
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// One kubelet's figures for the peer comparison.
struct PeerFigures {
    rss_idle_kib: u64,
    rss_burst_kib: u64,
    cpu_burst: f64,
    wall_burst: f64,
    p50: f64,
    p99: f64,
}

/// A burst of `burst` static pods on a fresh private containerd whose default runtime is
/// `runtime`, through our kubelet or (upstream) the upstream one.
async fn peer_burst(upstream: bool, runtime: &str, burst: usize) -> Result<PeerFigures> {
    let ctrd = PrivateContainerd::start(ContainerdOptions {
        cni: Cni::NodusBridge {
            subnet: "10.68.0.0/16".into(),
        },
        default_runtime: Some(runtime.to_string()),
        ..Default::default()
    })
    .await?;
    let mut rt = ctrd.runtime().await?;
    let manifests = ctrd.dir().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let config = ctrd.dir().join("kubelet.yaml");
    // Both: no servers but the ones they cannot turn off, image GC and eviction off (this
    // machine's disk may be fuller than their defaults allow), no API server to ask.
    let common = "address: 127.0.0.1\nreadOnlyPort: 0\nhealthzPort: 0\n\
                  imageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 99\n\
                  evictionHard: {memory.available: 100Mi, nodefs.available: 0%, imagefs.available: 0%}\n\
                  authentication: {webhook: {enabled: false}}\nauthorization: {mode: AlwaysAllow}\n";
    let root_dir = ctrd.dir().join("kubelet");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ctrd.node_netns().path().display()))
        .arg("--");
    // The upstream kubelet changes three sysctls and writes under /var/log: put them back.
    let (_sysctls, _logs) = if upstream {
        let bin = nodus_testkit::upstream_kubelet::binary()
            .context("no upstream kubelet: run hack/kube-build.sh kubelet")?;
        std::fs::write(
            &config,
            nodus_testkit::upstream_kubelet::config(&ctrd, &manifests, common)?,
        )?;
        cmd.arg(bin)
            .args(nodus_testkit::upstream_kubelet::args(&ctrd, &root_dir));
        (
            Some(nodus_testkit::upstream_kubelet::SysctlGuard::record()),
            Some(nodus_testkit::upstream_kubelet::HostPodLogs::record()),
        )
    } else {
        std::fs::write(&config, ctrd.kubelet_config(&manifests, common))?;
        cmd.arg(nodus_testkit::bin_path("kubelet"));
        (None, None)
    };
    let log = std::fs::File::create(ctrd.dir().join("kubelet.log"))?;
    let kubelet = KillOnDrop(
        cmd.arg(format!("--config={}", config.display()))
            .arg(format!("--root-dir={}", root_dir.display()))
            .arg(format!("--hostname-override={NODE}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the kubelet")?,
    );
    // nsenter execs the kubelet: the child's PID is the kubelet's.
    let pid = kubelet.0.id();
    let log_tail = || {
        let text = std::fs::read_to_string(ctrd.dir().join("kubelet.log")).unwrap_or_default();
        // Errors first (klog's E/F lines), then the end.
        let mut lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with('E') || l.starts_with('F') || l.contains("ERROR"))
            .take(10)
            .collect();
        let tail: Vec<&str> = text.lines().rev().take(10).collect();
        lines.extend(tail.into_iter().rev());
        lines.join("\n")
    };
    write_manifest(&manifests, "warm")?;
    wait_started(&mut rt, &["warm".to_string()], Duration::from_secs(120))
        .await
        .with_context(|| format!("kubelet log:\n{}", log_tail()))?;
    std::fs::remove_file(manifests.join("warm.yaml"))?;
    wait_no_sandboxes(&mut rt).await?;
    // Idle: some sync periods with nothing to run.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_idle_kib = rss_kib(pid);
    let names: Vec<String> = (0..burst).map(|i| format!("peer-{i}")).collect();
    let cpu_before = cpu_secs(pid);
    let wall = Instant::now();
    let mut t0s = HashMap::new();
    for n in &names {
        t0s.insert(n.clone(), write_manifest(&manifests, n)?);
    }
    let started = wait_started(&mut rt, &names, Duration::from_secs(300))
        .await
        .with_context(|| format!("kubelet log:\n{}", log_tail()))?;
    let wall_burst = wall.elapsed().as_secs_f64();
    let cpu_burst = cpu_secs(pid) - cpu_before;
    let mut lat: Vec<f64> = names
        .iter()
        .map(|n| (started[n] - t0s[n]) as f64 / 1e6)
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_burst_kib = rss_kib(pid);
    for n in &names {
        std::fs::remove_file(manifests.join(format!("{n}.yaml")))?;
    }
    wait_no_sandboxes(&mut rt).await?;
    drop(kubelet);
    Ok(PeerFigures {
        rss_idle_kib,
        rss_burst_kib,
        cpu_burst,
        wall_burst,
        p50: pct(&mut lat, 50.0),
        p99: pct(&mut lat, 99.0),
    })
}

/// Ours beside the upstream kubelet; prints both and the ratios upstream/ours.
async fn compare_with_upstream(burst: usize) -> Result<()> {
    let ours_rt = std::env::var("OURS_RUNTIME").unwrap_or_else(|_| "runc".into());
    let peer_rt = std::env::var("PEER_RUNTIME").unwrap_or_else(|_| "runc".into());
    let ours = peer_burst(false, &ours_rt, burst).await?;
    let peer = peer_burst(true, &peer_rt, burst).await?;
    println!();
    println!(
        "beside the upstream kubelet 1.20.2: ours on {ours_rt}, upstream on {peer_rt}, burst of {burst} static pods"
    );
    println!("{:<34}{:>12}{:>12}{:>10}", "", "upstream", "ours", "ratio");
    let row = |what: &str, p: f64, o: f64, unit: &str| {
        println!(
            "{:<34}{:>12}{:>12}{:>10.2}",
            what,
            format!("{p:.2}{unit}"),
            format!("{o:.2}{unit}"),
            p / o
        )
    };
    row(
        "burst wall (all started), s",
        peer.wall_burst,
        ours.wall_burst,
        "",
    );
    row("burst p50, ms", peer.p50, ours.p50, "");
    row("burst p99, ms", peer.p99, ours.p99, "");
    row(
        "kubelet CPU for the burst, s",
        peer.cpu_burst,
        ours.cpu_burst,
        "",
    );
    let mib = |k: u64| k as f64 / 1024.0;
    row(
        "kubelet RSS idle, MiB",
        mib(peer.rss_idle_kib),
        mib(ours.rss_idle_kib),
        "",
    );
    row(
        &format!("kubelet RSS with {burst} pods, MiB"),
        mib(peer.rss_burst_kib),
        mib(ours.rss_burst_kib),
        "",
    );
    Ok(())
}

/// One floor burst: one CRI sequence per pod, all started together; latencies in ms. The
/// sandboxes are removed before it returns.
async fn floor_burst_round(
    clients: &Clients,
    ctrd: &PrivateContainerd,
    burst: usize,
    round: usize,
    floor: Floor,
) -> Result<Vec<f64>> {
    let t0 = now_ns();
    let tasks = (0..burst).map(|i| {
        let mut c = Clients {
            rt: clients.rt.clone(),
            img: clients.img.clone(),
        };
        let name = match floor {
            Floor::Bare => format!("fb{round}-{i}"),
            Floor::Matched => format!("fm{round}-{i}"),
        };
        async move { floor_pod(&mut c, ctrd, &name, floor).await }
    });
    let results = futures::future::join_all(tasks).await;
    let mut lat = Vec::new();
    let mut ids = Vec::new();
    let mut first_err = None;
    for r in results {
        match r {
            Ok((sb, started)) => {
                lat.push((started - t0) as f64 / 1e6);
                ids.push(sb);
            }
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    let mut rt = clients.rt.clone();
    remove_sandboxes(&mut rt, &ids).await?;
    wait_no_sandboxes(&mut rt).await?;
    match first_err {
        Some(e) => Err(e),
        None => Ok(lat),
    }
}

/// What one kubelet burst measured.
struct OursBurst {
    /// Manifest written -> container started, ms.
    latencies: Vec<f64>,
    /// The kubelet's RSS with the pods running, KiB.
    rss_kib: u64,
    /// The kubelet's CPU seconds and the wall seconds from the first manifest to the last
    /// container started.
    cpu: f64,
    wall: f64,
    /// The kubelet's CRI calls by operation over the same span.
    calls: HashMap<String, f64>,
}

/// One kubelet burst: all manifests written at once, measured until every container runs;
/// then the manifests are removed and the sandboxes waited for.
async fn ours_burst_round(
    rt: &mut RuntimeServiceClient<Channel>,
    manifests: &Path,
    netns: &Path,
    burst: usize,
    round: usize,
    pid: u32,
) -> Result<OursBurst> {
    let names: Vec<String> = (0..burst).map(|i| format!("burst{round}-{i}")).collect();
    let ops_before = runtime_operations(netns);
    let cpu_before = cpu_secs(pid);
    let wall = Instant::now();
    let mut t0s = HashMap::new();
    for n in &names {
        t0s.insert(n.clone(), write_manifest(manifests, n)?);
    }
    let started = wait_started(rt, &names, Duration::from_secs(180)).await;
    let (cpu, wall) = (cpu_secs(pid) - cpu_before, wall.elapsed().as_secs_f64());
    let calls = runtime_operations(netns)
        .into_iter()
        .map(|(op, n)| {
            let before = ops_before.get(&op).copied().unwrap_or(0.0);
            (op, n - before)
        })
        .collect();
    let mut rss = 0;
    if started.is_ok() {
        tokio::time::sleep(Duration::from_secs(3)).await;
        rss = rss_kib(pid);
    }
    for n in &names {
        std::fs::remove_file(manifests.join(format!("{n}.yaml")))?;
    }
    let started = started?;
    wait_no_sandboxes(rt).await?;
    let latencies = names
        .iter()
        .map(|n| (started[n] - t0s[n]) as f64 / 1e6)
        .collect();
    Ok(OursBurst {
        latencies,
        rss_kib: rss,
        cpu,
        wall,
        calls,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let burst: usize = std::env::var("BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let bursts: usize = std::env::var("BURSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
    if std::env::var("PEER").is_ok_and(|p| p == "upstream") {
        return compare_with_upstream(burst).await;
    }
    let ours_cni = nodus_testkit::bin_path("nodus-bridge");
    let cni = if ours_cni.exists() {
        Cni::NodusBridge {
            subnet: "10.67.0.0/16".into(),
        }
    } else {
        eprintln!(
            "note: {} missing, using the reference bridge",
            ours_cni.display()
        );
        Cni::ReferenceBridge {
            subnet: "10.67.0.0/16".into(),
        }
    };
    let ctrd = PrivateContainerd::start(ContainerdOptions {
        cni,
        ..Default::default()
    })
    .await?;
    let mut clients = Clients {
        rt: ctrd.runtime().await?,
        img: ctrd.images().await?,
    };

    let manifests = ctrd.dir().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let config = ctrd.dir().join("kubelet.yaml");
    std::fs::write(
        &config,
        ctrd.kubelet_config(
            &manifests,
            &format!("healthzPort: 0\nreadOnlyPort: {READ_ONLY_PORT}\naddress: 127.0.0.1\n"),
        ),
    )?;
    let kubelet = ctrd.spawn_kubelet(&config, NODE, &ctrd.dir().join("kubelet.log"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Warm-up (first sandbox pays one-time costs): one of each, not counted.
    let (sb, _) = floor_pod(&mut clients, &ctrd, "warm-floor", Floor::Bare).await?;
    remove_sandboxes(&mut clients.rt, &[sb]).await?;
    write_manifest(&manifests, "warm")?;
    wait_started(
        &mut clients.rt,
        &["warm".to_string()],
        Duration::from_secs(60),
    )
    .await?;
    std::fs::remove_file(manifests.join("warm.yaml"))?;
    wait_no_sandboxes(&mut clients.rt).await?;

    // One pod at a time, alternating floor and ours.
    let (mut floor1, mut ours1) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let t0 = now_ns();
        let (sb, started) =
            floor_pod(&mut clients, &ctrd, &format!("floor-{i}"), Floor::Bare).await?;
        floor1.push((started - t0) as f64 / 1e6);
        remove_sandboxes(&mut clients.rt, &[sb]).await?;

        let name = format!("one-{i}");
        let t0 = write_manifest(&manifests, &name)?;
        let started = wait_started(
            &mut clients.rt,
            std::slice::from_ref(&name),
            Duration::from_secs(60),
        )
        .await?;
        ours1.push((started[&name] - t0) as f64 / 1e6);
        std::fs::remove_file(manifests.join(format!("{name}.yaml")))?;
        wait_no_sandboxes(&mut clients.rt).await?;
    }

    // Bursts: BURSTS rounds, each a floor burst and an ours burst, the order alternating
    // from round to round so that neither always runs on the other's leftovers (shims
    // exiting, containerd's deferred cleanup), and each burst starting once the kubelet is
    // idle. One burst's p99 is its slowest pod or so and moves by 10-20% from run to run;
    // the ratio below is the median of the rounds' ratios, and the p50/p99 rows pool every
    // round's pods.
    let netns = ctrd.node_netns().path().to_path_buf();
    let (mut floor_burst, mut ours_burst, mut round_ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut matched_burst, mut matched_ratios) = (Vec::new(), Vec::new());
    let (mut burst_cpu, mut burst_wall) = (0.0, 0.0);
    let mut calls_total: HashMap<String, f64> = HashMap::new();
    let mut rss = 0;
    for round in 0..bursts {
        let mut floor_lat = Vec::new();
        let mut matched_lat = Vec::new();
        let mut ours_lat = Vec::new();
        // 0: the bare floor, 1: the matched floor, 2: ours; the order turns each round.
        for step in 0..3 {
            let which = (step + round) % 3;
            if which < 2 {
                let floor = if which == 0 {
                    Floor::Bare
                } else {
                    Floor::Matched
                };
                let lat = floor_burst_round(&clients, &ctrd, burst, round, floor).await?;
                if floor == Floor::Bare {
                    floor_lat = lat;
                } else {
                    matched_lat = lat;
                }
                settle(&netns).await;
                continue;
            }
            let b = ours_burst_round(
                &mut clients.rt,
                &manifests,
                &netns,
                burst,
                round,
                kubelet.pid(),
            )
            .await?;
            settle(&netns).await;
            ours_lat = b.latencies;
            rss = rss.max(b.rss_kib);
            burst_cpu += b.cpu;
            burst_wall += b.wall;
            for (op, n) in b.calls {
                *calls_total.entry(op).or_default() += n;
            }
        }
        let (mut f, mut m, mut o) = (floor_lat.clone(), matched_lat.clone(), ours_lat.clone());
        let o99 = pct(&mut o, 99.0);
        round_ratios.push(o99 / pct(&mut f, 99.0));
        matched_ratios.push(o99 / pct(&mut m, 99.0));
        floor_burst.extend(floor_lat);
        matched_burst.extend(matched_lat);
        ours_burst.extend(ours_lat);
    }
    let mut calls: Vec<(String, f64)> = calls_total
        .into_iter()
        .map(|(op, n)| (op, n / bursts as f64))
        .filter(|(_, n)| *n > 0.0)
        .collect();
    calls.sort_by(|a, b| b.1.total_cmp(&a.1));
    let burst_cpu = burst_cpu / bursts as f64;
    let burst_wall = burst_wall / bursts as f64;

    let (f50, f99) = (pct(&mut floor1, 50.0), pct(&mut floor1, 99.0));
    let (o50, o99) = (pct(&mut ours1, 50.0), pct(&mut ours1, 99.0));
    let (fb50, fb99) = (pct(&mut floor_burst, 50.0), pct(&mut floor_burst, 99.0));
    let (ob50, ob99) = (pct(&mut ours_burst, 50.0), pct(&mut ours_burst, 99.0));
    let (mb50, mb99) = (pct(&mut matched_burst, 50.0), pct(&mut matched_burst, 99.0));
    println!("pod startup latency (request -> container started, CRI started_at), ms");
    println!("{:<28}{:>10}{:>10}", "", "p50", "p99");
    println!(
        "{:<28}{:>10.1}{:>10.1}",
        format!("floor, 1 pod (n={runs})"),
        f50,
        f99
    );
    println!(
        "{:<28}{:>10.1}{:>10.1}",
        format!("kubelet, 1 pod (n={runs})"),
        o50,
        o99
    );
    println!(
        "{:<28}{:>10.1}{:>10.1}",
        format!("floor, {bursts} bursts of {burst}"),
        fb50,
        fb99
    );
    println!(
        "{:<28}{:>10.1}{:>10.1}",
        format!("matched floor, {bursts} x {burst}"),
        mb50,
        mb99
    );
    println!(
        "{:<28}{:>10.1}{:>10.1}",
        format!("kubelet, {bursts} bursts of {burst}"),
        ob50,
        ob99
    );
    println!(
        "ratio ours/floor, 1 pod p50: {:.2}  (target <= 1.2)",
        o50 / f50
    );
    for (what, ratios, pooled) in [
        ("floor", &mut round_ratios, ob99 / fb99),
        ("matched floor", &mut matched_ratios, ob99 / mb99),
    ] {
        let per_round: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        let median_ratio = pct(ratios, 50.0);
        println!(
            "ratio ours/{what}, burst p99: {median_ratio:.2} (median of {bursts} rounds: {}; pooled {pooled:.2})",
            per_round.join(" "),
        );
    }
    println!(
        "kubelet RSS with {burst} pods (highest of the rounds): {:.1} MiB (target < 25)",
        rss as f64 / 1024.0
    );
    println!(
        "kubelet CPU per burst: {burst_cpu:.2} s over {burst_wall:.2} s wall, manifests to all started (mean of {bursts})"
    );
    let total: f64 = calls.iter().map(|(_, n)| n).sum();
    println!(
        "kubelet CRI calls per burst: {total:.0} ({:.1} per pod; the floor makes 3 per pod): {}",
        total / burst as f64,
        calls
            .iter()
            .map(|(op, n)| format!("{op} {n:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "load average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    drop(kubelet);
    Ok(())
}
