//! The kubelet's Prometheus metrics (`GET /metrics`, text format 0.0.4) with upstream names:
//! `kubelet_running_pods`, `kubelet_running_containers{container_state}`,
//! `kubelet_pod_start_duration_seconds`, `kubelet_pleg_relist_duration_seconds`,
//! `kubelet_runtime_operations_total{operation_type}`,
//! `kubelet_runtime_operations_errors_total{operation_type}` and `prober_probe_total`.
//! One registry per process, as upstream's legacy registry.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

/// Upstream's `kubelet_pod_start_duration_seconds` buckets.
pub(crate) const POD_START_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
    300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];
/// Prometheus' default buckets (upstream uses them for the PLEG relist duration).
pub(crate) const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub(crate) fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug)]
struct State {
    running_pods: u64,
    containers: BTreeMap<&'static str, u64>,
    pod_start: Histogram,
    pleg_relist: Histogram,
    ops: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    /// prober_probe_total by (namespace, pod, pod UID, container, probe type, result).
    probes: BTreeMap<ProbeSeries, u64>,
}

#[derive(Debug)]
/// Whose probe ran.
pub(crate) struct ProbeTarget<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) pod: &'a str,
    pub(crate) pod_uid: &'a str,
    pub(crate) container: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ProbeSeries {
    namespace: String,
    pod: String,
    pod_uid: String,
    container: String,
    probe_type: &'static str,
    result: &'static str,
}

pub(crate) struct Metrics {
    state: Mutex<State>,
}

