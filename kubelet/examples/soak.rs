//! Soak benchmark (not a test; run by `hack/soak.sh`): CYCLES pod create/delete cycles
//! (PARALLEL pods each, default 500 x 1) through our kubelet's static pod directory on a
//! private containerd with nodus-bridge, and what the node holds at the start, the middle
//! and the end: the kubelet's RSS and open file descriptors, shim processes, sandboxes,
//! IPAM leases, veths, and the kubelet's CPU per cycle over the first and last tenth.
//! Prints the figures and the growth from start to end (target: RSS and fds within 10%,
//! shims, sandboxes and leases back to zero, CPU per cycle flat).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nodus_proto::runtime::v1 as cri;
use nodus_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use nodus_testkit::procstat::{cpu_secs, open_fds, pids_named, rss_kib};
use nodus_testkit::{Cni, ContainerdOptions, PrivateContainerd};
use tonic::transport::Channel;

mod churn;

use churn::{env, leases, manifest, veths};

const NODE: &str = "soak";

async fn running(rt: &mut RuntimeServiceClient<Channel>) -> Result<usize> {
    Ok(rt
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
        .containers
        .len())
}

async fn sandboxes(rt: &mut RuntimeServiceClient<Channel>) -> Result<usize> {
    Ok(rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items
        .len())
}

async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ok().await? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

struct Sample {
    rss_kib: u64,
    fds: usize,
    shims: usize,
    sandboxes: usize,
    leases: usize,
    veths: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cycles = env("CYCLES", 500).max(10);
    let parallel = env("PARALLEL", 1).max(1);
    let ctrd = PrivateContainerd::start(ContainerdOptions {
        cni: Cni::NodusBridge {
            subnet: "10.68.0.0/16".into(),
        },
        ..Default::default()
    })
    .await?;
    let mut rt = ctrd.runtime().await?;
    let manifests = ctrd.dir().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let config = ctrd.dir().join("kubelet.yaml");
    std::fs::write(
        &config,
        ctrd.kubelet_config(
            &manifests,
            "healthzPort: 0\nreadOnlyPort: 0\naddress: 127.0.0.1\n\
             evictionHard: {memory.available: 100Mi, nodefs.available: 0%, imagefs.available: 0%}\n\
             imageGCHighThresholdPercent: 100\n",
        ),
    )?;
    let kubelet = ctrd.spawn_kubelet(&config, NODE, &ctrd.dir().join("kubelet.log"))?;
    let pid = kubelet.pid();
    let shims_before = pids_named("containerd-shim").len();

    let cycle = async |rt: &mut RuntimeServiceClient<Channel>, i: usize| -> Result<()> {
        let names: Vec<String> = (0..parallel).map(|k| format!("s{i}-{k}")).collect();
        for n in &names {
            let tmp = manifests.join(format!(".{n}.tmp"));
            std::fs::write(&tmp, manifest(n))?;
            std::fs::rename(&tmp, manifests.join(format!("{n}.yaml")))?;
        }
        wait_for("the pods running", async || {
            Ok(running(rt).await? >= parallel)
        })
        .await?;
        for n in &names {
            std::fs::remove_file(manifests.join(format!("{n}.yaml")))?;
        }
        wait_for("the pods removed", async || Ok(sandboxes(rt).await? == 0)).await?;
        Ok(())
    };
    let sample = async |rt: &mut RuntimeServiceClient<Channel>| -> Result<Sample> {
        Ok(Sample {
            rss_kib: rss_kib(pid),
            fds: open_fds(pid),
            shims: pids_named("containerd-shim")
                .len()
                .saturating_sub(shims_before),
            sandboxes: sandboxes(rt).await?,
            leases: leases(&ctrd),
            veths: veths(&ctrd),
        })
    };

    // Warm-up: the first cycles pay one-time costs (image, caches, allocator arenas).
    for i in 0..5 {
        cycle(&mut rt, i).await?;
    }
    // Shims of the removed pods exit a moment after their sandboxes go.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tenth = (cycles / 10).max(1);
    let mut samples = vec![("start", sample(&mut rt).await?)];
    let (mut cpu_first, mut cpu_last) = (0.0, 0.0);
    let started = Instant::now();
    let log_tail = || {
        let log = std::fs::read_to_string(ctrd.dir().join("kubelet.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    for i in 0..cycles {
        let cpu0 = cpu_secs(pid);
        if let Err(e) = cycle(&mut rt, 100 + i).await {
            bail!(
                "cycle {i}: {e}\n--- kubelet log tail ---\n{}\n{}",
                log_tail(),
                ctrd.log_tail(15)
            );
        }
        let used = cpu_secs(pid) - cpu0;
        if i < tenth {
            cpu_first += used;
        } else if i >= cycles - tenth {
            cpu_last += used;
        }
        if i + 1 == cycles / 2 {
            samples.push(("middle", sample(&mut rt).await?));
        }
    }
    let wall = started.elapsed().as_secs_f64();
    // Let the kubelet's housekeeping run once more before the last look.
    tokio::time::sleep(Duration::from_secs(3)).await;
    samples.push(("end", sample(&mut rt).await?));

    println!(
        "soak: {cycles} cycles of {parallel} pod(s) in {wall:.0} s ({:.2} s per cycle)",
        wall / cycles as f64
    );
    println!(
        "{:<8} {:>10} {:>6} {:>6} {:>10} {:>7} {:>6}",
        "", "RSS KiB", "fds", "shims", "sandboxes", "leases", "veths"
    );
    for (when, s) in &samples {
        println!(
            "{when:<8} {:>10} {:>6} {:>6} {:>10} {:>7} {:>6}",
            s.rss_kib, s.fds, s.shims, s.sandboxes, s.leases, s.veths
        );
    }
    let (start, end) = (&samples[0].1, &samples[samples.len() - 1].1);
    let growth = |a: f64, b: f64| if a > 0.0 { (b / a - 1.0) * 100.0 } else { 0.0 };
    println!(
        "growth start -> end: RSS {:+.1}%, fds {:+.1}% (target within 10%)",
        growth(start.rss_kib as f64, end.rss_kib as f64),
        growth(start.fds as f64, end.fds as f64)
    );
    println!(
        "kubelet CPU per cycle: first {tenth} cycles {:.1} ms, last {tenth} {:.1} ms (ratio {:.2}, target flat)",
        cpu_first * 1000.0 / tenth as f64,
        cpu_last * 1000.0 / tenth as f64,
        if cpu_first > 0.0 { cpu_last / cpu_first } else { 0.0 }
    );
    println!(
        "left at the end: {} shims, {} sandboxes, {} leases, {} veths (target 0)",
        end.shims, end.sandboxes, end.leases, end.veths
    );
    drop(kubelet);
    Ok(())
}
