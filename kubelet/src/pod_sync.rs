//! A pod's sync (upstream `Kubelet.SyncPod`), what a pod worker calls: the runtime state
//! from the pod cache, probes, volumes, the active deadline, `compute_pod_actions`, the
//! runtime manager applying them, and the status; and a pod's termination.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::backoff::Backoff;
use crate::container::now_nanos;
use crate::events::{EventRecorder, WARNING};
use crate::kuberuntime::actions::compute_pod_actions;
use crate::kuberuntime::cri::CriError;
use crate::kuberuntime::RuntimeManager;
use crate::mirror::MirrorClient;
use crate::mirror::MirrorPods;
use crate::nodestatus::NodeShared;
use crate::objects::ObjectManager;
use crate::objects::PodObjects;
use crate::pod_cache::PodCache;
use crate::pod_util::uid_of;
use crate::pod_workers::PodSyncer;
use crate::prober::ProbeManager;
use crate::status_manager::api_sync::is_api_pod;
use crate::status_manager::api_sync::StatusSyncHandle;
use crate::status_manager::{self, StatusInputs, StatusManager};

/// After a failed sync, try again this soon.
pub(crate) const ERROR_REQUEUE: Duration = Duration::from_secs(2);
/// How long a worker waits for the pod cache before it asks CRI itself (the PLEG is stuck
/// or failing).
pub(crate) const CACHE_WAIT: Duration = Duration::from_secs(5);

/// What API-server mode adds to the kubelet (absent in standalone mode).
#[derive(Clone)]
pub(crate) struct ApiContext {
    pub(crate) client: kube::Client,
    pub(crate) objects: ObjectManager,
    pub(crate) mirror: MirrorClient,
    pub(crate) mirror_pods: MirrorPods,
    pub(crate) node: NodeShared,
    pub(crate) status_sync: StatusSyncHandle,
}

