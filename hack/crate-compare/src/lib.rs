//! What the ours/crate binaries of one operation share: the names and addresses they use,
//! so both do exactly the same work. Each binary prints nothing on success and exits 1 with
//! a message on failure; `keep` as the last argument skips the final delete, for the
//! script's one-off check that both leave the same state behind.

use std::net::Ipv4Addr;

/// The pod's interface, born inside the pod namespace.
pub const POD_IF: &str = "eth0";
/// The host end of the veth pair, a port of the bridge in the node namespace.
pub const HOST_IF: &str = "vethcc0";
pub const HOST_MAC: [u8; 6] = [0x02, 0x6e, 0x64, 0x00, 0x00, 0x01];
pub const POD_MAC: [u8; 6] = [0x02, 0x6e, 0x64, 0x00, 0x00, 0x02];
/// TEST-NET-1 (RFC 5737), only ever inside the benchmark's own namespaces.
pub const POD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const PREFIX: u8 = 24;

/// cgroup limits: memory.limit_in_bytes, cpu.shares, cpu.cfs_quota_us/period_us, pids.max.
pub const MEMORY_LIMIT: i64 = 256 << 20;
pub const CPU_SHARES: u64 = 512;
pub const CPU_QUOTA: i64 = 50_000;
pub const CPU_PERIOD: u64 = 100_000;
pub const PIDS_MAX: i64 = 128;
/// The v1 controllers our runtime joins (nodus_runtime::cgroups::v1::CONTROLLERS); the
/// crate is given the same list.
pub const CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer",
];

/// The positional arguments, and whether the last one was `keep`.
pub fn args(want: usize, usage: &str) -> (Vec<String>, bool) {
    let mut a: Vec<String> = std::env::args().skip(1).collect();
    let keep = a.last().is_some_and(|l| l == "keep");
    if keep {
        a.pop();
    }
    if a.len() != want {
        eprintln!("usage: {usage} [keep]");
        std::process::exit(2);
    }
    (a, keep)
}

/// Prints the error and exits 1.
pub fn exit_on_error<E: std::fmt::Display>(who: &str, r: Result<(), E>) {
    if let Err(e) = r {
        eprintln!("{who}: {e}");
        std::process::exit(1);
    }
}
