//! Benchmark driver for `hack/bench-runtime.sh` (not a test): runs create + start +
//! wait + delete of a busybox `/bin/true` bundle N times with each given runtime, in
//! alternation, and prints medians, peak RSS and ratios against the first runtime.
//!
//! Usage: bench_lifecycle N BUNDLE NAME=BINARY [NAME=BINARY ...]
//! The driver is a child subreaper, so each container's init (orphaned when `create`
//! exits) is reparented to it and waited for directly, as containerd's shim does.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// Run a command and return (success, peak RSS in KiB) from wait4's rusage.
fn run(mut cmd: Command) -> (bool, i64) {
    let child = cmd.spawn().expect("spawn runtime");
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid output storage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    std::mem::forget(child);
    (
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        ru.ru_maxrss,
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: {} N BUNDLE NAME=BINARY...", args[0]);
        std::process::exit(2);
    }
    let n: usize = args[1].parse().expect("N");
    let bundle = PathBuf::from(&args[2]);
    let runtimes: Vec<(String, String)> = args[3..]
        .iter()
        .map(|a| {
            let (k, v) = a.split_once('=').expect("NAME=BINARY");
            (k.to_string(), v.to_string())
        })
        .collect();
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let state = tempfile::tempdir().expect("tempdir");
    let mut times: Vec<Vec<f64>> = vec![vec![]; runtimes.len()];
    let mut rss: Vec<i64> = vec![0; runtimes.len()];
    let mut failures = vec![0usize; runtimes.len()];
    for i in 0..n {
        for (r, (name, bin)) in runtimes.iter().enumerate() {
            let root = state.path().join(name);
            let id = format!("bench-{name}-{i}");
            let pidfile = state.path().join(format!("{id}.pid"));
            let rt = |args: &[&str]| {
                let mut c = Command::new(bin);
                c.arg("--root").arg(&root).args(args);
                c
            };
            let t0 = Instant::now();
            let mut create = rt(&["create", "--bundle"]);
            create.arg(&bundle).arg("--pid-file").arg(&pidfile).arg(&id);
            let (ok1, m1) = run(create);
            let pid: i32 = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let (ok2, m2) = run(rt(&["start", &id]));
            if pid > 0 {
                let mut st = 0;
                // SAFETY: wait for the reparented container init.
                unsafe { libc::waitpid(pid, &mut st, 0) };
            }
            let (ok3, m3) = run(rt(&["delete", &id]));
            let dt = t0.elapsed().as_secs_f64() * 1000.0;
            if ok1 && ok2 && ok3 && pid > 0 {
                times[r].push(dt);
            } else {
                failures[r] += 1;
                let _ = run(rt(&["delete", "--force", &id]));
            }
            rss[r] = rss[r].max(m1).max(m2).max(m3);
            let _ = std::fs::remove_file(&pidfile);
        }
    }
    println!(
        "create+start+wait+delete of /bin/true, {n} runs each, alternating\n{:<11} {:>12} {:>14} {:>9}",
        "runtime", "median ms", "peak RSS KiB", "failures"
    );
    let mut medians = vec![];
    for (r, (name, _)) in runtimes.iter().enumerate() {
        let m = if times[r].is_empty() {
            f64::NAN
        } else {
            median(&mut times[r])
        };
        medians.push(m);
        println!("{name:<11} {m:>12.2} {:>14} {:>9}", rss[r], failures[r]);
    }
    let (ours, _) = &runtimes[0];
    for (r, (name, _)) in runtimes.iter().enumerate().skip(1) {
        println!(
            "{name}/{ours}: time {:.2}x, peak RSS {:.2}x",
            medians[r] / medians[0],
            rss[r] as f64 / rss[0] as f64
        );
    }
}
