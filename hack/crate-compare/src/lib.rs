//! What the ours/crate binaries of one operation share: the names and addresses they use,
//! so both do exactly the same work. Each binary prints nothing on success and exits 1 with
//! a message on failure; `keep` as the last argument skips the final delete, for the
//! script's one-off check that both leave the same state behind. With `CC_REPEAT=N` in the
//! environment a binary does the operation N times in one process and prints the median
//! time of one operation in nanoseconds (the library's cost without process start-up).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

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

/// The inode of the calling thread's network namespace.
pub fn thread_ns_ino() -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// What the pod-side work of a CNI call needs inside a namespace: a route netlink socket
/// (it stays bound to the namespace it was opened in). Returns the namespace's inode, so
/// the caller can check where the thread was.
pub fn open_route_socket() -> std::io::Result<(std::os::fd::OwnedFd, u64)> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    Ok((fd, thread_ns_ino()?))
}

/// `CC_CG=setup`: the cgroup binaries create, apply and remove without reading stats
/// (cgroups-rs's stats calls read more files than ours, and it has no narrower call).
pub fn cg_setup_only() -> bool {
    std::env::var_os("CC_CG").is_some_and(|v| v == "setup")
}

/// `CC_REPEAT` from the environment: how many in-process repetitions to time.
pub fn repeat_count() -> Option<usize> {
    let n: usize = std::env::var("CC_REPEAT").ok()?.parse().ok()?;
    (n > 0).then_some(n)
}

/// Runs `op` `n` times, timing each run, and prints the median in nanoseconds; exits 1 on
/// the first failure.
pub fn repeat<E: std::fmt::Display>(who: &str, n: usize, mut op: impl FnMut() -> Result<(), E>) {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        exit_on_error(who, op());
        times.push(t.elapsed());
    }
    println!("{}", median(&mut times).as_nanos());
}

/// The median (upper middle for an even count).
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}
