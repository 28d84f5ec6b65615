//! API-server mode benchmark (not a test; run by `hack/bench-apiserver.sh`).
//!
//! One node (private containerd, our kubelet with `--kubeconfig`) and a real control plane
//! (etcd + kube-apiserver from `$NODUS_KUBE_APISERVER`), all in the node's network
//! namespace. For one pod (RUNS times) and a burst of BURST pods it measures the time from
//! the request to the pod's `Running` phase as a watch on the API server sees it:
//! - API path: the pod is POSTed to the API server with `nodeName` set;
//! - static path: the manifest is written to the static pod directory (seen through its
//!   mirror pod, whose status the kubelet pushes the same way).
//!
//! Prints p50/p99 of both, the ratio api/static, and the kubelet's RSS with BURST API pods
//! running (target < 25 MiB with 30).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use nodus_testkit::{Cni, ContainerdOptions, ControlPlane, PrivateContainerd, BUSYBOX_IMAGE};

const NODE: &str = "bench";

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

/// A `/proc/<pid>/status` figure in KiB (VmRSS, RssAnon, RssFile).
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// "24.1 MiB (anon 15.0, file 9.1)".
fn rss(pid: u32) -> String {
    let mib = |k: &str| status_kib(pid, k) as f64 / 1024.0;
    format!(
        "{:.1} MiB (anon {:.1}, file {:.1})",
        mib("VmRSS:"),
        mib("RssAnon:"),
        mib("RssFile:")
    )
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

fn pod_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
         terminationGracePeriodSeconds: 2\n  automountServiceAccountToken: false\n  containers:\n  \
         - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [sleep, '3600']\n"
    )
}

/// When each pod (by name) was first seen Running by the watch.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

