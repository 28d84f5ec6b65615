//! The kubelet's client certificate from the cluster (upstream `pkg/kubelet/certificate`):
//! TLS bootstrap with `--bootstrap-kubeconfig`, and the file store it writes.

pub(crate) mod bootstrap;
pub(crate) mod manager;
pub mod serving;
pub(crate) mod store;

use std::path::PathBuf;
use std::time::Duration;

/// With `--bootstrap-kubeconfig`: makes sure `--kubeconfig` holds a valid client
/// certificate, trying again after a failure (token refused, CSR denied, API server away)
/// with a back-off doubling from 2 s to 1 min; returns once it does.
pub async fn bootstrap(cfg: &crate::config::Config) {
    let (Some(boot), Some(kubeconfig)) = (&cfg.bootstrap_kubeconfig, &cfg.kubeconfig) else {
        return;
    };
    let mut delay = Duration::from_secs(2);
    loop {
        match bootstrap::load_client_cert(kubeconfig, boot, &cfg.server.cert_dir, &cfg.node_name)
            .await
        {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?delay, "TLS bootstrap failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// Why the kubelet could not get its client certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("the private key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("making the certificate signing request: {0}")]
    Request(String),
    #[error("certificate signing request {name}: {source}")]
    Api { name: String, source: kube::Error },
    /// Upstream's words: "certificate signing request is denied, reason: ..., message: ...".
    #[error("certificate signing request {name} is denied, reason: {reason}, message: {message}")]
    Denied {
        name: String,
        reason: String,
        message: String,
    },
    #[error("certificate signing request {name} failed, reason: {reason}, message: {message}")]
    Failed {
        name: String,
        reason: String,
        message: String,
    },
    #[error("certificate signing request {name}: no certificate after {secs} s")]
    Timeout { name: String, secs: u64 },
    #[error("certificate signing request {name}: the issued certificate: {message}")]
    BadCertificate { name: String, message: String },
}
