//! `GET /stats/summary` (upstream's Summary API, the CPU and memory parts): node figures
//! from `/proc/stat` and `/proc/meminfo`, pod and container figures from CRI
//! `ListContainerStats`, grouped by the pod labels the kubelet set.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::kuberuntime::cri::Cri;
use crate::kuberuntime::labels;
use crate::pod_manager::PodManager;

fn rfc3339(nanos: i64) -> Value {
    k8s_openapi::jiff::Timestamp::from_nanosecond(nanos as i128)
        .map(|t| json!(t.to_string()))
        .unwrap_or(Value::Null)
}

/// (busy core-nanoseconds, timestamp) from `/proc/stat`.
fn node_cpu() -> Option<(u64, i64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Some(((total - idle) * 10_000_000, crate::container::now_nanos()))
}

fn meminfo() -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some((k.to_string(), kb * 1024))
        })
        .collect()
}

/// The previous node CPU sample, for usageNanoCores.
static LAST_CPU: Mutex<Option<(u64, i64)>> = Mutex::new(None);

fn node_stats(node_name: &str) -> Value {
    let now = crate::container::now_nanos();
    let mut cpu = json!({"time": rfc3339(now)});
    if let Some((busy, ts)) = node_cpu() {
        cpu["usageCoreNanoSeconds"] = json!(busy);
        let mut last = LAST_CPU.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((b0, t0)) = *last {
            if ts > t0 && busy >= b0 {
                cpu["usageNanoCores"] =
                    json!(((busy - b0) as f64 / ((ts - t0) as f64 / 1e9)) as u64);
            }
        }
        *last = Some((busy, ts));
    }
    let m = meminfo();
    let total = m.get("MemTotal").copied().unwrap_or(0);
    let free = m.get("MemFree").copied().unwrap_or(0);
    let available = m.get("MemAvailable").copied().unwrap_or(free);
    json!({
        "nodeName": node_name,
        "cpu": cpu,
        "memory": {
            "time": rfc3339(now),
            "availableBytes": available,
            "usageBytes": total.saturating_sub(free),
            "workingSetBytes": total.saturating_sub(available),
        },
    })
}

/// The summary: node, then each pod the kubelet knows with its containers.
pub(crate) async fn summary(
    cri: &Cri,
    pods: &PodManager,
    node_name: &str,
) -> Result<Value, crate::kuberuntime::cri::CriError> {
    let stats = cri.list_container_stats().await?;
    let mut by_pod: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut totals: BTreeMap<String, (u64, u64, u64, i64)> = BTreeMap::new();
    for s in stats {
        let attrs = s.attributes.clone().unwrap_or_default();
        let Some(uid) = attrs.labels.get(labels::POD_UID_LABEL) else {
            continue;
        };
        let name = attrs
            .labels
            .get(labels::CONTAINER_NAME_LABEL)
            .cloned()
            .unwrap_or_default();
        let cpu = s.cpu.unwrap_or_default();
        let mem = s.memory.unwrap_or_default();
        let core_ns = cpu.usage_core_nano_seconds.map(|v| v.value).unwrap_or(0);
        let nano_cores = cpu.usage_nano_cores.map(|v| v.value).unwrap_or(0);
        let ws = mem.working_set_bytes.map(|v| v.value).unwrap_or(0);
        let t = totals.entry(uid.clone()).or_default();
        t.0 += core_ns;
        t.1 += nano_cores;
        t.2 += ws;
        t.3 = t.3.max(cpu.timestamp);
        by_pod.entry(uid.clone()).or_default().push(json!({
            "name": name,
            "cpu": {"time": rfc3339(cpu.timestamp), "usageCoreNanoSeconds": core_ns, "usageNanoCores": nano_cores},
            "memory": {
                "time": rfc3339(mem.timestamp),
                "workingSetBytes": ws,
                "usageBytes": mem.usage_bytes.map(|v| v.value).unwrap_or(0),
                "rssBytes": mem.rss_bytes.map(|v| v.value).unwrap_or(0),
                "pageFaults": mem.page_faults.map(|v| v.value).unwrap_or(0),
                "majorPageFaults": mem.major_page_faults.map(|v| v.value).unwrap_or(0),
            },
        }));
    }
    let mut out_pods = Vec::new();
    for p in pods.all() {
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let (core_ns, nano_cores, ws, ts) = totals.get(&uid).copied().unwrap_or_default();
        out_pods.push(json!({
            "podRef": {
                "name": p.metadata.name,
                "namespace": p.metadata.namespace,
                "uid": uid,
            },
            "containers": by_pod.remove(&uid).unwrap_or_default(),
            "cpu": {"time": rfc3339(ts), "usageCoreNanoSeconds": core_ns, "usageNanoCores": nano_cores},
            "memory": {"time": rfc3339(ts), "workingSetBytes": ws},
        }));
    }
    Ok(json!({"node": node_stats(node_name), "pods": out_pods}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kuberuntime::cri::fake::FakeRuntime;
    use nodus_proto::runtime::v1 as cri;

    fn stat(uid: Option<&str>, name: &str, core_ns: u64, ws: u64, ts: i64) -> cri::ContainerStats {
        let mut labels = std::collections::HashMap::new();
        if let Some(uid) = uid {
            labels.insert(labels::POD_UID_LABEL.to_string(), uid.to_string());
        }
        labels.insert(labels::CONTAINER_NAME_LABEL.to_string(), name.to_string());
        cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: name.into(),
                labels,
                ..Default::default()
            }),
            cpu: Some(cri::CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: Some(cri::UInt64Value { value: core_ns }),
                ..Default::default()
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: ts,
                working_set_bytes: Some(cri::UInt64Value { value: ws }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn summary_sums_each_pods_containers_from_cri_stats() {
        let p = crate::testutil::pod("Always", &[], &["a", "b"]);
        let mut idle = crate::testutil::pod("Always", &[], &["c"]);
        idle.metadata.uid = Some("idle".into());
        let uid = p.metadata.uid.clone().unwrap();
        let pods = PodManager::default();
        pods.set(p);
        pods.set(idle);
        let fake = FakeRuntime::new();
        fake.set_stats(vec![
            stat(Some(&uid), "a", 100, 1000, 5),
            stat(Some(&uid), "b", 20, 300, 7),
            // Not a kubelet container: left out.
            stat(None, "x", 999, 999, 9),
        ]);
        let v = summary(&fake.cri(), &pods, "node").await.unwrap();
        let out = v["pods"].as_array().unwrap();
        let ours = out
            .iter()
            .find(|p| p["podRef"]["uid"] == uid.as_str())
            .unwrap();
        assert_eq!(ours["cpu"]["usageCoreNanoSeconds"], 120);
        assert_eq!(ours["memory"]["workingSetBytes"], 1300);
        assert_eq!(ours["containers"].as_array().unwrap().len(), 2);
        // A pod without stats is listed with zeros.
        let idle = out.iter().find(|p| p["podRef"]["uid"] == "idle").unwrap();
        assert_eq!(idle["cpu"]["usageCoreNanoSeconds"], 0);
        assert!(idle["containers"].as_array().unwrap().is_empty());
        assert_eq!(fake.count("ListContainerStats"), 1);
        fake.inject_error("ListContainerStats", tonic::Code::Unavailable);
        assert!(summary(&fake.cri(), &pods, "node").await.is_err());
    }
}
