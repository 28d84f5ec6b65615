//! The container and exec operations behind the task calls. Each looks at the state,
//! runs its runtime command with the state unlocked (the command's exit comes back through
//! the reaper, which needs the lock), then records the outcome and publishes the event.

use std::sync::Arc;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;

use super::Service;
use crate::container::{self, Container, CreateRequest};
use crate::error::{Error, Result};
use crate::events::{now, Event};
use crate::mount;
use crate::process::{self, ProcStatus, Process};
use crate::runtime::{self, Io};
use crate::stdio::StdioPaths;

impl Service {
    /// Runs a runtime command for container `id` (its log under the bundle).
    fn run(&self, id: &str, args: &[&str], io: Io) -> Result<Vec<u8>> {
        let bundle = self.lock().container(id)?.bundle.clone();
        Ok(self
            .runtime
            .run(self, Some(&runtime::log_path(&bundle)), args, io)?)
    }

    /// Creates container `req.id` (mounting its rootfs); returns the init pid.
    pub(crate) fn create(self: &Arc<Self>, req: CreateRequest) -> Result<u32> {
        let id = req.id;
        if self.lock().containers.contains_key(id) {
            return Err(Error::AlreadyExists(format!(
                "container {id}: already exists"
            )));
        }
        let _creating = self.creating()?;
        let rootfs = req.bundle.join("rootfs");
        mount::mount_rootfs(req.rootfs, &rootfs)?;
        let result =
            container::spawn_init(&self.runtime, self.as_ref(), id, &req.bundle, &req.stdio);
        let (pid, terminal) = match result {
            Ok(v) => v,
            Err(e) => {
                if !req.rootfs.is_empty() {
                    let _ = mount::unmount_all(&rootfs);
                }
                return Err(e);
            }
        };
        let own_pid_ns = container::own_pid_ns(&req.bundle);
        let this = Arc::downgrade(self);
        let oom_id = id.to_string();
        let cgroup = container::open_cgroup(&req.bundle, id, move || {
            if let Some(this) = this.upgrade() {
                tracing::info!(id = %oom_id, "OOM");
                this.publisher.publish(Event::Oom(ev::TaskOOM {
                    container_id: oom_id.clone(),
                    ..Default::default()
                }));
            }
        });
        let mut init = Process::new(req.stdio.clone());
        init.pid = pid;
        init.set_terminal(terminal);
        let mut state = self.lock();
        state.containers.insert(
            id.to_string(),
            Container::new(
                req.bundle.clone(),
                !req.rootfs.is_empty(),
                init,
                cgroup,
                own_pid_ns,
            ),
        );
        self.publisher.publish(Event::Create(ev::TaskCreate {
            container_id: id.to_string(),
            bundle: req.bundle.to_string_lossy().into_owned(),
            rootfs: req.rootfs.to_vec(),
            io: MessageField::some(ev::TaskIO {
                stdin: req.stdio.stdin.clone(),
                stdout: req.stdio.stdout.clone(),
                stderr: req.stdio.stderr.clone(),
                terminal: req.stdio.terminal,
                ..Default::default()
            }),
            pid: pid as u32,
            ..Default::default()
        }));
        self.register_pid(&mut state, id, "", pid);
        Ok(pid as u32)
    }

