//! Compute resources as upstream: quantities, QoS classes (`GetPodQOS`), the CRI
//! `LinuxContainerResources` of a container (`cpu.shares` from requests with
//! `milliCPUToShares`, CFS quota from limits over a 100 ms period, memory limit,
//! `oom_score_adj` per QoS class), the pod-level cgroup with the pod's totals
//! (`<cgroupRoot>/kubepods/{burstable,besteffort}/pod<uid>`, Guaranteed pods directly under
//! `kubepods`) and the node's allocatable resources for admission.

use std::path::{Path, PathBuf};

use crate::pod_util::all_containers;
use k8s_openapi::api::core::v1::{Container, Pod};
use nodus_proto::runtime::v1 as cri;

/// Upstream's `MinShares`, `MaxShares`, `SharesPerCPU`, `QuotaPeriod` and `MinQuotaPeriod`.
pub(crate) const MIN_SHARES: i64 = 2;
pub(crate) const MAX_SHARES: i64 = 262_144;
pub(crate) const SHARES_PER_CPU: i64 = 1024;
pub(crate) const QUOTA_PERIOD: i64 = 100_000;
pub(crate) const MIN_QUOTA_PERIOD: i64 = 1000;
/// Upstream's OOM score adjustments.
pub(crate) const GUARANTEED_OOM_SCORE_ADJ: i64 = -997;
pub(crate) const BESTEFFORT_OOM_SCORE_ADJ: i64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {value:?}: {reason}")]
pub struct QuantityError {
    pub(crate) value: String,
    pub(crate) reason: &'static str,
}

/// A container's requests/limits or the configured cgroup root that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("{field}.{key}: {source}")]
    Quantity {
        field: String,
        key: String,
        source: QuantityError,
    },
    #[error("{field}.{key}: {value:?} must not be negative")]
    Negative {
        field: String,
        key: String,
        value: String,
    },
    #[error("invalid configuration: cgroup-root {root:?} doesn't exist ({} is missing)", missing.display())]
    CgroupRootMissing { root: String, missing: PathBuf },
}

/// Parses a Kubernetes quantity (`500m`, `1.5`, `128Mi`, `1G`, `1e3`) into thousandths of
/// the unit (milli-units), rounding up as upstream's `MilliValue`.
pub(crate) fn parse_milli(q: &str) -> Result<i128, QuantityError> {
    let err = |reason| QuantityError {
        value: q.to_string(),
        reason,
    };
    let s = q.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let (sign, s) = match s.strip_prefix('-') {
        Some(r) => (-1i128, r),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    if num.is_empty() || num.matches('.').count() > 1 {
        return Err(err("not a number"));
    }
    // (multiplier numerator, power of ten) relative to milli-units.
    let (mul, exp10): (i128, i32) = match suffix {
        "" => (1, 3),
        "n" => (1, -6),
        "u" => (1, -3),
        "m" => (1, 0),
        "k" => (1, 6),
        "M" => (1, 9),
        "G" => (1, 12),
        "T" => (1, 15),
        "P" => (1, 18),
        "E" => (1, 21),
        "Ki" => (1 << 10, 3),
        "Mi" => (1 << 20, 3),
        "Gi" => (1 << 30, 3),
        "Ti" => (1 << 40, 3),
        "Pi" => (1 << 50, 3),
        "Ei" => (1 << 60, 3),
        s if s.starts_with(['e', 'E']) => {
            let e: i32 = s[1..].parse().map_err(|_| err("bad exponent"))?;
            if !(-30..=30).contains(&e) {
                return Err(err("exponent out of range"));
            }
            (1, 3 + e)
        }
        _ => return Err(err("unknown suffix")),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits: String = format!("{int}{frac}");
    if digits.len() > 30 {
        return Err(err("too many digits"));
    }
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| err("not a number"))?
    };
    let exp = exp10 - frac.len() as i32;
    let v = mantissa.checked_mul(mul).ok_or_else(|| err("too large"))?;
    let out = if exp >= 0 {
        10i128
            .checked_pow(exp as u32)
            .and_then(|p| v.checked_mul(p))
            .ok_or_else(|| err("too large"))?
    } else {
        let p = 10i128
            .checked_pow((-exp) as u32)
            .ok_or_else(|| err("too small"))?;
        // Round up, as upstream's MilliValue.
        (v + p - 1) / p
    };
    Ok(sign * out)
}

