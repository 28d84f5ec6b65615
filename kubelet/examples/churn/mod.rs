//! What the soak and chaos benchmarks share: their knobs, the pod they churn, and the
//! counts of what a private containerd instance still holds.

use std::path::{Path, PathBuf};
use std::process::Command;

use nodus_testkit::{PrivateContainerd, BUSYBOX_IMAGE};

/// An environment variable as a number, else `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A pod that exits at once on SIGTERM (so a cycle is not its grace period).
pub fn manifest(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 1; done']\n"
    )
}

/// IPAM leases of the instance (files named by an address in its CNI data dir).
pub fn leases(ctrd: &PrivateContainerd) -> usize {
    files(&ctrd.cni_data_dir())
        .iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
        })
        .count()
}

/// veth interfaces in the instance's node network namespace.
pub fn veths(ctrd: &PrivateContainerd) -> usize {
    Command::new("nsenter")
        .arg(format!("--net={}", ctrd.node_netns().path().display()))
        .args(["--", "ip", "-o", "link", "show", "type", "veth"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0)
}

/// Every file below `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}