    /// Starts the init (empty `exec_id`) or an exec; returns its pid.
    pub(crate) fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
        if exec_id.is_empty() {
            self.start_init(id)
        } else {
            self.start_exec(id, exec_id)
        }
    }

    fn start_init(self: &Arc<Self>, id: &str) -> Result<u32> {
        self.lock().container_mut(id)?.begin_start(id)?;
        let result = self.run(id, &["start", id], Io::default());
        let mut state = self.lock();
        if let Err(e) = result {
            self.finish_starting(&mut state, id, "");
            return Err(e);
        }
        let pid = state.container_mut(id)?.started();
        self.publisher.publish(Event::Start(ev::TaskStart {
            container_id: id.to_string(),
            pid: pid as u32,
            ..Default::default()
        }));
        self.finish_starting(&mut state, id, "");
        Ok(pid as u32)
    }

    fn start_exec(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
        let (bundle, spec, paths) = self
            .lock()
            .container_mut(id)?
            .begin_exec_start(id, exec_id)?;
        let result = process::spawn_exec(
            &self.runtime,
            self.as_ref(),
            id,
            exec_id,
            &bundle,
            &spec,
            &paths,
        );
        let mut state = self.lock();
        let (pid, terminal) = match result {
            Ok(v) => v,
            Err(e) => {
                if let Some(p) = state
                    .containers
                    .get_mut(id)
                    .and_then(|c| c.execs.get_mut(exec_id))
                {
                    p.starting = false;
                    p.set_exited(255, now());
                }
                drop(state);
                self.exited.notify_all();
                return Err(e);
            }
        };
        match state
            .containers
            .get_mut(id)
            .and_then(|c| c.execs.get_mut(exec_id))
        {
            Some(p) => {
                p.pid = pid;
                p.status = ProcStatus::Running;
                p.set_terminal(terminal);
            }
            None => return Err(Error::not_found(id, exec_id)),
        }
        self.publisher
            .publish(Event::ExecStarted(ev::TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid: pid as u32,
                ..Default::default()
            }));
        self.register_pid(&mut state, id, exec_id, pid);
        self.finish_starting(&mut state, id, exec_id);
        Ok(pid as u32)
    }

    /// Deletes an exited exec, or the container once its init is not running.
    pub(crate) fn delete(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<api::DeleteResponse> {
        if !exec_id.is_empty() {
            return self.lock().container_mut(id)?.remove_exec(id, exec_id);
        }
        let (bundle, init_live) = {
            let state = self.lock();
            let c = state.container(id)?;
            (c.bundle.clone(), c.init.is_live())
        };
        if init_live {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is still running: kill it first"
            )));
        }
        self.runtime.run(
            self.as_ref(),
            Some(&runtime::log_path(&bundle)),
            &["delete", "--force", id],
            Io::default(),
        )?;
        let mut state = self.lock();
        let Some(c) = state.containers.remove(id) else {
            return Err(Error::not_found(id, ""));
        };
        state.pids.retain(|_, (cid, _)| cid != id);
        Service::touch(&mut state);
        c.clean_up(id);
        let (exit_status, exited_at) = c.final_exit();
        self.publisher.publish(Event::Delete(ev::TaskDelete {
            container_id: id.to_string(),
            pid: c.init.pid as u32,
            exit_status,
            exited_at: MessageField::some(exited_at.clone()),
            id: id.to_string(),
            ..Default::default()
        }));
        drop(state);
        self.exited.notify_all();
        Ok(api::DeleteResponse {
            pid: c.init.pid as u32,
            exit_status,
            exited_at: MessageField::some(exited_at),
            ..Default::default()
        })
    }

    /// Sends `signal` to an exec, the init, or (`all`) every process of the container.
    pub(crate) fn kill(&self, id: &str, exec_id: &str, signal: i32, all: bool) -> Result<()> {
        let finished = || Error::NotFound(format!("container {id}: process already finished"));
        let (pid, st) = {
            let state = self.lock();
            let p = state.container(id)?.process(id, exec_id)?;
            (p.pid, p.status)
        };
        if !exec_id.is_empty() {
            if st != ProcStatus::Running && st != ProcStatus::Paused {
                return Err(Error::NotFound(format!(
                    "exec {exec_id}: process already finished"
                )));
            }
            // SAFETY: kill(2) with a pid we reaped nothing for yet (still ours).
            if unsafe { libc::kill(pid, signal) } < 0 {
                let e = std::io::Error::last_os_error();
                return Err(Error::NotFound(format!("kill exec: {e}")));
            }
            return Ok(());
        }
        if st == ProcStatus::Stopped && !all {
            return Err(finished());
        }
        if !all {
            // The init is our child (re-parented to us, not yet reaped while it is not
            // Stopped), so signal it directly: a runtime process less on every stop.
            let live = self
                .lock()
                .containers
                .get(id)
                .map(|c| (c.init.pid, c.init.status))
                .filter(|(pid, st)| *pid > 0 && *st != ProcStatus::Stopped);
            let Some((pid, _)) = live else {
                return Err(finished());
            };
            // SAFETY: kill(2) with plain integers.
            if unsafe { libc::kill(pid, signal) } < 0 {
                let e = std::io::Error::last_os_error();
                return Err(Error::NotFound(format!("container {id}: kill {pid}: {e}")));
            }
            return Ok(());
        }
        // Every process of the container. Not frozen: signal what its cgroup lists, here.
        let cgroup = self
            .lock()
            .containers
            .get(id)
            .filter(|c| c.init.status != ProcStatus::Paused)
            .and_then(|c| c.cgroup.clone());
        if let Some(cg) = cgroup {
            let procs = cg.procs();
            if procs.is_empty() && st == ProcStatus::Stopped {
                return Err(finished());
            }
            if !procs.is_empty() {
                for p in procs {
                    // SAFETY: kill(2) with plain integers, on processes of this container.
                    unsafe { libc::kill(p, signal) };
                }
                return Ok(());
            }
            // A live task whose cgroup lists nothing: ask the runtime rather than guess.
        }
        // Frozen (SIGKILL needs a thaw) or no cgroup known: the runtime handles it.
        let sig = signal.to_string();
        match self.run(id, &["kill", "--all", id, &sig], Io::default()) {
            Ok(_) => Ok(()),
            Err(e) => {
                let stopped = self
                    .lock()
                    .containers
                    .get(id)
                    .is_none_or(|c| c.init.status == ProcStatus::Stopped);
                Err(if stopped { finished() } else { e })
            }
        }
    }

    /// Adds exec `exec_id` (created, not started) to container `id`.
    pub(crate) fn add_exec(
        &self,
        id: &str,
        exec_id: &str,
        paths: StdioPaths,
        spec: Vec<u8>,
    ) -> Result<()> {
        self.lock()
            .container_mut(id)?
            .add_exec(exec_id, paths, spec)?;
        self.publisher.publish(Event::ExecAdded(ev::TaskExecAdded {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        }));
        Ok(())
    }

    /// The container's processes as the runtime lists them, each with its exec ID if it is
    /// an exec.
    pub(crate) fn pids(&self, id: &str) -> Result<Vec<(u32, Option<String>)>> {
        let out = self.run(id, &["ps", "--format", "json", id], Io::default())?;
        let pids: Vec<u32> = serde_json::from_slice(&out).map_err(|e| {
            Error::Internal(anyhow::anyhow!(
                "runtime ps printed {:?}: {e}",
                String::from_utf8_lossy(&out)
            ))
        })?;
        let execs = self
            .lock()
            .containers
            .get(id)
            .map(Container::exec_pids)
            .unwrap_or_default();
        Ok(pids
            .into_iter()
            .map(|pid| (pid, execs.get(&pid).cloned()))
            .collect())
    }

    pub(crate) fn pause(&self, id: &str) -> Result<()> {
        self.run(id, &["pause", id], Io::default())?;
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.paused();
        }
        self.publisher.publish(Event::Paused(ev::TaskPaused {
            container_id: id.to_string(),
            ..Default::default()
        }));
        Ok(())
    }

    pub(crate) fn resume(&self, id: &str) -> Result<()> {
        self.run(id, &["resume", id], Io::default())?;
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.resumed();
        }
        self.publisher.publish(Event::Resumed(ev::TaskResumed {
            container_id: id.to_string(),
            ..Default::default()
        }));
        Ok(())
    }

    /// Applies runtime-spec LinuxResources (JSON) to the container.
    pub(crate) fn update(&self, id: &str, resources: Vec<u8>) -> Result<()> {
        self.run(
            id,
            &["update", "--resources", "-", id],
            Io {
                input: Some(resources),
                ..Default::default()
            },
        )?;
        Ok(())
    }

    /// The container's cgroup metrics.
    pub(crate) fn stats(&self, id: &str) -> Result<Any> {
        let cgroup = self.lock().container(id)?.cgroup.clone();
        let cgroup = cgroup
            .ok_or_else(|| Error::FailedPrecondition(format!("container {id} has no cgroup")))?;
        Ok(cgroup.metrics()?)
    }
}
