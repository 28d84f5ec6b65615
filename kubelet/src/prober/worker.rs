//! One probe worker per container and probe kind (upstream `prober/worker.go`): runs the
//! probe every period after the initial delay and records the result against the thresholds.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};

use crate::kuberuntime::cri::Cri;
use crate::kuberuntime::handlers;

#[allow(unused_imports)]
use super::*;

/// Runs one probe once.
pub(crate) async fn run_probe(
    cri: &Cri,
    probe: &Probe,
    container: &Container,
    container_id: &str,
    pod_ip: Option<&str>,
    timeout: Duration,
) -> handlers::Outcome {
    if let Some(e) = &probe.exec {
        handlers::exec(cri, container_id, e, timeout).await
    } else if let Some(h) = &probe.http_get {
        handlers::http_get(h, container, pod_ip, timeout).await
    } else if let Some(t) = &probe.tcp_socket {
        handlers::tcp(t, container, pod_ip, timeout).await
    } else if let Some(g) = &probe.grpc {
        handlers::grpc(g, pod_ip, timeout).await
    } else {
        Err(handlers::HandlerError::NoProbeHandler)
    }
}

pub(super) struct Worker {
    pub(super) mgr: ProbeManager,
    pub(super) kind: ProbeKind,
    pub(super) probe: Probe,
    pub(super) container: Container,
    pub(super) container_id: String,
    pub(super) uid: String,
    pub(super) pod_name: String,
    /// The pod for events (None without an API server).
    pub(super) pod_ref: Option<k8s_openapi::api::core::v1::ObjectReference>,
    pub(super) pod_ip: Option<String>,
    pub(super) has_startup: bool,
}

impl Worker {
    pub(super) async fn run(self) {
        let t = timing(&self.probe, self.kind);
        tokio::time::sleep(t.initial_delay).await;
        let (mut successes, mut failures) = (0u32, 0u32);
        loop {
            let gated = self.kind != ProbeKind::Startup
                && self.has_startup
                && !self.mgr.started(&self.container_id);
            if !gated {
                let r = run_probe(
                    &self.mgr.cri,
                    &self.probe,
                    &self.container,
                    &self.container_id,
                    self.pod_ip.as_deref(),
                    t.timeout,
                )
                .await;
                let (namespace, pod) = self.pod_name.split_once('/').unwrap_or(("", ""));
                crate::metrics::global().probe(
                    &crate::metrics::ProbeTarget {
                        namespace,
                        pod,
                        pod_uid: &self.uid,
                        container: &self.container.name,
                    },
                    self.kind.as_str(),
                    r.is_ok(),
                );
                match r {
                    Ok(()) => {
                        successes += 1;
                        failures = 0;
                        if successes >= t.success_threshold {
                            match self.kind {
                                ProbeKind::Readiness => self.set(|s| s.ready = Some(true)),
                                ProbeKind::Startup => {
                                    self.set(|s| s.started = Some(true));
                                    return;
                                }
                                ProbeKind::Liveness => {}
                            }
                        }
                    }
                    Err(msg) => {
                        failures += 1;
                        successes = 0;
                        tracing::debug!(pod = %self.pod_name, container = %self.container.name, probe = self.kind.as_str(), failures, error = %msg, "probe failed");
                        if let Some(r) = &self.pod_ref {
                            self.mgr.events.event(
                                r.clone(),
                                crate::events::WARNING,
                                "Unhealthy",
                                format!("{} probe failed: {msg}", self.kind.as_str()),
                            );
                        }
                        if failures >= t.failure_threshold {
                            match self.kind {
                                ProbeKind::Readiness => self.set(|s| s.ready = Some(false)),
                                ProbeKind::Liveness | ProbeKind::Startup => {
                                    self.failed(&msg.to_string());
                                    return;
                                }
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(t.period).await;
        }
    }

    fn set(&self, f: impl FnOnce(&mut ContainerProbeState)) {
        self.mgr.update(&self.uid, &self.container_id, f);
    }

    /// Records a liveness or startup failure; the worker then ends (the container's
    /// replacement gets new workers). The kill is the pod worker's.
    fn failed(&self, msg: &str) {
        let reason = format!(
            "Container {} failed {} probe, will be restarted: {msg}",
            self.container.name,
            self.kind.as_str().to_lowercase()
        );
        tracing::warn!(pod = %self.pod_name, container = %self.container.name, "{reason}");
        let kind = self.kind;
        self.set(|s| {
            s.failed = Some(kind);
            s.killed = Some(reason);
        });
    }
}
