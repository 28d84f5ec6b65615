//! The benchmark driver: runs two binaries (ours and the crate's) N times each, alternating,
//! and prints one table block: stripped size, peak RSS of one call, median and p90 wall time,
//! and the crate/ours ratios.
//!
//! Usage: runner <calls> <op> <ours-bin> <crate-bin> [args passed to both...]
//!
//! Each call is fork + execv + wait4 from this process. fork (not posix_spawn, whose vfork
//! shares our address space) keeps our own resident set out of the child's ru_maxrss: a
//! forked child starts with a copy of our few anonymous pages only, and its exec replaces
//! them.

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
    for (name, r) in [("ours", &ours), ("crate", &theirs)] {
        println!(
            "{op:<8} {name:<6} {:>12} {:>10} {:>10.3} {:>10.3}",
            r.size,
            r.rss_kib,
            ms(r.median),
            ms(r.p90)
        );
    }
    let ratio = |a: f64, b: f64| a / b;
    let rs = ratio(theirs.size as f64, ours.size as f64);
    let rr = ratio(theirs.rss_kib as f64, ours.rss_kib as f64);
    let rt = ratio(ms(theirs.median), ms(ours.median));
    let rp = ratio(ms(theirs.p90), ms(ours.p90));
    let within = |x: f64| if x <= 1.10 { "yes" } else { "no" };
    println!(
        "{op:<8} {:<6} {:>11.2}x {:>9.2}x {:>9.2}x {:>9.2}x   within 10%: size {}, rss {}, time {}",
        "ratio",
        rs,
        rr,
        rt,
        rp,
        within(rs),
        within(rr),
        within(rt)
    );
}
