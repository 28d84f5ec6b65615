//! A test node: a private containerd (testkit) with its node network namespace, and our
//! kubelet binary started in that namespace with its own root dir, manifest dir, pod logs
//! dir and config. Dropping it stops the kubelet by PID, then containerd cleans up.
#![allow(dead_code)]

pub mod api;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nodus_proto::runtime::v1 as cri;
use nodus_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use nodus_testkit::{
    try_wait_until, try_wait_until_async, Check, Cni, ContainerdOptions, PrivateContainerd,
};
use tonic::transport::Channel;

pub use nodus_testkit::BUSYBOX_IMAGE;

pub const NODE: &str = "testnode";
pub const READ_ONLY_PORT: u16 = 10255;
pub const HEALTHZ_PORT: u16 = 10248;
/// The kubelet's count of successful PLEG relists (upstream's name; a histogram's count).
pub const RELISTS: &str = "kubelet_pleg_relist_duration_seconds_count";

pub struct Node {
    pub ctrd: PrivateContainerd,
    pub manifests: PathBuf,
    pub root_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// Logs of other daemons of the test (the API server): their tails go into a failure.
    pub other_logs: Vec<(&'static str, PathBuf)>,
    kubelet: Option<Child>,
    starts: u32,
    extra_args: Vec<String>,
}

fn cni() -> Cni {
    let ours = nodus_testkit::bin_path("nodus-bridge");
    let subnet = "10.66.0.0/24".to_string();
    if ours.exists() {
        Cni::NodusBridge { subnet }
    } else {
        eprintln!(
            "WARNING: {} not built (cargo build --workspace --bins); using the reference bridge plugin",
            ours.display()
        );
        Cni::ReferenceBridge { subnet }
    }
}

/// The private containerd of a test node.
pub fn containerd_options() -> ContainerdOptions {
    ContainerdOptions {
        cni: cni(),
        ..Default::default()
    }
}

impl Node {
    pub async fn start() -> Node {
        Self::start_with("", &[]).await
    }

    /// Starts a node whose kubelet config gets `extra_config` (YAML lines) and whose
    /// kubelet gets `extra_args`.
    pub async fn start_with(extra_config: &str, extra_args: &[&str]) -> Node {
        let ctrd = PrivateContainerd::start(containerd_options())
            .await
            .expect("private containerd");
        Node::on(ctrd, extra_config, extra_args)
    }

    /// Starts the kubelet on a containerd already running.
    pub fn on(ctrd: PrivateContainerd, extra_config: &str, extra_args: &[&str]) -> Node {
        let manifests = ctrd.dir().join("manifests");
        let root_dir = ctrd.dir().join("kubelet");
        std::fs::create_dir_all(&manifests).unwrap();
        let config = ctrd.dir().join("kubelet-config.yaml");
        std::fs::write(
            &config,
            ctrd.kubelet_config(
                &manifests,
                &format!(
                    "fileCheckFrequency: 20s\nreadOnlyPort: {READ_ONLY_PORT}\n\
                     healthzPort: {HEALTHZ_PORT}\nhealthzBindAddress: 127.0.0.1\n\
                     {address}{eviction}{image_gc}{extra_config}",
                    // Loopback unless the test serves the node's address (the API server
                    // reaches the kubelet API on its InternalIP).
                    address = if extra_config.contains("address:") {
                        ""
                    } else {
                        "address: 127.0.0.1\n"
                    },
                    // A test node shares a build machine's disk, often fuller than the
                    // default 10% threshold (CI machines have had under 1% free): 0% turns
                    // the disk signals off, as upstream, so no test sees DiskPressure for
                    // it (the conformance harness does the same).
                    eviction = if extra_config.contains("evictionHard:") {
                        ""
                    } else {
                        "evictionHard: {memory.available: 100Mi, nodefs.available: 0%, imagefs.available: 0%}\n"
                    },
                    // Nor remove images for it: there is no registry to pull them again.
                    image_gc = if extra_config.contains("imageGCHighThresholdPercent:") {
                        ""
                    } else {
                        "imageGCHighThresholdPercent: 100\n"
                    },
                ),
            ),
        )
        .unwrap();
        let log = ctrd.dir().join("kubelet.log");
        let containerd_log = ctrd.log_path();
        let mut node = Node {
            ctrd,
            manifests,
            root_dir,
            config,
            log,
            other_logs: vec![("containerd", containerd_log)],
            kubelet: None,
            starts: 0,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        node.start_kubelet();
        node
    }

    pub fn start_kubelet(&mut self) {
        assert!(self.kubelet.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ctrd.node_netns().path().display()))
            .arg("--")
            // testkit finds it (in the VM tier the test runs from another target dir).
            .arg(nodus_testkit::bin_path("kubelet"))
            .arg(format!("--config={}", self.config.display()))
            .arg(format!("--root-dir={}", self.root_dir.display()))
            .arg(format!("--hostname-override={NODE}"))
            .arg("--node-ip=10.66.0.1")
            .arg("-v=4")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start kubelet");
        self.kubelet = Some(child);
        self.starts += 1;
    }

