//! A private containerd for tests: Debian's `containerd` with its own root, state, sockets,
//! config and CNI directories, so it runs beside anything else on the machine.
//!
//! Pod networking happens in a private "node" network namespace: the CNI bin dir holds
//! one-line wrappers `exec nsenter --net=<node netns> <plugin> "$@"`, so the bridge, pod
//! addresses and masquerade rules never touch the machine's root network namespace.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nodus_proto::runtime::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
    ListPodSandboxRequest, PodSandboxConfig, RemovePodSandboxRequest, StatusRequest,
    StopPodSandboxRequest,
};
use tonic::transport::Channel;

use crate::cleanup;
use crate::images::{self, BuiltImage, ImageInputs, PAUSE_IMAGE};
use crate::netns::NodeNetns;
use crate::{Error, Result};

/// Where the reference CNI plugins live on Debian.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// Which CNI network the private containerd's pods get.
#[derive(Debug, Clone)]
pub enum Cni {
    /// Our `nodus-bridge` (from the cargo target dir) with its built-in host-local IPAM.
    NodusBridge { subnet: String },
    /// The reference `bridge` + `host-local` plugins from Debian's containernetworking-plugins.
    ReferenceBridge { subnet: String },
}

impl Default for Cni {
    fn default() -> Self {
        Cni::NodusBridge {
            subnet: "10.88.0.0/24".into(),
        }
    }
}

/// How to start the private containerd.
#[derive(Debug, Clone, Default)]
pub struct ContainerdOptions {
    pub cni: Cni,
    /// Runtime handler used when a sandbox names none (default "runc").
    pub default_runtime: Option<String>,
    /// Extra TOML appended to the generated config.
    pub extra_config: String,
    /// Run containerd itself inside the node network namespace (not only the CNI plugins),
    /// so its streaming server shares a loopback with the kubelet and an API server there.
    pub in_node_netns: bool,
}

/// A running private containerd; dropping it removes every pod, mount, cgroup, netns and file
/// it made.
pub struct PrivateContainerd {
    id: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    node: NodeNetns,
    network_name: String,
    options: ContainerdOptions,
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Our containerd shim v2 binary (runtime type `io.containerd.nodus.v2`).
const SHIM_V2: &str = "containerd-shim-nodus-v2";

impl PrivateContainerd {
    /// Starts containerd, waits for CRI's RuntimeReady and NetworkReady, imports our images.
    pub async fn start(options: ContainerdOptions) -> Result<Self> {
        let id = format!("nodus-test-{}", crate::unique_suffix());
        let dir = tempfile::Builder::new()
            .prefix("nodus-ctrd-")
            .tempdir()
            .map_err(|e| Error::io(&std::env::temp_dir(), e))?;
        let node = NodeNetns::create("node")?;
        let network_name = id.clone();
        let mut ctrd = PrivateContainerd {
            id,
            dir,
            child: None,
            node,
            network_name,
            options,
        };
        ctrd.write_layout()?;
        ctrd.make_cgroup_parent()?;
        ctrd.spawn()?;
        ctrd.wait_ready().await?;
        images::import(&ctrd.socket(), "k8s.io", built_images()?)?;
        Ok(ctrd)
    }

    /// Makes [`Self::cgroup_parent`] in every hierarchy but cpuset (an empty cpuset there
    /// would be inherited by the pods): a kubelet refuses a cgroupRoot that does not exist,
    /// as upstream does. Removed with the rest on drop.
    fn make_cgroup_parent(&self) -> Result<()> {
        let rel = self.cgroup_parent();
        for root in cleanup::cgroup_roots() {
            if root
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains("cpuset"))
            {
                continue;
            }
            let dir = root.join(rel.trim_start_matches('/'));
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        Ok(())
    }

    /// The temp dir holding everything of this instance.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The gRPC socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("containerd.sock")
    }

    /// The CRI endpoint as kubelet's `--container-runtime-endpoint` takes it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The private network namespace the CNI plugins (and so the pod bridge) run in.
    pub fn node_netns(&self) -> &NodeNetns {
        &self.node
    }

    /// Absolute cgroup parent for pods of this instance (one per instance; removed on drop).
    pub fn cgroup_parent(&self) -> String {
        format!("/{}", self.id)
    }

