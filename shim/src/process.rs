//! A process of a container, its init or one of its execs: status, pid, stdio, exit, and
//! the runtime command that spawns an exec.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;

use crate::error::{Error, Result};
use crate::runtime::{self, ChildWaiter, Io, Runtime};
use crate::stdio::{self, ConsoleSocket, Done, StdioPaths};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

impl ProcStatus {
    pub(crate) fn proto(self) -> Status {
        match self {
            ProcStatus::Created => Status::CREATED,
            ProcStatus::Running => Status::RUNNING,
            ProcStatus::Paused => Status::PAUSED,
            ProcStatus::Stopped => Status::STOPPED,
        }
    }
}

/// A pty master and the end of its output copy.
pub(crate) type Terminal = (Arc<OwnedFd>, Option<Arc<Done>>);

/// A container's init or one of its exec processes.
pub(crate) struct Process {
    pub(crate) pid: i32,
    pub(crate) status: ProcStatus,
    pub(crate) exit_status: u32,
    pub(crate) exited_at: Option<Timestamp>,
    pub(crate) paths: StdioPaths,
    pub(crate) console: Option<Arc<OwnedFd>>,
    /// Set when a terminal's output is all copied out; the exit waits for it.
    pub(crate) output_done: Option<Arc<Done>>,
    /// Between the runtime's start/exec and our TaskStart/TaskExecStarted: an exit seen
    /// then waits in `pending_exit`, so containerd always sees start before exit.
    pub(crate) starting: bool,
    pub(crate) pending_exit: Option<i32>,
    /// The exit waits for the terminal output (see `output_done`).
    pub(crate) draining: bool,
    /// An exec's runtime-spec Process (JSON).
    pub(crate) spec: Vec<u8>,
}

impl Process {
    pub(crate) fn new(paths: StdioPaths) -> Process {
        Process {
            pid: 0,
            status: ProcStatus::Created,
            exit_status: 0,
            exited_at: None,
            paths,
            console: None,
            output_done: None,
            starting: false,
            pending_exit: None,
            draining: false,
            spec: Vec::new(),
        }
    }

    /// Keeps the pty master (for ResizePty) and the end of its output copy (for the exit).
    pub(crate) fn set_terminal(&mut self, terminal: Option<Terminal>) {
        if let Some((master, done)) = terminal {
            self.console = Some(master);
            self.output_done = done;
        }
    }

    /// Running or paused: it has not exited.
    pub(crate) fn is_live(&self) -> bool {
        matches!(self.status, ProcStatus::Running | ProcStatus::Paused)
    }

    pub(crate) fn set_exited(&mut self, exit_status: u32, at: Timestamp) {
        self.status = ProcStatus::Stopped;
        self.exit_status = exit_status;
        self.exited_at = Some(at);
    }

    pub(crate) fn exited_at_field(&self) -> MessageField<Timestamp> {
        self.exited_at
            .clone()
            .map(MessageField::some)
            .unwrap_or_default()
    }

    /// Its exit, once it is stopped.
    pub(crate) fn wait_response(&self) -> Option<api::WaitResponse> {
        (self.status == ProcStatus::Stopped).then(|| api::WaitResponse {
            exit_status: self.exit_status,
            exited_at: self.exited_at_field(),
            ..Default::default()
        })
    }

    pub(crate) fn delete_response(&self) -> api::DeleteResponse {
        api::DeleteResponse {
            pid: self.pid as u32,
            exit_status: self.exit_status,
            exited_at: self.exited_at_field(),
            ..Default::default()
        }
    }
}

/// The console socket a terminal's pty master comes back through, if it has a terminal.
pub(crate) fn console_socket(paths: &StdioPaths) -> Result<Option<ConsoleSocket>> {
    Ok(if paths.terminal {
        Some(ConsoleSocket::new()?)
    } else {
        None
    })
}