    /// Stops the kubelet by PID: SIGKILL when `crash`, else SIGTERM.
    pub fn stop_kubelet(&mut self, crash: bool) {
        if let Some(mut child) = self.kubelet.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let sig = if crash {
                nix::sys::signal::Signal::SIGKILL
            } else {
                nix::sys::signal::Signal::SIGTERM
            };
            let _ = nix::sys::signal::kill(pid, sig);
            let exited = try_wait_until(Duration::from_secs(10), "the kubelet to exit", || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if exited.is_err() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    pub fn kubelet_alive(&mut self) -> bool {
        match self.kubelet.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test with the kubelet log tail (and those of [`Node::other_logs`]).
    pub fn fail(&self, msg: &str) -> ! {
        let tail = |text: &str, n: usize| {
            let tail: Vec<&str> = text.lines().rev().take(n).collect();
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        let mut others = String::new();
        for (name, path) in &self.other_logs {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            others += &format!("\n--- {name} log tail ---\n{}", tail(&text, 15));
        }
        panic!(
            "{msg}\n--- kubelet log tail ---\n{}{others}",
            tail(&self.log_text(), 80)
        );
    }

    /// Writes a manifest atomically (hidden temp file, then rename).
    pub fn write_manifest(&self, file: &str, text: &str) {
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.manifests.join(file)).unwrap();
    }

    pub fn remove_manifest(&self, file: &str) {
        std::fs::remove_file(self.manifests.join(file)).unwrap();
    }

    pub async fn rt(&self) -> RuntimeServiceClient<Channel> {
        self.ctrd.runtime().await.expect("CRI client")
    }

    /// Sandboxes of the static pod `name` (the manifest's name; the node suffix is added).
    pub async fn sandboxes(&self, name: &str) -> Vec<cri::PodSandbox> {
        let mut rt = self.rt().await;
        let filter = cri::PodSandboxFilter {
            label_selector: HashMap::from([(
                "io.kubernetes.pod.name".to_string(),
                format!("{name}-{NODE}"),
            )]),
            ..Default::default()
        };
        let mut v = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(filter),
            })
            .await
            .map(|r| r.into_inner().items)
            .unwrap_or_default();
        v.sort_by_key(|s| s.created_at);
        v
    }

    pub async fn all_sandboxes(&self) -> Vec<cri::PodSandbox> {
        let mut rt = self.rt().await;
        rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .map(|r| r.into_inner().items)
            .unwrap_or_default()
    }

    /// Containers of the static pod `name`, oldest first.
    pub async fn containers(&self, name: &str) -> Vec<cri::Container> {
        let mut rt = self.rt().await;
        let filter = cri::ContainerFilter {
            label_selector: HashMap::from([(
                "io.kubernetes.pod.name".to_string(),
                format!("{name}-{NODE}"),
            )]),
            ..Default::default()
        };
        let mut v = rt
            .list_containers(cri::ListContainersRequest {
                filter: Some(filter),
            })
            .await
            .map(|r| r.into_inner().containers)
            .unwrap_or_default();
        v.sort_by_key(|c| c.created_at);
        v
    }

    pub async fn container_status(&self, id: &str) -> Option<cri::ContainerStatus> {
        let mut rt = self.rt().await;
        rt.container_status(cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().status)
    }

    pub async fn sandbox_ip(&self, id: &str) -> String {
        let mut rt = self.rt().await;
        rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .network
        .unwrap_or_default()
        .ip
    }

    /// containerd's verbose sandbox info (pid, runtimeType, config...).
    pub async fn sandbox_info(&self, id: &str) -> serde_json::Value {
        let mut rt = self.rt().await;
        let info = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner()
            .info;
        serde_json::from_str(&info["info"]).unwrap()
    }

    /// PID of the sandbox's pause process (from containerd's verbose sandbox status).
    pub async fn sandbox_pid(&self, id: &str) -> u32 {
        let v = self.sandbox_info(id).await;
        v["pid"].as_u64().expect("pid in the sandbox info") as u32
    }

    /// Polls `f` (testkit's [`nodus_testkit::wait_until_async`]) until it holds; fails the
    /// test with the kubelet log tail after `timeout`.
    pub async fn wait_for<C: Check>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl AsyncFnMut() -> C,
    ) -> C::Value {
        try_wait_until_async(timeout, what, f)
            .await
            .unwrap_or_else(|e| self.fail(&e.to_string()))
    }

