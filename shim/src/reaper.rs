//! SIGCHLD handling: the shim is a subreaper, so container processes (re-parented to it
//! when the runtime exits) and the runtime processes it runs are all reaped here, and each
//! exit is handed to the service (which matches it to a task, an exec or a runtime command).

use std::sync::Arc;

use anyhow::{Context, Result};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::service::Service;

/// SIGCHLD registered before any child exists, so no exit is missed.
pub(crate) struct Signals(signal_hook::iterator::Signals);

impl Signals {
    pub(crate) fn install() -> Result<Signals> {
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGCHLD])
            .map(Signals)
            .context("register SIGCHLD")
    }

    /// The reaper thread: on every SIGCHLD, reap all exited children.
    pub(crate) fn spawn_reaper(mut self, service: Arc<Service>) -> Result<()> {
        crate::thread::spawn("reaper", move || loop {
            for _ in self.0.wait() {
                reap_all(&service);
            }
        })
        .context("spawn the reaper thread")?;
        Ok(())
    }
}

fn reap_all(service: &Arc<Service>) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => service.on_exit(pid.as_raw(), code),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                service.on_exit(pid.as_raw(), 128 + sig as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::warn!(error = %e, "waitpid");
                return;
            }
        }
    }
}
