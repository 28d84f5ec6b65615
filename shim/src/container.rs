//! A container of the pod: its bundle, rootfs, cgroup, init process and exec processes,
//! the runtime command that creates it, and the changes of its state.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::EnumOrUnknown;

use crate::error::{Error, Result};
use crate::events::now;
use crate::mount;
use crate::process::{self, ProcStatus, Process, Terminal};
use crate::runtime::{self, ChildWaiter, Runtime};
use crate::stats::Cgroup;
use crate::stdio::StdioPaths;

/// A container's `create` request, decoded.
pub(crate) struct CreateRequest<'a> {
    pub(crate) id: &'a str,
    pub(crate) bundle: PathBuf,
    pub(crate) rootfs: &'a [api::Mount],
    pub(crate) stdio: StdioPaths,
}

pub(crate) struct Container {
    pub(crate) bundle: PathBuf,
    rootfs_mounted: bool,
    pub(crate) init: Process,
    pub(crate) execs: HashMap<String, Process>,
    pub(crate) cgroup: Option<Cgroup>,
    /// Whether the container has a PID namespace of its own (else its processes outlive
    /// init and are killed when it exits).
    pub(crate) own_pid_ns: bool,
}

impl Container {
    pub(crate) fn new(
        bundle: PathBuf,
        rootfs_mounted: bool,
        init: Process,
        cgroup: Option<Cgroup>,
        own_pid_ns: bool,
    ) -> Container {
        Container {
            bundle,
            rootfs_mounted,
            init,
            execs: HashMap::new(),
            cgroup,
            own_pid_ns,
        }
    }

