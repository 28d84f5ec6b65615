//! Kubelet API benchmark (not a test; run by `hack/bench-kubelet-api.sh`).
//!
//! One node (private containerd, our kubelet in API-server mode with client certificates,
//! TokenReview and SubjectAccessReview on, as kubeadm configures it) and a real control
//! plane, all in the node's network namespace. Measured in the same run:
//!
//! - `exec -- true` round trip: `kubectl exec` (API server -> kubelet -> containerd), the
//!   kubelet's `/exec` directly (WebSocket, `v4.channel.k8s.io`, over TLS with a client
//!   certificate), and the floor: CRI `Exec` plus the same WebSocket client against
//!   containerd's streaming server, which is what `crictl exec` does (crictl is not in
//!   Debian; the floor is the path without a kubelet).
//! - log streaming throughput of a 20 MB container log: `kubectl logs`, the kubelet's
//!   `/containerLogs` directly, and the floor: reading and decoding the CRI log file in
//!   process, which is what `crictl logs` does.
//!
//! Ratios are floor/ours (1.0 would be free).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use nodus_proto::runtime::v1 as cri;
use nodus_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use nodus_testkit::{Cni, ContainerdOptions, ControlPlane, PrivateContainerd, BUSYBOX_IMAGE};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const NODE: &str = "bench";
const NODE_IP: &str = "10.68.0.1";
const LOG_LINES: usize = 200_000;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// TLS towards the kubelet as the cluster admin (its client certificate).
fn tls_config(cp: &ControlPlane) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cp.ca_path())? {
        roots.add(c?)?;
    }
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cp.dir().join("admin.crt"))?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(cp.dir().join("admin.key"))?;
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

async fn kubelet_tls(
    tls: &Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect((NODE_IP, 10250)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(NODE.to_string())?;
    Ok(tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await?)
}

/// A WebSocket exec over `io` to `url`; returns the bytes of stdout once the stream ends.
async fn ws_exec<S>(io: S, url: &str) -> Result<usize>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "v4.channel.k8s.io".parse()?);
    let (mut ws, resp) = tokio_tungstenite::client_async(req, io).await?;
    if resp.status() != 101 {
        bail!("{url}: {}", resp.status());
    }
    let mut out = 0;
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(tokio_tungstenite::tungstenite::Message::Binary(b)) => {
                if b.first() == Some(&1) {
                    out += b.len() - 1;
                }
                if b.first() == Some(&3) && b.len() > 1 && !b.windows(7).any(|w| w == b"Success") {
                    bail!("exec failed: {}", String::from_utf8_lossy(&b[1..]));
                }
            }
            Ok(tokio_tungstenite::tungstenite::Message::Close(_)) => break,
            Ok(_) => {}
            // containerd closes the TCP connection without a close frame.
            Err(_) => break,
        }
    }
    Ok(out)
}

async fn https_get_len(tls: &Arc<rustls::ClientConfig>, path: &str) -> Result<usize> {
    let io = kubelet_tls(tls).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("Host", NODE)
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
    let resp = send.send_request(req).await?;
    if resp.status() != 200 {
        bail!("GET {path}: {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame?.into_data() {
            n += d.len();
        }
    }
    Ok(n)
}

