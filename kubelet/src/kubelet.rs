//! The kubelet proper: wires sources, `pod_config`, PLEG, pod workers, the runtime
//! manager and the status manager together, and runs the sync loop, one `tokio::select!`
//! over config updates, PLEG events, worker results, object changes, the sync tick (1 s)
//! and the housekeeping tick (2 s).
//!
//! With `--kubeconfig` it also runs API-server mode: the API pod source, node registration
//! and status, the node lease, the status push, mirror pods, events, and the configMaps,
//! secrets and tokens pods consume. Without it none of that exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::events::EventRecorder;
use crate::kuberuntime::cri::Cri;
use crate::kuberuntime::sandbox::NodePaths;
use crate::kuberuntime::RuntimeManager;
use crate::mirror::{MirrorClient, MirrorPods};
use crate::nodestatus::NodeShared;
use crate::objects::{ObjectKey, ObjectManager};
use crate::pleg::PlegShared;
use crate::pod_cache::PodCache;
use crate::pod_manager::PodManager;
use crate::pod_sync::{ApiContext, Syncer};
use crate::prober::ProbeManager;
use crate::sources::apiserver::ApiSource;
use crate::status_manager::api_sync::StatusSync;
use crate::status_manager::StatusManager;

pub(crate) const SYNC_TICK: Duration = Duration::from_secs(1);
pub(crate) const HOUSEKEEPING_TICK: Duration = Duration::from_secs(2);
pub(crate) const PLEG_PERIOD: Duration = Duration::from_secs(1);

/// Handles shared with the HTTP servers.
#[derive(Clone)]
pub struct Shared {
    pub(crate) pods: PodManager,
    pub(crate) status: StatusManager,
    pub(crate) pleg: PlegShared,
    /// Updated by the sync loop on every iteration (for healthz).
    pub(crate) loop_alive: Arc<Mutex<Instant>>,
    /// For `/containerLogs` and `/stats/summary`.
    pub(crate) cri: Cri,
    pub(crate) node_name: String,
}

/// Why the kubelet cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Api(#[from] crate::kubeclient::ApiError),
    #[error("create user namespace manager: {0}")]
    UserNamespaces(String),
}

/// Why `/healthz` answers unhealthy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HealthError {
    #[error("sync loop stalled for {elapsed:?}")]
    SyncLoopStalled { elapsed: Duration },
    #[error("PLEG has not relisted for 3 minutes")]
    PlegNotRelisted,
}

impl Shared {
    pub(crate) fn healthy(&self) -> Result<(), HealthError> {
        let last = *self.loop_alive.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() > Duration::from_secs(30) {
            return Err(HealthError::SyncLoopStalled {
                elapsed: last.elapsed(),
            });
        }
        if !self.pleg.healthy(Duration::from_secs(180)) {
            return Err(HealthError::PlegNotRelisted);
        }
        Ok(())
    }
}

pub struct Kubelet {
    pub(crate) cfg: Config,
    pub(crate) syncer: Arc<Syncer>,
    pub(crate) shared: Shared,
    pub(crate) cri: Cri,
    /// Pods whose probe results changed.
    pub(crate) probe_rx: mpsc::UnboundedReceiver<String>,
    /// API objects that changed (their pods are synced again).
    pub(crate) object_rx: mpsc::UnboundedReceiver<ObjectKey>,
    /// The API status sync, started by `run`.
    pub(crate) status_sync: Option<StatusSync>,
}

