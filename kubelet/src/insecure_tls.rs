//! The TLS client of HTTPS probes and hooks: as upstream's prober (`InsecureSkipVerify`), it
//! does not check who the server is. Probes target the pod's own IP, and the servers behind
//! them (API servers, metrics-server, webhooks) mostly present self-signed certificates.
//! The handshake signatures are still verified, so the channel itself is sound.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The crypto provider cannot make a client configuration.
#[derive(Debug, Clone, thiserror::Error)]
#[error("TLS client: {0}")]
pub(crate) struct TlsClientError(rustls::Error);

/// One connector for every probe (its session cache is shared); Err when the crypto
/// provider offers no protocol version (not with ring).
pub(crate) fn connector() -> Result<tokio_rustls::TlsConnector, TlsClientError> {
    static CONNECTOR: OnceLock<Result<tokio_rustls::TlsConnector, TlsClientError>> =
        OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            // ring, as the rest of the kubelet's TLS (see server/tls.rs for why).
            #[allow(deprecated)]
            let provider = Arc::new(ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(TlsClientError)?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
                .with_no_client_auth();
            Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
        })
        .clone()
}
