//! Pushing pod status to the API server (upstream status manager's `syncBatch`): whenever a
//! status changes, and every 10 s, each pod whose status differs from what was last pushed
//! gets one strategic-merge PATCH of `pods/status` with its UID in the patch's metadata (the
//! API server refuses the patch when the object is another pod of the same name). Static
//! pods report through their mirror pods. Failures are retried on the next round, so an
//! API server restart loses nothing.
//!
//! It also finishes graceful deletions: once a deleted pod's containers are gone, its final
//! status is pushed and the pod is deleted with grace period 0, as upstream.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus as ApiPodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::mpsc;

use super::StatusManager;
use crate::kubeclient::ApiError;
use crate::mirror::MirrorPods;
use crate::pod_manager::PodManager;
use crate::pod_util::full_name;
use crate::sources::{Source, CONFIG_SOURCE_ANNOTATION};

/// How often every status is compared with the last pushed one (upstream: 10 s).
pub(crate) const SYNC_PERIOD: Duration = Duration::from_secs(10);

/// The source a pod came from (`kubernetes.io/config.source`).
pub(crate) fn pod_source(pod: &Pod) -> Option<Source> {
    match pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE_ANNOTATION))
        .map(String::as_str)
    {
        Some("api") => Some(Source::Api),
        Some("file") => Some(Source::File),
        Some("http") => Some(Source::Http),
        _ => None,
    }
}

pub(crate) fn is_api_pod(pod: &Pod) -> bool {
    pod_source(pod) == Some(Source::Api)
}

/// The object a pod's status goes to: (namespace, name, uid).
fn target(pod: &Pod, mirrors: &MirrorPods) -> Option<(String, String, String)> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone()?;
    if is_api_pod(pod) {
        return Some((ns, name, pod.metadata.uid.clone()?));
    }
    let mirror = mirrors.get(&full_name(pod))?;
    Some((ns, name, mirror.metadata.uid.clone()?))
}

/// Conditions the kubelet sets only while they hold: a strategic merge keeps a listed
/// condition the patch leaves out, so the patch deletes these when they are over.
const TRANSIENT_CONDITIONS: [&str; 2] = ["PodResizePending", "PodResizeInProgress"];

/// The patch: the status, with the UID as precondition (and deletions of the transient
/// conditions that no longer hold; deleting an absent one changes nothing).
pub(crate) fn status_patch(uid: &str, status: &ApiPodStatus) -> serde_json::Value {
    let mut patch = serde_json::json!({"metadata": {"uid": uid}, "status": status});
    let present = |kind: &str| status.conditions.iter().flatten().any(|c| c.type_ == kind);
    let deletes: Vec<serde_json::Value> = TRANSIENT_CONDITIONS
        .iter()
        .filter(|k| !present(k))
        .map(|k| serde_json::json!({"type": k, "$patch": "delete"}))
        .collect();
    if let Some(conditions) = patch["status"]["conditions"].as_array_mut() {
        conditions.extend(deletes);
    }
    patch
}

/// Requests to the sync task.
#[derive(Debug)]
pub(crate) enum Request {
    /// A deleted pod is gone from the runtime: push its last status, then delete it.
    FinishDeletion { uid: String, pod: Box<Pod> },
}

#[derive(Clone)]
pub(crate) struct StatusSyncHandle {
    tx: mpsc::UnboundedSender<Request>,
}

impl StatusSyncHandle {
    pub(crate) fn finish_deletion(&self, uid: &str, pod: Pod) {
        let _ = self.tx.send(Request::FinishDeletion {
            uid: uid.to_string(),
            pod: Box::new(pod),
        });
    }
}

pub(crate) struct StatusSync {
    pub(crate) client: kube::Client,
    pub(crate) status: StatusManager,
    pub(crate) pods: PodManager,
    pub(crate) mirrors: MirrorPods,
    rx: mpsc::UnboundedReceiver<Request>,
    /// By API object UID: what was last pushed.
    pushed: HashMap<String, ApiPodStatus>,
    /// Deletions to finish (retried until the API server answers).
    deleting: HashMap<String, Pod>,
}