/// True for a pod whose API status is final (upstream never runs such a pod again).
pub(crate) fn is_terminal_api_pod(pod: &Pod) -> bool {
    is_api_pod(pod)
        && matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// What the pod workers call into.
pub(crate) struct Syncer {
    pub(crate) runtime: Arc<RuntimeManager>,
    /// Each pod's runtime state, filled by the PLEG relist.
    pub(crate) cache: PodCache,
    /// When each pod's last sync ended: its next sync wants a newer view of the runtime.
    pub(crate) last_sync: Mutex<HashMap<String, Instant>>,
    pub(crate) status: StatusManager,
    pub(crate) backoff: Mutex<Backoff>,
    /// Why the last start of a container failed (waiting reason, message), per pod UID.
    pub(crate) reasons: Mutex<HashMap<String, status_manager::StartFailures>>,
    /// The node's IPs (`--node-ip`, the primary first): hostIP(s), host-network pod IPs.
    pub(crate) node_ips: Vec<String>,
    pub(crate) sync_frequency: Duration,
    pub(crate) probes: ProbeManager,
    /// When each pod was first synced (None once its start was measured).
    pub(crate) first_seen: Mutex<HashMap<String, Option<Instant>>>,
    pub(crate) api: Option<ApiContext>,
    pub(crate) events: EventRecorder,
    pub(crate) root_dir: std::path::PathBuf,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Syncer {
    pub(crate) fn set_status(
        &self,
        pod: &Pod,
        uid: &str,
        runtime_status: &crate::container::PodStatus,
        backoff: &[crate::kuberuntime::actions::BackoffWait],
        now: crate::container::Nanos,
    ) {
        // After a restart, an API pod's own status keeps its start and transition times.
        let previous = self
            .status
            .get(uid)
            .or_else(|| pod.status.clone().filter(|_| is_api_pod(pod)));
        let reasons = lock(&self.reasons).get(uid).cloned().unwrap_or_default();
        let probes = self.probes.results();
        let api = status_manager::generate(
            pod,
            runtime_status,
            &StatusInputs {
                backoff,
                reasons: Some(&reasons),
                node_ips: self.node_ips.clone(),
                previous: previous.as_ref(),
                now,
                probes: Some(&probes),
                resize: status_manager::generate::ResizeInputs {
                    pending: self.runtime.allocation.pending(uid),
                    error: self.runtime.allocation.error(uid),
                },
            },
        );
        if api.phase.as_deref() == Some("Running") {
            let mut seen = lock(&self.first_seen);
            if let Some(slot) = seen.get_mut(uid) {
                if let Some(t) = slot.take() {
                    crate::metrics::global().pod_started(t.elapsed().as_secs_f64());
                }
            }
        }
        self.status.set(uid, api);
    }

    pub(crate) async fn refresh_status(
        &self,
        pod: &Pod,
        uid: &str,
        backoff: &[crate::kuberuntime::actions::BackoffWait],
    ) {
        if let Ok(st) = self.read_status(uid).await {
            self.set_status(pod, uid, &st, backoff, now_nanos());
        }
    }

    /// The pod's runtime state read from CRI now; the cache keeps it too.
    pub(crate) async fn read_status(
        &self,
        uid: &str,
    ) -> Result<crate::container::PodStatus, CriError> {
        let time = Instant::now();
        let st = self.runtime.get_pod_status(uid).await?;
        self.cache.set(uid, st.clone(), time);
        Ok(st)
    }

    /// The pod's runtime state newer than its last sync, from the pod cache (upstream's
    /// `GetNewerThan`); from CRI when the cache stays behind for `CACHE_WAIT`.
    pub(crate) async fn cached_status(
        &self,
        uid: &str,
    ) -> Result<crate::container::PodStatus, CriError> {
        let since = lock(&self.last_sync).get(uid).copied();
        match tokio::time::timeout(CACHE_WAIT, self.cache.get_newer_than(uid, since)).await {
            Ok(mut st) => {
                self.runtime.fill_actuated(&mut st);
                Ok(st)
            }
            Err(_) => {
                tracing::debug!(%uid, "pod cache not fresh, reading the runtime");
                self.read_status(uid).await
            }
        }
    }

    /// Forgets what the sync kept about a pod that is gone.
    pub(crate) fn forget_pod(&self, uid: &str) {
        lock(&self.reasons).remove(uid);
        lock(&self.backoff).forget_pod(uid);
        lock(&self.first_seen).remove(uid);
        lock(&self.last_sync).remove(uid);
        self.probes.forget_pod(uid);
        self.runtime.allocation.remove_pod(uid);
        if let Some(api) = &self.api {
            api.objects.unregister_pod(uid);
        }
    }

    /// The API objects the pod's volumes and env need (none without an API server), and
    /// its mirror pod brought in line when it is a static pod; false when that must be
    /// tried again soon (API server unreachable, node not registered yet).
    pub(crate) async fn api_inputs(&self, pod: &Pod) -> (PodObjects, bool) {
        let Some(api) = &self.api else {
            return (PodObjects::default(), true);
        };
        if !is_api_pod(pod) {
            let mirror = api.mirror_pods.get(&crate::pod_util::full_name(pod));
            let node_uid = api.node.get().and_then(|n| n.metadata.uid);
            let synced = api
                .mirror
                .sync(pod, mirror.as_ref(), node_uid.as_deref())
                .await;
            let done = synced.unwrap_or_else(|e| {
                tracing::warn!(pod = %crate::pod_util::full_name(pod), error = %e, "failed syncing mirror pod");
                false
            });
            return (PodObjects::default(), done);
        }
        api.objects.register_pod(pod);
        (api.objects.prefetch(pod).await, true)
    }

    /// The pod with its allocated resources, after deciding a resize its spec asks for;
    /// the resize's events as upstream's (ResizeStarted, ResizeDeferred, ResizeInfeasible).
    fn allocate<'a>(&self, pod: &'a Pod, uid: &str) -> std::borrow::Cow<'a, Pod> {
        use crate::allocation_manager::{resize_message, Allocation};
        let before = self.runtime.allocation.pending(uid);
        let (allocated, decision) = self.runtime.allocation.allocate(pod);
        match decision {
            Allocation::Current => {}
            Allocation::ResizeAdmitted => {
                tracing::info!(pod = %crate::pod_util::full_name(pod), %uid, "pod resize admitted");
                self.events.pod_event(
                    pod,
                    None,
                    crate::events::NORMAL,
                    "ResizeStarted",
                    resize_message(pod, "Pod resize started", ""),
                );
            }
            Allocation::ResizePending(p) if before.as_ref() != Some(&p) => {
                tracing::info!(pod = %crate::pod_util::full_name(pod), %uid, reason = p.reason, message = %p.message, "pod resize pending");
                let kind = if p.reason == crate::allocation_manager::INFEASIBLE {
                    "ResizeInfeasible"
                } else {
                    "ResizeDeferred"
                };
                self.events.pod_event(
                    pod,
                    None,
                    WARNING,
                    kind,
                    resize_message(pod, &format!("Pod resize {}", p.reason), &p.message),
                );
            }
            Allocation::ResizePending(_) => {}
        }
        allocated
    }

    async fn sync_once(&self, pod: &Pod) -> Duration {
        let uid = uid_of(pod).to_string();
        let allocated = self.allocate(pod, &uid);
        let pod = &allocated;
        let runtime_status = match self.cached_status(&uid).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pod = %crate::pod_util::full_name(pod), %uid, error = %e, "cannot read pod status from the runtime");
                return ERROR_REQUEUE;
            }
        };
        lock(&self.first_seen)
            .entry(uid.clone())
            .or_insert_with(|| Some(Instant::now()));
        self.probes.update_pod(
            pod,
            &runtime_status,
            crate::kuberuntime::status_pod_ips(pod, &runtime_status, &self.node_ips)
                .into_iter()
                .next(),
        );
        let (objects, api_done) = self.api_inputs(pod).await;
        if objects.api && !runtime_status.sandboxes.is_empty() {
            // configMap, secret and token updates reach running containers.
            let rt_fields = crate::envvars::RuntimeFields {
                pod_ips: crate::kuberuntime::status_pod_ips(pod, &runtime_status, &self.node_ips),
                host_ip: self.node_ips.first().cloned(),
                node_name: self.runtime.node_name.clone(),
            };
            crate::volumes::refresh(
                &self.root_dir,
                pod,
                &crate::volumes::VolumeInputs {
                    rt: &rt_fields,
                    node: &self.runtime.node,
                    objects: &objects,
                },
            );
        }
        let now = now_nanos();
        let started = self
            .status
            .get(&uid)
            .or_else(|| pod.status.clone())
            .and_then(|s| crate::active_deadline::start_nanos(&s));
        let deadline_left = crate::active_deadline::remaining(pod, started, now);
        if deadline_left.is_some_and(|left| left <= 0) {
            return self.deadline_exceeded(pod, &uid, &runtime_status).await;
        }
        let actions = {
            let b = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
            compute_pod_actions(pod, &runtime_status, &self.probes.results(), &b, now)
        };
        self.set_status(pod, &uid, &runtime_status, &actions.backoff, now);
        for w in &actions.backoff {
            tracing::info!(pod = %crate::pod_util::full_name(pod), container = %w.name, wait_ms = w.remaining / 1_000_000, "back-off restarting failed container (CrashLoopBackOff)");
            self.events.pod_event(
                pod,
                Some(&w.name),
                WARNING,
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {}",
                    w.name,
                    crate::pod_util::full_name(pod)
                ),
            );
        }
        if !actions.is_noop() {
            tracing::debug!(pod = %crate::pod_util::full_name(pod), ?actions, "syncing pod");
            match self
                .runtime
                .apply_pod_actions(pod, &runtime_status, &actions, &self.backoff, &objects)
                .await
            {
                Err(e) => {
                    tracing::warn!(pod = %crate::pod_util::full_name(pod), %uid, error = %e, "error syncing pod");
                    return ERROR_REQUEUE;
                }
                Ok(results) => {
                    let failed = results.iter().any(|(_, r)| r.is_err());
                    {
                        let mut reasons = lock(&self.reasons);
                        let pod_reasons = reasons.entry(uid.clone()).or_default();
                        for (name, r) in results {
                            match r {
                                Ok(()) => {
                                    pod_reasons.remove(&name);
                                }
                                Err(e) => {
                                    pod_reasons
                                        .insert(name, (e.reason().to_string(), e.to_string()));
                                }
                            }
                        }
                    }
                    // As upstream, what the actions changed in the runtime reaches the
                    // status through the next PLEG relist (its event wakes this worker),
                    // not by reading CRI again here; a failed start shows its reason now.
                    if failed {
                        self.set_status(pod, &uid, &runtime_status, &actions.backoff, now);
                        return ERROR_REQUEUE;
                    }
                    // A resize changes no container's state, so no relist event brings it
                    // to the status: report what was applied now.
                    if !actions.containers_to_update.is_empty() {
                        let mut st = runtime_status.clone();
                        self.runtime.fill_actuated(&mut st);
                        self.set_status(pod, &uid, &st, &actions.backoff, now);
                    }
                }
            }
        }
        let requeue = actions
            .backoff
            .iter()
            .map(|w| Duration::from_nanos(w.remaining.max(0) as u64))
            .min()
            .unwrap_or(self.sync_frequency);
        // Come back when the deadline passes.
        let requeue = match deadline_left {
            Some(left) => requeue.min(Duration::from_nanos(left.clamp(0, u64::MAX as i128) as u64)),
            None => requeue,
        };
        if api_done {
            requeue
        } else {
            requeue.min(ERROR_REQUEUE)
        }
    }
}

