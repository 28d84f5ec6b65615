//! Pod and QoS cgroups by cgroup driver (upstream's `cm.CgroupManager`).
//!
//! A cgroup is named by its parts, as upstream's `CgroupName` (`["kubepods", "burstable",
//! "pod<uid>"]`), and the driver turns the parts into a path:
//! - `cgroupfs`: `<cgroupRoot>/kubepods/burstable/pod<uid>`, directories the kubelet makes;
//! - `systemd`: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`
//!   (a dash inside a part becomes an underscore, as upstream escapes it). The slices are
//!   made, sized and stopped through systemd's D-Bus API, since systemd owns them and would
//!   put back its own values on a reload; the kubelet then writes the same files as with
//!   cgroupfs, so that both agree at once.
//!
//! The driver is the process's (`cgroupDriver`), set once at start.

use std::path::Path;
use std::sync::OnceLock;

use nodus_runtime::cgroups::systemd::{self, Property};

use crate::resources::{CgroupError, PodCgroupConfig};

/// `cgroupDriver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupDriver {
    /// The kubelet makes the directories (upstream's default).
    #[default]
    Cgroupfs,
    /// systemd makes slices (kubeadm's default).
    Systemd,
}

static DRIVER: OnceLock<CgroupDriver> = OnceLock::new();

/// Sets the process's driver (once, at start; cgroupfs until then). With systemd it must
/// be the init system: upstream refuses to start otherwise, with the same words.
pub fn set_driver(driver: CgroupDriver) -> Result<(), CgroupError> {
    if driver == CgroupDriver::Systemd && !systemd::is_running() {
        return Err(CgroupError::Systemd {
            unit: String::new(),
            message: "systemd cgroup flag passed, but systemd support for managing cgroups is \
                      not available"
                .into(),
        });
    }
    // The runtime makes systemd scopes on pure cgroup v2 only; so do the slices here.
    if driver == CgroupDriver::Systemd && !crate::resources::is_cgroup_v2() {
        return Err(CgroupError::Systemd {
            unit: String::new(),
            message: "cgroupDriver systemd: Nodus runs it on pure cgroup v2 hosts only (this \
                      host mounts cgroup v1 hierarchies); use cgroupfs"
                .into(),
        });
    }
    let _ = DRIVER.set(driver);
    Ok(())
}

pub(crate) fn driver() -> CgroupDriver {
    DRIVER.get().copied().unwrap_or_default()
}

/// The path of the cgroup named `parts` under `root` (absolute, from the cgroup mount).
pub(crate) fn cgroup_path(root: &str, parts: &[&str]) -> String {
    path_for(driver(), root, parts)
}

fn path_for(driver: CgroupDriver, root: &str, parts: &[&str]) -> String {
    match driver {
        CgroupDriver::Cgroupfs => {
            let mut path = root.trim_end_matches('/').to_string();
            for p in parts {
                path.push('/');
                path.push_str(p);
            }
            path
        }
        // The root is "/" (config refuses others): each level is the slice of all the
        // parts so far.
        CgroupDriver::Systemd => {
            let (mut path, mut unit) = (String::new(), String::new());
            for p in parts {
                if !unit.is_empty() {
                    unit.push('-');
                }
                unit.push_str(&p.replace('-', "_"));
                path.push('/');
                path.push_str(&unit);
                path.push_str(".slice");
            }
            path
        }
    }
}

/// With systemd, makes the slice at `path` or gives it `cfg` (a resize); with cgroupfs,
/// nothing (the caller makes the directories). The caller writes the files afterwards.
pub(crate) fn ensure_unit(path: &str, cfg: &PodCgroupConfig) -> Result<(), CgroupError> {
    let Some(unit) = systemd_unit(path) else {
        return Ok(());
    };
    systemd::ensure_slice(
        Path::new(crate::resources::CGROUP_FS),
        unit,
        &properties(cfg),
    )
    .map_err(|e| CgroupError::Systemd {
        unit: unit.to_string(),
        message: e.to_string(),
    })
}