    /// The log of container `container` of pod `pod` once it has exited: the messages of its
    /// CRI log file, joined with newlines.
    pub async fn exited_log(&self, pod: &str, container: &str) -> String {
        self.wait_for(
            &format!("container {container} of {pod} to exit"),
            Duration::from_secs(60),
            async || {
                let c = self
                    .containers(pod)
                    .await
                    .into_iter()
                    .find(|c| c.metadata.as_ref().is_some_and(|m| m.name == container))?;
                let st = self.container_status(&c.id).await?;
                if st.state != cri::ContainerState::ContainerExited as i32 {
                    return None;
                }
                let raw = std::fs::read_to_string(&st.log_path).ok()?;
                let lines: Vec<&str> = raw
                    .lines()
                    .filter_map(|l| l.splitn(4, ' ').nth(3))
                    .collect();
                Some(lines.join("\n"))
            },
        )
        .await
    }

    /// The running containers of pod `name` once there are `n` of them.
    pub async fn wait_running(&self, name: &str, n: usize) -> Vec<cri::Container> {
        self.wait_for(
            &format!("{n} running container(s) in pod {name}"),
            Duration::from_secs(60),
            || async {
                let running: Vec<_> = self
                    .containers(name)
                    .await
                    .into_iter()
                    .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
                    .collect();
                (running.len() == n).then_some(running)
            },
        )
        .await
    }

    /// GET on the kubelet's port inside the node netns: (status code, body).
    pub fn http_get(&self, port: u16, path: &str) -> std::io::Result<(u16, String)> {
        let ns = self.ctrd.node_netns().path().to_path_buf();
        let path = path.to_string();
        std::thread::spawn(move || -> std::io::Result<(u16, String)> {
            // setns affects only this (dedicated) thread.
            let f = std::fs::File::open(&ns)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            let code = buf
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let body = buf
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            Ok((code, body))
        })
        .join()
        .expect("http thread")
    }

