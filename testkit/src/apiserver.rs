//! A real control plane for the API-server tests: Debian's `etcd` and a `kube-apiserver`
//! (from `$NODUS_KUBE_APISERVER`, built by `hack/kube-apiserver.sh` in CI) on 127.0.0.1,
//! with certificates made here: a CA, the serving certificate, an admin client
//! (`system:masters`) and node clients (`system:node:<name>` in `system:nodes`), plus the
//! service-account signing key. Authorization is `Node,RBAC` with the NodeRestriction
//! admission plugin, as a kubeadm cluster runs it, so a kubelet acts as its node.
//!
//! Dropping it stops both servers by PID and removes their files.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::{Error, Result};

/// The environment variable naming the kube-apiserver binary.
pub const APISERVER_ENV: &str = "NODUS_KUBE_APISERVER";

/// The kube-apiserver binary, or None (the caller prints the SKIP line).
pub fn apiserver_binary() -> Option<PathBuf> {
    std::env::var_os(APISERVER_ENV)
        .map(PathBuf::from)
        .filter(|p| !p.as_os_str().is_empty())
}

/// Prints the loud SKIP line of the API-server tests and returns true when no binary is set.
pub fn skip_without_apiserver() -> bool {
    if apiserver_binary().is_some() {
        return false;
    }
    eprintln!("SKIP api-server tests: {APISERVER_ENV} not set");
    true
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io(Path::new("127.0.0.1:0"), e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io(Path::new("127.0.0.1:0"), e))
}

fn cert_err(what: &str, e: rcgen::Error) -> Error {
    Error::Command {
        command: format!("rcgen ({what})"),
        detail: e.to_string(),
    }
}

/// A client identity: PEM certificate and key.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How to start a [`ControlPlane`].
#[derive(Debug, Clone, Default)]
pub struct ControlPlaneOptions {
    /// Serve on every address of the namespace and advertise this one (a node's address that
    /// pods reach), instead of 127.0.0.1 only; the serving certificate names it too, and the
    /// `kubernetes` Service gets it as its endpoint.
    pub advertise_address: Option<std::net::Ipv4Addr>,
    /// Authenticate bootstrap tokens (`--enable-bootstrap-token-auth`), for TLS bootstrap.
    pub bootstrap_tokens: bool,
}

/// etcd + kube-apiserver on 127.0.0.1.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    controller_manager: Option<Child>,
    binary: PathBuf,
    etcd_port: u16,
    /// The secure port of the API server on 127.0.0.1.
    pub port: u16,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The Kubernetes minor version of the binary (20 for Debian's 1.20.2).
    pub minor: u32,
    options: ControlPlaneOptions,
}

const READY_TIMEOUT: Duration = Duration::from_secs(90);

impl ControlPlane {
    /// Starts etcd and the API server and waits until `/readyz` answers ok.
    pub fn start() -> Result<ControlPlane> {
        Self::start_with(ControlPlaneOptions::default())
    }

