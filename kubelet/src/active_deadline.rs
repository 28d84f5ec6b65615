//! `spec.activeDeadlineSeconds` (upstream `active_deadline.go`): a pod active on the node
//! longer than its deadline, counted from its status' `startTime`, is failed with reason
//! `DeadlineExceeded` and its containers are killed. The deadline may be changed on a
//! running pod; each sync reads it anew.

use k8s_openapi::api::core::v1::{Pod, PodStatus};

use crate::container::{Nanos, NANOS_PER_SEC};

/// The pod's status reason once its deadline passed.
pub(crate) const REASON: &str = "DeadlineExceeded";
/// ... and its message, as upstream words it.
pub(crate) const MESSAGE: &str = "Pod was active on the node longer than the specified deadline";

/// Nanoseconds left before the deadline of a pod that started at `start`: None when it has
/// no deadline or has not started; zero or less when the deadline has passed.
pub(crate) fn remaining(pod: &Pod, start: Option<Nanos>, now: Nanos) -> Option<i128> {
    let deadline = pod.spec.as_ref()?.active_deadline_seconds?;
    let start = start?;
    Some(start as i128 + deadline as i128 * NANOS_PER_SEC as i128 - now as i128)
}

/// The start time of a generated status, in nanoseconds since the epoch.
pub(crate) fn start_nanos(status: &PodStatus) -> Option<Nanos> {
    let t = status.start_time.as_ref()?;
    Nanos::try_from(t.0.as_nanosecond()).ok()
}

/// Turns a generated status into the one of a pod whose deadline passed.
pub(crate) fn mark_exceeded(status: &mut PodStatus) {
    status.phase = Some("Failed".into());
    status.reason = Some(REASON.into());
    status.message = Some(MESSAGE.into());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{load_manifest, Source};

    fn pod(deadline: Option<i64>) -> Pod {
        let extra = deadline
            .map(|d| format!("  activeDeadlineSeconds: {d}\n"))
            .unwrap_or_default();
        let text = format!(
            "kind: Pod\nmetadata: {{name: web}}\nspec:\n{extra}  containers:\n  - name: c\n    image: 'i:1'\n"
        );
        load_manifest(&text, Source::File, "/m/w", "node1")
            .0
            .remove(0)
    }

    #[test]
    fn deadline_counts_from_the_start_time() {
        let s = NANOS_PER_SEC;
        assert_eq!(
            remaining(&pod(Some(5)), Some(100 * s), 103 * s),
            Some(2 * s as i128)
        );
        assert_eq!(remaining(&pod(Some(5)), Some(100 * s), 105 * s), Some(0));
        assert!(remaining(&pod(Some(5)), Some(100 * s), 200 * s).unwrap() < 0);
        assert_eq!(remaining(&pod(None), Some(100 * s), 200 * s), None);
        assert_eq!(remaining(&pod(Some(5)), None, 200 * s), None);
    }

    #[test]
    fn exceeded_status_is_failed_with_upstream_reason() {
        let mut st = PodStatus {
            phase: Some("Running".into()),
            start_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap(),
            )),
            ..Default::default()
        };
        assert_eq!(start_nanos(&st), Some(1_700_000_000 * NANOS_PER_SEC));
        mark_exceeded(&mut st);
        assert_eq!(st.phase.as_deref(), Some("Failed"));
        assert_eq!(st.reason.as_deref(), Some("DeadlineExceeded"));
        assert_eq!(st.message.as_deref(), Some(MESSAGE));
    }
}
