//! Lifecycle hooks (upstream `lifecycle/handlers.go`): postStart and preStop.

use k8s_openapi::api::core::v1::Container;

use super::cri::Cri;

/// Runs a lifecycle handler (exec, httpGet, sleep) with a deadline.
pub(crate) async fn run_lifecycle_handler(
    cri: &Cri,
    h: &k8s_openapi::api::core::v1::LifecycleHandler,
    container: &Container,
    container_id: &str,
    pod_ip: Option<&str>,
    timeout: std::time::Duration,
) -> crate::kuberuntime::handlers::Outcome {
    if let Some(e) = &h.exec {
        crate::kuberuntime::handlers::exec(cri, container_id, e, timeout).await
    } else if let Some(g) = &h.http_get {
        crate::kuberuntime::handlers::http_get(g, container, pod_ip, timeout).await
    } else if let Some(s) = &h.sleep {
        let d = std::time::Duration::from_secs(s.seconds.max(0) as u64).min(timeout);
        tokio::time::sleep(d).await;
        Ok(())
    } else if let Some(t) = &h.tcp_socket {
        // Deprecated for hooks; upstream treats it as a connect.
        crate::kuberuntime::handlers::tcp(t, container, pod_ip, timeout).await
    } else {
        Err(crate::kuberuntime::handlers::HandlerError::NoLifecycleAction)
    }
}

/// Runs a preStop hook within `grace` seconds; failures are logged (upstream goes on
/// to stop the container).
pub(crate) async fn run_pre_stop(
    cri: &Cri,
    h: &k8s_openapi::api::core::v1::LifecycleHandler,
    container: &Container,
    container_id: &str,
    pod_ip: Option<&str>,
    grace: i64,
) {
    let timeout = std::time::Duration::from_secs(grace.max(1) as u64);
    tracing::info!(container = %container.name, id = %container_id, "running preStop hook");
    if let Err(e) = run_lifecycle_handler(cri, h, container, container_id, pod_ip, timeout).await {
        tracing::warn!(container = %container.name, id = %container_id, error = %e, "preStop hook failed (FailedPreStopHook)");
    }
}
