//! TLS bootstrap (upstream `pkg/kubelet/certificate/bootstrap`, `LoadClientCert`): when
//! `--kubeconfig` does not exist or its client certificate has expired, the kubelet makes a
//! key, asks for a `kubernetes.io/kube-apiserver-client-kubelet` certificate with a CSR as
//! the identity of `--bootstrap-kubeconfig` (a bootstrap token, as `kubeadm join` writes),
//! waits for it to be approved and signed, stores it in `--cert-dir` and writes the
//! kubeconfig that uses it. The key waits in `kubelet-client.key.tmp` until then, as
//! upstream's: a restart sends the same CSR again (its name is a digest of key and subject)
//! instead of leaving another one pending. A denied CSR drops the key, so the next try is
//! a new request.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::config::Kubeconfig;
use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData};
use sha2::Digest;

use super::store::FileStore;
use super::CertificateError;

/// The signer of kubelet client certificates.
pub(crate) const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The usages kube-controller-manager's approver requires of a kubelet client CSR.
const CLIENT_USAGES: [&str; 3] = ["digital signature", "key encipherment", "client auth"];
/// Where the key waits for its certificate (upstream's name).
pub(crate) const TMP_KEY: &str = "kubelet-client.key.tmp";
/// How long a CSR may stay unanswered (upstream: one hour).
const WAIT: Duration = Duration::from_secs(3600);

