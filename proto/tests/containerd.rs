//! Integration test: the generated CRI client against a real, throwaway
//! containerd (Debian's `/usr/bin/containerd`, CRI plugin built in).
//!
//! containerd runs with its own config, root, state and sockets inside a
//! temporary directory, so it never touches the machine's containerd. It is
//! stopped by PID (SIGTERM, then SIGKILL) and everything it mounted under the
//! directory is unmounted before the directory is removed, also when the test
//! fails. Self-contained on purpose: the shared testkit depends on this crate.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use nodus_proto::runtime::v1::image_service_client::ImageServiceClient;
use nodus_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use nodus_proto::runtime::v1::{
    ImageFsInfoRequest, ListImagesRequest, StatusRequest, VersionRequest,
};
use tonic::transport::Channel;

const CONTAINERD: &str = "/usr/bin/containerd";

/// A private containerd; dropping it stops the process and cleans up.
struct Containerd {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
}

impl Containerd {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nodus-proto-ctrd-")
            .tempdir()
            .expect("create temp dir");
        let d = dir.path();
        for sub in ["root", "state", "opt", "cni/bin", "cni/conf"] {
            fs::create_dir_all(d.join(sub)).expect("create containerd dirs");
        }
        let config = d.join("config.toml");
        fs::write(&config, config_toml(d)).expect("write containerd config");
        let log = fs::File::create(d.join("containerd.log")).expect("create log file");
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CONTAINERD}: {e}"));
        Containerd {
            child: Some(child),
            dir: Some(dir),
        }
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir present until drop").path()
    }

    fn socket(&self) -> PathBuf {
        self.dir().join("containerd.sock")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir().join("containerd.log")).unwrap_or_default()
    }

    /// Waits until the gRPC socket answers CRI Version, or panics with the log.
    async fn wait_ready(&mut self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(30);
        let endpoint = format!("unix://{}", self.socket().display());
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("containerd exited early ({status}); log:\n{}", self.log());
            }
            if self.socket().exists() {
                if let Ok(channel) =
                    nodus_proto::connect_with_timeout(&endpoint, Duration::from_secs(2)).await
                {
                    let mut client = RuntimeServiceClient::new(channel.clone());
                    if client.version(VersionRequest::default()).await.is_ok() {
                        return channel;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!("containerd CRI not ready after 30 s; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            if let Ok(None) = child.try_wait() {
                let _ = kill(pid, Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                if let Ok(None) = child.try_wait() {
                    eprintln!("containerd {pid} ignored SIGTERM for 10 s; sending SIGKILL");
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            unmount_under(dir.path());
            if let Err(e) = dir.close() {
                eprintln!("cannot remove containerd temp dir: {e}");
            }
        }
    }
}

/// Lazily unmounts every mount point at or below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        if let Err(e) = umount2(&p, MntFlags::MNT_DETACH) {
            eprintln!("umount {}: {e}", p.display());
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// containerd 1.6 config (schema version 2) keeping everything under `d`.
fn config_toml(d: &Path) -> String {
    let d = d.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd-ttrpc.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  # Root here lacks CAP_SYS_RESOURCE: negative oom_score_adj would fail.
  restrict_oom_score_adj = true
  disable_apparmor = true

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{d}/cni/bin"
  conf_dir = "{d}/cni/conf"
"#
    )
}

#[tokio::test]
async fn cri_version_status_and_images_against_containerd() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIP cri_version_status_and_images_against_containerd: needs root to run containerd"
        );
        return;
    }
    assert!(
        Path::new(CONTAINERD).exists(),
        "{CONTAINERD} is missing: run hack/install-deps.sh (Debian package containerd)"
    );

    let mut ctrd = Containerd::start();
    let channel = ctrd.wait_ready().await;
    let mut runtime = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);

    let v = runtime
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(v.runtime_name, "containerd");
    assert_eq!(v.runtime_api_version, "v1");
    assert!(!v.runtime_version.is_empty(), "{v:?}");

    let status = runtime
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    let conditions = status.status.expect("StatusResponse.status").conditions;
    let ready = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .unwrap_or_else(|| panic!("no RuntimeReady condition in {conditions:?}"));
    assert!(ready.status, "RuntimeReady is false: {ready:?}");
    // No CNI config in our conf_dir, so the network cannot be ready: this
    // proves the private config, not the machine's, is in effect.
    let network = conditions.iter().find(|c| c.r#type == "NetworkReady");
    assert!(
        network.is_some_and(|c| !c.status),
        "NetworkReady should be false without CNI config: {conditions:?}"
    );

    // A fresh private root holds no images.
    let list = images
        .list_images(ListImagesRequest { filter: None })
        .await
        .expect("ListImages")
        .into_inner();
    assert!(
        list.images.is_empty(),
        "unexpected images: {:?}",
        list.images
    );

    // The image filesystem reported is the one under our private root.
    let fs_info = images
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .expect("ImageFsInfo")
        .into_inner();
    let root = ctrd.dir().join("root");
    assert!(
        fs_info.image_filesystems.iter().any(|f| f
            .fs_id
            .as_ref()
            .is_some_and(|id| Path::new(&id.mountpoint).starts_with(&root))),
        "image filesystem not under {}: {:?}",
        root.display(),
        fs_info.image_filesystems
    );
}

#[test]
fn mountinfo_unescape() {
    assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
    assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
    assert_eq!(unescape_mountinfo("/plain"), "/plain");
}
