//! The kubelet's HTTP endpoints (hyper 1): the read-only server (`GET /pods` as a `PodList`
//! with current statuses, `GET /healthz`) and the healthz server (`GET /healthz`).

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
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

fn reply(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn healthz(shared: &Shared) -> Response<Full<Bytes>> {
    match shared.healthy() {
        Ok(()) => reply(StatusCode::OK, "text/plain", "ok"),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("unhealthy: {e}"),
        ),
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Shared,
    read_only: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed",
        ));
    }
    let resp = match req.uri().path() {
        "/healthz" => healthz(&shared),
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
