//! The task service (`containerd.task.v2.Task`): the state of every container of the pod
//! and its exec processes, the runtime commands behind each call, and the events.
//!
//! One mutex guards the state and one condvar announces exits: Wait callers, runtime
//! commands waiting for their own exit status, and the reaper all meet there.

use std::collections::HashMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{EnumOrUnknown, Message, MessageField};
use containerd_shim_protos::ttrpc::{self, Code, TtrpcContext};

use crate::events::{now, Event, Publisher};
use crate::mount;
use crate::runtime::{ChildWaiter, Io, Runtime};
use crate::stats::Cgroup;
use crate::stdio::{self, ConsoleSocket, Done, StdioPaths};

type TtrpcResult<T> = ttrpc::Result<T>;

/// How long an exit waits for the last terminal output.
const OUTPUT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Exit statuses of children nobody claimed yet are kept up to this many.
const MAX_UNCLAIMED: usize = 4096;

fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn internal(e: anyhow::Error) -> ttrpc::Error {
    status(Code::INTERNAL, format!("{e:#}"))
}

fn not_found(id: &str, exec_id: &str) -> ttrpc::Error {
    if exec_id.is_empty() {
        status(Code::NOT_FOUND, format!("container {id}: not found"))
    } else {
        status(
            Code::NOT_FOUND,
            format!("exec {exec_id} of container {id}: not found"),
        )
    }
}

