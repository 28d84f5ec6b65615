//! Container operations (create, start, state, kill, delete, exec, ps, pause, resume,
//! update, stats) over a state directory `<root>/<id>/`.
//!
//! The state directory holds `state.json` (what later commands need) and, between
//! create and start, `exec.fifo` on which the init blocks. Status is derived, not
//! stored: init alive + FIFO present = created; alive + frozen = paused; alive =
//! running; otherwise stopped. The init is identified by pid *and* start time.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{open, OFlag};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{Hooks, LinuxNamespaceType, LinuxResources, LinuxSeccomp, Process};
use serde::{Deserialize, Serialize};

use crate::cgroups::Cgroup;
use crate::error::{Context, Error, Result};
use crate::namespaces::{self, Plan};
use crate::util::{proc_stat, process_alive, rfc3339, write_atomic};
use crate::{hooks, init, process, seccomp, spec, sync, userns};

/// The runtime-spec version we implement.
pub const OCI_VERSION: &str = "1.0.2";

/// Lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created.
    Creating,
    /// Created; init waiting for start.
    Created,
    /// The user process runs.
    Running,
    /// Frozen.
    Paused,
    /// The init has exited.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// The OCI state (what `state` prints and hooks read on stdin).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    /// runtime-spec version.
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Status.
    pub status: Status,
    /// Init pid (0 once stopped).
    pub pid: i32,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Root filesystem (runc extension, read by containerd).
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Owner (runc extension).
    pub owner: String,
    /// config.json annotations.
    pub annotations: HashMap<String, String>,
}

/// What is persisted in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Absolute rootfs.
    pub rootfs: PathBuf,
    /// Init pid (host pid namespace).
    pub pid: i32,
    /// Init start time (clock ticks after boot), against pid reuse.
    pub pid_start: u64,
    /// Creation time.
    pub created: String,
    /// The container's cgroup.
    pub cgroup: Cgroup,
    /// config.json annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// config.json hooks (poststart and poststop run after create).
    #[serde(default)]
    pub hooks: Option<Hooks>,
    /// config.json process: the defaults of `exec ID CMD...`.
    #[serde(default)]
    pub process: Option<Process>,
    /// Current resource limits (config.json's, as changed by `update`).
    #[serde(default)]
    pub resources: Option<LinuxResources>,
    /// config.json `linux.seccomp`: exec'd processes get the same filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<LinuxSeccomp>,
    /// No mount namespace of its own: its mounts below the rootfs are in the
    /// runtime's namespace, and delete removes them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_mount_ns: bool,
}

/// Options of `create`/`run`.
#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Where to write the init pid.
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to.
    pub console_socket: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root.
    pub no_pivot: bool,
}

/// Options of `exec`.
#[derive(Debug, Clone)]
pub struct ExecOpts {
    /// The process to run.
    pub process: Process,
    /// Return once started instead of waiting.
    pub detach: bool,
    /// Where to write its pid.
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to.
    pub console_socket: Option<PathBuf>,
}

/// The runtime: containers under a state root.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// State root (`--root`, default /run/nodus).
    pub root: PathBuf,
}