/// Requests and limits of one container in milli-CPU and bytes (None: not set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Resources {
    pub(crate) cpu_request: Option<i64>,
    pub(crate) cpu_limit: Option<i64>,
    pub(crate) mem_request: Option<i64>,
    pub(crate) mem_limit: Option<i64>,
}

fn lookup(
    map: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
    key: &str,
    field: &str,
    milli: bool,
) -> Result<Option<i64>, ResourceError> {
    let Some(q) = map.and_then(|m| m.get(key)) else {
        return Ok(None);
    };
    let v = parse_milli(&q.0).map_err(|source| ResourceError::Quantity {
        field: field.to_string(),
        key: key.to_string(),
        source,
    })?;
    if v < 0 {
        return Err(ResourceError::Negative {
            field: field.to_string(),
            key: key.to_string(),
            value: q.0.clone(),
        });
    }
    let v = if milli { v } else { (v + 999) / 1000 };
    Ok(Some(v.min(i64::MAX as i128) as i64))
}

/// The container's resources; a request defaults to the limit when only the limit is set
/// (API defaulting).
pub(crate) fn container_resources(c: &Container) -> Result<Resources, ResourceError> {
    let r = c.resources.as_ref();
    let req = r.and_then(|r| r.requests.as_ref());
    let lim = r.and_then(|r| r.limits.as_ref());
    let field = format!("containers[{}].resources", c.name);
    let cpu_limit = lookup(lim, "cpu", &format!("{field}.limits"), true)?;
    let mem_limit = lookup(lim, "memory", &format!("{field}.limits"), false)?;
    Ok(Resources {
        cpu_request: lookup(req, "cpu", &format!("{field}.requests"), true)?.or(cpu_limit),
        mem_request: lookup(req, "memory", &format!("{field}.requests"), false)?.or(mem_limit),
        cpu_limit,
        mem_limit,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// Upstream's `GetPodQOS` (cpu and memory only). Bad quantities count as unset.
pub(crate) fn pod_qos(pod: &Pod) -> QosClass {
    let mut any = false;
    let mut guaranteed = true;
    for c in all_containers(pod) {
        let r = container_resources(c).unwrap_or_default();
        if r.cpu_request.is_some_and(|v| v > 0)
            || r.mem_request.is_some_and(|v| v > 0)
            || r.cpu_limit.is_some_and(|v| v > 0)
            || r.mem_limit.is_some_and(|v| v > 0)
        {
            any = true;
        }
        match (r.cpu_limit, r.mem_limit) {
            (Some(cl), Some(ml)) if r.cpu_request == Some(cl) && r.mem_request == Some(ml) => {}
            _ => guaranteed = false,
        }
    }
    if !any {
        QosClass::BestEffort
    } else if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// Upstream's `MilliCPUToShares`.
pub(crate) fn milli_cpu_to_shares(milli: i64) -> i64 {
    if milli == 0 {
        return MIN_SHARES;
    }
    (milli * SHARES_PER_CPU / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// Upstream's `MilliCPUToQuota` over `period` microseconds (0: no limit).
pub(crate) fn milli_cpu_to_quota(milli: i64, period: i64) -> i64 {
    if milli == 0 {
        return 0;
    }
    (milli * period / 1000).max(MIN_QUOTA_PERIOD)
}

/// Upstream's `GetContainerOOMScoreAdjust` for a container of a pod of class `qos`.
pub(crate) fn oom_score_adj(qos: QosClass, mem_request: i64, mem_capacity: i64) -> i64 {
    match qos {
        QosClass::Guaranteed => GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => BESTEFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {
            let adj = 1000 - (1000 * mem_request) / mem_capacity.max(1);
            // Burstable pods always score above Guaranteed ones and below BestEffort ones.
            if adj < 1000 + GUARANTEED_OOM_SCORE_ADJ {
                1000 + GUARANTEED_OOM_SCORE_ADJ
            } else if adj == BESTEFFORT_OOM_SCORE_ADJ {
                adj - 1
            } else {
                adj
            }
        }
    }
}

/// Whether this process may lower `oom_score_adj` (CAP_SYS_RESOURCE in its effective set).
pub(crate) fn can_lower_oom_score_adj() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        const CAP_SYS_RESOURCE: u64 = 24;
        let can = eff & (1 << CAP_SYS_RESOURCE) != 0;
        if !can {
            tracing::warn!("no CAP_SYS_RESOURCE: negative oom_score_adj values are clamped to 0");
        }
        can
    })
}

/// The CRI resources of container `c` of `pod`, as upstream's
/// `generateLinuxContainerResources`.
pub(crate) fn linux_container_resources(
    pod: &Pod,
    c: &Container,
    node: &NodeAllocatable,
) -> Result<cri::LinuxContainerResources, ResourceError> {
    let r = container_resources(c)?;
    let qos = pod_qos(pod);
    let mut adj = oom_score_adj(qos, r.mem_request.unwrap_or(0), node.memory);
    if adj < 0 && !can_lower_oom_score_adj() {
        tracing::debug!(container = %c.name, adj, "clamping oom_score_adj to 0 (EPERM on this host)");
        adj = 0;
    }
    let cpu_limit = r.cpu_limit.unwrap_or(0);
    Ok(cri::LinuxContainerResources {
        cpu_shares: milli_cpu_to_shares(r.cpu_request.unwrap_or(0)),
        cpu_period: if cpu_limit > 0 { QUOTA_PERIOD } else { 0 },
        cpu_quota: milli_cpu_to_quota(cpu_limit, QUOTA_PERIOD),
        memory_limit_in_bytes: r.mem_limit.unwrap_or(0),
        oom_score_adj: adj,
        ..Default::default()
    })
}

/// The pod's effective requests (upstream's `PodRequests`): the sum over app containers,
/// or the largest init container's request when that is larger. (milli-CPU, bytes)
pub(crate) fn pod_requests(pod: &Pod) -> (i64, i64) {
    let mut cpu = 0i64;
    let mut mem = 0i64;
    for c in crate::pod_util::app_containers(pod) {
        let r = container_resources(c).unwrap_or_default();
        cpu = cpu.saturating_add(r.cpu_request.unwrap_or(0));
        mem = mem.saturating_add(r.mem_request.unwrap_or(0));
    }
    for c in crate::pod_util::init_containers(pod) {
        let r = container_resources(c).unwrap_or_default();
        cpu = cpu.max(r.cpu_request.unwrap_or(0));
        mem = mem.max(r.mem_request.unwrap_or(0));
    }
    (cpu, mem)
}

/// The pod cgroup's settings (upstream `ResourceConfigForPod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PodCgroupConfig {
    pub(crate) cpu_shares: i64,
    /// -1: unlimited (some container has no CPU limit).
    pub(crate) cpu_quota: i64,
    pub(crate) cpu_period: i64,
    /// None: unlimited (some container has no memory limit).
    pub(crate) memory_limit: Option<i64>,
}

impl PodCgroupConfig {
    /// Each setting at the larger of the two (unlimited wins): a pod cgroup that holds both
    /// sizes while its containers move from one to the other.
    pub(crate) fn max(&self, other: &PodCgroupConfig) -> PodCgroupConfig {
        let quota = |q: i64| if q <= 0 { i64::MAX } else { q };
        PodCgroupConfig {
            cpu_shares: self.cpu_shares.max(other.cpu_shares),
            cpu_quota: match quota(self.cpu_quota).max(quota(other.cpu_quota)) {
                i64::MAX => -1,
                q => q,
            },
            cpu_period: self.cpu_period,
            memory_limit: self
                .memory_limit
                .zip(other.memory_limit)
                .map(|(a, b)| a.max(b)),
        }
    }
}

pub(crate) fn pod_cgroup_config(pod: &Pod) -> PodCgroupConfig {
    let qos = pod_qos(pod);
    let (cpu_req, _) = pod_requests(pod);
    let mut cpu_limit = Some(0i64);
    let mut mem_limit = Some(0i64);
    for c in crate::pod_util::app_containers(pod) {
        let r = container_resources(c).unwrap_or_default();
        cpu_limit = cpu_limit.zip(r.cpu_limit).map(|(a, b)| a.saturating_add(b));
        mem_limit = mem_limit.zip(r.mem_limit).map(|(a, b)| a.saturating_add(b));
    }
    for c in crate::pod_util::init_containers(pod) {
        let r = container_resources(c).unwrap_or_default();
        cpu_limit = cpu_limit.zip(r.cpu_limit).map(|(a, b)| a.max(b));
        mem_limit = mem_limit.zip(r.mem_limit).map(|(a, b)| a.max(b));
    }
    let cpu_shares = if qos == QosClass::BestEffort {
        MIN_SHARES
    } else {
        milli_cpu_to_shares(cpu_req)
    };
    PodCgroupConfig {
        cpu_shares,
        cpu_quota: match cpu_limit.filter(|&l| l > 0) {
            Some(l) if qos != QosClass::BestEffort => milli_cpu_to_quota(l, QUOTA_PERIOD),
            _ => -1,
        },
        cpu_period: QUOTA_PERIOD,
        memory_limit: mem_limit
            .filter(|&l| l > 0)
            .filter(|_| qos != QosClass::BestEffort),
    }
}

/// The pod's cgroup (absolute, in the driver's form) under `cgroup_root`.
pub(crate) fn pod_cgroup_name(cgroup_root: &str, qos: QosClass, uid: &str) -> String {
    let pod = format!("pod{uid}");
    let parts: &[&str] = match qos {
        QosClass::Guaranteed => &["kubepods", &pod],
        QosClass::Burstable => &["kubepods", "burstable", &pod],
        QosClass::BestEffort => &["kubepods", "besteffort", &pod],
    };
    crate::cgroup_manager::cgroup_path(cgroup_root, parts)
}

/// Every cgroup a pod with this UID may have (its QoS class is not always known).
pub(crate) fn all_pod_cgroup_names(cgroup_root: &str, uid: &str) -> Vec<String> {
    [
        QosClass::Guaranteed,
        QosClass::Burstable,
        QosClass::BestEffort,
    ]
    .into_iter()
    .map(|q| pod_cgroup_name(cgroup_root, q, uid))
    .collect()
}

pub(crate) const CGROUP_FS: &str = "/sys/fs/cgroup";

/// True when the host runs pure cgroup v2 (controllers listed at the top).
pub(crate) fn is_cgroup_v2() -> bool {
    Path::new(CGROUP_FS).join("cgroup.controllers").exists()
}

/// The directories `cgroupRoot` must have under the cgroup mount `fs` (v2: one; v1: one in
/// each hierarchy the kubelet writes, cpu and memory).
fn cgroup_root_dirs(fs: &Path, root: &str, v2: bool) -> Vec<PathBuf> {
    let rel = root.trim_start_matches('/');
    if v2 {
        vec![fs.join(rel)]
    } else {
        ["cpu", "memory"]
            .iter()
            .map(|c| fs.join(c).join(rel))
            .collect()
    }
}

/// Upstream refuses to start when `cgroupRoot` does not exist, rather than register a
/// Ready node whose every pod then fails.
pub fn check_cgroup_root(root: &str) -> Result<(), ResourceError> {
    check_cgroup_root_in(Path::new(CGROUP_FS), root, is_cgroup_v2())
}

fn check_cgroup_root_in(fs: &Path, root: &str, v2: bool) -> Result<(), ResourceError> {
    for dir in cgroup_root_dirs(fs, root, v2) {
        if !dir.is_dir() {
            return Err(ResourceError::CgroupRootMissing {
                root: root.to_string(),
                missing: dir,
            });
        }
    }
    Ok(())
}

/// A pod or QoS cgroup that cannot be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("writing {value:?} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("{unit}{}{message}", if unit.is_empty() { "" } else { ": " })]
    Systemd { unit: String, message: String },
}

fn write(path: PathBuf, value: String) -> Result<(), CgroupError> {
    std::fs::write(&path, &value).map_err(|source| CgroupError::Write {
        path,
        value,
        source,
    })
}

fn mkdir(path: PathBuf) -> Result<PathBuf, CgroupError> {
    std::fs::create_dir_all(&path).map_err(|source| CgroupError::Write {
        path: path.clone(),
        value: String::new(),
        source,
    })?;
    Ok(path)
}

/// Creates the pod cgroup and writes the pod's totals (cgroup v1: cpu.shares,
/// cpu.cfs_period_us/cfs_quota_us, memory.limit_in_bytes; pure v2: cpu.weight, cpu.max,
/// memory.max).
pub(crate) fn ensure_pod_cgroup(name: &str, cfg: &PodCgroupConfig) -> Result<(), CgroupError> {
    let rel = name.trim_start_matches('/');
    let root = Path::new(CGROUP_FS);
    crate::cgroup_manager::ensure_unit(name, cfg)?;
    if is_cgroup_v2() {
        // Enable cpu and memory on every ancestor so the pod cgroup gets the files.
        let mut cur = root.to_path_buf();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            let _ = std::fs::write(cur.join("cgroup.subtree_control"), "+cpu +memory");
            cur = mkdir(cur.join(part))?;
        }
        // Upstream's CpuSharesToCpuWeight.
        let weight = 1 + ((cfg.cpu_shares - 2) * 9999) / 262_142;
        write(cur.join("cpu.weight"), weight.to_string())?;
        let quota = if cfg.cpu_quota > 0 {
            cfg.cpu_quota.to_string()
        } else {
            "max".into()
        };
        write(cur.join("cpu.max"), format!("{quota} {}", cfg.cpu_period))?;
        write(
            cur.join("memory.max"),
            cfg.memory_limit
                .map(|m| m.to_string())
                .unwrap_or_else(|| "max".into()),
        )?;
        return Ok(());
    }
    let cpu = mkdir(root.join("cpu").join(rel))?;
    write(cpu.join("cpu.shares"), cfg.cpu_shares.to_string())?;
    write(cpu.join("cpu.cfs_period_us"), cfg.cpu_period.to_string())?;
    write(cpu.join("cpu.cfs_quota_us"), cfg.cpu_quota.to_string())?;
    let mem = mkdir(root.join("memory").join(rel))?;
    write(
        mem.join("memory.limit_in_bytes"),
        cfg.memory_limit.unwrap_or(-1).to_string(),
    )?;
    Ok(())
}

