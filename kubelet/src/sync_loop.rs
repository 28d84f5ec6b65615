//! The sync loop (upstream `syncLoop`/`syncLoopIteration`): one `tokio::select!` over
//! config updates, PLEG events, worker results, object changes, the sync tick (1 s) and the
//! housekeeping tick (2 s); pod additions, updates and removals handed to the pod workers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

use crate::container::now_nanos;
use crate::events::WARNING;
use crate::pleg::{Pleg, PlegCache};
use crate::pod_config::{PodConfig, PodUpdate};
use crate::pod_manager::PodManager;
use crate::pod_util::uid_of;
use crate::pod_workers::{PodWorkers, Work, WorkerResult, WorkerState};
use crate::sources::file::FileSource;
use crate::sources::http::HttpSource;
use crate::sources::Source;
use crate::status_manager::api_sync::is_api_pod;
use crate::status_manager::{self};

use crate::admission::Admission;
use crate::kubelet::*;
use crate::pod_sync::is_terminal_api_pod;
use crate::pod_sync::ApiContext;
use crate::pod_sync::Syncer;
use crate::qos_container_manager::QosContainerManager;

impl Kubelet {
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
        // The QoS cgroups are made before the first pod's and follow the pods that run.
        let mut qos = QosContainerManager::new(
            &self.cfg.cgroup_root,
            crate::nodestatus::allocatable_absolute(&self.cfg),
        );
        qos.update(&[]);
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
                        // Its resources are free: deferred resizes may fit now (upstream's
                        // RetryPendingResizes).
                        for p in pods.all() {
                            let other = uid_of(&p);
                            if self.syncer.runtime.allocation.pending(other).is_some() {
                                request_sync(&mut workers, other, p.clone());
                            }
                        }
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
                    if pod_config.sources_ready(&expected) {
                        self.syncer
                            .runtime
                            .allocation
                            .retain_pods(|uid| pods.contains(uid) || workers.state(uid).is_some());
                    }
                    if pod_config.sources_ready(&expected) && self.shared.pleg.relisted_once() {
                        for (uid, rp) in self.shared.pleg.runtime_pods() {
                            if !pods.contains(&uid) && workers.state(&uid).is_none() {
                                tracing::info!(%uid, pod = %format!("{}/{}", rp.namespace, rp.name), "removing pod no source knows (housekeeping)");
                                workers.update_pod(&uid, Work::Terminate { pod: None, grace_override: None });
                            }
                        }
                    }
                    self.syncer.backoff.lock().unwrap_or_else(|e| e.into_inner()).gc(now_nanos());
                    // Sized by what each pod is allocated (a pending resize is not yet).
                    let running: Vec<Arc<Pod>> = pods
                        .all()
                        .into_iter()
                        .filter(|p| workers.state(uid_of(p)) == Some(WorkerState::Syncing))
                        .map(|p| self.syncer.runtime.allocation.allocated_pod(&p))
                        .collect();
                    qos.update(&running);
                }
            }
        }
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
        .map(|p| crate::pod_util::full_name(p))
        .collect();
    for m in api.mirror_pods.all() {
        if !statics.contains(&crate::pod_util::full_name(&m)) {
            let mirror = api.mirror.clone();
            tokio::spawn(async move {
                tracing::info!(pod = %crate::pod_util::full_name(&m), "deleting orphaned mirror pod");
                if let Err(e) = mirror.delete(&m).await {
                    tracing::warn!(pod = %crate::pod_util::full_name(&m), error = %e, "cannot delete orphaned mirror pod");
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
                        tracing::info!(pod = %crate::pod_util::full_name(&pod), %uid, grace = ?grace, "pod deleted in the API server, terminating it");
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
                        tracing::error!(pod = %crate::pod_util::full_name(&pod), %uid, %reason, %message, "pod rejected by admission");
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
                tracing::info!(pod = %crate::pod_util::full_name(&pod), %uid, "pod added");
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
                tracing::info!(pod = %crate::pod_util::full_name(&pod), %uid, "pod removed from its source");
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
