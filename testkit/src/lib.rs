//! Test support shared by every crate of the workspace.
//!
//! - [`PrivateContainerd`]: Debian's containerd with its own root, state, sockets and CNI
//!   directories, pod networking in a private "node" network namespace, our images imported;
//!   dropping it removes everything it made.
//! - [`NodeNetns`]: a uniquely named network namespace that is deleted on drop.
//! - [`images`]: the local `pause` and `busybox` OCI images, built byte-for-byte reproducibly.
//! - [`wait`]: [`wait_until`] and [`wait_until_async`], polling a condition instead of a
//!   fixed sleep followed by an assert.
//! - [`cri`]: CRI request builders (sandbox and container configs) and the call sequences
//!   tests and benchmarks share.

pub mod apiserver;
pub mod cleanup;
pub mod containerd;
pub mod cri;
pub mod images;
pub mod netns;
pub mod procstat;
pub mod registry;
pub mod upstream_kubelet;
pub mod wait;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub use apiserver::{ControlPlane, ControlPlaneOptions};
pub use containerd::{Cni, ContainerdOptions, Daemon, PrivateContainerd};
pub use images::{BUSYBOX_IMAGE, PAUSE_IMAGE};
pub use netns::NodeNetns;
pub use wait::{
    try_wait_until, try_wait_until_async, wait_until, wait_until_async, Check, TimedOut, POLL,
};

/// Errors of the test helpers; each names what it was working on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("CRI call {call} failed: {status}")]
    Cri {
        call: &'static str,
        #[source]
        status: tonic::Status,
    },
    #[error(transparent)]
    Connect(#[from] nodus_proto::ConnectError),
    #[error("timed out after {seconds} s waiting for {what}")]
    Timeout { what: String, seconds: u64 },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The workspace's top directory (where the root Cargo.toml is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of a workspace binary in the cargo target dir of the current profile
/// (`cargo test --workspace` builds every binary of the workspace before tests run).
pub fn bin_path(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    // Test executables live in target/<profile>/deps; prefer the profile they were built in.
    let profile = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.parent()
                .and_then(Path::parent)
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        })
        // debug, release, or a custom profile such as `node` (the benchmarks).
        .filter(|p| target.join(p).join(name).exists())
        .unwrap_or_else(|| "debug".into());
    target.join(profile).join(name)
}

/// A name part unique on this machine for this process: `<pid>-<counter>`.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
