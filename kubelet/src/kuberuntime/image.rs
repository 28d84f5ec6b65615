//! Images for containers (upstream `kuberuntime_image.go` `EnsureImageExists`):
//! pulled per `imagePullPolicy` with the pod's pull secrets, with back-off.

use k8s_openapi::api::core::v1::{Container, Pod};
use nodus_proto::runtime::v1 as cri;

use super::cri::CriError;
use super::*;
use crate::container::now_nanos;

impl RuntimeManager {
    /// The image of `container`, pulled per its imagePullPolicy with the pod's pull secrets
    /// (upstream `EnsureImageExists`); a failed pull backs that image off for the pod.
    pub(super) async fn ensure_image(
        &self,
        pod: &Pod,
        container: &Container,
        sandbox_config: &cri::PodSandboxConfig,
        objects: &crate::objects::PodObjects,
    ) -> Result<String, SyncError> {
        use crate::events::{NORMAL, WARNING};
        let name = Some(container.name.as_str());
        let image = container.image.clone().unwrap_or_default();
        let policy = container
            .image_pull_policy
            .as_deref()
            .unwrap_or("IfNotPresent");
        if policy != "Always" {
            if let Some(id) = self.cri.image_status(&image).await? {
                self.events.pod_event(
                    pod,
                    name,
                    NORMAL,
                    "Pulled",
                    format!("Container image {image:?} already present on machine"),
                );
                return Ok(id);
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
        let mut creds: Vec<Option<cri::AuthConfig>> =
            crate::credentials::for_image(pod, &image, objects)
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
                Ok(id)
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