    /// [`Self::start`] with options.
    pub fn start_with(options: ControlPlaneOptions) -> Result<ControlPlane> {
        let binary = apiserver_binary().ok_or_else(|| Error::Command {
            command: "kube-apiserver".into(),
            detail: format!("{APISERVER_ENV} is not set"),
        })?;
        let dir = tempfile::Builder::new()
            .prefix("nodus-cp-")
            .tempdir()
            .map_err(|e| Error::io(&std::env::temp_dir(), e))?;
        let minor = binary_minor(&binary)?;
        let ca_key;
        let ca = {
            let mut p =
                CertificateParams::new(Vec::<String>::new()).map_err(|e| cert_err("CA", e))?;
            p.distinguished_name
                .push(DnType::CommonName, "nodus-test-ca");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let key = KeyPair::generate().map_err(|e| cert_err("CA key", e))?;
            ca_key = key.serialize_pem();
            CertifiedIssuer::self_signed(p, key).map_err(|e| cert_err("CA", e))?
        };
        let mut cp = ControlPlane {
            dir,
            etcd: None,
            apiserver: None,
            controller_manager: None,
            binary,
            etcd_port: free_port()?,
            port: free_port()?,
            ca,
            minor,
            options,
        };
        cp.write_file("ca.crt", &cp.ca.pem())?;
        // For kube-controller-manager's CSR signer.
        cp.write_file("ca.key", &ca_key)?;
        let advertised = cp.options.advertise_address.map(|a| a.to_string());
        let mut names = vec![
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
        ];
        names.extend(advertised.as_deref());
        cp.issue("apiserver", "kube-apiserver", &[], &names, true)?;
        cp.client_cert("admin", "kubernetes-admin", &["system:masters"])?;
        // The API server's own client identity towards kubelets (issue 14's /exec, /logs).
        cp.client_cert(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &["system:masters"],
        )?;
        let sa = KeyPair::generate().map_err(|e| cert_err("service-account key", e))?;
        cp.write_file("sa.key", &sa.serialize_pem())?;
        cp.write_file("sa.pub", &sa.public_key_pem())?;
        cp.start_etcd()?;
        cp.start_apiserver()?;
        Ok(cp)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir().join("ca.crt")
    }