fn kubectl(kubectl: &Path, admin: &Path, args: &[&str]) -> Result<(Duration, usize)> {
    let t0 = Instant::now();
    let out = Command::new(kubectl)
        .arg(format!("--kubeconfig={}", admin.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    let dt = t0.elapsed();
    if !out.status.success() {
        bail!(
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((dt, out.stdout.len()))
}

async fn container_of(ch: &tonic::transport::Channel, pod: &str) -> Result<cri::Container> {
    let list = RuntimeServiceClient::new(ch.clone())
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: HashMap::from([(
                    "io.kubernetes.pod.name".to_string(),
                    pod.to_string(),
                )]),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    list.into_iter()
        .find(|c| c.state == cri::ContainerState::ContainerRunning as i32)
        .with_context(|| format!("no running container of {pod}"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let kubectl_bin = std::path::PathBuf::from(
        std::env::var("NODUS_KUBECTL").context("NODUS_KUBECTL (hack/kubectl.sh)")?,
    );
    let ctrd = PrivateContainerd::start(ContainerdOptions {
        cni: Cni::NodusBridge {
            subnet: "10.68.0.0/24".into(),
        },
        in_node_netns: true,
        ..Default::default()
    })
    .await?;
    ctrd.node_netns().enter_current_thread()?;
    let cp = ControlPlane::start()?;
    let admin = cp.admin_kubeconfig()?;
    let node_kc = cp.node_kubeconfig(NODE)?;
    let serving = cp.serving_cert("kubelet-serving", &[NODE, NODE_IP])?;
    let kc = kube::config::Kubeconfig::read_from(&admin)?;
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?,
    )?;
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let mut account = ServiceAccount::default();
    account.metadata.name = Some("default".into());
    for _ in 0..50 {
        if sa.create(&PostParams::default(), &account).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let manifests = ctrd.dir().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let config = ctrd.dir().join("kubelet.yaml");
    std::fs::write(
        &config,
        ctrd.kubelet_config(
            &manifests,
            &format!(
                "healthzPort: 0\naddress: 0.0.0.0\ncontainerLogMaxSize: 500Mi\n\
                 tlsCertFile: {}\ntlsPrivateKeyFile: {}\n\
                 authentication:\n  x509: {{clientCAFile: {}}}\n  webhook: {{enabled: true}}\n\
                 authorization: {{mode: Webhook}}\n",
                serving.cert.display(),
                serving.key.display(),
                cp.ca_path().display()
            ),
        ),
    )?;
    let kubelet_bin = nodus_testkit::bin_path("kubelet");
    let log = std::fs::File::create(ctrd.dir().join("kubelet.log"))?;
    let _kubelet = KillOnDrop(
        Command::new(&kubelet_bin)
            .arg(format!("--config={}", config.display()))
            .arg(format!(
                "--root-dir={}",
                ctrd.dir().join("kubelet").display()
            ))
            .arg(format!("--hostname-override={NODE}"))
            .arg(format!("--node-ip={NODE_IP}"))
            .arg(format!("--kubeconfig={}", node_kc.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", kubelet_bin.display()))?,
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let line = "0123456789".repeat(10);
    for (name, cmd) in [
        ("target", "sleep 3600".to_string()),
        (
            "logger",
            format!(
                "yes {} | head -n {LOG_LINES}; echo DONE; sleep 3600",
                &line[..99]
            ),
        ),
    ] {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
             nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  automountServiceAccountToken: false\n  \
             containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [sh, -c, '{cmd}']\n"
        );
        let pod: Pod = serde_yaml::from_str(&yaml)?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = kubectl(&kubectl_bin, &admin, &["logs", "--tail=1", "logger"])
            .is_ok_and(|(_, n)| n == 5);
        let exec_ok = kubectl(&kubectl_bin, &admin, &["exec", "target", "--", "true"]).is_ok();
        if done && exec_ok {
            break;
        }
        if Instant::now() > deadline {
            bail!("pods not ready in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let tls = tls_config(&cp)?;
    let ch = nodus_proto::connect(&ctrd.endpoint()).await?;
    let target = container_of(&ch, "target").await?;

    // exec -- true
    let (mut via_kubectl, mut via_kubelet, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    let kubelet_url =
        format!("wss://{NODE}:10250/exec/default/target/main?command=true&output=1&error=1");
    for _ in 0..runs {
        let (dt, _) = kubectl(&kubectl_bin, &admin, &["exec", "target", "--", "true"])?;
        via_kubectl.push(ms(dt));

        let t0 = Instant::now();
        let io = kubelet_tls(&tls).await?;
        ws_exec(io, &kubelet_url).await?;
        via_kubelet.push(ms(t0.elapsed()));

        let t0 = Instant::now();
        let url = RuntimeServiceClient::new(ch.clone())
            .exec(cri::ExecRequest {
                container_id: target.id.clone(),
                cmd: vec!["true".into()],
                stdout: true,
                stderr: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .url;
        let uri: hyper::Uri = url.parse()?;
        let tcp = tokio::net::TcpStream::connect((
            uri.host().context("host")?,
            uri.port_u16().unwrap_or(80),
        ))
        .await?;
        tcp.set_nodelay(true)?;
        ws_exec(tcp, &url.replacen("http://", "ws://", 1)).await?;
        floor.push(ms(t0.elapsed()));
    }

    // Log streaming.
    let logger = container_of(&ch, "logger").await?;
    let log_path = RuntimeServiceClient::new(ch.clone())
        .container_status(cri::ContainerStatusRequest {
            container_id: logger.id.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("status")?
        .log_path;
    let file_mb = std::fs::metadata(&log_path)?.len() as f64 / 1e6;
    let (mut tp_kubectl, mut tp_kubelet, mut tp_floor) = (Vec::new(), Vec::new(), Vec::new());
    let mut out_mb = 0.0;
    for _ in 0..5 {
        let (dt, n) = kubectl(&kubectl_bin, &admin, &["logs", "logger"])?;
        out_mb = n as f64 / 1e6;
        tp_kubectl.push(out_mb / dt.as_secs_f64());

        let t0 = Instant::now();
        let n = https_get_len(&tls, "/containerLogs/default/logger/main").await?;
        tp_kubelet.push(n as f64 / 1e6 / t0.elapsed().as_secs_f64());

        let t0 = Instant::now();
        let text = std::fs::read_to_string(&log_path)?;
        let (lines, _) = nodus_kubelet::logs::parse(&text, true);
        let out = nodus_kubelet::logs::render(&lines, false);
        tp_floor.push(out.len() as f64 / 1e6 / t0.elapsed().as_secs_f64());
    }

    let (k50, k99) = (pct(&mut via_kubectl, 50.0), pct(&mut via_kubectl, 99.0));
    let (d50, d99) = (pct(&mut via_kubelet, 50.0), pct(&mut via_kubelet, 99.0));
    let (f50, f99) = (pct(&mut floor, 50.0), pct(&mut floor, 99.0));
    println!(
        "exec -- true round trip, ms (n={runs}, kube-apiserver {})",
        cp.minor
    );
    println!("{:<46}{:>10}{:>10}", "", "p50", "p99");
    println!(
        "{:<46}{:>10.1}{:>10.1}",
        "kubectl exec (API server -> kubelet)", k50, k99
    );
    println!(
        "{:<46}{:>10.1}{:>10.1}",
        "kubelet /exec directly (TLS, WebSocket)", d50, d99
    );
    println!(
        "{:<46}{:>10.1}{:>10.1}",
        "floor: CRI Exec + containerd stream", f50, f99
    );
    println!("ratio floor/kubelet, p50: {:.2}", f50 / d50);
    println!("ratio floor/kubectl, p50: {:.2}", f50 / k50);
    let (lk, ld, lf) = (
        pct(&mut tp_kubectl, 50.0),
        pct(&mut tp_kubelet, 50.0),
        pct(&mut tp_floor, 50.0),
    );
    println!(
        "log streaming, MB/s (median of 5; {LOG_LINES} lines, {out_mb:.1} MB out of a {file_mb:.1} MB CRI log)"
    );
    println!("{:<46}{:>10.1}", "kubectl logs (API server -> kubelet)", lk);
    println!("{:<46}{:>10.1}", "kubelet /containerLogs directly", ld);
    println!(
        "{:<46}{:>10.1}",
        "floor: read + decode the CRI log file", lf
    );
    println!("ratio kubelet/floor throughput: {:.2}", ld / lf);
    println!("ratio kubectl/floor throughput: {:.2}", lk / lf);
    Ok(())
}
