//! The container's init: runs in the cloned child, sets up the container from inside
//! its namespaces, reports READY and blocks on the exec FIFO until `start`.
//!
//! This code runs in a freshly cloned single-threaded process and never returns: it
//! either execs the container program or exits after reporting the error.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Context, Error, Result};
use crate::namespaces::Plan;
use crate::{hooks, process, rootfs, seccomp, sync};

/// Everything the init needs, prepared by the runtime before clone.
pub struct InitArgs<'a> {
    /// The container config.
    pub spec: &'a Spec,
    /// Bundle directory.
    pub bundle: &'a Path,
    /// Absolute rootfs.
    pub rootfs: &'a Path,
    /// Namespace plan.
    pub plan: &'a Plan,
    /// Namespaces to join (opened by the runtime), except pid; a user namespace first.
    pub joins: Vec<(CloneFlags, File)>,
    /// New namespaces to make once in the joined user namespace (so they belong to it).
    pub unshare_after_user: CloneFlags,
    /// Our end of the sync socket.
    pub sync: OwnedFd,
    /// O_PATH fd of the state directory holding `exec.fifo`.
    pub state_dir: OwnedFd,
    /// Connected `--console-socket`, when process.terminal is set.
    pub console: Option<OwnedFd>,
    /// `--no-pivot`.
    pub no_pivot: bool,
    /// Host directories of the container's cgroup, for a `cgroup` mount.
    pub cgroup_sources: Vec<(String, PathBuf)>,
    /// The compiled `linux.seccomp` filter.
    pub seccomp: Option<&'a seccomp::Filter>,
    /// An idmapped copy of the rootfs mount, attached in place of the rootfs bind.
    pub rootfs_tree: Option<OwnedFd>,
    /// Detached bind mounts by index in `mounts` (user namespaces; empty otherwise).
    pub bind_trees: Vec<Option<OwnedFd>>,
}

/// Run the init; never returns.
pub fn run(a: InitArgs) -> ! {
    let ready = std::cell::Cell::new(false);
    let err = match setup(&a, &ready) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let msg = err.to_string();
    if ready.get() || sync::send(&a.sync, sync::ERROR, msg.as_bytes()).is_err() {
        // After READY nobody listens for errors: tell the container's stderr.
        let _ = writeln!(std::io::stderr(), "nodus-runtime init: {msg}");
    }
    // SAFETY: _exit skips destructors that belong to the parent's copy of our memory.
    unsafe { libc::_exit(if msg.starts_with("exec") { 127 } else { 1 }) }
}

/// The state for hooks run in the container's namespaces (createContainer,
/// startContainer): the spec wants the pid as the container sees it, our own.
fn in_container_view(state: Vec<u8>) -> Vec<u8> {
    match serde_json::from_slice::<crate::container::OciState>(&state) {
        Ok(mut st) => {
            st.pid = nix::unistd::getpid().as_raw();
            serde_json::to_vec(&st).unwrap_or(state)
        }
        Err(_) => state,
    }
}

