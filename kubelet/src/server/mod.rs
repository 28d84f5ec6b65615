//! The kubelet's HTTP endpoints (hyper 1) on its three ports:
//! - the healthz port (`GET /healthz`, plain HTTP on 127.0.0.1:10248);
//! - the read-only port (plain HTTP, off by default): `/pods`, `/healthz`, `/metrics`,
//!   `/metrics/resource`, `/stats/summary`, never logs, exec, attach or port-forward (as
//!   upstream's);
//! - the authenticated port (`--port`, 10250, HTTPS): everything the read-only port has and
//!   `/containerLogs/`, `/runningpods/`, `/configz`, `/exec`, `/attach`, `/portForward`,
//!   `/logs/` (when `enableSystemLogHandler`), each request authenticated and authorized
//!   first (see `auth`).

pub mod auth;
mod cadvisor;
pub(crate) mod pages;
pub(crate) mod streaming;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use k8s_openapi::List;
use std::sync::Arc;

use crate::config::Config;
use crate::kubelet::Shared;

/// The pods with their latest statuses, as upstream's `/pods`.
pub(crate) fn pod_list(shared: &Shared) -> List<Pod> {
    let items = shared
        .pods
        .all()
        .into_iter()
        .map(|p| {
            let mut pod = (*p).clone();
            if let Some(s) = shared.status.get(pod.metadata.uid.as_deref().unwrap_or("")) {
                pod.status = Some(s);
            }
            pod
        })
        .collect();
    List {
        items,
        metadata: ListMeta::default(),
    }
}

pub(crate) type Body = BoxBody<Bytes, Infallible>;

pub(crate) fn reply(
    code: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = code;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn healthz(shared: &Shared) -> Response<Body> {
    match shared.healthy() {
        Ok(()) => reply(StatusCode::OK, "text/plain", "ok"),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("unhealthy: {e}"),
        ),
    }
}

