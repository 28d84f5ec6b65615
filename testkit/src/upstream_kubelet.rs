//! The upstream kubelet (1.20.2, built from Debian's source by `hack/kube-build.sh`) on a
//! private containerd: the settings it needs on these machines, and guards that put back what
//! it changes outside the test's own directories. Used by the conformance harness
//! (`--kubelet upstream`) and by the kubelet benchmark, where it is the peer.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::containerd::PrivateContainerd;

/// Where `hack/kube-build.sh kubelet` puts it, unless `NODUS_UPSTREAM_KUBELET` names one.
pub fn binary() -> Option<PathBuf> {
    std::env::var_os("NODUS_UPSTREAM_KUBELET")
        .map(PathBuf::from)
        .or_else(|| Some(crate::workspace_root().join("build/kube-apiserver/bin/kubelet")))
        .filter(|p| p.is_file())
}

/// Kernel settings the upstream kubelet changes at start (machine-wide), put back on drop.
pub struct SysctlGuard(Vec<(&'static str, String)>);

impl SysctlGuard {
    pub fn record() -> Self {
        let keys = [
            "/proc/sys/vm/overcommit_memory",
            "/proc/sys/kernel/panic",
            "/proc/sys/kernel/panic_on_oops",
        ];
        SysctlGuard(
            keys.iter()
                .filter_map(|k| {
                    fs::read_to_string(k)
                        .ok()
                        .map(|v| (*k, v.trim().to_string()))
                })
                .collect(),
        )
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        for (key, value) in &self.0 {
            let _ = fs::write(key, value);
        }
    }
}

/// The upstream kubelet 1.20 writes pod logs under /var/log/pods and links them from
/// /var/log/containers (neither is configurable there). What appeared in them while it ran
/// is removed on drop.
pub struct HostPodLogs(Vec<(PathBuf, BTreeSet<std::ffi::OsString>)>);

impl HostPodLogs {
    pub fn record() -> Self {
        HostPodLogs(
            ["/var/log/pods", "/var/log/containers"]
                .iter()
                .map(|d| {
                    let names = fs::read_dir(d)
                        .map(|r| r.flatten().map(|e| e.file_name()).collect())
                        .unwrap_or_default();
                    (PathBuf::from(d), names)
                })
                .collect(),
        )
    }
}

impl Drop for HostPodLogs {
    fn drop(&mut self) {
        for (dir, before) in &self.0 {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !before.contains(&entry.file_name()) {
                    let path = entry.path();
                    let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
                }
            }
        }
    }
}

/// Its KubeletConfiguration on `ctrd` (1.20 has no containerRuntimeEndpoint or podLogsDir
/// there), with `extra` YAML lines; and it wants its cgroup root in every v1 hierarchy, a
/// cpuset one with cpus and mems before anything can join it.
pub fn config(
    ctrd: &PrivateContainerd,
    static_pod_path: &Path,
    extra: &str,
) -> std::io::Result<String> {
    for root in crate::cleanup::cgroup_roots() {
        let cg = root.join(ctrd.cgroup_parent().trim_start_matches('/'));
        fs::create_dir_all(&cg)?;
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = fs::read_to_string(root.join(f)) {
                let _ = fs::write(cg.join(f), v.trim());
            }
        }
    }
    Ok(format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
         staticPodPath: {}\ncgroupDriver: cgroupfs\ncgroupRoot: {}\n\
         failSwapOn: false\nmakeIPTablesUtilChains: false\n{extra}",
        static_pod_path.display(),
        ctrd.cgroup_parent(),
    ))
}

/// The flags 1.20 takes on the command line for `ctrd` beside `--config`; its state goes
/// under `dir`.
pub fn args(ctrd: &PrivateContainerd, dir: &Path) -> Vec<String> {
    vec![
        "--container-runtime=remote".into(),
        format!("--container-runtime-endpoint={}", ctrd.endpoint()),
        format!(
            "--volume-plugin-dir={}",
            dir.join("volume-plugins").display()
        ),
        format!("--cert-dir={}", dir.join("pki").display()),
    ]
}
