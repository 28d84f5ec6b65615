//! The authenticated port's read endpoints that are not pods or logs of containers:
//! `/metrics/resource` (upstream's resource metrics, what metrics-server scrapes),
//! `/runningpods/`, `/configz` and `/logs/` (the node's log files).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::{Component, Path};

use hyper::StatusCode;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta};
use k8s_openapi::List;
use nodus_proto::runtime::v1 as cri;
use serde_json::{json, Value};

use super::{reply, Body};
use crate::config::{AuthorizationMode, Config};
use crate::kuberuntime::cri::Cri;
use crate::kuberuntime::labels;

fn millis(time: &Value) -> Option<i64> {
    time.as_str()?
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One sample line: `name{labels} value timestamp_ms`.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64, time: &Value) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", label_value(v));
        }
        out.push('}');
    }
    let _ = write!(out, " {value}");
    if let Some(ms) = millis(time) {
        let _ = write!(out, " {ms}");
    }
    out.push('\n');
}

/// The families of upstream's `/metrics/resource`, from the Summary.
pub(crate) fn resource_metrics(summary: &Value) -> String {
    type Family = (&'static str, &'static str, &'static str);
    const FAMILIES: [Family; 7] = [
        (
            "container_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the container in core-seconds",
        ),
        (
            "container_memory_working_set_bytes",
            "gauge",
            "Current working set of the container in bytes",
        ),
        (
            "node_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the node in core-seconds",
        ),
        (
            "node_memory_working_set_bytes",
            "gauge",
            "Current working set of the node in bytes",
        ),
        (
            "pod_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the pod in core-seconds",
        ),
        (
            "pod_memory_working_set_bytes",
            "gauge",
            "Current working set of the pod in bytes",
        ),
        (
            "resource_scrape_error",
            "gauge",
            "1 if there was an error while getting container metrics, 0 otherwise",
        ),
    ];
    let mut by_family: BTreeMap<&str, String> = BTreeMap::new();
    let cpu_secs = |v: &Value| v["usageCoreNanoSeconds"].as_f64().map(|n| n / 1e9);
    let ws = |v: &Value| v["workingSetBytes"].as_f64();
    let node = &summary["node"];
    if let Some(v) = cpu_secs(&node["cpu"]) {
        sample(
            by_family.entry("node_cpu_usage_seconds_total").or_default(),
            "node_cpu_usage_seconds_total",
            &[],
            v,
            &node["cpu"]["time"],
        );
    }
    if let Some(v) = ws(&node["memory"]) {
        sample(
            by_family
                .entry("node_memory_working_set_bytes")
                .or_default(),
            "node_memory_working_set_bytes",
            &[],
            v,
            &node["memory"]["time"],
        );
    }
    for pod in summary["pods"].as_array().into_iter().flatten() {
        let name = pod["podRef"]["name"].as_str().unwrap_or("");
        let namespace = pod["podRef"]["namespace"].as_str().unwrap_or("");
        let containers = pod["containers"].as_array().cloned().unwrap_or_default();
        if containers.is_empty() {
            continue;
        }
        let pod_labels = [("namespace", namespace), ("pod", name)];
        if let Some(v) = cpu_secs(&pod["cpu"]) {
            sample(
                by_family.entry("pod_cpu_usage_seconds_total").or_default(),
                "pod_cpu_usage_seconds_total",
                &pod_labels,
                v,
                &pod["cpu"]["time"],
            );
        }
        if let Some(v) = ws(&pod["memory"]) {
            sample(
                by_family.entry("pod_memory_working_set_bytes").or_default(),
                "pod_memory_working_set_bytes",
                &pod_labels,
                v,
                &pod["memory"]["time"],
            );
        }
        for c in &containers {
            let cname = c["name"].as_str().unwrap_or("");
            let l = [
                ("container", cname),
                ("namespace", namespace),
                ("pod", name),
            ];
            if let Some(v) = cpu_secs(&c["cpu"]) {
                sample(
                    by_family
                        .entry("container_cpu_usage_seconds_total")
                        .or_default(),
                    "container_cpu_usage_seconds_total",
                    &l,
                    v,
                    &c["cpu"]["time"],
                );
            }
            if let Some(v) = ws(&c["memory"]) {
                sample(
                    by_family
                        .entry("container_memory_working_set_bytes")
                        .or_default(),
                    "container_memory_working_set_bytes",
                    &l,
                    v,
                    &c["memory"]["time"],
                );
            }
        }
    }
    sample(
        by_family.entry("resource_scrape_error").or_default(),
        "resource_scrape_error",
        &[],
        0.0,
        &Value::Null,
    );
    let mut out = String::new();
    for (name, kind, help) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        if let Some(lines) = by_family.get(name) {
            out.push_str(lines);
        }
    }
    out
}