fn setup(a: &InitArgs, ready: &std::cell::Cell<bool>) -> Result<std::convert::Infallible> {
    let spec = a.spec;
    let process = spec.process().as_ref().expect("validated");
    // Wait until the runtime has put us in our cgroup.
    let state = match sync::recv(&a.sync)? {
        Some((sync::GO, state)) => in_container_view(state),
        _ => return Err(Error::Other("runtime went away before setup".into())),
    };
    // SAFETY: setsid has no memory-safety preconditions.
    unsafe { libc::setsid() };
    // The user namespace first: the others may belong to it. A helper that cloned us
    // into a new pid namespace put us in it already (joining one's own fails).
    for (_, f) in a
        .joins
        .iter()
        .filter(|(t, _)| *t == CloneFlags::CLONE_NEWUSER)
    {
        if !same_namespace(f, "user") {
            setns(f, CloneFlags::CLONE_NEWUSER).ctx(|| "join user namespace".into())?;
        }
    }
    // In a user namespace, become its root: our IDs are still host root's, which it does
    // not map, and files cannot be made with unmapped IDs (EOVERFLOW).
    if a.plan.is_new(LinuxNamespaceType::User)
        || a.joins.iter().any(|(t, _)| *t == CloneFlags::CLONE_NEWUSER)
    {
        let root = (nix::unistd::Gid::from_raw(0), nix::unistd::Uid::from_raw(0));
        nix::unistd::setresgid(root.0, root.0, root.0)
            .ctx(|| "setresgid 0 in the user namespace".into())?;
        nix::unistd::setresuid(root.1, root.1, root.1)
            .ctx(|| "setresuid 0 in the user namespace".into())?;
    }
    if !a.unshare_after_user.is_empty() {
        unshare(a.unshare_after_user).ctx(|| format!("unshare {:?}", a.unshare_after_user))?;
    }
    for (flag, f) in a
        .joins
        .iter()
        .filter(|(t, _)| *t != CloneFlags::CLONE_NEWUSER)
    {
        setns(f, *flag).ctx(|| format!("join {flag:?} namespace"))?;
    }
    if a.plan.new_cgroup {
        unshare(CloneFlags::CLONE_NEWCGROUP).ctx(|| "unshare cgroup namespace".into())?;
    }
    // A UTS namespace joined by path gets the names too (runc does the same).
    if a.plan.is_new(LinuxNamespaceType::Uts) || a.plan.joins(LinuxNamespaceType::Uts).is_some() {
        if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
            nix::unistd::sethostname(h).ctx(|| format!("hostname: sethostname {h:?}"))?;
        }
        if let Some(d) = spec.domainname().as_deref().filter(|h| !h.is_empty()) {
            let c = CString::new(d).unwrap_or_default();
            // SAFETY: setdomainname reads len bytes of a valid buffer.
            if unsafe { libc::setdomainname(c.as_ptr(), d.len()) } != 0 {
                return Err(std::io::Error::last_os_error()).ctx(|| format!("domainname: {d:?}"));
            }
        }
    }
    // SAFETY: umask has no preconditions; devices are created with exact modes.
    unsafe { libc::umask(0) };
    // Without a mount namespace of its own (neither new nor joined) the container shares
    // the runtime's: its mounts go there below the rootfs (delete removes them) and it
    // enters the rootfs with chroot, as runc does; the tree's propagation is not touched.
    let own_mount_ns = a.plan.is_new(LinuxNamespaceType::Mount)
        || a.plan.joins(LinuxNamespaceType::Mount).is_some();
    if own_mount_ns {
        rootfs::prepare_root(spec, a.rootfs, a.rootfs_tree.as_ref())?;
    }
    let cx = rootfs::Context2 {
        bundle: a.bundle,
        rootfs: a.rootfs,
        cgroup_sources: &a.cgroup_sources,
        new_netns: a.plan.is_new(LinuxNamespaceType::Network),
        bind_trees: &a.bind_trees,
    };
    rootfs::mount_all(spec, &cx)?;
    rootfs::setup_dev(spec, a.rootfs)?;
    let hooks = spec.hooks().as_ref();
    let has = |h: Option<&Vec<oci_spec::runtime::Hook>>| h.is_some_and(|v| !v.is_empty());
    if hooks.is_some_and(|h| has(h.prestart().as_ref()) || has(h.create_runtime().as_ref())) {
        sync::send(&a.sync, sync::HOOKS, &[])?;
        match sync::recv(&a.sync)? {
            Some((sync::HOOKS_DONE, _)) => {}
            _ => return Err(Error::Other("runtime went away during hooks".into())),
        }
    }
    if let Some(h) = hooks.and_then(|h| h.create_container().as_ref()) {
        hooks::run(h, "createContainer", &state)?;
    }
    if own_mount_ns {
        rootfs::enter_root(a.rootfs, a.no_pivot)?;
    } else {
        rootfs::chroot_into(a.rootfs)?;
    }
    if process.terminal() == Some(true) {
        let sock = a.console.as_ref().ok_or_else(|| {
            Error::config(
                "process.terminal",
                "true, but no --console-socket was given",
            )
        })?;
        let size = process
            .console_size()
            .as_ref()
            .map(|b| (b.height() as u16, b.width() as u16));
        let slave = process::setup_console(sock.as_raw_fd(), size)?;
        rootfs::bind_console(&slave)?;
    }
    // Before finalize: /proc/sys is usually one of the read-only paths.
    if let Some(sysctl) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) {
        for (k, v) in sysctl {
            let p = Path::new("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&p, v).ctx(|| format!("linux.sysctl[{k:?}]: write {}", p.display()))?;
        }
    }
    rootfs::finalize(spec)?;
    // Last of the mounts: masked and read-only paths are binds, which an unbindable
    // root (runbindable: every mount) would refuse.
    if own_mount_ns {
        rootfs::apply_root_propagation(spec)?;
    }
    process::set_rlimits(process)?;
    let cwd = process.cwd();
    let chdir_early = nix::unistd::chdir(cwd);
    let prog = process::find_program(process)?;
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(process.user().umask().unwrap_or(0o022) as libc::mode_t) };
    // As runc: without no_new_privs, installing a filter needs CAP_SYS_ADMIN, so it
    // goes on before the capabilities are dropped; with it, just before execve.
    let nnp = process.no_new_privileges() == Some(true);
    if let (Some(f), false) = (a.seccomp, nnp) {
        seccomp::install(f)?;
    }
    process::set_user_and_caps(process)?;
    if chdir_early.is_err() {
        nix::unistd::chdir(cwd).ctx(|| format!("process.cwd: chdir {}", cwd.display()))?;
    }
    process::set_no_new_privs(process)?;
    process::reset_signals();
    process::cloexec_from_3(&[]);
    sync::send(&a.sync, sync::READY, &[])?;
    ready.set(true);
    // Block until `start` opens the FIFO for reading.
    let fifo = nix::fcntl::openat(
        &a.state_dir,
        "exec.fifo",
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| "open exec fifo".into())?;
    let mut fifo = File::from(fifo);
    fifo.write_all(b"0").ctx(|| "write exec fifo".into())?;
    drop(fifo);
    if let Some(h) = hooks.and_then(|h| h.start_container().as_ref()) {
        hooks::run(h, "startContainer", &state)?;
    }
    if let (Some(f), true) = (a.seccomp, nnp) {
        seccomp::install(f)?;
    }
    Err(process::exec(&prog, process))
}

/// Whether `f` is the namespace of type `name` we are in.
fn same_namespace(f: &File, name: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        f.metadata(),
        std::fs::metadata(format!("/proc/self/ns/{name}")),
    ) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}