    /// GET on the kubelet API (port 10250, HTTPS; the kubelet's self-signed certificate is
    /// not verified) without a client certificate: the node's configuration must allow
    /// anonymous requests. (status code, body).
    pub fn api_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.ctrd.node_netns().path().display()))
            .args(["curl", "-sk", "--max-time", "30", "-w", "\n%{http_code}"])
            .arg(format!("https://127.0.0.1:10250{path}"))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        Ok((code.trim().parse().unwrap_or(0), body.to_string()))
    }

    /// `GET /pods` parsed as JSON.
    pub fn get_pods(&self) -> Option<serde_json::Value> {
        let (code, body) = self.http_get(READ_ONLY_PORT, "/pods").ok()?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// The value of `sample` (a metric's name with its labels, as the kubelet prints it) in
    /// the kubelet's `/metrics`; None while the kubelet does not answer or has no such sample.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (code, body) = self.http_get(READ_ONLY_PORT, "/metrics").ok()?;
        if code != 200 {
            return None;
        }
        body.lines().find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Waits until `sample` of the kubelet's `/metrics` (a counter) has grown by `n` from
    /// what it is now (0 while the kubelet does not answer yet, as after its start), running
    /// `check` (which asserts what must hold meanwhile) at every look.
    pub async fn watch_metric_grows(
        &self,
        sample: &str,
        n: u64,
        timeout: Duration,
        mut check: impl AsyncFnMut(),
    ) {
        let to = self.metric(sample).unwrap_or(0.0) + n as f64;
        self.wait_for(&format!("{sample} >= {to}"), timeout, async || {
            check().await;
            match self.metric(sample) {
                Some(v) if v >= to => Ok(()),
                v => Err(format!("{sample} is {v:?}")),
            }
        })
        .await
    }

    /// Waits until the kubelet has relisted the runtime `n` more times ([`RELISTS`]), running
    /// `check` at every look. For checks that something does *not* happen: the kubelet acts
    /// on a state from the relist that sees it, so after a few relists it would have.
    pub async fn watch_relists(&self, n: u64, check: impl AsyncFnMut()) {
        // A relist each PLEG period (1 s): room for a slow machine.
        let timeout = Duration::from_secs(10 + 3 * n);
        self.watch_metric_grows(RELISTS, n, timeout, check).await
    }

    /// [`Node::watch_relists`] with nothing to check on the way.
    pub async fn wait_relists(&self, n: u64) {
        self.watch_relists(n, async || {}).await
    }

    /// The `/pods` item of static pod `name`.
    pub fn api_pod(&self, name: &str) -> Option<serde_json::Value> {
        let full = format!("{name}-{NODE}");
        self.get_pods()?["items"]
            .as_array()?
            .iter()
            .find(|p| p["metadata"]["name"] == full.as_str())
            .cloned()
    }

    pub fn pod_dir(&self) -> &Path {
        &self.manifests
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_kubelet(false);
    }
}

/// A one-container pod manifest running `script` in busybox.
pub fn pod_yaml(name: &str, restart_policy: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {restart_policy}\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [sh, -c, {script:?}]\n"
    )
}

pub fn ts(nanos: i64) -> f64 {
    nanos as f64 / 1e9
}

/// A tiny HTTP server inside the node netns serving `body` at any path, for the kubelet's
/// manifest URL. Stopped (thread joined) on drop.
pub struct ManifestServer {
    pub body: std::sync::Arc<std::sync::Mutex<String>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ManifestServer {
    pub fn start(node: &Node, port: u16, body: &str) -> ManifestServer {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let body = Arc::new(Mutex::new(body.to_string()));
        let stop = Arc::new(AtomicBool::new(false));
        let ns = node.ctrd.node_netns().path().to_path_buf();
        let (b, st) = (body.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // This thread alone enters the node netns.
            let f = std::fs::File::open(&ns).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let mut buf = [0u8; 4096];
                        let _ = s.read(&mut buf);
                        let text = b.lock().unwrap().clone();
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                            text.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("manifest server ready");
        ManifestServer {
            body,
            stop,
            thread: Some(thread),
        }
    }

    pub fn set(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_string();
    }
}

impl Drop for ManifestServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
