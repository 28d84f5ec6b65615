//! TLS of the authenticated port (rustls): the serving certificate from `tlsCertFile` /
//! `tlsPrivateKeyFile`, or, when none is given, a self-signed one kept under the cert dir
//! (`kubelet.crt`, `kubelet.key`) as upstream makes it; `tlsMinVersion`, `tlsCipherSuites`
//! (Go's names), and client certificates verified against `clientCAFile` when one is set
//! (optional: a request without a certificate may still carry a bearer token).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::cipher_suites::cipher_suite;
use crate::config::ServerTls;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field} {path}: {message}")]
    File {
        field: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("self-signed serving certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("clientCAFile {path}: {message}")]
    ClientCa { path: PathBuf, message: String },
}

fn file_err(field: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        field,
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The self-signed certificate upstream makes when no serving certificate is given: a CA
/// `<host>-ca@<unix time>` and, signed by it, `<host>@<unix time>` for the host name and the
/// node's addresses, valid one year; `kubelet.crt` holds both, `kubelet.key` the key.
pub(crate) fn self_signed(host: &str, ips: &[IpAddr]) -> Result<(String, String), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let not_before = time_of(secs);
    let not_after = time_of(secs + 365 * 24 * 3600);
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    ca.distinguished_name
        .push(DnType::CommonName, format!("{host}-ca@{secs}"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(gen)?).map_err(gen)?;
    let mut leaf = CertificateParams::new(vec![host.to_string()]).map_err(gen)?;
    leaf.distinguished_name
        .push(DnType::CommonName, format!("{host}@{secs}"));
    for ip in ips {
        leaf.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let key = KeyPair::generate().map_err(gen)?;
    let cert = leaf.signed_by(&key, &ca).map_err(gen)?;
    Ok((format!("{}{}", cert.pem(), ca.pem()), key.serialize_pem()))
}

fn time_of(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The serving certificate and key files: the configured ones, else the self-signed pair in
/// the cert dir (made on first start, reused afterwards).
pub(crate) fn serving_files(
    cfg: &ServerTls,
    host: &str,
    ips: &[IpAddr],
) -> Result<(PathBuf, PathBuf), TlsError> {
    if let (Some(c), Some(k)) = (&cfg.cert_file, &cfg.key_file) {
        return Ok((c.clone(), k.clone()));
    }
    let cert = cfg.cert_dir.join("kubelet.crt");
    let key = cfg.cert_dir.join("kubelet.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&cfg.cert_dir).map_err(|e| file_err("--cert-dir", &cfg.cert_dir, e))?;
    let (cert_pem, key_pem) = self_signed(host, ips)?;
    std::fs::write(&cert, cert_pem).map_err(|e| file_err("--cert-dir", &cert, e))?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key)
            .map_err(|e| file_err("--cert-dir", &key, e))?;
        f.write_all(key_pem.as_bytes())
            .map_err(|e| file_err("--cert-dir", &key, e))?;
    }
    tracing::info!(cert = %cert.display(), "wrote a self-signed serving certificate (no tlsCertFile given)");
    Ok((cert, key))
}

/// The rustls configuration of the authenticated port.
pub fn server_config(
    cfg: &ServerTls,
    host: &str,
    ips: &[IpAddr],
) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_path, key_path) = serving_files(cfg, host, ips)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| file_err("tlsCertFile", &cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err("tlsCertFile", &cert_path, e))?;
    if certs.is_empty() {
        return Err(file_err(
            "tlsCertFile",
            &cert_path,
            "no certificate in the file",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| file_err("tlsPrivateKeyFile", &key_path, e))?;
    let mut config = builder(cfg)?
        .with_single_cert(certs, key)
        .map_err(|e| file_err("tlsPrivateKeyFile", &key_path, e))?;
    // HTTP/1.1 only: the streaming upgrades (SPDY, WebSocket) need it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The configuration of the authenticated port whose certificate `resolver` gives at each
/// handshake (serverTLSBootstrap: the one the cluster signed, rotated).
pub(crate) fn server_config_with_resolver(
    cfg: &ServerTls,
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = builder(cfg)?.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The key of a PEM private key for a rustls certificate (with the same provider).
pub(crate) fn signing_key(
    key_pem: &str,
) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
    let der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    provider::sign::any_supported_type(&der)
}

/// Everything of the authenticated port's configuration but its certificate: versions,
/// cipher suites, client certificates.
fn builder(
    cfg: &ServerTls,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>, TlsError> {
    // ring, as the API client (kube with rustls + ring) already links it; rustls now flags
    // it for lacking post-quantum key exchange, which Go's TLS of the API server (1.20 to
    // 1.23) does not offer either. aws-lc-rs would add a C build (cmake) for that alone.
    #[allow(deprecated)]
    let mut p = provider::default_provider();
    if !cfg.cipher_suites.is_empty() {
        let mut suites: Vec<SupportedCipherSuite> = cfg
            .cipher_suites
            .iter()
            .filter_map(|n| cipher_suite(n))
            .collect();
        // Go always offers its TLS 1.3 suites; without one, TLS 1.3 could not be spoken.
        if !suites
            .iter()
            .any(|s| s.version() == &rustls::version::TLS13)
        {
            suites.extend(
                provider::DEFAULT_CIPHER_SUITES
                    .iter()
                    .filter(|s| s.version() == &rustls::version::TLS13)
                    .copied(),
            );
        }
        p.cipher_suites = suites;
    }
    let provider: Arc<CryptoProvider> = Arc::new(p);
    let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version.as_deref() {
        Some("VersionTLS13") => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match &cfg.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let bad = |m: String| TlsError::ClientCa {
                path: path.clone(),
                message: m,
            };
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
                roots
                    .add(c.map_err(|e| bad(e.to_string()))?)
                    .map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("no CA certificate in the file".into()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| bad(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok(builder)
}

/// The user a verified client certificate names: CN is the user, each O a group.
pub(crate) fn certificate_user(cert: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some((name, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_cipher_suite_names() {
        assert!(cipher_suite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256").is_some());
        assert!(cipher_suite("TLS_AES_256_GCM_SHA384").is_some());
        assert!(cipher_suite("TLS_RSA_WITH_AES_128_CBC_SHA").is_none());
    }

    #[test]
    fn self_signed_certificate_is_made_once_and_serves() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = crate::config::Config::default().server;
        cfg.cert_dir = d.path().join("pki");
        let ips = ["10.0.0.5".parse().unwrap()];
        let c = server_config(&cfg, "node1", &ips).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let first = std::fs::read(cfg.cert_dir.join("kubelet.crt")).unwrap();
        server_config(&cfg, "node1", &ips).unwrap();
        assert_eq!(
            first,
            std::fs::read(cfg.cert_dir.join("kubelet.crt")).unwrap(),
            "reused"
        );
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&first)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(certs.len(), 2, "the certificate and its self-signed CA");
        let (cn, _) = certificate_user(&certs[0]).unwrap();
        assert!(cn.starts_with("node1@"), "{cn}");
        let (_, leaf) = x509_parser::parse_x509_certificate(certs[0].as_ref()).unwrap();
        let sans = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .len();
        assert_eq!(sans, 2, "the host name and the node IP");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(cfg.cert_dir.join("kubelet.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_files_name_the_field() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = crate::config::Config::default().server;
        cfg.cert_file = Some(d.path().join("missing.crt"));
        cfg.key_file = Some(d.path().join("missing.key"));
        let e = server_config(&cfg, "n", &[]).unwrap_err().to_string();
        assert!(
            e.contains("tlsCertFile") && e.contains("missing.crt"),
            "{e}"
        );
        let ca = d.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let mut cfg = crate::config::Config::default().server;
        cfg.cert_dir = d.path().join("pki");
        cfg.client_ca_file = Some(ca);
        let e = server_config(&cfg, "n", &[]).unwrap_err().to_string();
        assert!(e.contains("clientCAFile"), "{e}");
    }
}
