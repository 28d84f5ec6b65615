//! `nodus-node`: a whole node on this machine without touching its network or its containerd.
//!
//! Starts a private containerd (own root, state, sockets) whose pods live in a private "node"
//! network namespace, starts our kubelet in that namespace with a static pod directory, waits
//! until every container of the manifests runs, prints the pods, and then keeps the node up
//! until Ctrl-C (or exits at once with `--until-running`). Everything is removed on exit.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use nodus_proto::runtime::v1::{
    ContainerState, ListContainersRequest, ListPodSandboxRequest, PodSandboxStatusRequest,
};
use nodus_testkit::{Cni, ContainerdOptions, PrivateContainerd};
use serde::Deserialize;

#[derive(Clone, Copy, ValueEnum)]
enum CniChoice {
    /// Our nodus-bridge.
    Nodus,
    /// The reference bridge + host-local from Debian.
    Reference,
}

#[derive(Parser)]
#[command(version, about = "Run a private Nodus node with demo static pods")]
struct Cli {
    /// Static pod manifests to run.
    #[arg(long, default_value = "hack/deploy/manifests")]
    manifests: PathBuf,
    #[arg(long, value_enum, default_value = "nodus")]
    cni: CniChoice,
    #[arg(long, default_value = "10.244.0.0/24")]
    subnet: String,
    /// Runtime handler for pods: runc, or nodus (containerd's runc shim driving nodus-runtime).
    #[arg(long, default_value = "runc")]
    runtime: String,
    /// Exit (and clean up) as soon as every container runs, instead of waiting for Ctrl-C.
    #[arg(long)]
    until_running: bool,
    /// How long to wait for the pods.
    #[arg(long, default_value_t = 120)]
    timeout_seconds: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let expected = expected_containers(&cli.manifests)?;
    let cni = match cli.cni {
        CniChoice::Nodus => Cni::NodusBridge {
            subnet: cli.subnet.clone(),
        },
        CniChoice::Reference => Cni::ReferenceBridge {
            subnet: cli.subnet.clone(),
        },
    };
    let ctrd = PrivateContainerd::start(ContainerdOptions {
        cni,
        default_runtime: Some(cli.runtime.clone()),
        ..Default::default()
    })
    .await
    .context("starting the private containerd")?;
    println!(
        "containerd: {} (node netns {})",
        ctrd.endpoint(),
        ctrd.node_netns().name()
    );

    let manifests = ctrd.dir().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    for entry in std::fs::read_dir(&cli.manifests)
        .with_context(|| format!("reading {}", cli.manifests.display()))?
    {
        let entry = entry?;
        std::fs::copy(entry.path(), manifests.join(entry.file_name()))?;
    }
    let config = ctrd.dir().join("kubelet-config.yaml");
    std::fs::write(
        &config,
        ctrd.kubelet_config(
            &manifests,
            "fileCheckFrequency: 5s\nreadOnlyPort: 10255\nhealthzPort: 10248\n\
             healthzBindAddress: 127.0.0.1\n",
        ),
    )?;
    let kubelet_log = ctrd.dir().join("kubelet.log");
    let kubelet = ctrd.spawn_kubelet(&config, "nodus-dev", &kubelet_log)?;
    println!("kubelet: log {}", kubelet_log.display());

    let started = Instant::now();
    let mut rt = ctrd.runtime().await?;
    let timeout = Duration::from_secs(cli.timeout_seconds);
    let waited = nodus_testkit::try_wait_until_async(timeout, "the pods' containers", async || {
        let running: BTreeSet<String> = match rt
            .list_containers(ListContainersRequest { filter: None })
            .await
        {
            Ok(r) => r
                .into_inner()
                .containers
                .into_iter()
                .filter(|c| c.state == ContainerState::ContainerRunning as i32)
                .filter_map(|c| c.metadata.map(|m| m.name))
                .collect(),
            Err(e) => return Err(format!("ListContainers: {e}")),
        };
        if expected.is_subset(&running) {
            Ok(())
        } else {
            Err(format!("running {running:?}, expected {expected:?}"))
        }
    })
    .await;
    if let Err(e) = waited {
        let log = std::fs::read_to_string(&kubelet_log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        bail!(
            "{e}; kubelet log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    println!(
        "all {} containers running after {:.1} s",
        expected.len(),
        started.elapsed().as_secs_f64()
    );
    let sandboxes = rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    println!("{:<28} {:<10} {:<16} SANDBOX", "POD", "NAMESPACE", "IP");
    for sandbox in sandboxes {
        let status = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status;
        let ip = status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        let meta = sandbox.metadata.unwrap_or_default();
        println!(
            "{:<28} {:<10} {:<16} {}",
            meta.name,
            meta.namespace,
            ip,
            &sandbox.id[..13.min(sandbox.id.len())]
        );
    }
    if !cli.until_running {
        println!(
            "node is up: `nsenter --net={} wget -qO- http://127.0.0.1:10255/pods`; Ctrl-C stops it",
            ctrd.node_netns().path().display()
        );
        tokio::signal::ctrl_c().await?;
        println!("stopping the node");
    }
    drop(kubelet);
    drop(ctrd);
    Ok(())
}

/// Names of the containers the manifests ask for (init containers excluded: they exit).
fn expected_containers(dir: &std::path::Path) -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .with_context(|| format!("parsing {}", path.display()))?;
            if let Some(containers) = value
                .get("spec")
                .and_then(|s| s.get("containers"))
                .and_then(|c| c.as_sequence())
            {
                for c in containers {
                    if let Some(name) = c.get("name").and_then(|n| n.as_str()) {
                        names.insert(name.to_string());
                    }
                }
            }
        }
    }
    if names.is_empty() {
        bail!("no containers in the manifests under {}", dir.display());
    }
    Ok(names)
}