    /// The init (empty `exec_id`) or an exec.
    pub(crate) fn proc(&self, exec_id: &str) -> Option<&Process> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id)
        }
    }

    pub(crate) fn proc_mut(&mut self, exec_id: &str) -> Option<&mut Process> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }

    /// The init or an exec of container `id`, else NotFound.
    pub(crate) fn process(&self, id: &str, exec_id: &str) -> Result<&Process> {
        self.proc(exec_id)
            .ok_or_else(|| Error::not_found(id, exec_id))
    }

    /// State of the init or an exec of this container (`id`).
    pub(crate) fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        let p = self.process(id, exec_id)?;
        Ok(api::StateResponse {
            id: if exec_id.is_empty() { id } else { exec_id }.to_string(),
            bundle: self.bundle.to_string_lossy().into_owned(),
            pid: p.pid as u32,
            status: EnumOrUnknown::new(p.status.proto()),
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            exit_status: p.exit_status,
            exited_at: p.exited_at_field(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        })
    }

    /// Marks the init as being started; only a created container starts.
    pub(crate) fn begin_start(&mut self, id: &str) -> Result<()> {
        if self.init.status != ProcStatus::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is {:?}, not created",
                self.init.status
            )));
        }
        self.init.starting = true;
        Ok(())
    }

    /// The init runs now (unless it exited meanwhile); returns its pid.
    pub(crate) fn started(&mut self) -> i32 {
        if self.init.status == ProcStatus::Created {
            self.init.status = ProcStatus::Running;
        }
        self.init.pid
    }

    /// Adds a created exec; its spec is the runtime-spec Process (JSON).
    pub(crate) fn add_exec(
        &mut self,
        exec_id: &str,
        paths: StdioPaths,
        spec: Vec<u8>,
    ) -> Result<()> {
        if self.execs.contains_key(exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {exec_id}: already exists"
            )));
        }
        let mut p = Process::new(paths);
        p.spec = spec;
        self.execs.insert(exec_id.to_string(), p);
        Ok(())
    }

    /// Marks an exec as being started (the container must run); returns the bundle, the
    /// exec's spec and its stdio.
    pub(crate) fn begin_exec_start(
        &mut self,
        id: &str,
        exec_id: &str,
    ) -> Result<(PathBuf, Vec<u8>, StdioPaths)> {
        if self.init.status != ProcStatus::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let bundle = self.bundle.clone();
        let p = self
            .execs
            .get_mut(exec_id)
            .ok_or_else(|| Error::not_found(id, exec_id))?;
        if p.status != ProcStatus::Created || p.starting {
            return Err(Error::FailedPrecondition(format!(
                "exec {exec_id} was started already"
            )));
        }
        p.starting = true;
        Ok((bundle, p.spec.clone(), p.paths.clone()))
    }

    /// Removes an exec that is not running; returns its exit.
    pub(crate) fn remove_exec(&mut self, id: &str, exec_id: &str) -> Result<api::DeleteResponse> {
        let p = self
            .execs
            .get(exec_id)
            .ok_or_else(|| Error::not_found(id, exec_id))?;
        if p.is_live() || p.starting {
            return Err(Error::FailedPrecondition(format!(
                "exec {exec_id} of container {id} is still running"
            )));
        }
        let p = self
            .execs
            .remove(exec_id)
            .ok_or_else(|| Error::not_found(id, exec_id))?;
        Ok(p.delete_response())
    }

    /// The pids of the started execs, with their exec IDs.
    pub(crate) fn exec_pids(&self) -> HashMap<u32, String> {
        self.execs
            .iter()
            .filter(|(_, p)| p.pid > 0)
            .map(|(exec_id, p)| (p.pid as u32, exec_id.clone()))
            .collect()
    }

    pub(crate) fn paused(&mut self) {
        if self.init.status == ProcStatus::Running {
            self.init.status = ProcStatus::Paused;
        }
    }

    pub(crate) fn resumed(&mut self) {
        if self.init.status == ProcStatus::Paused {
            self.init.status = ProcStatus::Running;
        }
    }

    /// After the runtime deleted it: the rootfs mount and our files in the bundle go.
    pub(crate) fn clean_up(&self, id: &str) {
        if self.rootfs_mounted {
            if let Err(e) = mount::unmount_all(&self.bundle.join("rootfs")) {
                tracing::warn!(id, error = %format!("{e:#}"), "unmount rootfs");
            }
        }
        let _ = fs::remove_file(self.bundle.join("init.pid"));
        let _ = fs::remove_file(runtime::log_path(&self.bundle));
    }

    /// The init's exit status and time as Delete reports them: a task deleted without
    /// having run (created only) reports the exit it now has.
    pub(crate) fn final_exit(&self) -> (u32, Timestamp) {
        let exited_at = self.init.exited_at.clone().unwrap_or_else(now);
        let exit_status = if self.init.status == ProcStatus::Stopped {
            self.init.exit_status
        } else {
            128 + libc::SIGKILL as u32
        };
        (exit_status, exited_at)
    }
}

/// Whether the bundle's spec gives the container a new PID namespace (a `pid` namespace
/// without a path to join).
pub(crate) fn own_pid_ns(bundle: &Path) -> bool {
    read_spec(bundle)
        .as_ref()
        .and_then(|s| s.pointer("/linux/namespaces"))
        .and_then(|n| n.as_array())
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.get("type").and_then(|t| t.as_str()) == Some("pid")
                    && n.get("path")
                        .and_then(|p| p.as_str())
                        .unwrap_or("")
                        .is_empty()
            })
        })
}