/// The standard streams of the runtime command that starts the process.
pub(crate) fn process_io(paths: &StdioPaths) -> Result<Io> {
    if paths.terminal {
        // Nothing of ours for the process to inherit by mistake: errors are in the log.
        return Ok(Io {
            stdin: Some(Stdio::null()),
            stdout: Some(Stdio::null()),
            stderr: Some(Stdio::null()),
            input: None,
        });
    }
    let io = paths.open_direct()?;
    Ok(Io {
        stdin: Some(io.stdin),
        stdout: Some(io.stdout),
        stderr: Some(io.stderr),
        input: None,
    })
}

/// Receives the pty master the runtime sent and starts copying its output.
pub(crate) fn attach_console(
    console: Option<ConsoleSocket>,
    paths: &StdioPaths,
) -> Result<Option<Terminal>> {
    let Some(console) = console else {
        return Ok(None);
    };
    let master = Arc::new(console.receive()?);
    let done = stdio::start_console_copy(master.clone(), paths)?;
    Ok(Some((master, done)))
}

pub(crate) fn read_pid(path: &Path) -> Result<i32> {
    let text = fs::read_to_string(path)
        .map_err(|e| Error::Internal(anyhow::anyhow!("read pid file {}: {e}", path.display())))?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            Error::Internal(anyhow::anyhow!(
                "pid file {} holds {:?}, not a pid",
                path.display(),
                text.trim()
            ))
        })
}

/// `nodus-runtime exec --detach` of the exec `exec_id` in container `id`; returns its pid
/// and the pty master, if any.
pub(crate) fn spawn_exec(
    runtime: &Runtime,
    waiter: &dyn ChildWaiter,
    id: &str,
    exec_id: &str,
    bundle: &Path,
    spec: &[u8],
    paths: &StdioPaths,
) -> Result<(i32, Option<Terminal>)> {
    let spec_file = bundle.join(format!("exec-{exec_id}.json"));
    let pid_file = bundle.join(format!("exec-{exec_id}.pid"));
    fs::write(&spec_file, spec)
        .map_err(|e| Error::Internal(anyhow::anyhow!("write {}: {e}", spec_file.display())))?;
    let spec_s = spec_file.to_string_lossy().into_owned();
    let pid_s = pid_file.to_string_lossy().into_owned();
    let console = console_socket(paths)?;
    let console_path = console
        .as_ref()
        .map(|c| c.path().to_string_lossy().into_owned());
    let mut args = vec![
        "exec",
        "--process",
        &spec_s,
        "--detach",
        "--pid-file",
        &pid_s,
    ];
    if let Some(p) = &console_path {
        args.extend(["--console-socket", p.as_str()]);
    }
    args.push(id);
    let result = process_io(paths).and_then(|io| {
        runtime
            .run(waiter, Some(&runtime::log_path(bundle)), &args, io)
            .map_err(Error::Internal)
    });
    let _ = fs::remove_file(&spec_file);
    result?;
    let pid = read_pid(&pid_file);
    let _ = fs::remove_file(&pid_file);
    let master = attach_console(console, paths)?;
    Ok((pid?, master))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_must_hold_a_positive_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.pid");
        std::fs::write(&path, "1234\n").unwrap();
        assert_eq!(read_pid(&path).unwrap(), 1234);
        for bad in ["", "0", "-5", "abc"] {
            std::fs::write(&path, bad).unwrap();
            assert!(
                matches!(read_pid(&path), Err(Error::Internal(_))),
                "{bad:?}"
            );
        }
        assert!(read_pid(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn wait_answers_only_once_stopped() {
        let mut p = Process::new(StdioPaths::default());
        assert!(p.wait_response().is_none());
        p.status = ProcStatus::Running;
        assert!(p.is_live());
        assert!(p.wait_response().is_none());
        p.set_exited(137, Timestamp::default());
        assert!(!p.is_live());
        assert_eq!(p.wait_response().unwrap().exit_status, 137);
        assert_eq!(p.delete_response().exit_status, 137);
    }
}
