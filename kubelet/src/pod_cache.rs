//! The pod cache (upstream `kubecontainer.Cache`): the runtime's view of each pod as the
//! PLEG relist last saw it, with the time that view was taken. A pod worker asks for a view
//! newer than its last sync ([`PodCache::get_newer_than`]) instead of asking CRI again, so
//! a sync costs no list calls. The global timestamp says "every pod without an entry had
//! nothing in the runtime at that time".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use crate::container::PodStatus;

#[derive(Debug, Default)]
struct Inner {
    pods: HashMap<String, (PodStatus, Instant)>,
    /// Every pod is known as of this time (set after each relist).
    timestamp: Option<Instant>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct PodCache {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
}

impl PodCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the pod's status as of `time`; an older view never replaces a newer one.
    pub(crate) fn set(&self, uid: &str, status: PodStatus, time: Instant) {
        {
            let mut g = self.lock();
            match g.pods.get(uid) {
                Some((_, t)) if *t > time => return,
                _ => {
                    g.pods.insert(uid.to_string(), (status, time));
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Every pod is up to date as of `time` (after a relist that started then).
    pub(crate) fn update_time(&self, time: Instant) {
        {
            let mut g = self.lock();
            if g.timestamp.is_some_and(|t| t >= time) {
                return;
            }
            g.timestamp = Some(time);
            // Pods with nothing in the runtime need no entry once the timestamp answers for
            // them; until then an empty entry keeps an older view from coming back.
            g.pods.retain(|_, (st, t)| {
                !(st.sandboxes.is_empty() && st.containers.is_empty() && *t <= time)
            });
        }
        self.changed.notify_waiters();
    }

    /// The pod's status if the cache knows it newer than `since` (any view when None).
    fn newer_than(&self, uid: &str, since: Option<Instant>) -> Option<PodStatus> {
        let g = self.lock();
        let newer = |t: Instant| since.is_none_or(|s| t > s);
        match g.pods.get(uid) {
            Some((st, t)) if newer(*t) || g.timestamp.is_some_and(newer) => Some(st.clone()),
            None if g.timestamp.is_some_and(newer) => Some(PodStatus {
                uid: uid.to_string(),
                ..Default::default()
            }),
            _ => None,
        }
    }

    /// Waits until the cache holds a view of the pod newer than `since` (upstream
    /// `GetNewerThan`): its own entry, or a relist that found nothing for it.
    pub(crate) async fn get_newer_than(&self, uid: &str, since: Option<Instant>) -> PodStatus {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a set() between the check and the await wakes us.
            changed.as_mut().enable();
            if let Some(st) = self.newer_than(uid, since) {
                return st;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn status(uid: &str, name: &str) -> PodStatus {
        PodStatus {
            uid: uid.into(),
            name: name.into(),
            sandboxes: vec![crate::container::SandboxStatus {
                id: format!("sb-{name}"),
                state: crate::container::SandboxState::Ready,
                attempt: 0,
                created_at: 1,
                ips: vec![],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn set_keeps_the_newer_entry() {
        let c = PodCache::default();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        c.set("u", status("u", "new"), t1);
        c.set("u", status("u", "old"), t0);
        assert_eq!(c.newer_than("u", None).unwrap().name, "new");
        c.set("u", status("u", "newer"), t1 + Duration::from_millis(1));
        assert_eq!(c.newer_than("u", Some(t1)).unwrap().name, "newer");
    }

    #[test]
    fn global_timestamp_answers_for_pods_without_an_entry() {
        let c = PodCache::default();
        let t0 = Instant::now();
        assert!(c.newer_than("u", None).is_none(), "nothing relisted yet");
        c.update_time(t0);
        let st = c.newer_than("u", None).unwrap();
        assert_eq!((st.uid.as_str(), st.sandboxes.len()), ("u", 0));
        assert!(c.newer_than("u", Some(t0)).is_none(), "not newer than t0");
        c.set("u", status("u", "x"), t0);
        c.update_time(t0 + Duration::from_millis(1));
        assert_eq!(c.newer_than("u", Some(t0)).unwrap().name, "x");
    }

    #[test]
    fn an_empty_entry_keeps_an_older_view_out_until_the_timestamp_passes_it() {
        let c = PodCache::default();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(1);
        // The pod was removed at t1; a relist that started at t0 still saw its sandbox.
        c.set("u", PodStatus::default(), t1);
        c.set("u", status("u", "stale"), t0);
        c.update_time(t0);
        assert_eq!(c.newer_than("u", None).unwrap().sandboxes.len(), 0);
        c.update_time(t1);
        assert!(c.lock().pods.is_empty(), "the timestamp answers for it now");
        assert_eq!(c.newer_than("u", None).unwrap().uid, "u");
    }

    #[tokio::test]
    async fn get_newer_than_waits_for_a_newer_view() {
        let c = PodCache::default();
        let t0 = Instant::now();
        c.set("u", status("u", "old"), t0);
        c.update_time(t0);
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.get_newer_than("u", Some(t0)).await })
        };
        // The old view does not satisfy it.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        c.set("u", status("u", "new"), t0 + Duration::from_millis(1));
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken by set")
            .unwrap();
        assert_eq!(got.name, "new");
    }

    #[tokio::test]
    async fn get_newer_than_wakes_on_a_relist_timestamp() {
        let c = PodCache::default();
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.get_newer_than("u", None).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "no relist yet");
        c.update_time(Instant::now());
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken by update_time")
            .unwrap();
        assert_eq!(got.uid, "u");
    }
}
