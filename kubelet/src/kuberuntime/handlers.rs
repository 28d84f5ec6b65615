//! The actions probes and lifecycle hooks run (upstream `prober` and `lifecycle`
//! handlers): exec through CRI `ExecSync`, HTTP GET (a small HTTP/1.1 client: success is a
//! status in 200..400), TCP connect, and the gRPC health check (`grpc.health.v1.Health/Check`
//! through tonic, SERVING is success). The kubelet runs in the node network namespace, so
//! pod IPs are reachable.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, GRPCAction, HTTPGetAction, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::kuberuntime::cri::{Cri, CriError};

/// Why a probe or hook failed; the Display is what events and statuses show.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandlerError {
    #[error("exec: no command")]
    NoCommand,
    #[error("exec: {0}")]
    Exec(CriError),
    #[error("command exited with {exit_code}: {output}")]
    ExitCode { exit_code: i32, output: String },
    #[error("invalid port {port}")]
    InvalidPort { port: i32 },
    #[error("port name {name:?} not found in the container's ports")]
    PortNameNotFound { name: String },
    #[error("no pod IP yet")]
    NoPodIp,
    #[error("host {host:?} is not an IP address (names are not resolved)")]
    HostNotIp { host: String },
    #[error("httpGet scheme {scheme:?} is not HTTP or HTTPS")]
    HttpScheme { scheme: String },
    #[error("httpGet header {name:?} has a line break")]
    HttpHeader { name: String },
    /// Connecting, the TLS handshake, writing the request or reading the status line.
    #[error("GET {url}: {source}")]
    HttpGet { url: String, source: std::io::Error },
    #[error("GET {url}: {source}")]
    HttpTls {
        url: String,
        source: crate::insecure_tls::TlsClientError,
    },
    #[error("HTTP probe failed with statuscode: {code}")]
    HttpStatus { code: u16 },
    #[error("GET {url}: timed out after {timeout:?}")]
    HttpTimeout { url: String, timeout: Duration },
    #[error("dial tcp {ip}:{port}: {source}")]
    Dial {
        ip: IpAddr,
        port: u16,
        source: std::io::Error,
    },
    #[error("dial tcp {ip}:{port}: timed out after {timeout:?}")]
    DialTimeout {
        ip: IpAddr,
        port: u16,
        timeout: Duration,
    },
    #[error("grpc {addr}: {source}")]
    GrpcAddress {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("failed to connect service {addr}: {source}")]
    GrpcConnect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("health rpc failed: {code:?}: {message}")]
    GrpcRpc { code: tonic::Code, message: String },
    #[error("service unhealthy (responded with status {status})")]
    GrpcUnhealthy { status: i32 },
    #[error("timeout: health rpc did not complete within {timeout:?}")]
    GrpcTimeout { timeout: Duration },
    #[error("invalid grpc port {port}")]
    GrpcPort { port: i32 },
    #[error("lifecycle handler has no action")]
    NoLifecycleAction,
    #[error("probe has no handler (exec, httpGet, tcpSocket or grpc)")]
    NoProbeHandler,
}

/// A probe or hook outcome: Ok, or why it failed.
pub(crate) type Outcome = Result<(), HandlerError>;

/// Upstream caps how much probe output it keeps.
const MAX_OUTPUT: usize = 10 * 1024;

pub(crate) async fn exec(
    cri: &Cri,
    container_id: &str,
    action: &ExecAction,
    timeout: Duration,
) -> Outcome {
    let cmd = action.command.clone().unwrap_or_default();
    if cmd.is_empty() {
        return Err(HandlerError::NoCommand);
    }
    let r = cri
        .exec_sync(container_id, cmd, timeout)
        .await
        .map_err(HandlerError::Exec)?;
    if r.exit_code == 0 {
        Ok(())
    } else {
        let mut out = String::from_utf8_lossy(&r.stdout).to_string();
        out.push_str(&String::from_utf8_lossy(&r.stderr));
        out.truncate(MAX_OUTPUT);
        Err(HandlerError::ExitCode {
            exit_code: r.exit_code,
            output: out.trim_end().to_string(),
        })
    }
}

/// Resolves a port given as a number or as the name of one of the container's ports.
pub(crate) fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, HandlerError> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or(HandlerError::InvalidPort { port: *n }),
        IntOrString::String(s) => {
            if let Ok(n) = s.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| HandlerError::PortNameNotFound { name: s.clone() })
        }
    }
}

