//! The Kubernetes Container Runtime Interface, API `runtime.v1`, for Nodus.
//!
//! [`runtime::v1`] holds the prost messages and the tonic clients and servers
//! generated from `proto/api.proto` (RuntimeService and ImageService, field
//! numbers as in the public k8s.io/cri-api). [`connect`] opens a tonic channel
//! to a CRI endpoint over its Unix socket, e.g. containerd's
//! `unix:///run/containerd/containerd.sock`.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Generated CRI types and services.
pub mod runtime {
    /// Package `runtime.v1`.
    pub mod v1 {
        #![allow(
            clippy::all,
            clippy::pedantic,
            missing_docs,
            rustdoc::invalid_html_tags,
            rustdoc::bare_urls
        )]
        tonic::include_proto!("runtime.v1");

        // Hand-written so registry secrets never reach logs (upstream marks
        // these fields `debug_redact`).
        impl std::fmt::Debug for AuthConfig {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                fn redact(s: &str) -> &'static str {
                    if s.is_empty() {
                        ""
                    } else {
                        "<redacted>"
                    }
                }
                f.debug_struct("AuthConfig")
                    .field("username", &self.username)
                    .field("password", &redact(&self.password))
                    .field("auth", &redact(&self.auth))
                    .field("server_address", &self.server_address)
                    .field("identity_token", &redact(&self.identity_token))
                    .field("registry_token", &redact(&self.registry_token))
                    .finish()
            }
        }
    }
}

/// Connect timeout used by [`connect`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a CRI endpoint could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The endpoint is neither `unix:///abs/path` nor a plain path.
    #[error("invalid CRI endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        endpoint: String,
        reason: &'static str,
    },
    /// The socket could not be connected (missing, refused, timed out...).
    #[error("cannot connect to CRI socket {}: {detail}", path.display())]
    Connect {
        path: PathBuf,
        /// The error and its causes, flattened for the message.
        detail: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Parse a CRI endpoint: `unix:///path/to.sock` or a plain filesystem path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ConnectError> {
    let invalid = |reason| ConnectError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason,
    };
    let path = if let Some(rest) = endpoint.strip_prefix("unix://") {
        rest
    } else if endpoint.contains("://") {
        return Err(invalid("only unix:// endpoints are supported"));
    } else {
        endpoint
    };
    if path.is_empty() {
        return Err(invalid("empty socket path"));
    }
    Ok(PathBuf::from(path))
}

/// Connect to a CRI endpoint (`unix:///path` or a plain path) with
/// [`DEFAULT_CONNECT_TIMEOUT`].
pub async fn connect(endpoint: &str) -> Result<Channel, ConnectError> {
    connect_with_timeout(endpoint, DEFAULT_CONNECT_TIMEOUT).await
}

/// Connect to a CRI endpoint over its Unix socket, giving up after `timeout`.
pub async fn connect_with_timeout(
    endpoint: &str,
    timeout: Duration,
) -> Result<Channel, ConnectError> {
    let path = socket_path(endpoint)?;
    // tonic needs an http URI; the authority is never used, the connector
    // below dials the socket instead.
    let connector_path = path.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let path = connector_path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
    });
    Endpoint::from_static("http://[::]:50051")
        .connect_timeout(timeout)
        .connect_with_connector(connector)
        .await
        .map_err(|source| ConnectError::Connect {
            detail: error_chain(&source),
            path,
            source,
        })
}

/// `err: cause: cause...`, so a log line says why (tonic's own message is
/// only "transport error").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests;