pub(crate) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `GET /containerLogs/{namespace}/{pod}/{container}`.
async fn container_logs(shared: &Shared, rest: &str, query: &str) -> Response<Body> {
    let parts: Vec<String> = rest.split('/').map(percent_decode).collect();
    let [ns, name, container] = &parts[..] else {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "expected /containerLogs/{namespace}/{pod}/{container}",
        );
    };
    let opts = match crate::logs::LogOptions::from_query(query) {
        Ok(o) => o,
        Err(e) => return reply(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
    };
    let Some(pod) = shared.pods.all().into_iter().find(|p| {
        p.metadata.namespace.as_deref().unwrap_or("default") == ns
            && p.metadata.name.as_deref() == Some(name.as_str())
    }) else {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("pod {ns}/{name} not found"),
        );
    };
    let in_spec = crate::pod_util::app_containers(&pod)
        .iter()
        .chain(crate::pod_util::init_containers(&pod))
        .any(|c| &c.name == container);
    if !in_spec {
        return reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            format!("container {container} is not valid for pod {name}"),
        );
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let (path, id) =
        match crate::logs::find_log(&shared.cri, &uid, name, container, opts.previous).await {
            Ok(v) => v,
            Err((code, msg)) => {
                let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
                return reply(code, "text/plain", msg);
            }
        };
    let path = std::path::PathBuf::from(path);
    let (text, offset) = match crate::logs::read_all(&path, &opts) {
        Ok(v) => v,
        Err(e) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("reading {}: {e}", path.display()),
            )
        }
    };
    // Logs go out as a stream of unknown length (chunked), as upstream sends them, also when
    // not following.
    if !opts.follow {
        let once =
            futures::stream::once(async move { Ok::<_, Infallible>(Frame::data(text.into())) });
        return streamed(StreamBody::new(end_apart(once)));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let cri = shared.cri.clone();
    tokio::spawn(follow_log(cri, id, path, offset, text, opts.timestamps, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    streamed(StreamBody::new(end_apart(stream)))
}

/// `s`, ended only after the task has yielded once: hyper flushes what it holds when the
/// body is pending, so the last data and the terminating chunk go out in separate writes
/// (TLS records). Go's chunked reader hands the last bytes over together with io.EOF when
/// the terminating chunk came with them, and the API server's WebSocket log copy (wsstream)
/// drops bytes that come with EOF: `kubectl logs` over WebSocket then sees nothing.
fn end_apart<S>(s: S) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>>
where
    S: futures::Stream<Item = Result<Frame<Bytes>, Infallible>>,
{
    use futures::StreamExt;
    let pause = futures::stream::once(async {
        tokio::task::yield_now().await;
    })
    .filter_map(|()| async { None });
    s.chain(pause)
}

/// A text/plain response whose body has no length known in advance.
fn streamed<S>(body: StreamBody<S>) -> Response<Body>
where
    S: futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync + 'static,
{
    let mut r = Response::new(BodyExt::boxed(body));
    if let Ok(v) = "text/plain".parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Sends what is appended to the log until the container stops or the client goes.
async fn follow_log(
    cri: crate::kuberuntime::cri::Cri,
    id: String,
    path: std::path::PathBuf,
    mut offset: u64,
    first: String,
    timestamps: bool,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    use std::io::{Read, Seek, SeekFrom};
    if !first.is_empty() && tx.send(Bytes::from(first)).await.is_err() {
        return;
    }
    let mut carry = String::new();
    let mut polls = 0u32;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if tx.is_closed() {
            return;
        }
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            // Rotated: the runtime writes a new file from the start.
            offset = 0;
        }
        if len > offset {
            let mut buf = Vec::new();
            if let Ok(mut f) = std::fs::File::open(&path) {
                let _ = f.seek(SeekFrom::Start(offset));
                let _ = f.take(len - offset).read_to_end(&mut buf);
            }
            offset += buf.len() as u64;
            carry.push_str(&String::from_utf8_lossy(&buf));
            let (lines, consumed) = crate::logs::parse(&carry, false);
            carry.drain(..consumed);
            let out = crate::logs::render(&lines, timestamps);
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
            continue;
        }
        polls += 1;
        if polls.is_multiple_of(5) {
            let running = matches!(
                cri.container_status(&id).await,
                Ok(st) if st.state == nodus_proto::runtime::v1::ContainerState::ContainerRunning as i32
            );
            if !running {
                // The output is complete: a last line without its newline goes out too.
                let (lines, _) = crate::logs::parse(&carry, true);
                let out = crate::logs::render(&lines, timestamps);
                if !out.is_empty() {
                    let _ = tx.send(Bytes::from(out)).await;
                }
                return;
            }
        }
    }
}

/// Which port a request came in on, and what that port serves.
#[derive(Clone)]
pub enum Port {
    Healthz,
    ReadOnly,
    Authenticated(Arc<Secure>),
}

/// What the authenticated port needs beside the kubelet's shared state.
pub struct Secure {
    pub auth: Arc<auth::Auth>,
    pub cfg: Config,
}

fn not_found() -> Response<Body> {
    reply(StatusCode::NOT_FOUND, "text/plain", "404 page not found")
}

async fn handle(
    req: Request<Incoming>,
    shared: Shared,
    port: Port,
    peer: Option<auth::UserInfo>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let secure = match &port {
        Port::Authenticated(s) => {
            let user = match s.auth.authenticate(peer, req.headers()).await {
                Ok(u) => u,
                Err(r) => return Ok(refusal(r)),
            };
            if let Err(r) = s.auth.authorize(&user, req.method(), &path).await {
                tracing::debug!(user = %user.name, path, "kubelet API request refused");
                return Ok(refusal(r));
            }
            Some(s.clone())
        }
        _ => None,
    };
    let full = !matches!(port, Port::Healthz);
    // As upstream, only the authenticated port has the debugging handlers (logs, exec,
    // attach, port-forward): the read-only port serves health, pods, stats and metrics.
    let debugging = secure
        .as_ref()
        .is_some_and(|s| s.cfg.enable_debugging_handlers);
    // The streaming endpoints take POST (and GET) upgrades.
    if secure.is_some() && debugging {
        {
            for (prefix, kind) in [
                ("/exec/", streaming::Kind::Exec),
                ("/attach/", streaming::Kind::Attach),
                ("/portForward/", streaming::Kind::PortForward),
            ] {
                if let Some(rest) = path.strip_prefix(prefix) {
                    if req.method() != Method::GET && req.method() != Method::POST {
                        return Ok(method_not_allowed());
                    }
                    return Ok(streaming::handle(&shared, kind, rest, req).await);
                }
            }
        }
    }
    let node_logs = secure
        .as_ref()
        .is_some_and(|s| s.cfg.enable_system_log_handler)
        && (path == "/logs" || path.starts_with("/logs/"));
    if req.method() != Method::GET {
        // 405 for a path this port serves, 404 for one it does not (as go-restful).
        let served = path == "/healthz"
            || (full
                && matches!(
                    path.as_str(),
                    "/metrics"
                        | "/metrics/resource"
                        | "/metrics/probes"
                        | "/metrics/cadvisor"
                        | "/stats/summary"
                        | "/stats/summary/"
                        | "/pods"
                        | "/pods/"
                ))
            || (secure.is_some()
                && matches!(path.as_str(), "/runningpods" | "/runningpods/" | "/configz"))
            || (debugging && path.starts_with("/containerLogs/"))
            || node_logs;
        return Ok(if served {
            method_not_allowed()
        } else {
            not_found()
        });
    }
    if debugging {
        if let Some(rest) = path.strip_prefix("/containerLogs/") {
            return Ok(container_logs(&shared, rest, &query).await);
        }
    }
    if node_logs {
        return Ok(pages::node_logs(std::path::Path::new("/var/log"), &path));
    }
    let resp = match path.as_str() {
        "/healthz" => healthz(&shared),
        "/metrics" if full => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::global().render(),
        ),
        "/metrics/cadvisor" if full => match cadvisor::metrics(&shared.cri, &shared.pods).await {
            Ok(text) => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            ),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        },
        "/metrics/probes" if full => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::global().render_probes(),
        ),
        "/metrics/resource" if full => {
            match crate::stats::summary(&shared.cri, &shared.pods, &shared.node_name).await {
                Ok(v) => reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    pages::resource_metrics(&v),
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        "/stats/summary" | "/stats/summary/" if full => {
            match crate::stats::summary(&shared.cri, &shared.pods, &shared.node_name).await {
                Ok(v) => reply(StatusCode::OK, "application/json", v.to_string()),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        "/pods" | "/pods/" if full => json_reply(&pod_list(&shared)),
        "/runningpods" | "/runningpods/" if secure.is_some() => {
            match pages::running_pods(&shared.cri).await {
                Ok(list) => json_reply(&list),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        "/configz" => match &secure {
            Some(s) => reply(
                StatusCode::OK,
                "application/json",
                pages::configz(&s.cfg).to_string(),
            ),
            None => not_found(),
        },
        _ => not_found(),
    };
    Ok(resp)
}

fn method_not_allowed() -> Response<Body> {
    reply(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain",
        "method not allowed",
    )
}

fn json_reply(v: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(v) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

/// Upstream's answers to a refused request (`http.Error`: the text and a newline).
fn refusal(r: auth::Refusal) -> Response<Body> {
    match r {
        auth::Refusal::Unauthenticated => reply(
            StatusCode::UNAUTHORIZED,
            "text/plain; charset=utf-8",
            "Unauthorized\n",
        ),
        auth::Refusal::Forbidden(m) => reply(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            format!("{m}\n"),
        ),
        auth::Refusal::Error(m) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("{m}\n"),
        ),
    }
}

/// Serves one connection (plain or TLS) with upgrades (exec, attach, portForward).
async fn serve_connection<S>(io: S, shared: Shared, port: Port, peer: Option<auth::UserInfo>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        handle(req, shared.clone(), port.clone(), peer.clone())
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

async fn accept(listener: &tokio::net::TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                return s;
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves plain HTTP on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, shared: Shared, port: Port) {
    loop {
        let stream = accept(&listener).await;
        tokio::spawn(serve_connection(stream, shared.clone(), port.clone(), None));
    }
}

/// Serves the authenticated port: TLS, the client certificate's user, then `handle`.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Shared,
    secure: Arc<Secure>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let stream = accept(&listener).await;
        let (acceptor, shared, secure) = (acceptor.clone(), shared.clone(), secure.clone());
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream));
            let tls = match handshake.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            // Only certificates the client CA verified get here (rustls refuses the rest).
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(tls::certificate_user)
                .map(|(name, groups)| auth::UserInfo {
                    name,
                    uid: String::new(),
                    groups,
                });
            serve_connection(tls, shared, Port::Authenticated(secure), peer).await;
        });
    }
}

/// Binds a listener, with a clear error naming the address.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for {what}: {e}"))
}
