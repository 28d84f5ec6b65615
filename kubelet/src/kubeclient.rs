//! The API server client of API-server mode: a `kube::Client` from `--kubeconfig`
//! (client certificate or token, the cluster CA), with the kubelet's user agent. Only made
//! when `--kubeconfig` is given: a standalone kubelet has no client and pays nothing.

use std::path::Path;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Failures talking to the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("the API server's answer has no {what}")]
    Empty { what: &'static str },
}

impl ApiError {
    fn status(&self) -> Option<&kube::core::Status> {
        match self {
            ApiError::Kube(kube::Error::Api(s)) => Some(s),
            _ => None,
        }
    }
    pub(crate) fn is_not_found(&self) -> bool {
        self.status().is_some_and(|s| s.is_not_found())
    }
    pub(crate) fn is_already_exists(&self) -> bool {
        self.status().is_some_and(|s| s.is_already_exists())
    }
    pub(crate) fn is_conflict(&self) -> bool {
        self.status().is_some_and(|s| s.is_conflict())
    }
}

/// The kubelet's user agent, as upstream's `kubelet/<version> (linux/amd64) kubernetes/<commit>`.
pub(crate) fn user_agent() -> String {
    format!(
        "kubelet/{} ({}/{}) nodus",
        crate::version::KUBELET_VERSION,
        std::env::consts::OS,
        crate::version::go_arch()
    )
}

/// Reads the kubeconfig and makes the client.
pub(crate) async fn connect(path: &Path) -> Result<kube::Client, ApiError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| ApiError::Kubeconfig {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    connect_with(kubeconfig, path).await
}

/// Makes the client from a kubeconfig already read from `path`.
pub(crate) async fn connect_with(
    kubeconfig: Kubeconfig,
    path: &Path,
) -> Result<kube::Client, ApiError> {
    let bad = |message: String| ApiError::Kubeconfig {
        path: path.display().to_string(),
        message,
    };
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| bad(e.to_string()))?;
    // Upstream's client timeout for the kubelet's own requests; watches set their own.
    config.read_timeout = Some(Duration::from_secs(295));
    config.connect_timeout = Some(Duration::from_secs(10));
    let agent = hyper::header::HeaderValue::from_str(&user_agent())
        .map_err(|_| bad("user agent is not a header value".into()))?;
    config.headers.push((hyper::header::USER_AGENT, agent));
    kube::Client::try_from(config).map_err(ApiError::Kube)
}

/// The back-off of the kubelet's watches: doubling from 200 ms to `max`, back to the start
/// after a success (kube-runtime resets it on every good event).
#[derive(Debug, Clone)]
pub(crate) struct WatchBackoff {
    next: Duration,
    max: Duration,
}

const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(200);

impl WatchBackoff {
    pub(crate) fn new(max: Duration) -> Self {
        WatchBackoff {
            next: WATCH_BACKOFF_MIN,
            max,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn watch_backoff_doubles_to_its_cap_and_resets() {
        let mut b = WatchBackoff::new(Duration::from_secs(1));
        let v: Vec<u128> = b.by_ref().take(5).map(|d| d.as_millis()).collect();
        assert_eq!(v, [200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(200)));
    }
}
