//! The README's main job: `nodus-node` (what hack/up.sh runs after building) brings up the demo
//! static pods through our kubelet and nodus-bridge, and leaves nothing behind when it exits.

use std::process::Command;

#[test]
fn demo_node_runs_every_demo_pod_and_cleans_up() {
    let manifests = nodus_testkit::workspace_root().join("hack/deploy/manifests");
    let out = Command::new(env!("CARGO_BIN_EXE_nodus-node"))
        .arg("--manifests")
        .arg(&manifests)
        .args(["--until-running", "--timeout-seconds", "90"])
        .output()
        .expect("nodus-node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "nodus-node failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all 2 containers running"), "{stdout}");
    // One line per pod with its name (suffixed with the node name, as upstream) and a pod IP.
    for pod in ["web-nodus-dev", "ticker-nodus-dev"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(pod))
            .unwrap_or_else(|| panic!("{pod} missing:\n{stdout}"));
        assert!(line.contains(" 10.244.0."), "{line}");
    }
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("containerd: unix://"))
        .and_then(|l| l.split_whitespace().next())
        .map(|sock| {
            std::path::PathBuf::from(sock)
                .parent()
                .unwrap()
                .to_path_buf()
        })
        .expect("containerd line");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(nodus_testkit::cleanup::mounts_under(&dir).is_empty());
}
