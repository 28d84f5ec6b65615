//! The kubelet proper: wires sources, `pod_config`, PLEG, pod workers, the runtime
//! manager and the status manager together, and runs the sync loop, one `tokio::select!`
//! over config updates, PLEG events, worker results, object changes, the sync tick (1 s)
//! and the housekeeping tick (2 s).
//!
//! With `--kubeconfig` it also runs API-server mode: the API pod source, node registration
//! and status, the node lease, the status push, mirror pods, events, and the configMaps,
//! secrets and tokens pods consume. Without it none of that exists.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::container::now_nanos;
use crate::events::{EventRecorder, WARNING};
use crate::kuberuntime::actions::compute_pod_actions;
use crate::kuberuntime::cri::{Cri, CriError};
use crate::kuberuntime::sandbox::NodePaths;
use crate::kuberuntime::RuntimeManager;
use crate::mirror::{MirrorClient, MirrorPods};
use crate::nodestatus::NodeShared;
use crate::objects::{ObjectKey, ObjectManager, PodObjects};
use crate::pleg::{Pleg, PlegCache, PlegShared};
use crate::pod_cache::PodCache;
use crate::pod_config::{uid_of, PodConfig, PodUpdate};
use crate::pod_manager::PodManager;
use crate::pod_workers::{PodSyncer, PodWorkers, Work, WorkerResult, WorkerState};
use crate::prober::ProbeManager;
use crate::resources::{self, NodeAllocatable};
use crate::sources::apiserver::ApiSource;
use crate::sources::file::FileSource;
use crate::sources::http::HttpSource;
use crate::sources::Source;
use crate::status_manager::api_sync::{is_api_pod, StatusSync, StatusSyncHandle};
use crate::status_manager::{self, StatusInputs, StatusManager};

pub const SYNC_TICK: Duration = Duration::from_secs(1);
pub const HOUSEKEEPING_TICK: Duration = Duration::from_secs(2);
pub const PLEG_PERIOD: Duration = Duration::from_secs(1);
/// After a failed sync, try again this soon.
const ERROR_REQUEUE: Duration = Duration::from_secs(2);
/// How long a worker waits for the pod cache before it asks CRI itself (the PLEG is stuck
/// or failing).
const CACHE_WAIT: Duration = Duration::from_secs(5);

/// What API-server mode adds to the kubelet (absent in standalone mode).
#[derive(Clone)]
pub struct ApiContext {
    pub client: kube::Client,
    pub objects: ObjectManager,
    pub mirror: MirrorClient,
    pub mirror_pods: MirrorPods,
    pub node: NodeShared,
    pub status_sync: StatusSyncHandle,
}