/// Names used in file names must be plain (containerd's IDs are).
fn check_name(field: &str, value: &str) -> TtrpcResult<()> {
    if value.is_empty()
        || value.len() > 256
        || value == "."
        || value == ".."
        || value.contains(['/', '\0'])
    {
        return Err(status(
            Code::INVALID_ARGUMENT,
            format!("{field} {value:?} is not a valid identifier"),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

impl ProcStatus {
    fn proto(self) -> Status {
        match self {
            ProcStatus::Created => Status::CREATED,
            ProcStatus::Running => Status::RUNNING,
            ProcStatus::Paused => Status::PAUSED,
            ProcStatus::Stopped => Status::STOPPED,
        }
    }
}

/// A pty master and the end of its output copy.
type Terminal = (Arc<OwnedFd>, Option<Arc<Done>>);

/// A container's init or one of its exec processes.
struct Proc {
    pid: i32,
    status: ProcStatus,
    exit_status: u32,
    exited_at: Option<Timestamp>,
    paths: StdioPaths,
    console: Option<Arc<OwnedFd>>,
    /// Set when a terminal's output is all copied out; the exit waits for it.
    output_done: Option<Arc<Done>>,
    /// Between the runtime's start/exec and our TaskStart/TaskExecStarted: an exit seen
    /// then waits in `pending_exit`, so containerd always sees start before exit.
    starting: bool,
    pending_exit: Option<i32>,
    /// The exit waits for the terminal output (see `output_done`).
    draining: bool,
    /// An exec's runtime-spec Process (JSON).
    spec: Vec<u8>,
}

impl Proc {
    fn new(paths: StdioPaths) -> Proc {
        Proc {
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
}

struct Container {
    bundle: PathBuf,
    rootfs_mounted: bool,
    init: Proc,
    execs: HashMap<String, Proc>,
    cgroup: Option<Cgroup>,
    /// Whether the container has a PID namespace of its own (else its processes outlive
    /// init and are killed when it exits).
    own_pid_ns: bool,
}

impl Container {
    fn proc(&self, exec_id: &str) -> Option<&Proc> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id)
        }
    }

    fn proc_mut(&mut self, exec_id: &str) -> Option<&mut Proc> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Container>,
    /// Live task/exec pids -> (container ID, exec ID or "").
    pids: HashMap<i32, (String, String)>,
    /// Exits of children not (yet) known as tasks: runtime commands, or a process that
    /// exited before its pid was read.
    unclaimed: HashMap<i32, i32>,
}

pub struct Service {
    runtime: Runtime,
    publisher: Publisher,
    state: Mutex<State>,
    exited: Condvar,
    shutdown: (Mutex<bool>, Condvar),
}

impl ChildWaiter for Service {
    fn wait_child(&self, pid: i32) -> i32 {
        let mut state = self.lock();
        loop {
            if let Some(code) = state.unclaimed.remove(&pid) {
                return code;
            }
            state = self
                .exited
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

impl Service {
    pub fn new(runtime: Runtime, publisher: Publisher) -> Service {
        Service {
            runtime,
            publisher,
            state: Mutex::new(State::default()),
            exited: Condvar::new(),
            shutdown: (Mutex::new(false), Condvar::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Blocks until Shutdown finds no task left.
    pub fn wait_shutdown(&self) {
        let (lock, cond) = &self.shutdown;
        let mut done = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            done = cond.wait(done).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn signal_shutdown(&self) {
        let (lock, cond) = &self.shutdown;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cond.notify_all();
    }

    /// Called by the reaper for every child that exited.
    pub fn on_exit(self: &Arc<Self>, pid: i32, code: i32) {
        let mut state = self.lock();
        match state.pids.get(&pid).cloned() {
            Some((id, exec_id)) => self.process_exited(&mut state, &id, &exec_id, code),
            None => {
                if state.unclaimed.len() >= MAX_UNCLAIMED {
                    state.unclaimed.clear();
                }
                state.unclaimed.insert(pid, code);
            }
        }
        drop(state);
        self.exited.notify_all();
    }

    /// Records the exit of a task process and publishes TaskExit (unless it is still being
    /// started: then the exit waits until TaskStart is out).
    fn process_exited(self: &Arc<Self>, state: &mut State, id: &str, exec_id: &str, code: i32) {
        let Some(container) = state.containers.get_mut(id) else {
            return;
        };
        let own_pid_ns = container.own_pid_ns;
        let cgroup = container.cgroup.clone();
        let Some(proc) = container.proc_mut(exec_id) else {
            return;
        };
        if proc.starting {
            proc.pending_exit = Some(code);
            return;
        }
        // A terminal's last output may still be in the pty: report the exit once it is out
        // (bounded, a process holding the slave open must not hold the exit back forever).
        if let Some(done) = proc.output_done.clone() {
            if !done.is_set() {
                if !proc.draining {
                    proc.draining = true;
                    let (this, id, exec_id) = (self.clone(), id.to_string(), exec_id.to_string());
                    std::thread::spawn(move || {
                        done.wait(OUTPUT_DRAIN_TIMEOUT);
                        let mut state = this.lock();
                        if let Some(p) = state
                            .containers
                            .get_mut(&id)
                            .and_then(|c| c.proc_mut(&exec_id))
                        {
                            p.output_done = None;
                        }
                        this.process_exited(&mut state, &id, &exec_id, code);
                    });
                }
                return;
            }
        }
        let pid = proc.pid;
        if exec_id.is_empty() && !own_pid_ns {
            // Processes sharing the pod's PID namespace do not die with init: end them
            // (before the exit is reported, as runc's shim does).
            if let Some(cg) = &cgroup {
                for p in cg.procs() {
                    // SAFETY: kill(2) with plain integers, on processes of this container.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
        // An OOM kill is announced before the exit it caused (CRI reads the reason then).
        if let Some(cg) = cgroup.as_ref().filter(|_| exec_id.is_empty()) {
            cg.report_new_oom_kills(|| {
                self.publisher.publish(Event::Oom(ev::TaskOOM {
                    container_id: id.to_string(),
                    ..Default::default()
                }))
            });
        }
        let exited_at = now();
        proc.status = ProcStatus::Stopped;
        proc.exit_status = code as u32;
        proc.exited_at = Some(exited_at.clone());
        state.pids.remove(&pid);
        tracing::debug!(id, exec_id, pid, code, "process exited");
        self.publisher.publish(Event::Exit(ev::TaskExit {
            container_id: id.to_string(),
            id: if exec_id.is_empty() { id } else { exec_id }.to_string(),
            pid: pid as u32,
            exit_status: code as u32,
            exited_at: MessageField::some(exited_at),
            ..Default::default()
        }));
        // Wait callers (and anyone else on the condvar) look again.
        self.exited.notify_all();
    }

    /// Registers a started process's pid; handles an exit that already happened.
    fn register_pid(self: &Arc<Self>, state: &mut State, id: &str, exec_id: &str, pid: i32) {
        state
            .pids
            .insert(pid, (id.to_string(), exec_id.to_string()));
        if let Some(code) = state.unclaimed.remove(&pid) {
            self.process_exited(state, id, exec_id, code);
        }
    }

    /// Ends the starting window of a process: a pending exit is published now.
    fn finish_starting(self: &Arc<Self>, state: &mut State, id: &str, exec_id: &str) {
        let pending = state
            .containers
            .get_mut(id)
            .and_then(|c| c.proc_mut(exec_id))
            .and_then(|p| {
                p.starting = false;
                p.pending_exit.take()
            });
        if let Some(code) = pending {
            self.process_exited(state, id, exec_id, code);
        }
    }

    fn bundle_of(&self, id: &str) -> TtrpcResult<PathBuf> {
        self.lock()
            .containers
            .get(id)
            .map(|c| c.bundle.clone())
            .ok_or_else(|| not_found(id, ""))
    }

    fn runtime_log(bundle: &Path) -> PathBuf {
        bundle.join("runtime.log.json")
    }

    /// Runs a runtime command for container `id` (its log under the bundle).
    fn run(&self, id: &str, args: &[&str], io: Io) -> TtrpcResult<Vec<u8>> {
        let bundle = self.bundle_of(id)?;
        self.runtime
            .run(self, Some(&Self::runtime_log(&bundle)), args, io)
            .map_err(internal)
    }

    fn do_create(self: &Arc<Self>, req: &api::CreateTaskRequest) -> TtrpcResult<u32> {
        check_name("id", &req.id)?;
        if req.bundle.is_empty() {
            return Err(status(Code::INVALID_ARGUMENT, "bundle is empty"));
        }
        if !req.checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "restoring from a checkpoint is not supported",
            ));
        }
        if self.lock().containers.contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {}: already exists", req.id),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let rootfs = bundle.join("rootfs");
        mount::mount_rootfs(&req.rootfs, &rootfs).map_err(internal)?;
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let result = self.create_container(&req.id, &bundle, &paths);
        let (pid, console) = match result {
            Ok(v) => v,
            Err(e) => {
                if !req.rootfs.is_empty() {
                    let _ = mount::unmount_all(&rootfs);
                }
                return Err(e);
            }
        };
        let spec = read_spec(&bundle);
        let own_pid_ns = spec
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
            });
        let cgroup = match Cgroup::from_bundle(&bundle, &req.id) {
            Ok(cg) => {
                let this = Arc::downgrade(self);
                let id = req.id.clone();
                if let Err(e) = cg.watch_oom(move || {
                    if let Some(this) = this.upgrade() {
                        tracing::info!(id, "OOM");
                        this.publisher.publish(Event::Oom(ev::TaskOOM {
                            container_id: id.clone(),
                            ..Default::default()
                        }));
                    }
                }) {
                    tracing::warn!(id = %req.id, error = %format!("{e:#}"), "no OOM watch");
                }
                Some(cg)
            }
            Err(e) => {
                tracing::warn!(id = %req.id, error = %format!("{e:#}"), "no cgroup");
                None
            }
        };
        let mut init = Proc::new(paths);
        init.pid = pid;
        if let Some((master, done)) = console {
            init.console = Some(master);
            init.output_done = done;
        }
        let mut state = self.lock();
        state.containers.insert(
            req.id.clone(),
            Container {
                bundle: bundle.clone(),
                rootfs_mounted: !req.rootfs.is_empty(),
                init,
                execs: HashMap::new(),
                cgroup,
                own_pid_ns,
            },
        );
        self.publisher.publish(Event::Create(ev::TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(ev::TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            checkpoint: req.checkpoint.clone(),
            pid: pid as u32,
            ..Default::default()
        }));
        self.register_pid(&mut state, &req.id, "", pid);
        Ok(pid as u32)
    }

    /// `nodus-runtime create`; returns the init pid and the pty master, if any.
    fn create_container(
        &self,
        id: &str,
        bundle: &Path,
        paths: &StdioPaths,
    ) -> TtrpcResult<(i32, Option<Terminal>)> {
        let pid_file = bundle.join("init.pid");
        let bundle_s = bundle.to_string_lossy().into_owned();
        let pid_s = pid_file.to_string_lossy().into_owned();
        let mut args = vec!["create", "--bundle", &bundle_s, "--pid-file", &pid_s];
        let console = if paths.terminal {
            Some(ConsoleSocket::new().map_err(internal)?)
        } else {
            None
        };
        let console_path = console
            .as_ref()
            .map(|c| c.path().to_string_lossy().into_owned());
        if let Some(p) = &console_path {
            args.extend(["--console-socket", p.as_str()]);
        }
        args.push(id);
        let io = self.process_io(paths)?;
        self.runtime
            .run(self, Some(&Self::runtime_log(bundle)), &args, io)
            .map_err(internal)?;
        let pid = read_pid(&pid_file)?;
        let master = self.attach_console(console, paths)?;
        Ok((pid, master))
    }

    fn process_io(&self, paths: &StdioPaths) -> TtrpcResult<Io> {
        if paths.terminal {
            // Nothing of ours for the process to inherit by mistake: errors are in the log.
            return Ok(Io {
                stdin: Some(Stdio::null()),
                stdout: Some(Stdio::null()),
                stderr: Some(Stdio::null()),
                input: None,
            });
        }
        let io = paths.open_direct().map_err(internal)?;
        Ok(Io {
            stdin: Some(io.stdin),
            stdout: Some(io.stdout),
            stderr: Some(io.stderr),
            input: None,
        })
    }

    fn attach_console(
        &self,
        console: Option<ConsoleSocket>,
        paths: &StdioPaths,
    ) -> TtrpcResult<Option<Terminal>> {
        let Some(console) = console else {
            return Ok(None);
        };
        let master = Arc::new(console.receive().map_err(internal)?);
        let done = stdio::start_console_copy(master.clone(), paths).map_err(internal)?;
        Ok(Some((master, done)))
    }

    fn do_start(self: &Arc<Self>, id: &str, exec_id: &str) -> TtrpcResult<u32> {
        if exec_id.is_empty() {
            {
                let mut state = self.lock();
                let c = state
                    .containers
                    .get_mut(id)
                    .ok_or_else(|| not_found(id, ""))?;
                if c.init.status != ProcStatus::Created {
                    return Err(status(
                        Code::FAILED_PRECONDITION,
                        format!("container {id} is {:?}, not created", c.init.status),
                    ));
                }
                c.init.starting = true;
            }
            let result = self.run(id, &["start", id], Io::default());
            let mut state = self.lock();
            if let Err(e) = result {
                self.finish_starting(&mut state, id, "");
                return Err(e);
            }
            let pid = match state.containers.get_mut(id) {
                Some(c) => {
                    if c.init.status == ProcStatus::Created {
                        c.init.status = ProcStatus::Running;
                    }
                    c.init.pid
                }
                None => return Err(not_found(id, "")),
            };
            self.publisher.publish(Event::Start(ev::TaskStart {
                container_id: id.to_string(),
                pid: pid as u32,
                ..Default::default()
            }));
            self.finish_starting(&mut state, id, "");
            return Ok(pid as u32);
        }

        let (bundle, spec, paths) = {
            let mut state = self.lock();
            let c = state
                .containers
                .get_mut(id)
                .ok_or_else(|| not_found(id, ""))?;
            if c.init.status != ProcStatus::Running {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {id} is not running"),
                ));
            }
            let bundle = c.bundle.clone();
            let p = c
                .execs
                .get_mut(exec_id)
                .ok_or_else(|| not_found(id, exec_id))?;
            if p.status != ProcStatus::Created || p.starting {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("exec {exec_id} was started already"),
                ));
            }
            p.starting = true;
            (bundle, p.spec.clone(), p.paths.clone())
        };
        let result = self.exec_process(id, exec_id, &bundle, &spec, &paths);
        let mut state = self.lock();
        let (pid, console) = match result {
            Ok(v) => v,
            Err(e) => {
                if let Some(p) = state
                    .containers
                    .get_mut(id)
                    .and_then(|c| c.execs.get_mut(exec_id))
                {
                    p.starting = false;
                    p.status = ProcStatus::Stopped;
                    p.exit_status = 255;
                    p.exited_at = Some(now());
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
                if let Some((master, done)) = console {
                    p.console = Some(master);
                    p.output_done = done;
                }
            }
            None => return Err(not_found(id, exec_id)),
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

    fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        bundle: &Path,
        spec: &[u8],
        paths: &StdioPaths,
    ) -> TtrpcResult<(i32, Option<Terminal>)> {
        let spec_file = bundle.join(format!("exec-{exec_id}.json"));
        let pid_file = bundle.join(format!("exec-{exec_id}.pid"));
        fs::write(&spec_file, spec)
            .map_err(|e| internal(anyhow::anyhow!("write {}: {e}", spec_file.display())))?;
        let spec_s = spec_file.to_string_lossy().into_owned();
        let pid_s = pid_file.to_string_lossy().into_owned();
        let console = if paths.terminal {
            Some(ConsoleSocket::new().map_err(internal)?)
        } else {
            None
        };
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
        let io = self.process_io(paths);
        let result = io.and_then(|io| {
            self.runtime
                .run(self, Some(&Self::runtime_log(bundle)), &args, io)
                .map_err(internal)
        });
        let _ = fs::remove_file(&spec_file);
        result?;
        let pid = read_pid(&pid_file);
        let _ = fs::remove_file(&pid_file);
        let master = self.attach_console(console, paths)?;
        Ok((pid?, master))
    }

    fn do_delete(self: &Arc<Self>, id: &str, exec_id: &str) -> TtrpcResult<api::DeleteResponse> {
        if !exec_id.is_empty() {
            let mut state = self.lock();
            let c = state
                .containers
                .get_mut(id)
                .ok_or_else(|| not_found(id, ""))?;
            let p = c.execs.get(exec_id).ok_or_else(|| not_found(id, exec_id))?;
            if matches!(p.status, ProcStatus::Running | ProcStatus::Paused) || p.starting {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("exec {exec_id} of container {id} is still running"),
                ));
            }
            let p = c
                .execs
                .remove(exec_id)
                .ok_or_else(|| not_found(id, exec_id))?;
            return Ok(api::DeleteResponse {
                pid: p.pid as u32,
                exit_status: p.exit_status,
                exited_at: p.exited_at.map(MessageField::some).unwrap_or_default(),
                ..Default::default()
            });
        }
        let (bundle, init_status) = {
            let state = self.lock();
            let c = state.containers.get(id).ok_or_else(|| not_found(id, ""))?;
            (c.bundle.clone(), c.init.status)
        };
        if matches!(init_status, ProcStatus::Running | ProcStatus::Paused) {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {id} is still running: kill it first"),
            ));
        }
        self.runtime
            .run(
                self.as_ref(),
                Some(&Self::runtime_log(&bundle)),
                &["delete", "--force", id],
                Io::default(),
            )
            .map_err(internal)?;
        let mut state = self.lock();
        let Some(c) = state.containers.remove(id) else {
            return Err(not_found(id, ""));
        };
        state.pids.retain(|_, (cid, _)| cid != id);
        if c.rootfs_mounted {
            if let Err(e) = mount::unmount_all(&c.bundle.join("rootfs")) {
                tracing::warn!(id, error = %format!("{e:#}"), "unmount rootfs");
            }
        }
        let _ = fs::remove_file(c.bundle.join("init.pid"));
        let _ = fs::remove_file(Self::runtime_log(&c.bundle));
        let exited_at = c.init.exited_at.clone().unwrap_or_else(now);
        // A task deleted without having run (created only) reports the exit it now has.
        let exit_status = if c.init.status == ProcStatus::Stopped {
            c.init.exit_status
        } else {
            128 + libc::SIGKILL as u32
        };
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

    fn do_kill(&self, req: &api::KillRequest) -> TtrpcResult<()> {
        let signal = i32::try_from(req.signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| {
                status(
                    Code::INVALID_ARGUMENT,
                    format!("signal {} is not a valid signal number", req.signal),
                )
            })?;
        let (pid, st) = {
            let state = self.lock();
            let c = state
                .containers
                .get(&req.id)
                .ok_or_else(|| not_found(&req.id, ""))?;
            let p = c
                .proc(&req.exec_id)
                .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
            (p.pid, p.status)
        };
        if !req.exec_id.is_empty() {
            if st != ProcStatus::Running && st != ProcStatus::Paused {
                return Err(status(
                    Code::NOT_FOUND,
                    format!("exec {}: process already finished", req.exec_id),
                ));
            }
            // SAFETY: kill(2) with a pid we reaped nothing for yet (still ours).
            if unsafe { libc::kill(pid, signal) } < 0 {
                let e = std::io::Error::last_os_error();
                return Err(status(Code::NOT_FOUND, format!("kill exec: {e}")));
            }
            return Ok(());
        }
        if st == ProcStatus::Stopped && !req.all {
            return Err(status(
                Code::NOT_FOUND,
                format!("container {}: process already finished", req.id),
            ));
        }
        if !req.all {
            // The init is our child (re-parented to us, not yet reaped while it is not
            // Stopped), so signal it directly: a runtime process less on every stop.
            let state = self.lock();
            let live = state
                .containers
                .get(&req.id)
                .map(|c| (c.init.pid, c.init.status))
                .filter(|(pid, st)| *pid > 0 && *st != ProcStatus::Stopped);
            let Some((pid, _)) = live else {
                return Err(status(
                    Code::NOT_FOUND,
                    format!("container {}: process already finished", req.id),
                ));
            };
            // SAFETY: kill(2) with plain integers.
            if unsafe { libc::kill(pid, signal) } < 0 {
                let e = std::io::Error::last_os_error();
                return Err(status(
                    Code::NOT_FOUND,
                    format!("container {}: kill {pid}: {e}", req.id),
                ));
            }
            return Ok(());
        }
        // Every process of the container. Not frozen: signal what its cgroup lists, here.
        let cgroup = {
            let state = self.lock();
            state
                .containers
                .get(&req.id)
                .filter(|c| c.init.status != ProcStatus::Paused)
                .and_then(|c| c.cgroup.clone())
        };
        if let Some(cg) = cgroup {
            let procs = cg.procs();
            if procs.is_empty() && st == ProcStatus::Stopped {
                return Err(status(
                    Code::NOT_FOUND,
                    format!("container {}: process already finished", req.id),
                ));
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
        match self.run(&req.id, &["kill", "--all", &req.id, &sig], Io::default()) {
            Ok(_) => Ok(()),
            Err(e) => {
                let stopped = self
                    .lock()
                    .containers
                    .get(&req.id)
                    .is_none_or(|c| c.init.status == ProcStatus::Stopped);
                if stopped {
                    Err(status(
                        Code::NOT_FOUND,
                        format!("container {}: process already finished", req.id),
                    ))
                } else {
                    Err(e)
                }
            }
        }
    }
}

fn read_pid(path: &Path) -> TtrpcResult<i32> {
    let text = fs::read_to_string(path)
        .map_err(|e| internal(anyhow::anyhow!("read pid file {}: {e}", path.display())))?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            internal(anyhow::anyhow!(
                "pid file {} holds {:?}, not a pid",
                path.display(),
                text.trim()
            ))
        })
}

fn read_spec(bundle: &Path) -> Option<serde_json::Value> {
    let text = fs::read(bundle.join("config.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The ttrpc handlers take `&self`; the real work needs the `Arc` (threads, weak refs).
pub struct TaskService(pub Arc<Service>);

impl containerd_shim_protos::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        tracing::debug!(id = %req.id, bundle = %req.bundle, "create");
        let pid = self.0.do_create(&req)?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        tracing::debug!(id = %req.id, exec_id = %req.exec_id, "start");
        let pid = self.0.do_start(&req.id, &req.exec_id)?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let state = self.0.lock();
        let c = state
            .containers
            .get(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        let p = c
            .proc(&req.exec_id)
            .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        Ok(api::StateResponse {
            id: if req.exec_id.is_empty() {
                req.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: p.pid as u32,
            status: EnumOrUnknown::new(p.status.proto()),
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            exit_status: p.exit_status,
            exited_at: p
                .exited_at
                .clone()
                .map(MessageField::some)
                .unwrap_or_default(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        tracing::debug!(id = %req.id, exec_id = %req.exec_id, signal = req.signal, all = req.all, "kill");
        self.0.do_kill(&req)?;
        Ok(api::Empty::default())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let mut state = self.0.lock();
        loop {
            let c = state
                .containers
                .get(&req.id)
                .ok_or_else(|| not_found(&req.id, ""))?;
            let p = c
                .proc(&req.exec_id)
                .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
            if p.status == ProcStatus::Stopped {
                return Ok(api::WaitResponse {
                    exit_status: p.exit_status,
                    exited_at: p
                        .exited_at
                        .clone()
                        .map(MessageField::some)
                        .unwrap_or_default(),
                    ..Default::default()
                });
            }
            state = self
                .0
                .exited
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        tracing::debug!(id = %req.id, exec_id = %req.exec_id, "delete");
        self.0.do_delete(&req.id, &req.exec_id)
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        check_name("exec_id", &req.exec_id)?;
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "exec spec is empty"))?;
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&spec) {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("exec spec is not runtime-spec Process JSON: {e}"),
            ));
        }
        let mut state = self.0.lock();
        let c = state
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("exec {}: already exists", req.exec_id),
            ));
        }
        let mut p = Proc::new(StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        });
        p.spec = spec;
        c.execs.insert(req.exec_id.clone(), p);
        self.0
            .publisher
            .publish(Event::ExecAdded(ev::TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }));
        Ok(api::Empty::default())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let console = {
            let state = self.0.lock();
            let c = state
                .containers
                .get(&req.id)
                .ok_or_else(|| not_found(&req.id, ""))?;
            let p = c
                .proc(&req.exec_id)
                .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
            p.console.clone()
        };
        match console {
            Some(m) => stdio::resize(&m, req.width, req.height).map_err(internal)?,
            None => {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("{} has no terminal", req.id),
                ))
            }
        }
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // stdin reaches the process through a pipe fed from the FIFO: containerd closing its
        // end of the FIFO already ends it with EOF.
        let state = self.0.lock();
        let c = state
            .containers
            .get(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        c.proc(&req.exec_id)
            .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        Ok(api::Empty::default())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let out = self
            .0
            .run(&req.id, &["ps", "--format", "json", &req.id], Io::default())?;
        let pids: Vec<u32> = serde_json::from_slice(&out).map_err(|e| {
            internal(anyhow::anyhow!(
                "runtime ps printed {:?}: {e}",
                String::from_utf8_lossy(&out)
            ))
        })?;
        // Exec processes carry their exec ID (containerd.runc.v1.ProcessDetails, as runc's
        // shim reports them).
        let execs: HashMap<u32, String> = {
            let state = self.0.lock();
            state
                .containers
                .get(&req.id)
                .map(|c| {
                    c.execs
                        .iter()
                        .filter(|(_, p)| p.pid > 0)
                        .map(|(exec_id, p)| (p.pid as u32, exec_id.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| containerd_shim_protos::types::task::ProcessInfo {
                    pid,
                    info: execs
                        .get(&pid)
                        .and_then(|exec_id| {
                            let details = containerd_shim_protos::shim::oci::ProcessDetails {
                                exec_id: exec_id.clone(),
                                ..Default::default()
                            };
                            Some(Any {
                                type_url: "containerd.runc.v1.ProcessDetails".into(),
                                value: details.write_to_bytes().ok()?,
                                ..Default::default()
                            })
                        })
                        .into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.0.run(&req.id, &["pause", &req.id], Io::default())?;
        if let Some(c) = self.0.lock().containers.get_mut(&req.id) {
            if c.init.status == ProcStatus::Running {
                c.init.status = ProcStatus::Paused;
            }
        }
        self.0.publisher.publish(Event::Paused(ev::TaskPaused {
            container_id: req.id.clone(),
            ..Default::default()
        }));
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.0.run(&req.id, &["resume", &req.id], Io::default())?;
        if let Some(c) = self.0.lock().containers.get_mut(&req.id) {
            if c.init.status == ProcStatus::Paused {
                c.init.status = ProcStatus::Running;
            }
        }
        self.0.publisher.publish(Event::Resumed(ev::TaskResumed {
            container_id: req.id.clone(),
            ..Default::default()
        }));
        Ok(api::Empty::default())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "update: resources are empty"))?;
        self.0.run(
            &req.id,
            &["update", "--resources", "-", &req.id],
            Io {
                input: Some(resources),
                ..Default::default()
            },
        )?;
        Ok(api::Empty::default())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let cgroup = {
            let state = self.0.lock();
            let c = state
                .containers
                .get(&req.id)
                .ok_or_else(|| not_found(&req.id, ""))?;
            c.cgroup.clone()
        };
        let cgroup = cgroup.ok_or_else(|| {
            status(
                Code::FAILED_PRECONDITION,
                format!("container {} has no cgroup", req.id),
            )
        })?;
        Ok(api::StatsResponse {
            stats: MessageField::some(cgroup.metrics().map_err(internal)?),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .0
            .lock()
            .containers
            .get(&req.id)
            .map(|c| c.init.pid as u32)
            .unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.0.lock().containers.is_empty() {
            self.0.signal_shutdown();
        }
        Ok(api::Empty::default())
    }
}
