//! Typed cgroup statistics: one reader for the CLI (`events --stats`, printed in runc's
//! JSON shape by serde) and the shim (converted to containerd's v1/v2 Metrics).
//!
//! Units follow runc's libcontainer: CPU times in nanoseconds, memory in bytes. A limit
//! of 0 means unlimited (the kernel's "max"); v1 memory limits are passed through as the
//! kernel reports them (a page-rounded i64::MAX when unset), as runc does.

use std::collections::BTreeMap;

use serde::Serialize;

/// A snapshot of a container cgroup's CPU, memory and pids accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuStats {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuUsage {
    #[serde(rename = "total")]
    pub total_ns: u64,
    /// v1 only (cpuacct.usage_percpu); empty on v2.
    #[serde(rename = "percpu")]
    pub per_cpu_ns: Vec<u64>,
    #[serde(rename = "kernel")]
    pub kernel_ns: u64,
    #[serde(rename = "user")]
    pub user_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    #[serde(rename = "throttled_time")]
    pub throttled_time_ns: u64,
}

/// Usage, peak, limit and limit hits of one memory counter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryEntry {
    pub usage: u64,
    pub max: u64,
    pub limit: u64,
    pub failcnt: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    pub usage: MemoryEntry,
    pub swap: MemoryEntry,
    /// v1 only (memory.kmem.*).
    pub kernel: MemoryEntry,
    /// v1 only (memory.kmem.tcp.*).
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    /// memory.stat as the kernel writes it.
    pub raw: BTreeMap<String, u64>,
    /// Memory events: memory.events on v2, the counters of memory.oom_control on v1
    /// (`oom_kill` on both). Not in runc's JSON.
    #[serde(skip)]
    pub events: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PidsStats {
    pub current: u64,
    /// 0: unlimited.
    pub limit: u64,
}