impl Syncer {
    /// A pod past its activeDeadlineSeconds: its containers are killed and it is Failed
    /// with reason DeadlineExceeded (upstream's active deadline handler).
    pub(crate) async fn deadline_exceeded(
        &self,
        pod: &Pod,
        uid: &str,
        runtime_status: &crate::container::PodStatus,
    ) -> Duration {
        let running = runtime_status
            .containers
            .iter()
            .any(|c| c.state == crate::container::ContainerState::Running);
        if running {
            tracing::info!(pod = %crate::pod_util::full_name(pod), %uid, "pod was active on the node longer than the specified deadline, killing it");
            self.events.pod_event(
                pod,
                None,
                crate::events::NORMAL,
                crate::active_deadline::REASON,
                crate::active_deadline::MESSAGE.to_string(),
            );
        }
        if let Err(e) = self.runtime.kill_pod(uid, Some(pod), None).await {
            tracing::warn!(pod = %crate::pod_util::full_name(pod), %uid, error = %e, "killing a pod past its deadline");
            return ERROR_REQUEUE;
        }
        let runtime_status = self
            .read_status(uid)
            .await
            .unwrap_or_else(|_| runtime_status.clone());
        self.set_status(pod, uid, &runtime_status, &[], now_nanos());
        if let Some(mut st) = self.status.get(uid) {
            crate::active_deadline::mark_exceeded(&mut st);
            self.status.set(uid, st);
        }
        self.sync_frequency
    }
}

