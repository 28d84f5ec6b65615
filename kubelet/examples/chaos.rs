//! Chaos benchmark (not a test; run by `hack/chaos.sh`): pod churn through our kubelet on a
//! private containerd with nodus-bridge, with a `kill -9` at a random moment of each round:
//! the kubelet (then restarted), containerd (then restarted), or one shim. ROUNDS rounds per
//! fault (default 20), PODS pods per round (default 5). After each round it checks that the
//! node converged (every manifest's pod runs exactly once: one ready sandbox, one running
//! container) and, once the manifests are removed, that nothing is left: sandboxes,
//! containers, IPAM leases, veths, shims, mounts and pod cgroups of this instance. Prints
//! the counts per fault.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nodus_proto::runtime::v1 as cri;
use nodus_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use nodus_testkit::{Cni, ContainerdOptions, PrivateContainerd};
use tonic::transport::Channel;

mod churn;

use churn::{env, leases, manifest, veths};

const NODE: &str = "chaos";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Kubelet,
    Containerd,
    Shim,
}

/// Per pod name: (ready sandboxes, running containers).
async fn census(rt: &mut RuntimeServiceClient<Channel>) -> Result<HashMap<String, (usize, usize)>> {
    let mut out: HashMap<String, (usize, usize)> = HashMap::new();
    let name = |labels: &HashMap<String, String>| {
        labels
            .get("io.kubernetes.pod.name")
            .and_then(|n| n.strip_suffix(&format!("-{NODE}")))
            .map(str::to_string)
    };
    for s in rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items
    {
        if s.state == cri::PodSandboxState::SandboxReady as i32 {
            if let Some(n) = name(&s.labels) {
                out.entry(n).or_default().0 += 1;
            }
        }
    }
    for c in rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers
    {
        if c.state == cri::ContainerState::ContainerRunning as i32 {
            if let Some(n) = name(&c.labels) {
                out.entry(n).or_default().1 += 1;
            }
        }
    }
    Ok(out)
}

/// What the instance still holds: (sandboxes, containers, leases, veths, shims, mounts,
/// pod cgroups).
struct Leftovers([usize; 7]);

const LEFTOVER_NAMES: [&str; 7] = [
    "sandboxes",
    "containers",
    "leases",
    "veths",
    "shims",
    "mounts",
    "pod cgroups",
];

async fn leftovers(
    ctrd: &PrivateContainerd,
    rt: &mut RuntimeServiceClient<Channel>,
) -> Result<Leftovers> {
    let sandboxes = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items
        .len();
    let containers = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers
        .len();
    let leases = leases(ctrd);
    let veths = veths(ctrd);
    let dir = ctrd.dir().display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&dir))
        .count();
    let parent = ctrd.cgroup_parent();
    let pod_cgroups: usize = nodus_testkit::cleanup::cgroup_roots()
        .into_iter()
        .map(|root| {
            dirs(&root.join(parent.trim_start_matches('/')))
                .iter()
                .filter(|d| {
                    d.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("pod"))
                })
                .count()
        })
        .sum();
    Ok(Leftovers([
        sandboxes,
        containers,
        leases,
        veths,
        ctrd.shim_pids().len(),
        mounts,
        pod_cgroups,
    ]))
}

fn dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(dirs(&p));
            out.push(p);
        }
    }
    out
}

/// A random duration in `0..max`.
fn random_delay(max: Duration) -> Duration {
    max.mul_f64(rand::random::<f64>())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let rounds = env("ROUNDS", 20).max(1);
    let pods = env("PODS", 5).max(1);
    let mut ctrd = PrivateContainerd::start(ContainerdOptions {
        cni: Cni::NodusBridge {
            subnet: "10.69.0.0/16".into(),
        },
        ..Default::default()
    })
    .await?;
    let manifests = ctrd.dir().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let config = ctrd.dir().join("kubelet.yaml");
    std::fs::write(
        &config,
        ctrd.kubelet_config(
            &manifests,
            "healthzPort: 0\nreadOnlyPort: 0\naddress: 127.0.0.1\nfileCheckFrequency: 5s\n\
             evictionHard: {memory.available: 100Mi, nodefs.available: 0%, imagefs.available: 0%}\n\
             imageGCHighThresholdPercent: 100\n",
        ),
    )?;
    let log = ctrd.dir().join("kubelet.log");
    let mut kubelet = ctrd.spawn_kubelet(&config, NODE, &log)?;
    println!("chaos: {rounds} rounds per fault, {pods} pods per round; kill -9 at a random moment of the churn");
    println!(
        "{:<11} {:>9} {:>14} {:>14}  left after removal ({})",
        "fault",
        "converged",
        "max converge s",
        "max removal s",
        LEFTOVER_NAMES.join(", ")
    );
    let mut failed = false;
    for fault in [Fault::Kubelet, Fault::Containerd, Fault::Shim] {
        let (mut converged, mut max_converge, mut max_removal) = (0, 0.0f64, 0.0f64);
        let mut left = [0usize; 7];
        for round in 0..rounds {
            let names: Vec<String> = (0..pods)
                .map(|k| format!("{}-{round}-{k}", format!("{fault:?}").to_lowercase()))
                .collect();
            for n in &names {
                let tmp = manifests.join(format!(".{n}.tmp"));
                std::fs::write(&tmp, manifest(n))?;
                std::fs::rename(&tmp, manifests.join(format!("{n}.yaml")))?;
            }
            tokio::time::sleep(random_delay(Duration::from_millis(1500))).await;
            match fault {
                Fault::Kubelet => {
                    kubelet.kill9();
                    kubelet = ctrd.spawn_kubelet(&config, NODE, &log)?;
                }
                Fault::Containerd => ctrd.crash_restart().await?,
                Fault::Shim => {
                    let shims = ctrd.shim_pids();
                    if let Some(pid) = shims.get(rand::random_range(0..shims.len().max(1))) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(*pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            let mut rt = ctrd.runtime().await?;
            // Converged: each pod exactly one ready sandbox and one running container.
            let t0 = Instant::now();
            let deadline = t0 + Duration::from_secs(120);
            loop {
                let c = census(&mut rt).await?;
                if names.iter().all(|n| c.get(n) == Some(&(1, 1))) {
                    converged += 1;
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!("{fault:?} round {round}: not converged in 120 s: {c:?}");
                    failed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max_converge = max_converge.max(t0.elapsed().as_secs_f64());
            for n in &names {
                std::fs::remove_file(manifests.join(format!("{n}.yaml")))?;
            }
            let t1 = Instant::now();
            let deadline = t1 + Duration::from_secs(120);
            let left_now = loop {
                let l = leftovers(&ctrd, &mut rt).await?;
                if l.0.iter().all(|&x| x == 0) || Instant::now() > deadline {
                    break l;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            max_removal = max_removal.max(t1.elapsed().as_secs_f64());
            if left_now.0.iter().any(|&x| x > 0) {
                eprintln!(
                    "{fault:?} round {round}: left after 120 s: {:?}",
                    LEFTOVER_NAMES.iter().zip(left_now.0).collect::<Vec<_>>()
                );
                failed = true;
            }
            for (a, b) in left.iter_mut().zip(left_now.0) {
                *a += b;
            }
        }
        println!(
            "{:<11} {:>6}/{rounds:<2} {:>14.1} {:>14.1}  {}",
            format!("{fault:?}"),
            converged,
            max_converge,
            max_removal,
            left.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    drop(kubelet);
    if failed {
        bail!("the node did not converge or left something behind (see above)");
    }
    Ok(())
}
