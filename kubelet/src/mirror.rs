//! Mirror pods (upstream `pkg/kubelet/pod/mirror_client.go`): for each static pod (file or
//! http source) the kubelet keeps a pod object of the same name in the API server, annotated
//! `kubernetes.io/config.mirror: <config hash>` and owned by the Node, so that the cluster
//! sees static pods. A mirror pod that is deleted, or that no longer matches its static pod,
//! is recreated; one whose static pod is gone is removed (housekeeping).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};

use crate::kubeclient::ApiError;
use crate::pod_util::full_name;
use crate::sources::CONFIG_HASH_ANNOTATION;

pub(crate) const CONFIG_MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

pub(crate) fn is_mirror_pod(pod: &Pod) -> bool {
    annotation(pod, CONFIG_MIRROR_ANNOTATION).is_some()
}

/// True when `mirror` mirrors this version of `static_pod` (same config hash).
pub(crate) fn is_mirror_of(mirror: &Pod, static_pod: &Pod) -> bool {
    let hash = annotation(static_pod, CONFIG_HASH_ANNOTATION);
    hash.is_some() && annotation(mirror, CONFIG_MIRROR_ANNOTATION) == hash
}

/// The mirror pods the API server holds for this node, by `namespace/name` (kept by the
/// API source).
#[derive(Debug, Clone, Default)]
pub(crate) struct MirrorPods {
    inner: Arc<RwLock<HashMap<String, Pod>>>,
}

impl MirrorPods {
    pub(crate) fn get(&self, full_name: &str) -> Option<Pod> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(full_name)
            .cloned()
    }
    pub(crate) fn replace(&self, pods: HashMap<String, Pod>) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = pods;
    }
    pub(crate) fn all(&self) -> Vec<Pod> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// The mirror pod object for a static pod.
pub(crate) fn mirror_pod_for(static_pod: &Pod, node_name: &str, node_uid: &str) -> Pod {
    let mut annotations = static_pod.metadata.annotations.clone().unwrap_or_default();
    let hash = annotations
        .get(CONFIG_HASH_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    annotations.insert(CONFIG_MIRROR_ANNOTATION.into(), hash);
    Pod {
        metadata: ObjectMeta {
            name: static_pod.metadata.name.clone(),
            namespace: static_pod.metadata.namespace.clone(),
            labels: static_pod.metadata.labels.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node_name.to_string(),
                uid: node_uid.to_string(),
                // NodeRestriction admits a mirror pod only with its node as controller.
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: static_pod.spec.clone(),
        status: None,
    }
}

/// Creates and deletes mirror pods.
#[derive(Clone)]
pub(crate) struct MirrorClient {
    pub(crate) client: kube::Client,
    pub(crate) node_name: String,
}

impl MirrorClient {
    pub(crate) async fn create(&self, static_pod: &Pod, node_uid: &str) -> Result<(), ApiError> {
        let ns = static_pod
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mirror = mirror_pod_for(static_pod, &self.node_name, node_uid);
        match api.create(&PostParams::default(), &mirror).await {
            Ok(_) => {
                tracing::info!(pod = %full_name(static_pod), "created mirror pod");
                Ok(())
            }
            Err(e) => {
                let e = ApiError::from(e);
                if e.is_already_exists() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Deletes a mirror pod at once (grace 0), only the one with `uid`.
    pub(crate) async fn delete(&self, mirror: &Pod) -> Result<(), ApiError> {
        let ns = mirror.metadata.namespace.as_deref().unwrap_or("default");
        let name = mirror.metadata.name.as_deref().unwrap_or("");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: mirror.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => {
                tracing::info!(pod = %full_name(mirror), "deleted mirror pod");
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

    /// Brings the mirror pod of `static_pod` in line: deleted or stale ones are replaced.
    /// Ok(false) while the node is not registered yet (nothing could be made).
    pub(crate) async fn sync(
        &self,
        static_pod: &Pod,
        mirror: Option<&Pod>,
        node_uid: Option<&str>,
    ) -> Result<bool, ApiError> {
        if let Some(m) = mirror {
            if m.metadata.deletion_timestamp.is_none() && is_mirror_of(m, static_pod) {
                return Ok(true);
            }
            tracing::info!(pod = %full_name(static_pod), "mirror pod is stale or being deleted, recreating it");
            self.delete(m).await?;
        }
        match node_uid {
            Some(uid) => self.create(static_pod, uid).await.map(|()| true),
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{load_manifest, Source};

    #[test]
    fn mirror_pod_carries_the_hash_and_the_node_owner() {
        let text = "kind: Pod\nmetadata: {name: web, labels: {app: w}}\nspec: {containers: [{name: c, image: 'i:1'}]}\n";
        let p = load_manifest(text, Source::File, "/m/web.yaml", "n1")
            .0
            .remove(0);
        let m = mirror_pod_for(&p, "n1", "node-uid");
        assert!(is_mirror_pod(&m));
        assert!(!is_mirror_pod(&p));
        assert!(is_mirror_of(&m, &p));
        assert_eq!(m.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(m.metadata.uid, None);
        assert_eq!(m.metadata.labels.as_ref().unwrap()["app"], "w");
        let owner = &m.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Node", "n1", "node-uid")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(m.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        // An edited manifest has a new hash: the mirror is stale.
        let text2 = text.replace("i:1", "i:2");
        let p2 = load_manifest(&text2, Source::File, "/m/web.yaml", "n1")
            .0
            .remove(0);
        assert!(!is_mirror_of(&m, &p2));
    }
}
