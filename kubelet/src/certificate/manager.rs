//! Client certificate rotation (upstream client-go `certificate.Manager`, as the kubelet
//! runs it with `rotateCertificates: true`): at a jittered 70 to 90% of the certificate's
//! lifetime the kubelet makes a new key, asks for a new certificate with a CSR as
//! `system:node:<name>` (kube-controller-manager approves these through the
//! `selfnodeclient` permission), stores it as the new `kubelet-client-current.pem` and
//! switches without a restart.
//!
//! The switch: every API call of the kubelet goes through one [`kube::Client`] whose
//! service hands each request to the *current* inner client. A rotation builds a new inner
//! client from the kubeconfig (which names `kubelet-client-current.pem`) and swaps it in:
//! new requests open connections with the new certificate, and the old client's pool closes
//! once the requests still on it (watches) end; the watches resume on the new one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use hyper::{Request, Response};
use kube::client::Body;
use rcgen::{KeyPair, PublicKeyData};

use super::bootstrap::{client_csr, request_certificate, CLIENT};
use super::store::FileStore;
use super::CertificateError;

/// The service of the kubelet's API client: each request goes to the current inner client.
#[derive(Clone)]
struct CurrentClient(Arc<RwLock<kube::Client>>);

impl CurrentClient {
    fn get(&self) -> kube::Client {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, client: kube::Client) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = client;
    }
}

impl tower::Service<Request<Body>> for CurrentClient {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, kube::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let client = self.get();
        Box::pin(async move { client.send(req).await })
    }
}

/// The API client of a kubelet whose client certificate rotates: built from `kubeconfig`
/// and renewed in the background for as long as the runtime lives.
pub(crate) async fn rotating_client(
    kubeconfig: &Path,
    cert_dir: &Path,
    node_name: &str,
) -> Result<kube::Client, crate::kubeclient::ApiError> {
    let inner = crate::kubeclient::connect(kubeconfig).await?;
    let current = CurrentClient(Arc::new(RwLock::new(inner)));
    let client = kube::Client::new(current.clone(), "default");
    tokio::spawn(rotate(
        current,
        kubeconfig.to_path_buf(),
        FileStore::new(cert_dir, "kubelet-client"),
        format!("system:node:{node_name}"),
    ));
    Ok(client)
}

/// Whether the client certificate `kubeconfig` uses is the one the store in `cert_dir`
/// keeps (a bootstrapped kubeconfig): only that one can be rotated.
pub(crate) fn rotatable(kubeconfig: &Path, cert_dir: &Path) -> bool {
    let current = FileStore::new(cert_dir, "kubelet-client").current_path();
    super::bootstrap::client_cert_path(kubeconfig).is_some_and(|p| p == current)
}

/// (notBefore, notAfter) of the first certificate of a PEM file, in Unix seconds.
pub(crate) fn validity(pem_file: &Path) -> Option<(i64, i64)> {
    let data = std::fs::read(pem_file).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&data).ok()?;
    let cert = pem.parse_x509().ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Upstream's `nextRotationDeadline`: notBefore + a random 70 to 90% of the lifetime.
pub(crate) fn rotation_deadline(not_before: i64, not_after: i64, random: f64) -> i64 {
    let total = (not_after - not_before) as f64;
    not_before + (total * (0.7 + 0.2 * random.clamp(0.0, 1.0))).round() as i64
}

async fn rotate(current: CurrentClient, kubeconfig: PathBuf, store: FileStore, cn: String) {
    let path = store.current_path();
    keep_renewed(&path, "client", || {
        renew(&current, &kubeconfig, &store, &cn)
    })
    .await
}

/// Renews the certificate at `path` with `renew` at each rotation deadline, forever; at
/// once when there is none (or it cannot be read). A failed renewal is tried again with a
/// back-off doubling from 2 s to 5 min.
pub(crate) async fn keep_renewed<F, Fut>(path: &Path, what: &'static str, mut renew: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), CertificateError>>,
{
    loop {
        if let Some((not_before, not_after)) = validity(path) {
            let deadline = rotation_deadline(not_before, not_after, rand::random::<f64>());
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            tracing::info!(
                certificate = what,
                not_after,
                rotate_at = deadline,
                "certificate rotation scheduled"
            );
            if deadline > now {
                tokio::time::sleep(Duration::from_secs((deadline - now) as u64)).await;
            }
        }
        let mut delay = Duration::from_secs(2);
        loop {
            match renew().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(certificate = what, error = %e, retry_in = ?delay, "certificate rotation failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(300));
                }
            }
        }
    }
}

/// One renewal: a new key and CSR as the node, the certificate stored as current, and a new
/// inner client that uses it.
async fn renew(
    current: &CurrentClient,
    kubeconfig: &Path,
    store: &FileStore,
    cn: &str,
) -> Result<(), CertificateError> {
    let key = KeyPair::generate().map_err(|e| CertificateError::Request(e.to_string()))?;
    let request = client_csr(&key, cn)?;
    let spki = key.subject_public_key_info();
    let cert = request_certificate(current.get(), None, request, &spki, &CLIENT).await?;
    let path = store.update(&cert, &key.serialize_pem())?;
    let client =
        crate::kubeclient::connect(kubeconfig)
            .await
            .map_err(|e| CertificateError::Kubeconfig {
                path: kubeconfig.to_path_buf(),
                message: e.to_string(),
            })?;
    current.set(client);
    let not_after = validity(&path).map(|v| v.1).unwrap_or_default();
    tracing::info!(cert = %path.display(), not_after, "client certificate rotated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_is_70_to_90_percent_of_the_lifetime() {
        assert_eq!(rotation_deadline(1000, 2000, 0.0), 1700);
        assert_eq!(rotation_deadline(1000, 2000, 1.0), 1900);
        assert_eq!(rotation_deadline(1000, 2000, 0.5), 1800);
        assert_eq!(rotation_deadline(1000, 2000, 7.0), 1900);
    }
}
