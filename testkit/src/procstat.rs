//! Figures of a running process from /proc, for the benchmarks: resident memory, CPU time,
//! open file descriptors, and processes by name.

/// VmRSS of `pid` in KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU time (user + system) `pid` used so far, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the ")" that ends the command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((u + st) / ticks)
        })
        .unwrap_or(0.0)
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// PIDs of the processes whose command name (`/proc/<pid>/comm`) starts with `prefix`.
pub fn pids_named(prefix: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_cpu_and_fds() {
        let me = std::process::id();
        assert!(rss_kib(me) > 0);
        let before = open_fds(me);
        let files: Vec<_> = (0..3)
            .map(|_| std::fs::File::open("/proc/self/status").unwrap())
            .collect();
        assert!(open_fds(me) >= before + 3);
        drop(files);
        // Spin until the kernel has counted some CPU time (a tick is 10 ms).
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_secs(me) == 0.0 && start.elapsed() < std::time::Duration::from_secs(5) {
            x = x.wrapping_add(std::hint::black_box(x) | 1);
        }
        assert!(cpu_secs(me) > 0.0, "{x}");
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(pids_named(comm.trim_end()).contains(&me));
        assert!(pids_named("nonexistent-nodus-").is_empty());
    }
}
