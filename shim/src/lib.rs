//! `containerd-shim-nodus-v2`: a containerd runtime v2 shim (`io.containerd.nodus.v2`).
//!
//! The binary follows containerd's shim contract:
//! - `start`: binds the ttrpc socket of the pod (one shim per sandbox, grouped on the
//!   `io.kubernetes.cri.sandbox-id` annotation), spawns the long-lived shim on it if none
//!   serves it yet, writes `address` into the bundle and prints the address;
//! - `delete`: cleanup after a dead shim (runtime state, rootfs mount), prints a
//!   `DeleteResponse`;
//! - no action: serve the task service (`containerd.task.v2.Task`, also answered under the
//!   v3 name) on the socket inherited as fd 3 until the last task is gone.
//!
//! It is synchronous on purpose: a handful of threads (ttrpc workers, a SIGCHLD reaper, an
//! event publisher) and no async runtime keep the resident size per pod small. Container
//! work goes through the `nodus-runtime` binary (the runtime library forks, so it must not
//! run inside this multi-threaded process), as containerd's runc shim runs `runc`.
//!
//! The shim is a library with a one-line `main.rs`, so that the fuzz targets in `fuzz/` can
//! reach its request decoding (`fuzzing`, with `--cfg fuzzing` only).

mod container;
mod error;
mod events;
mod flags;
#[cfg(fuzzing)]
pub mod fuzzing;
mod info;
mod logger;
mod mount;
mod process;
mod reaper;
mod runtime;
mod service;
mod stats;
mod stdio;
mod task;
mod thread;

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use containerd_shim_protos::api::DeleteResponse;
use protobuf::{Message, MessageField};
use sha2::{Digest, Sha256};

use flags::Flags;

/// The annotation CRI puts on every container of a pod, naming its sandbox.
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// containerd's default state dir, where shim sockets live (`<this>/s/<hash>`).
const SOCKET_ROOT: &str = "/run/containerd";
/// The listening socket handed from `start` to the long-lived shim.
const LISTENER_FD: i32 = 3;

