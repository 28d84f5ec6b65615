//! The serving certificate of the kubelet API from the cluster (`serverTLSBootstrap: true`,
//! upstream `NewKubeletServerCertificateManager`): a `kubernetes.io/kubelet-serving` CSR as
//! `system:node:<name>` for the node's name and address, kept in
//! `--cert-dir/kubelet-server-current.pem` and renewed at 70 to 90% of its lifetime. The
//! port serves whatever is current at each handshake; until the first certificate is
//! signed (kube-controller-manager does not approve these by itself: an operator or an
//! approver does) handshakes fail, as upstream's "no serving certificate available".

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData, SanType};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::bootstrap::{request_certificate, Signer};
use super::manager::keep_renewed;
use super::store::FileStore;
use super::CertificateError;
use crate::server::tls::TlsError;

/// The kubelet-serving signer and the usages its approvers require.
const SERVING: Signer = Signer {
    name: "kubernetes.io/kubelet-serving",
    usages: &["digital signature", "key encipherment", "server auth"],
};

/// The certificate the port serves now (None before the first one is signed).
#[derive(Debug, Default)]
pub(crate) struct ServingCert(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ServingCert {
    /// Serves the pair in `pem` (certificates, then the key) from now on.
    fn load(&self, pem: &str) -> Result<(), String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        if certs.is_empty() {
            return Err("no certificate".into());
        }
        let key = crate::server::tls::signing_key(pem).map_err(|e| e.to_string())?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new(CertifiedKey::new(certs, key)));
        Ok(())
    }
}

/// The TLS configuration of the kubelet API with a serving certificate from the cluster,
/// and the task that gets and renews it through `client`.
pub fn server_config(
    cfg: &crate::config::Config,
    client: kube::Client,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let current = Arc::new(ServingCert::default());
    let store = FileStore::new(&cfg.server.cert_dir, "kubelet-server");
    let path = store.current_path();
    if let Ok(pem) = std::fs::read_to_string(&path) {
        if let Err(e) = current.load(&pem) {
            tracing::warn!(path = %path.display(), error = %e, "cannot use the kept serving certificate; asking for a new one");
        }
    }
    let config = crate::server::tls::server_config_with_resolver(&cfg.server, current.clone())?;
    let node = cfg.node_name.clone();
    let ips: Vec<IpAddr> = cfg.node_ip.into_iter().collect();
    tokio::spawn(async move {
        let path = store.current_path();
        keep_renewed(&path, "serving", || {
            renew(&client, &store, &current, &node, &ips)
        })
        .await
    });
    Ok(config)
}

async fn renew(
    client: &kube::Client,
    store: &FileStore,
    current: &ServingCert,
    node: &str,
    ips: &[IpAddr],
) -> Result<(), CertificateError> {
    let key = KeyPair::generate().map_err(|e| CertificateError::Request(e.to_string()))?;
    let request = serving_csr(&key, node, ips)?;
    tracing::info!(
        node,
        ?ips,
        "asking for a serving certificate (kubelet-serving CSR; it needs an approval)"
    );
    let spki = key.subject_public_key_info();
    let cert = request_certificate(client.clone(), None, request, &spki, &SERVING).await?;
    let key_pem = key.serialize_pem();
    let path = store.update(&cert, &key_pem)?;
    current
        .load(&format!("{cert}{key_pem}"))
        .map_err(|message| CertificateError::BadCertificate {
            name: path.display().to_string(),
            message,
        })?;
    tracing::info!(cert = %path.display(), "serving certificate updated");
    Ok(())
}

/// A PEM CSR for the serving certificate of `node`: `system:node:<node>` in
/// `system:nodes`, for the node's name and addresses.
fn serving_csr(key: &KeyPair, node: &str, ips: &[IpAddr]) -> Result<String, CertificateError> {
    let mut params = CertificateParams::new(vec![node.to_string()])
        .map_err(|e| CertificateError::Request(e.to_string()))?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:nodes");
    for ip in ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .map_err(|e| CertificateError::Request(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_csr_names_the_node_and_its_address() {
        let key = KeyPair::generate().unwrap();
        let pem = serving_csr(&key, "node-a", &["10.66.0.1".parse().unwrap()]).unwrap();
        let der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, csr) =
            <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(der.as_ref())
                .unwrap();
        let subject = csr.certification_request_info.subject.to_string();
        assert!(subject.contains("CN=system:node:node-a"), "{subject}");
        assert!(subject.contains("O=system:nodes"), "{subject}");
        let sans: Vec<String> = csr
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) => Some(
                    s.general_names
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(sans, ["DNSName(node-a)", "IPAddress(0a:42:00:01)"]);
    }

    #[test]
    fn nothing_is_served_before_a_certificate_is_loaded() {
        let current = ServingCert::default();
        assert!(current.0.read().unwrap().is_none());
        assert!(current.load("not pem").is_err());
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["n".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        current
            .load(&format!("{}{}", cert.pem(), key.serialize_pem()))
            .unwrap();
        assert!(current.0.read().unwrap().is_some());
    }
}
