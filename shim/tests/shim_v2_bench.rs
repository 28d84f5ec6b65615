//! Benchmark driver for `hack/bench-shim.sh` (ignored by `cargo test`; not a test of
//! timing): N pods (sandbox + one busybox container: run, create, start, stop, remove)
//! through CRI on one private containerd, alternating the runtime handler `runc`
//! (io.containerd.runc.v2 + runc) and `nodus-shim` (io.containerd.nodus.v2 + nodus-runtime).
//! Prints per-phase medians, the shim's resident memory per running pod and the ratios.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nodus_testkit::{cleanup, cri, Cni, ContainerdOptions, PrivateContainerd, BUSYBOX_IMAGE};

const PHASES: [&str; 7] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
];

#[derive(Default)]
struct Samples {
    phases: BTreeMap<&'static str, Vec<f64>>,
    total: Vec<f64>,
    rss_kib: Vec<u64>,
    pss_kib: Vec<u64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn median_u(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// `(VmRSS, Pss)` in KiB of a process.
fn memory_kib(pid: i32) -> (u64, u64) {
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (field(&status, "VmRSS:"), field(&rollup, "Pss:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run through hack/bench-shim.sh"]
async fn bench_pod_lifecycle() {
    let n: usize = std::env::var("BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let shim = nodus_testkit::bin_path("containerd-shim-nodus-v2");
    assert!(shim.exists(), "{} missing", shim.display());
    let ctrd = PrivateContainerd::start(ContainerdOptions {
        cni: Cni::ReferenceBridge {
            subnet: "10.79.0.0/24".into(),
        },
        ..Default::default()
    })
    .await
    .expect("private containerd");
    let mut rt = ctrd.runtime().await.unwrap();
    let socket = ctrd.socket().display().to_string();
    let handlers = [
        ("runc", "containerd-shim-runc-v2"),
        ("nodus-shim", "containerd-shim-nodus-v2"),
    ];
    let mut results: BTreeMap<&str, Samples> = BTreeMap::new();
    // One warm-up pod each (page cache, image unpack), not counted.
    for i in 0..=n {
        let order: Vec<_> = if i % 2 == 0 {
            handlers.to_vec()
        } else {
            handlers.iter().rev().cloned().collect()
        };
        for (handler, shim_binary) in order {
            let sandbox = ctrd.sandbox_config(&format!("bench{i}"));
            let mut times = Vec::new();
            let t = Instant::now();
            let pod = cri::run_sandbox(&mut rt, &sandbox, handler)
                .await
                .unwrap_or_else(|e| panic!("{handler}: {e}"));
            times.push(t.elapsed());
            let config = cri::container_config("c", BUSYBOX_IMAGE, &["sleep", "1000"], "c/0.log");
            let t = Instant::now();
            let ctr = cri::create_container(&mut rt, &pod, &sandbox, config)
                .await
                .unwrap_or_else(|e| panic!("{handler}: {e}"));
            times.push(t.elapsed());
            let t = Instant::now();
            cri::start_container(&mut rt, &ctr)
                .await
                .unwrap_or_else(|e| panic!("{handler}: {e}"));
            times.push(t.elapsed());
            // The pod runs: measure its shim(s).
            let (mut rss, mut pss) = (0, 0);
            for pid in cleanup::pids_with_cmdline(&[shim_binary, &socket]) {
                let (r, p) = memory_kib(pid);
                rss += r;
                pss += p;
            }
            let t = Instant::now();
            cri::stop_container(&mut rt, &ctr, 0)
                .await
                .unwrap_or_else(|e| panic!("{handler}: {e}"));
            times.push(t.elapsed());
            let t = Instant::now();
            cri::remove_container(&mut rt, &ctr)
                .await
                .unwrap_or_else(|e| panic!("{handler}: {e}"));
            times.push(t.elapsed());
            let t = Instant::now();
            cri::stop_sandbox(&mut rt, &pod)
                .await
                .unwrap_or_else(|e| panic!("{handler}: {e}"));
            times.push(t.elapsed());
            let t = Instant::now();
            cri::remove_sandbox(&mut rt, &pod)
                .await
                .unwrap_or_else(|e| panic!("{handler}: {e}"));
            times.push(t.elapsed());
            if i == 0 {
                continue;
            }
            let s = results.entry(handler).or_default();
            let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
            for (phase, d) in PHASES.iter().zip(&times) {
                s.phases.entry(phase).or_default().push(ms(d));
            }
            s.total.push(times.iter().map(ms).sum());
            s.rss_kib.push(rss);
            s.pss_kib.push(pss);
        }
    }

    println!("\n{n} pods per handler (sandbox + 1 container), medians in ms:");
    print!("{:<18}", "phase");
    for (h, _) in handlers {
        print!("{h:>14}");
    }
    println!("{:>14}", "runc/ours");
    let (runc, ours) = (&results["runc"], &results["nodus-shim"]);
    for phase in PHASES {
        let (a, b) = (median(&runc.phases[phase]), median(&ours.phases[phase]));
        println!("{phase:<18}{a:>14.1}{b:>14.1}{:>14.2}", a / b);
    }
    let (a, b) = (median(&runc.total), median(&ours.total));
    println!("{:<18}{a:>14.1}{b:>14.1}{:>14.2}", "lifecycle total", a / b);
    let (ra, rb) = (median_u(&runc.rss_kib), median_u(&ours.rss_kib));
    let (pa, pb) = (median_u(&runc.pss_kib), median_u(&ours.pss_kib));
    println!(
        "{:<18}{:>14}{:>14}{:>14.2}",
        "shim RSS/pod KiB",
        ra,
        rb,
        ra as f64 / rb as f64
    );
    println!(
        "{:<18}{:>14}{:>14}{:>14.2}",
        "shim PSS/pod KiB",
        pa,
        pb,
        pa as f64 / pb as f64
    );
    println!(
        "targets: lifecycle ratio >= 1.5 ({}), shim RSS per pod <= 4096 KiB ({})",
        if a / b >= 1.5 { "met" } else { "NOT met" },
        if rb <= 4096 { "met" } else { "NOT met" }
    );
    assert!(ours.total.len() == n && runc.total.len() == n);
}