fn host_of(host: Option<&str>, pod_ip: Option<&str>) -> Result<IpAddr, HandlerError> {
    let h = host
        .filter(|h| !h.is_empty())
        .or(pod_ip)
        .ok_or(HandlerError::NoPodIp)?;
    h.parse().map_err(|_| HandlerError::HostNotIp {
        host: h.to_string(),
    })
}

/// HTTP GET as upstream's probe: status 200..400 succeeds. `scheme: HTTPS` speaks TLS
/// without verifying the server's certificate, as upstream does (kubeadm's control-plane
/// pods and metrics-server are probed that way, on self-signed certificates).
pub(crate) async fn http_get(
    action: &HTTPGetAction,
    container: &Container,
    pod_ip: Option<&str>,
    timeout: Duration,
) -> Outcome {
    let scheme = action.scheme.as_deref().unwrap_or("HTTP");
    let tls = match scheme {
        s if s.eq_ignore_ascii_case("HTTP") => false,
        s if s.eq_ignore_ascii_case("HTTPS") => true,
        other => {
            return Err(HandlerError::HttpScheme {
                scheme: other.to_string(),
            })
        }
    };
    let ip = host_of(action.host.as_deref(), pod_ip)?;
    let port = resolve_port(&action.port, container)?;
    let path = action
        .path
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    let mut has_host = false;
    let mut has_agent = false;
    for h in action.http_headers.iter().flatten() {
        if h.name.contains(['\r', '\n']) || h.value.contains(['\r', '\n']) {
            return Err(HandlerError::HttpHeader {
                name: h.name.clone(),
            });
        }
        has_host |= h.name.eq_ignore_ascii_case("host");
        has_agent |= h.name.eq_ignore_ascii_case("user-agent");
        req.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    let authority = match ip {
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{v4}:{port}"),
    };
    if !has_host {
        req.push_str(&format!("Host: {authority}\r\n"));
    }
    if !has_agent {
        req.push_str("User-Agent: kube-probe/1.34\r\n");
    }
    req.push_str("Accept: */*\r\nConnection: close\r\n\r\n");
    let url = format!("{}://{authority}{path}", scheme.to_ascii_lowercase());
    let get = |source| HandlerError::HttpGet {
        url: url.clone(),
        source,
    };
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((ip, port))
            .await
            .map_err(get)?;
        let code = if tls {
            let name = rustls_pki_types::ServerName::IpAddress(ip.into());
            let s = crate::insecure_tls::connector()
                .map_err(|source| HandlerError::HttpTls {
                    url: url.clone(),
                    source,
                })?
                .connect(name, tcp)
                .await
                .map_err(get)?;
            status_code(s, &req).await
        } else {
            status_code(tcp, &req).await
        }
        .map_err(get)?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(HandlerError::HttpStatus { code })
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| HandlerError::HttpTimeout {
            url: url.clone(),
            timeout,
        })?
}

/// Sends `req` and reads the status code of the response's status line.
async fn status_code<S>(mut s: S, req: &str) -> std::io::Result<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    // Only the status line matters.
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 8192 {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response")
        })
}

pub(crate) async fn tcp(
    action: &TCPSocketAction,
    container: &Container,
    pod_ip: Option<&str>,
    timeout: Duration,
) -> Outcome {
    let ip = host_of(action.host.as_deref(), pod_ip)?;
    let port = resolve_port(&action.port, container)?;
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(HandlerError::Dial { ip, port, source }),
        Err(_) => Err(HandlerError::DialTimeout { ip, port, timeout }),
    }
}

/// `grpc.health.v1.Health/Check` against `ip:port`.
pub(crate) async fn grpc_check(ip: IpAddr, port: u16, service: &str, timeout: Duration) -> Outcome {
    let addr = match ip {
        IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("http://{v4}:{port}"),
    };
    let fut = async {
        let ch = tonic::transport::Endpoint::from_shared(addr.clone())
            .map_err(|source| HandlerError::GrpcAddress {
                addr: addr.clone(),
                source,
            })?
            .connect()
            .await
            .map_err(|source| HandlerError::GrpcConnect {
                addr: addr.clone(),
                source,
            })?;
        let resp = HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .map_err(|s| HandlerError::GrpcRpc {
                code: s.code(),
                message: s.message().to_string(),
            })?;
        let status = resp.into_inner().status;
        if status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            Err(HandlerError::GrpcUnhealthy { status })
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| HandlerError::GrpcTimeout { timeout })?
}