impl PodSyncer for Syncer {
    fn sync_pod<'a>(
        &'a self,
        pod: &'a Pod,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Duration> + Send + 'a>> {
        Box::pin(async move {
            let requeue = self.sync_once(pod).await;
            lock(&self.last_sync).insert(uid_of(pod).to_string(), Instant::now());
            requeue
        })
    }

    fn terminate_pod<'a>(
        &'a self,
        uid: &'a str,
        pod: Option<&'a Pod>,
        grace_override: Option<i64>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), CriError>> + Send + 'a>>
    {
        Box::pin(async move {
            let name = pod.map(crate::pod_util::full_name).unwrap_or_default();
            tracing::info!(pod = %name, %uid, "terminating pod");
            if let Some(p) = pod.filter(|p| self.api.is_some() && is_api_pod(p)) {
                // Stop first and record the containers' final states: the API server shows
                // them until the pod object is deleted.
                self.runtime.kill_pod(uid, Some(p), grace_override).await?;
                self.refresh_status(p, uid, &[]).await;
            }
            let removed = Instant::now();
            self.runtime.remove_pod(uid, pod, grace_override).await?;
            // Nothing is left: a pod added again with this UID starts from scratch rather
            // than from what a relist saw before the removal.
            self.cache.set(
                uid,
                crate::container::PodStatus {
                    uid: uid.to_string(),
                    ..Default::default()
                },
                removed.max(Instant::now()),
            );
            tracing::info!(pod = %name, %uid, "pod terminated and removed");
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::PLEG_PERIOD;
    use crate::pleg::{Pleg, PlegCache, PlegShared};
    use tokio::sync::mpsc;

    /// A syncer on the fake runtime (image `i:1` present) and a PLEG filling its cache.
    fn fake_node(
        fake: &Arc<crate::kuberuntime::cri::fake::FakeRuntime>,
        dir: &std::path::Path,
    ) -> (Arc<Syncer>, Pleg) {
        fake.add_image("i:1", 100);
        let rm = crate::kuberuntime::manager_tests::manager(fake, dir);
        let (probe_tx, _) = mpsc::unbounded_channel();
        let syncer = Arc::new(Syncer {
            probes: ProbeManager::new(fake.cri(), probe_tx, EventRecorder::none()),
            first_seen: Mutex::new(HashMap::new()),
            runtime: Arc::new(rm),
            cache: PodCache::default(),
            last_sync: Mutex::new(HashMap::new()),
            status: StatusManager::new(),
            backoff: Mutex::new(Backoff::new()),
            reasons: Mutex::new(HashMap::new()),
            node_ips: Vec::new(),
            sync_frequency: Duration::from_secs(10),
            api: None,
            events: EventRecorder::none(),
            root_dir: dir.join("root"),
        });
        let pleg = Pleg {
            cri: fake.cri(),
            period: PLEG_PERIOD,
            shared: PlegShared::default(),
            cache: Some(PlegCache {
                runtime: syncer.runtime.clone(),
                cache: syncer.cache.clone(),
            }),
        };
        (syncer, pleg)
    }

    #[tokio::test]
    async fn a_sync_reads_the_pod_cache_instead_of_listing() {
        let dir = tempfile::tempdir().unwrap();
        let fake = crate::kuberuntime::cri::fake::FakeRuntime::new();
        let (syncer, pleg) = fake_node(&fake, dir.path());
        let mut relist = crate::pleg::RelistState::default();
        pleg.relist_once(&mut relist).await.unwrap();
        let pod = Arc::new(crate::testutil::pod("Always", &[], &["a"]));
        // A new pod starts at once (no relist since it came) and lists nothing: what it
        // started reaches its status through the next relist, as upstream.
        fake.clear_calls();
        syncer.sync_pod(&pod).await;
        let calls: Vec<String> = fake.calls().into_iter().map(|c| c.op.to_string()).collect();
        assert!(calls.iter().any(|op| op == "StartContainer"), "{calls:?}");
        assert!(!calls.iter().any(|op| op.starts_with("List")), "{calls:?}");
        // The next sync waits for a relist newer than the last one.
        let next = {
            let (syncer, pod) = (syncer.clone(), pod.clone());
            tokio::spawn(async move { syncer.sync_pod(&pod).await })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !next.is_finished(),
            "the cache is not newer than the last sync"
        );
        fake.clear_calls();
        let events = pleg.relist_once(&mut relist).await.unwrap();
        assert!(events
            .iter()
            .any(|e| e.kind == crate::pleg::PlegEventKind::ContainerStarted));
        tokio::time::timeout(Duration::from_secs(4), next)
            .await
            .expect("woken by the relist, not by the CRI fallback")
            .unwrap();
        // The relist's two lists are all: the kubelet knew the status of the container it
        // started, and the sync asked CRI nothing.
        let ops: Vec<String> = fake.calls().into_iter().map(|c| c.op.to_string()).collect();
        assert_eq!(ops, ["ListPodSandbox", "ListContainers"]);
        assert_eq!(
            syncer.status.get(uid_of(&pod)).and_then(|s| s.phase),
            Some("Running".to_string())
        );
    }

    #[tokio::test]
    async fn a_resize_is_applied_once_and_reported_though_the_relist_sees_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let fake = crate::kuberuntime::cri::fake::FakeRuntime::new();
        let (syncer, pleg) = fake_node(&fake, dir.path());
        let mut relist = crate::pleg::RelistState::default();
        let sized = |cpu: &str| {
            let mut p = crate::testutil::pod("Always", &[], &["a"]);
            let q = k8s_openapi::apimachinery::pkg::api::resource::Quantity(cpu.into());
            let m: std::collections::BTreeMap<_, _> = [("cpu".to_string(), q)].into();
            p.spec.as_mut().unwrap().containers[0].resources =
                Some(k8s_openapi::api::core::v1::ResourceRequirements {
                    requests: Some(m.clone()),
                    limits: Some(m),
                    ..Default::default()
                });
            Arc::new(p)
        };
        let shown = |uid: &str| {
            let st = syncer.status.get(uid).unwrap();
            let cpu = st.container_statuses.unwrap()[0]
                .resources
                .as_ref()
                .unwrap()
                .limits
                .as_ref()
                .unwrap()["cpu"]
                .0
                .clone();
            let in_progress = st
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "PodResizeInProgress");
            (cpu, in_progress)
        };
        let pod = sized("500m");
        let uid = uid_of(&pod).to_string();
        pleg.relist_once(&mut relist).await.unwrap();
        syncer.sync_pod(&pod).await;
        pleg.relist_once(&mut relist).await.unwrap();
        syncer.sync_pod(&pod).await;
        assert_eq!(shown(&uid), ("500m".to_string(), false));
        let resized = sized("1");
        pleg.relist_once(&mut relist).await.unwrap();
        syncer.sync_pod(&resized).await;
        assert_eq!(fake.count("UpdateContainerResources"), 1);
        // Reported at once: no relist event would bring it.
        assert_eq!(shown(&uid), ("1".to_string(), false));
        // The relist sees no state change; the sync still knows what was applied.
        for _ in 0..2 {
            pleg.relist_once(&mut relist).await.unwrap();
            syncer.sync_pod(&resized).await;
        }
        assert_eq!(fake.count("UpdateContainerResources"), 1);
        assert_eq!(fake.count("StopContainer"), 0);
        assert_eq!(shown(&uid), ("1".to_string(), false));
    }

    #[tokio::test]
    async fn a_pod_added_again_after_removal_starts_from_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let fake = crate::kuberuntime::cri::fake::FakeRuntime::new();
        let (syncer, pleg) = fake_node(&fake, dir.path());
        let mut relist = crate::pleg::RelistState::default();
        pleg.relist_once(&mut relist).await.unwrap();
        let pod = Arc::new(crate::testutil::pod("Always", &[], &["a"]));
        syncer.sync_pod(&pod).await;
        // A relist that saw the pod running, then the pod is torn down.
        pleg.relist_once(&mut relist).await.unwrap();
        let uid = uid_of(&pod).to_string();
        syncer
            .terminate_pod(&uid, Some(&pod), Some(0))
            .await
            .unwrap();
        syncer.forget_pod(&uid);
        assert!(fake.sandboxes().is_empty());
        // Added again before any relist saw the removal: a new sandbox, not the old one.
        fake.clear_calls();
        syncer.sync_pod(&pod).await;
        assert_eq!(fake.count("RunPodSandbox"), 1);
        assert_eq!(fake.containers().len(), 1);
    }
}
