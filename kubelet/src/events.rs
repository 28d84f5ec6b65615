//! Events (upstream's event recorder and correlator): `Pulled`, `Created`, `Started`,
//! `Killing`, `BackOff`, `Unhealthy`, admission rejections... posted as core/v1 Events
//! with `source.component: kubelet` and `source.host: <node>`. An identical event (same
//! object, type, reason and message) within 10 minutes raises the count of the first
//! instead of making a new object, as upstream's correlator does.
//!
//! Recording never blocks the caller: events go through a channel to one task. Without an
//! API server the recorder is empty and recording costs a branch.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;

pub(crate) const NORMAL: &str = "Normal";
pub(crate) const WARNING: &str = "Warning";

/// How long identical events are folded into one.
const CORRELATION_WINDOW: Duration = Duration::from_secs(600);
/// At most this many distinct events are remembered for folding.
const CORRELATION_CACHE: usize = 4096;

#[derive(Debug, Clone)]
struct Record {
    object: ObjectReference,
    kind: &'static str,
    reason: String,
    message: String,
}

/// A handle for recording events; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventRecorder {
    tx: Option<mpsc::UnboundedSender<Record>>,
}

/// The reference to a pod an event is about (`fieldPath` names a container when given).
pub(crate) fn pod_reference(pod: &Pod, container: Option<&str>) -> ObjectReference {
    let is_init = container.is_some_and(|c| {
        crate::pod_util::init_containers(pod)
            .iter()
            .any(|i| i.name == c)
    });
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path: container.map(|c| {
            if is_init {
                format!("spec.initContainers{{{c}}}")
            } else {
                format!("spec.containers{{{c}}}")
            }
        }),
    }
}

/// The reference to the node (events about the kubelet itself).
pub(crate) fn node_reference(node: &str) -> ObjectReference {
    ObjectReference {
        kind: Some("Node".into()),
        name: Some(node.to_string()),
        // Upstream uses the node name as the UID of node events.
        uid: Some(node.to_string()),
        ..Default::default()
    }
}

impl EventRecorder {
    /// A recorder that drops everything (standalone mode).
    pub(crate) fn none() -> Self {
        Self::default()
    }

    /// A recorder posting to the API server as `node`.
    pub(crate) fn start(client: kube::Client, node: String) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, node, rx));
        EventRecorder { tx: Some(tx) }
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub(crate) fn event(
        &self,
        object: ObjectReference,
        kind: &'static str,
        reason: &str,
        message: String,
    ) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Record {
                object,
                kind,
                reason: reason.to_string(),
                message,
            });
        }
    }

    /// An event about a pod, or one of its containers.
    pub(crate) fn pod_event(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: &'static str,
        reason: &str,
        message: String,
    ) {
        if self.tx.is_some() {
            self.event(pod_reference(pod, container), kind, reason, message);
        }
    }
}

/// An event already posted: its object name and count.
struct Seen {
    name: String,
    count: i32,
    at: Instant,
}

fn now() -> Time {
    Time(Timestamp::now())
}

async fn run(client: kube::Client, node: String, mut rx: mpsc::UnboundedReceiver<Record>) {
    let mut seen: HashMap<(String, String, String, String), Seen> = HashMap::new();
    while let Some(r) = rx.recv().await {
        let namespace = r
            .object
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let key = (
            format!(
                "{}/{}/{}",
                r.object.uid.as_deref().unwrap_or(""),
                r.object.name.as_deref().unwrap_or(""),
                r.object.field_path.as_deref().unwrap_or("")
            ),
            r.kind.to_string(),
            r.reason.clone(),
            r.message.clone(),
        );
        let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
        if let Some(s) = seen
            .get_mut(&key)
            .filter(|s| s.at.elapsed() < CORRELATION_WINDOW)
        {
            s.count += 1;
            s.at = Instant::now();
            let patch = serde_json::json!({"count": s.count, "lastTimestamp": now()});
            match api
                .patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(event = %s.name, error = %e, "cannot update event, posting a new one");
                    seen.remove(&key);
                }
            }
        }
        let t = now();
        let name = format!(
            "{}.{:x}",
            r.object.name.as_deref().unwrap_or("unknown"),
            Timestamp::now().as_nanosecond()
        );
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: r.object.clone(),
            reason: Some(r.reason.clone()),
            message: Some(r.message.clone()),
            type_: Some(r.kind.to_string()),
            count: Some(1),
            first_timestamp: Some(t.clone()),
            last_timestamp: Some(t),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(node.clone()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(node.clone()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => {
                if seen.len() >= CORRELATION_CACHE {
                    seen.retain(|_, s| s.at.elapsed() < CORRELATION_WINDOW);
                    if seen.len() >= CORRELATION_CACHE {
                        seen.clear();
                    }
                }
                seen.insert(
                    key,
                    Seen {
                        name,
                        count: 1,
                        at: Instant::now(),
                    },
                );
            }
            Err(e) => {
                tracing::warn!(reason = %r.reason, object = ?r.object.name, error = %e, "cannot post event");
            }
        }
    }
}
