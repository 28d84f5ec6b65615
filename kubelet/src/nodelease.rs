//! The node Lease (upstream's node lease controller): `kube-node-lease/<node>`, held by the
//! node, `leaseDurationSeconds` 40 by default, renewed every quarter of that (10 s). The
//! Lease is owned by the Node object, so it goes when the node is deleted. Renewal failures
//! are retried at once with a growing delay, never more than the renew interval. The first
//! lease is made once the Node is registered.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use crate::kubeclient::ApiError;

pub(crate) const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Renew every quarter of the lease duration (upstream's renewIntervalFraction 0.25).
pub(crate) fn renew_interval(duration_seconds: i32) -> Duration {
    Duration::from_millis(duration_seconds.max(1) as u64 * 250)
}

/// The Lease the node holds, renewed now.
pub(crate) fn desired_lease(
    node: &str,
    duration_seconds: i32,
    owner: Option<&Node>,
    now: Timestamp,
) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node.to_string()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: owner.and_then(|n| {
                Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: n.metadata.name.clone()?,
                    uid: n.metadata.uid.clone()?,
                    ..Default::default()
                }])
            }),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_string()),
            lease_duration_seconds: Some(duration_seconds),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

pub(crate) struct NodeLease {
    pub(crate) client: kube::Client,
    pub(crate) node_name: String,
    pub(crate) duration_seconds: i32,
    /// The registered Node (for the owner reference), once known.
    pub(crate) node: crate::nodestatus::NodeShared,
}

impl NodeLease {
    async fn renew(&self, api: &Api<Lease>) -> Result<(), ApiError> {
        let owner = self.node.get();
        match api.get_opt(&self.node_name).await? {
            None => {
                let lease = desired_lease(
                    &self.node_name,
                    self.duration_seconds,
                    owner.as_ref(),
                    Timestamp::now(),
                );
                api.create(&PostParams::default(), &lease).await?;
                tracing::info!(node = %self.node_name, "created node lease");
            }
            Some(mut lease) => {
                let want = desired_lease(
                    &self.node_name,
                    self.duration_seconds,
                    owner.as_ref(),
                    Timestamp::now(),
                );
                lease.spec = want.spec;
                // Owned by the Node as registered now: a Node deleted and registered again
                // has a new UID, and the garbage collector deletes a lease of the old one.
                if want.metadata.owner_references.is_some()
                    && lease.metadata.owner_references != want.metadata.owner_references
                {
                    lease.metadata.owner_references = want.metadata.owner_references;
                }
                // The resourceVersion from the get makes this an optimistic update.
                api.replace(&self.node_name, &PostParams::default(), &lease)
                    .await?;
            }
        }
        Ok(())
    }

    pub(crate) async fn run(self) {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        // The lease is the registered node's heartbeat and is owned by it: wait for it.
        while self.node.get().and_then(|n| n.metadata.uid).is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let interval = renew_interval(self.duration_seconds);
        let mut retry = Duration::from_millis(200);
        loop {
            match self.renew(&api).await {
                Ok(()) => {
                    retry = Duration::from_millis(200);
                    tokio::time::sleep(interval).await;
                }
                Err(e) => {
                    tracing::warn!(node = %self.node_name, error = %e, "failed to update lease, will retry");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(interval);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_as_upstream() {
        assert_eq!(renew_interval(40), Duration::from_secs(10));
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        node.metadata.uid = Some("u-1".into());
        let l = desired_lease("n1", 40, Some(&node), Timestamp::from_second(5).unwrap());
        assert_eq!(l.metadata.namespace.as_deref(), Some("kube-node-lease"));
        let spec = l.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        let owner = &l.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Node", "u-1"));
        assert!(desired_lease("n1", 40, None, Timestamp::now())
            .metadata
            .owner_references
            .is_none());
    }
}
