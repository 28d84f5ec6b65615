//! Per-container restart back-off (CrashLoopBackOff), as upstream's `flowcontrol.Backoff`
//! used by the kubelet: the first restart is immediate, then 10 s, doubling up to 300 s.
//! An entry is forgotten (back to the start) when the container ran for 10 minutes, or when
//! nothing happened for twice the maximum. Times are explicit so the logic is testable.

use std::collections::HashMap;

use crate::container::{Nanos, NANOS_PER_SEC};

pub(crate) const INITIAL: Nanos = 10 * NANOS_PER_SEC;
pub(crate) const MAX: Nanos = 300 * NANOS_PER_SEC;
/// A container that ran this long before exiting starts over from the initial back-off.
pub(crate) const RESET_AFTER_RUNNING: Nanos = 600 * NANOS_PER_SEC;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    backoff: Nanos,
    last_update: Nanos,
}

/// Back-off state keyed by container (see [`key`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct Backoff {
    entries: HashMap<String, Entry>,
}

/// The key of one container of one pod: pod UID, container name and spec hash (a new spec
/// starts without back-off, as upstream's stable key).
pub(crate) fn key(pod_uid: &str, container: &str, hash: &str) -> String {
    format!("{pod_uid}_{container}_{hash}")
}

fn expired(event: Nanos, last_update: Nanos) -> bool {
    event - last_update > 2 * MAX
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// How long a restart must still wait, if at all, for a container that ran from
    /// `started_at` to `finished_at`.
    pub(crate) fn remaining(
        &self,
        key: &str,
        started_at: Nanos,
        finished_at: Nanos,
        now: Nanos,
    ) -> Option<Nanos> {
        let e = self.entries.get(key)?;
        if expired(finished_at, e.last_update)
            || (started_at > 0 && finished_at - started_at >= RESET_AFTER_RUNNING)
        {
            return None;
        }
        let waited = now - finished_at;
        (waited < e.backoff).then(|| e.backoff - waited)
    }

    /// Records a restart: sets the next back-off (initial, or doubled up to the maximum).
    pub(crate) fn next(&mut self, key: &str, started_at: Nanos, finished_at: Nanos, now: Nanos) {
        let reset = started_at > 0 && finished_at - started_at >= RESET_AFTER_RUNNING;
        let entry = match self.entries.get(key) {
            Some(e) if !reset && !expired(finished_at, e.last_update) => Entry {
                backoff: (e.backoff * 2).min(MAX),
                last_update: now,
            },
            _ => Entry {
                backoff: INITIAL,
                last_update: now,
            },
        };
        self.entries.insert(key.to_string(), entry);
    }

    /// For events that are not container runs (image pulls, upstream's
    /// `IsInBackOffSinceUpdate`): whether `now` is within the back-off of the last failure.
    pub(crate) fn in_backoff_since_update(&self, key: &str, now: Nanos) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| !expired(now, e.last_update) && now - e.last_update < e.backoff)
    }

    /// Records a failure at `now` of something that is not a container run.
    pub(crate) fn failed_at(&mut self, key: &str, now: Nanos) {
        self.next(key, 0, now, now);
    }

    /// Forgets a key (its operation succeeded).
    pub(crate) fn reset(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// The current back-off of a key (for messages).
    pub(crate) fn current(&self, key: &str) -> Option<Nanos> {
        self.entries.get(key).map(|e| e.backoff)
    }

    /// Forgets every key of a pod (when it is terminated).
    pub(crate) fn forget_pod(&mut self, pod_uid: &str) {
        let prefix = format!("{pod_uid}_");
        self.entries.retain(|k, _| !k.starts_with(&prefix));
    }

    /// Drops entries untouched for twice the maximum.
    pub(crate) fn gc(&mut self, now: Nanos) {
        self.entries.retain(|_, e| !expired(now, e.last_update));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const S: Nanos = NANOS_PER_SEC;

    #[test]
    fn first_restart_is_immediate_then_doubles_to_the_cap() {
        let mut b = Backoff::new();
        let k = "uid_c_h";
        let mut t = 1_000 * S;
        // First exit: no entry, restart now.
        assert_eq!(b.remaining(k, t - S, t, t), None);
        b.next(k, t - S, t, t);
        let mut expected = 10 * S;
        for _ in 0..8 {
            // The restarted container runs 1 s and exits again.
            let started = t + S;
            let finished = started + S;
            assert_eq!(b.remaining(k, started, finished, finished), Some(expected));
            assert_eq!(
                b.remaining(k, started, finished, finished + expected - S),
                Some(S)
            );
            assert_eq!(b.remaining(k, started, finished, finished + expected), None);
            t = finished + expected;
            b.next(k, started, finished, t);
            expected = (expected * 2).min(MAX);
        }
        assert_eq!(b.current(k), Some(MAX));
    }

    #[test]
    fn running_ten_minutes_resets() {
        let mut b = Backoff::new();
        let k = "uid_c_h";
        b.next(k, 0, 100 * S, 100 * S);
        b.next(k, 101 * S, 102 * S, 112 * S);
        assert_eq!(b.current(k), Some(20 * S));
        // Runs 10 minutes, then exits: restart at once, back to 10 s.
        let (st, fin) = (113 * S, 113 * S + RESET_AFTER_RUNNING);
        assert_eq!(b.remaining(k, st, fin, fin), None);
        b.next(k, st, fin, fin);
        assert_eq!(b.current(k), Some(INITIAL));
        // Just under 10 minutes does not reset.
        let (st, fin) = (fin + S, fin + S + RESET_AFTER_RUNNING - S);
        assert!(b.remaining(k, st, fin, fin).is_some());
    }

    #[test]
    fn image_pull_back_off_since_the_last_failure() {
        let mut b = Backoff::new();
        let k = "uid_registry.test/app:1";
        assert!(!b.in_backoff_since_update(k, 100 * S));
        b.failed_at(k, 100 * S);
        assert!(b.in_backoff_since_update(k, 109 * S));
        assert!(!b.in_backoff_since_update(k, 110 * S));
        b.failed_at(k, 110 * S);
        assert_eq!(b.current(k), Some(20 * S));
        assert!(b.in_backoff_since_update(k, 129 * S));
        b.reset(k);
        assert!(!b.in_backoff_since_update(k, 111 * S));
    }

    #[test]
    fn keys_are_per_pod_and_forgotten() {
        let mut b = Backoff::new();
        b.next(&key("u1", "c", "h"), 0, S, S);
        b.next(&key("u2", "c", "h"), 0, S, S);
        b.forget_pod("u1");
        assert_eq!(b.current(&key("u1", "c", "h")), None);
        assert_eq!(b.current(&key("u2", "c", "h")), Some(INITIAL));
        b.gc(S + 2 * MAX + 1);
        assert_eq!(b.current(&key("u2", "c", "h")), None);
    }
}