fn read_spec(bundle: &Path) -> Option<serde_json::Value> {
    let text = fs::read(bundle.join("config.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The container's cgroup, watched for OOM kills; `None` (logged) when it has none.
pub(crate) fn open_cgroup(
    bundle: &Path,
    id: &str,
    on_oom: impl Fn() + Send + 'static,
) -> Option<Cgroup> {
    match Cgroup::from_bundle(bundle, id) {
        Ok(cg) => {
            if let Err(e) = cg.watch_oom(on_oom) {
                tracing::warn!(id, error = %format!("{e:#}"), "no OOM watch");
            }
            Some(cg)
        }
        Err(e) => {
            tracing::warn!(id, error = %format!("{e:#}"), "no cgroup");
            None
        }
    }
}

/// `nodus-runtime create`; returns the init pid and the pty master, if any.
pub(crate) fn spawn_init(
    runtime: &Runtime,
    waiter: &dyn ChildWaiter,
    id: &str,
    bundle: &Path,
    paths: &StdioPaths,
) -> Result<(i32, Option<Terminal>)> {
    let pid_file = bundle.join("init.pid");
    let bundle_s = bundle.to_string_lossy().into_owned();
    let pid_s = pid_file.to_string_lossy().into_owned();
    let mut args = vec!["create", "--bundle", &bundle_s, "--pid-file", &pid_s];
    let console = process::console_socket(paths)?;
    let console_path = console
        .as_ref()
        .map(|c| c.path().to_string_lossy().into_owned());
    if let Some(p) = &console_path {
        args.extend(["--console-socket", p.as_str()]);
    }
    args.push(id);
    let io = process::process_io(paths)?;
    runtime.run(waiter, Some(&runtime::log_path(bundle)), &args, io)?;
    let pid = process::read_pid(&pid_file)?;
    let master = process::attach_console(console, paths)?;
    Ok((pid, master))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(dir: &Path) -> Container {
        Container::new(
            dir.to_path_buf(),
            false,
            Process::new(StdioPaths::default()),
            None,
            false,
        )
    }

    #[test]
    fn own_pid_ns_means_a_new_pid_namespace() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!own_pid_ns(dir.path()), "no config.json");
        let spec = |ns: &str| format!(r#"{{"linux":{{"namespaces":[{ns}]}}}}"#);
        std::fs::write(dir.path().join("config.json"), spec(r#"{"type":"pid"}"#)).unwrap();
        assert!(own_pid_ns(dir.path()));
        std::fs::write(
            dir.path().join("config.json"),
            spec(r#"{"type":"pid","path":"/proc/1/ns/pid"}"#),
        )
        .unwrap();
        assert!(!own_pid_ns(dir.path()), "joins the sandbox's");
        std::fs::write(
            dir.path().join("config.json"),
            spec(r#"{"type":"network"}"#),
        )
        .unwrap();
        assert!(!own_pid_ns(dir.path()));
    }

    #[test]
    fn only_a_created_container_starts() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = container(dir.path());
        c.begin_start("c1").unwrap();
        assert!(c.init.starting);
        c.init.pid = 42;
        assert_eq!(c.started(), 42);
        assert_eq!(c.init.status, ProcStatus::Running);
        assert!(matches!(
            c.begin_start("c1"),
            Err(Error::FailedPrecondition(_))
        ));
    }

    #[test]
    fn execs_are_added_started_once_and_removed_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = container(dir.path());
        c.add_exec("e1", StdioPaths::default(), b"{}".to_vec())
            .unwrap();
        assert!(matches!(
            c.add_exec("e1", StdioPaths::default(), b"{}".to_vec()),
            Err(Error::AlreadyExists(_))
        ));
        assert!(
            matches!(
                c.begin_exec_start("c1", "e1"),
                Err(Error::FailedPrecondition(_))
            ),
            "the container is not running"
        );
        c.init.status = ProcStatus::Running;
        assert!(matches!(
            c.begin_exec_start("c1", "nope"),
            Err(Error::NotFound(_))
        ));
        let (_, spec, _) = c.begin_exec_start("c1", "e1").unwrap();
        assert_eq!(spec, b"{}");
        assert!(matches!(
            c.begin_exec_start("c1", "e1"),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(
            matches!(c.remove_exec("c1", "e1"), Err(Error::FailedPrecondition(_))),
            "still starting"
        );
        let p = c.execs.get_mut("e1").unwrap();
        p.starting = false;
        p.pid = 7;
        p.set_exited(3, Timestamp::default());
        assert_eq!(c.exec_pids().get(&7).map(String::as_str), Some("e1"));
        assert_eq!(c.remove_exec("c1", "e1").unwrap().exit_status, 3);
        assert!(c.execs.is_empty());
    }

    #[test]
    fn a_container_deleted_before_it_ran_reports_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = container(dir.path());
        assert_eq!(c.final_exit().0, 137);
        c.init.set_exited(2, Timestamp::default());
        assert_eq!(c.final_exit().0, 2);
    }
}
