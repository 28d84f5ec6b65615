//! The probe manager (upstream `prober`): one task per running container and probe kind
//! (liveness, readiness, startup) with upstream's defaults (period 10 s, timeout 1 s,
//! success 1, failure 3, initial delay 0). The startup probe gates the other two;
//! readiness decides the container's `ready` (false until it first succeeds); a liveness
//! (or startup) probe failing `failureThreshold` times is recorded, and the pod worker's
//! next sync kills the container (`compute_pod_actions` puts it in the kill list: one
//! writer per pod) and restarts it per the restart policy; the reason becomes the
//! container's termination message. Result changes ask the sync loop to sync the pod.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio::sync::mpsc;

use crate::container::{ContainerState, PodStatus};
use crate::kuberuntime::cri::Cri;

mod worker;
use worker::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }
}

/// What the probes found about one container (by container ID).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ContainerProbeState {
    /// Readiness result (None: no result yet).
    pub(crate) ready: Option<bool>,
    /// Startup result (None: no result yet).
    pub(crate) started: Option<bool>,
    /// The liveness or startup probe that failed: the pod's sync kills the container.
    pub(crate) failed: Option<ProbeKind>,
    /// Why (the termination message of the killed container).
    pub(crate) killed: Option<String>,
}

pub(crate) type ProbeResults = HashMap<String, ContainerProbeState>;

#[derive(Default)]
struct Inner {
    workers: HashMap<(String, ProbeKind), tokio::task::AbortHandle>,
    results: ProbeResults,
    /// Container IDs per pod UID, to forget them with the pod.
    by_pod: HashMap<String, Vec<String>>,
}

/// Upstream defaults for unset probe fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeTiming {
    pub(crate) initial_delay: Duration,
    pub(crate) period: Duration,
    pub(crate) timeout: Duration,
    pub(crate) success_threshold: u32,
    pub(crate) failure_threshold: u32,
}

pub(crate) fn timing(p: &Probe, kind: ProbeKind) -> ProbeTiming {
    let secs =
        |v: Option<i32>, d: i32, min: i32| Duration::from_secs(v.unwrap_or(d).max(min) as u64);
    let success = p.success_threshold.unwrap_or(1).max(1) as u32;
    ProbeTiming {
        initial_delay: secs(p.initial_delay_seconds, 0, 0),
        period: secs(p.period_seconds, 10, 1),
        timeout: secs(p.timeout_seconds, 1, 1),
        // Liveness and startup must use 1 (API validation); be lenient and force it.
        success_threshold: if kind == ProbeKind::Readiness {
            success
        } else {
            1
        },
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    }
}

fn probe_of(c: &Container, kind: ProbeKind) -> Option<&Probe> {
    match kind {
        ProbeKind::Liveness => c.liveness_probe.as_ref(),
        ProbeKind::Readiness => c.readiness_probe.as_ref(),
        ProbeKind::Startup => c.startup_probe.as_ref(),
    }
}