    /// A KubeletConfiguration for a kubelet on this instance: static pods from
    /// `static_pod_path`, this CRI endpoint, pod logs dir and cgroup root (cgroupfs), then
    /// the `extra` YAML lines.
    pub fn kubelet_config(&self, static_pod_path: &Path, extra: &str) -> String {
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             staticPodPath: {}\ncontainerRuntimeEndpoint: {}\npodLogsDir: {}\n\
             cgroupDriver: cgroupfs\ncgroupRoot: {}\n{extra}",
            static_pod_path.display(),
            self.endpoint(),
            self.pod_logs_dir().display(),
            self.cgroup_parent(),
        )
    }

    /// The CNI network name in the conflist.
    pub fn network_name(&self) -> &str {
        &self.network_name
    }

    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir().join("cni/net.d")
    }

    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir().join("cni/bin")
    }

    /// IPAM data dir used by the conflist.
    pub fn cni_data_dir(&self) -> PathBuf {
        self.dir().join("cni/networks")
    }

    /// containerd's own log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("containerd.log")
    }

    /// A directory for pod logs.
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.dir().join("pods")
    }

    pub async fn runtime(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(
            nodus_proto::connect(&self.endpoint()).await?,
        ))
    }

    pub async fn images(&self) -> Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(
            nodus_proto::connect(&self.endpoint()).await?,
        ))
    }

    /// A sandbox config with what containerd needs here: metadata, log dir, an absolute
    /// cgroup parent below [`Self::cgroup_parent`], PID namespace per container.
    pub fn sandbox_config(&self, name: &str) -> PodSandboxConfig {
        let uid = format!("{}-{}", name, crate::unique_suffix());
        let log_directory = self.pod_logs_dir().join(format!("default_{name}_{uid}"));
        let mut config = crate::cri::sandbox_config(name, &uid, "default", &log_directory);
        if let Some(linux) = config.linux.as_mut() {
            linux.cgroup_parent = format!("{}/pod{}", self.cgroup_parent(), uid);
        }
        config
    }

    /// `r`'s value; else panics with `what`, the error and containerd's log tail.
    pub fn must<T, E: std::fmt::Display>(&self, what: &str, r: std::result::Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{what}: {e}\n{}", self.log_tail(40)))
    }

    /// The last `lines` lines of containerd's log, newest first, for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        format!("containerd log (newest first):\n{}", tail.join("\n"))
    }

    /// Stops containerd (SIGTERM) and starts it again on the same root and state.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop_daemon();
        self.spawn()?;
        self.wait_ready().await
    }

    /// Kills containerd (SIGKILL, a crash: shims and containers live on) and starts it
    /// again on the same root and state.
    pub async fn crash_restart(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn()?;
        self.wait_ready().await
    }

    /// Starts our kubelet in this instance's node network namespace with `config`, its root
    /// dir under this instance's directory and `node` as its name, logging to `log`
    /// (appended). Stopped (SIGTERM, then waited for) when the returned guard drops.
    pub fn spawn_kubelet(&self, config: &Path, node: &str, log: &Path) -> Result<Daemon> {
        let bin = crate::bin_path("kubelet");
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(log, e))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.node.path().display()))
            .arg("--")
            .arg(&bin)
            .arg(format!("--config={}", config.display()))
            .arg(format!(
                "--root-dir={}",
                self.dir().join("kubelet").display()
            ))
            .arg(format!("--hostname-override={node}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::io(&bin, e))?;
        Ok(Daemon(Some(child)))
    }

    /// PIDs of this instance's shims (their command line names its socket).
    pub fn shim_pids(&self) -> Vec<u32> {
        let address = self.socket().display().to_string();
        crate::procstat::pids_named("containerd-shim")
            .into_iter()
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&address))
            })
            .collect()
    }

    fn write_layout(&self) -> Result<()> {
        for sub in [
            "root",
            "state",
            "opt",
            "cni/bin",
            "cni/net.d",
            "cni/networks",
            "pods",
        ] {
            let path = self.dir().join(sub);
            fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        let bridge = crate::bin_path("nodus-bridge");
        let mut plugins: Vec<(String, PathBuf)> = ["bridge", "host-local", "loopback", "portmap"]
            .iter()
            .map(|p| (p.to_string(), Path::new(DEBIAN_CNI_DIR).join(p)))
            .collect();
        plugins.push(("nodus-bridge".into(), bridge));
        for (name, target) in plugins {
            let wrapper = self.cni_bin_dir().join(&name);
            let script = format!(
                "#!/bin/sh\nexec nsenter --net={} {} \"$@\"\n",
                self.node.path().display(),
                target.display()
            );
            fs::write(&wrapper, script).map_err(|e| Error::io(&wrapper, e))?;
            fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io(&wrapper, e))?;
        }
        let conflist = self.conflist();
        let path = self.cni_conf_dir().join("10-nodus-test.conflist");
        fs::write(&path, conflist).map_err(|e| Error::io(&path, e))?;
        let config_path = self.dir().join("config.toml");
        fs::write(&config_path, self.config_toml()).map_err(|e| Error::io(&config_path, e))
    }

    fn conflist(&self) -> String {
        let data_dir = self.cni_data_dir();
        let (plugin, subnet, masq) = match &self.options.cni {
            Cni::NodusBridge { subnet } => ("nodus-bridge", subnet, true),
            // The reference bridge masquerades with iptables, which this machine may lack.
            Cni::ReferenceBridge { subnet } => ("bridge", subnet, false),
        };
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.network_name,
            "plugins": [{
                "type": plugin,
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": masq,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": subnet }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": data_dir,
                }
            }]
        })
        .to_string()
    }

    fn config_toml(&self) -> String {
        let d = self.dir().display();
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        let mut runtimes = format!(
            "[{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
             [{cri}.containerd.runtimes.runc.options]\n  BinaryName = \"/usr/sbin/runc\"\n  Root = \"{d}/runc\"\n"
        );
        let ours = crate::bin_path("nodus-runtime");
        if ours.exists() {
            runtimes.push_str(&format!(
                "[{cri}.containerd.runtimes.nodus]\n  runtime_type = \"io.containerd.runc.v2\"\n\
                 [{cri}.containerd.runtimes.nodus.options]\n  BinaryName = \"{}\"\n  Root = \"{d}/nodus\"\n",
                ours.display()
            ));
        }
        // Our own shim v2, found by containerd in its PATH (see `spawn`).
        if crate::bin_path(SHIM_V2).exists() {
            runtimes.push_str(&format!(
                "[{cri}.containerd.runtimes.nodus-shim]\n  runtime_type = \"io.containerd.nodus.v2\"\n"
            ));
        }
        let default_runtime = self.default_runtime();
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd-ttrpc.sock"
[debug]
  address = ""
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{cri}.cni]
  bin_dir = "{d}/cni/bin"
  conf_dir = "{d}/cni/net.d"
  max_conf_num = 1
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "{default_runtime}"
{runtimes}
{extra}"#,
            extra = self.options.extra_config
        )
    }

    /// The handler of sandboxes that name none: the options', else `$NODUS_TEST_RUNTIME`
    /// (`runc`, `nodus` or `nodus-shim`: how the test suite runs the kubelet's end-to-end
    /// tests on each runtime), else `runc`.
    pub fn default_runtime(&self) -> String {
        self.options
            .default_runtime
            .clone()
            .or_else(|| std::env::var("NODUS_TEST_RUNTIME").ok())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "runc".into())
    }

    fn spawn(&mut self) -> Result<()> {
        // containerd runs `containerd-shim-<name>-v2` from its PATH: ours first.
        let shim_dir = crate::bin_path(SHIM_V2)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut path = vec![shim_dir];
        // `$NODUS_CONTAINERD`: another containerd build (a newer Debian's, unpacked by
        // hand), run with the runc shim beside it.
        let binary = std::env::var_os("NODUS_CONTAINERD")
            .filter(|b| !b.is_empty())
            .map(PathBuf::from);
        if let Some(dir) = binary.as_deref().and_then(Path::parent) {
            path.push(dir.to_path_buf());
        }
        let binary = binary.unwrap_or_else(|| PathBuf::from("containerd"));
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let path = std::env::join_paths(path).map_err(|e| Error::Command {
            command: "containerd".into(),
            detail: format!("PATH: {e}"),
        })?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| Error::io(&self.log_path(), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io(&self.log_path(), e))?;
        let mut cmd = if self.options.in_node_netns {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", self.node.path().display()))
                .arg("--")
                .arg(&binary);
            c
        } else {
            Command::new(&binary)
        };
        let child = cmd
            .env("PATH", path)
            .arg("--config")
            .arg(self.dir().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Error::io(Path::new("containerd"), e))?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        // Done when ready (Ok) or when containerd exited (Err: no use waiting longer).
        crate::try_wait_until_async(READY_TIMEOUT, "containerd CRI", async || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = fs::read_to_string(self.log_path()).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    return Ok(Err(Error::Command {
                        command: "containerd".into(),
                        detail: format!(
                            "exited with {status}; last log lines:\n{}",
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        ),
                    }));
                }
            }
            if !self.socket().exists() {
                return Err("no socket yet".to_string());
            }
            match self.runtime_ready().await {
                Ok(true) => Ok(Ok(())),
                Ok(false) => Err("not RuntimeReady and NetworkReady".into()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await?
    }

    async fn runtime_ready(&self) -> Result<bool> {
        let mut client = self.runtime().await?;
        let status = client
            .status(StatusRequest { verbose: false })
            .await
            .map_err(|status| Error::Cri {
                call: "Status",
                status,
            })?
            .into_inner();
        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        let ready = |kind: &str| conditions.iter().any(|c| c.r#type == kind && c.status);
        Ok(ready("RuntimeReady") && ready("NetworkReady"))
    }

    fn stop_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            cleanup::stop_pid(
                child.id() as i32,
                nix::sys::signal::Signal::SIGTERM,
                Duration::from_secs(10),
            );
            let _ = child.wait();
        }
    }

    /// Stops and removes every pod sandbox through CRI (and so runs CNI DEL for each).
    fn remove_all_pods(&self) {
        let endpoint = self.endpoint();
        let worker = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let work = async {
                    let channel = nodus_proto::connect(&endpoint).await.ok()?;
                    let mut client = RuntimeServiceClient::new(channel);
                    let pods = client
                        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                        .await
                        .ok()?
                        .into_inner()
                        .items;
                    for pod in pods {
                        let _ = client
                            .stop_pod_sandbox(StopPodSandboxRequest {
                                pod_sandbox_id: pod.id.clone(),
                            })
                            .await;
                        let _ = client
                            .remove_pod_sandbox(RemovePodSandboxRequest {
                                pod_sandbox_id: pod.id,
                            })
                            .await;
                    }
                    Some(())
                };
                let _ = tokio::time::timeout(Duration::from_secs(60), work).await;
            });
        });
        let _ = worker.join();
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.remove_all_pods();
        }
        self.stop_daemon();
        // Whatever outlived containerd: its shims, then the container processes in our cgroups.
        let socket = self.socket().display().to_string();
        for pid in cleanup::pids_with_cmdline(&["containerd-shim", &socket]) {
            cleanup::stop_pid(pid, nix::sys::signal::Signal::SIGKILL, Duration::ZERO);
        }
        for pid in cleanup::cgroup_pids(&self.cgroup_parent()) {
            cleanup::stop_pid(pid, nix::sys::signal::Signal::SIGKILL, Duration::ZERO);
        }
        cleanup::unmount_all_under(self.dir.path());
        cleanup::remove_cgroup_tree(&self.cgroup_parent());
        // go-cni caches results here by network name, which is unique to this instance.
        if let Ok(entries) = fs::read_dir("/var/lib/cni/results") {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}-", self.network_name))
                {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        // The node netns and the temp dir go with their own Drop.
    }
}

/// Our images, built once per test process (and shared between processes by a file lock),
/// or the archives in `$NODUS_TEST_IMAGES_DIR` built elsewhere (the VM tier's guest).
pub fn built_images() -> Result<&'static [BuiltImage]> {
    static BUILT: OnceLock<std::result::Result<Vec<BuiltImage>, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            match std::env::var_os("NODUS_TEST_IMAGES_DIR").filter(|d| !d.is_empty()) {
                Some(dir) => images::prebuilt(Path::new(&dir)),
                None => images::build_all(&ImageInputs::default(), &images::default_out_dir()),
            }
            .map_err(|e| e.to_string())
        })
        .as_deref()
        .map_err(|detail| Error::Command {
            command: "build images".into(),
            detail: detail.clone(),
        })
}

/// A process this harness started: SIGTERM and wait when dropped.
pub struct Daemon(Option<Child>);

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL and wait (a crash).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            cleanup::stop_pid(
                c.id() as i32,
                nix::sys::signal::Signal::SIGTERM,
                Duration::from_secs(10),
            );
            let _ = c.wait();
        }
    }
}
