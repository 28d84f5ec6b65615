//! Images for containers (upstream `kuberuntime_image.go` `EnsureImageExists`):
//! pulled per `imagePullPolicy` with the pod's pull secrets, with back-off.

use k8s_openapi::api::core::v1::{Container, Pod};
use nodus_proto::runtime::v1 as cri;

use futures::future::{BoxFuture, FutureExt, Shared};

use super::cri::CriError;
use super::*;
use crate::container::now_nanos;

/// One ImageStatus call, awaited by every pod that asked while it was in flight.
pub(super) type ImageLookup = Shared<BoxFuture<'static, Result<Option<cri::Image>, CriError>>>;

/// The image a container is created from.
pub(super) struct EnsuredImage {
    /// The image ID, which the container is created with.
    pub(super) id: String,
    /// What the runtime will report as the container's imageRef, when the kubelet knows it
    /// without asking: containerd reports the image's first repo digest, or else its ID.
    /// Unknown after a pull (PullImage answers only the ID).
    pub(super) status_ref: Option<String>,
}

impl RuntimeManager {
    /// `image` if present (CRI ImageStatus). Concurrent asks for one image share
    /// a call: a burst of pods on one image makes one or two instead of one per pod. The
    /// answer is not kept: an ask after it asks the runtime again, as upstream.
    pub(super) async fn image_present(&self, image: &str) -> Result<Option<cri::Image>, CriError> {
        let lookup = lock(&self.image_lookups)
            .entry(image.to_string())
            .or_insert_with(|| {
                let (cri, image) = (self.cri.clone(), image.to_string());
                async move { cri.image_status(&image).await }
                    .boxed()
                    .shared()
            })
            .clone();
        let answer = lookup.clone().await;
        let mut lookups = lock(&self.image_lookups);
        if lookups.get(image).is_some_and(|l| l.ptr_eq(&lookup)) {
            lookups.remove(image);
        }
        answer
    }

    /// The image of `container`, pulled per its imagePullPolicy with the pod's pull secrets
    /// (upstream `EnsureImageExists`); a failed pull backs that image off for the pod.
    pub(super) async fn ensure_image(
        &self,
        pod: &Pod,
        container: &Container,
        sandbox_config: &cri::PodSandboxConfig,
        objects: &crate::objects::PodObjects,
    ) -> Result<EnsuredImage, SyncError> {
        use crate::events::{NORMAL, WARNING};
        let name = Some(container.name.as_str());
        let image = container.image.clone().unwrap_or_default();
        let policy = container
            .image_pull_policy
            .as_deref()
            .unwrap_or("IfNotPresent");
        if policy != "Always" {
            if let Some(found) = self.image_present(&image).await? {
                self.events.pod_event(
                    pod,
                    name,
                    NORMAL,
                    "Pulled",
                    format!("Container image {image:?} already present on machine"),
                );
                let status_ref = found.repo_digests.first().unwrap_or(&found.id).clone();
                return Ok(EnsuredImage {
                    id: found.id,
                    status_ref: Some(status_ref),
                });
            }
            if policy == "Never" {
                self.events.pod_event(
                    pod,
                    name,
                    WARNING,
                    "ErrImageNeverPull",
                    format!("Container image {image:?} is not present with pull policy of Never"),
                );
                return Err(SyncError::ImageNeverPull { image });
            }
        }
        let backoff_key = format!("{}_{image}", pod.metadata.uid.as_deref().unwrap_or(""));
        if lock(&self.image_backoff).in_backoff_since_update(&backoff_key, now_nanos()) {
            let err = SyncError::ImagePullBackOff { image };
            self.events
                .pod_event(pod, name, NORMAL, "BackOff", err.to_string());
            return Err(err);
        }
        tracing::info!(%image, "pulling image");
        self.events.pod_event(
            pod,
            name,
            NORMAL,
            "Pulling",
            format!("Pulling image {image:?}"),
        );
        let start = std::time::Instant::now();
        // Each matching credential in turn, most specific first; none: anonymously.
        let mut creds: Vec<Option<cri::AuthConfig>> = crate::credentials::for_image(
            pod,
            &image,
            objects,
            crate::credentials::node_entries(&self.root_dir),
        )
        .into_iter()
        .map(Some)
        .collect();
        if creds.is_empty() {
            creds.push(None);
        }
        let mut result = Err(CriError::Empty { op: "PullImage" });
        for auth in creds {
            result = self
                .cri
                .pull_image(&image, auth, Some(sandbox_config.clone()))
                .await;
            if result.is_ok() {
                break;
            }
        }
        match result {
            Ok(id) => {
                lock(&self.image_backoff).reset(&backoff_key);
                self.events.pod_event(
                    pod,
                    name,
                    NORMAL,
                    "Pulled",
                    format!(
                        "Successfully pulled image {image:?} in {:?}",
                        start.elapsed()
                    ),
                );
                Ok(EnsuredImage {
                    id,
                    status_ref: None,
                })
            }
            Err(source) => {
                lock(&self.image_backoff).failed_at(&backoff_key, now_nanos());
                self.events.pod_event(
                    pod,
                    name,
                    WARNING,
                    "Failed",
                    format!("Failed to pull image {image:?}: {source}"),
                );
                Err(SyncError::ImagePull {
                    image: image.clone(),
                    source,
                })
            }
        }
    }
}