/// Makes sure `kubeconfig` holds a valid client certificate, bootstrapping one with
/// `bootstrap` when it does not.
pub(crate) async fn load_client_cert(
    kubeconfig: &Path,
    bootstrap: &Path,
    cert_dir: &Path,
    node_name: &str,
) -> Result<(), CertificateError> {
    if let Some(not_after) = client_cert_not_after(kubeconfig).filter(|t| *t > now_secs()) {
        tracing::info!(kubeconfig = %kubeconfig.display(), not_after, "kubeconfig exists and is valid, skipping bootstrap");
        return Ok(());
    }
    tracing::info!(bootstrap = %bootstrap.display(), "using the bootstrap kubeconfig to request a client certificate");
    let boot = read_kubeconfig(bootstrap)?;
    let client = crate::kubeclient::connect_with(boot.clone(), bootstrap)
        .await
        .map_err(|e| CertificateError::Kubeconfig {
            path: bootstrap.to_path_buf(),
            message: e.to_string(),
        })?;
    let key_path = cert_dir.join(TMP_KEY);
    let key = load_or_generate_key(&key_path)?;
    let common_name = format!("system:node:{node_name}");
    let request = client_csr(&key, &common_name)?;
    let spki = key.subject_public_key_info();
    let name = digested_name(&spki, &common_name, &["system:nodes"], &CLIENT_USAGES);
    let cert = match request_certificate(client, Some(&name), request, &spki, &CLIENT).await {
        Ok(cert) => cert,
        Err(e) => {
            if matches!(
                e,
                CertificateError::Denied { .. } | CertificateError::Failed { .. }
            ) {
                let _ = std::fs::remove_file(&key_path);
            }
            return Err(e);
        }
    };
    let current = FileStore::new(cert_dir, "kubelet-client").update(&cert, &key.serialize_pem())?;
    let _ = std::fs::remove_file(&key_path);
    write_kubeconfig(kubeconfig, &boot, bootstrap, &current)?;
    tracing::info!(csr = %name, kubeconfig = %kubeconfig.display(), cert = %current.display(), "client certificate issued");
    Ok(())
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Reads a kubeconfig with its relative file names made absolute against its directory
/// (as client-go's loader does).
fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, CertificateError> {
    let mut kc = Kubeconfig::read_from(path).map_err(|e| CertificateError::Kubeconfig {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let resolve = |p: &mut Option<String>| {
        if let Some(v) = p.as_mut().filter(|v| !v.is_empty() && !v.starts_with('/')) {
            *v = base.join(&*v).display().to_string();
        }
    };
    for c in kc.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
        resolve(&mut c.certificate_authority);
    }
    for a in kc
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
    {
        resolve(&mut a.client_certificate);
        resolve(&mut a.client_key);
        resolve(&mut a.token_file);
    }
    Ok(kc)
}

/// The user of `kubeconfig`'s current context.
fn current_auth(kubeconfig: &Path) -> Option<kube::config::AuthInfo> {
    if !kubeconfig.exists() {
        return None;
    }
    let kc = read_kubeconfig(kubeconfig)
        .map_err(|e| tracing::warn!(error = %e, "cannot read the existing kubeconfig"))
        .ok()?;
    let context = kc.current_context.as_deref()?;
    let user = kc
        .contexts
        .iter()
        .find(|c| c.name == context)?
        .context
        .as_ref()?
        .user
        .clone()?;
    kc.auth_infos
        .into_iter()
        .find(|a| a.name == user)?
        .auth_info
}

/// The client certificate file `kubeconfig` names (made absolute), if any.
pub(crate) fn client_cert_path(kubeconfig: &Path) -> Option<PathBuf> {
    current_auth(kubeconfig)?
        .client_certificate
        .map(PathBuf::from)
}

/// The expiry (Unix seconds) of the client certificate of `kubeconfig`'s current context;
/// None when the file is absent or holds no readable certificate (then bootstrap runs).
fn client_cert_not_after(kubeconfig: &Path) -> Option<i64> {
    let auth = current_auth(kubeconfig)?;
    let pem = match (&auth.client_certificate_data, &auth.client_certificate) {
        (Some(data), _) => base64::engine::general_purpose::STANDARD
            .decode(data)
            .ok()?,
        (None, Some(file)) => std::fs::read(file).ok()?,
        (None, None) => return None,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

fn load_or_generate_key(path: &Path) -> Result<KeyPair, CertificateError> {
    let bad = |message: String| CertificateError::Key {
        path: path.to_path_buf(),
        message,
    };
    if let Ok(text) = std::fs::read_to_string(path) {
        match KeyPair::from_pem(&text) {
            Ok(key) => return Ok(key),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable private key, making a new one")
            }
        }
    }
    let key = KeyPair::generate().map_err(|e| bad(e.to_string()))?;
    write_private(path, key.serialize_pem().as_bytes())?;
    Ok(key)
}

/// Writes a file only root reads, whole or not at all (a temporary name, then rename).
fn write_private(path: &Path, data: &[u8]) -> Result<(), CertificateError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertificateError::Io { path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = PathBuf::from(format!("{}.writing", path.display()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

/// Upstream's CSR name: `node-csr-` and the unpadded URL-safe base64 of a SHA-512/256 over
/// the public key, the subject and the usages, each base64-encoded and ended by `|`.
pub(crate) fn digested_name(spki: &[u8], cn: &str, orgs: &[&str], usages: &[&str]) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut hash = sha2::Sha512_256::new();
    let mut write = |data: &[u8]| {
        hash.update(b64.encode(data).as_bytes());
        hash.update(b"|");
    };
    write(spki);
    write(cn.as_bytes());
    for o in orgs {
        write(o.as_bytes());
    }
    for u in usages {
        write(u.as_bytes());
    }
    format!("node-csr-{}", b64.encode(hash.finalize()))
}

/// A PEM CSR for a kubelet client certificate of `common_name` in `system:nodes`.
pub(crate) fn client_csr(key: &KeyPair, common_name: &str) -> Result<String, CertificateError> {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| CertificateError::Request(e.to_string()))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:nodes");
    params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .map_err(|e| CertificateError::Request(e.to_string()))
}

/// What a CSR asks for: the signer and the key usages.
pub(crate) struct Signer {
    pub(crate) name: &'static str,
    pub(crate) usages: &'static [&'static str],
}

/// A kubelet client certificate (approved by kube-controller-manager for nodes).
pub(crate) const CLIENT: Signer = Signer {
    name: CLIENT_SIGNER,
    usages: &CLIENT_USAGES,
};

/// Sends a CSR, named `name` (or `csr-<random>` when None, as a renewal's), or finds the
/// one of that name a previous start sent, and waits for its certificate.
pub(crate) async fn request_certificate(
    client: kube::Client,
    name: Option<&str>,
    request: String,
    spki: &[u8],
    signer: &Signer,
) -> Result<String, CertificateError> {
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: name.map(str::to_string),
            generate_name: name.is_none().then(|| "csr-".to_string()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: signer.name.to_string(),
            usages: Some(signer.usages.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        },
        status: None,
    };
    let api_err = |source| CertificateError::Api {
        name: name.unwrap_or("csr-").to_string(),
        source,
    };
    let name = match api.create(&PostParams::default(), &csr).await {
        Ok(created) => {
            let name = created.metadata.name.unwrap_or_default();
            tracing::info!(csr = %name, "certificate signing request sent, waiting for its certificate");
            name
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() && name.is_some() => {
            let name = name.unwrap_or_default().to_string();
            tracing::info!(csr = %name, "certificate signing request already sent, waiting for its certificate");
            name
        }
        Err(e) => return Err(api_err(e)),
    };
    let name = name.as_str();
    let answered = |c: Option<&CertificateSigningRequest>| {
        c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
            s.certificate.as_ref().is_some_and(|c| !c.0.is_empty())
                || s.conditions
                    .iter()
                    .flatten()
                    .any(|c| matches!(c.type_.as_str(), "Denied" | "Failed") && c.status != "False")
        })
    };
    let csr = tokio::time::timeout(
        WAIT,
        kube::runtime::wait::await_condition(api, name, answered),
    )
    .await
    .map_err(|_| CertificateError::Timeout {
        name: name.to_string(),
        secs: WAIT.as_secs(),
    })?
    .map_err(|e| CertificateError::Request(format!("watching {name}: {e}")))?;
    let status = csr.and_then(|c| c.status).unwrap_or_default();
    for c in status.conditions.iter().flatten() {
        let (reason, message) = (
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        );
        let name = name.to_string();
        match c.type_.as_str() {
            "Denied" => {
                return Err(CertificateError::Denied {
                    name,
                    reason,
                    message,
                })
            }
            "Failed" => {
                return Err(CertificateError::Failed {
                    name,
                    reason,
                    message,
                })
            }
            _ => {}
        }
    }
    let pem = status.certificate.map(|c| c.0).unwrap_or_default();
    let bad = |message: String| CertificateError::BadCertificate {
        name: name.to_string(),
        message,
    };
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| bad(e.to_string()))?;
    let cert = block.parse_x509().map_err(|e| bad(e.to_string()))?;
    if cert.tbs_certificate.subject_pki.raw != spki {
        return Err(bad("it is not for the key the request was made with".into()));
    }
    String::from_utf8(pem).map_err(|_| bad("not PEM text".into()))
}

/// The kubeconfig upstream writes after a bootstrap: the bootstrap kubeconfig's cluster,
/// and the certificate and key in one file.
fn write_kubeconfig(
    path: &Path,
    boot: &Kubeconfig,
    boot_path: &Path,
    pem: &Path,
) -> Result<(), CertificateError> {
    let bad = |message: &str| CertificateError::Kubeconfig {
        path: boot_path.to_path_buf(),
        message: message.to_string(),
    };
    let context = boot
        .current_context
        .as_deref()
        .and_then(|n| boot.contexts.iter().find(|c| c.name == n))
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| bad("no current context"))?;
    let cluster = boot
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| bad("the current context's cluster is not there"))?;
    let mut c = serde_json::Map::new();
    c.insert("server".into(), cluster.server.clone().into());
    if let Some(ca) = &cluster.certificate_authority {
        c.insert("certificate-authority".into(), ca.clone().into());
    } else if let Some(data) = &cluster.certificate_authority_data {
        c.insert("certificate-authority-data".into(), data.clone().into());
    }
    if let Some(true) = cluster.insecure_skip_tls_verify {
        c.insert("insecure-skip-tls-verify".into(), true.into());
    }
    let pem = pem.display().to_string();
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "default-cluster", "cluster": c}],
        "contexts": [{"name": "default-context", "context": {
            "cluster": "default-cluster", "namespace": "default", "user": "default-auth"}}],
        "current-context": "default-context",
        "preferences": {},
        "users": [{"name": "default-auth", "user": {
            "client-certificate": pem, "client-key": pem}}],
    });
    let text = serde_yaml::to_string(&doc).map_err(|e| bad(&e.to_string()))?;
    write_private(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 key used only here.
    const VECTOR_KEY: &str = "-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgXUHOuYF569xW3xlh\n\
y3u28MCt8aEZNv44QIxFe0x8TCehRANCAATuLik4aVRb62Uz7MWqwvwvjr5MpOTn\n\
cAZ8Kqi3nh/JBPwVGzJja4/cEDd+bDJsGYP2SWKJoFJv5HlSvOLDkFwz\n\
-----END PRIVATE KEY-----";

    #[test]
    fn the_csr_name_is_upstreams_digest() {
        // The expected name is what upstream's digestedName (Kubernetes 1.20.2, run with
        // Go 1.19) printed for this key, system:node:testnode, system:nodes and the
        // client usages.
        let key = KeyPair::from_pem(VECTOR_KEY).unwrap();
        let name = digested_name(
            &key.subject_public_key_info(),
            "system:node:testnode",
            &["system:nodes"],
            &CLIENT_USAGES,
        );
        assert_eq!(name, "node-csr--_HHI6xtjU-TS-bimKRW26VxxNkg0NmWEvGavZeahIc");
        let other = digested_name(
            &key.subject_public_key_info(),
            "system:node:other",
            &["system:nodes"],
            &CLIENT_USAGES,
        );
        assert_ne!(name, other);
    }

    fn kubeconfig_with_cert(dir: &Path, not_after: (i32, u8)) -> PathBuf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, 1);
        let cert = p.self_signed(&key).unwrap();
        std::fs::write(dir.join("c.pem"), cert.pem() + &key.serialize_pem()).unwrap();
        let kc = dir.join("kubelet.conf");
        std::fs::write(
            &kc,
            "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n\
             users: [{name: u, user: {client-certificate: c.pem, client-key: c.pem}}]\n\
             contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
        )
        .unwrap();
        kc
    }

    #[test]
    fn an_expired_or_missing_client_certificate_means_bootstrap() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(client_cert_not_after(&dir.path().join("none.conf")), None);
        let kc = kubeconfig_with_cert(dir.path(), (2099, 1));
        let t = client_cert_not_after(&kc).expect("a relative cert path is read");
        assert!(t > now_secs());
        let kc = kubeconfig_with_cert(dir.path(), (2001, 1));
        assert!(client_cert_not_after(&kc).unwrap() < now_secs());
        std::fs::write(&kc, "not: [a kubeconfig").unwrap();
        assert_eq!(client_cert_not_after(&kc), None);
    }

    #[test]
    fn the_written_kubeconfig_keeps_the_bootstrap_cluster_and_names_the_pem() {
        let dir = tempfile::tempdir().unwrap();
        let boot_path = dir.path().join("bootstrap.conf");
        std::fs::write(
            &boot_path,
            "apiVersion: v1\nkind: Config\nclusters: [{name: k, cluster: {server: 'https://10.0.0.1:6443', certificate-authority: ca.crt}}]\n\
             users: [{name: b, user: {token: abcdef.0123456789abcdef}}]\n\
             contexts: [{name: b@k, context: {cluster: k, user: b}}]\ncurrent-context: b@k\n",
        )
        .unwrap();
        let boot = read_kubeconfig(&boot_path).unwrap();
        let out = dir.path().join("kubelet.conf");
        let pem = dir.path().join("pki/kubelet-client-current.pem");
        write_kubeconfig(&out, &boot, &boot_path, &pem).unwrap();
        let kc = Kubeconfig::read_from(&out).unwrap();
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.1:6443"));
        let ca = dir.path().join("ca.crt").display().to_string();
        assert_eq!(cluster.certificate_authority.as_deref(), Some(ca.as_str()));
        let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
        let pem = pem.display().to_string();
        assert_eq!(user.client_certificate.as_deref(), Some(pem.as_str()));
        assert_eq!(user.client_key.as_deref(), Some(pem.as_str()));
        assert_eq!(kc.current_context.as_deref(), Some("default-context"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_kept_key_is_reused_and_an_unreadable_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pki").join(TMP_KEY);
        let k1 = load_or_generate_key(&path).unwrap();
        let k2 = load_or_generate_key(&path).unwrap();
        assert_eq!(k1.subject_public_key_info(), k2.subject_public_key_info());
        std::fs::write(&path, "garbage").unwrap();
        let k3 = load_or_generate_key(&path).unwrap();
        assert_ne!(k1.subject_public_key_info(), k3.subject_public_key_info());
    }
}