/// `/runningpods/`: the pods the runtime runs (ready sandboxes and running containers), as
/// a PodList with only names, UIDs and container names and images, as upstream.
pub(crate) async fn running_pods(
    cri: &Cri,
) -> Result<List<Pod>, crate::kuberuntime::cri::CriError> {
    let sandboxes = cri.list_pod_sandbox(HashMap::new()).await?;
    let containers = cri.list_containers(HashMap::new()).await?;
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    for s in sandboxes {
        if s.state != cri::PodSandboxState::SandboxReady as i32 {
            continue;
        }
        let meta = s.metadata.unwrap_or_default();
        pods.insert(
            meta.uid.clone(),
            Pod {
                metadata: ObjectMeta {
                    name: Some(meta.name),
                    namespace: Some(meta.namespace),
                    uid: Some(meta.uid),
                    ..Default::default()
                },
                spec: Some(PodSpec::default()),
                ..Default::default()
            },
        );
    }
    for c in containers {
        if c.state != cri::ContainerState::ContainerRunning as i32 {
            continue;
        }
        let Some(uid) = c.labels.get(labels::POD_UID_LABEL) else {
            continue;
        };
        let Some(spec) = pods.get_mut(uid).and_then(|p| p.spec.as_mut()) else {
            continue;
        };
        spec.containers.push(Container {
            name: c.metadata.map(|m| m.name).unwrap_or_default(),
            image: c.image.map(|i| i.image),
            ..Default::default()
        });
    }
    Ok(List {
        items: pods.into_values().collect(),
        metadata: ListMeta::default(),
    })
}

fn duration(d: std::time::Duration) -> Value {
    json!(crate::duration::format(d))
}

/// `/configz`: the configuration in effect, as upstream's `{"kubeletconfig": {...}}`.
pub(crate) fn configz(cfg: &Config) -> Value {
    let s = &cfg.server;
    json!({"kubeletconfig": {
        "kind": "KubeletConfiguration",
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "staticPodPath": cfg.static_pod_path,
        "staticPodURL": cfg.static_pod_url,
        "syncFrequency": duration(cfg.sync_frequency),
        "fileCheckFrequency": duration(cfg.file_check_frequency),
        "httpCheckFrequency": duration(cfg.http_check_frequency),
        "address": cfg.address.to_string(),
        "port": cfg.port,
        "readOnlyPort": cfg.read_only_port,
        "healthzPort": cfg.healthz_port,
        "healthzBindAddress": cfg.healthz_bind_address.to_string(),
        "tlsCertFile": s.cert_file,
        "tlsPrivateKeyFile": s.key_file,
        "tlsMinVersion": s.min_version,
        "tlsCipherSuites": s.cipher_suites,
        "authentication": {
            "x509": {"clientCAFile": s.client_ca_file},
            "webhook": {"enabled": s.webhook_authn, "cacheTTL": duration(s.webhook_authn_ttl)},
            "anonymous": {"enabled": s.anonymous},
        },
        "authorization": {
            "mode": match s.authorization {
                AuthorizationMode::AlwaysAllow => "AlwaysAllow",
                AuthorizationMode::Webhook => "Webhook",
            },
            "webhook": {
                "cacheAuthorizedTTL": duration(s.authz_allowed_ttl),
                "cacheUnauthorizedTTL": duration(s.authz_denied_ttl),
            },
        },
        "containerRuntimeEndpoint": cfg.container_runtime_endpoint,
        "podLogsDir": cfg.pod_logs_dir,
        "cgroupRoot": cfg.cgroup_root,
        "maxPods": cfg.max_pods,
        "containerLogMaxSize": cfg.container_log_max_size.to_string(),
        "containerLogMaxFiles": cfg.container_log_max_files,
        "imageGCHighThresholdPercent": cfg.image_gc_high_threshold_percent,
        "imageGCLowThresholdPercent": cfg.image_gc_low_threshold_percent,
        "imageMinimumGCAge": duration(cfg.image_minimum_gc_age),
        "registerNode": cfg.register_node,
        "registerWithTaints": cfg.register_with_taints,
        "kubeReserved": cfg.kube_reserved,
        "systemReserved": cfg.system_reserved,
        "evictionHard": cfg.eviction_hard,
        "nodeStatusUpdateFrequency": duration(cfg.node_status_update_frequency),
        "nodeStatusReportFrequency": duration(cfg.node_status_report_frequency),
        "nodeLeaseDurationSeconds": cfg.node_lease_duration_seconds,
        "resolvConf": cfg.resolv_conf,
        "enableDebuggingHandlers": cfg.enable_debugging_handlers,
        "enableSystemLogHandler": cfg.enable_system_log_handler,
    }})
}

