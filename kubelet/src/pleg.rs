//! The pod lifecycle event generator (upstream's generic PLEG): relists every sandbox and
//! container through CRI each period, diffs against the previous relist and emits
//! ContainerStarted / ContainerDied / ContainerRemoved / ContainerChanged and sandbox
//! events per pod UID. It also keeps what the runtime holds per pod, for housekeeping.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodus_proto::runtime::v1 as cri;
use tokio::sync::mpsc;

use crate::kuberuntime::cri::{Cri, CriError};
use crate::kuberuntime::labels;
use crate::kuberuntime::RuntimeManager;
use crate::pod_cache::PodCache;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlegEventKind {
    ContainerStarted,
    ContainerDied,
    ContainerRemoved,
    /// Created or unknown state.
    ContainerChanged,
    SandboxChanged,
    SandboxRemoved,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlegEvent {
    pub(crate) uid: String,
    pub(crate) kind: PlegEventKind,
    /// Container or sandbox ID.
    pub(crate) id: String,
}

/// What the runtime holds for one pod UID (from labels), for housekeeping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RuntimePod {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) sandboxes: usize,
    pub(crate) containers: usize,
}

/// One relist: state of every object by ID, with its pod UID.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Relist {
    pub(crate) containers: HashMap<String, (String, i32)>,
    pub(crate) sandboxes: HashMap<String, (String, i32)>,
}

impl Relist {
    /// Every pod UID this relist saw.
    fn uids(&self) -> impl Iterator<Item = &String> {
        self.containers
            .values()
            .chain(self.sandboxes.values())
            .map(|(uid, _)| uid)
    }

    pub(crate) fn from_cri(sandboxes: &[cri::PodSandbox], containers: &[cri::Container]) -> Self {
        let uid = |l: &HashMap<String, String>| l.get(labels::POD_UID_LABEL).cloned();
        Relist {
            sandboxes: sandboxes
                .iter()
                .filter_map(|s| Some((s.id.clone(), (uid(&s.labels)?, s.state))))
                .collect(),
            containers: containers
                .iter()
                .filter_map(|c| Some((c.id.clone(), (uid(&c.labels)?, c.state))))
                .collect(),
        }
    }
}

/// The events between two relists, ordered by pod.
pub(crate) fn diff(old: &Relist, new: &Relist) -> Vec<PlegEvent> {
    let mut out = Vec::new();
    for (id, (uid, state)) in &new.containers {
        let old_state = old.containers.get(id).map(|(_, s)| *s);
        if old_state == Some(*state) {
            continue;
        }
        let kind = match cri::ContainerState::try_from(*state) {
            Ok(cri::ContainerState::ContainerRunning) => PlegEventKind::ContainerStarted,
            Ok(cri::ContainerState::ContainerExited) => PlegEventKind::ContainerDied,
            _ => PlegEventKind::ContainerChanged,
        };
        out.push(PlegEvent {
            uid: uid.clone(),
            kind,
            id: id.clone(),
        });
    }
    for (id, (uid, _)) in &old.containers {
        if !new.containers.contains_key(id) {
            out.push(PlegEvent {
                uid: uid.clone(),
                kind: PlegEventKind::ContainerRemoved,
                id: id.clone(),
            });
        }
    }
    for (id, (uid, state)) in &new.sandboxes {
        if old.sandboxes.get(id).map(|(_, s)| *s) != Some(*state) {
            out.push(PlegEvent {
                uid: uid.clone(),
                kind: PlegEventKind::SandboxChanged,
                id: id.clone(),
            });
        }
    }
    for (id, (uid, _)) in &old.sandboxes {
        if !new.sandboxes.contains_key(id) {
            out.push(PlegEvent {
                uid: uid.clone(),
                kind: PlegEventKind::SandboxRemoved,
                id: id.clone(),
            });
        }
    }
    out.sort_by(|a, b| (&a.uid, &a.id).cmp(&(&b.uid, &b.id)));
    out
}

/// State shared with the sync loop and the health check.
#[derive(Debug, Clone, Default)]
pub(crate) struct PlegShared {
    inner: Arc<Mutex<SharedInner>>,
}

#[derive(Debug, Default)]
struct SharedInner {
    pods: HashMap<String, RuntimePod>,
    last_relist: Option<Instant>,
    relisted_once: bool,
}

impl PlegShared {
    /// The pods the runtime holds, by UID (as of the last relist).
    pub(crate) fn runtime_pods(&self) -> HashMap<String, RuntimePod> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pods
            .clone()
    }

    /// Healthy when a relist succeeded within `threshold` (upstream: 3 minutes).
    pub(crate) fn healthy(&self, threshold: Duration) -> bool {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match g.last_relist {
            Some(t) => t.elapsed() < threshold,
            None => true,
        }
    }

    pub(crate) fn relisted_once(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .relisted_once
    }
}