/// With systemd, stops the slice at `path` (systemd removes its directory). A pod's removal
/// tries the paths of all three QoS classes: only one exists, and only it costs a D-Bus call.
pub(crate) fn remove_unit(path: &str) {
    let exists = || {
        Path::new(crate::resources::CGROUP_FS)
            .join(path.trim_start_matches('/'))
            .is_dir()
    };
    if let Some(unit) = systemd_unit(path).filter(|_| exists()) {
        if let Err(e) = systemd::stop_unit(unit) {
            tracing::warn!(%unit, error = %e, "cannot stop the pod's slice");
        }
    }
}

/// The slice owning `path` when the driver is systemd.
fn systemd_unit(path: &str) -> Option<&str> {
    if driver() != CgroupDriver::Systemd {
        return None;
    }
    path.rsplit('/').next().filter(|u| u.ends_with(".slice"))
}

/// The unit properties for `cfg`, as runc's systemd manager sets them on cgroup v2: CPU
/// weight, the quota per second (rounded up to whole percents, systemd's unit), the period,
/// the memory limit; u64::MAX is "infinity".
fn properties(cfg: &PodCgroupConfig) -> Vec<Property> {
    let mut props = vec![
        Property::Str("Description", "Kubernetes pods and QoS classes".into()),
        Property::Bool("DefaultDependencies", false),
        Property::Bool("CPUAccounting", true),
        Property::Bool("MemoryAccounting", true),
        Property::Bool("TasksAccounting", true),
    ];
    let shares = cfg.cpu_shares.max(2) as u64;
    props.push(Property::U64(
        "CPUWeight",
        1 + ((shares - 2) * 9999) / 262_142,
    ));
    let period = cfg.cpu_period.max(1) as u64;
    let per_sec = if cfg.cpu_quota > 0 {
        (cfg.cpu_quota as u64 * 1_000_000 / period).div_ceil(10_000) * 10_000
    } else {
        u64::MAX
    };
    props.push(Property::U64("CPUQuotaPerSecUSec", per_sec));
    props.push(Property::U64("CPUQuotaPeriodUSec", period));
    let memory = cfg
        .memory_limit
        .map(|m| m.max(0) as u64)
        .unwrap_or(u64::MAX);
    props.push(Property::U64("MemoryMax", memory));
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_as_upstream_names_them() {
        let parts = ["kubepods", "burstable", "pod1a2b-3c"];
        assert_eq!(
            path_for(CgroupDriver::Cgroupfs, "/", &parts),
            "/kubepods/burstable/pod1a2b-3c"
        );
        assert_eq!(
            path_for(CgroupDriver::Cgroupfs, "/nodus/", &parts[..1]),
            "/nodus/kubepods"
        );
        assert_eq!(
            path_for(CgroupDriver::Systemd, "/", &parts),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b_3c.slice"
        );
        assert_eq!(
            path_for(CgroupDriver::Systemd, "/", &["kubepods", "pod9"]),
            "/kubepods.slice/kubepods-pod9.slice"
        );
    }

    #[test]
    fn slice_properties_follow_the_pod_totals() {
        let cfg = PodCgroupConfig {
            cpu_shares: 256,
            cpu_quota: 25_000,
            cpu_period: 100_000,
            memory_limit: Some(64 << 20),
        };
        let props = properties(&cfg);
        assert!(props.contains(&Property::U64("CPUWeight", 10)), "{props:?}");
        assert!(props.contains(&Property::U64("CPUQuotaPerSecUSec", 250_000)));
        assert!(props.contains(&Property::U64("CPUQuotaPeriodUSec", 100_000)));
        assert!(props.contains(&Property::U64("MemoryMax", 64 << 20)));
        // 1m of CPU is 1000 µs per second: systemd counts whole percents.
        let tiny = PodCgroupConfig {
            cpu_quota: 1_000,
            ..cfg
        };
        assert!(properties(&tiny).contains(&Property::U64("CPUQuotaPerSecUSec", 10_000)));
        let unlimited = PodCgroupConfig {
            cpu_shares: 2,
            cpu_quota: -1,
            memory_limit: None,
            ..cfg
        };
        let props = properties(&unlimited);
        assert!(props.contains(&Property::U64("CPUWeight", 1)), "{props:?}");
        assert!(props.contains(&Property::U64("CPUQuotaPerSecUSec", u64::MAX)));
        assert!(props.contains(&Property::U64("MemoryMax", u64::MAX)));
    }
}