/// The probe manager. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ProbeManager {
    cri: Cri,
    inner: Arc<Mutex<Inner>>,
    /// Pod UIDs whose probe results changed (the sync loop syncs them).
    notify: mpsc::UnboundedSender<String>,
    /// `Unhealthy` events.
    events: crate::events::EventRecorder,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ProbeManager {
    pub(crate) fn new(
        cri: Cri,
        notify: mpsc::UnboundedSender<String>,
        events: crate::events::EventRecorder,
    ) -> Self {
        ProbeManager {
            cri,
            inner: Arc::default(),
            notify,
            events,
        }
    }

    pub(crate) fn results(&self) -> ProbeResults {
        lock(&self.inner).results.clone()
    }

    /// Starts workers for the running containers of `pod` that have probes and stops
    /// those of containers no longer running.
    pub(crate) fn update_pod(&self, pod: &Pod, status: &PodStatus, pod_ip: Option<String>) {
        let uid = status.uid.clone();
        // App containers and sidecars are probed (a sidecar's readiness counts for the pod).
        let running: Vec<(&Container, String)> = crate::pod_util::app_containers(pod)
            .iter()
            .chain(crate::pod_util::sidecars(pod).map(|(_, c)| c))
            .filter_map(|c| {
                let s = status.find_container(&c.name)?;
                (s.state == ContainerState::Running).then(|| (c, s.id.clone()))
            })
            .collect();
        let mut inner = lock(&self.inner);
        let ids: Vec<String> = inner.by_pod.get(&uid).cloned().unwrap_or_default();
        // Stop workers of containers that are no longer running.
        inner.workers.retain(|(id, _), h| {
            let keep = !ids.contains(id) || running.iter().any(|(_, rid)| rid == id);
            if !keep {
                h.abort();
            }
            keep
        });
        // Forget results of containers the runtime no longer has.
        let known: Vec<&str> = status.containers.iter().map(|c| c.id.as_str()).collect();
        inner
            .results
            .retain(|id, _| !ids.contains(id) || known.contains(&id.as_str()));
        if let Some(v) = inner.by_pod.get_mut(&uid) {
            v.retain(|id| known.contains(&id.as_str()));
        }
        for (c, id) in running {
            for kind in [
                ProbeKind::Startup,
                ProbeKind::Readiness,
                ProbeKind::Liveness,
            ] {
                let Some(probe) = probe_of(c, kind) else {
                    continue;
                };
                let key = (id.clone(), kind);
                if inner.workers.contains_key(&key) {
                    continue;
                }
                let entry = inner.by_pod.entry(uid.clone()).or_default();
                if !entry.contains(&id) {
                    entry.push(id.clone());
                }
                inner.results.entry(id.clone()).or_default();
                let w = Worker {
                    mgr: self.clone(),
                    kind,
                    probe: probe.clone(),
                    container: c.clone(),
                    container_id: id.clone(),
                    uid: uid.clone(),
                    pod_name: crate::pod_util::full_name(pod),
                    pod_ref: self
                        .events
                        .is_enabled()
                        .then(|| crate::events::pod_reference(pod, Some(&c.name))),
                    pod_ip: pod_ip.clone(),
                    has_startup: c.startup_probe.is_some(),
                };
                let h = tokio::spawn(w.run());
                inner.workers.insert(key, h.abort_handle());
            }
        }
    }

    /// Stops every worker of a pod and forgets its results.
    pub(crate) fn forget_pod(&self, uid: &str) {
        let mut inner = lock(&self.inner);
        let ids = inner.by_pod.remove(uid).unwrap_or_default();
        inner.workers.retain(|(id, _), h| {
            let keep = !ids.contains(id);
            if !keep {
                h.abort();
            }
            keep
        });
        for id in ids {
            inner.results.remove(&id);
        }
        crate::metrics::global().forget_probes(uid);
    }

    fn update(&self, uid: &str, id: &str, f: impl FnOnce(&mut ContainerProbeState)) {
        let changed = {
            let mut inner = lock(&self.inner);
            let st = inner.results.entry(id.to_string()).or_default();
            let before = st.clone();
            f(st);
            *st != before
        };
        if changed {
            let _ = self.notify.send(uid.to_string());
        }
    }

    fn started(&self, id: &str) -> bool {
        lock(&self.inner)
            .results
            .get(id)
            .and_then(|s| s.started)
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_as_upstream() {
        let t = timing(&Probe::default(), ProbeKind::Readiness);
        assert_eq!(
            t,
            ProbeTiming {
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
        let p = Probe {
            success_threshold: Some(3),
            period_seconds: Some(0),
            ..Default::default()
        };
        assert_eq!(timing(&p, ProbeKind::Readiness).success_threshold, 3);
        assert_eq!(timing(&p, ProbeKind::Liveness).success_threshold, 1);
        assert_eq!(
            timing(&p, ProbeKind::Liveness).period,
            Duration::from_secs(1)
        );
    }

    // The prober on the fake runtime: it records, the pod worker kills.

    use crate::container::{ContainerStatus, PodStatus};
    use crate::kuberuntime::cri::fake::FakeRuntime;
    use nodus_proto::runtime::v1::ContainerState as S;

    fn probed_pod(probes: &str) -> Pod {
        let text = format!(
            "kind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: a\n    image: 'i:1'\n{probes}    lifecycle: {{preStop: {{exec: {{command: [bye]}}}}}}\n"
        );
        crate::sources::load_manifest(&text, crate::sources::Source::File, "/m/p.yaml", "n")
            .0
            .remove(0)
    }

    /// The fake runs container `a` of the pod; the runtime view says so.
    fn running(fake: &FakeRuntime, pod: &Pod) -> (String, PodStatus) {
        let uid = pod.metadata.uid.clone().unwrap();
        let sb = fake.add_sandbox(&uid, true);
        let id = fake.add_container(&uid, &sb, "a", S::ContainerRunning);
        let status = PodStatus {
            uid,
            containers: vec![ContainerStatus {
                id: id.clone(),
                name: "a".into(),
                sandbox_id: sb,
                state: ContainerState::Running,
                created_at: 1,
                started_at: 1,
                finished_at: 0,
                exit_code: 0,
                reason: String::new(),
                message: String::new(),
                image: "i:1".into(),
                image_ref: String::new(),
                hash: String::new(),
                restart_count: 0,
                resources: None,
                user: None,
            }],
            ..Default::default()
        };
        (id, status)
    }

    async fn notified(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a probe result")
            .unwrap()
    }

    #[tokio::test]
    async fn failed_liveness_probe_is_recorded_not_acted_on() {
        let fake = FakeRuntime::new();
        fake.set_exec_exit("a", 1);
        let pod = probed_pod(
            "    livenessProbe: {exec: {command: [live]}, periodSeconds: 1, failureThreshold: 1}\n",
        );
        let (id, status) = running(&fake, &pod);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let m = ProbeManager::new(fake.cri(), tx, crate::events::EventRecorder::none());
        m.update_pod(&pod, &status, None);
        assert_eq!(notified(&mut rx).await, status.uid);
        let r = m.results()[&id].clone();
        assert_eq!(r.failed, Some(ProbeKind::Liveness));
        let msg = r.killed.unwrap();
        assert!(
            msg.starts_with("Container a failed liveness probe, will be restarted: "),
            "{msg}"
        );
        // Only the probe ran: no preStop, no stop; the pod's sync does that.
        let execs = fake.execs();
        assert_eq!(execs.len(), 1);
        assert_eq!(execs[0].1, ["live"]);
        assert_eq!(fake.count("StopContainer"), 0);
        assert_eq!(fake.containers()[0].1, S::ContainerRunning);
    }

    #[tokio::test]
    async fn failed_startup_probe_is_recorded_as_startup() {
        let fake = FakeRuntime::new();
        fake.set_exec_exit("a", 1);
        let pod = probed_pod(
            "    startupProbe: {exec: {command: [start]}, periodSeconds: 1, failureThreshold: 1}\n    livenessProbe: {exec: {command: [live]}, periodSeconds: 1}\n",
        );
        let (id, status) = running(&fake, &pod);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let m = ProbeManager::new(fake.cri(), tx, crate::events::EventRecorder::none());
        m.update_pod(&pod, &status, None);
        notified(&mut rx).await;
        let r = m.results()[&id].clone();
        assert_eq!(r.failed, Some(ProbeKind::Startup));
        assert!(r.killed.unwrap().contains("failed startup probe"));
        // The startup probe gates liveness: only `start` ran.
        assert!(fake.execs().iter().all(|(_, cmd)| cmd == &["start"]));
        assert_eq!(fake.count("StopContainer"), 0);
        m.forget_pod(&status.uid);
        assert!(m.results().is_empty());
    }

    #[tokio::test]
    async fn readiness_follows_the_probe_without_killing() {
        let fake = FakeRuntime::new();
        let pod = probed_pod("    readinessProbe: {exec: {command: [ready]}, periodSeconds: 1, failureThreshold: 1}\n");
        let (id, status) = running(&fake, &pod);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let m = ProbeManager::new(fake.cri(), tx, crate::events::EventRecorder::none());
        m.update_pod(&pod, &status, None);
        notified(&mut rx).await;
        assert_eq!(m.results()[&id].ready, Some(true));
        fake.set_exec_exit("a", 1);
        notified(&mut rx).await;
        let r = m.results()[&id].clone();
        assert_eq!((r.ready, r.failed), (Some(false), None));
        assert_eq!(fake.count("StopContainer"), 0);
    }
}