/// The binary's `main`: parse the flags, then `start`, `delete` or serve.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags = match Flags::parse(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-nodus-v2: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if flags.version {
        println!("containerd-shim-nodus-v2 {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if flags.info {
        return match info::print() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("containerd-shim-nodus-v2: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let result = match flags.action.as_deref() {
        Some("start") => start(&flags),
        Some("delete") => delete(&flags),
        None => serve(&flags),
        Some(other) => Err(anyhow::anyhow!(
            "unknown action {other:?} (expected start, delete or none)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("containerd-shim-nodus-v2: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How long a shim holding no container waits before it exits (an orphan, see
/// `Service::wait_shutdown`): 60 s, or `NODUS_SHIM_IDLE_EXIT_SECONDS` (tests).
fn idle_exit() -> std::time::Duration {
    let secs = std::env::var("NODUS_SHIM_IDLE_EXIT_SECONDS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(60);
    std::time::Duration::from_secs(secs)
}

/// `unix:///run/containerd/s/<sha256(address/namespace/grouping)>`, as containerd's shims
/// name their sockets (so `ctr`/containerd tooling finds them where it expects).
fn socket_address(containerd_address: &str, namespace: &str, grouping: &str) -> String {
    let joined = Path::new(containerd_address).join(namespace).join(grouping);
    let digest = Sha256::digest(joined.as_os_str().as_encoded_bytes());
    format!("unix://{SOCKET_ROOT}/s/{}", hex::encode(digest))
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// The grouping key of the container in `bundle`: its sandbox ID, or its own ID.
fn grouping(bundle: &Path, id: &str) -> Result<String> {
    let path = bundle.join("config.json");
    let text = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let spec: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))?;
    Ok(spec
        .pointer("/annotations")
        .and_then(|a| a.get(SANDBOX_ID_ANNOTATION))
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or(id)
        .to_string())
}

/// `start`: find or spawn the pod's shim, print its address.
fn start(flags: &Flags) -> Result<()> {
    if flags.id.is_empty() || flags.namespace.is_empty() {
        bail!(
            "start needs -id and -namespace (got id {:?}, namespace {:?})",
            flags.id,
            flags.namespace
        );
    }
    let bundle = std::env::current_dir().context("current dir (the bundle)")?;
    let grouping = grouping(&bundle, &flags.id)?;
    let address = socket_address(&flags.address, &flags.namespace, &grouping);
    let path = socket_path(&address);
    if let Some(dir) = Path::new(path).parent() {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let listener = match UnixListener::bind(path) {
        Ok(l) => Some(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                None // the pod's shim serves it already
            } else {
                // A stale socket of a dead shim.
                fs::remove_file(path).with_context(|| format!("remove stale {path}"))?;
                Some(UnixListener::bind(path).with_context(|| format!("bind {path}"))?)
            }
        }
        Err(e) => return Err(e).with_context(|| format!("bind {path}")),
    };
    if let Some(listener) = listener {
        match spawn_server(flags, &bundle, &address, listener) {
            Ok(pid) => {
                let _ = fs::write(bundle.join("shim.pid"), pid.to_string());
            }
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(e);
            }
        }
    }
    fs::write(bundle.join("address"), &address)
        .with_context(|| format!("write {}/address", bundle.display()))?;
    let mut out = std::io::stdout().lock();
    out.write_all(address.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Spawns the long-lived shim in its own session with the listening socket as fd 3.
fn spawn_server(
    flags: &Flags,
    bundle: &Path,
    address: &str,
    listener: UnixListener,
) -> Result<u32> {
    let exe = std::env::current_exe().context("own executable")?;
    let fd: OwnedFd = listener.into();
    let raw = fd.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args([
            "-address",
            &flags.address,
            "-publish-binary",
            &flags.publish_binary,
        ])
        .args(["-socket", address]);
    if flags.debug {
        cmd.arg("-debug");
    }
    // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if raw == LISTENER_FD {
                let flags = libc::fcntl(raw, libc::F_GETFD);
                if flags < 0 || libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, LISTENER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("spawn the shim server")?;
    drop(fd);
    Ok(child.id())
}

/// `delete`: containerd's cleanup after the shim of this bundle died.
fn delete(flags: &Flags) -> Result<()> {
    let bundle = match &flags.bundle {
        Some(b) => PathBuf::from(b),
        None => std::env::current_dir().context("current dir (the bundle)")?,
    };
    // The host's view of the rootfs first: it is not the container's (that lives in the
    // container's own mount namespace), and it must go even if the runtime below is slow.
    let rootfs = bundle.join("rootfs");
    if let Err(e) = mount::unmount_all(&rootfs) {
        eprintln!("unmount {}: {e:#}", rootfs.display());
    }
    match runtime::Runtime::locate(&flags.namespace) {
        Ok(runtime) => {
            if let Err(e) = runtime.run_plain(&["delete", "--force", &flags.id]) {
                eprintln!("runtime delete {}: {e:#}", flags.id);
            }
        }
        Err(e) => eprintln!("{e:#}"),
    }
    // The pod's socket, if its shim is gone (a killed shim cannot remove it itself).
    if let Ok(grouping) = grouping(&bundle, &flags.id) {
        let address = socket_address(&flags.address, &flags.namespace, &grouping);
        let path = socket_path(&address);
        if UnixStream::connect(path).is_err() {
            let _ = fs::remove_file(path);
        }
    }
    let response = DeleteResponse {
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: MessageField::some(events::now()),
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    response.write_to_writer(&mut out)?;
    out.flush()?;
    Ok(())
}

/// No action: serve the task service on fd 3 until Shutdown.
fn serve(flags: &Flags) -> Result<()> {
    // Our log goes to the bundle's `log` FIFO, which containerd reads; never block on it.
    if let Ok(log) = fs::OpenOptions::new()
        .write(true)
        .custom_flags_nonblock()
        .open("log")
    {
        let fd = log.into_raw_fd();
        // SAFETY: plain fd duplication onto stderr.
        unsafe {
            libc::dup2(fd, 2);
            libc::close(fd);
        }
    }
    logger::StderrLogger::install(if flags.debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    });
    // One malloc arena for all threads: per-thread arenas cost resident memory in every
    // pod's shim and buy nothing at this request rate.
    // SAFETY: mallopt with integer arguments, before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }

    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "PR_SET_CHILD_SUBREAPER");
    }
    let signals = reaper::Signals::install()?;
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
    let publisher = events::Publisher::start(ttrpc_address, flags.namespace.clone())
        .context("spawn the events thread")?;
    let runtime = runtime::Runtime::locate(&flags.namespace)?;
    let service = Arc::new(service::Service::new(runtime, publisher));
    signals.spawn_reaper(service.clone())?;

    // SAFETY: fd 3 is the listening socket `start` handed us; we own it from here on.
    let listener = unsafe { OwnedFd::from_raw_fd(LISTENER_FD) };
    // It came without FD_CLOEXEC; no runtime or container process may inherit it.
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .context("FD_CLOEXEC on the listening socket")?;
    // containerd 1.6/1.7 call `containerd.task.v2.Task`, 2.x `containerd.task.v3.Task`:
    // the messages are the same, so answer under both names.
    let task: Arc<dyn containerd_shim_protos::Task + Send + Sync> =
        Arc::new(task::TaskService(service.clone()));
    let mut methods = containerd_shim_protos::create_task(task.clone());
    let v2: Vec<_> = containerd_shim_protos::create_task(task)
        .into_iter()
        .map(|(path, handler)| {
            (
                path.replace("/containerd.task.v3.Task/", "/containerd.task.v2.Task/"),
                handler,
            )
        })
        .collect();
    methods.extend(v2);
    let mut server = containerd_shim_protos::ttrpc::Server::new()
        .add_listener(listener.into_raw_fd())
        .context("ttrpc listener")?
        .register_service(methods)
        .set_thread_count_min(1)
        .set_thread_count_default(2)
        .set_thread_count_max(4);
    server.start().context("ttrpc server")?;
    tracing::info!(id = %flags.id, namespace = %flags.namespace, "shim serving");

    service.wait_shutdown(idle_exit());
    tracing::info!("shutting down");
    if let Some(socket) = &flags.socket {
        let _ = fs::remove_file(socket_path(socket));
    }
    // Let the Shutdown reply leave before the process goes.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::process::exit(0);
}

/// `OpenOptions::custom_flags(O_NONBLOCK)` under a readable name.
trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}
