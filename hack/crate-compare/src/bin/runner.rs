//! The benchmark driver: runs two binaries (ours and the crate's) N times each, alternating,
//! and prints one table block: stripped size, peak RSS of one call, median and p90 wall time
//! of one call as a process, the median time of one operation inside one process (the
//! binary run once with CC_REPEAT=N), and the crate/ours ratios.
//!
//! Usage: runner <calls> <op> <ours-bin> <crate-bin> [args passed to both...]
//!
//! Each call is fork + execv + wait4 from this process; the peak RSS is wait4's ru_maxrss.
//! The kernel keeps the larger of the pre-exec and post-exec high-water marks, so a call
//! can never read below what the forked copy of this runner had resident; the script
//! measures that floor (a call of a static binary that does nothing) and prints it.

use std::ffi::CString;
use std::time::{Duration, Instant};

struct Sample {
    wall: Duration,
    maxrss_kib: i64,
}

fn call(argv: &[CString]) -> Sample {
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let start = Instant::now();
    // SAFETY: this process has one thread; the child only calls execv and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        fail(&format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        unsafe {
            libc::execv(ptrs[0], ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: rusage is plain data filled by the kernel.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = start.elapsed();
    if r != pid {
        fail(&format!("wait4: {}", std::io::Error::last_os_error()));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        fail(&format!(
            "{:?} failed (wait status {status:#x})",
            argv[0].to_string_lossy()
        ));
    }
    Sample {
        wall,
        maxrss_kib: ru.ru_maxrss,
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("runner: {msg}");
    std::process::exit(1);
}

fn quantile<T: Copy + Ord>(v: &[T], q: f64) -> T {
    let mut s = v.to_vec();
    s.sort();
    // Nearest rank; for the median of an even count this takes the upper middle.
    let i = ((s.len() as f64) * q).floor() as usize;
    s[i.min(s.len() - 1)]
}

struct Row {
    size: u64,
    rss_kib: i64,
    median: Duration,
    p90: Duration,
}

fn row(bin: &str, samples: &[Sample]) -> Row {
    let size = std::fs::metadata(bin)
        .unwrap_or_else(|e| fail(&format!("{bin}: {e}")))
        .len();
    let walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    let rss: Vec<i64> = samples.iter().map(|s| s.maxrss_kib).collect();
    Row {
        size,
        rss_kib: quantile(&rss, 0.5),
        median: quantile(&walls, 0.5),
        p90: quantile(&walls, 0.9),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        fail("usage: runner <calls> <op> <ours-bin> <crate-bin> [args...]");
    }
    let n: usize = args[1]
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or_else(|| fail("calls: a positive number"));
    let op = &args[2];
    let bins = [&args[3], &args[4]];
    let argv: Vec<Vec<CString>> = bins
        .iter()
        .map(|b| {
            std::iter::once(b.as_str())
                .chain(args[5..].iter().map(String::as_str))
                .map(|a| CString::new(a).unwrap_or_else(|_| fail("NUL in argument")))
                .collect()
        })
        .collect();

    if std::env::var_os("CC_SHOW_FLOOR").is_some() {
        println!(
            "# runner RssAnon {} KiB: no call's peak RSS can read below it",
            rss_anon_kib()
        );
    }
    // One untimed call each: page cache and dentries warm for both.
    call(&argv[0]);
    call(&argv[1]);
    let mut samples: [Vec<Sample>; 2] = [Vec::with_capacity(n), Vec::with_capacity(n)];
    for i in 0..n {
        // ours, crate, crate, ours, ...: neither always goes first.
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            samples[k].push(call(&argv[k]));
        }
    }
    let ours = row(bins[0], &samples[0]);
    let theirs = row(bins[1], &samples[1]);
    let per_op = [in_process(&argv[0], n), in_process(&argv[1], n)];
    for (name, r, op_ns) in [("ours", &ours, per_op[0]), ("crate", &theirs, per_op[1])] {
        println!(
            "{op:<10} {name:<6} {:>10} {:>8} {:>9.3} {:>9.3} {:>10.1}",
            r.size,
            r.rss_kib,
            ms(r.median),
            ms(r.p90),
            op_ns as f64 / 1e3
        );
    }
    let rs = theirs.size as f64 / ours.size as f64;
    let rr = theirs.rss_kib as f64 / ours.rss_kib as f64;
    let rt = ms(theirs.median) / ms(ours.median);
    let rp = ms(theirs.p90) / ms(ours.p90);
    let ro = per_op[1] as f64 / per_op[0] as f64;
    // "within 10%": the crate costs at most 1.10x ours on that figure.
    let within = |x: f64| if x <= 1.10 { "yes" } else { "no" };
    println!(
        "{op:<10} {:<6} {:>9.2}x {:>7.2}x {:>8.2}x {:>8.2}x {:>9.2}x   within 10%: size {}, rss {}, call {}, op {}",
        "ratio",
        rs,
        rr,
        rt,
        rp,
        ro,
        within(rs),
        within(rr),
        within(rt),
        within(ro)
    );
}

/// Runs the binary once with CC_REPEAT=n and returns the median nanoseconds per operation
/// it prints.
fn in_process(argv: &[CString], n: usize) -> u64 {
    let prog = argv[0].to_string_lossy().into_owned();
    let out = std::process::Command::new(&prog)
        .args(argv[1..].iter().map(|a| a.to_string_lossy().into_owned()))
        .env("CC_REPEAT", n.to_string())
        .output()
        .unwrap_or_else(|e| fail(&format!("{prog}: {e}")));
    if !out.status.success() {
        fail(&format!(
            "{prog} CC_REPEAT={n}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| fail(&format!("{prog}: no per-operation time printed")))
}

/// This process's anonymous resident memory, which a forked child starts with.
fn rss_anon_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