/// Undo a half-made container when create fails.
struct CreateGuard {
    dir: PathBuf,
    cgroup: Option<Cgroup>,
    child: Option<i32>,
    /// A rootfs whose mounts were made in our mount namespace.
    shared_mounts: Option<PathBuf>,
    armed: bool,
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.child {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
        }
        if let Some(root) = &self.shared_mounts {
            if let Err(e) = crate::rootfs::unmount_below(root) {
                tracing::warn!("cleanup: {e}");
            }
        }
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.destroy() {
                tracing::warn!("cleanup: {e}");
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// clone(2) without CLONE_VM: like fork, plus new namespaces. Returns 0 in the child.
pub(crate) fn clone_process(flags: CloneFlags) -> Result<i32> {
    let f = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: without CLONE_VM the child gets a copy of our (single-threaded) memory,
    // exactly as with fork(); a null stack means "continue on the current stack".
    let r = unsafe { libc::syscall(libc::SYS_clone, f, 0usize, 0usize, 0usize, 0usize) };
    if r < 0 {
        return Err(io::Error::last_os_error()).ctx(|| format!("clone with {flags:?}"));
    }
    Ok(r as i32)
}

fn wait_code(pid: i32) -> i32 {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

/// The pid `run` forwards signals to.
static FORWARD_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = FORWARD_PID.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

impl Runtime {
    /// A runtime keeping state under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime { root: root.into() }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Load a container's saved state.
    pub fn load(&self, id: &str) -> Result<Saved> {
        spec::validate_id(id)?;
        let p = self.dir(id).join("state.json");
        let data = match fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.into()))
            }
            Err(e) => return Err(e).ctx(|| format!("read {}", p.display())),
        };
        serde_json::from_slice(&data)
            .map_err(|e| Error::Other(format!("corrupt state {}: {e}", p.display())))
    }

    /// The derived status of a loaded container.
    pub fn status(&self, s: &Saved) -> Status {
        if !process_alive(s.pid, s.pid_start) {
            return Status::Stopped;
        }
        if self.dir(&s.id).join("exec.fifo").exists() {
            return Status::Created;
        }
        if s.cgroup.is_frozen() {
            return Status::Paused;
        }
        Status::Running
    }

    fn oci_state(&self, s: &Saved, status: Status) -> OciState {
        OciState {
            oci_version: OCI_VERSION.into(),
            id: s.id.clone(),
            status,
            pid: if status == Status::Stopped { 0 } else { s.pid },
            bundle: s.bundle.clone(),
            rootfs: s.rootfs.clone(),
            created: s.created.clone(),
            owner: String::new(),
            annotations: s.annotations.clone(),
        }
    }

    /// The OCI state of a container.
    pub fn state(&self, id: &str) -> Result<OciState> {
        let s = self.load(id)?;
        let st = self.status(&s);
        Ok(self.oci_state(&s, st))
    }

    /// Ids of all containers under the root.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut out = vec![];
        match fs::read_dir(&self.root) {
            Ok(rd) => {
                for e in rd.flatten() {
                    if e.path().join("state.json").exists() {
                        out.push(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx(|| format!("read {}", self.root.display())),
        }
        out.sort();
        Ok(out)
    }

    /// Create a container: everything set up, the init blocked until `start`.
    /// Returns the init pid (our child until this process exits).
    pub fn create(&self, o: &CreateOpts) -> Result<i32> {
        spec::validate_id(&o.id)?;
        let b = spec::load_bundle(&o.bundle)?;
        let plan = Plan::from_spec(&b.spec);
        let shared_mount_ns = !plan.is_new(LinuxNamespaceType::Mount)
            && plan.joins(LinuxNamespaceType::Mount).is_none();
        if o.no_pivot
            && crate::rootfs::rootfs_propagation(&b.spec)
                .is_some_and(|p| p.contains(nix::mount::MsFlags::MS_PRIVATE))
        {
            // As runc: after MS_MOVE + chroot a private root pins mounts nobody can free.
            return Err(Error::config(
                "linux.rootfsPropagation",
                "[r]private is not safe without pivot_root (--no-pivot)",
            ));
        }
        let process = b.spec.process().as_ref().expect("validated");
        let joins = plan.open_joins()?;
        let pid_join = match plan.joins(LinuxNamespaceType::Pid) {
            Some(p) => Some(fs::File::open(p).map_err(|e| {
                Error::config(
                    "linux.namespaces[pid].path",
                    format!("{}: {e}", p.display()),
                )
            })?),
            None => None,
        };
        let userns = userns::UserNs::open(&b.spec, &plan)?;
        let rootfs_tree = match &userns {
            Some(u) => userns::idmapped_rootfs(&b.rootfs, &u.file, &u.uid_map)?,
            None => None,
        };
        // Binds are prepared by us in a user namespace, and where a mount is idmapped.
        let idmapped_mounts = b
            .spec
            .mounts()
            .iter()
            .flatten()
            .any(|m| m.uid_mappings().as_ref().is_some_and(|v| !v.is_empty()));
        let bind_trees = if userns.is_some() || idmapped_mounts {
            crate::rootfs::prepare_bind_sources(&b.spec, &b.dir)?
        } else {
            Vec::new()
        };
        // In a joined user namespace the init makes its namespaces after joining it (a new
        // pid namespace through a helper), not at clone time (see `userns`).
        let joined_userns = userns.as_ref().filter(|u| u.joined);
        let (clone_flags, unshare_after_user) = match joined_userns {
            Some(_) => (
                CloneFlags::empty(),
                plan.clone_flags - CloneFlags::CLONE_NEWPID,
            ),
            None => (plan.clone_flags, CloneFlags::empty()),
        };
        let linux = b.spec.linux().as_ref().expect("validated");
        let seccomp = linux.seccomp().as_ref().map(seccomp::compile).transpose()?;
        let cgroup = Cgroup::resolve(linux.cgroups_path().as_deref(), &o.id)?;
        let console = match (&o.console_socket, process.terminal() == Some(true)) {
            (Some(p), true) => Some(process::connect_console(p)?),
            (None, true) => {
                return Err(Error::config(
                    "process.terminal",
                    "true, but no --console-socket was given",
                ))
            }
            _ => None,
        };

        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.root)
            .ctx(|| format!("create state root {}", self.root.display()))?;
        let dir = self.dir(&o.id);
        match fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists(o.id.clone()))
            }
            Err(e) => return Err(e).ctx(|| format!("create {}", dir.display())),
        }
        let mut guard = CreateGuard {
            dir: dir.clone(),
            cgroup: None,
            child: None,
            shared_mounts: shared_mount_ns.then(|| b.rootfs.clone()),
            armed: true,
        };
        nix::unistd::mkfifo(&dir.join("exec.fifo"), Mode::from_bits_truncate(0o622))
            .ctx(|| "create exec fifo".into())?;
        // Writable by a non-root container user (the umask took the w bits away).
        fs::set_permissions(
            dir.join("exec.fifo"),
            std::os::unix::fs::PermissionsExt::from_mode(0o622),
        )
        .ctx(|| "chmod exec fifo".into())?;
        guard.cgroup = Some(cgroup.clone());
        // A systemd scope cannot start empty: it is made with the init, below.
        if cgroup.systemd_unit().is_none() {
            cgroup.create(linux.resources().as_ref())?;
        }
        let state_dir: OwnedFd = open(
            &dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ctx(|| format!("open {}", dir.display()))?;
        let (parent_sock, child_sock) = sync::pair()?;

        let saved_pidns = match &pid_join {
            Some(f) => {
                let own =
                    fs::File::open("/proc/self/ns/pid").ctx(|| "open /proc/self/ns/pid".into())?;
                setns(f, CloneFlags::CLONE_NEWPID).ctx(|| "join pid namespace".into())?;
                Some(own)
            }
            None => None,
        };
        let args = init::InitArgs {
            spec: &b.spec,
            bundle: &b.dir,
            rootfs: &b.rootfs,
            plan: &plan,
            joins,
            unshare_after_user,
            sync: child_sock,
            state_dir,
            console,
            no_pivot: o.no_pivot,
            cgroup_sources: cgroup.mount_sources(),
            seccomp: seccomp.as_ref(),
            rootfs_tree,
            bind_trees,
        };
        // The init closes our end of the sync socket: it must see EOF when we go.
        let our_end = parent_sock.as_raw_fd();
        let pid = match joined_userns {
            Some(u) if plan.is_new(LinuxNamespaceType::Pid) => {
                userns::clone_init_in_new_pidns(&u.file, || {
                    // SAFETY: in the child, closing its copy of our fd.
                    unsafe { libc::close(our_end) };
                    init::run(args)
                })
            }
            _ => {
                let pid = clone_process(clone_flags);
                if let Ok(0) = pid {
                    // SAFETY: in the child, closing its copy of our fd.
                    unsafe { libc::close(our_end) };
                    init::run(args);
                }
                // Our copies of the init's fds (its end of the sync socket, the console).
                drop(args);
                pid
            }
        };
        if let Some(own) = saved_pidns {
            setns(&own, CloneFlags::CLONE_NEWPID).ctx(|| "restore pid namespace".into())?;
        }
        let pid = pid?;
        guard.child = Some(pid);
        if userns.as_ref().is_some_and(|u| !u.joined) {
            userns::write_maps(pid, &userns::Maps::of(linux))?;
        }
        cgroup.enter(pid, linux.resources().as_ref())?;
        if let Some(adj) = process.oom_score_adj() {
            if let Err(e) = fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string()) {
                tracing::warn!("process.oomScoreAdj {adj}: {e} (continuing)");
            }
        }
        let pid_start = proc_stat(pid)
            .map(|s| s.start_time)
            .ok_or_else(|| Error::Other("container init exited during create".into()))?;
        let saved = Saved {
            id: o.id.clone(),
            bundle: b.dir.clone(),
            rootfs: b.rootfs.clone(),
            pid,
            pid_start,
            created: rfc3339(SystemTime::now()),
            cgroup,
            annotations: b.spec.annotations().clone().unwrap_or_default(),
            hooks: b.spec.hooks().clone(),
            process: b.spec.process().clone(),
            resources: linux.resources().clone(),
            seccomp: linux.seccomp().clone(),
            shared_mount_ns,
        };
        // Hooks run after the environment is made (lifecycle step 2), so the spec's
        // status for every one of them until start is `created` (runc still says
        // `creating` for prestart/createRuntime/createContainer; crun and the
        // runtime-tools hooks_stdin check say `created`).
        let st = self.oci_state(&saved, Status::Created);
        sync::send(
            &parent_sock,
            sync::GO,
            &serde_json::to_vec(&st).unwrap_or_default(),
        )?;
        loop {
            match sync::recv(&parent_sock)? {
                Some((sync::HOOKS, _)) => {
                    let data = serde_json::to_vec(&st).unwrap_or_default();
                    if let Some(h) = b.spec.hooks() {
                        hooks::run(h.prestart().as_deref().unwrap_or(&[]), "prestart", &data)?;
                        hooks::run(
                            h.create_runtime().as_deref().unwrap_or(&[]),
                            "createRuntime",
                            &data,
                        )?;
                    }
                    sync::send(&parent_sock, sync::HOOKS_DONE, &[])?;
                }
                Some((sync::READY, _)) => break,
                Some((sync::ERROR, msg)) => {
                    return Err(Error::Other(String::from_utf8_lossy(&msg).into_owned()))
                }
                Some((t, _)) => return Err(Error::Other(format!("unexpected sync message {t}"))),
                None => return Err(Error::Other("container init exited during setup".into())),
            }
        }
        write_atomic(
            &dir.join("state.json"),
            &serde_json::to_vec(&saved).unwrap_or_default(),
            0o600,
        )
        .ctx(|| "write state.json".into())?;
        if let Some(pf) = &o.pid_file {
            write_atomic(pf, pid.to_string().as_bytes(), 0o644)
                .ctx(|| format!("write pid file {}", pf.display()))?;
        }
        guard.armed = false;
        Ok(pid)
    }

    /// Start a created container: release the init blocked on the exec FIFO.
    pub fn start(&self, id: &str) -> Result<()> {
        let s = self.load(id)?;
        let st = self.status(&s);
        if st != Status::Created {
            return Err(Error::State(format!(
                "cannot start a container in the {st} state"
            )));
        }
        let fifo = self.dir(id).join("exec.fifo");
        let fd = open(
            &fifo,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ctx(|| format!("open {}", fifo.display()))?;
        loop {
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one pollfd we own.
            let n = unsafe { libc::poll(&mut pfd, 1, 20) };
            if n > 0 {
                let mut b = [0u8; 1];
                // SAFETY: read into a 1-byte buffer.
                let r = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
                if r == 1 {
                    break;
                }
                if r == 0 && pfd.revents & libc::POLLHUP != 0 {
                    return Err(Error::State("container init exited before start".into()));
                }
            }
            if !process_alive(s.pid, s.pid_start) {
                return Err(Error::State("container init exited before start".into()));
            }
        }
        drop(fd);
        fs::remove_file(&fifo).ctx(|| format!("remove {}", fifo.display()))?;
        if let Some(h) = s.hooks.as_ref().and_then(|h| h.poststart().as_ref()) {
            let data = serde_json::to_vec(&self.oci_state(&s, Status::Running)).unwrap_or_default();
            if let Err(e) = hooks::run(h, "poststart", &data) {
                tracing::warn!("{e}");
            }
        }
        Ok(())
    }

    /// create + start + wait + delete; returns the container's exit code
    /// (128+signal when killed). With `detach`, returns 0 after start.
    pub fn run(&self, o: &CreateOpts, detach: bool) -> Result<i32> {
        // Signals for the container that arrive while we wait are forwarded to it.
        let pid = self.create(o)?;
        if let Err(e) = self.start(&o.id) {
            let _ = self.delete(&o.id, true);
            let _ = waitpid(Pid::from_raw(pid), None);
            return Err(e);
        }
        if detach {
            return Ok(0);
        }
        FORWARD_PID.store(pid, Ordering::Relaxed);
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGWINCH,
        ] {
            // SAFETY: installing a handler that only calls kill().
            unsafe { libc::signal(sig, forward_signal as *const () as libc::sighandler_t) };
        }
        let code = wait_code(pid);
        self.delete(&o.id, true)?;
        Ok(code)
    }

    /// Send `sig` to the init, or with `all` to every process in the cgroup.
    pub fn kill(&self, id: &str, sig: i32, all: bool) -> Result<()> {
        let s = self.load(id)?;
        let st = self.status(&s);
        if st == Status::Stopped && !all {
            return Err(Error::State("container not running".into()));
        }
        let send = |pid: i32| -> Result<()> {
            // SAFETY: kill with plain integers.
            if unsafe { libc::kill(pid, sig) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(e).ctx(|| format!("kill {pid} with signal {sig}"));
                }
            }
            Ok(())
        };
        if all {
            let pids = s.cgroup.pids()?;
            if pids.is_empty() && st == Status::Stopped {
                return Err(Error::State("container not running".into()));
            }
            for p in pids {
                send(p)?;
            }
            if st == Status::Paused && sig == libc::SIGKILL {
                s.cgroup.freeze(false)?;
            }
            Ok(())
        } else {
            send(s.pid)
        }
    }

    /// Delete a container: kill what is left (created, or running with `force`),
    /// remove its cgroup and state, run poststop hooks.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let s = match self.load(id) {
            Ok(s) => s,
            Err(Error::Other(msg)) if force && msg.starts_with("corrupt state") => {
                // Nothing to kill or remove by the book: drop the state so the id is free.
                tracing::warn!("{msg}; removing the state directory only");
                let d = self.dir(id);
                return fs::remove_dir_all(&d).ctx(|| format!("remove {}", d.display()));
            }
            Err(Error::NotFound(_)) => {
                // A create that died before writing state.json may leave the directory.
                let d = self.dir(id);
                if d.exists() {
                    let _ = fs::remove_dir_all(&d);
                }
                return if force {
                    Ok(())
                } else {
                    Err(Error::NotFound(id.into()))
                };
            }
            Err(e) => return Err(e),
        };
        let st = self.status(&s);
        if matches!(st, Status::Running | Status::Paused) && !force {
            return Err(Error::State(format!(
                "cannot delete container {id} that is not stopped: {st}"
            )));
        }
        if st != Status::Stopped {
            let _ = kill(Pid::from_raw(s.pid), Signal::SIGKILL);
        }
        let left = s.cgroup.pids().unwrap_or_default();
        for p in &left {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
        if st == Status::Paused || (!left.is_empty() && s.cgroup.is_frozen()) {
            let _ = s.cgroup.freeze(false);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_alive(s.pid, s.pid_start) && Instant::now() < deadline {
            // Reap it if it is ours (run), else wait for its parent to.
            let _ = waitpid(
                Pid::from_raw(s.pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        if s.shared_mount_ns {
            crate::rootfs::unmount_below(&s.rootfs)?;
        }
        s.cgroup.destroy()?;
        let d = self.dir(id);
        fs::remove_dir_all(&d).ctx(|| format!("remove {}", d.display()))?;
        if let Some(h) = s.hooks.as_ref().and_then(|h| h.poststop().as_ref()) {
            let data = serde_json::to_vec(&self.oci_state(&s, Status::Stopped)).unwrap_or_default();
            if let Err(e) = hooks::run(h, "poststop", &data) {
                tracing::warn!("{e}");
            }
        }
        Ok(())
    }

    /// PIDs (host namespace) of the container's processes.
    pub fn ps(&self, id: &str) -> Result<Vec<i32>> {
        self.load(id)?.cgroup.pids()
    }

    /// Freeze all processes.
    pub fn pause(&self, id: &str) -> Result<()> {
        let s = self.load(id)?;
        match self.status(&s) {
            Status::Running | Status::Created => s.cgroup.freeze(true),
            st => Err(Error::State(format!(
                "cannot pause a container in the {st} state"
            ))),
        }
    }

    /// Thaw all processes.
    pub fn resume(&self, id: &str) -> Result<()> {
        let s = self.load(id)?;
        match self.status(&s) {
            Status::Paused => s.cgroup.freeze(false),
            st => Err(Error::State(format!(
                "cannot resume a container in the {st} state"
            ))),
        }
    }

    /// Change resource limits of a live container.
    pub fn update(&self, id: &str, r: &LinuxResources) -> Result<()> {
        let mut s = self.load(id)?;
        if self.status(&s) == Status::Stopped {
            return Err(Error::State("container not running".into()));
        }
        if let Some(unit) = s.cgroup.systemd_unit() {
            unit.set_resources(r)?;
        }
        s.cgroup.apply(r)?;
        // Keep the saved config in step (read by `exec` and later updates).
        let mut cur = s.resources.clone().unwrap_or_default();
        merge_resources(&mut cur, r);
        s.resources = Some(cur);
        let p = self.dir(id).join("state.json");
        write_atomic(&p, &serde_json::to_vec(&s).unwrap_or_default(), 0o600)
            .ctx(|| format!("write {}", p.display()))
    }

    /// The container cgroup's accounting (`events --stats`).
    pub fn stats(&self, id: &str) -> Result<crate::cgroups::Stats> {
        Ok(self.load(id)?.cgroup.stats())
    }

    /// Run an additional process in a running container.
    /// Returns its exit code, or 0 once started with `detach`.
    pub fn exec(&self, id: &str, o: &ExecOpts) -> Result<i32> {
        let s = self.load(id)?;
        let st = self.status(&s);
        if !matches!(st, Status::Running | Status::Created) {
            return Err(Error::State(format!("cannot exec in a {st} container")));
        }
        spec::validate_process(&o.process, "process")?;
        let p = &o.process;
        let console = match (&o.console_socket, p.terminal() == Some(true)) {
            (Some(path), true) => Some(process::connect_console(path)?),
            (None, true) => {
                return Err(Error::config(
                    "process.terminal",
                    "true, but no --console-socket was given",
                ))
            }
            _ => None,
        };
        // Namespaces of the init that differ from ours (same inode = nothing to join).
        let mut joins = vec![];
        let mut pid_ns = None;
        for t in [
            // First: the others may belong to it.
            LinuxNamespaceType::User,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Cgroup,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
        ] {
            let name = namespaces::proc_name(t);
            let theirs = format!("/proc/{}/ns/{name}", s.pid);
            let same = match (
                fs::metadata(&theirs),
                fs::metadata(format!("/proc/self/ns/{name}")),
            ) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if same {
                continue;
            }
            let f = fs::File::open(&theirs).ctx(|| format!("open {theirs}"))?;
            if t == LinuxNamespaceType::Pid {
                pid_ns = Some(f);
            } else {
                joins.push((namespaces::flag(t), f));
            }
        }
        let root = open(
            format!("/proc/{}/root", s.pid).as_str(),
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ctx(|| format!("open /proc/{}/root", s.pid))?;
        let filter = s.seccomp.as_ref().map(seccomp::compile).transpose()?;
        let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).ctx(|| "pipe".into())?;
        if let Some(f) = &pid_ns {
            setns(f, CloneFlags::CLONE_NEWPID)
                .ctx(|| "join the container's pid namespace".into())?;
        }
        let child = clone_process(CloneFlags::empty())?;
        if child == 0 {
            drop(rd);
            let err = exec_child(&s, p, &joins, &root, console.as_ref(), filter.as_ref());
            let msg = err.to_string();
            // SAFETY: write to the error pipe, then _exit without running the parent's destructors.
            unsafe {
                libc::write(wr.as_raw_fd(), msg.as_ptr().cast(), msg.len());
                libc::_exit(127);
            }
        }
        drop(wr);
        drop(console);
        let mut msg = Vec::new();
        let mut f = fs::File::from(rd);
        let _ = io::Read::read_to_end(&mut f, &mut msg);
        if !msg.is_empty() {
            let _ = waitpid(Pid::from_raw(child), None);
            return Err(Error::Other(String::from_utf8_lossy(&msg).into_owned()));
        }
        if let Some(pf) = &o.pid_file {
            write_atomic(pf, child.to_string().as_bytes(), 0o644)
                .ctx(|| format!("write pid file {}", pf.display()))?;
        }
        if o.detach {
            return Ok(0);
        }
        FORWARD_PID.store(child, Ordering::Relaxed);
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGWINCH,
        ] {
            // SAFETY: installing a handler that only calls kill().
            unsafe { libc::signal(sig, forward_signal as *const () as libc::sighandler_t) };
        }
        Ok(wait_code(child))
    }
}

/// The exec'd process, in the forked child: join, set up, exec. Returns only on error.
fn exec_child(
    s: &Saved,
    p: &Process,
    joins: &[(CloneFlags, fs::File)],
    root: &OwnedFd,
    console: Option<&OwnedFd>,
    filter: Option<&seccomp::Filter>,
) -> Error {
    let r = (|| -> Result<std::convert::Infallible> {
        // Join the cgroup first, while the host's cgroupfs is still visible ("0" = us).
        for dir in s.cgroup.dirs() {
            let f = dir.join("cgroup.procs");
            fs::write(&f, "0").ctx(|| format!("join cgroup {}", f.display()))?;
        }
        for (flag, f) in joins {
            setns(f, *flag).ctx(|| format!("join {flag:?} namespace"))?;
        }
        nix::unistd::fchdir(root).ctx(|| "fchdir container root".into())?;
        nix::unistd::chroot(".").ctx(|| "chroot container root".into())?;
        // SAFETY: setsid has no preconditions.
        unsafe { libc::setsid() };
        if p.terminal() == Some(true) {
            if let Some(c) = console {
                let size = p
                    .console_size()
                    .as_ref()
                    .map(|b| (b.height() as u16, b.width() as u16));
                process::setup_console(c.as_raw_fd(), size)?;
            }
        }
        process::set_rlimits(p)?;
        let early = nix::unistd::chdir(p.cwd());
        let prog = process::find_program(p)?;
        // SAFETY: umask has no preconditions.
        unsafe { libc::umask(p.user().umask().unwrap_or(0o022) as libc::mode_t) };
        let nnp = p.no_new_privileges() == Some(true);
        if let (Some(f), false) = (filter, nnp) {
            seccomp::install(f)?;
        }
        process::set_user_and_caps(p)?;
        if early.is_err() {
            nix::unistd::chdir(p.cwd())
                .ctx(|| format!("process.cwd: chdir {}", p.cwd().display()))?;
        }
        process::set_no_new_privs(p)?;
        process::reset_signals();
        if let (Some(f), true) = (filter, nnp) {
            seccomp::install(f)?;
        }
        Err(process::exec(&prog, p))
    })();
    match r {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Overlay the set fields of `new` onto `cur` (runc's update semantics: unset = keep).
fn merge_resources(cur: &mut LinuxResources, new: &LinuxResources) {
    if new.cpu().is_some() {
        cur.set_cpu(new.cpu().clone());
    }
    if new.memory().is_some() {
        cur.set_memory(*new.memory());
    }
    if new.pids().is_some() {
        cur.set_pids(*new.pids());
    }
    if new.devices().is_some() {
        cur.set_devices(new.devices().clone());
    }
    if new.unified().is_some() {
        cur.set_unified(new.unified().clone());
    }
}

/// Whether `path` looks like a bundle (has config.json).
pub fn is_bundle(path: &Path) -> bool {
    path.join("config.json").is_file()
}
