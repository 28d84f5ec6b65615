//! The kubelet API on its authenticated port (10250): TLS, authentication (client
//! certificates, TokenReview bearer tokens, anonymous off), authorization (AlwaysAllow,
//! SubjectAccessReview against a real API server's RBAC), every endpoint, and what
//! `kubectl logs`, `exec`, `exec -i` and `port-forward` do through the API server.
//!
//! Requests are made with curl (a client certificate, a token or nothing), in the node's
//! network namespace where the kubelet listens.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::api::{condition, phase, ApiNode};
use common::{Node, BUSYBOX_IMAGE, NODE};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, PostParams};
use nodus_testkit::{try_wait_until, wait_until};

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Cred<'a> {
    Cert { cert: &'a Path, key: &'a Path },
    Token(&'a str),
    Nothing,
}

/// curl against the kubelet: (HTTP status, body). `netns`: run curl there (the API tests'
/// thread is in the node netns already). Status 0: no HTTP answer (TLS refused).
fn curl(
    netns: Option<&Path>,
    ca: &Path,
    method: &str,
    url: &str,
    cred: Cred,
    extra: &[&str],
) -> (u16, String) {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display()))
                .arg("--")
                .arg("curl");
            c
        }
        None => Command::new("curl"),
    };
    cmd.args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(ca)
        .args(["-X", method])
        .args(extra);
    match cred {
        Cred::Cert { cert, key } => {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        Cred::Token(t) => {
            cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        Cred::Nothing => {}
    }
    let out = cmd.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

const WEB_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: default}\nspec:\n  \
    automountServiceAccountToken: false\n  terminationGracePeriodSeconds: 2\n  containers:\n  \
    - name: app\n    image: IMAGE\n    imagePullPolicy: IfNotPresent\n    \
    command: [sh, -c, 'mkdir -p /www && echo hello-from-pod > /www/index.html && echo started && exec httpd -f -p 8080 -h /www']\n";

/// Every endpoint of the authenticated port: (method, path, subresource upstream asks for).
const ENDPOINTS: &[(&str, &str, &str)] = &[
    ("GET", "/pods", "proxy"),
    ("GET", "/runningpods/", "proxy"),
    ("GET", "/healthz", "proxy"),
    ("GET", "/metrics", "metrics"),
    ("GET", "/metrics/resource", "metrics"),
    ("GET", "/stats/summary", "stats"),
    ("GET", "/containerLogs/default/web/app", "proxy"),
    ("GET", "/configz", "proxy"),
    ("GET", "/logs/", "log"),
    (
        "POST",
        "/exec/default/web/app?command=true&output=1",
        "proxy",
    ),
    ("POST", "/attach/default/web/app?output=1", "proxy"),
    ("POST", "/portForward/default/web", "proxy"),
];

#[tokio::test(flavor = "current_thread")]
async fn kubelet_api_through_a_real_api_server() {
    let Some(n) = ApiNode::start_with(
        |cp| {
            let serving = cp
                .serving_cert("kubelet-serving", &[NODE, "10.66.0.1"])
                .expect("kubelet serving cert");
            format!(
                "address: 0.0.0.0\ntlsCertFile: {}\ntlsPrivateKeyFile: {}\n\
                 authentication:\n  x509: {{clientCAFile: {}}}\n  webhook: {{enabled: true}}\n\
                 authorization:\n  mode: Webhook\n  webhook: {{cacheUnauthorizedTTL: 1s}}\n\
                 enableSystemLogHandler: true\n",
                serving.cert.display(),
                serving.key.display(),
                cp.ca_path().display()
            )
        },
        &[],
    )
    .await
    else {
        return;
    };
    n.create_pod("default", &WEB_POD.replace("IMAGE", BUSYBOX_IMAGE))
        .await;
    n.wait_pod("default", "web", "Running and Ready", |p| {
        phase(p) == "Running" && condition(p, "Ready").as_deref() == Some("True")
    })
    .await;

    // kubectl through the API server, which calls the kubelet with its client certificate.
    let logs = n
        .wait_for("kubectl logs", Duration::from_secs(20), || async {
            let out = n.kubectl(&["logs", "web"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && text.contains("started")).then_some(text)
        })
        .await;
    assert_eq!(logs, "started\n");
    assert_eq!(n.kubectl_ok(&["exec", "web", "--", "echo", "hi"]), "hi\n");
    let out = n.kubectl(&["exec", "web", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "exec's exit code comes back");
    let mut child = Command::new(nodus_testkit::apiserver::kubectl_binary().unwrap())
        .arg(format!("--kubeconfig={}", n.admin_kubeconfig.display()))
        .args(["exec", "-i", "web", "--", "sh", "-c", "cat; echo end"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line one\nline two\nend\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    port_forward_reaches_the_pod(&n);

    // The API server's node proxy (what `kubectl top` and metrics-server scrape).
    let proxy =
        |path: &str| n.kubectl_ok(&["get", "--raw", &format!("/api/v1/nodes/{NODE}/proxy{path}")]);
    let metrics = n
        .wait_for("the pod in /metrics/resource", Duration::from_secs(30), || async {
            let m = proxy("/metrics/resource");
            m.contains("container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"}")
                .then_some(m)
        })
        .await;
    assert!(
        metrics.contains("node_memory_working_set_bytes "),
        "{metrics}"
    );
    assert!(
        metrics.contains("pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"}"),
        "{metrics}"
    );
    let summary: serde_json::Value = serde_json::from_str(&proxy("/stats/summary")).unwrap();
    assert_eq!(summary["node"]["nodeName"], NODE);
    let pods: serde_json::Value = serde_json::from_str(&proxy("/pods")).unwrap();
    assert_eq!(pods["items"][0]["metadata"]["name"], "web");
    let running: serde_json::Value = serde_json::from_str(&proxy("/runningpods/")).unwrap();
    assert_eq!(running["items"][0]["spec"]["containers"][0]["name"], "app");
    assert_eq!(proxy("/healthz"), "ok");
    let configz: serde_json::Value = serde_json::from_str(&proxy("/configz")).unwrap();
    assert_eq!(configz["kubeletconfig"]["authorization"]["mode"], "Webhook");
    assert!(proxy("/logs/").contains("<a href="), "node log listing");

    direct_requests_are_authenticated_and_authorized(&n).await;
    bad_requests_get_upstream_status_codes(&n);
}

/// `kubectl port-forward` to the pod's httpd, then an HTTP request through it.
fn port_forward_reaches_the_pod(n: &ApiNode) {
    let mut pf = Command::new(nodus_testkit::apiserver::kubectl_binary().unwrap())
        .arg(format!("--kubeconfig={}", n.admin_kubeconfig.display()))
        .args(["port-forward", "pod/web", "18080:8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Keep draining kubectl's stdout: Go dies of SIGPIPE when its stdout closes.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = pf.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    let answer = try_wait_until(
        Duration::from_secs(10),
        "the page through port-forward",
        || {
            let mut s =
                std::net::TcpStream::connect("127.0.0.1:18080").map_err(|e| e.to_string())?;
            let mut text = String::new();
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .and_then(|()| s.write_all(b"GET /index.html HTTP/1.0\r\nHost: web\r\n\r\n"))
                .and_then(|()| s.read_to_string(&mut text))
                .map_err(|e| e.to_string())?;
            if text.contains("hello-from-pod") {
                Ok(text)
            } else {
                Err(text)
            }
        },
    );
    let _ = pf.kill();
    let _ = pf.wait();
    match answer {
        Ok(t) => assert!(t.starts_with("HTTP/1.") && t.contains(" 200 "), "{t}"),
        Err(e) => n.fail(&format!("port-forward ({first:?}) gave no page: {e}")),
    }
}

async fn direct_requests_are_authenticated_and_authorized(n: &ApiNode) {
    let ca = n.cp.ca_path();
    let admin_cert = n.cp.dir().join("admin.crt");
    let admin_key = n.cp.dir().join("admin.key");
    let admin = Cred::Cert {
        cert: &admin_cert,
        key: &admin_key,
    };
    let nobody = n.cp.client_cert("nobody", "nobody", &["nobodies"]).unwrap();
    let denied = Cred::Cert {
        cert: &nobody.cert,
        key: &nobody.key,
    };
    let base = format!("https://{NODE}:10250");
    let resolve = format!("{NODE}:10250:10.66.0.1");
    let req = |method: &str, path: &str, cred: Cred| {
        curl(
            None,
            &ca,
            method,
            &format!("{base}{path}"),
            cred,
            &["--resolve", &resolve],
        )
    };
    for &(method, path, subresource) in ENDPOINTS {
        let (code, body) = req(method, path, admin);
        assert!(
            code != 401 && code != 403 && code != 0,
            "admin {method} {path}: {code} {body}"
        );
        if method == "GET" {
            assert_eq!(code, 200, "admin {method} {path}: {body}");
        }
        let (code, body) = req(method, path, denied);
        let verb = if method == "GET" { "get" } else { "create" };
        assert_eq!(
            (code, body.as_str()),
            (
                403,
                format!(
                    "Forbidden (user=nobody, verb={verb}, resource=nodes, subresource={subresource})\n"
                )
                .as_str()
            ),
            "{method} {path}"
        );
        assert_eq!(
            req(method, path, Cred::Nothing),
            (401, "Unauthorized\n".into()),
            "{method} {path} without credentials"
        );
        assert_eq!(
            req(method, path, Cred::Token("not-a-token")),
            (401, "Unauthorized\n".into()),
            "{method} {path} with a bad token"
        );
    }

    // A service account's token: TokenReview knows it, RBAC decides what it may read.
    let sa: Api<ServiceAccount> = Api::namespaced(n.client.clone(), "default");
    let tr: TokenRequest = sa
        .create_subresource(
            "token",
            "default",
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    expiration_seconds: Some(600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("token request");
    let token = tr.status.unwrap().token;
    let (code, body) = req("GET", "/stats/summary", Cred::Token(&token));
    assert_eq!(
        (code, body.as_str()),
        (
            403,
            "Forbidden (user=system:serviceaccount:default:default, verb=get, resource=nodes, subresource=stats)\n"
        )
    );
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "node-stats-reader"},
        "rules": [{"apiGroups": [""], "resources": ["nodes/stats"], "verbs": ["get"]}],
    }))
    .unwrap();
    Api::<ClusterRole>::all(n.client.clone())
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "node-stats-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "node-stats-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(n.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    // The denial was cached for cacheUnauthorizedTTL (1 s); RBAC takes a moment too.
    let body = wait_until(
        Duration::from_secs(20),
        "GET /stats/summary allowed",
        || match req("GET", "/stats/summary", Cred::Token(&token)) {
            (200, body) => Ok(body),
            (code, body) => Err(format!("still {code} {body}")),
        },
    );
    assert!(body.contains("\"nodeName\""), "{body}");
    let (code, _) = req("GET", "/pods", Cred::Token(&token));
    assert_eq!(code, 403, "nodes/stats does not grant nodes/proxy");
}

fn bad_requests_get_upstream_status_codes(n: &ApiNode) {
    let ca = n.cp.ca_path();
    let cert = n.cp.dir().join("admin.crt");
    let key = n.cp.dir().join("admin.key");
    let resolve = format!("{NODE}:10250:10.66.0.1");
    let req = |method: &str, path: &str| {
        curl(
            None,
            &ca,
            method,
            &format!("https://{NODE}:10250{path}"),
            Cred::Cert {
                cert: &cert,
                key: &key,
            },
            &["--resolve", &resolve],
        )
    };
    let cases: &[(&str, &str, u16, &str)] = &[
        (
            "POST",
            "/exec/default/nope/app?command=true&output=1",
            404,
            "pod does not exist",
        ),
        (
            "POST",
            "/exec/default/web/nope?command=true&output=1",
            500,
            "container not found (\"nope\")",
        ),
        (
            "POST",
            "/exec/default/web/app?command=true",
            400,
            "at least 1 of stdin, stdout, stderr",
        ),
        ("POST", "/exec/default/web/app?output=1", 400, "command"),
        ("POST", "/exec/default/web", 404, "404 page not found"),
        (
            "POST",
            "/portForward/default/web?port=http",
            400,
            "\"http\"",
        ),
        (
            "POST",
            "/portForward/default/nope",
            404,
            "pod does not exist",
        ),
        (
            "GET",
            "/containerLogs/default/web/app?tailLines=x",
            400,
            "tailLines",
        ),
        ("GET", "/containerLogs/default/nope/app", 404, "not found"),
        ("GET", "/containerLogs/default/web/nope", 400, "nope"),
        (
            "GET",
            "/logs/%2e%2e/%2e%2e/etc/passwd",
            404,
            "404 page not found",
        ),
        ("GET", "/nothing/here", 404, "404 page not found"),
        ("DELETE", "/pods", 405, "method not allowed"),
    ];
    for &(method, path, want, text) in cases {
        let (code, body) = req(method, path);
        assert_eq!(code, want, "{method} {path}: {body}");
        assert!(
            body.contains(text),
            "{method} {path}: {body:?} lacks {text:?}"
        );
    }
}

/// Without an API server: the self-signed serving certificate, client certificates against
/// clientCAFile with AlwaysAllow, anonymous requests refused (our default), certificates of
/// another CA refused in the handshake, and the debugging handlers switched off.
#[tokio::test]
async fn standalone_port_serves_tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, ca) = test_ca("test-ca");
    let (other_pem, other) = test_ca("other-ca");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let _ = other_pem;
    let (alice_cert, alice_key) = client_cert(dir.path(), "alice", &ca);
    let (mallory_cert, mallory_key) = client_cert(dir.path(), "mallory", &other);
    let node = Node::start_with(
        &format!(
            "authentication:\n  x509: {{clientCAFile: {}}}\nenableDebuggingHandlers: false\n",
            ca_file.display()
        ),
        &[],
    )
    .await;
    let netns = node.ctrd.node_netns().path().to_path_buf();
    // The self-signed certificate the kubelet made (its CA is in the same file).
    let serving = node.root_dir.join("pki/kubelet.crt");
    node.wait_for(
        "a self-signed certificate under the cert dir",
        Duration::from_secs(20),
        || async { serving.exists() },
    )
    .await;
    let url = |path: &str| format!("https://{NODE}:10250{path}");
    let resolve = format!("{NODE}:10250:127.0.0.1");
    let extra = ["--resolve", resolve.as_str()];
    let alice = Cred::Cert {
        cert: &alice_cert,
        key: &alice_key,
    };
    // Code 0: curl could not connect yet.
    let (code, body) = node
        .wait_for(
            "the kubelet's port to answer",
            Duration::from_secs(20),
            || async {
                let r = curl(Some(&netns), &serving, "GET", &url("/pods"), alice, &extra);
                (r.0 != 0).then_some(r)
            },
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "PodList");
    assert_eq!(
        curl(
            Some(&netns),
            &serving,
            "GET",
            &url("/healthz"),
            alice,
            &extra
        ),
        (200, "ok".into())
    );
    assert_eq!(
        curl(
            Some(&netns),
            &serving,
            "GET",
            &url("/pods"),
            Cred::Nothing,
            &extra
        ),
        (401, "Unauthorized\n".into())
    );
    assert_eq!(
        curl(
            Some(&netns),
            &serving,
            "GET",
            &url("/pods"),
            Cred::Token("abc"),
            &extra
        ),
        (401, "Unauthorized\n".into())
    );
    let mallory = Cred::Cert {
        cert: &mallory_cert,
        key: &mallory_key,
    };
    let (code, _) = curl(
        Some(&netns),
        &serving,
        "GET",
        &url("/pods"),
        mallory,
        &extra,
    );
    assert_eq!(code, 0, "a certificate of another CA fails the handshake");
    // enableDebuggingHandlers: false removes logs and the streaming endpoints.
    let (code, _) = curl(
        Some(&netns),
        &serving,
        "GET",
        &url("/containerLogs/default/x/y"),
        alice,
        &extra,
    );
    assert_eq!(code, 404);
    let (code, _) = curl(
        Some(&netns),
        &serving,
        "POST",
        &url("/exec/default/x/y?command=true&output=1"),
        alice,
        &extra,
    );
    assert_eq!(code, 404);
    // No webhook without an API server: the node logs handler is off by default too.
    let (code, _) = curl(Some(&netns), &serving, "GET", &url("/logs/"), alice, &extra);
    assert_eq!(code, 404);
}

fn test_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), rcgen::Issuer::new(p, key))
}

fn client_cert(
    dir: &Path,
    name: &str,
    ca: &rcgen::Issuer<'static, rcgen::KeyPair>,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, ca).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}
