//! `nodus-conformance`: Kubernetes' node conformance suite (`e2e.test`, run by `ginkgo`) on a
//! one-node cluster that lives in a private network namespace. Driven by
//! `hack/conformance.sh`, which builds the Go binaries first.
//!
//! The node namespace holds everything: a private containerd (pods on nodus-bridge), etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler, two `docker-registry` instances
//! on loopback (open, and htpasswd-protected for the private-registry specs), and the
//! kubelet under test (ours, or the upstream one). The node's address is on a veth pair in
//! that namespace (the API server's node proxy and the upstream kubelet refuse loopback);
//! `kubernetes.default` (10.96.0.1:443) is a DNAT rule there. The suite's images are built
//! here from Debian's files, named as the suite asks for them after `KUBE_TEST_REPO_LIST`
//! remaps its registries, and imported into containerd. Everything goes on exit.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use nodus_testkit::images::{self, BuiltImage, Entry, ImageSpec};
use nodus_testkit::{
    cleanup, upstream_kubelet, Cni, ContainerdOptions, ControlPlane, ControlPlaneOptions,
    PrivateContainerd,
};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KubeletKind {
    /// Our kubelet.
    Nodus,
    /// The upstream kubelet 1.20.2 built from the same tree as the suite.
    Upstream,
}

#[derive(Parser)]
#[command(about = "Run Kubernetes' node conformance suite against one private node")]
struct Cli {
    #[arg(long, value_enum, default_value = "nodus")]
    kubelet: KubeletKind,
    /// The kubelet binary (default: ours from this cargo target dir, or `<kube-bin-dir>/kubelet`).
    #[arg(long)]
    kubelet_bin: Option<PathBuf>,
    /// Where e2e.test, ginkgo, agnhost, nonewprivs, kube-controller-manager, kube-scheduler
    /// and kubelet (upstream) are.
    #[arg(long)]
    kube_bin_dir: PathBuf,
    #[arg(long)]
    kube_apiserver: PathBuf,
    /// The kubernetes source tree (e2e.test's --repo-root).
    #[arg(long)]
    repo_root: PathBuf,
    #[arg(long)]
    kubectl: Option<PathBuf>,
    #[arg(long, default_value = r"\[NodeConformance\]")]
    focus: String,
    #[arg(long, default_value = r"\[Serial\]|\[Flaky\]|\[Slow\]|\[Disruptive\]")]
    skip: String,
    /// Parallel ginkgo nodes.
    #[arg(long, default_value_t = 8)]
    nodes: u32,
    /// containerd's runtime handler for pods (runc, nodus, nodus-shim).
    #[arg(long, default_value = "runc")]
    runtime: String,
    /// JUnit reports, logs and the summary go here (emptied first).
    #[arg(long)]
    report_dir: PathBuf,
    /// Failures this machine cannot avoid: `<text of the spec's name> | <reason>` a line.
    #[arg(long)]
    skips_file: PathBuf,
}

const NODE_NAME: &str = "nodus-conformance";
/// The node's address: one end of a veth pair inside the node namespace.
const NODE_IP: &str = "10.67.0.1";
const POD_SUBNET: &str = "10.66.0.0/24";
const OPEN_REGISTRY: &str = "127.0.0.1:5000";
const AUTH_REGISTRY: &str = "127.0.0.1:5001";
/// Nothing listens there: the invalid-registry spec's pull fails at once.
const INVALID_REGISTRY: &str = "127.0.0.1:5002";
const REGISTRY_USER: &str = "nodus";
const REGISTRY_PASSWORD: &str = "conformance";
/// A containerd namespace for images that are only pushed to the registries.
const PUSH_NAMESPACE: &str = "nodus-push";