async fn wait_running(
    seen: &Seen,
    names: &[String],
    timeout: Duration,
) -> Result<HashMap<String, Instant>> {
    let deadline = Instant::now() + timeout;
    loop {
        {
            let s = seen.lock().unwrap();
            if names.iter().all(|n| s.contains_key(n)) {
                return Ok(names.iter().map(|n| (n.clone(), s[n])).collect());
            }
        }
        if Instant::now() > deadline {
            bail!("pods not Running after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_gone(pods: &Api<Pod>, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = pods.list(&Default::default()).await?.items.len();
        if n == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{n} pods left after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let burst: usize = std::env::var("BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let ctrd = PrivateContainerd::start(ContainerdOptions {
        cni: Cni::NodusBridge {
            subnet: "10.67.0.0/16".into(),
        },
        in_node_netns: true,
        ..Default::default()
    })
    .await?;
    // This thread (the whole current-thread runtime) lives in the node's namespace with
    // the control plane and the kubelet.
    ctrd.node_netns().enter_current_thread()?;
    let cp = ControlPlane::start()?;
    let admin = cp.admin_kubeconfig()?;
    let node_kc = cp.node_kubeconfig(NODE)?;
    let kc = kube::config::Kubeconfig::read_from(&admin)?;
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?,
    )?;
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let mut account = ServiceAccount::default();
    account.metadata.name = Some("default".into());
    for _ in 0..50 {
        if sa.create(&PostParams::default(), &account).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let manifests = ctrd.dir().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let config = ctrd.dir().join("kubelet.yaml");
    std::fs::write(
        &config,
        ctrd.kubelet_config(&manifests, "healthzPort: 0\nmaxPods: 200\n"),
    )?;
    let kubelet_bin = nodus_testkit::bin_path("kubelet");
    let log = std::fs::File::create(ctrd.dir().join("kubelet.log"))?;
    let kubelet = KillOnDrop(
        Command::new(&kubelet_bin)
            .arg(format!("--config={}", config.display()))
            .arg(format!(
                "--root-dir={}",
                ctrd.dir().join("kubelet").display()
            ))
            .arg(format!("--hostname-override={NODE}"))
            .arg(format!("--kubeconfig={}", node_kc.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", kubelet_bin.display()))?,
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let seen: Seen = Arc::default();
    {
        let seen = seen.clone();
        let stream = watcher::watcher(pods.clone(), watcher::Config::default());
        tokio::spawn(async move {
            tokio::pin!(stream);
            while let Some(Ok(ev)) = stream.next().await {
                if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
                    let running =
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                    if let (true, Some(name)) = (running, p.metadata.name.clone()) {
                        seen.lock()
                            .unwrap()
                            .entry(name)
                            .or_insert_with(Instant::now);
                    }
                }
            }
        });
    }
    let create = |name: String| {
        let pods = pods.clone();
        async move {
            let mut pod: Pod = serde_yaml::from_str(&pod_yaml(&name))?;
            pod.spec.as_mut().context("spec")?.node_name = Some(NODE.into());
            let t0 = Instant::now();
            pods.create(&PostParams::default(), &pod).await?;
            anyhow::Ok(t0)
        }
    };
    let write_static = |name: &str| -> Result<Instant> {
        let text = pod_yaml(name).replace("  automountServiceAccountToken: false\n", "");
        let tmp = manifests.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        let t0 = Instant::now();
        std::fs::rename(&tmp, manifests.join(format!("{name}.yaml")))?;
        Ok(t0)
    };
    let delete_all = |names: Vec<String>| {
        let pods = pods.clone();
        async move {
            for n in names {
                let _ = pods.delete(&n, &DeleteParams::default()).await;
            }
            anyhow::Ok(())
        }
    };

    // Warm-up: one of each, not counted.
    let t = create("warm-api".into()).await?;
    wait_running(&seen, &["warm-api".into()], Duration::from_secs(120)).await?;
    let _ = t;
    write_static("warm")?;
    wait_running(&seen, &[format!("warm-{NODE}")], Duration::from_secs(120)).await?;
    std::fs::remove_file(manifests.join("warm.yaml"))?;
    delete_all(vec!["warm-api".into()]).await?;
    wait_gone(&pods, Duration::from_secs(120)).await?;

    let (mut api1, mut static1) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let name = format!("api-{i}");
        let t0 = create(name.clone()).await?;
        let at = wait_running(&seen, std::slice::from_ref(&name), Duration::from_secs(60)).await?;
        api1.push((at[&name] - t0).as_secs_f64() * 1e3);
        delete_all(vec![name]).await?;
        wait_gone(&pods, Duration::from_secs(60)).await?;

        let name = format!("static-{i}");
        let t0 = write_static(&name)?;
        let mirror = format!("{name}-{NODE}");
        let at = wait_running(
            &seen,
            std::slice::from_ref(&mirror),
            Duration::from_secs(60),
        )
        .await?;
        static1.push((at[&mirror] - t0).as_secs_f64() * 1e3);
        std::fs::remove_file(manifests.join(format!("{name}.yaml")))?;
        wait_gone(&pods, Duration::from_secs(60)).await?;
    }

    // Bursts: all API pods at once, then all manifests at once.
    let names: Vec<String> = (0..burst).map(|i| format!("burst-api-{i}")).collect();
    let starts = futures::future::join_all(names.iter().cloned().map(create)).await;
    let mut t0s = HashMap::new();
    for (n, t) in names.iter().zip(starts) {
        t0s.insert(n.clone(), t?);
    }
    let at = wait_running(&seen, &names, Duration::from_secs(300)).await?;
    let mut api_burst: Vec<f64> = names
        .iter()
        .map(|n| (at[n] - t0s[n]).as_secs_f64() * 1e3)
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_api = rss(kubelet.0.id());
    delete_all(names).await?;
    wait_gone(&pods, Duration::from_secs(180)).await?;

    let names: Vec<String> = (0..burst).map(|i| format!("burst-static-{i}")).collect();
    let mut t0s = HashMap::new();
    for n in &names {
        t0s.insert(format!("{n}-{NODE}"), write_static(n)?);
    }
    let mirrors: Vec<String> = names.iter().map(|n| format!("{n}-{NODE}")).collect();
    let at = wait_running(&seen, &mirrors, Duration::from_secs(300)).await?;
    let mut static_burst: Vec<f64> = mirrors
        .iter()
        .map(|n| (at[n] - t0s[n]).as_secs_f64() * 1e3)
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_static = rss(kubelet.0.id());
    for n in &names {
        std::fs::remove_file(manifests.join(format!("{n}.yaml")))?;
    }
    wait_gone(&pods, Duration::from_secs(180)).await?;

    let (a50, a99) = (pct(&mut api1, 50.0), pct(&mut api1, 99.0));
    let (s50, s99) = (pct(&mut static1, 50.0), pct(&mut static1, 99.0));
    let (ab50, ab99) = (pct(&mut api_burst, 50.0), pct(&mut api_burst, 99.0));
    let (sb50, sb99) = (pct(&mut static_burst, 50.0), pct(&mut static_burst, 99.0));
    println!(
        "pod request -> phase Running seen by an API watch, ms (kube-apiserver {})",
        cp.minor
    );
    println!("{:<34}{:>10}{:>10}", "", "p50", "p99");
    println!(
        "{:<34}{:>10.1}{:>10.1}",
        format!("static pod (mirror), 1 pod (n={runs})"),
        s50,
        s99
    );
    println!(
        "{:<34}{:>10.1}{:>10.1}",
        format!("API pod, 1 pod (n={runs})"),
        a50,
        a99
    );
    println!(
        "{:<34}{:>10.1}{:>10.1}",
        format!("static pods, burst of {burst}"),
        sb50,
        sb99
    );
    println!(
        "{:<34}{:>10.1}{:>10.1}",
        format!("API pods, burst of {burst}"),
        ab50,
        ab99
    );
    println!("ratio static/api, 1 pod p50: {:.2}", s50 / a50);
    println!("ratio static/api, burst p99: {:.2}", sb99 / ab99);
    println!("kubelet RSS with {burst} API pods: {rss_api} (target < 25 MiB)");
    println!("kubelet RSS with {burst} static pods after them: {rss_static}");
    drop(kubelet);
    drop(cp);
    Ok(())
}
