//! `/exec`, `/attach` and `/portForward`: the kubelet asks the runtime for a streaming URL
//! (CRI `Exec`, `Attach`, `PortForward`) and proxies the client's upgrade request to it, as
//! upstream does since it stopped redirecting. The proxy copies bytes after the `101
//! Switching Protocols`, so SPDY and WebSocket pass alike.

use std::collections::HashMap;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nodus_proto::runtime::v1 as cri;

use super::{reply, Body};
use crate::kubelet::Shared;
use crate::kuberuntime::labels;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Exec,
    Attach,
    PortForward,
}

/// A streaming request's query that upstream refuses (its messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("unable to parse {port:?} as a port")]
    BadPort { port: String },
    #[error("you must specify at least 1 of stdin, stdout, stderr")]
    NoStreams,
    #[error("you must specify a command")]
    NoCommand,
}

/// The query of a streaming request, as upstream reads it (`input=1`, `command=...`).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct StreamOptions {
    pub(crate) command: Vec<String>,
    pub(crate) stdin: bool,
    pub(crate) stdout: bool,
    pub(crate) stderr: bool,
    pub(crate) tty: bool,
    pub(crate) ports: Vec<i32>,
}

impl StreamOptions {
    pub(crate) fn from_query(kind: Kind, query: &str) -> Result<StreamOptions, StreamError> {
        let mut o = StreamOptions::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "command" => o.command.push(v.into_owned()),
                "input" => o.stdin = v == "1",
                "output" => o.stdout = v == "1",
                "error" => o.stderr = v == "1",
                "tty" => o.tty = v == "1",
                "port" => {
                    for p in v.split(',').filter(|p| !p.is_empty()) {
                        let n: i32 = p
                            .parse()
                            .ok()
                            .filter(|n| (1..=65535).contains(n))
                            .ok_or_else(|| StreamError::BadPort {
                                port: p.to_string(),
                            })?;
                        o.ports.push(n);
                    }
                }
                _ => {}
            }
        }
        if kind == Kind::PortForward {
            return Ok(o);
        }
        if !o.stdin && !o.stdout && !o.stderr {
            return Err(StreamError::NoStreams);
        }
        // Upstream bypasses stderr with a TTY (the runtime refuses both).
        if o.tty && o.stderr {
            o.stderr = false;
        }
        if kind == Kind::Exec && o.command.is_empty() {
            return Err(StreamError::NoCommand);
        }
        Ok(o)
    }
}

/// `{ns}/{pod}[/{uid}]/{container}` (exec, attach) or `{ns}/{pod}[/{uid}]` (portForward).
fn parse_path(kind: Kind, rest: &str) -> Option<(String, String, Option<String>, String)> {
    let parts: Vec<String> = rest
        .trim_end_matches('/')
        .split('/')
        .map(super::percent_decode)
        .collect();
    let p = |i: usize| parts[i].clone();
    match (kind, parts.len()) {
        (Kind::PortForward, 2) => Some((p(0), p(1), None, String::new())),
        (Kind::PortForward, 3) => Some((p(0), p(1), Some(p(2)), String::new())),
        (Kind::Exec | Kind::Attach, 3) => Some((p(0), p(1), None, p(2))),
        (Kind::Exec | Kind::Attach, 4) => Some((p(0), p(1), Some(p(2)), p(3))),
        _ => None,
    }
    .filter(|(ns, pod, _, c)| {
        !ns.is_empty() && !pod.is_empty() && (kind == Kind::PortForward || !c.is_empty())
    })
}

/// The runtime's current container of that name in the pod (the newest attempt).
async fn find_container(shared: &Shared, uid: &str, name: &str) -> Option<String> {
    let sel = HashMap::from([
        (labels::POD_UID_LABEL.to_string(), uid.to_string()),
        (labels::CONTAINER_NAME_LABEL.to_string(), name.to_string()),
    ]);
    let mut list = shared.cri.list_containers(sel).await.ok()?;
    list.sort_by_key(|c| {
        (
            c.state == cri::ContainerState::ContainerRunning as i32,
            labels::restart_count(&c.annotations),
        )
    });
    list.pop().map(|c| c.id)
}

