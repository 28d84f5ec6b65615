//! The API server source (upstream `config/apiserver.go`): a list+watch of the pods bound to
//! this node (`fieldSelector=spec.nodeName=<node>`). kube-runtime's watcher resumes from the
//! last resourceVersion, lists again after `410 Gone`, and reconnects with back-off when the
//! API server goes away; meanwhile the last snapshot stays in force, so running pods keep
//! running. Each change sends the whole set (upstream's SET), which `pod_config` diffs.
//!
//! Mirror pods (the API copies of this node's static pods) arrive here too: they are kept
//! aside in [`MirrorPods`] and never run.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::sync::mpsc;

use super::{Source, SourceUpdate, CONFIG_SOURCE_ANNOTATION};
use crate::mirror::{is_mirror_pod, MirrorPods};
use crate::pod_util::{full_name, uid_of};

pub(crate) struct ApiSource {
    pub(crate) client: kube::Client,
    pub(crate) node_name: String,
    pub(crate) mirror_pods: MirrorPods,
}

/// The pod as the kubelet keeps it: marked with the source it came from.
fn local_copy(mut pod: Pod) -> Pod {
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(CONFIG_SOURCE_ANNOTATION.into(), Source::Api.as_str().into());
    pod
}

/// The pods of the node, split into regular pods and mirror pods.
#[derive(Debug, Default)]
struct NodePods {
    pods: BTreeMap<String, Pod>,
    /// While a (re)list is in progress: what it has listed so far.
    listing: Option<BTreeMap<String, Pod>>,
}

impl NodePods {
    /// Applies one watcher event; true when the snapshot changed and should be sent.
    fn apply(&mut self, event: Event<Pod>) -> bool {
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            Event::InitApply(p) => {
                if let Some(l) = self.listing.as_mut() {
                    l.insert(uid_of(&p).to_string(), p);
                }
                false
            }
            Event::InitDone => {
                self.pods = self.listing.take().unwrap_or_default();
                true
            }
            Event::Apply(p) => {
                self.pods.insert(uid_of(&p).to_string(), p);
                true
            }
            Event::Delete(p) => self.pods.remove(uid_of(&p)).is_some(),
        }
    }

    fn split(&self) -> (Vec<Pod>, HashMap<String, Pod>) {
        let mut regular = Vec::new();
        let mut mirrors = HashMap::new();
        for p in self.pods.values() {
            if is_mirror_pod(p) {
                mirrors.insert(full_name(p), p.clone());
            } else {
                regular.push(local_copy(p.clone()));
            }
        }
        (regular, mirrors)
    }
}

impl ApiSource {
    pub(crate) async fn run(self, tx: mpsc::Sender<SourceUpdate>) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.node_name));
        let backoff = crate::kubeclient::WatchBackoff::new(Duration::from_secs(5));
        let stream = watcher::watcher(api, config).backoff(backoff);
        tokio::pin!(stream);
        let mut state = NodePods::default();
        let mut healthy = true;
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if !healthy {
                        tracing::info!("watching pods from the API server again");
                        healthy = true;
                    }
                    if state.apply(event) {
                        let (pods, mirrors) = state.split();
                        self.mirror_pods.replace(mirrors);
                        let update = SourceUpdate {
                            source: Source::Api,
                            pods,
                        };
                        if tx.send(update).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    if healthy {
                        tracing::warn!(error = %e, "watch of pods from the API server failed, retrying (running pods keep running)");
                        healthy = false;
                    } else {
                        tracing::debug!(error = %e, "watch of pods still failing");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::CONFIG_MIRROR_ANNOTATION;

    fn pod(uid: &str, mirror: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = Some(uid.into());
        p.metadata.name = Some(format!("p-{uid}"));
        p.metadata.namespace = Some("default".into());
        if mirror {
            p.metadata.annotations =
                Some([(CONFIG_MIRROR_ANNOTATION.to_string(), "h".to_string())].into());
        }
        p
    }

    #[test]
    fn relist_replaces_the_snapshot_and_mirror_pods_are_kept_aside() {
        let mut s = NodePods::default();
        assert!(!s.apply(Event::Init));
        assert!(!s.apply(Event::InitApply(pod("a", false))));
        assert!(!s.apply(Event::InitApply(pod("m", true))));
        assert!(s.apply(Event::InitDone));
        let (pods, mirrors) = s.split();
        assert_eq!(pods.len(), 1);
        assert_eq!(
            pods[0].metadata.annotations.as_ref().unwrap()[CONFIG_SOURCE_ANNOTATION],
            "api"
        );
        assert!(mirrors.contains_key("default/p-m"));
        assert!(s.apply(Event::Apply(pod("b", false))));
        assert!(s.apply(Event::Delete(pod("a", false))));
        assert!(!s.apply(Event::Delete(pod("zz", false))));
        // A relist after 410 Gone: what it does not list is gone.
        s.apply(Event::Init);
        s.apply(Event::InitApply(pod("c", false)));
        assert_eq!(
            s.split().0.len(),
            1,
            "nothing changes until the list is complete"
        );
        s.apply(Event::InitDone);
        let (pods, mirrors) = s.split();
        assert_eq!(
            pods.iter()
                .map(|p| uid_of(p).to_string())
                .collect::<Vec<_>>(),
            ["c"]
        );
        assert!(mirrors.is_empty());
    }
}