impl StatusSync {
    pub(crate) fn new(
        client: kube::Client,
        status: StatusManager,
        pods: PodManager,
        mirrors: MirrorPods,
    ) -> (StatusSync, StatusSyncHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            StatusSync {
                client,
                status,
                pods,
                mirrors,
                rx,
                pushed: HashMap::new(),
                deleting: HashMap::new(),
            },
            StatusSyncHandle { tx },
        )
    }

    async fn push(&mut self, pod: &Pod, status: &ApiPodStatus) -> Result<(), ApiError> {
        let Some((ns, name, uid)) = target(pod, &self.mirrors) else {
            return Ok(());
        };
        if self.pushed.get(&uid) == Some(status) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(status_patch(&uid, status)),
            )
            .await
        {
            Ok(_) => {
                tracing::debug!(pod = %format!("{ns}/{name}"), %uid, phase = ?status.phase, "pushed pod status");
                self.pushed.insert(uid, status.clone());
                Ok(())
            }
            Err(e) => {
                let e = ApiError::from(e);
                if e.is_not_found() || e.is_conflict() {
                    // Gone, or another pod of that name now: nothing to report to.
                    tracing::debug!(pod = %format!("{ns}/{name}"), %uid, error = %e, "pod status not pushed: pod gone or replaced");
                    self.pushed.remove(&uid);
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn sync_batch(&mut self) {
        let mut live = std::collections::HashSet::new();
        for (uid, status) in self.status.all() {
            let Some(pod) = self.pods.get(&uid) else {
                continue;
            };
            if let Some((_, _, target_uid)) = target(&pod, &self.mirrors) {
                live.insert(target_uid);
            }
            if let Err(e) = self.push(&pod, &status).await {
                tracing::warn!(pod = %full_name(&pod), %uid, error = %e, "failed to update status for pod, will retry");
            }
        }
        self.pushed.retain(|uid, _| live.contains(uid));
        let pending: Vec<(String, Pod)> = self.deleting.drain().collect();
        for (uid, pod) in pending {
            if let Err(e) = self.delete(&uid, &pod).await {
                tracing::warn!(pod = %full_name(&pod), %uid, error = %e, "failed to delete pod, will retry");
                self.deleting.insert(uid, pod);
            }
        }
    }

    async fn delete(&mut self, uid: &str, pod: &Pod) -> Result<(), ApiError> {
        if let Some(status) = self.status.get(uid) {
            self.push(pod, &status).await?;
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => {
                tracing::info!(pod = %full_name(pod), %uid, "pod fully terminated and removed from the API server");
                Ok(())
            }
            Err(e) => {
                let e = ApiError::from(e);
                if e.is_not_found() || e.is_conflict() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    pub(crate) async fn run(mut self) {
        let mut tick = tokio::time::interval(SYNC_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let status = self.status.clone();
        loop {
            tokio::select! {
                _ = status.changed() => {
                    // Let a burst of changes settle into one batch.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ = tick.tick() => {}
                Some(req) = self.rx.recv() => match req {
                    Request::FinishDeletion { uid, pod } => {
                        self.deleting.insert(uid, *pod);
                    }
                },
            }
            self.sync_batch().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_carries_the_uid_precondition() {
        let st = ApiPodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        };
        let p = status_patch("u-1", &st);
        assert_eq!(p["metadata"]["uid"], "u-1");
        assert_eq!(p["status"]["phase"], "Running");
    }

    #[test]
    fn a_resize_condition_that_no_longer_holds_is_deleted() {
        use k8s_openapi::api::core::v1::PodCondition;
        let cond = |kind: &str| PodCondition {
            type_: kind.into(),
            status: "True".into(),
            ..Default::default()
        };
        let st = ApiPodStatus {
            conditions: Some(vec![cond("Ready"), cond("PodResizePending")]),
            ..Default::default()
        };
        let p = status_patch("u-1", &st);
        let list = p["status"]["conditions"].as_array().unwrap();
        let kinds: Vec<(&str, Option<&str>)> = list
            .iter()
            .map(|c| (c["type"].as_str().unwrap(), c["$patch"].as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("Ready", None),
                ("PodResizePending", None),
                ("PodResizeInProgress", Some("delete"))
            ]
        );
    }

    #[test]
    fn static_pods_report_through_their_mirror() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-n1".into());
        pod.metadata.namespace = Some("default".into());
        pod.metadata.uid = Some("static-uid".into());
        pod.metadata.annotations =
            Some([(CONFIG_SOURCE_ANNOTATION.to_string(), "file".to_string())].into());
        let mirrors = MirrorPods::default();
        assert_eq!(
            target(&pod, &mirrors),
            None,
            "no mirror yet: nothing to push to"
        );
        let mut m = pod.clone();
        m.metadata.uid = Some("mirror-uid".into());
        mirrors.replace([("default/web-n1".to_string(), m)].into());
        assert_eq!(
            target(&pod, &mirrors),
            Some(("default".into(), "web-n1".into(), "mirror-uid".into()))
        );
        pod.metadata.annotations =
            Some([(CONFIG_SOURCE_ANNOTATION.to_string(), "api".to_string())].into());
        assert_eq!(target(&pod, &mirrors).unwrap().2, "static-uid");
    }
}