pub(crate) async fn grpc(action: &GRPCAction, pod_ip: Option<&str>, timeout: Duration) -> Outcome {
    let ip = host_of(None, pod_ip)?;
    let port = u16::try_from(action.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(HandlerError::GrpcPort { port: action.port })?;
    grpc_check(ip, port, action.service.as_deref().unwrap_or(""), timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_and_tcp_against_a_local_server() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let code = if req.starts_with("GET /ok ") {
                    200
                } else {
                    500
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let c = Container::default();
        let get = |path: &str| HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port as i32),
            ..Default::default()
        };
        let t = Duration::from_secs(2);
        let r = http_get(&get("/ok"), &c, Some("127.0.0.1"), t).await;
        assert!(r.is_ok(), "{r:?}");
        let e = http_get(&get("/bad"), &c, Some("127.0.0.1"), t)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("statuscode: 500"), "{e}");
        let tcp_ok = TCPSocketAction {
            port: IntOrString::Int(port as i32),
            ..Default::default()
        };
        let r = tcp(&tcp_ok, &c, Some("127.0.0.1"), t).await;
        assert!(r.is_ok(), "{r:?}");
        // A port nobody listens on (bound then dropped).
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fport = free.local_addr().unwrap().port();
        drop(free);
        let tcp_bad = TCPSocketAction {
            port: IntOrString::Int(fport as i32),
            ..Default::default()
        };
        assert!(tcp(&tcp_bad, &c, Some("127.0.0.1"), t).await.is_err());
        let e = grpc_check("127.0.0.1".parse().unwrap(), fport, "", t)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("connect"), "{e}");
    }

    #[tokio::test]
    async fn https_probe_accepts_a_self_signed_certificate() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 2048];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let ok = String::from_utf8_lossy(&buf[..n]).starts_with("GET /healthz ");
                    let code = if ok { 200 } else { 503 };
                    let reply = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        let c = Container::default();
        let get = |path: &str, scheme: &str| HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port as i32),
            scheme: Some(scheme.into()),
            ..Default::default()
        };
        let t = Duration::from_secs(5);
        let ip = Some("127.0.0.1");
        let r = http_get(&get("/healthz", "HTTPS"), &c, ip, t).await;
        assert!(r.is_ok(), "{r:?}");
        let e = http_get(&get("/other", "HTTPS"), &c, ip, t)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("statuscode: 503"), "{e}");
        // Plain HTTP against a TLS server does not pass.
        assert!(http_get(&get("/healthz", "HTTP"), &c, ip, t).await.is_err());
        let e = http_get(&get("/healthz", "FTP"), &c, ip, t)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"FTP\""), "{e}");
    }

    #[tokio::test]
    async fn grpc_health_check() {
        use tonic_health::ServingStatus;
        let t = Duration::from_secs(5);
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("nodus", ServingStatus::NotServing)
            .await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l)),
        );
        // "" is the server's overall health (SERVING); "nodus" was set NOT_SERVING (2).
        let overall = grpc_check(addr.ip(), addr.port(), "", t).await;
        let nodus = grpc_check(addr.ip(), addr.port(), "nodus", t).await;
        let unknown = grpc_check(addr.ip(), addr.port(), "other", t).await;
        server.abort();
        assert!(overall.is_ok(), "{overall:?}");
        assert!(
            nodus.as_ref().unwrap_err().to_string().contains("status 2"),
            "{nodus:?}"
        );
        assert!(
            unknown
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("NotFound"),
            "{unknown:?}"
        );
    }

    #[test]
    fn named_ports() {
        let c: Container =
            serde_json::from_str(r#"{"name":"c","ports":[{"name":"http","containerPort":8080}]}"#)
                .unwrap();
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c).unwrap(),
            8080
        );
        let e = resolve_port(&IntOrString::String("nope".into()), &c).unwrap_err();
        assert_eq!(
            e.to_string(),
            "port name \"nope\" not found in the container's ports"
        );
        let e = resolve_port(&IntOrString::Int(0), &c).unwrap_err();
        assert_eq!(e.to_string(), "invalid port 0");
    }

    #[test]
    fn host_and_timeout_messages() {
        assert_eq!(
            host_of(None, None).unwrap_err().to_string(),
            "no pod IP yet"
        );
        assert_eq!(
            host_of(Some("example.com"), Some("10.0.0.1"))
                .unwrap_err()
                .to_string(),
            "host \"example.com\" is not an IP address (names are not resolved)"
        );
        let e = HandlerError::DialTimeout {
            ip: "10.0.0.1".parse().unwrap(),
            port: 80,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(e.to_string(), "dial tcp 10.0.0.1:80: timed out after 1s");
    }
}