/// True for a pod whose API status is final (upstream never runs such a pod again).
fn is_terminal_api_pod(pod: &Pod) -> bool {
    is_api_pod(pod)
        && matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// What the pod workers call into.
pub struct Syncer {
    pub runtime: Arc<RuntimeManager>,
    /// Each pod's runtime state, filled by the PLEG relist.
    pub(crate) cache: PodCache,
    /// When each pod's last sync ended: its next sync wants a newer view of the runtime.
    pub(crate) last_sync: Mutex<HashMap<String, Instant>>,
    pub status: StatusManager,
    pub backoff: Mutex<Backoff>,
    /// Why the last start of a container failed (waiting reason, message), per pod UID.
    pub reasons: Mutex<HashMap<String, status_manager::StartFailures>>,
    pub node_ip: Option<String>,
    pub sync_frequency: Duration,
    pub probes: ProbeManager,
    /// When each pod was first synced (None once its start was measured).
    pub first_seen: Mutex<HashMap<String, Option<Instant>>>,
    pub api: Option<ApiContext>,
    pub events: EventRecorder,
    pub root_dir: std::path::PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Syncer {
    fn set_status(
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
                node_ip: self.node_ip.clone(),
                previous: previous.as_ref(),
                now,
                probes: Some(&probes),
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

    async fn refresh_status(
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
    async fn read_status(&self, uid: &str) -> Result<crate::container::PodStatus, CriError> {
        let time = Instant::now();
        let st = self.runtime.get_pod_status(uid).await?;
        self.cache.set(uid, st.clone(), time);
        Ok(st)
    }

    /// The pod's runtime state newer than its last sync, from the pod cache (upstream's
    /// `GetNewerThan`); from CRI when the cache stays behind for `CACHE_WAIT`.
    async fn cached_status(&self, uid: &str) -> Result<crate::container::PodStatus, CriError> {
        let since = lock(&self.last_sync).get(uid).copied();
        match tokio::time::timeout(CACHE_WAIT, self.cache.get_newer_than(uid, since)).await {
            Ok(st) => Ok(st),
            Err(_) => {
                tracing::debug!(%uid, "pod cache not fresh, reading the runtime");
                self.read_status(uid).await
            }
        }
    }

    /// Forgets what the sync kept about a pod that is gone.
    pub fn forget_pod(&self, uid: &str) {
        lock(&self.reasons).remove(uid);
        lock(&self.backoff).forget_pod(uid);
        lock(&self.first_seen).remove(uid);
        lock(&self.last_sync).remove(uid);
        self.probes.forget_pod(uid);
        if let Some(api) = &self.api {
            api.objects.unregister_pod(uid);
        }
    }

    /// The API objects the pod's volumes and env need (none without an API server), and
    /// its mirror pod brought in line when it is a static pod; false when that must be
    /// tried again soon (API server unreachable, node not registered yet).
    async fn api_inputs(&self, pod: &Pod) -> (PodObjects, bool) {
        let Some(api) = &self.api else {
            return (PodObjects::default(), true);
        };
        if !is_api_pod(pod) {
            let mirror = api.mirror_pods.get(&crate::pod_config::full_name(pod));
            let node_uid = api.node.get().and_then(|n| n.metadata.uid);
            let synced = api
                .mirror
                .sync(pod, mirror.as_ref(), node_uid.as_deref())
                .await;
            let done = synced.unwrap_or_else(|e| {
                tracing::warn!(pod = %crate::pod_config::full_name(pod), error = %e, "failed syncing mirror pod");
                false
            });
            return (PodObjects::default(), done);
        }
        api.objects.register_pod(pod);
        (api.objects.prefetch(pod).await, true)
    }

    async fn sync(&self, pod: &Pod) -> Duration {
        let uid = uid_of(pod).to_string();
        let runtime_status = match self.cached_status(&uid).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pod = %crate::pod_config::full_name(pod), %uid, error = %e, "cannot read pod status from the runtime");
                return ERROR_REQUEUE;
            }
        };
        lock(&self.first_seen)
            .entry(uid.clone())
            .or_insert_with(|| Some(Instant::now()));
        self.probes.sync_pod(
            pod,
            &runtime_status,
            crate::kuberuntime::status_pod_ips(pod, &runtime_status, self.node_ip.as_ref())
                .into_iter()
                .next(),
        );
        let (objects, api_done) = self.api_inputs(pod).await;
        if objects.api && !runtime_status.sandboxes.is_empty() {
            // configMap, secret and token updates reach running containers.
            let rt_fields = crate::envvars::RuntimeFields {
                pod_ips: crate::kuberuntime::status_pod_ips(
                    pod,
                    &runtime_status,
                    self.node_ip.as_ref(),
                ),
                host_ip: self.node_ip.clone(),
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
            tracing::info!(pod = %crate::pod_config::full_name(pod), container = %w.name, wait_ms = w.remaining / 1_000_000, "back-off restarting failed container (CrashLoopBackOff)");
            self.events.pod_event(
                pod,
                Some(&w.name),
                WARNING,
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {}",
                    w.name,
                    crate::pod_config::full_name(pod)
                ),
            );
        }
        if !actions.is_noop() {
            tracing::debug!(pod = %crate::pod_config::full_name(pod), ?actions, "syncing pod");
            match self
                .runtime
                .sync_pod(pod, &runtime_status, &actions, &self.backoff, &objects)
                .await
            {
                Err(e) => {
                    tracing::warn!(pod = %crate::pod_config::full_name(pod), %uid, error = %e, "error syncing pod");
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
                    // Show what changed (started containers, a failure) at once rather
                    // than after the next PLEG relist.
                    self.refresh_status(pod, &uid, &actions.backoff).await;
                    if failed {
                        return ERROR_REQUEUE;
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
    async fn deadline_exceeded(
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
            tracing::info!(pod = %crate::pod_config::full_name(pod), %uid, "pod was active on the node longer than the specified deadline, killing it");
            self.events.pod_event(
                pod,
                None,
                crate::events::NORMAL,
                crate::active_deadline::REASON,
                crate::active_deadline::MESSAGE.to_string(),
            );
        }
        if let Err(e) = self.runtime.kill_pod(uid, Some(pod), None).await {
            tracing::warn!(pod = %crate::pod_config::full_name(pod), %uid, error = %e, "killing a pod past its deadline");
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
            let requeue = self.sync(pod).await;
            lock(&self.last_sync).insert(uid_of(pod).to_string(), Instant::now());
            requeue
        })
    }

    fn terminate_pod<'a>(
        &'a self,
        uid: &'a str,
        pod: Option<&'a Pod>,
        grace_override: Option<i64>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let name = pod.map(crate::pod_config::full_name).unwrap_or_default();
            tracing::info!(pod = %name, %uid, "terminating pod");
            if let Some(p) = pod.filter(|p| self.api.is_some() && is_api_pod(p)) {
                // Stop first and record the containers' final states: the API server shows
                // them until the pod object is deleted.
                self.runtime
                    .kill_pod(uid, Some(p), grace_override)
                    .await
                    .map_err(|e| e.to_string())?;
                self.refresh_status(p, uid, &[]).await;
            }
            let removed = Instant::now();
            self.runtime
                .remove_pod(uid, pod, grace_override)
                .await
                .map_err(|e| e.to_string())?;
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

/// Handles shared with the HTTP servers.
#[derive(Clone)]
pub struct Shared {
    pub pods: PodManager,
    pub status: StatusManager,
    pub pleg: PlegShared,
    /// Updated by the sync loop on every iteration (for healthz).
    pub loop_alive: Arc<Mutex<Instant>>,
    /// For `/containerLogs` and `/stats/summary`.
    pub cri: Cri,
    pub node_name: String,
}

impl Shared {
    pub fn healthy(&self) -> Result<(), String> {
        let last = *self.loop_alive.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() > Duration::from_secs(30) {
            return Err(format!("sync loop stalled for {:?}", last.elapsed()));
        }
        if !self.pleg.healthy(Duration::from_secs(180)) {
            return Err("PLEG has not relisted for 3 minutes".into());
        }
        Ok(())
    }
}

pub struct Kubelet {
    cfg: Config,
    syncer: Arc<Syncer>,
    shared: Shared,
    cri: Cri,
    /// Pods whose probe results changed.
    probe_rx: mpsc::UnboundedReceiver<String>,
    /// API objects that changed (their pods are synced again).
    object_rx: mpsc::UnboundedReceiver<ObjectKey>,
    /// The API status sync, started by `run`.
    status_sync: Option<StatusSync>,
}

impl Kubelet {
    /// Builds the kubelet; with `--kubeconfig` the API server client too (reading the
    /// kubeconfig is the only thing that can fail).
    pub async fn new(cfg: Config) -> Result<Self, crate::kubeclient::ApiError> {
        let cri = Cri::new(&cfg.container_runtime_endpoint);
        let pods = PodManager::default();
        let status = StatusManager::new();
        let (object_tx, object_rx) = mpsc::unbounded_channel();
        let (api, events, status_sync) = match &cfg.kubeconfig {
            None => (None, EventRecorder::none(), None),
            Some(path) => {
                let client = crate::kubeclient::connect(path).await?;
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
        runtime.max_per_pod_container = cfg.max_per_pod_container;
        runtime.node_ip = cfg.node_ip.map(|ip| ip.to_string());
        runtime.node = crate::nodestatus::allocatable(&cfg);
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
            node_ip: cfg.node_ip.map(|ip| ip.to_string()),
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
    fn start_api_mode(&mut self, src_tx: &mpsc::Sender<crate::sources::SourceUpdate>) -> bool {
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

    /// Runs until `shutdown` resolves. Pods keep running after the kubelet exits.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        match self.cri.version().await {
            Ok(v) => {
                tracing::info!(runtime = %v.runtime_name, version = %v.runtime_version, api = %v.runtime_api_version, "connected to the container runtime")
            }
            Err(e) => {
                tracing::warn!(error = %e, "container runtime not reachable yet, will keep trying")
            }
        }
        let (src_tx, mut src_rx) = mpsc::channel(64);
        let mut expected = Vec::new();
        if let Some(path) = &self.cfg.static_pod_path {
            expected.push(Source::File);
            tokio::spawn(
                FileSource {
                    path: path.clone(),
                    node_name: self.cfg.node_name.clone(),
                    period: self.cfg.file_check_frequency,
                }
                .run(src_tx.clone()),
            );
        }
        if let Some(url) = &self.cfg.static_pod_url {
            expected.push(Source::Http);
            tokio::spawn(
                HttpSource {
                    url: url.clone(),
                    node_name: self.cfg.node_name.clone(),
                    period: self.cfg.http_check_frequency,
                }
                .run(src_tx.clone()),
            );
        }
        if self.start_api_mode(&src_tx) {
            expected.push(Source::Api);
        }
        drop(src_tx);

        tokio::spawn(crate::logs::run_log_manager(
            self.cri.clone(),
            self.cfg.container_log_max_size,
            self.cfg.container_log_max_files,
            self.cfg.container_log_monitor_interval,
        ));
        tokio::spawn(
            crate::images::ImageGc {
                cri: self.cri.clone(),
                high_percent: self.cfg.image_gc_high_threshold_percent,
                low_percent: self.cfg.image_gc_low_threshold_percent,
                min_age: self.cfg.image_minimum_gc_age,
                pinned_image: self.cfg.pod_infra_container_image.clone(),
            }
            .run(crate::images::GC_PERIOD),
        );
        let (pleg_tx, mut pleg_rx) = mpsc::channel(4096);
        tokio::spawn(
            Pleg {
                cri: self.cri.clone(),
                period: PLEG_PERIOD,
                shared: self.shared.pleg.clone(),
                cache: Some(PlegCache {
                    runtime: self.syncer.runtime.clone(),
                    cache: self.syncer.cache.clone(),
                }),
            }
            .run(pleg_tx),
        );

        let (res_tx, mut res_rx) = mpsc::unbounded_channel();
        let mut workers = PodWorkers::new(self.syncer.clone(), res_tx);
        let mut pod_config = PodConfig::new();
        let mut queue: HashMap<String, Instant> = HashMap::new();
        let mut sync_tick = tokio::time::interval(SYNC_TICK);
        let mut housekeeping_tick = tokio::time::interval(HOUSEKEEPING_TICK);
        sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        housekeeping_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pods = self.shared.pods.clone();
        let mut admission = Admission {
            max_pods: self.cfg.max_pods,
            node: self.syncer.runtime.node,
            // Checked when the configuration was resolved.
            sysctls: crate::security::sysctl::Allowlist::new(&self.cfg.allowed_unsafe_sysctls)
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "allowedUnsafeSysctls ignored");
                    crate::security::sysctl::Allowlist::safe()
                }),
            apparmor_enabled: crate::security::apparmor::host_enabled(std::path::Path::new(
                crate::security::apparmor::ENABLED_PARAMETER,
            )),
            rejected: HashSet::new(),
            status: self.shared.status.clone(),
            events: self.syncer.events.clone(),
        };
        // Pods whose deletion from the API server is being finished.
        let mut deleted: HashSet<String> = HashSet::new();
        tokio::pin!(shutdown);

        loop {
            *self
                .shared
                .loop_alive
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Instant::now();
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("shutting down (pods keep running)");
                    return;
                }
                Some(update) = src_rx.recv() => {
                    for u in pod_config.merge(update) {
                        handle_update(u, &pods, &mut workers, &mut admission, &deleted);
                    }
                }
                Some(key) = self.object_rx.recv() => {
                    if let Some(api) = &self.syncer.api {
                        for uid in api.objects.users(&key) {
                            if let Some(pod) = pods.get(&uid) {
                                if workers.state(&uid) == Some(WorkerState::Syncing) {
                                    request_sync(&mut workers, &uid, pod);
                                }
                            }
                        }
                    }
                }
                Some(uid) = self.probe_rx.recv() => {
                    if let Some(pod) = pods.get(&uid) {
                        request_sync(&mut workers, &uid, pod);
                    }
                }
                Some(ev) = pleg_rx.recv() => {
                    if let Some(pod) = pods.get(&ev.uid) {
                        request_sync(&mut workers, &ev.uid, pod);
                    }
                }
                Some(res) = res_rx.recv() => match res {
                    WorkerResult::Synced { uid, requeue_after } => {
                        queue.insert(uid, Instant::now() + requeue_after);
                    }
                    WorkerResult::Terminated { uid } => {
                        workers.remove(&uid);
                        queue.remove(&uid);
                        self.syncer.forget_pod(&uid);
                        admission.rejected.remove(&uid);
                        let being_deleted = pods.get(&uid).filter(|p| p.metadata.deletion_timestamp.is_some());
                        if let Some((pod, api)) = being_deleted.zip(self.syncer.api.as_ref()) {
                            // Gracefully deleted through the API: report, then delete the object.
                            deleted.insert(uid.clone());
                            api.status_sync.finish_deletion(&uid, (*pod).clone());
                            continue;
                        }
                        match pods.get(&uid) {
                            // Re-added while it was being torn down: start it again.
                            Some(pod) => {
                                tracing::info!(%uid, "pod was added again while terminating, starting it again");
                                request_sync(&mut workers, &uid, pod);
                            }
                            None => self.shared.status.remove(&uid),
                        }
                    }
                },
                _ = sync_tick.tick() => {
                    let now = Instant::now();
                    let due: Vec<String> = queue.iter().filter(|(_, t)| **t <= now).map(|(u, _)| u.clone()).collect();
                    for uid in due {
                        queue.remove(&uid);
                        if let Some(pod) = pods.get(&uid) {
                            request_sync(&mut workers, &uid, pod);
                        }
                    }
                }
                _ = housekeeping_tick.tick() => {
                    // Never remove what the sources may still announce.
                    if pod_config.sources_ready(&expected) {
                        if let Some(api) = &self.syncer.api {
                            delete_orphaned_mirror_pods(api, &pods);
                        }
                    }
                    deleted.retain(|uid| pods.contains(uid));
                    if pod_config.sources_ready(&expected) && self.shared.pleg.relisted_once() {
                        for (uid, rp) in self.shared.pleg.runtime_pods() {
                            if !pods.contains(&uid) && workers.state(&uid).is_none() {
                                tracing::info!(%uid, pod = %format!("{}/{}", rp.namespace, rp.name), "removing pod no source knows (housekeeping)");
                                workers.update_pod(&uid, Work::Terminate { pod: None, grace_override: None });
                            }
                        }
                    }
                    self.syncer.backoff.lock().unwrap_or_else(|e| e.into_inner()).gc(now_nanos());
                }
            }
        }
    }
}

/// Pod admission (upstream's predicate admit handler, for what a standalone node knows):
/// maxPods, and the sum of requests against node allocatable.
struct Admission {
    max_pods: u32,
    node: NodeAllocatable,
    /// The sysctls pods may set (safe set + allowedUnsafeSysctls).
    sysctls: crate::security::sysctl::Allowlist,
    /// Whether the host enforces AppArmor.
    apparmor_enabled: bool,
    /// Pods that were rejected: kept (Failed) in the pod manager, never run.
    rejected: HashSet<String>,
    status: StatusManager,
    events: EventRecorder,
}

impl Admission {
    /// Ok, or (reason, message) as upstream words them.
    fn admit(&self, pod: &Pod, pods: &PodManager) -> Result<(), (String, String)> {
        self.sysctls.admit(pod)?;
        self.admit_resources(pod, pods)?;
        crate::security::apparmor::admit(pod, self.apparmor_enabled)
    }

    /// maxPods and requests against allocatable (upstream's predicate admit handler).
    fn admit_resources(&self, pod: &Pod, pods: &PodManager) -> Result<(), (String, String)> {
        let admitted: Vec<_> = pods
            .all()
            .into_iter()
            .filter(|p| !self.rejected.contains(uid_of(p)))
            .collect();
        let (cpu, mem) = resources::pod_requests(pod);
        let (mut used_cpu, mut used_mem) = (0i64, 0i64);
        for p in &admitted {
            let (c, m) = resources::pod_requests(p);
            used_cpu = used_cpu.saturating_add(c);
            used_mem = used_mem.saturating_add(m);
        }
        if cpu > 0 && used_cpu.saturating_add(cpu) > self.node.cpu_milli {
            return Err((
                "OutOfcpu".into(),
                format!(
                    "Node didn't have enough resource: cpu, requested: {cpu}, used: {used_cpu}, capacity: {}",
                    self.node.cpu_milli
                ),
            ));
        }
        if mem > 0 && used_mem.saturating_add(mem) > self.node.memory {
            return Err((
                "OutOfmemory".into(),
                format!(
                    "Node didn't have enough resource: memory, requested: {mem}, used: {used_mem}, capacity: {}",
                    self.node.memory
                ),
            ));
        }
        // Pod count last: a pod that can never fit is reported by the resource it lacks,
        // whatever order the pods of a manifest directory arrive in.
        if admitted.len() >= self.max_pods as usize {
            return Err((
                "OutOfpods".into(),
                format!(
                    "Node didn't have enough resource: pods, requested: 1, used: {}, capacity: {}",
                    admitted.len(),
                    self.max_pods
                ),
            ));
        }
        Ok(())
    }
}

/// Hands a sync to the pod's worker, unless the pod must not run again: it is being deleted
/// through the API (its worker terminates it; a sync after that would start it anew before
/// the object is gone), its worker is terminating, or it is an API pod that had finished
/// before this kubelet started.
fn request_sync(workers: &mut PodWorkers<Syncer>, uid: &str, pod: Arc<Pod>) {
    let state = workers.state(uid);
    if pod.metadata.deletion_timestamp.is_some()
        || state == Some(WorkerState::Terminating)
        || (state.is_none() && is_terminal_api_pod(&pod))
    {
        return;
    }
    workers.update_pod(uid, Work::Sync(pod));
}

/// Removes the mirror pods whose static pods are gone (upstream's housekeeping).
fn delete_orphaned_mirror_pods(api: &ApiContext, pods: &PodManager) {
    let statics: HashSet<String> = pods
        .all()
        .iter()
        .filter(|p| !is_api_pod(p))
        .map(|p| crate::pod_config::full_name(p))
        .collect();
    for m in api.mirror_pods.all() {
        if !statics.contains(&crate::pod_config::full_name(&m)) {
            let mirror = api.mirror.clone();
            tokio::spawn(async move {
                tracing::info!(pod = %crate::pod_config::full_name(&m), "deleting orphaned mirror pod");
                if let Err(e) = mirror.delete(&m).await {
                    tracing::warn!(pod = %crate::pod_config::full_name(&m), error = %e, "cannot delete orphaned mirror pod");
                }
            });
        }
    }
}

fn handle_update(
    update: PodUpdate,
    pods: &PodManager,
    workers: &mut PodWorkers<Syncer>,
    admission: &mut Admission,
    deleted: &HashSet<String>,
) {
    match update {
        PodUpdate::Add(list) | PodUpdate::Update(list) => {
            for pod in list {
                let uid = uid_of(&pod).to_string();
                if admission.rejected.contains(&uid) {
                    continue;
                }
                if pod.metadata.deletion_timestamp.is_some() {
                    // Graceful deletion through the API: terminate with its grace period,
                    // keep the object until its containers are gone.
                    let grace = pod.metadata.deletion_grace_period_seconds;
                    let pod = pods.set(pod);
                    if !deleted.contains(&uid)
                        && workers.state(&uid) != Some(WorkerState::Terminating)
                    {
                        tracing::info!(pod = %crate::pod_config::full_name(&pod), %uid, grace = ?grace, "pod deleted in the API server, terminating it");
                        workers.update_pod(
                            &uid,
                            Work::Terminate {
                                pod: Some(pod),
                                grace_override: grace,
                            },
                        );
                    }
                    continue;
                }
                if !pods.contains(&uid) && is_terminal_api_pod(&pod) {
                    // Finished before (a kubelet restart): never run again.
                    if let Some(st) = pod.status.clone() {
                        admission.status.set(&uid, st);
                    }
                    pods.set(pod);
                    continue;
                }
                if !pods.contains(&uid) {
                    if let Err((reason, message)) = admission.admit(&pod, pods) {
                        tracing::error!(pod = %crate::pod_config::full_name(&pod), %uid, %reason, %message, "pod rejected by admission");
                        admission
                            .events
                            .pod_event(&pod, None, WARNING, &reason, message.clone());
                        admission.status.set(
                            &uid,
                            status_manager::rejected(&pod, &reason, &message, now_nanos()),
                        );
                        admission.rejected.insert(uid);
                        pods.set(pod);
                        continue;
                    }
                }
                tracing::info!(pod = %crate::pod_config::full_name(&pod), %uid, "pod added");
                let pod = pods.set(pod);
                workers.update_pod(&uid, Work::Sync(pod));
            }
        }
        PodUpdate::Remove(list) => {
            for pod in list {
                let uid = uid_of(&pod).to_string();
                if admission.rejected.remove(&uid) {
                    pods.remove(&uid);
                    admission.status.remove(&uid);
                    continue;
                }
                pods.remove(&uid);
                if deleted.contains(&uid) {
                    // Its deletion was finished by us: nothing is left to tear down.
                    continue;
                }
                tracing::info!(pod = %crate::pod_config::full_name(&pod), %uid, "pod removed from its source");
                workers.update_pod(
                    &uid,
                    Work::Terminate {
                        pod: Some(Arc::new(pod)),
                        grace_override: None,
                    },
                );
            }
        }
        PodUpdate::Reconcile(list) => {
            for pod in list {
                pods.set(pod);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{load_manifest, Source};

    fn pod(name: &str, requests: &str) -> Pod {
        let text = format!(
            "kind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: i:1\n    resources: {{requests: {requests}}}\n"
        );
        load_manifest(&text, Source::File, &format!("/m/{name}"), "n")
            .0
            .remove(0)
    }

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
            node_ip: None,
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
        // A new pod starts at once (no relist since it came) and lists nothing before its
        // sandbox is made; the lists are the refresh after the sync.
        fake.clear_calls();
        syncer.sync_pod(&pod).await;
        let calls: Vec<String> = fake.calls().into_iter().map(|c| c.op.to_string()).collect();
        let first_list = calls.iter().position(|op| op.starts_with("List")).unwrap();
        let started = calls.iter().position(|op| op == "StartContainer").unwrap();
        assert!(started < first_list, "{calls:?}");
        assert_eq!(fake.count("ListPodSandbox"), 1, "{calls:?}");
        assert_eq!(fake.count("ListContainers"), 1, "{calls:?}");
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
        // The relist's two lists are all: the sync asked CRI nothing.
        let ops: Vec<String> = fake.calls().into_iter().map(|c| c.op.to_string()).collect();
        assert_eq!(ops, ["ListPodSandbox", "ListContainers"]);
        assert_eq!(
            syncer.status.get(uid_of(&pod)).and_then(|s| s.phase),
            Some("Running".to_string())
        );
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

    #[test]
    fn admission_as_upstream() {
        let pods = PodManager::default();
        let a = Admission {
            max_pods: 2,
            node: NodeAllocatable {
                cpu_milli: 2000,
                memory: 1 << 30,
            },
            sysctls: crate::security::sysctl::Allowlist::safe(),
            apparmor_enabled: false,
            rejected: HashSet::new(),
            status: StatusManager::new(),
            events: EventRecorder::none(),
        };
        pods.set(pod("a", "{cpu: 1500m, memory: 512Mi}"));
        let (reason, msg) = a.admit(&pod("b", "{cpu: 600m}"), &pods).unwrap_err();
        assert_eq!(reason, "OutOfcpu");
        assert_eq!(
            msg,
            "Node didn't have enough resource: cpu, requested: 600, used: 1500, capacity: 2000"
        );
        let (reason, _) = a.admit(&pod("c", "{memory: 600Mi}"), &pods).unwrap_err();
        assert_eq!(reason, "OutOfmemory");
        assert!(a
            .admit(&pod("d", "{cpu: 500m, memory: 512Mi}"), &pods)
            .is_ok());
        pods.set(pod("d", "{}"));
        let (reason, _) = a.admit(&pod("e", "{}"), &pods).unwrap_err();
        assert_eq!(reason, "OutOfpods");
    }
}
