//! Turning the calling process into the container process: rlimits, user and groups,
//! capabilities, no_new_privs, terminal, and finally execve.

use std::collections::HashSet;
use std::ffi::CString;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use caps::{CapSet, Capability as Cap};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use oci_spec::runtime::{Capabilities, PosixRlimitType, Process};

use crate::error::{Context, Error, Result};

/// PATH used to look up the program when the process env has none (runc's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Apply `process.rlimits`.
pub fn set_rlimits(p: &Process) -> Result<()> {
    for (i, r) in p.rlimits().as_deref().unwrap_or(&[]).iter().enumerate() {
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: setrlimit reads a valid struct.
        if unsafe { libc::setrlimit(rlimit_resource(r.typ()), &lim) } != 0 {
            return Err(std::io::Error::last_os_error())
                .ctx(|| format!("process.rlimits[{i}]: setrlimit {:?}", r.typ()));
        }
    }
    Ok(())
}

fn to_caps(set: &Option<Capabilities>) -> HashSet<Cap> {
    set.as_ref()
        .map(|s| {
            s.iter()
                .filter_map(|c| Cap::from_str(&format!("CAP_{c}")).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn caps_err(e: caps::errors::CapsError, what: &str) -> Error {
    Error::Other(format!("{what}: {e}"))
}

/// Switch to `process.user` and set the five capability sets.
pub fn set_user_and_caps(p: &Process) -> Result<()> {
    let user = p.user();
    let caps = p.capabilities().as_ref();
    if let Some(c) = caps {
        let bounding = to_caps(c.bounding());
        for cap in caps::runtime::thread_all_supported() {
            if !bounding.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(|e| caps_err(e, "process.capabilities.bounding"))?;
            }
        }
        // Keep the permitted set across setuid; trimmed to what was asked below.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    }
    let gids: Vec<nix::unistd::Gid> = user
        .additional_gids()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids).ctx(|| "process.user.additionalGids: setgroups".into())?;
    let gid = nix::unistd::Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid)
        .ctx(|| format!("process.user.gid: setresgid {}", user.gid()))?;
    let uid = nix::unistd::Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid)
        .ctx(|| format!("process.user.uid: setresuid {}", user.uid()))?;
    if let Some(c) = caps {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
        let permitted = to_caps(c.permitted());
        let effective = to_caps(c.effective());
        let inheritable = to_caps(c.inheritable());
        // Order matters: effective must stay within permitted at every step, and
        // inheritable may only grow within the (still full) permitted set.
        caps::set(None, CapSet::Effective, &effective)
            .map_err(|e| caps_err(e, "process.capabilities.effective"))?;
        caps::set(None, CapSet::Inheritable, &inheritable)
            .map_err(|e| caps_err(e, "process.capabilities.inheritable"))?;
        caps::set(None, CapSet::Permitted, &permitted)
            .map_err(|e| caps_err(e, "process.capabilities.permitted"))?;
        caps::clear(None, CapSet::Ambient)
            .map_err(|e| caps_err(e, "process.capabilities.ambient"))?;
        for cap in to_caps(c.ambient()) {
            // Like runc: an ambient capability missing from permitted or inheritable
            // cannot be raised; warn and go on.
            if let Err(e) = caps::raise(None, CapSet::Ambient, cap) {
                tracing::debug!("process.capabilities.ambient: {cap}: {e}");
            }
        }
    }
    Ok(())
}

/// Set no_new_privs when asked.
pub fn set_no_new_privs(p: &Process) -> Result<()> {
    if p.no_new_privileges() == Some(true) {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| "process.noNewPrivileges".into());
        }
    }
    Ok(())
}

/// Find `args[0]` in the process PATH (inside the current root), as execvp would.
pub fn find_program(p: &Process) -> Result<PathBuf> {
    let arg0 = &p.args().as_deref().unwrap_or(&[])[0];
    let is_exec = |c: &Path| {
        let cs = CString::new(c.as_os_str().as_bytes()).unwrap_or_default();
        // SAFETY: access() on a valid C string.
        c.is_file() && unsafe { libc::access(cs.as_ptr(), libc::X_OK) } == 0
    };
    if arg0.contains('/') {
        let c = p.cwd().join(arg0);
        if is_exec(&c) {
            return Ok(PathBuf::from(arg0));
        }
        return Err(Error::Other(format!(
            "exec: {arg0:?}: no such executable file in the container"
        )));
    }
    let path = p
        .env()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let c = Path::new(dir).join(arg0);
        if is_exec(&c) {
            return Ok(c);
        }
    }
    Err(Error::Other(format!(
        "exec: {arg0:?}: executable file not found in $PATH"
    )))
}

/// Reset what the runtime changed in its own process and must not leak into the
/// container: Rust ignores SIGPIPE, and the signal mask may be set.
pub fn reset_signals() {
    // SAFETY: plain libc signal calls on valid arguments.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Mark every fd >= 3 close-on-exec except `keep`.
pub fn cloexec_from_3(keep: &[RawFd]) {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd >= 3 && !keep.contains(&fd) {
            // SAFETY: fcntl on an fd number; harmless when it is already closed.
            unsafe {
                let fl = libc::fcntl(fd, libc::F_GETFD);
                if fl >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, fl | libc::FD_CLOEXEC);
                }
            }
        }
    }
}

/// execve `prog` with the process args and env; returns only on failure.
pub fn exec(prog: &Path, p: &Process) -> Error {
    let cs = |s: &[u8]| CString::new(s).unwrap_or_default();
    let prog_c = cs(prog.as_os_str().as_bytes());
    let args: Vec<CString> = p
        .args()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .map(|a| cs(a.as_bytes()))
        .collect();
    let env: Vec<CString> = p
        .env()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .map(|a| cs(a.as_bytes()))
        .collect();
    match nix::unistd::execve(&prog_c, &args, &env) {
        Err(e) => Error::Other(format!("exec {}: {e}", prog.display())),
        Ok(never) => match never {},
    }
}

/// Open a new pty in the current mount namespace (the container's /dev/ptmx), send
/// the master over `socket` (SCM_RIGHTS, as runc's `--console-socket`) and make the
/// slave our controlling terminal and stdio. Returns the slave's path.
pub fn setup_console(socket: RawFd, size: Option<(u16, u16)>) -> Result<PathBuf> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .ctx(|| "open /dev/ptmx".into())?;
    nix::pty::grantpt(&master).ctx(|| "grantpt".into())?;
    nix::pty::unlockpt(&master).ctx(|| "unlockpt".into())?;
    let name = nix::pty::ptsname_r(&master).ctx(|| "ptsname".into())?;
    if let Some((rows, cols)) = size {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a valid winsize.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("open {name}"))?;
    let fds = [master.as_raw_fd()];
    sendmsg::<UnixAddr>(
        socket,
        &[IoSlice::new(name.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .ctx(|| "send the pty master over --console-socket".into())?;
    drop(master);
    // SAFETY: setsid/ioctl/dup2 on fds we own.
    unsafe {
        libc::setsid();
        if libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) != 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| "TIOCSCTTY".into());
        }
        for fd in 0..3 {
            libc::dup2(slave.as_raw_fd(), fd);
        }
    }
    Ok(PathBuf::from(name))
}

/// Connect to the `--console-socket` path.
pub fn connect_console(path: &Path) -> Result<OwnedFd> {
    let s = std::os::unix::net::UnixStream::connect(path)
        .ctx(|| format!("connect to console socket {}", path.display()))?;
    let fd = s.as_raw_fd();
    std::mem::forget(s);
    // SAFETY: we took ownership of the stream's fd above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