    /// The CA certificate (PEM), for the kube-root-ca.crt configMap.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    fn write_file(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.dir().join(name);
        fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
        Ok(p)
    }

    fn issue(
        &self,
        name: &str,
        common_name: &str,
        orgs: &[&str],
        dns: &[&str],
        server: bool,
    ) -> Result<ClientCert> {
        let mut p = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .map_err(|e| cert_err(name, e))?;
        p.distinguished_name.push(DnType::CommonName, common_name);
        for o in orgs {
            p.distinguished_name.push(DnType::OrganizationName, *o);
        }
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if server {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p.subject_alt_names
                .push(SanType::IpAddress([127, 0, 0, 1].into()));
            // The first address of --service-cluster-ip-range: the kubernetes Service.
            p.subject_alt_names
                .push(SanType::IpAddress([10, 96, 0, 1].into()));
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = KeyPair::generate().map_err(|e| cert_err(name, e))?;
        let cert = p.signed_by(&key, &self.ca).map_err(|e| cert_err(name, e))?;
        Ok(ClientCert {
            cert: self.write_file(&format!("{name}.crt"), &cert.pem())?,
            key: self.write_file(&format!("{name}.key"), &key.serialize_pem())?,
        })
    }

    /// A client certificate with `common_name` in `groups`, signed by the cluster CA.
    pub fn client_cert(
        &self,
        name: &str,
        common_name: &str,
        groups: &[&str],
    ) -> Result<ClientCert> {
        self.issue(name, common_name, groups, &[], false)
    }

    /// A serving certificate signed by the cluster CA for `dns` names and 127.0.0.1.
    pub fn serving_cert(&self, name: &str, dns: &[&str]) -> Result<ClientCert> {
        self.issue(
            name,
            dns.first().copied().unwrap_or("localhost"),
            &[],
            dns,
            true,
        )
    }

    /// Writes a kubeconfig for `cert` and returns its path.
    pub fn kubeconfig(&self, name: &str, cert: &ClientCert) -> Result<PathBuf> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: nodus\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\nusers:\n- name: {name}\n  user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: {name}\n  context:\n    cluster: nodus\n    user: {name}\ncurrent-context: {name}\n",
            url = self.url(),
            ca = self.ca_path().display(),
            cert = cert.cert.display(),
            key = cert.key.display(),
        );
        self.write_file(&format!("{name}.kubeconfig"), &text)
    }

    /// The admin (`system:masters`) kubeconfig.
    pub fn admin_kubeconfig(&self) -> Result<PathBuf> {
        let cert = ClientCert {
            cert: self.dir().join("admin.crt"),
            key: self.dir().join("admin.key"),
        };
        self.kubeconfig("admin", &cert)
    }

    /// A kubeconfig with which a kubelet acts as node `node`.
    pub fn node_kubeconfig(&self, node: &str) -> Result<PathBuf> {
        let cert = self.client_cert(
            &format!("node-{node}"),
            &format!("system:node:{node}"),
            &["system:nodes"],
        )?;
        self.kubeconfig(&format!("node-{node}"), &cert)
    }

    fn log_file(&self, name: &str) -> Result<(Stdio, Stdio)> {
        let p = self.dir().join(format!("{name}.log"));
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| Error::io(&p, e))?;
        let f2 = f.try_clone().map_err(|e| Error::io(&p, e))?;
        Ok((Stdio::from(f), Stdio::from(f2)))
    }

    /// The last lines a server logged (for failure messages).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = fs::read_to_string(self.dir().join(format!("{name}.log"))).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn start_etcd(&mut self) -> Result<()> {
        let peer = free_port()?;
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let (out, err) = self.log_file("etcd")?;
        let child = Command::new("etcd")
            .arg("--name=nodus-test")
            .arg(format!("--data-dir={}", self.dir().join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!(
                "--initial-cluster=nodus-test=http://127.0.0.1:{peer}"
            ))
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::io(Path::new("etcd"), e))?;
        self.etcd = Some(child);
        Ok(())
    }

    fn apiserver_args(&self) -> Vec<String> {
        let d = self.dir().display().to_string();
        let mut args = vec![
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            format!("--secure-port={}", self.port),
            format!("--cert-dir={d}/certs"),
            format!("--tls-cert-file={d}/apiserver.crt"),
            format!("--tls-private-key-file={d}/apiserver.key"),
            format!("--client-ca-file={d}/ca.crt"),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={d}/sa.pub"),
            format!("--service-account-signing-key-file={d}/sa.key"),
            "--api-audiences=https://kubernetes.default.svc.cluster.local".into(),
            format!("--kubelet-client-certificate={d}/apiserver-kubelet-client.crt"),
            format!("--kubelet-client-key={d}/apiserver-kubelet-client.key"),
            format!("--kubelet-certificate-authority={d}/ca.crt"),
            "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        match self.options.advertise_address {
            Some(address) => {
                args.push("--bind-address=0.0.0.0".into());
                args.push(format!("--advertise-address={address}"));
            }
            None => {
                args.push("--bind-address=127.0.0.1".into());
                args.push("--advertise-address=127.0.0.1".into());
                // Endpoints may not be loopback addresses, and no Service traffic flows here.
                args.push("--endpoint-reconciler-type=none".into());
            }
        }
        if self.options.bootstrap_tokens {
            args.push("--enable-bootstrap-token-auth=true".into());
        }
        if self.minor < 24 {
            // 1.20-1.23 also serve an unauthenticated port on localhost:8080 unless told not to.
            args.push("--insecure-port=0".into());
        }
        if self.minor == 20 {
            // Bound service-account token volumes (projected token + kube-root-ca.crt +
            // namespace) are alpha in 1.20 and the default from 1.21 on.
            args.push("--feature-gates=BoundServiceAccountTokenVolume=true".into());
        }
        args
    }

    fn start_apiserver(&mut self) -> Result<()> {
        let (out, err) = self.log_file("kube-apiserver")?;
        let child = Command::new(&self.binary)
            .args(self.apiserver_args())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::io(&self.binary, e))?;
        self.apiserver = Some(child);
        self.wait_ready()
    }

    /// `/readyz` (or `/healthz` on old servers) through curl with the admin certificate.
    pub fn ready(&self) -> bool {
        let d = self.dir();
        Command::new("curl")
            .args(["-sf", "--max-time", "3", "--cacert"])
            .arg(d.join("ca.crt"))
            .arg("--cert")
            .arg(d.join("admin.crt"))
            .arg("--key")
            .arg(d.join("admin.key"))
            .arg(format!("{}/readyz", self.url()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn wait_ready(&mut self) -> Result<()> {
        // Done when ready (Ok) or when a daemon exited (Err: no use waiting longer).
        let ready = crate::try_wait_until(READY_TIMEOUT, "kube-apiserver /readyz", || {
            let mut exited = None;
            for (name, child) in [
                ("etcd", &mut self.etcd),
                ("kube-apiserver", &mut self.apiserver),
            ] {
                if let Some(Ok(Some(status))) = child.as_mut().map(|c| c.try_wait()) {
                    exited = Some((name, status));
                }
            }
            if let Some((name, status)) = exited {
                return Some(Err(Error::Command {
                    command: name.into(),
                    detail: format!("exited with {status}:\n{}", self.log_tail(name, 20)),
                }));
            }
            self.ready().then_some(Ok(()))
        });
        match ready {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                what: format!(
                    "kube-apiserver /readyz:\n{}",
                    self.log_tail("kube-apiserver", 20)
                ),
                seconds: READY_TIMEOUT.as_secs(),
            }),
        }
    }

    /// Starts kube-controller-manager with only the CSR controllers (approver, signer with
    /// the cluster CA, cleaner) and `extra` arguments; `None` (after a SKIP line) without a
    /// binary (`NODUS_KUBE_CONTROLLER_MANAGER`, else `bin/kube-controller-manager` beside
    /// the API server that `hack/kube-build.sh` made).
    pub fn start_csr_controllers(&mut self, extra: &[&str]) -> Result<Option<()>> {
        let binary = std::env::var_os("NODUS_KUBE_CONTROLLER_MANAGER")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                let p = self.binary.parent()?.join("bin/kube-controller-manager");
                p.exists().then_some(p)
            });
        let Some(binary) = binary else {
            println!("SKIP: no kube-controller-manager (NODUS_KUBE_CONTROLLER_MANAGER not set)");
            return Ok(None);
        };
        let d = self.dir().display().to_string();
        let admin = self.admin_kubeconfig()?;
        let mut args = vec![
            format!("--kubeconfig={}", admin.display()),
            "--controllers=csrapproving,csrsigning,csrcleaner".into(),
            format!("--cluster-signing-cert-file={d}/ca.crt"),
            format!("--cluster-signing-key-file={d}/ca.key"),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            "--v=2".into(),
        ];
        if self.minor < 24 {
            args.push("--port=0".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let (out, err) = self.log_file("kube-controller-manager")?;
        let child = Command::new(&binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::io(&binary, e))?;
        self.controller_manager = Some(child);
        Ok(Some(()))
    }

    /// Stops the API server (SIGTERM, by PID); etcd keeps the data.
    pub fn stop_apiserver(&mut self) {
        if let Some(c) = self.apiserver.take() {
            stop(c);
        }
    }

    /// Starts the API server again on the same port, certificates and etcd.
    pub fn restart_apiserver(&mut self) -> Result<()> {
        self.stop_apiserver();
        self.start_apiserver()
    }
}

fn stop(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let exited = crate::try_wait_until(Duration::from_secs(10), "the process to exit", || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if exited.is_ok() {
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(c) = self.controller_manager.take() {
            stop(c);
        }
        if let Some(c) = self.apiserver.take() {
            stop(c);
        }
        if let Some(c) = self.etcd.take() {
            stop(c);
        }
    }
}

/// The minor version `kube-apiserver --version` reports (`Kubernetes v1.20.2` -> 20).
fn binary_minor(binary: &Path) -> Result<u32> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| Error::io(binary, e))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v1."))
        .and_then(|rest| rest.split('.').next())
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| Error::Command {
            command: format!("{} --version", binary.display()),
            detail: format!("no version in {text:?}"),
        })
}

/// The kubectl binary for tests: `$NODUS_KUBECTL`, else the one `hack/kubectl.sh` unpacked
/// into build/, else None.
pub fn kubectl_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NODUS_KUBECTL").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let p = crate::workspace_root().join("build/kubectl/kubectl");
    p.exists().then_some(p)
}
