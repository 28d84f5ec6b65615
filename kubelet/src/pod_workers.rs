//! Pod workers (upstream `pod_workers.go`): one task per pod UID, fed through a mailbox that
//! keeps only the latest update (a `watch` channel), so a burst of updates for one pod
//! costs one sync. A worker goes syncing -> terminating -> terminated: once asked to
//! terminate it ignores further syncs, tears the pod down (retrying until it succeeds),
//! reports `Terminated` and ends.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, watch};

use crate::kuberuntime::cri::CriError;

/// What a worker is asked to do.
#[derive(Debug, Clone)]
pub(crate) enum Work {
    /// Bring the pod to its spec.
    Sync(Arc<Pod>),
    /// Stop and remove the pod. `pod` is None for orphans no source knows.
    Terminate {
        pod: Option<Arc<Pod>>,
        grace_override: Option<i64>,
    },
}

/// What a worker reports back to the sync loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkerResult {
    /// A sync finished; sync again after this long at the latest.
    Synced {
        uid: String,
        requeue_after: Duration,
    },
    /// The pod is gone from the runtime; the worker ended.
    Terminated { uid: String },
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The work itself, provided by the kubelet (and by fakes in tests).
pub(crate) trait PodSyncer: Send + Sync + 'static {
    /// One sync; returns when to sync again at the latest.
    fn sync_pod<'a>(&'a self, pod: &'a Pod) -> BoxFut<'a, Duration>;
    /// Tear the pod down; an error is retried.
    fn terminate_pod<'a>(
        &'a self,
        uid: &'a str,
        pod: Option<&'a Pod>,
        grace_override: Option<i64>,
    ) -> BoxFut<'a, Result<(), CriError>>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerState {
    Syncing,
    Terminating,
}

struct Worker {
    tx: watch::Sender<Option<Work>>,
    state: WorkerState,
}

pub(crate) struct PodWorkers<S: PodSyncer> {
    syncer: Arc<S>,
    workers: HashMap<String, Worker>,
    results: mpsc::UnboundedSender<WorkerResult>,
}

impl<S: PodSyncer> PodWorkers<S> {
    pub(crate) fn new(syncer: Arc<S>, results: mpsc::UnboundedSender<WorkerResult>) -> Self {
        PodWorkers {
            syncer,
            workers: HashMap::new(),
            results,
        }
    }

    pub(crate) fn state(&self, uid: &str) -> Option<WorkerState> {
        self.workers.get(uid).map(|w| w.state)
    }
    /// Hands work to the pod's worker (starting one if needed). Returns false when the
    /// update was dropped because the pod is already terminating.
    pub(crate) fn update_pod(&mut self, uid: &str, work: Work) -> bool {
        let terminate = matches!(work, Work::Terminate { .. });
        if let Some(w) = self.workers.get_mut(uid) {
            if w.state == WorkerState::Terminating {
                return false;
            }
            if terminate {
                w.state = WorkerState::Terminating;
            }
            w.tx.send_replace(Some(work));
            return true;
        }
        let (tx, rx) = watch::channel(None);
        tx.send_replace(Some(work));
        let state = if terminate {
            WorkerState::Terminating
        } else {
            WorkerState::Syncing
        };
        self.workers.insert(uid.to_string(), Worker { tx, state });
        tokio::spawn(run_worker(
            uid.to_string(),
            rx,
            self.syncer.clone(),
            self.results.clone(),
        ));
        true
    }

    /// Forgets a worker that reported `Terminated`.
    pub(crate) fn remove(&mut self, uid: &str) {
        self.workers.remove(uid);
    }
}

async fn run_worker<S: PodSyncer>(
    uid: String,
    mut rx: watch::Receiver<Option<Work>>,
    syncer: Arc<S>,
    results: mpsc::UnboundedSender<WorkerResult>,
) {
    // The first value was set before the task started: take it without waiting.
    rx.mark_changed();
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let Some(work) = rx.borrow_and_update().clone() else {
            continue;
        };
        match work {
            Work::Sync(pod) => {
                let requeue_after = syncer.sync_pod(&pod).await;
                let _ = results.send(WorkerResult::Synced {
                    uid: uid.clone(),
                    requeue_after,
                });
            }
            Work::Terminate {
                pod,
                grace_override,
            } => {
                let mut delay = Duration::from_millis(500);
                loop {
                    match syncer
                        .terminate_pod(&uid, pod.as_deref(), grace_override)
                        .await
                    {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(%uid, error = %e, "terminating pod failed, will retry");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(10));
                        }
                    }
                }
                let _ = results.send(WorkerResult::Terminated { uid });
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake {
        log: Mutex<Vec<String>>,
        gate: tokio::sync::Notify,
    }

    impl PodSyncer for Fake {
        fn sync_pod<'a>(&'a self, pod: &'a Pod) -> BoxFut<'a, Duration> {
            Box::pin(async move {
                let name = pod.metadata.name.clone().unwrap();
                self.log.lock().unwrap().push(format!("sync {name}"));
                if name == "first" {
                    // Hold the worker busy until the test has queued more updates.
                    self.gate.notified().await;
                }
                Duration::from_secs(60)
            })
        }
        fn terminate_pod<'a>(
            &'a self,
            uid: &'a str,
            _pod: Option<&'a Pod>,
            _g: Option<i64>,
        ) -> BoxFut<'a, Result<(), CriError>> {
            Box::pin(async move {
                self.log.lock().unwrap().push(format!("terminate {uid}"));
                Ok(())
            })
        }
    }

    fn pod(name: &str) -> Arc<Pod> {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        Arc::new(p)
    }

    #[tokio::test]
    async fn latest_update_wins_then_terminates() {
        let fake = Arc::new(Fake::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut w = PodWorkers::new(fake.clone(), tx);
        w.update_pod("u", Work::Sync(pod("first")));
        // Wait until the first sync runs, then queue three updates while it is busy.
        while fake.log.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        w.update_pod("u", Work::Sync(pod("second")));
        w.update_pod("u", Work::Sync(pod("third")));
        fake.gate.notify_one();
        assert!(matches!(rx.recv().await, Some(WorkerResult::Synced { .. })));
        assert!(matches!(rx.recv().await, Some(WorkerResult::Synced { .. })));
        assert_eq!(*fake.log.lock().unwrap(), ["sync first", "sync third"]);
        assert!(w.update_pod(
            "u",
            Work::Terminate {
                pod: None,
                grace_override: None
            }
        ));
        assert_eq!(w.state("u"), Some(WorkerState::Terminating));
        // Syncs are refused while terminating.
        assert!(!w.update_pod("u", Work::Sync(pod("late"))));
        assert_eq!(
            rx.recv().await,
            Some(WorkerResult::Terminated { uid: "u".into() })
        );
        w.remove("u");
        assert_eq!(w.state("u"), None);
        assert_eq!(fake.log.lock().unwrap().last().unwrap(), "terminate u");
    }
}
