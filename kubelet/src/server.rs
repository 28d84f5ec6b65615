//! The kubelet's HTTP endpoints (hyper 1): the read-only server (`GET /pods` as a `PodList`
//! with current statuses, `GET /healthz`, `GET /metrics`, `GET /stats/summary` and
//! `GET /containerLogs/{namespace}/{pod}/{container}`) and the healthz server
//! (`GET /healthz`).

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

use crate::kubelet::Shared;

/// The pods with their latest statuses, as upstream's `/pods`.
pub fn pod_list(shared: &Shared) -> List<Pod> {
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

type Body = BoxBody<Bytes, Infallible>;

fn reply(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
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

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
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
        Err(e) => return reply(StatusCode::BAD_REQUEST, "text/plain", e),
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
    let in_spec = crate::kuberuntime::actions::app_containers(&pod)
        .iter()
        .chain(crate::kuberuntime::actions::init_containers(&pod))
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
    if !opts.follow {
        return reply(StatusCode::OK, "text/plain", text);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let cri = shared.cri.clone();
    tokio::spawn(follow_log(cri, id, path, offset, text, opts.timestamps, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    if let Ok(v) = "text/plain".parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Sends what is appended to the log until the container stops or the client goes.
async fn follow_log(
    cri: crate::cri::Cri,
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
            let (lines, consumed) = crate::logs::parse(&carry);
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
                return;
            }
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Shared,
    read_only: bool,
) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed",
        ));
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if read_only {
        if let Some(rest) = path.strip_prefix("/containerLogs/") {
            return Ok(container_logs(&shared, rest, &query).await);
        }
    }
    let resp = match path.as_str() {
        "/healthz" => healthz(&shared),
        "/metrics" if read_only => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::global().render(),
        ),
        "/stats/summary" | "/stats/summary/" if read_only => {
            match crate::stats::summary(&shared.cri, &shared.pods, &shared.node_name).await {
                Ok(v) => reply(StatusCode::OK, "application/json", v.to_string()),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", e),
            }
        }
        "/pods" | "/pods/" if read_only => match serde_json::to_vec(&pod_list(&shared)) {
            Ok(body) => reply(StatusCode::OK, "application/json", body),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "404 page not found"),
    };
    Ok(resp)
}

/// Serves on `addr` until the task is dropped. `read_only` adds `/pods`.
pub async fn serve(listener: tokio::net::TcpListener, shared: Shared, read_only: bool) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, shared.clone(), read_only));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}

/// Binds a listener, with a clear error naming the address.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for {what}: {e}"))
}