/// The node's allocatable resources (no reservations): milli-CPU from the CPU count,
/// bytes from `/proc/meminfo` `MemTotal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeAllocatable {
    pub(crate) cpu_milli: i64,
    pub(crate) memory: i64,
}

impl NodeAllocatable {
    pub(crate) fn detect() -> NodeAllocatable {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as i64;
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            })
            .map(|kb| kb * 1024)
            .unwrap_or(i64::MAX);
        NodeAllocatable {
            cpu_milli: cpus * 1000,
            memory,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_cgroup_root_is_refused() {
        let fs = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(fs.path().join("cpu/nodus")).unwrap();
        let e = check_cgroup_root_in(fs.path(), "/nodus", false)
            .unwrap_err()
            .to_string();
        let missing = fs.path().join("memory/nodus");
        assert_eq!(
            e,
            format!(
                "invalid configuration: cgroup-root \"/nodus\" doesn't exist ({} is missing)",
                missing.display()
            )
        );
        std::fs::create_dir_all(fs.path().join("memory/nodus")).unwrap();
        assert!(check_cgroup_root_in(fs.path(), "/nodus", false).is_ok());
        assert!(check_cgroup_root_in(fs.path(), "/", false).is_ok());
        assert!(check_cgroup_root_in(fs.path(), "/nodus", true).is_err());
        std::fs::create_dir_all(fs.path().join("nodus")).unwrap();
        assert!(check_cgroup_root_in(fs.path(), "/nodus", true).is_ok());
    }
    use crate::sources::{load_manifest, Source};

    fn pod(resources: &[&str]) -> Pod {
        let mut text = String::from("kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n");
        for (i, r) in resources.iter().enumerate() {
            text.push_str(&format!(
                "  - name: c{i}\n    image: i:1\n    resources: {r}\n"
            ));
        }
        load_manifest(&text, Source::File, "/m/p", "n").0.remove(0)
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_milli("500m").unwrap(), 500);
        // Upstream's micro and nano suffixes, rounded up to whole milli-units.
        assert_eq!(parse_milli("250000u").unwrap(), 250);
        assert_eq!(parse_milli("1n").unwrap(), 1);
        assert_eq!(parse_milli("1.5").unwrap(), 1500);
        assert_eq!(parse_milli("2").unwrap(), 2000);
        assert_eq!(parse_milli("128Mi").unwrap(), 128 * 1024 * 1024 * 1000);
        assert_eq!(parse_milli("1G").unwrap(), 1_000_000_000_000);
        assert_eq!(parse_milli("1e3").unwrap(), 1_000_000);
        assert_eq!(parse_milli("0.0001").unwrap(), 1, "rounds up");
        assert!(parse_milli("12x").is_err());
        assert!(parse_milli("").is_err());
        assert!(parse_milli("1.2.3").is_err());
    }

    #[test]
    fn shares_quota_and_oom_as_upstream() {
        assert_eq!(milli_cpu_to_shares(0), 2);
        assert_eq!(milli_cpu_to_shares(1), 2);
        assert_eq!(milli_cpu_to_shares(100), 102);
        assert_eq!(milli_cpu_to_shares(1000), 1024);
        assert_eq!(milli_cpu_to_shares(1_000_000), MAX_SHARES);
        assert_eq!(milli_cpu_to_quota(500, 100_000), 50_000);
        assert_eq!(milli_cpu_to_quota(5, 100_000), 1000);
        assert_eq!(oom_score_adj(QosClass::Guaranteed, 0, 100), -997);
        assert_eq!(oom_score_adj(QosClass::BestEffort, 0, 100), 1000);
        assert_eq!(oom_score_adj(QosClass::Burstable, 50, 100), 500);
        assert_eq!(oom_score_adj(QosClass::Burstable, 0, 100), 999);
        assert_eq!(oom_score_adj(QosClass::Burstable, 100, 100), 3);
    }

    #[test]
    fn qos_classes() {
        assert_eq!(pod_qos(&pod(&["{}"])), QosClass::BestEffort);
        assert_eq!(
            pod_qos(&pod(&["{limits: {cpu: 500m, memory: 64Mi}}"])),
            QosClass::Guaranteed
        );
        assert_eq!(
            pod_qos(&pod(&["{limits: {cpu: 500m, memory: 64Mi}}", "{}"])),
            QosClass::Burstable
        );
        assert_eq!(
            pod_qos(&pod(&[
                "{requests: {cpu: 100m}, limits: {cpu: 500m, memory: 64Mi}}"
            ])),
            QosClass::Burstable
        );
    }

    #[test]
    fn pod_totals() {
        let p = pod(&[
            "{limits: {cpu: 500m, memory: 64Mi}}",
            "{limits: {cpu: 250m, memory: 32Mi}}",
        ]);
        let c = pod_cgroup_config(&p);
        assert_eq!(c.cpu_shares, milli_cpu_to_shares(750));
        assert_eq!(c.cpu_quota, 75_000);
        assert_eq!(c.memory_limit, Some(96 << 20));
        let b = pod_cgroup_config(&pod(&[
            "{requests: {cpu: 100m}}",
            "{limits: {memory: 1Mi}}",
        ]));
        assert_eq!((b.cpu_quota, b.memory_limit), (-1, None));
        assert_eq!(
            pod_requests(&pod(&["{requests: {cpu: 100m, memory: 1Ki}}", "{}"])),
            (100, 1024)
        );
        assert_eq!(
            pod_cgroup_name("/r/", QosClass::Burstable, "u"),
            "/r/kubepods/burstable/podu"
        );
        assert_eq!(
            pod_cgroup_name("/", QosClass::Guaranteed, "u"),
            "/kubepods/podu"
        );
    }

    #[test]
    fn bad_quantity_names_the_field() {
        // The manifest sources refuse this pod; an API pod is checked here again.
        let c: k8s_openapi::api::core::v1::Container =
            serde_yaml::from_str("{name: c, resources: {limits: {cpu: 5x}}}").unwrap();
        let e = container_resources(&c).unwrap_err().to_string();
        assert!(e.contains("limits.cpu") && e.contains("5x"), "{e}");
    }
}