pub(crate) fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// `CreateContainer` -> `create_container`, as upstream's operation types.
pub(crate) fn snake(op: &str) -> String {
    let mut s = String::new();
    for (i, ch) in op.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                s.push('_');
            }
            s.push(ch.to_ascii_lowercase());
        } else {
            s.push(ch);
        }
    }
    s
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Metrics {
            state: Mutex::new(State {
                running_pods: 0,
                containers: BTreeMap::new(),
                pod_start: Histogram::new(POD_START_BUCKETS),
                pleg_relist: Histogram::new(DEFAULT_BUCKETS),
                ops: BTreeMap::new(),
                errors: BTreeMap::new(),
                probes: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One CRI call of `op` (CRI method name) and whether it failed.
    pub(crate) fn runtime_op(&self, op: &str, failed: bool) {
        let mut s = self.lock();
        *s.ops.entry(snake(op)).or_default() += 1;
        if failed {
            *s.errors.entry(snake(op)).or_default() += 1;
        }
    }

    pub(crate) fn relist(
        &self,
        secs: f64,
        running_pods: u64,
        containers: BTreeMap<&'static str, u64>,
    ) {
        let mut s = self.lock();
        s.pleg_relist.observe(secs);
        s.running_pods = running_pods;
        s.containers = containers;
    }

    pub(crate) fn pod_started(&self, secs: f64) {
        self.lock().pod_start.observe(secs);
    }

    /// One probe run: upstream's `prober_probe_total` series of that container.
    pub(crate) fn probe(&self, target: &ProbeTarget<'_>, kind: &'static str, ok: bool) {
        let series = ProbeSeries {
            namespace: target.namespace.to_string(),
            pod: target.pod.to_string(),
            pod_uid: target.pod_uid.to_string(),
            container: target.container.to_string(),
            probe_type: kind,
            result: if ok { "successful" } else { "failed" },
        };
        *self.lock().probes.entry(series).or_default() += 1;
    }

    /// Drops the probe series of a pod that is gone (upstream deletes them when a probe
    /// worker stops).
    pub(crate) fn forget_probes(&self, pod_uid: &str) {
        self.lock().probes.retain(|k, _| k.pod_uid != pod_uid);
    }

    /// The `/metrics/probes` exposition.
    pub(crate) fn render_probes(&self) -> String {
        let s = self.lock();
        let mut out = String::from("# HELP prober_probe_total [ALPHA] Cumulative number of a liveness, readiness or startup probe for a container by result.\n# TYPE prober_probe_total counter\n");
        for (k, n) in &s.probes {
            let _ = writeln!(
                out,
                "prober_probe_total{{container=\"{}\",namespace=\"{}\",pod=\"{}\",pod_uid=\"{}\",probe_type=\"{}\",result=\"{}\"}} {n}",
                escape(&k.container),
                escape(&k.namespace),
                escape(&k.pod),
                escape(&k.pod_uid),
                k.probe_type,
                k.result
            );
        }
        out
    }

    /// The text exposition.
    pub(crate) fn render(&self) -> String {
        let s = self.lock();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP kubelet_running_pods Number of pods that have a running pod sandbox\n# TYPE kubelet_running_pods gauge\nkubelet_running_pods {}",
            s.running_pods
        );
        let _ = writeln!(out, "# HELP kubelet_running_containers Number of containers currently running\n# TYPE kubelet_running_containers gauge");
        for state in ["created", "exited", "running", "unknown"] {
            let _ = writeln!(
                out,
                "kubelet_running_containers{{container_state=\"{state}\"}} {}",
                s.containers.get(state).copied().unwrap_or(0)
            );
        }
        s.pod_start.render(
            &mut out,
            "kubelet_pod_start_duration_seconds",
            "Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
        );
        s.pleg_relist.render(
            &mut out,
            "kubelet_pleg_relist_duration_seconds",
            "Duration in seconds for relisting pods in PLEG.",
        );
        let _ = writeln!(out, "# HELP kubelet_runtime_operations_total Cumulative number of runtime operations by operation type.\n# TYPE kubelet_runtime_operations_total counter");
        for (op, n) in &s.ops {
            let _ = writeln!(
                out,
                "kubelet_runtime_operations_total{{operation_type=\"{}\"}} {n}",
                escape(op)
            );
        }
        let _ = writeln!(out, "# HELP kubelet_runtime_operations_errors_total Cumulative number of runtime operation errors by operation type.\n# TYPE kubelet_runtime_operations_errors_total counter");
        for (op, n) in &s.errors {
            let _ = writeln!(
                out,
                "kubelet_runtime_operations_errors_total{{operation_type=\"{}\"}} {n}",
                escape(op)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new();
        m.runtime_op("CreateContainer", false);
        m.runtime_op("CreateContainer", true);
        m.pod_started(0.7);
        m.relist(0.01, 2, BTreeMap::from([("running", 3)]));
        let t = m.render();
        assert!(t.contains("kubelet_running_pods 2\n"), "{t}");
        assert!(t.contains("kubelet_running_containers{container_state=\"running\"} 3\n"));
        assert!(
            t.contains("kubelet_runtime_operations_total{operation_type=\"create_container\"} 2\n")
        );
        assert!(t.contains(
            "kubelet_runtime_operations_errors_total{operation_type=\"create_container\"} 1\n"
        ));
        assert!(t.contains("kubelet_pod_start_duration_seconds_bucket{le=\"0.5\"} 0\n"));
        assert!(t.contains("kubelet_pod_start_duration_seconds_bucket{le=\"1\"} 1\n"));
        assert!(t.contains("kubelet_pod_start_duration_seconds_count 1\n"));
        assert_eq!(snake("ListPodSandbox"), "list_pod_sandbox");
    }

    #[test]
    fn probe_series_carry_upstream_labels_and_go_with_their_pod() {
        let m = Metrics::new();
        let web = ProbeTarget {
            namespace: "default",
            pod: "web",
            pod_uid: "u1",
            container: "c",
        };
        m.probe(&web, "Readiness", false);
        m.probe(&web, "Readiness", false);
        m.probe(&web, "Liveness", true);
        let other = ProbeTarget {
            pod: "db",
            pod_uid: "u2",
            ..web
        };
        m.probe(&other, "Startup", true);
        let t = m.render_probes();
        assert!(t.starts_with("# HELP prober_probe_total"), "{t}");
        assert!(t.contains("prober_probe_total{container=\"c\",namespace=\"default\",pod=\"web\",pod_uid=\"u1\",probe_type=\"Readiness\",result=\"failed\"} 2\n"), "{t}");
        assert!(
            t.contains("probe_type=\"Liveness\",result=\"successful\"} 1\n"),
            "{t}"
        );
        m.forget_probes("u1");
        let t = m.render_probes();
        assert!(!t.contains("pod_uid=\"u1\""), "{t}");
        assert!(t.contains("pod=\"db\""), "{t}");
        // Not on /metrics, as upstream.
        assert!(!m.render().contains("prober_probe_total"));
    }
}
