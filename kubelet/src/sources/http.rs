//! The http source: `staticPodURL` polled every `httpCheckFrequency` with a small HTTP/1.1
//! client (hyper over a plain TCP stream; `http://` only). The body is a `Pod` or a
//! `PodList` in JSON or YAML. On a failed fetch the last snapshot stays in force.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

use super::{load_manifest, Source, SourceUpdate};

/// The parts of an `http://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpUrl {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) path: String,
}

/// What is wrong with a `staticPodURL`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UrlError {
    #[error("only http:// URLs are supported")]
    Scheme,
    #[error("missing host")]
    MissingHost,
    #[error("user info is not supported")]
    UserInfo,
    #[error("unclosed '[' in host")]
    UnclosedBracket,
    #[error("bad port {port:?}")]
    Port { port: String },
}

/// Parses an `http://` URL; the error says what is wrong.
pub(crate) fn parse_url(url: &str) -> Result<HttpUrl, UrlError> {
    let rest = url.strip_prefix("http://").ok_or(UrlError::Scheme)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(UrlError::MissingHost);
    }
    if authority.contains('@') {
        return Err(UrlError::UserInfo);
    }
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let (h, p) = h.split_once(']').ok_or(UrlError::UnclosedBracket)?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| UrlError::Port {
            port: p.to_string(),
        })?,
        None => 80,
    };
    Ok(HttpUrl {
        host,
        port,
        path: path.to_string(),
    })
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("bad URL: {0}")]
    Url(#[from] UrlError),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("status {0}")]
    Status(hyper::StatusCode),
    #[error("timed out")]
    Timeout,
    #[error("body is not UTF-8")]
    Utf8,
}

/// GETs a URL and returns the body text.
pub(crate) async fn get(url: &str, timeout: Duration) -> Result<String, FetchError> {
    tokio::time::timeout(timeout, get_inner(url))
        .await
        .map_err(|_| FetchError::Timeout)?
}

async fn get_inner(url: &str) -> Result<String, FetchError> {
    let u = parse_url(url)?;
    let stream = tokio::net::TcpStream::connect((u.host.as_str(), u.port))
        .await
        .map_err(FetchError::Connect)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let host = if u.host.contains(':') {
        format!("[{}]:{}", u.host, u.port)
    } else {
        format!("{}:{}", u.host, u.port)
    };
    let req = hyper::Request::get(u.path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "nodus-kubelet")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        return Err(FetchError::Status(resp.status()));
    }
    let body = resp.into_body().collect().await?.to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| FetchError::Utf8)
}

/// Polls the manifest URL and sends snapshots until the receiver goes away.
pub(crate) struct HttpSource {
    pub(crate) url: String,
    pub(crate) node_name: String,
    pub(crate) period: Duration,
}

impl HttpSource {
    async fn fetch(&self) -> Result<Vec<Pod>, FetchError> {
        let text = get(&self.url, Duration::from_secs(10)).await?;
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        let (pods, errors) = load_manifest(&text, Source::Http, &self.url, &self.node_name);
        for e in errors {
            tracing::error!(url = %e.origin, field = %e.field, reason = %e.reason, "invalid pod from manifest URL, skipped");
        }
        Ok(pods)
    }

    pub(crate) async fn run(self, tx: mpsc::Sender<SourceUpdate>) {
        let mut ticker = tokio::time::interval(self.period.max(Duration::from_millis(100)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.fetch().await {
                Ok(pods) => {
                    let update = SourceUpdate {
                        source: Source::Http,
                        pods,
                    };
                    if tx.send(update).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(url = %self.url, error = %e, "cannot fetch manifest URL"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("http://10.0.0.1:8080/pods").unwrap(),
            HttpUrl {
                host: "10.0.0.1".into(),
                port: 8080,
                path: "/pods".into()
            }
        );
        assert_eq!(parse_url("http://example").unwrap().port, 80);
        assert_eq!(parse_url("http://example").unwrap().path, "/");
        assert_eq!(parse_url("http://[::1]:81/x").unwrap().host, "::1");
        assert_eq!(parse_url("https://x/"), Err(UrlError::Scheme));
        let e = parse_url("http://x:99999/").unwrap_err();
        assert_eq!(e.to_string(), "bad port \"99999\"");
        assert_eq!(parse_url("http:///p"), Err(UrlError::MissingHost));
        assert_eq!(
            FetchError::from(UrlError::UserInfo).to_string(),
            "bad URL: user info is not supported"
        );
    }

    #[tokio::test]
    async fn fetches_a_pod_list_over_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = r#"{"kind":"PodList","apiVersion":"v1","items":[{"metadata":{"name":"a"},"spec":{"containers":[{"name":"c","image":"i:1"}]}}]}"#;
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /pods HTTP/1.1"));
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
        });
        let src = HttpSource {
            url: format!("http://{addr}/pods"),
            node_name: "n".into(),
            period: Duration::from_secs(60),
        };
        let pods = src.fetch().await.unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].metadata.name.as_deref(), Some("a-n"));
        assert_eq!(
            pods[0].metadata.annotations.as_ref().unwrap()[super::super::CONFIG_SOURCE_ANNOTATION],
            "http"
        );
    }
}
