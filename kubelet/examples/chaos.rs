//! Chaos benchmark (not a test; run by `hack/chaos.sh`): pod churn through our kubelet on a
//! private containerd with nodus-bridge, with a `kill -9` at a random moment of each round:
//! the kubelet (then restarted), containerd (then restarted), one shim, or the CNI plugin
//! in the middle of an ADD (once the pod's interface exists) or of a DEL (through a wrapper
//! in the CNI bin dir). ROUNDS rounds per fault (default 20), PODS pods per round (default
//! 5). After each round it checks that the node converged (every manifest's pod runs
//! exactly once: one ready sandbox, one running container) and, once the manifests are
//! removed, that nothing is left: sandboxes, containers, IPAM leases, veths, nft chains and
//! rules, network namespaces, shims, runtime state dirs, mounts and pod cgroups of this
//! instance. Prints the counts per fault. `FAULTS` picks faults by name (default all).

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
    CniAdd,
    CniDel,
}

const FAULTS: [Fault; 5] = [
    Fault::Kubelet,
    Fault::Containerd,
    Fault::Shim,
    Fault::CniAdd,
    Fault::CniDel,
];

/// Replaces the instance's nodus-bridge with a wrapper that, when `<arm>.ADD` or
/// `<arm>.DEL` exists and it claims it (a rename; the file holds how many calls to kill,
/// and what is left goes back), runs the plugin in
/// the background and `kill -9`s it: during ADD once the host side of the pod's veth
/// exists (0 to 3 looks later), during DEL after 0 to 19 ms. A kill that landed (the
/// plugin died of it rather than finishing first) appends a line to `<arm>.landed`; one
/// that came too late arms the next call again.
fn install_cni_wrapper(ctrd: &PrivateContainerd, arm: &Path) -> Result<()> {
    let plugin = format!(
        "nsenter --net={} {}",
        ctrd.node_netns().path().display(),
        nodus_testkit::bin_path("nodus-bridge").display()
    );
    let arm = arm.display();
    let script = format!(
        r#"#!/bin/bash
# nodus-bridge's host veth name for (container id, ifname): "veth" + 11 hex digits of
# FNV-1a 64 over the two with a NUL between (cni-bridge host_veth_name).
veth_name() {{
  local s="$1" i c h=$((0xcbf29ce484222325))
  for ((i = 0; i < ${{#s}}; i++)); do
    printf -v c '%d' "'${{s:i:1}}"
    h=$(( (h ^ c) * 0x100000001b3 ))
  done
  h=$(( h * 0x100000001b3 ))
  s="$2"
  for ((i = 0; i < ${{#s}}; i++)); do
    printf -v c '%d' "'${{s:i:1}}"
    h=$(( (h ^ c) * 0x100000001b3 ))
  done
  printf 'veth%011x' $(( h & 0xfffffffffff ))
}}
if [ "$CNI_COMMAND" = ADD ] || [ "$CNI_COMMAND" = DEL ]; then
  armed="{arm}.$CNI_COMMAND"
  if mv "$armed" "$armed.$$" 2>/dev/null; then
    # The arming holds how many calls to kill: take one, leave the rest armed.
    n=$(cat "$armed.$$" 2>/dev/null)
    rm -f "$armed.$$"
    if [ "${{n:-1}}" -gt 1 ] 2>/dev/null; then
      echo $((n - 1)) > "$armed.tmp$$" && mv "$armed.tmp$$" "$armed"
    fi
    exec 3<&0
    {plugin} "$@" <&3 3<&- &
    pid=$!
    if [ "$CNI_COMMAND" = ADD ]; then
      # Kill it once its host-side veth exists (mid-ADD: addresses, routes and masquerade
      # follow), 0 to 3 looks later. The name is the plugin's (host_veth_name), and the
      # plugin's /proc/<pid>/net/dev (the node netns) is read by bash itself: no process
      # per look.
      veth=$(veth_name "$CNI_CONTAINERID" "$CNI_IFNAME")
      extra=$((RANDOM % 4))
      for ((n = 0; n < 1000000; n++)); do
        read -r _ _ st _ < "/proc/$pid/stat" 2>/dev/null || break
        [ "$st" = Z ] && break
        found=0
        while read -r line; do
          [[ $line == "$veth:"* ]] && {{ found=1; break; }}
        done < "/proc/$pid/net/dev"
        if [ "$found" = 1 ]; then
          [ "$extra" = 0 ] && break
          extra=$((extra - 1))
        fi
      done
    else
      printf -v pause '0.%03d' $((RANDOM % 20))
      sleep "$pause"
    fi
    kill -9 "$pid" 2>/dev/null
    wait "$pid"
    rc=$?
    # A kill that came too late (the plugin had finished) arms the next call instead.
    if [ "$rc" = 137 ]; then
      echo "$CNI_COMMAND $CNI_CONTAINERID" >> "{arm}.landed"
    elif [ ! -e "$armed" ]; then
      echo 1 > "$armed.tmp$$" && mv "$armed.tmp$$" "$armed"
    fi
    exit "$rc"
  fi
fi
exec {plugin} "$@"
"#
    );
    let path = ctrd.cni_bin_dir().join("nodus-bridge");
    std::fs::write(&path, script)?;
    Ok(())
}

/// Lines of `<arm>.landed`: the kills of the plugin that landed so far.
fn landed(arm: &Path) -> usize {
    std::fs::read_to_string(arm.with_extension("landed"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
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

/// What the instance still holds, named by [`LEFTOVER_NAMES`].
struct Leftovers([usize; 11]);

const LEFTOVER_NAMES: [&str; 11] = [
    "sandboxes",
    "containers",
    "leases",
    "veths",
    "nft chains",
    "nft rules",
    "netns",
    "shims",
    "runtime dirs",
    "mounts",
    "pod cgroups",
];

/// Chains and rules in the node netns' `nodus` tables (the plugin's masquerade state).
fn nft_objects(ctrd: &PrivateContainerd) -> (usize, usize) {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ctrd.node_netns().path().display()))
        .args(["--", "nft", "-j", "list", "ruleset"])
        .output();
    let Ok(json) = out.map(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout)) else {
        return (0, 0);
    };
    let items = json
        .ok()
        .and_then(|j| j["nftables"].as_array().cloned())
        .unwrap_or_default();
    let count = |kind: &str| items.iter().filter(|i| i[kind]["table"] == "nodus").count();
    (count("chain"), count("rule"))
}

/// What a failed round left, by name: the shims' command lines and the runtime state dirs.
fn describe_leftovers(ctrd: &PrivateContainerd) {
    for pid in ctrd.shim_pids() {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        eprintln!(
            "  shim {pid}: {}",
            String::from_utf8_lossy(&cmd).replace('\0', " ")
        );
    }
    for (root, name) in [("runc", "k8s.io"), ("nodus", "k8s.io"), ("state", "k8s.io")] {
        for d in dirs(&ctrd.dir().join(root))
            .iter()
            .filter(|d| d.file_name().is_some_and(|n| n == name))
        {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                eprintln!("  runtime dir {}", e.path().display());
            }
        }
    }
}

/// Entries of every directory named `name` below `dir` (netns files, task bundles).
fn entries_of(dir: &Path, name: &str) -> usize {
    dirs(dir)
        .iter()
        .filter(|d| d.file_name().is_some_and(|n| n == name))
        .map(|d| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0))
        .sum()
}

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
    let (chains, rules) = nft_objects(ctrd);
    let netns = entries_of(&ctrd.dir().join("state"), "netns");
    // The runtimes' state (runc's and ours, per namespace) and containerd's task bundles.
    let runtime_dirs = entries_of(&ctrd.dir().join("runc"), "k8s.io")
        + entries_of(&ctrd.dir().join("nodus"), "k8s.io")
        + entries_of(&ctrd.dir().join("state"), "k8s.io");
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
        chains,
        rules,
        netns,
        ctrd.shim_pids().len(),
        runtime_dirs,
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
    // How long a round may take to converge (the VM tier, under TCG, gives it more).
    let converge_limit = Duration::from_secs(env("CONVERGE_SECONDS", 120) as u64);
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
    let arm = ctrd.dir().join("chaos-arm");
    install_cni_wrapper(&ctrd, &arm)?;
    let faults: Vec<Fault> = match std::env::var("FAULTS") {
        Ok(names) if !names.trim().is_empty() => {
            let mut out = Vec::new();
            for n in names.split([' ', ',']).filter(|n| !n.is_empty()) {
                match FAULTS
                    .iter()
                    .find(|f| format!("{f:?}").eq_ignore_ascii_case(n))
                {
                    Some(f) => out.push(*f),
                    None => bail!("FAULTS: unknown fault {n:?} (known: {FAULTS:?})"),
                }
            }
            out
        }
        _ => FAULTS.to_vec(),
    };
    let mut kubelet = ctrd.spawn_kubelet(&config, NODE, &log)?;
    println!("chaos: {rounds} rounds per fault, {pods} pods per round; kill -9 at a random moment of the churn");
    println!(
        "{:<11} {:>6} {:>9} {:>14} {:>14}  left after removal ({})",
        "fault",
        "kills",
        "converged",
        "max converge s",
        "max removal s",
        LEFTOVER_NAMES.join(", ")
    );
    let mut failed = false;
    for fault in faults {
        let (mut converged, mut max_converge, mut max_removal) = (0, 0.0f64, 0.0f64);
        let mut left = [0usize; LEFTOVER_NAMES.len()];
        let landed_before = landed(&arm);
        for round in 0..rounds {
            let names: Vec<String> = (0..pods)
                .map(|k| format!("{}-{round}-{k}", format!("{fault:?}").to_lowercase()))
                .collect();
            if fault == Fault::CniAdd {
                // Every pod's ADD is armed: the kills that land are counted.
                std::fs::write(arm.with_extension("ADD"), pods.to_string())?;
            }
            for n in &names {
                let tmp = manifests.join(format!(".{n}.tmp"));
                std::fs::write(&tmp, manifest(n))?;
                std::fs::rename(&tmp, manifests.join(format!("{n}.yaml")))?;
            }
            if !matches!(fault, Fault::CniAdd | Fault::CniDel) {
                tokio::time::sleep(random_delay(Duration::from_millis(1500))).await;
            }
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
                // Armed before the manifests (ADD) or before their removal (DEL).
                Fault::CniAdd | Fault::CniDel => {}
            }
            let mut rt = ctrd.runtime().await?;
            // Converged: each pod exactly one ready sandbox and one running container.
            let t0 = Instant::now();
            let deadline = t0 + converge_limit;
            loop {
                let c = census(&mut rt).await?;
                if names.iter().all(|n| c.get(n) == Some(&(1, 1))) {
                    converged += 1;
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!(
                        "{fault:?} round {round}: not converged in {} s: {c:?}",
                        converge_limit.as_secs()
                    );
                    // What the kubelet last said of the pods that are not there.
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    for n in names.iter().filter(|n| c.get(*n) != Some(&(1, 1))) {
                        let lines: Vec<&str> =
                            text.lines().filter(|l| l.contains(n.as_str())).collect();
                        for l in &lines[lines.len().saturating_sub(4)..] {
                            eprintln!("  kubelet: {l}");
                        }
                    }
                    failed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max_converge = max_converge.max(t0.elapsed().as_secs_f64());
            if fault == Fault::CniDel {
                std::fs::write(arm.with_extension("DEL"), "1")?;
            }
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
                describe_leftovers(&ctrd);
                failed = true;
            }
            for (a, b) in left.iter_mut().zip(left_now.0) {
                *a += b;
            }
        }
        // Disarm what no call claimed (a DEL armed after the last pod went, say).
        for cmd in ["ADD", "DEL"] {
            let _ = std::fs::remove_file(arm.with_extension(cmd));
        }
        let kills = match fault {
            Fault::CniAdd | Fault::CniDel => landed(&arm) - landed_before,
            _ => rounds,
        };
        println!(
            "{:<11} {:>6} {:>6}/{rounds:<2} {:>14.1} {:>14.1}  {}",
            format!("{fault:?}"),
            kills,
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