/// Processes started here, stopped by PID in reverse order (SIGTERM, then SIGKILL).
#[derive(Default)]
struct Daemons(Vec<(&'static str, Child)>);

impl Daemons {
    fn spawn(&mut self, name: &'static str, cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
        let out = fs::File::create(log).with_context(|| format!("{}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Not in the terminal's process group: Ctrl-C reaches us, and we stop them in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        self.0.push((name, child));
        Ok(())
    }

    /// The first daemon that exited, with its status.
    fn exited(&mut self) -> Option<String> {
        self.0.iter_mut().find_map(|(name, c)| {
            c.try_wait()
                .ok()
                .flatten()
                .map(|s| format!("{name} exited ({s})"))
        })
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        while let Some((_, mut child)) = self.0.pop() {
            cleanup::stop_pid(
                child.id() as i32,
                nix::sys::signal::Signal::SIGTERM,
                Duration::from_secs(15),
            );
            let _ = child.wait();
        }
    }
}

/// The HostPath subPath spec mounts the machine's /tmp and writes /tmp/sub-path (the kubelet
/// is to create it). A directory left by an earlier run would let a kubelet pass without
/// creating it, so the run warns when it is there, and removes it when the run made it.
struct HostTmpSubPath(bool);

const HOST_SUB_PATH: &str = "/tmp/sub-path";

impl HostTmpSubPath {
    fn record() -> Self {
        let existed = Path::new(HOST_SUB_PATH).exists();
        if existed {
            eprintln!(
                "WARNING: {HOST_SUB_PATH} exists: `HostPath should support subPath` cannot tell \
                 whether the kubelet creates it"
            );
        }
        HostTmpSubPath(existed)
    }
}

impl Drop for HostTmpSubPath {
    fn drop(&mut self) {
        if !self.0 {
            let _ = fs::remove_dir_all(HOST_SUB_PATH);
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // From here on SIGINT and SIGTERM do not kill us: a signal during the setup is seen when
    // the suite would start, and everything is torn down in order.
    use tokio::signal::unix::{signal, SignalKind};
    let mut signals = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
    );
    let skips = read_skips(&cli.skips_file)?;
    let focus = regex::Regex::new(&cli.focus).context("--focus")?;
    let skip = regex::Regex::new(&cli.skip).context("--skip")?;
    if cli.report_dir.exists() {
        fs::remove_dir_all(&cli.report_dir)?;
    }
    fs::create_dir_all(&cli.report_dir)?;
    let report_dir = fs::canonicalize(&cli.report_dir)?;
    let bin = |name: &str| cli.kube_bin_dir.join(name);
    let kubelet_bin = cli
        .kubelet_bin
        .clone()
        .unwrap_or_else(|| match cli.kubelet {
            KubeletKind::Nodus => nodus_testkit::bin_path("kubelet"),
            KubeletKind::Upstream => bin("kubelet"),
        });
    for b in [
        kubelet_bin.clone(),
        bin("e2e.test"),
        bin("ginkgo"),
        bin("kube-controller-manager"),
        bin("kube-scheduler"),
        cli.kube_apiserver.clone(),
    ] {
        if !b.exists() {
            bail!("{} is missing", b.display());
        }
    }

    let started = Instant::now();
    let image_dir = images::default_out_dir().join("conformance");
    let (node_images, pushed_images) =
        build_images(&image_dir, &bin("agnhost"), &bin("nonewprivs"))?;
    println!(
        "images: {} built in {:.0} s",
        node_images.len() + pushed_images.len(),
        started.elapsed().as_secs_f64()
    );

    let registry_config = format!(
        "[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{OPEN_REGISTRY}\"]\n  \
         endpoint = [\"http://{OPEN_REGISTRY}\"]\n\
         [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{AUTH_REGISTRY}\"]\n  \
         endpoint = [\"http://{AUTH_REGISTRY}\"]\n\
         [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{INVALID_REGISTRY}\"]\n  \
         endpoint = [\"http://{INVALID_REGISTRY}\"]\n"
    );
    let ctrd = PrivateContainerd::start(ContainerdOptions {
        cni: Cni::NodusBridge {
            subnet: POD_SUBNET.into(),
        },
        default_runtime: Some(cli.runtime.clone()),
        extra_config: registry_config,
        in_node_netns: true,
    })
    .await
    .context("starting the private containerd")?;
    let netns = ctrd.node_netns();
    println!("containerd: {} in netns {}", ctrd.endpoint(), netns.name());
    images::import(&ctrd.socket(), "k8s.io", &node_images)?;
    images::import(&ctrd.socket(), PUSH_NAMESPACE, &pushed_images)?;
    // Every process started from here on (this thread's children) lives in the node netns.
    netns.enter_current_thread()?;
    node_network()?;

    let work = ctrd.dir().join("conformance");
    fs::create_dir_all(&work)?;
    let mut daemons = Daemons::default();
    start_registries(&mut daemons, &work)?;
    wait_for(Duration::from_secs(30), "the registries", || {
        [OPEN_REGISTRY, AUTH_REGISTRY].iter().all(|r| {
            Command::new("curl")
                .args(["-s", "-o", "/dev/null", "--max-time", "2"])
                .arg(format!("http://{r}/v2/"))
                .status()
                .is_ok_and(|s| s.success())
        })
    })?;
    push_images(&ctrd.socket(), PUSH_NAMESPACE, &pushed_images)?;
    // The node's images are in the open registry too: a pull after an image was removed
    // finds them, as it would on a real cluster.
    push_images(&ctrd.socket(), "k8s.io", &node_images)?;

    std::env::set_var(nodus_testkit::apiserver::APISERVER_ENV, &cli.kube_apiserver);
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        advertise_address: Some(NODE_IP.parse()?),
        ..Default::default()
    })
    .context("starting etcd and kube-apiserver")?;
    let nat = |chain: &str| -> anyhow::Result<()> {
        run(Command::new("iptables").args([
            "-t",
            "nat",
            "-A",
            chain,
            "-d",
            "10.96.0.1/32",
            "-p",
            "tcp",
            "--dport",
            "443",
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{NODE_IP}:{}", cp.port),
        ]))
    };
    nat("PREROUTING")?;
    nat("OUTPUT")?;
    let admin = cp.admin_kubeconfig()?;
    let d = cp.dir();
    let gates = "--feature-gates=BoundServiceAccountTokenVolume=true";
    daemons.spawn(
        "kube-controller-manager",
        Command::new(bin("kube-controller-manager")).args([
            format!("--kubeconfig={}", admin.display()),
            format!(
                "--service-account-private-key-file={}",
                d.join("sa.key").display()
            ),
            format!("--root-ca-file={}", d.join("ca.crt").display()),
            "--use-service-account-credentials=true".into(),
            "--leader-elect=false".into(),
            "--port=0".into(),
            "--secure-port=0".into(),
            gates.into(),
            "--v=1".into(),
        ]),
        &report_dir.join("kube-controller-manager.log"),
    )?;
    daemons.spawn(
        "kube-scheduler",
        Command::new(bin("kube-scheduler")).args([
            format!("--kubeconfig={}", admin.display()),
            "--leader-elect=false".into(),
            "--port=0".into(),
            "--secure-port=0".into(),
            "--v=1".into(),
        ]),
        &report_dir.join("kube-scheduler.log"),
    )?;

    let upstream = cli.kubelet == KubeletKind::Upstream;
    let host_pod_logs = upstream.then(upstream_kubelet::HostPodLogs::record);
    let host_sub_path = HostTmpSubPath::record();
    let sysctls = upstream.then(upstream_kubelet::SysctlGuard::record);
    start_kubelet(&mut daemons, &cli, &kubelet_bin, &ctrd, &cp, &report_dir)?;
    let node_ready = wait_for(Duration::from_secs(120), "the node to be Ready", || {
        daemons.exited().is_none() && node_is_ready(&cp)
    });
    if let Err(e) = node_ready {
        let why = daemons.exited().unwrap_or_default();
        bail!(
            "{e} {why}; kubelet log tail:\n{}",
            tail(&report_dir.join("kubelet.log"), 20)
        );
    }
    println!(
        "cluster up in {:.0} s: node {NODE_NAME} ({NODE_IP}) Ready, kubelet {}",
        started.elapsed().as_secs_f64(),
        kubelet_bin.display()
    );

    let suite_started = Instant::now();
    let status = run_suite(&cli, &report_dir, &work, &admin, &mut signals).await?;
    let suite_seconds = suite_started.elapsed().as_secs_f64();

    // Logs of the servers that live in temp dirs, before they go.
    for (name, path) in [
        ("containerd.log", ctrd.log_path()),
        ("kube-apiserver.log", d.join("kube-apiserver.log")),
    ] {
        let _ = fs::copy(path, report_dir.join(name));
    }
    drop(daemons);
    drop(cp);
    drop(ctrd);
    // Before the exit below, which runs no destructors.
    drop(sysctls);
    drop(host_pod_logs);
    drop(host_sub_path);

    let results = read_junit(&report_dir, &focus, &skip)?;
    let summary = summarize(&results, &skips);
    fs::write(report_dir.join("summary.txt"), &summary.text)?;
    print!("{}", summary.text);
    println!(
        "suite wall time {:.0} s (ginkgo {status}); reports in {}",
        suite_seconds,
        report_dir.display()
    );
    println!(
        "{} passed, {} failed, {} skipped",
        summary.passed, summary.failed, summary.skipped
    );
    if summary.unexpected > 0 || (summary.passed + summary.failed == 0) {
        std::process::exit(1);
    }
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().rev().take(lines).collect();
    v.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// The node's address on a veth pair (both ends here), and a default route through it.
fn node_network() -> anyhow::Result<()> {
    let ip = |args: &[&str]| run(Command::new("ip").args(args));
    ip(&[
        "link",
        "add",
        "nodus-node0",
        "type",
        "veth",
        "peer",
        "name",
        "nodus-node1",
    ])?;
    ip(&[
        "addr",
        "add",
        &format!("{NODE_IP}/24"),
        "dev",
        "nodus-node0",
    ])?;
    ip(&["link", "set", "nodus-node0", "up"])?;
    ip(&["link", "set", "nodus-node1", "up"])?;
    ip(&["route", "add", "default", "dev", "nodus-node0"])
}

fn registry_yaml(root: &Path, addr: &str, htpasswd: Option<&Path>) -> String {
    let auth = htpasswd
        .map(|p| {
            format!(
                "auth:\n  htpasswd:\n    realm: nodus-conformance\n    path: {}\n",
                p.display()
            )
        })
        .unwrap_or_default();
    format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
         http:\n  addr: {addr}\n  secret: nodus-conformance\n{auth}",
        root.display()
    )
}

fn start_registries(daemons: &mut Daemons, work: &Path) -> anyhow::Result<()> {
    let htpasswd = work.join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbn", REGISTRY_USER, REGISTRY_PASSWORD])
        .output()
        .context("htpasswd (apache2-utils)")?;
    if !out.status.success() {
        bail!("htpasswd: {}", String::from_utf8_lossy(&out.stderr));
    }
    fs::write(&htpasswd, &out.stdout)?;
    for (name, addr, auth) in [
        ("registry", OPEN_REGISTRY, None),
        ("registry-auth", AUTH_REGISTRY, Some(htpasswd.as_path())),
    ] {
        let root = work.join(name);
        fs::create_dir_all(&root)?;
        let config = work.join(format!("{name}.yml"));
        fs::write(&config, registry_yaml(&root, addr, auth))?;
        daemons.spawn(
            "docker-registry",
            Command::new("docker-registry").arg("serve").arg(&config),
            &work.join(format!("{name}.log")),
        )?;
    }
    Ok(())
}

/// Pushes images of containerd namespace `namespace` to their registries.
fn push_images(socket: &Path, namespace: &str, pushed: &[BuiltImage]) -> anyhow::Result<()> {
    for image in pushed {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(socket).args([
            "--namespace",
            namespace,
            "images",
            "push",
            "--plain-http",
        ]);
        if image.name.starts_with(AUTH_REGISTRY) {
            cmd.arg("--user")
                .arg(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"));
        }
        run(cmd.arg(&image.name))?;
    }
    Ok(())
}

/// The docker config the private-registry spec turns into its pull secret.
fn docker_config() -> String {
    let auth = base64_encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}").as_bytes());
    serde_json::json!({ "auths": { AUTH_REGISTRY: { "auth": auth } } }).to_string()
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The suite's registries, remapped (the keys of test/utils/image/manifest.go).
fn repo_list() -> String {
    format!(
        "dockerLibraryRegistry: {OPEN_REGISTRY}/library\n\
         e2eRegistry: {OPEN_REGISTRY}/kubernetes-e2e-test-images\n\
         e2eVolumeRegistry: {OPEN_REGISTRY}/kubernetes-e2e-test-images/volume\n\
         promoterE2eRegistry: {OPEN_REGISTRY}/e2e-test-images\n\
         buildImageRegistry: {OPEN_REGISTRY}/build-image\n\
         gcRegistry: {OPEN_REGISTRY}/k8s-gcr\n\
         sigStorageRegistry: {OPEN_REGISTRY}/sig-storage\n\
         gcrReleaseRegistry: {OPEN_REGISTRY}/gke-release\n\
         sampleRegistry: {OPEN_REGISTRY}/google-samples\n\
         gcAuthenticatedRegistry: {AUTH_REGISTRY}/authenticated-image-pulling\n\
         privateRegistry: {AUTH_REGISTRY}/k8s-authenticated-test\n\
         invalidRegistry: {INVALID_REGISTRY}/invalid\n"
    )
}

/// Adds the parent directories of `path` (relative) that are not there yet.
fn add_parents(entries: &mut BTreeMap<String, Entry>, path: &str) {
    let mut dir = Path::new(path).parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
        entries
            .entry(d.display().to_string())
            .or_insert(Entry::Dir { mode: 0o755 });
        dir = d.parent();
    }
}

fn add_file(entries: &mut BTreeMap<String, Entry>, path: &str, data: Vec<u8>, mode: u32) {
    add_parents(entries, path);
    entries.insert(path.to_string(), Entry::File { data, mode });
}

/// A binary of this machine (from a Debian package) at `dest`, with the shared libraries
/// `ldd` names, each stored under its directory's real path (`/lib` is `/usr/lib` here; the
/// image gets the same `lib`, `lib64` links).
fn add_host_binary(
    entries: &mut BTreeMap<String, Entry>,
    src: &Path,
    dest: &str,
) -> anyhow::Result<()> {
    add_file(
        entries,
        dest,
        fs::read(src).with_context(|| src.display().to_string())?,
        0o755,
    );
    let out = Command::new("ldd").arg(src).output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let lib = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(lib) = lib.filter(|l| l.starts_with('/')).map(Path::new) else {
            continue;
        };
        let (Some(parent), Some(file)) = (lib.parent(), lib.file_name()) else {
            continue;
        };
        let real = fs::canonicalize(parent)?.join(file);
        let data = fs::read(lib).with_context(|| lib.display().to_string())?;
        add_file(
            entries,
            real.display().to_string().trim_start_matches('/'),
            data,
            0o755,
        );
    }
    for link in ["lib", "lib64"] {
        entries.insert(
            link.into(),
            Entry::Symlink {
                target: format!("usr/{link}"),
            },
        );
    }
    Ok(())
}

fn busybox_based(name: &str) -> anyhow::Result<ImageSpec> {
    let mut spec = images::busybox_spec(Path::new("/bin/busybox"))?;
    spec.name = name.to_string();
    Ok(spec)
}

/// The images of the 1.20 `[NodeConformance]` specs, from Debian's files and the binaries of
/// the tree: (imported into the node, only pushed to the registries).
fn build_images(
    out: &Path,
    agnhost: &Path,
    nonewprivs: &Path,
) -> anyhow::Result<(Vec<BuiltImage>, Vec<BuiltImage>)> {
    fs::create_dir_all(out)?;
    let lib = format!("{OPEN_REGISTRY}/library");
    let e2e = format!("{OPEN_REGISTRY}/kubernetes-e2e-test-images");
    let promoter = format!("{OPEN_REGISTRY}/e2e-test-images");
    let mut node = Vec::new();

    node.push((busybox_based(&format!("{lib}/busybox:1.29"))?, "busybox"));

    // agnhost 2.21: upstream's is alpine with bash, curl and OpenBSD netcat; the specs run
    // `sh -c` scripts through it (busybox's sh would run its own `nc` applet first).
    let mut agnhost_spec = busybox_based(&format!("{promoter}/agnhost:2.21"))?;
    let e = &mut agnhost_spec.entries;
    e.retain(|path, _| {
        !matches!(
            Path::new(path).file_name().and_then(|f| f.to_str()),
            Some("sh" | "nc" | "bash")
        )
    });
    add_host_binary(e, Path::new("/bin/bash"), "bin/bash")?;
    e.insert(
        "bin/sh".into(),
        Entry::Symlink {
            target: "/bin/bash".into(),
        },
    );
    add_host_binary(e, Path::new("/usr/bin/curl"), "usr/bin/curl")?;
    add_host_binary(e, Path::new("/bin/nc.openbsd"), "usr/bin/nc")?;
    add_file(
        e,
        "agnhost",
        fs::read(agnhost).with_context(|| agnhost.display().to_string())?,
        0o755,
    );
    e.insert(
        "agnhost-2".into(),
        Entry::Symlink {
            target: "agnhost".into(),
        },
    );
    e.insert("uploads".into(), Entry::Dir { mode: 0o755 });
    agnhost_spec.entrypoint = Some(vec!["/agnhost".into()]);
    agnhost_spec.cmd = Some(vec!["pause".into()]);
    node.push((agnhost_spec, "agnhost"));

    // nginx and httpd: the specs only need a long-running web server on port 80; busybox's
    // httpd is that.
    for (name, file, root) in [
        ("nginx:1.14-alpine", "nginx", "usr/share/nginx/html"),
        ("httpd:2.4.38-alpine", "httpd", "usr/local/apache2/htdocs"),
        (
            "httpd:2.4.39-alpine",
            "httpd-new",
            "usr/local/apache2/htdocs",
        ),
    ] {
        let mut spec = busybox_based(&format!("{lib}/{name}"))?;
        add_file(
            &mut spec.entries,
            &format!("{root}/index.html"),
            b"<html><body>It works!</body></html>\n".to_vec(),
            0o644,
        );
        spec.cmd = Some(
            ["httpd", "-f", "-p", "80", "-h", &format!("/{root}")]
                .map(String::from)
                .to_vec(),
        );
        node.push((spec, file));
    }

    // Compiles our pause binary into build/images/ (and builds the node's own images).
    nodus_testkit::containerd::built_images()?;
    let mut pause_spec = images::pause_spec(&images::default_out_dir().join("pause"))?;
    pause_spec.name = format!("{OPEN_REGISTRY}/k8s-gcr/pause:3.2");
    node.push((pause_spec, "pause"));

    let mut nonroot = busybox_based(&format!("{e2e}/nonroot:1.0"))?;
    nonroot.user = Some("1234".into());
    node.push((nonroot, "nonroot"));

    let mut nnp = busybox_based(&format!("{e2e}/nonewprivs:1.0"))?;
    add_file(
        &mut nnp.entries,
        "usr/local/bin/nnp",
        fs::read(nonewprivs).with_context(|| nonewprivs.display().to_string())?,
        0o4755,
    );
    nnp.cmd = Some(vec!["nnp".into()]);
    node.push((nnp, "nonewprivs"));

    // Pushed only: alpine, to the registry with htpasswd auth (the private-registry specs).
    let pushed = vec![(
        busybox_based(&format!(
            "{AUTH_REGISTRY}/authenticated-image-pulling/alpine:3.7"
        ))?,
        "push-alpine",
    )];
    let write = |list: Vec<(ImageSpec, &str)>| -> anyhow::Result<Vec<BuiltImage>> {
        list.iter()
            .map(|(spec, file)| Ok(images::write_archive(spec, out, file)?))
            .collect()
    };
    Ok((write(node)?, write(pushed)?))
}

fn node_is_ready(cp: &ControlPlane) -> bool {
    let d = cp.dir();
    let Ok(out) = Command::new("curl")
        .args(["-sf", "--max-time", "3", "--cacert"])
        .arg(d.join("ca.crt"))
        .arg("--cert")
        .arg(d.join("admin.crt"))
        .arg("--key")
        .arg(d.join("admin.key"))
        .arg(format!("{}/api/v1/nodes/{NODE_NAME}", cp.url()))
        .output()
    else {
        return false;
    };
    let node: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    node["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn start_kubelet(
    daemons: &mut Daemons,
    cli: &Cli,
    kubelet_bin: &Path,
    ctrd: &PrivateContainerd,
    cp: &ControlPlane,
    report_dir: &Path,
) -> anyhow::Result<()> {
    let dir = ctrd.dir().join("node");
    let manifests = dir.join("manifests");
    fs::create_dir_all(&manifests)?;
    let kubeconfig = cp.node_kubeconfig(NODE_NAME)?;
    let serving = cp.serving_cert("kubelet-serving", &[NODE_NAME, NODE_IP])?;
    let common = format!(
        "address: 0.0.0.0\nreadOnlyPort: 0\nhealthzPort: 10248\nhealthzBindAddress: 127.0.0.1\n\
         tlsCertFile: {}\ntlsPrivateKeyFile: {}\n\
         authentication:\n  x509: {{clientCAFile: {}}}\n  webhook: {{enabled: true}}\n  \
         anonymous: {{enabled: false}}\n\
         authorization:\n  mode: Webhook\n\
         imageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 99\n\
         evictionHard: {{memory.available: 100Mi, nodefs.available: 0%, imagefs.available: 0%}}\n",
        serving.cert.display(),
        serving.key.display(),
        cp.ca_path().display(),
    );
    let config = dir.join("kubelet-config.yaml");
    let mut cmd = Command::new(kubelet_bin);
    cmd.arg(format!("--config={}", config.display()))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--root-dir={}", dir.join("root").display()))
        .arg(format!("--hostname-override={NODE_NAME}"))
        .arg(format!("--node-ip={NODE_IP}"))
        .arg("--v=2");
    match cli.kubelet {
        KubeletKind::Nodus => {
            fs::write(&config, ctrd.kubelet_config(&manifests, &common))?;
        }
        KubeletKind::Upstream => {
            fs::write(
                &config,
                upstream_kubelet::config(ctrd, &manifests, &common)?,
            )?;
            cmd.args(upstream_kubelet::args(ctrd, &dir));
        }
    }
    daemons.spawn("kubelet", &mut cmd, &report_dir.join("kubelet.log"))
}

async fn run_suite(
    cli: &Cli,
    report_dir: &Path,
    work: &Path,
    admin: &Path,
    signals: &mut (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
) -> anyhow::Result<String> {
    let repo_list_file = work.join("repo-list.yaml");
    fs::write(&repo_list_file, repo_list())?;
    let docker_config_file = work.join("docker-config.json");
    fs::write(&docker_config_file, docker_config())?;
    let mut cmd = Command::new(cli.kube_bin_dir.join("ginkgo"));
    cmd.env("KUBE_TEST_REPO_LIST", &repo_list_file)
        .arg(format!("-nodes={}", cli.nodes))
        .arg(format!("-focus={}", cli.focus))
        .arg(format!("-skip={}", cli.skip))
        .arg("-noColor")
        .arg(cli.kube_bin_dir.join("e2e.test"))
        .arg("--")
        .arg(format!("--kubeconfig={}", admin.display()))
        .arg("--provider=skeleton")
        .arg(format!("--report-dir={}", report_dir.display()))
        .arg(format!(
            "--docker-config-file={}",
            docker_config_file.display()
        ))
        .arg(format!("--repo-root={}", cli.repo_root.display()))
        .arg("--disable-log-dump")
        .arg("--allowed-not-ready-nodes=0");
    if let Some(k) = &cli.kubectl {
        cmd.arg(format!("--kubectl-path={}", k.display()));
    }
    println!(
        "running the suite: focus {:?}, skip {:?}, {} ginkgo nodes; log {}",
        cli.focus,
        cli.skip,
        cli.nodes,
        report_dir.join("e2e.log").display()
    );
    let log = fs::File::create(report_dir.join("e2e.log"))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting ginkgo")?;
    let pid = child.id() as i32;
    let waited = tokio::task::spawn_blocking(move || child.wait());
    tokio::select! {
        status = waited => Ok(status??.to_string()),
        _ = signals.0.recv() => {
            // ginkgo stops its nodes on SIGINT.
            stop_group(pid);
            bail!("interrupted")
        }
        _ = signals.1.recv() => {
            stop_group(pid);
            bail!("terminated")
        }
    }
}

/// Stops ginkgo (SIGINT: it stops its e2e.test nodes), then whatever is left of its
/// process group.
fn stop_group(pid: i32) {
    cleanup::stop_pid(
        pid,
        nix::sys::signal::Signal::SIGINT,
        Duration::from_secs(30),
    );
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    Skipped,
}

/// One spec from the JUnit reports: its name, outcome and failure text.
struct SpecResult {
    outcome: Outcome,
    message: String,
}

fn unescape(s: &str) -> String {
    s.replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#xA;", "\n")
        .replace("&#x9;", "\t")
        .replace("&amp;", "&")
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = tag[start..].find('"')? + start;
    Some(unescape(&tag[start..end]))
}

/// The specs of every `junit_*.xml` that the focus selects (ginkgo also lists the specs it
/// filtered out, as skipped); a spec that failed on any ginkgo node failed.
fn read_junit(
    dir: &Path,
    focus: &regex::Regex,
    skip: &regex::Regex,
) -> anyhow::Result<BTreeMap<String, SpecResult>> {
    let mut results: BTreeMap<String, SpecResult> = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("junit_") && name.ends_with(".xml")) {
            continue;
        }
        let xml = fs::read_to_string(&path)?;
        for case in xml.split("<testcase").skip(1) {
            let case = case.split("</testcase>").next().unwrap_or(case);
            let tag_end = case.find('>').unwrap_or(case.len());
            let Some(spec) = attr(&case[..tag_end], "name") else {
                continue;
            };
            let failed = case.contains("<failure");
            let before_after = spec.starts_with('[') && spec.contains("Suite]");
            if !before_after && (!focus.is_match(&spec) || skip.is_match(&spec)) {
                continue;
            }
            let outcome = if failed {
                Outcome::Failed
            } else if case.contains("<skipped") {
                Outcome::Skipped
            } else {
                Outcome::Passed
            };
            // ginkgo puts the failure (location, then the error) in the element's text.
            let message = case
                .find("<failure")
                .and_then(|i| {
                    let body = &case[i..];
                    let start = body.find('>')? + 1;
                    let end = body.find("</failure>").unwrap_or(body.len());
                    Some(unescape(body.get(start..end)?))
                })
                .unwrap_or_default();
            let slot = results.entry(spec).or_insert(SpecResult {
                outcome,
                message: message.clone(),
            });
            if outcome == Outcome::Failed {
                slot.outcome = Outcome::Failed;
                slot.message = message;
            }
        }
    }
    Ok(results)
}

/// `<text of the spec's name> | <reason>` lines; `#` starts a comment.
fn read_skips(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut skips = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((spec, reason)) = line.split_once(" | ") else {
            bail!("{}: no ` | reason` in {line:?}", path.display());
        };
        skips.push((spec.trim().to_string(), reason.trim().to_string()));
    }
    Ok(skips)
}

struct Summary {
    passed: usize,
    failed: usize,
    skipped: usize,
    unexpected: usize,
    text: String,
}

fn summarize(results: &BTreeMap<String, SpecResult>, skips: &[(String, String)]) -> Summary {
    let mut text = String::new();
    let mut counts = BTreeMap::new();
    let mut unexpected = BTreeSet::new();
    for (name, r) in results {
        *counts.entry(r.outcome as u8).or_insert(0usize) += 1;
        let mark = match r.outcome {
            Outcome::Passed => "PASS",
            Outcome::Skipped => "SKIP",
            Outcome::Failed => match skips.iter().find(|(s, _)| name.contains(s.as_str())) {
                Some(_) => "FAIL (allowed)",
                None => {
                    unexpected.insert(name.clone());
                    "FAIL"
                }
            },
        };
        text.push_str(&format!("{mark}: {name}\n"));
        if r.outcome == Outcome::Failed {
            // The first line is where in the suite; the error follows.
            for line in r.message.lines().skip(1).take(6) {
                text.push_str(&format!("    {line}\n"));
            }
            if let Some((_, reason)) = skips.iter().find(|(s, _)| name.contains(s.as_str())) {
                text.push_str(&format!("    allowed: {reason}\n"));
            }
        }
    }
    let count = |o: Outcome| counts.get(&(o as u8)).copied().unwrap_or(0);
    Summary {
        passed: count(Outcome::Passed),
        failed: count(Outcome::Failed),
        skipped: count(Outcome::Skipped),
        unexpected: unexpected.len(),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn junit_cases_are_read_filtered_and_merged() {
        let dir = tempfile::tempdir().unwrap();
        let a = r#"<testsuite><testcase name="[k8s.io] A &#39;x&#39; [NodeConformance]" classname="K" time="1"></testcase>
<testcase name="[k8s.io] B [NodeConformance]" classname="K" time="1"><failure type="Failure">here.go:1&#xA;boom &lt;x&gt;</failure></testcase>
<testcase name="[k8s.io] C [Serial] [NodeConformance]" classname="K" time="0"><skipped></skipped></testcase>
<testcase name="[k8s.io] D" classname="K" time="0"><skipped></skipped></testcase></testsuite>"#;
        let b = r#"<testsuite><testcase name="[k8s.io] B [NodeConformance]" classname="K" time="0"><skipped></skipped></testcase></testsuite>"#;
        fs::write(dir.path().join("junit_01.xml"), a).unwrap();
        fs::write(dir.path().join("junit_02.xml"), b).unwrap();
        let focus = regex::Regex::new(r"\[NodeConformance\]").unwrap();
        let skip = regex::Regex::new(r"\[Serial\]").unwrap();
        let r = read_junit(dir.path(), &focus, &skip).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r["[k8s.io] A 'x' [NodeConformance]"].outcome,
            Outcome::Passed
        );
        assert_eq!(r["[k8s.io] B [NodeConformance]"].outcome, Outcome::Failed);
        assert_eq!(
            r["[k8s.io] B [NodeConformance]"].message,
            "here.go:1\nboom <x>"
        );
        let s = summarize(&r, &[("B [Node".into(), "no dummy links".into())]);
        assert_eq!((s.passed, s.failed, s.skipped, s.unexpected), (1, 1, 0, 0));
        assert!(s.text.contains("allowed: no dummy links"));
        let s = summarize(&r, &[]);
        assert_eq!(s.unexpected, 1);
    }
}