/// Where the relist writes each pod's status (upstream's PLEG holds the runtime and the
/// pod cache the same way).
pub(crate) struct PlegCache {
    pub(crate) runtime: Arc<RuntimeManager>,
    pub(crate) cache: PodCache,
}

pub(crate) struct Pleg {
    pub(crate) cri: Cri,
    pub(crate) period: Duration,
    pub(crate) shared: PlegShared,
    /// Filled by each relist when set.
    pub(crate) cache: Option<PlegCache>,
}

type Lists = (Vec<cri::PodSandbox>, Vec<cri::Container>);

impl Pleg {
    async fn list(&self) -> Result<Lists, CriError> {
        tokio::try_join!(
            self.cri.list_pod_sandbox(HashMap::new()),
            self.cri.list_containers(HashMap::new()),
        )
    }

    #[cfg(test)]
    async fn relist(&self) -> Result<(Relist, HashMap<String, RuntimePod>), CriError> {
        let (sandboxes, containers) = self.list().await?;
        Ok(summarize(&sandboxes, &containers))
    }

    /// Builds each of `uids`' status from the relist's lists and writes it into the cache
    /// as of `time`; then, when every pod was read, marks the whole cache fresh as of
    /// `time`. Returns the pods that could not be read (inspected again next relist).
    async fn update_cache(
        &self,
        c: &PlegCache,
        uids: HashSet<String>,
        (sandboxes, containers): Lists,
        time: Instant,
    ) -> HashSet<String> {
        let uid_of = |l: &HashMap<String, String>| l.get(labels::POD_UID_LABEL).cloned();
        let mut by_pod: HashMap<String, Lists> = uids
            .iter()
            .map(|u| (u.clone(), Default::default()))
            .collect();
        for s in sandboxes {
            if let Some(p) = uid_of(&s.labels).and_then(|u| by_pod.get_mut(&u)) {
                p.0.push(s);
            }
        }
        for ct in containers {
            if let Some(p) = uid_of(&ct.labels).and_then(|u| by_pod.get_mut(&u)) {
                p.1.push(ct);
            }
        }
        let mut failed = HashSet::new();
        for (uid, (s, ct)) in by_pod {
            match c.runtime.pod_status_from(&uid, s, ct).await {
                Ok(st) => c.cache.set(&uid, st, time),
                Err(e) => {
                    tracing::warn!(%uid, error = %e, "PLEG cannot read the pod's status");
                    failed.insert(uid);
                }
            }
        }
        // A pod that could not be read must not look fresh (its entry is stale).
        if failed.is_empty() {
            c.cache.update_time(time);
        }
        failed
    }
}

/// The relist's per-object states and what each pod holds.
fn summarize(
    sandboxes: &[cri::PodSandbox],
    containers: &[cri::Container],
) -> (Relist, HashMap<String, RuntimePod>) {
    let mut pods: HashMap<String, RuntimePod> = HashMap::new();
    for s in sandboxes {
        if let Some(uid) = s.labels.get(labels::POD_UID_LABEL) {
            let p = pods.entry(uid.clone()).or_default();
            if let Some(m) = &s.metadata {
                p.name = m.name.clone();
                p.namespace = m.namespace.clone();
            }
            p.sandboxes += 1;
        }
    }
    for c in containers {
        if let Some(uid) = c.labels.get(labels::POD_UID_LABEL) {
            pods.entry(uid.clone()).or_default().containers += 1;
        }
    }
    (Relist::from_cri(sandboxes, containers), pods)
}

/// What a relist keeps for the next one.
#[derive(Debug, Default)]
pub(crate) struct RelistState {
    old: Relist,
    /// Pods whose status must be read at the next relist; None: all of them (the first).
    reinspect: Option<HashSet<String>>,
}

impl Pleg {
    /// One relist: lists, fills the pod cache and the shared state, and returns the events
    /// since the previous relist.
    pub(crate) async fn relist_once(
        &self,
        state: &mut RelistState,
    ) -> Result<Vec<PlegEvent>, CriError> {
        let started = Instant::now();
        let lists = self.list().await?;
        let (new, pods) = summarize(&lists.0, &lists.1);
        record_metrics(&new, started.elapsed().as_secs_f64());
        let events = diff(&state.old, &new);
        // The cache is written before the events go out: a worker they wake finds its
        // pod's new state there.
        if let Some(c) = &self.cache {
            let mut uids: HashSet<String> = match state.reinspect.take() {
                Some(r) => r,
                None => new.uids().chain(state.old.uids()).cloned().collect(),
            };
            uids.extend(events.iter().map(|e| e.uid.clone()));
            state.reinspect = Some(self.update_cache(c, uids, lists, started).await);
        }
        {
            let mut g = self.shared.inner.lock().unwrap_or_else(|e| e.into_inner());
            g.pods = pods;
            g.last_relist = Some(Instant::now());
            g.relisted_once = true;
        }
        state.old = new;
        Ok(events)
    }