/// `/logs/...`: a file under `root`, or a directory's listing (as Go's file server: one
/// link per entry, directories with a trailing slash). Paths that leave `root` are 404.
pub(crate) fn node_logs(root: &Path, path: &str) -> Response {
    let rel = super::percent_decode(path.trim_start_matches("/logs").trim_start_matches('/'));
    let rel = Path::new(&rel);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return reply(StatusCode::NOT_FOUND, "text/plain", "404 page not found");
    }
    let full = root.join(rel);
    let Ok(meta) = std::fs::metadata(&full) else {
        return reply(StatusCode::NOT_FOUND, "text/plain", "404 page not found");
    };
    if meta.is_dir() {
        let mut names: Vec<String> = std::fs::read_dir(&full)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                let mut n = e.file_name().to_string_lossy().into_owned();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    n.push('/');
                }
                n
            })
            .collect();
        names.sort();
        let mut html = String::from("<pre>\n");
        for n in names {
            let esc = n
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;");
            let _ = writeln!(html, "<a href=\"{esc}\">{esc}</a>");
        }
        html.push_str("</pre>\n");
        return reply(StatusCode::OK, "text/html; charset=utf-8", html);
    }
    match std::fs::read(&full) {
        Ok(b) => reply(StatusCode::OK, "text/plain; charset=utf-8", b),
        Err(e) => reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            format!("{}: {e}", full.display()),
        ),
    }
}

type Response = hyper::Response<Body>;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Response) -> (u16, String) {
        let code = r.status().as_u16();
        let b = r.into_body().collect().await.unwrap().to_bytes();
        (code, String::from_utf8_lossy(&b).into_owned())
    }

    #[tokio::test]
    async fn node_logs_stay_under_their_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("syslog"), "hello\n").unwrap();
        std::fs::create_dir(d.path().join("pods")).unwrap();
        let (code, text) = body(node_logs(d.path(), "/logs/")).await;
        assert_eq!(code, 200);
        assert!(text.contains("<a href=\"syslog\">syslog</a>"), "{text}");
        assert!(text.contains("<a href=\"pods/\">pods/</a>"), "{text}");
        assert_eq!(
            body(node_logs(d.path(), "/logs/syslog")).await,
            (200, "hello\n".into())
        );
        assert_eq!(
            body(node_logs(d.path(), "/logs/../etc/passwd")).await.0,
            404
        );
        assert_eq!(body(node_logs(d.path(), "/logs/%2e%2e/x")).await.0, 404);
        assert_eq!(body(node_logs(d.path(), "/logs/missing")).await.0, 404);
    }

    #[test]
    fn resource_metrics_from_a_summary() {
        let summary = json!({
            "node": {"cpu": {"time": "2026-01-01T00:00:00Z", "usageCoreNanoSeconds": 2_500_000_000u64},
                     "memory": {"time": "2026-01-01T00:00:00Z", "workingSetBytes": 1024}},
            "pods": [{"podRef": {"name": "web", "namespace": "default", "uid": "u"},
                      "cpu": {"time": "2026-01-01T00:00:00Z", "usageCoreNanoSeconds": 1_000_000_000u64},
                      "memory": {"time": "2026-01-01T00:00:00Z", "workingSetBytes": 4096},
                      "containers": [{"name": "app",
                          "cpu": {"time": "2026-01-01T00:00:00Z", "usageCoreNanoSeconds": 1_000_000_000u64},
                          "memory": {"time": "2026-01-01T00:00:00Z", "workingSetBytes": 4096}}]},
                     {"podRef": {"name": "empty", "namespace": "default", "uid": "v"}, "containers": []}]
        });
        let text = resource_metrics(&summary);
        assert!(
            text.contains("node_cpu_usage_seconds_total 2.5 1767225600000\n"),
            "{text}"
        );
        assert!(
            text.contains("node_memory_working_set_bytes 1024 1767225600000\n"),
            "{text}"
        );
        assert!(text.contains(
            "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 1 1767225600000\n"
        ), "{text}");
        assert!(
            text.contains("pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 4096"),
            "{text}"
        );
        assert!(!text.contains("pod=\"empty\""), "{text}");
        assert!(text.contains("# TYPE container_cpu_usage_seconds_total counter\n"));
        assert!(text.contains("resource_scrape_error 0\n"));
    }

    #[test]
    fn configz_names_upstream_fields() {
        let v = configz(&Config::default());
        let k = &v["kubeletconfig"];
        assert_eq!(k["port"], 10250);
        assert_eq!(k["readOnlyPort"], 0);
        assert_eq!(k["authentication"]["anonymous"]["enabled"], false);
        assert_eq!(k["authorization"]["mode"], "AlwaysAllow");
        assert_eq!(k["authentication"]["webhook"]["cacheTTL"], "2m0s");
        assert_eq!(k["syncFrequency"], "1m0s");
    }
}