impl Kubelet {
    /// Builds the kubelet; with `--kubeconfig` the API server client too (reading the
    /// kubeconfig is the only thing that can fail).
    pub async fn new(cfg: Config) -> Result<Self, StartError> {
        let cri = Cri::new(&cfg.container_runtime_endpoint);
        let pods = PodManager::default();
        let status = StatusManager::new();
        let (object_tx, object_rx) = mpsc::unbounded_channel();
        let (api, events, status_sync) = match &cfg.kubeconfig {
            None => (None, EventRecorder::none(), None),
            Some(path) => {
                let client = if cfg.rotate_certificates
                    && crate::certificate::manager::rotatable(path, &cfg.server.cert_dir)
                {
                    crate::certificate::manager::rotating_client(
                        path,
                        &cfg.server.cert_dir,
                        &cfg.node_name,
                    )
                    .await?
                } else {
                    if cfg.rotate_certificates {
                        tracing::warn!(kubeconfig = %path.display(), "rotateCertificates: the kubeconfig's client certificate is not the one kept in --cert-dir (kubelet-client-current.pem, written by TLS bootstrap); it is not rotated");
                    }
                    crate::kubeclient::connect(path).await?
                };
                let events = EventRecorder::start(client.clone(), cfg.node_name.clone());
                let mirror_pods = MirrorPods::default();
                let (sync, handle) = StatusSync::new(
                    client.clone(),
                    status.clone(),
                    pods.clone(),
                    mirror_pods.clone(),
                );
                let api = ApiContext {
                    objects: ObjectManager::new(client.clone(), object_tx),
                    mirror: MirrorClient {
                        client: client.clone(),
                        node_name: cfg.node_name.clone(),
                    },
                    mirror_pods,
                    node: NodeShared::default(),
                    status_sync: handle,
                    client,
                };
                (Some(api), events, Some(sync))
            }
        };
        let mut runtime = RuntimeManager::new(
            cri.clone(),
            NodePaths {
                pod_logs_dir: cfg.pod_logs_dir.clone(),
                cgroup_root: cfg.cgroup_root.clone(),
                dns: cfg.dns.clone(),
                seccomp_profile_root: cfg.root_dir.join("seccomp"),
                seccomp_default: cfg.seccomp_default,
            },
            cfg.root_dir.clone(),
            cfg.resolv_conf.clone(),
        );
        runtime.node_name = cfg.node_name.clone();
        // As upstream, a kubelet whose user namespace range cannot serve maxPods pods, or
        // finds a pod's mapping file it cannot honour, does not start.
        runtime.userns = Some(
            crate::userns_manager::kubelet_mappings("/etc/subuid", "/etc/subgid")
                .and_then(|range| {
                    crate::userns_manager::UsernsManager::new(
                        cfg.root_dir.join("pods"),
                        range,
                        cfg.userns_ids_per_pod,
                        cfg.max_pods,
                    )
                })
                .map_err(|e| StartError::UserNamespaces(e.to_string()))?,
        );
        runtime.max_per_pod_container = cfg.max_per_pod_container;
        runtime.node_ips = cfg.node_ips().iter().map(|ip| ip.to_string()).collect();
        runtime.node = crate::nodestatus::allocatable(&cfg);
        runtime.allocation = Arc::new(crate::allocation_manager::AllocationManager::new(
            Some(&cfg.root_dir),
            runtime.node,
        ));
        runtime.events = events.clone();
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let syncer = Arc::new(Syncer {
            probes: ProbeManager::new(cri.clone(), probe_tx, events.clone()),
            first_seen: Mutex::new(HashMap::new()),
            runtime: Arc::new(runtime),
            cache: PodCache::default(),
            last_sync: Mutex::new(HashMap::new()),
            status: status.clone(),
            backoff: Mutex::new(Backoff::new()),
            reasons: Mutex::new(HashMap::new()),
            node_ips: cfg.node_ips().iter().map(|ip| ip.to_string()).collect(),
            sync_frequency: cfg.sync_frequency,
            api,
            events,
            root_dir: cfg.root_dir.clone(),
        });
        let shared = Shared {
            pods,
            status,
            pleg: PlegShared::default(),
            loop_alive: Arc::new(Mutex::new(Instant::now())),
            cri: cri.clone(),
            node_name: cfg.node_name.clone(),
        };
        Ok(Kubelet {
            cfg,
            syncer,
            shared,
            cri,
            probe_rx,
            object_rx,
            status_sync,
        })
    }

    /// The API server client (API-server mode only).
    pub fn api_client(&self) -> Option<kube::Client> {
        self.syncer.api.as_ref().map(|a| a.client.clone())
    }

    /// Starts what API-server mode runs beside the sync loop; the API source's updates go
    /// to `src_tx`.
    pub(crate) fn start_api_mode(
        &mut self,
        src_tx: &mpsc::Sender<crate::sources::SourceUpdate>,
    ) -> bool {
        let Some(api) = self.syncer.api.clone() else {
            return false;
        };
        tokio::spawn(
            ApiSource {
                client: api.client.clone(),
                node_name: self.cfg.node_name.clone(),
                mirror_pods: api.mirror_pods.clone(),
            }
            .run(src_tx.clone()),
        );
        tokio::spawn(
            crate::nodestatus::NodeStatusManager {
                client: api.client.clone(),
                cfg: self.cfg.clone(),
                cri: self.cri.clone(),
                root_dir: self.cfg.root_dir.clone(),
                events: self.syncer.events.clone(),
                shared: api.node.clone(),
            }
            .run(),
        );
        tokio::spawn(
            crate::nodelease::NodeLease {
                client: api.client.clone(),
                node_name: self.cfg.node_name.clone(),
                duration_seconds: self.cfg.node_lease_duration_seconds,
                node: api.node.clone(),
            }
            .run(),
        );
        if let Some(sync) = self.status_sync.take() {
            tokio::spawn(sync.run());
        }
        true
    }

    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_errors_read_as_the_healthz_body_words_them() {
        let stalled = HealthError::SyncLoopStalled {
            elapsed: Duration::from_secs(31),
        };
        assert_eq!(stalled.to_string(), "sync loop stalled for 31s");
        assert_eq!(
            HealthError::PlegNotRelisted.to_string(),
            "PLEG has not relisted for 3 minutes"
        );
    }
}