    pub(crate) async fn run(self, tx: mpsc::Sender<PlegEvent>) {
        let mut ticker = tokio::time::interval(self.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state = RelistState::default();
        let mut failing = false;
        loop {
            ticker.tick().await;
            match self.relist_once(&mut state).await {
                Ok(events) => {
                    if failing {
                        tracing::info!("PLEG relist works again");
                        failing = false;
                    }
                    for ev in events {
                        tracing::debug!(uid = %ev.uid, kind = ?ev.kind, id = %ev.id, "PLEG event");
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "PLEG relist failed");
                        failing = true;
                    }
                }
            }
        }
    }
}

/// Running pods (a ready sandbox) and containers by state, for `/metrics`.
fn record_metrics(r: &Relist, secs: f64) {
    let ready = cri::PodSandboxState::SandboxReady as i32;
    let running_pods = r
        .sandboxes
        .values()
        .filter(|(_, st)| *st == ready)
        .map(|(uid, _)| uid)
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    let mut containers = std::collections::BTreeMap::new();
    for (_, st) in r.containers.values() {
        let name = match cri::ContainerState::try_from(*st) {
            Ok(cri::ContainerState::ContainerCreated) => "created",
            Ok(cri::ContainerState::ContainerRunning) => "running",
            Ok(cri::ContainerState::ContainerExited) => "exited",
            _ => "unknown",
        };
        *containers.entry(name).or_insert(0u64) += 1;
    }
    crate::metrics::global().relist(secs, running_pods, containers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relist(
        containers: &[(&str, &str, cri::ContainerState)],
        sandboxes: &[(&str, &str, i32)],
    ) -> Relist {
        Relist {
            containers: containers
                .iter()
                .map(|(id, uid, s)| (id.to_string(), (uid.to_string(), *s as i32)))
                .collect(),
            sandboxes: sandboxes
                .iter()
                .map(|(id, uid, s)| (id.to_string(), (uid.to_string(), *s)))
                .collect(),
        }
    }

    #[test]
    fn diff_reports_lifecycle_events() {
        use cri::ContainerState::*;
        let a = relist(
            &[
                ("c1", "u1", ContainerRunning),
                ("c2", "u2", ContainerRunning),
            ],
            &[("s1", "u1", 0)],
        );
        let b = relist(
            &[
                ("c1", "u1", ContainerExited),
                ("c3", "u1", ContainerRunning),
                ("c4", "u3", ContainerCreated),
            ],
            &[("s1", "u1", 1)],
        );
        let ev = diff(&a, &b);
        let got: Vec<(&str, PlegEventKind, &str)> = ev
            .iter()
            .map(|e| (e.uid.as_str(), e.kind, e.id.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("u1", PlegEventKind::ContainerDied, "c1"),
                ("u1", PlegEventKind::ContainerStarted, "c3"),
                ("u1", PlegEventKind::SandboxChanged, "s1"),
                ("u2", PlegEventKind::ContainerRemoved, "c2"),
                ("u3", PlegEventKind::ContainerChanged, "c4"),
            ]
        );
        assert!(diff(&b, &b).is_empty());
        let gone = diff(&b, &Relist::default());
        assert!(gone.iter().any(|e| e.kind == PlegEventKind::SandboxRemoved));
    }

    // The relist on the fake runtime.

    use crate::kuberuntime::cri::fake::FakeRuntime;
    use cri::ContainerState as S;
    use std::sync::Arc;

    fn pleg(fake: &Arc<FakeRuntime>, period: Duration) -> Pleg {
        Pleg {
            cri: fake.cri(),
            period,
            shared: PlegShared::default(),
            cache: None,
        }
    }

    fn kinds(ev: &[PlegEvent]) -> Vec<(PlegEventKind, &str)> {
        ev.iter().map(|e| (e.kind, e.id.as_str())).collect()
    }

    #[tokio::test]
    async fn relist_reports_a_container_started_died_and_removed() {
        let fake = FakeRuntime::new();
        let p = pleg(&fake, Duration::from_secs(1));
        let sb = fake.add_sandbox("u1", true);
        let c = fake.add_container("u1", &sb, "a", S::ContainerRunning);
        let (r1, _) = p.relist().await.unwrap();
        let ev = diff(&Relist::default(), &r1);
        assert_eq!(
            kinds(&ev),
            [
                (PlegEventKind::ContainerStarted, c.as_str()),
                (PlegEventKind::SandboxChanged, sb.as_str())
            ]
        );
        assert!(ev.iter().all(|e| e.uid == "u1"));
        fake.exit_container(&c, 2);
        let (r2, _) = p.relist().await.unwrap();
        assert_eq!(
            kinds(&diff(&r1, &r2)),
            [(PlegEventKind::ContainerDied, c.as_str())]
        );
        fake.cri().remove_container(&c).await.unwrap();
        let (r3, _) = p.relist().await.unwrap();
        assert_eq!(
            kinds(&diff(&r2, &r3)),
            [(PlegEventKind::ContainerRemoved, c.as_str())]
        );
        fake.kill_sandbox(&sb);
        let (r4, _) = p.relist().await.unwrap();
        assert_eq!(
            kinds(&diff(&r3, &r4)),
            [(PlegEventKind::SandboxChanged, sb.as_str())]
        );
        fake.cri().remove_pod_sandbox(&sb).await.unwrap();
        let (r5, _) = p.relist().await.unwrap();
        assert_eq!(
            kinds(&diff(&r4, &r5)),
            [(PlegEventKind::SandboxRemoved, sb.as_str())]
        );
    }

    #[tokio::test]
    async fn relist_is_two_list_calls_and_counts_what_each_pod_holds() {
        let fake = FakeRuntime::new();
        let p = pleg(&fake, Duration::from_secs(1));
        let s1 = fake.add_sandbox("u1", true);
        fake.add_container("u1", &s1, "a", S::ContainerRunning);
        fake.add_container("u1", &s1, "b", S::ContainerExited);
        let s2 = fake.add_sandbox("u2", false);
        fake.add_sandbox("u2", true);
        fake.add_container("u2", &s2, "c", S::ContainerCreated);
        fake.clear_calls();
        let (_, pods) = p.relist().await.unwrap();
        assert_eq!(fake.count("ListPodSandbox"), 1);
        assert_eq!(fake.count("ListContainers"), 1);
        assert_eq!(fake.calls().len(), 2, "no per-object calls");
        let u1 = &pods["u1"];
        assert_eq!((u1.sandboxes, u1.containers), (1, 2));
        assert_eq!((u1.name.as_str(), u1.namespace.as_str()), ("p", "n"));
        assert_eq!((pods["u2"].sandboxes, pods["u2"].containers), (2, 1));
    }

    #[tokio::test]
    async fn relist_ignores_objects_without_a_pod_uid() {
        let fake = FakeRuntime::new();
        let p = pleg(&fake, Duration::from_secs(1));
        // A sandbox someone else made with crictl: no kubelet labels.
        let id = fake
            .cri()
            .run_pod_sandbox(cri::PodSandboxConfig::default(), String::new())
            .await
            .unwrap();
        let (r, pods) = p.relist().await.unwrap();
        assert!(r.sandboxes.is_empty(), "{id} is not ours");
        assert!(pods.is_empty());
    }

    #[tokio::test]
    async fn relist_changed_state_of_a_created_container() {
        let fake = FakeRuntime::new();
        let p = pleg(&fake, Duration::from_secs(1));
        let sb = fake.add_sandbox("u", true);
        let c = fake.add_container("u", &sb, "a", S::ContainerCreated);
        let (r1, _) = p.relist().await.unwrap();
        assert!(kinds(&diff(&Relist::default(), &r1))
            .contains(&(PlegEventKind::ContainerChanged, c.as_str())));
        fake.cri().start_container(&c).await.unwrap();
        let (r2, _) = p.relist().await.unwrap();
        assert_eq!(
            kinds(&diff(&r1, &r2)),
            [(PlegEventKind::ContainerStarted, c.as_str())]
        );
    }

    /// A PLEG that fills a pod cache, with the runtime manager reading the fake.
    fn cached_pleg(fake: &Arc<FakeRuntime>, dir: &std::path::Path) -> (Pleg, PodCache) {
        let mut rm = RuntimeManager::new(
            fake.cri(),
            crate::kuberuntime::sandbox::NodePaths {
                pod_logs_dir: dir.join("logs"),
                cgroup_root: "/nodus-unit".into(),
                dns: Default::default(),
                seccomp_profile_root: dir.join("seccomp"),
                seccomp_default: false,
            },
            dir.join("root"),
            dir.join("resolv.conf"),
        );
        rm.pod_cgroups = false;
        let cache = PodCache::default();
        let mut p = pleg(fake, Duration::from_secs(1));
        p.cache = Some(PlegCache {
            runtime: Arc::new(rm),
            cache: cache.clone(),
        });
        (p, cache)
    }

    #[tokio::test]
    async fn relist_fills_the_pod_cache_and_wakes_a_waiting_reader() {
        use crate::container::ContainerState as C;
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::new();
        let (p, cache) = cached_pleg(&fake, dir.path());
        let sb = fake.add_sandbox("u1", true);
        let c = fake.add_container("u1", &sb, "a", S::ContainerRunning);
        fake.add_sandbox("u2", false);
        let mut state = RelistState::default();
        p.relist_once(&mut state).await.unwrap();
        // The first relist reads every pod.
        let u1 = cache.get_newer_than("u1", None).await;
        assert_eq!((u1.sandboxes.len(), u1.containers.len()), (1, 1));
        assert_eq!(u1.containers[0].state, C::Running);
        assert_eq!(cache.get_newer_than("u2", None).await.sandboxes.len(), 1);
        let first = Instant::now();
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_newer_than("u1", Some(first)).await })
        };
        // A relist with nothing changed reads no pod again: just the two lists.
        fake.clear_calls();
        p.relist_once(&mut state).await.unwrap();
        assert_eq!(fake.calls().len(), 2, "{:?}", fake.calls());
        let u3 = tokio::time::timeout(
            Duration::from_secs(10),
            cache.get_newer_than("u3", Some(first)),
        )
        .await
        .expect("the relist's timestamp answers for a pod the runtime lacks");
        assert!(u3.sandboxes.is_empty() && u3.containers.is_empty());
        fake.exit_container(&c, 3);
        p.relist_once(&mut state).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken by a relist")
            .unwrap();
        let dead = got.find_container("a").unwrap();
        assert_eq!((dead.state, dead.exit_code), (C::Exited, 3));
    }

    #[tokio::test]
    async fn a_pod_that_cannot_be_read_keeps_the_cache_stale_until_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::new();
        let (p, cache) = cached_pleg(&fake, dir.path());
        let mut state = RelistState::default();
        p.relist_once(&mut state).await.unwrap();
        let t0 = Instant::now();
        let sb = fake.add_sandbox("u", true);
        fake.add_container("u", &sb, "a", S::ContainerRunning);
        fake.inject_error("ContainerStatus", tonic::Code::Unavailable);
        p.relist_once(&mut state).await.unwrap();
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_newer_than("u", Some(t0)).await })
        };
        // The next relist has no event for it but reads it again.
        p.relist_once(&mut state).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("fresh once the pod was read")
            .unwrap();
        assert_eq!(got.containers.len(), 1);
    }

    async fn recv(rx: &mut mpsc::Receiver<PlegEvent>) -> PlegEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a PLEG event")
            .unwrap()
    }

    #[tokio::test]
    async fn run_survives_a_failed_relist_and_sends_events_once() {
        let fake = FakeRuntime::new();
        let sb = fake.add_sandbox("u", true);
        let c = fake.add_container("u", &sb, "a", S::ContainerRunning);
        fake.inject_error("ListContainers", tonic::Code::Unavailable);
        let p = pleg(&fake, Duration::from_millis(10));
        let shared = p.shared.clone();
        assert!(!shared.relisted_once());
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(p.run(tx));
        let mut got = vec![recv(&mut rx).await, recv(&mut rx).await];
        got.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(
            kinds(&got),
            [
                (PlegEventKind::ContainerStarted, c.as_str()),
                (PlegEventKind::SandboxChanged, sb.as_str())
            ]
        );
        assert!(shared.relisted_once());
        assert!(shared.healthy(Duration::from_secs(180)));
        assert_eq!(shared.runtime_pods()["u"].containers, 1);
        // Nothing changes for three more relists: no event.
        let seen = fake.count("ListContainers");
        nodus_testkit::wait_until_async(Duration::from_secs(10), "three relists", || {
            let n = fake.count("ListContainers");
            async move { (n >= seen + 3).then_some(()) }
        })
        .await;
        assert!(rx.try_recv().is_err());
        // A death is reported.
        fake.exit_container(&c, 1);
        let ev = recv(&mut rx).await;
        assert_eq!(
            (ev.kind, ev.id.as_str()),
            (PlegEventKind::ContainerDied, c.as_str())
        );
        task.abort();
    }
}