async fn find_sandbox(shared: &Shared, uid: &str) -> Option<String> {
    let sel = HashMap::from([(labels::POD_UID_LABEL.to_string(), uid.to_string())]);
    let mut list = shared.cri.list_pod_sandbox(sel).await.ok()?;
    list.sort_by_key(|s| {
        (
            s.state == cri::PodSandboxState::SandboxReady as i32,
            s.created_at,
        )
    });
    list.pop().map(|s| s.id)
}

/// A runtime error as upstream's `streaming.WriteError` answers it.
fn cri_error(e: crate::kuberuntime::cri::CriError) -> Response<Body> {
    let code = match &e {
        crate::kuberuntime::cri::CriError::Status {
            code: tonic::Code::NotFound,
            ..
        } => StatusCode::NOT_FOUND,
        crate::kuberuntime::cri::CriError::Status {
            code: tonic::Code::ResourceExhausted,
            ..
        } => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    reply(code, "text/plain", e.to_string())
}

pub(crate) async fn handle(
    shared: &Shared,
    kind: Kind,
    rest: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some((ns, name, uid, container)) = parse_path(kind, rest) else {
        return reply(StatusCode::NOT_FOUND, "text/plain", "404 page not found");
    };
    let opts = match StreamOptions::from_query(kind, req.uri().query().unwrap_or("")) {
        Ok(o) => o,
        Err(e) => return reply(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
    };
    let Some(pod) = shared.pods.all().into_iter().find(|p| {
        p.metadata.namespace.as_deref().unwrap_or("default") == ns
            && p.metadata.name.as_deref() == Some(name.as_str())
    }) else {
        return reply(StatusCode::NOT_FOUND, "text/plain", "pod does not exist");
    };
    let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
    if uid.as_ref().is_some_and(|u| *u != pod_uid) {
        return reply(StatusCode::NOT_FOUND, "text/plain", "pod does not exist");
    }
    let url = match kind {
        Kind::PortForward => {
            let Some(sandbox) = find_sandbox(shared, &pod_uid).await else {
                return reply(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    format!("pod not found ({ns}/{name})"),
                );
            };
            shared
                .cri
                .port_forward(cri::PortForwardRequest {
                    pod_sandbox_id: sandbox,
                    port: opts.ports.clone(),
                })
                .await
        }
        Kind::Exec | Kind::Attach => {
            let Some(id) = find_container(shared, &pod_uid, &container).await else {
                // Upstream answers a missing container with a plain error: 500.
                return reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("container not found ({container:?})"),
                );
            };
            if kind == Kind::Exec {
                shared
                    .cri
                    .exec(cri::ExecRequest {
                        container_id: id,
                        cmd: opts.command.clone(),
                        tty: opts.tty,
                        stdin: opts.stdin,
                        stdout: opts.stdout,
                        stderr: opts.stderr,
                        audit_request_id: String::new(),
                    })
                    .await
            } else {
                shared
                    .cri
                    .attach(cri::AttachRequest {
                        container_id: id,
                        stdin: opts.stdin,
                        tty: opts.tty,
                        stdout: opts.stdout,
                        stderr: opts.stderr,
                        audit_request_id: String::new(),
                    })
                    .await
            }
        }
    };
    match url {
        Ok(url) => proxy(req, &url).await,
        Err(e) => cri_error(e),
    }
}

/// Hop-by-hop headers a proxy does not pass on, except the upgrade pair a stream needs.
fn forwarded(name: &hyper::header::HeaderName) -> bool {
    use hyper::header::*;
    !matches!(
        *name,
        HOST | AUTHORIZATION
            | PROXY_AUTHORIZATION
            | TE
            | TRAILER
            | TRANSFER_ENCODING
            | CONTENT_LENGTH
    ) && name.as_str() != "keep-alive"
}

/// Sends the client's request to the runtime's streaming URL; on `101` splices the two
/// upgraded connections together, otherwise relays the answer.
async fn proxy(mut req: Request<Incoming>, url: &str) -> Response<Body> {
    let fail = |m: String| reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", m);
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return fail(format!(
            "the runtime's streaming URL {url:?} does not parse"
        ));
    };
    if uri.scheme_str() != Some("http") {
        return fail(format!(
            "the runtime's streaming URL {url}: only http is supported (containerd: enable_tls_streaming = false)"
        ));
    }
    let (Some(host), Some(authority)) = (uri.host(), uri.authority().cloned()) else {
        return fail(format!("the runtime's streaming URL {url} has no host"));
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = match tokio::net::TcpStream::connect((host.as_str(), port)).await {
        Ok(s) => s,
        Err(e) => {
            return fail(format!(
                "connecting to the runtime's streaming server {authority}: {e}"
            ))
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(v) => v,
        Err(e) => return fail(format!("streaming server {authority}: {e}")),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "streaming connection to the runtime ended");
        }
    });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut out = Request::builder().method(req.method().clone()).uri(path);
    for (k, v) in req.headers() {
        if forwarded(k) {
            out = out.header(k, v);
        }
    }
    out = out.header(hyper::header::HOST, authority.as_str());
    let Ok(out) = out.body(Empty::<Bytes>::new()) else {
        return fail("building the streaming request".into());
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = match sender.send_request(out).await {
        Ok(r) => r,
        Err(e) => return fail(format!("streaming server {authority}: {e}")),
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let body: Body = if status == StatusCode::SWITCHING_PROTOCOLS {
        let runtime_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, runtime_upgrade) {
                Ok((client, runtime)) => {
                    let (mut a, mut b) = (TokioIo::new(client), TokioIo::new(runtime));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
                        tracing::debug!(error = %e, "stream ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "stream upgrade failed"),
            }
        });
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        match resp.into_body().collect().await {
            Ok(b) => http_body_util::Full::new(b.to_bytes()).boxed(),
            Err(e) => return fail(format!("streaming server {authority}: {e}")),
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    for (k, v) in &headers {
        if forwarded(k) || k == hyper::header::CONTENT_LENGTH {
            r.headers_mut().append(k, v.clone());
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_as_the_api_server_sends_them() {
        let o = StreamOptions::from_query(
            Kind::Exec,
            "command=sh&command=-c&command=echo+hi%21&input=1&output=1&error=1&tty=0",
        )
        .unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo hi!"]);
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        let o = StreamOptions::from_query(Kind::Attach, "output=1&error=1&tty=1").unwrap();
        assert!(o.tty && !o.stderr, "stderr is bypassed with a tty");
        let e = StreamOptions::from_query(Kind::Exec, "command=true").unwrap_err();
        assert_eq!(
            e.to_string(),
            "you must specify at least 1 of stdin, stdout, stderr"
        );
        let e = StreamOptions::from_query(Kind::Exec, "output=1").unwrap_err();
        assert_eq!(e.to_string(), "you must specify a command");
        let o = StreamOptions::from_query(Kind::PortForward, "port=80&port=8080,9090").unwrap();
        assert_eq!(o.ports, [80, 8080, 9090]);
        let e = StreamOptions::from_query(Kind::PortForward, "port=http").unwrap_err();
        assert_eq!(e.to_string(), "unable to parse \"http\" as a port");
        assert!(StreamOptions::from_query(Kind::PortForward, "port=70000").is_err());
    }

    #[test]
    fn paths_with_and_without_uid() {
        assert_eq!(
            parse_path(Kind::Exec, "default/web/app"),
            Some(("default".into(), "web".into(), None, "app".into()))
        );
        assert_eq!(
            parse_path(Kind::Attach, "default/web/u1/app"),
            Some((
                "default".into(),
                "web".into(),
                Some("u1".into()),
                "app".into()
            ))
        );
        assert_eq!(
            parse_path(Kind::PortForward, "default/web"),
            Some(("default".into(), "web".into(), None, String::new()))
        );
        assert_eq!(parse_path(Kind::Exec, "default/web"), None);
        assert_eq!(parse_path(Kind::Exec, "default//app"), None);
        assert_eq!(parse_path(Kind::PortForward, "a/b/c/d"), None);
    }
}
