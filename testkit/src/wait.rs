//! Waiting for a condition instead of sleeping: poll it until it holds, fail naming what
//! was awaited, for how long, and what was seen last.
//!
//! A fixed sleep followed by an assert is either too short on a loaded machine (a flaky
//! test) or longer than needed (a slow one). These poll the condition itself: at once,
//! then after 10 ms, doubling up to [`POLL`].
//!
//! A condition returns one of ([`Check`]):
//! - `bool`: done when true;
//! - `Option<T>`: done with the value when `Some`;
//! - `Result<T, E>`: done with the value when `Ok`; the last `Err` is in the timeout
//!   message (so a failure says "still 403 Forbidden", not only "timed out").
//!
//! A sleep that is itself what a test checks ("nothing restarts during 5 s") stays a sleep.

use std::fmt::Display;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// The longest pause between two looks at a condition.
pub const POLL: Duration = Duration::from_millis(100);
const FIRST_POLL: Duration = Duration::from_millis(10);

/// What a condition given to [`wait_until`] returns: done (with a value) or not yet
/// (with what was seen, if it says).
pub trait Check {
    type Value;
    fn check(self) -> Result<Self::Value, Option<String>>;
}

impl Check for bool {
    type Value = ();
    fn check(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Check for Option<T> {
    type Value = T;
    fn check(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Check for Result<T, E> {
    type Value = T;
    fn check(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// A condition that did not hold in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "timed out after {timeout:?} waiting for {what}{}",
    last.as_ref().map(|l| format!("; last seen: {l}")).unwrap_or_default()
)]
pub struct TimedOut {
    pub what: String,
    pub timeout: Duration,
    /// The condition's last `Err`, when it returns a `Result`.
    pub last: Option<String>,
}

impl From<TimedOut> for crate::Error {
    fn from(e: TimedOut) -> Self {
        crate::Error::Timeout {
            what: match e.last {
                Some(last) => format!("{} ({last})", e.what),
                None => e.what,
            },
            seconds: e.timeout.as_secs(),
        }
    }
}

/// Looks at a condition until it holds or the time is up: at once, then after pauses of
/// 10 ms doubling up to [`POLL`].
struct Looks<'a> {
    what: &'a str,
    timeout: Duration,
    deadline: Instant,
    next: Duration,
}

impl<'a> Looks<'a> {
    fn new(timeout: Duration, what: &'a str) -> Looks<'a> {
        Looks {
            what,
            timeout,
            deadline: Instant::now() + timeout,
            next: FIRST_POLL,
        }
    }

    /// What one look saw: done (its value, or the timeout naming what was seen last), or
    /// the pause before the next look.
    fn after<C: Check>(&mut self, seen: C) -> ControlFlow<Result<C::Value, TimedOut>, Duration> {
        let last = match seen.check() {
            Ok(v) => return ControlFlow::Break(Ok(v)),
            Err(last) => last,
        };
        let now = Instant::now();
        if now >= self.deadline {
            return ControlFlow::Break(Err(TimedOut {
                what: self.what.to_string(),
                timeout: self.timeout,
                last,
            }));
        }
        let pause = self.next.min(self.deadline - now);
        self.next = (self.next * 2).min(POLL);
        ControlFlow::Continue(pause)
    }
}

/// Polls `cond` until it holds and returns its value; panics naming `what` and the
/// timeout when it does not hold within `timeout`.
pub fn wait_until<C: Check>(timeout: Duration, what: &str, cond: impl FnMut() -> C) -> C::Value {
    try_wait_until(timeout, what, cond).unwrap_or_else(|e| panic!("{e}"))
}

/// [`wait_until`] that returns the timeout as an error (for callers that add context,
/// such as a daemon's log, or that return errors themselves).
pub fn try_wait_until<C: Check>(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> C,
) -> Result<C::Value, TimedOut> {
    let mut looks = Looks::new(timeout, what);
    loop {
        match looks.after(cond()) {
            ControlFlow::Continue(pause) => std::thread::sleep(pause),
            ControlFlow::Break(done) => return done,
        }
    }
}

/// [`wait_until`] for an async condition (tokio): `|| async { ... }` or `async || ...`.
pub async fn wait_until_async<C: Check>(
    timeout: Duration,
    what: &str,
    cond: impl AsyncFnMut() -> C,
) -> C::Value {
    try_wait_until_async(timeout, what, cond)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`try_wait_until`] for an async condition (tokio).
pub async fn try_wait_until_async<C: Check>(
    timeout: Duration,
    what: &str,
    mut cond: impl AsyncFnMut() -> C,
) -> Result<C::Value, TimedOut> {
    let mut looks = Looks::new(timeout, what);
    loop {
        match looks.after(cond().await) {
            ControlFlow::Continue(pause) => tokio::time::sleep(pause).await,
            ControlFlow::Break(done) => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_the_condition_holds() {
        let mut n = 0;
        let v = wait_until(Duration::from_secs(5), "the third look", || {
            n += 1;
            (n == 3).then_some(n * 10)
        });
        assert_eq!((v, n), (30, 3));
        wait_until(Duration::from_secs(5), "true", || true);
    }

    #[test]
    fn times_out_naming_what_and_the_last_error() {
        let t0 = Instant::now();
        let e = try_wait_until(Duration::from_millis(300), "the impossible", || {
            Err::<(), _>("still 403")
        })
        .unwrap_err();
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            e.to_string(),
            "timed out after 300ms waiting for the impossible; last seen: still 403"
        );
    }

    #[test]
    #[should_panic(expected = "timed out after 200ms waiting for nothing")]
    fn panics_on_timeout() {
        wait_until(Duration::from_millis(200), "nothing", || false);
    }

    #[tokio::test]
    async fn async_conditions() {
        let mut n = 0;
        let v = wait_until_async(Duration::from_secs(5), "the second look", || {
            n += 1;
            let n = n;
            async move { (n == 2).then_some("done") }
        })
        .await;
        assert_eq!(v, "done");
        let e = try_wait_until_async(Duration::from_millis(100), "never", async || false)
            .await
            .unwrap_err();
        assert_eq!(e.last, None);
        assert!(e.to_string().contains("waiting for never"), "{e}");
    }
}
