//! The QoS cgroups under cgroupRoot, as upstream sizes them: `kubepods` from node allocatable
//! (CPU shares and a memory limit, kubeReserved and systemReserved taken off), `besteffort`
//! 2 shares, `burstable` the shares of its running pods' CPU requests, following the pods.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// The value of a cgroup file of `rel` (under the node's cgroupRoot): v1 `cpu`/`memory`
/// hierarchies, or the pure v2 tree.
fn read(node: &Node, ctrl: &str, v1_file: &str, v2_file: &str, rel: &str) -> Option<String> {
    let root = node.ctrd.cgroup_parent();
    let root = root.trim_start_matches('/');
    let fs = PathBuf::from("/sys/fs/cgroup");
    let path = if fs.join("cgroup.controllers").exists() {
        fs.join(root).join(rel).join(v2_file)
    } else {
        fs.join(ctrl).join(root).join(rel).join(v1_file)
    };
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn shares(node: &Node, rel: &str) -> Option<i64> {
    if PathBuf::from("/sys/fs/cgroup/cgroup.controllers").exists() {
        // v2 weight back to shares is lossy: compare weights instead.
        return read(node, "cpu", "", "cpu.weight", rel)?.parse().ok();
    }
    read(node, "cpu", "cpu.shares", "", rel)?.parse().ok()
}

/// Upstream's shares -> cpu.weight on v2 (identity on v1).
fn expect_shares(s: i64) -> i64 {
    if PathBuf::from("/sys/fs/cgroup/cgroup.controllers").exists() {
        1 + ((s - 2) * 9999) / 262_142
    } else {
        s
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_cgroups_follow_allocatable_and_the_burstable_pods() {
    let node = Node::start_with("kubeReserved: {cpu: 500m, memory: 100Mi}\n", &[]).await;
    let cpus = std::thread::available_parallelism().unwrap().get() as i64;
    let mem_total: i64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .unwrap()
        * 1024;
    let kubepods_shares = expect_shares((cpus * 1000 - 500) * 1024 / 1000);
    let limit = mem_total - (100 << 20);
    node.wait_for("the QoS cgroups", Duration::from_secs(20), || async {
        (shares(&node, "kubepods")? == kubepods_shares
            && shares(&node, "kubepods/besteffort")? == expect_shares(2)
            && shares(&node, "kubepods/burstable")? == expect_shares(2))
        .then_some(())
    })
    .await;
    let mem = read(
        &node,
        "memory",
        "memory.limit_in_bytes",
        "memory.max",
        "kubepods",
    )
    .unwrap();
    let mem: i64 = mem.parse().unwrap();
    // The kernel rounds a limit down to whole pages.
    assert!(mem <= limit && limit - mem < 4096, "{mem} vs {limit}");

    // Two burstable pods (300m and 200m of CPU requests): 512 shares; one gone: 307.
    for (name, cpu) in [("b1", "300m"), ("b2", "200m")] {
        let yaml = pod_yaml(name, "Always", "exec sleep 3600")
            + &format!("    resources: {{requests: {{cpu: {cpu}}}}}\n");
        node.write_manifest(&format!("{name}.yaml"), &yaml);
    }
    node.wait_running("b1", 1).await;
    node.wait_running("b2", 1).await;
    node.wait_for(
        "burstable shares for 500m",
        Duration::from_secs(20),
        || async { (shares(&node, "kubepods/burstable")? == expect_shares(512)).then_some(()) },
    )
    .await;
    node.remove_manifest("b2.yaml");
    node.wait_for(
        "burstable shares for 300m",
        Duration::from_secs(30),
        || async { (shares(&node, "kubepods/burstable")? == expect_shares(307)).then_some(()) },
    )
    .await;
    // BestEffort and kubepods stay as they were.
    assert_eq!(shares(&node, "kubepods/besteffort"), Some(expect_shares(2)));
    assert_eq!(shares(&node, "kubepods"), Some(kubepods_shares));
}
