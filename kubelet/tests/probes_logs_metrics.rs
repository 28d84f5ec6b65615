//! Probes, lifecycle hooks, logs and metrics end to end through containerd, one node for
//! the file: liveness failure restarts (reason recorded), failing readiness keeps a pod not
//! Ready, httpGet/tcpSocket/startup probes make a pod Ready, a grpc readiness probe follows
//! a real grpc.health.v1 server in the pod's network namespace, postStart runs before the
//! main process goes on and preStop before the SIGTERM handler, `/containerLogs` (on the
//! kubelet API; the read-only port refuses it) with
//! tailLines/timestamps/previous/follow, log rotation stays within the limits,
//! FallbackToLogsOnError, `/metrics` (parsed strictly) and `/stats/summary`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

/// Samples by (name, labels).
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

const MAX_LOG: u64 = 2048;
const MAX_FILES: usize = 3;

fn pod(name: &str, policy: &str, container_extra: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {policy}\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [sh, -c, {script:?}]\n{container_extra}"
    )
}

fn cond(api: &serde_json::Value, kind: &str) -> String {
    api["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .map(|c| c["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// A strict parser of the Prometheus text format (0.0.4): every sample belongs to a family
/// declared by `# TYPE` before it; names, labels and values must be well formed;
/// histogram buckets are cumulative and end with `+Inf` equal to `_count`.
/// Returns samples as (name, labels) -> value.
fn parse_prometheus(text: &str) -> Samples {
    fn name_ok(n: &str) -> bool {
        let mut c = n.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut out = HashMap::new();
    for (no, line) in text.lines().enumerate() {
        let ctx = format!("line {}: {line:?}", no + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut f = rest.splitn(3, ' ');
            match f.next() {
                Some("HELP") => assert!(name_ok(f.next().expect(&ctx)), "{ctx}"),
                Some("TYPE") => {
                    let n = f.next().expect(&ctx);
                    let t = f.next().expect(&ctx);
                    assert!(name_ok(n), "{ctx}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{ctx}"
                    );
                    assert!(
                        types.insert(n.to_string(), t.to_string()).is_none(),
                        "TYPE twice: {ctx}"
                    );
                }
                _ => {}
            }
            continue;
        }
        assert!(!line.starts_with('#'), "{ctx}");
        // `series value [timestamp]`; label values may hold spaces.
        let (series, rest) = match line.rfind('}') {
            Some(i) => (&line[..=i], line[i + 1..].trim()),
            None => line.split_once(' ').expect(&ctx),
        };
        let mut fields = rest.split_whitespace();
        let value = fields.next().expect(&ctx);
        if let Some(ts) = fields.next() {
            assert!(ts.parse::<i64>().is_ok(), "bad timestamp: {ctx}");
        }
        assert!(fields.next().is_none(), "{ctx}");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {ctx}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').expect(&ctx);
                let mut labels = Vec::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let lname: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert!(name_ok(&lname), "label name {lname:?}: {ctx}");
                    assert_eq!(chars.next(), Some('"'), "{ctx}");
                    let mut v = String::new();
                    loop {
                        match chars.next().expect(&ctx) {
                            '\\' => match chars.next().expect(&ctx) {
                                'n' => v.push('\n'),
                                c @ ('\\' | '"') => v.push(c),
                                c => panic!("bad escape \\{c}: {ctx}"),
                            },
                            '"' => break,
                            c => v.push(c),
                        }
                    }
                    labels.push((lname, v));
                    match chars.next() {
                        None => break,
                        Some(',') => {}
                        Some(c) => panic!("unexpected {c:?}: {ctx}"),
                    }
                }
                (n.to_string(), labels)
            }
        };
        assert!(name_ok(&name), "{ctx}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&name)
            .to_string();
        assert!(types.contains_key(&family), "sample before its TYPE: {ctx}");
        assert!(
            out.insert((name, labels), value).is_none(),
            "duplicate series: {ctx}"
        );
    }
    // Histograms: cumulative buckets, +Inf == count.
    for (fam, t) in &types {
        if t != "histogram" {
            continue;
        }
        let mut buckets: Vec<(f64, f64)> = out
            .iter()
            .filter(|((n, _), _)| *n == format!("{fam}_bucket"))
            .map(|((_, l), v)| {
                let le = &l.iter().find(|(k, _)| k == "le").expect("le").1;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, *v)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{fam} not cumulative"
        );
        let inf = buckets.last().expect("buckets");
        assert_eq!(inf.0, f64::INFINITY);
        assert_eq!(
            Some(&inf.1),
            out.get(&(format!("{fam}_count"), Vec::new())),
            "{fam}"
        );
    }
    out
}

fn get(m: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    *m.get(&key).unwrap_or_else(|| panic!("no sample {key:?}"))
}

/// An HTTP server on 127.0.0.1 in the node netns recording request lines (for httpGet
/// hooks with `host: 127.0.0.1`; the kubelet runs in that netns). Stops on drop.
struct Recorder {
    port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(node: &Node) -> Recorder {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let ns = node.ctrd.node_netns().path().to_path_buf();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st) = (requests.clone(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&ns).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
            l.set_nonblocking(true).unwrap();
            tx.send(l.local_addr().unwrap().port()).unwrap();
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let mut buf = [0u8; 4096];
                        let n = s.read(&mut buf).unwrap_or(0);
                        let text = String::from_utf8_lossy(&buf[..n]).to_string();
                        r.lock()
                            .unwrap()
                            .push(text.lines().next().unwrap_or("").to_string());
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Recorder {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self, path: &str) -> bool {
        let want = format!("GET {path} HTTP/1.1");
        self.requests.lock().unwrap().contains(&want)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const GRPC_PORT: u16 = 9555;

/// A grpc.health.v1 server (tonic-health) whose listening socket was bound inside another
/// network namespace (a pod's), so the kubelet's grpc probe reaches it at the pod IP.
struct GrpcHealth {
    reporter: tonic_health::server::HealthReporter,
    server: tokio::task::JoinHandle<()>,
    /// Requests served (the kubelet's probes).
    checks: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl GrpcHealth {
    async fn serve_in_netns(netns: &str, port: u16) -> GrpcHealth {
        let netns = netns.to_string();
        // setns only affects the calling thread: bind from a short-lived one.
        let listener = std::thread::spawn(move || {
            let f = std::fs::File::open(&netns).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .join()
        .unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let (reporter, service) = tonic_health::server::health_reporter();
        let checks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = checks.clone();
        let count = move |req: tonic::Request<()>| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(req)
        };
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .layer(tonic::service::InterceptorLayer::new(count))
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        GrpcHealth {
            reporter,
            server,
            checks,
        }
    }

    /// Waits until the server has answered `n` more requests (the kubelet's probes).
    async fn wait_checks(&self, node: &Node, n: u64) {
        let load = || self.checks.load(std::sync::atomic::Ordering::Relaxed);
        let to = load() + n;
        node.wait_for(
            &format!("{n} more grpc health checks"),
            Duration::from_secs(10 + 3 * n),
            async || load() >= to,
        )
        .await
    }

    async fn set(&self, service: &str, serving: bool) {
        use tonic_health::ServingStatus;
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status(service, status).await;
    }
}

impl Drop for GrpcHealth {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_hooks_logs_and_metrics() {
    let node = Node::start_with(
        // Logs are read on the kubelet API (10250) as an anonymous client.
        &format!("containerLogMaxSize: {MAX_LOG}\ncontainerLogMaxFiles: {MAX_FILES}\ncontainerLogMonitorInterval: 1s\nauthentication: {{anonymous: {{enabled: true}}}}\n"),
        &[],
    )
    .await;
    node.write_manifest(
        "live.yaml",
        &pod(
            "live",
            "Always",
            "    livenessProbe: {exec: {command: [test, -f, /tmp/healthy]}, periodSeconds: 1, failureThreshold: 2}\n",
            "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 3600",
        ),
    );
    node.write_manifest(
        "notready.yaml",
        &pod(
            "notready",
            "Always",
            // Each (failing) probe leaves a line in /tmp/probed, for the test to count.
            "    readinessProbe: {exec: {command: [sh, -c, 'echo >> /tmp/probed; false']}, periodSeconds: 1}\n",
            "exec sleep 3600",
        ),
    );
    node.write_manifest(
        "web.yaml",
        &pod(
            "web",
            "Always",
            "    ports: [{name: http, containerPort: 8080}]\n    startupProbe: {exec: {command: [test, -f, /tmp/started]}, periodSeconds: 1, failureThreshold: 30}\n    readinessProbe: {httpGet: {path: /index.html, port: http}, periodSeconds: 1}\n    livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}\n",
            "mkdir -p /www; echo ok > /www/index.html; httpd -p 8080 -h /www; sleep 2; touch /tmp/started; exec sleep 3600",
        ),
    );
    node.write_manifest(
        "hooks.yaml",
        &pod(
            "hooks",
            "Always",
            "    lifecycle:\n      postStart: {exec: {command: [sh, -c, 'echo poststart-ran > /tmp/poststart']}}\n      preStop: {exec: {command: [sh, -c, 'echo prestop-ran > /proc/1/fd/1; sleep 1']}}\n",
            "trap 'echo sigterm-handler; exit 0' TERM; while [ ! -f /tmp/poststart ]; do sleep 0.1; done; echo main-saw-$(cat /tmp/poststart); while true; do sleep 0.1; done",
        ),
    );
    node.write_manifest(
        "grpc.yaml",
        &pod(
            "grpc",
            "Always",
            &format!("    readinessProbe: {{grpc: {{port: {GRPC_PORT}, service: nodus}}, periodSeconds: 1}}\n"),
            "exec sleep 3600",
        ),
    );
    let recorder = Recorder::start(&node);
    node.write_manifest(
        "httphooks.yaml",
        &pod(
            "httphooks",
            "Always",
            &format!(
                "    lifecycle:\n      postStart: {{httpGet: {{host: 127.0.0.1, port: {p}, path: /poststart}}}}\n      preStop: {{httpGet: {{host: 127.0.0.1, port: {p}, path: /prestop}}}}\n",
                p = recorder.port
            ),
            "exec sleep 3600",
        ),
    );
    node.write_manifest(
        "logs.yaml",
        &pod(
            "logs",
            "Always",
            "",
            "for i in 1 2 3 4 5; do echo line$i; done; exec sleep 3600",
        ),
    );
    node.write_manifest(
        "chatty.yaml",
        &pod(
            "chatty",
            "Always",
            "",
            "i=0; while true; do i=$((i+1)); echo \"$i xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"; sleep 0.1; done",
        ),
    );
    node.write_manifest(
        "fallback.yaml",
        &pod(
            "fallback",
            "Never",
            "    terminationMessagePolicy: FallbackToLogsOnError\n",
            "echo first; echo last-words; exit 3",
        ),
    );

    // Readiness via httpGet, liveness via tcpSocket, gated by a startup probe.
    let api = node
        .wait_for("web to be Ready", Duration::from_secs(60), || async {
            node.api_pod("web").filter(|p| cond(p, "Ready") == "True")
        })
        .await;
    let cs = &api["status"]["containerStatuses"][0];
    assert_eq!(
        (cs["ready"].as_bool(), cs["started"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(cs["restartCount"], 0);

    // grpc readiness against a grpc.health.v1 server listening in the pod's netns: the
    // probe follows the status of the "nodus" service.
    node.wait_running("grpc", 1).await;
    let sandbox = node.sandboxes("grpc").await.pop().unwrap();
    let pid = node.sandbox_pid(&sandbox.id).await;
    let health = GrpcHealth::serve_in_netns(&format!("/proc/{pid}/ns/net"), GRPC_PORT).await;
    let grpc_ready = |want: &'static str| {
        let node = &node;
        async move {
            node.wait_for(
                &format!("grpc pod Ready={want}"),
                Duration::from_secs(30),
                || async { node.api_pod("grpc").filter(|p| cond(p, "Ready") == want) },
            )
            .await
        }
    };
    // Not Ready while the service is unknown to the server (NotFound): it stays so over
    // two probes ...
    health.wait_checks(&node, 2).await;
    assert_eq!(cond(&node.api_pod("grpc").unwrap(), "Ready"), "False");
    // ... Ready once it reports SERVING, not Ready again on NOT_SERVING.
    health.set("nodus", true).await;
    grpc_ready("True").await;
    health.set("nodus", false).await;
    grpc_ready("False").await;
    assert_eq!(
        node.api_pod("grpc").unwrap()["status"]["containerStatuses"][0]["restartCount"],
        0
    );
    drop(health);

    // Failing readiness: Running but never Ready.
    let api = node
        .wait_for(
            "notready to be Running",
            Duration::from_secs(30),
            || async {
                node.api_pod("notready")
                    .filter(|p| p["status"]["phase"] == "Running")
            },
        )
        .await;
    // ... and stays not Ready over several probes.
    let notready = node.wait_running("notready", 1).await.remove(0);
    let probes = async || {
        let mut rt = node.rt().await;
        nodus_testkit::cri::exec_sync(&mut rt, &notready.id, &["cat", "/tmp/probed"], 10)
            .await
            .map(|r| r.stdout.iter().filter(|b| **b == b'\n').count())
            .unwrap_or(0)
    };
    let to = probes().await + 3;
    node.wait_for(
        "three more readiness probes of notready",
        Duration::from_secs(30),
        async || probes().await >= to,
    )
    .await;
    let api2 = node.api_pod("notready").unwrap();
    for a in [&api, &api2] {
        assert_eq!(cond(a, "Ready"), "False", "{a}");
        assert_eq!(cond(a, "ContainersReady"), "False");
        assert_eq!(a["status"]["containerStatuses"][0]["ready"], false);
    }

    // Liveness: restarts, with the reason recorded.
    let api = node
        .wait_for(
            "live to be restarted by its liveness probe",
            Duration::from_secs(60),
            || async {
                node.api_pod("live").filter(|p| {
                    p["status"]["containerStatuses"][0]["restartCount"]
                        .as_i64()
                        .is_some_and(|n| n >= 1)
                })
            },
        )
        .await;
    let last = &api["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert!(
        last["message"]
            .as_str()
            .unwrap_or("")
            .contains("failed liveness probe"),
        "{api}"
    );

    // postStart ran before the main process went on.
    let (code, body) = node
        .wait_for("hooks output", Duration::from_secs(30), || async {
            node.api_get(&format!("/containerLogs/default/hooks-{NODE}/main"))
                .ok()
                .filter(|(c, b)| *c == 200 && b.contains("main-saw-poststart-ran"))
        })
        .await;
    assert_eq!(code, 200, "{body}");

    // httpGet hooks: postStart when started, preStop when the pod goes.
    node.wait_running("httphooks", 1).await;
    node.wait_for("the postStart httpGet", Duration::from_secs(20), || async {
        recorder.seen("/poststart").then_some(())
    })
    .await;
    assert!(!recorder.seen("/prestop"));
    node.remove_manifest("httphooks.yaml");
    node.wait_for("the preStop httpGet", Duration::from_secs(30), || async {
        recorder.seen("/prestop").then_some(())
    })
    .await;

    // The read-only port never serves logs, as upstream's.
    let (code, _) = node
        .http_get(
            READ_ONLY_PORT,
            &format!("/containerLogs/default/hooks-{NODE}/main"),
        )
        .unwrap();
    assert_eq!(code, 404);
    // /containerLogs with tailLines, timestamps, previous.
    let (code, body) = node
        .wait_for("logs output", Duration::from_secs(30), || async {
            node.api_get(&format!(
                "/containerLogs/default/logs-{NODE}/main?tailLines=2"
            ))
            .ok()
            .filter(|(c, b)| *c == 200 && b.contains("line5"))
        })
        .await;
    assert_eq!((code, body.as_str()), (200, "line4\nline5\n"));
    let (code, body) = node
        .api_get(&format!(
            "/containerLogs/default/logs-{NODE}/main?timestamps=true"
        ))
        .unwrap();
    assert_eq!(code, 200);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 5, "{body}");
    let (ts, msg) = lines[0].split_once(' ').unwrap();
    assert_eq!(msg, "line1");
    assert!(ts.parse::<k8s_openapi::jiff::Timestamp>().is_ok(), "{ts}");
    let (code, body) = node
        .api_get(&format!(
            "/containerLogs/default/logs-{NODE}/main?previous=true"
        ))
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("previous terminated container"), "{body}");
    let (code, _) = node
        .api_get(&format!("/containerLogs/default/logs-{NODE}/nope"))
        .unwrap();
    assert_eq!(code, 400);
    // previous after a liveness restart: the first instance's log.
    let (code, _) = node
        .api_get(&format!(
            "/containerLogs/default/live-{NODE}/main?previous=true"
        ))
        .unwrap();
    assert_eq!(code, 200);
    // follow streams until the container exits.
    node.write_manifest(
        "follow.yaml",
        &pod(
            "follow",
            "Never",
            "",
            "for i in 1 2 3 4 5 6 7 8; do echo tick$i; sleep 0.5; done",
        ),
    );
    let _ = node.wait_running("follow", 1).await;
    let (code, body) = node
        .api_get(&format!(
            "/containerLogs/default/follow-{NODE}/main?follow=true"
        ))
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        body.lines().collect::<Vec<_>>(),
        (1..=8).map(|i| format!("tick{i}")).collect::<Vec<_>>()
    );

    // FallbackToLogsOnError: the log's end is the termination message.
    let api = node
        .wait_for("fallback to fail", Duration::from_secs(30), || async {
            node.api_pod("fallback")
                .filter(|p| p["status"]["phase"] == "Failed")
        })
        .await;
    let t = &api["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 3);
    assert_eq!(t["message"], "first\nlast-words\n", "{api}");

    // Log rotation: the chatty container's logs rotate and stay within the limits.
    let chatty = node.wait_running("chatty", 1).await;
    let log_path =
        std::path::PathBuf::from(node.container_status(&chatty[0].id).await.unwrap().log_path);
    let dir = log_path.parent().unwrap().to_path_buf();
    let current = log_path.file_name().unwrap().to_string_lossy().into_owned();
    let mut rotations_seen = 0;
    // Rotated files by name (`0.log.<stamp>`, compressed or not).
    let mut rotated = std::collections::BTreeSet::new();
    // Looked at until the kubelet has rotated MAX_FILES times, so it also removed the
    // oldest: the limits must hold at every look, not only at the end.
    node.wait_for(
        &format!("{MAX_FILES} rotations of {}", log_path.display()),
        Duration::from_secs(60),
        async || {
            // A `.gz.tmp` is a rotated file being compressed right now; it replaces its source.
            let files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .filter(|f| !f.file_name().to_string_lossy().ends_with(".tmp"))
                .collect();
            assert!(files.len() <= MAX_FILES, "{} files: {files:?}", files.len());
            for f in &files {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                // Checked every second at about 1.4 KiB/s: a file goes over by what one or
                // two intervals add (more only if the kubelet is starved for seconds).
                assert!(len < MAX_LOG * 4, "{} is {len} bytes", f.path().display());
                let name = f.file_name().to_string_lossy().into_owned();
                if name != current {
                    rotated.insert(name.trim_end_matches(".gz").to_string());
                }
            }
            rotations_seen = rotations_seen.max(files.len().saturating_sub(1));
            rotated.len() >= MAX_FILES
        },
    )
    .await;
    assert_eq!(rotations_seen, MAX_FILES - 1, "rotated files kept");
    // Older rotated files are gzipped CRI logs. A rotation removes the oldest `.gz` before it
    // compresses the next one, so for a moment there may be none: look until one opens.
    let text = node
        .wait_for(
            "a compressed rotated log",
            Duration::from_secs(10),
            || async {
                std::fs::read_dir(&dir)
                    .ok()?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "gz"))
                    .find_map(|gz| {
                        let mut text = String::new();
                        let f = std::fs::File::open(gz).ok()?;
                        std::io::Read::read_to_string(
                            &mut flate2::read::GzDecoder::new(f),
                            &mut text,
                        )
                        .ok()?;
                        Some(text)
                    })
            },
        )
        .await;
    assert!(
        text.lines().all(|l| l.contains(" stdout F ")) && !text.is_empty(),
        "{text}"
    );
    // The runtime writes to the reopened file.
    let before = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
    let grown = node
        .wait_for(
            "the reopened log to grow",
            Duration::from_secs(10),
            || async {
                let now = std::fs::read_to_string(&log_path).unwrap_or_default();
                (now.len() as u64 != before && !now.is_empty()).then_some(now)
            },
        )
        .await;
    assert!(grown.contains(" stdout F "), "{grown}");

    // /metrics parses and counts running pods and containers right.
    let (m, ready) = node
        .wait_for(
            "metrics to match the runtime",
            Duration::from_secs(20),
            || async {
                let (code, body) = node.http_get(READ_ONLY_PORT, "/metrics").ok()?;
                assert_eq!(code, 200);
                let m = parse_prometheus(&body);
                let ready = node
                    .all_sandboxes()
                    .await
                    .iter()
                    .filter(|s| {
                        s.state == nodus_proto::runtime::v1::PodSandboxState::SandboxReady as i32
                    })
                    .count();
                let mut rt = node.rt().await;
                let running = rt
                    .list_containers(nodus_proto::runtime::v1::ListContainersRequest {
                        filter: None,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .containers
                    .iter()
                    .filter(|c| {
                        c.state == nodus_proto::runtime::v1::ContainerState::ContainerRunning as i32
                    })
                    .count();
                (get(&m, "kubelet_running_pods", &[]) == ready as f64
                    && get(
                        &m,
                        "kubelet_running_containers",
                        &[("container_state", "running")],
                    ) == running as f64)
                    .then_some((m, ready))
            },
        )
        .await;
    // 10 pods; httphooks is gone, follow and fallback have finished (sandboxes stopped).
    assert_eq!(ready, 7);
    assert!(
        get(
            &m,
            "kubelet_runtime_operations_total",
            &[("operation_type", "run_pod_sandbox")]
        ) >= 9.0
    );
    assert!(get(&m, "kubelet_pod_start_duration_seconds_count", &[]) >= 6.0);
    assert!(get(&m, "kubelet_pleg_relist_duration_seconds_count", &[]) >= 1.0);
    // /metrics/probes: upstream's prober_probe_total series, one per container and probe.
    let (code, body) = node.http_get(READ_ONLY_PORT, "/metrics/probes").unwrap();
    assert_eq!(code, 200, "{body}");
    let probes = parse_prometheus(&body);
    let failed_readiness = probes
        .iter()
        .find(|((name, labels), _)| {
            let has = |k: &str, v: &str| labels.iter().any(|(a, b)| a == k && b == v);
            name == "prober_probe_total"
                && has("pod", &format!("notready-{NODE}"))
                && has("namespace", "default")
                && has("container", "main")
                && has("probe_type", "Readiness")
                && has("result", "failed")
                && labels.iter().any(|(k, v)| k == "pod_uid" && !v.is_empty())
        })
        .map(|(_, v)| *v);
    assert!(failed_readiness.is_some_and(|n| n >= 1.0), "{body}");
    assert!(!m.keys().any(|(name, _)| name == "prober_probe_total"));

    // /metrics/cadvisor: the container series dashboards scrape, with upstream's labels.
    let (code, body) = node.http_get(READ_ONLY_PORT, "/metrics/cadvisor").unwrap();
    assert_eq!(code, 200, "{body}");
    let series = parse_prometheus(&body);
    let web = |family: &str| {
        series
            .iter()
            .find(|((name, labels), _)| {
                let has = |k: &str, v: &str| labels.iter().any(|(a, b)| a == k && b == v);
                name == family
                    && has("pod", &format!("web-{NODE}"))
                    && has("namespace", "default")
                    && has("container", "main")
                    && has("image", BUSYBOX_IMAGE)
            })
            .map(|(_, v)| *v)
    };
    assert!(
        web("container_memory_working_set_bytes").is_some_and(|v| v > 0.0),
        "{body}"
    );
    assert!(
        web("container_cpu_usage_seconds_total").is_some_and(|v| v > 0.0),
        "{body}"
    );
    assert!(
        web("container_last_seen").is_some_and(|v| v > 1.7e9),
        "{body}"
    );

    // /stats/summary from CRI stats.
    let (code, body) = node.http_get(READ_ONLY_PORT, "/stats/summary").unwrap();
    assert_eq!(code, 200, "{body}");
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["node"]["nodeName"], NODE);
    assert!(s["node"]["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0);
    assert!(s["node"]["memory"]["workingSetBytes"].as_u64().unwrap() > 0);
    let web = s["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"] == format!("web-{NODE}").as_str())
        .expect("web in the summary");
    assert!(
        web["memory"]["workingSetBytes"].as_u64().unwrap() > 0,
        "{web}"
    );
    assert_eq!(web["containers"][0]["name"], "main");

    // preStop runs before the stop signal: its output precedes the SIGTERM handler's.
    let hooks_log = node.containers("hooks").await[0].id.clone();
    let hooks_log =
        std::path::PathBuf::from(node.container_status(&hooks_log).await.unwrap().log_path);
    // Keep the log open: the pod's log directory goes with the pod, the open file stays.
    let file = std::sync::Mutex::new(std::fs::File::open(&hooks_log).unwrap());
    let text = std::sync::Mutex::new(String::new());
    node.remove_manifest("hooks.yaml");
    let seen = node
        .wait_for(
            "the SIGTERM handler's output",
            Duration::from_secs(30),
            || async {
                use std::io::Read;
                let mut t = text.lock().unwrap();
                file.lock().unwrap().read_to_string(&mut t).unwrap();
                t.contains("sigterm-handler").then(|| t.clone())
            },
        )
        .await;
    let pre = seen
        .find("prestop-ran")
        .unwrap_or_else(|| panic!("no preStop output: {seen}"));
    let term = seen.find("sigterm-handler").unwrap();
    assert!(pre < term, "{seen}");
}
