//! `GET /metrics/cadvisor`: the container series Prometheus dashboards scrape from upstream's
//! kubelet (kube-prometheus-stack's), made from CRI `ListContainerStats` rather than a
//! cAdvisor: CPU time, memory working set, RSS and usage, the writable layer's size, and
//! when each container was last seen, labelled `container`, `id`, `image`, `name`,
//! `namespace` and `pod` as upstream labels them. Differences: `id` and `name` are the CRI
//! container ID (upstream: the cgroup path and cAdvisor's name) and there are no
//! `container_network_*` series (CRI's container stats carry no network figures).

use std::fmt::Write as _;

use nodus_proto::runtime::v1 as cri;

use crate::kuberuntime::cri::{Cri, CriError};
use crate::kuberuntime::labels;
use crate::pod_manager::PodManager;

/// (name, type, help) of each family, in the order upstream prints them.
const FAMILIES: [(&str, &str, &str); 6] = [
    (
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed in seconds.",
    ),
    (
        "container_fs_usage_bytes",
        "gauge",
        "Number of bytes that are consumed by the container on this filesystem.",
    ),
    (
        "container_last_seen",
        "gauge",
        "Last time a container was seen by the exporter",
    ),
    ("container_memory_rss", "gauge", "Size of RSS in bytes."),
    (
        "container_memory_usage_bytes",
        "gauge",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
    ),
    (
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set in bytes.",
    ),
];

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition for these stats; `pods` gives each container's image, `now_ms` the
/// scrape time.
pub(crate) fn render(stats: &[cri::ContainerStats], pods: &PodManager, now_ms: i64) -> String {
    let mut families: Vec<String> = vec![String::new(); FAMILIES.len()];
    for s in stats {
        let attrs = s.attributes.clone().unwrap_or_default();
        let get = |k: &str| attrs.labels.get(k).cloned().unwrap_or_default();
        let uid = get(labels::POD_UID_LABEL);
        if uid.is_empty() {
            continue;
        }
        let container = get(labels::CONTAINER_NAME_LABEL);
        let image = pods
            .get(&uid)
            .and_then(|p| {
                crate::pod_util::all_containers(&p)
                    .find(|c| c.name == container)
                    .and_then(|c| c.image.clone())
            })
            .unwrap_or_default();
        let base = format!(
            "container=\"{}\",id=\"{}\",image=\"{}\",name=\"{}\",namespace=\"{}\",pod=\"{}\"",
            escape(&container),
            escape(&attrs.id),
            escape(&image),
            escape(&attrs.id),
            escape(&get(labels::POD_NAMESPACE_LABEL)),
            escape(&get(labels::POD_NAME_LABEL)),
        );
        let cpu = s.cpu.unwrap_or_default();
        let mem = s.memory.unwrap_or_default();
        let ms = |ns: i64| if ns > 0 { ns / 1_000_000 } else { now_ms };
        if let Some(v) = cpu.usage_core_nano_seconds {
            let _ = writeln!(
                families[0],
                "{}{{{base},cpu=\"total\"}} {} {}",
                FAMILIES[0].0,
                v.value as f64 / 1e9,
                ms(cpu.timestamp)
            );
        }
        if let Some(fs) = &s.writable_layer {
            if let Some(v) = fs.used_bytes {
                let device = fs
                    .fs_id
                    .as_ref()
                    .map(|f| f.mountpoint.clone())
                    .unwrap_or_default();
                let _ = writeln!(
                    families[1],
                    "{}{{{base},device=\"{}\"}} {} {}",
                    FAMILIES[1].0,
                    escape(&device),
                    v.value,
                    ms(fs.timestamp)
                );
            }
        }
        let _ = writeln!(
            families[2],
            "{}{{{base}}} {} {now_ms}",
            FAMILIES[2].0,
            now_ms / 1000
        );
        for (i, v) in [
            (3, mem.rss_bytes),
            (4, mem.usage_bytes),
            (5, mem.working_set_bytes),
        ] {
            if let Some(v) = v {
                let _ = writeln!(
                    families[i],
                    "{}{{{base}}} {} {}",
                    FAMILIES[i].0,
                    v.value,
                    ms(mem.timestamp)
                );
            }
        }
    }
    let mut out = String::new();
    for ((name, kind, help), samples) in FAMILIES.iter().zip(families) {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{samples}");
    }
    out
}

/// `/metrics/cadvisor` from the runtime's stats now.
pub(crate) async fn metrics(cri: &Cri, pods: &PodManager) -> Result<String, CriError> {
    let stats = cri.list_container_stats().await?;
    Ok(render(
        &stats,
        pods,
        crate::container::now_nanos() as i64 / 1_000_000,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_carry_upstream_names_and_labels() {
        let p = crate::testutil::pod("Always", &[], &["app"]);
        let uid = p.metadata.uid.clone().unwrap();
        let pods = PodManager::default();
        pods.set(p);
        let mut l = std::collections::HashMap::new();
        l.insert(labels::POD_UID_LABEL.to_string(), uid);
        l.insert(labels::POD_NAME_LABEL.to_string(), "p-n".to_string());
        l.insert(
            labels::POD_NAMESPACE_LABEL.to_string(),
            "default".to_string(),
        );
        l.insert(labels::CONTAINER_NAME_LABEL.to_string(), "app".to_string());
        let stat = cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: "c1".into(),
                labels: l,
                ..Default::default()
            }),
            cpu: Some(cri::CpuUsage {
                timestamp: 2_000_000_000,
                usage_core_nano_seconds: Some(cri::UInt64Value {
                    value: 1_500_000_000,
                }),
                ..Default::default()
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: 2_000_000_000,
                working_set_bytes: Some(cri::UInt64Value { value: 4096 }),
                rss_bytes: Some(cri::UInt64Value { value: 1024 }),
                ..Default::default()
            }),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: 2_000_000_000,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: "/var/lib/containerd".into(),
                }),
                used_bytes: Some(cri::UInt64Value { value: 8192 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Not one of ours (no pod UID label): left out.
        let other = cri::ContainerStats::default();
        let text = render(&[stat, other], &pods, 3000);
        let base = r#"container="app",id="c1",image="i:1",name="c1",namespace="default",pod="p-n""#;
        assert!(
            text.contains(&format!(
                "container_cpu_usage_seconds_total{{{base},cpu=\"total\"}} 1.5 2000\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "container_memory_working_set_bytes{{{base}}} 4096 2000\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("container_memory_rss{{{base}}} 1024 2000\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "container_fs_usage_bytes{{{base},device=\"/var/lib/containerd\"}} 8192 2000\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("container_last_seen{{{base}}} 3 3000\n")),
            "{text}"
        );
        assert!(text.contains("# TYPE container_cpu_usage_seconds_total counter\n"));
        // No usage figure given: no sample, but the family is announced.
        assert!(!text.contains("container_memory_usage_bytes{"), "{text}");
        assert_eq!(text.matches("container_last_seen{").count(), 1);
    }
}
