//! The shim's shared state: every container of the pod and its processes, the exits the
//! reaper hands in, and the queries on them (the operations that change a container are
//! in `lifecycle`).
//!
//! One mutex guards the state and one condvar announces exits: Wait callers, runtime
//! commands waiting for their own exit status, and the reaper all meet there. No runtime
//! command runs under the mutex: its exit comes back through the reaper, which takes it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::MessageField;

use crate::container::Container;
use crate::error::{Error, Result};
use crate::events::{now, Event, Publisher};
use crate::runtime::{ChildWaiter, Runtime};

mod lifecycle;

/// How long an exit waits for the last terminal output.
const OUTPUT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Exit statuses of children nobody claimed yet are kept up to this many.
const MAX_UNCLAIMED: usize = 4096;

#[derive(Default)]
struct State {
    containers: HashMap<String, Container>,
    /// Live task/exec pids -> (container ID, exec ID or "").
    pids: HashMap<i32, (String, String)>,
    /// Exits of children not (yet) known as tasks: runtime commands, or a process that
    /// exited before its pid was read.
    unclaimed: HashMap<i32, i32>,
    /// Creates under way (their container is not in `containers` yet).
    creating: usize,
    /// When a Create or a Delete last ended (the idle exit counts from there).
    last_active: Option<Instant>,
    /// Set when the shim decided to exit idle: a Create that comes after is refused.
    closing: bool,
}

impl State {
    fn container(&self, id: &str) -> Result<&Container> {
        self.containers
            .get(id)
            .ok_or_else(|| Error::not_found(id, ""))
    }

    fn container_mut(&mut self, id: &str) -> Result<&mut Container> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| Error::not_found(id, ""))
    }
}

pub(crate) struct Service {
    runtime: Runtime,
    publisher: Publisher,
    state: Mutex<State>,
    exited: Condvar,
    shutdown: (Mutex<bool>, Condvar),
}

/// A Create under way; see [`Service::creating`].
pub(crate) struct Creating<'a>(&'a Service);

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.creating = state.creating.saturating_sub(1);
        Service::touch(&mut state);
    }
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
    pub(crate) fn new(runtime: Runtime, publisher: Publisher) -> Service {
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

    /// Blocks until Shutdown finds no task left, or until the shim has held no live
    /// container (and created none) for `idle_exit`. The second is an orphan, which no one
    /// will call again: containerd died between `start` and Create, or it gave a task up
    /// as a dead shim's (a Create cancelled half-way, when the kubelet was killed) and its
    /// cleanup (`delete`) removed the runtime state of the containers this shim still
    /// lists. containerd's own Create follows `start` within milliseconds.
    pub(crate) fn wait_shutdown(&self, idle_exit: Duration) {
        let (lock, cond) = &self.shutdown;
        let serving_since = Instant::now();
        loop {
            let done = lock.lock().unwrap_or_else(|p| p.into_inner());
            if *done {
                return;
            }
            let (done, _) = cond
                .wait_timeout(done, idle_exit / 4)
                .unwrap_or_else(|p| p.into_inner());
            if *done {
                return;
            }
            drop(done);
            // Decided under the state lock, with `closing` set in the same step, so that
            // no Create can begin between the decision and the exit.
            let mut state = self.lock();
            let quiet = state.last_active.unwrap_or(serving_since).elapsed() >= idle_exit;
            if quiet
                && state.creating == 0
                && state
                    .containers
                    .keys()
                    .all(|id| !self.runtime.has_state(id))
            {
                state.closing = true;
                tracing::info!(?idle_exit, "no live container for this long: exiting");
                return;
            }
        }
    }

    /// Marks a Create under way until the returned guard drops (see [`Self::wait_shutdown`]);
    /// refused once the shim is exiting idle.
    pub(crate) fn creating(&self) -> Result<Creating<'_>> {
        let mut state = self.lock();
        if state.closing {
            return Err(Error::FailedPrecondition(
                "the shim is exiting (it held no live container for its idle period)".into(),
            ));
        }
        state.creating += 1;
        Ok(Creating(self))
    }

    /// Notes that a container came or went (the idle exit counts from the last such moment).
    fn touch(state: &mut State) {
        state.last_active = Some(Instant::now());
    }

    /// Shutdown: ends `wait_shutdown` if no container is left.
    pub(crate) fn shutdown_if_idle(&self) {
        if !self.lock().containers.is_empty() {
            return;
        }
        let (lock, cond) = &self.shutdown;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cond.notify_all();
    }

    /// Called by the reaper for every child that exited.
    pub(crate) fn on_exit(self: &Arc<Self>, pid: i32, code: i32) {
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
        proc.set_exited(code as u32, exited_at.clone());
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

    pub(crate) fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        self.lock().container(id)?.state(id, exec_id)
    }

    /// Blocks until the init or exec has exited; returns its exit.
    pub(crate) fn wait(&self, id: &str, exec_id: &str) -> Result<api::WaitResponse> {
        let mut state = self.lock();
        loop {
            if let Some(exit) = state.container(id)?.process(id, exec_id)?.wait_response() {
                return Ok(exit);
            }
            state = self
                .exited
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// The pty master of the init or exec, if it has a terminal.
    pub(crate) fn console(&self, id: &str, exec_id: &str) -> Result<Option<Arc<OwnedFd>>> {
        Ok(self
            .lock()
            .container(id)?
            .process(id, exec_id)?
            .console
            .clone())
    }

    /// NotFound unless container `id` has the init or exec `exec_id`.
    pub(crate) fn check_process(&self, id: &str, exec_id: &str) -> Result<()> {
        self.lock().container(id)?.process(id, exec_id)?;
        Ok(())
    }

    /// The init pid of container `id`, 0 if there is none.
    pub(crate) fn task_pid(&self, id: &str) -> u32 {
        self.lock()
            .containers
            .get(id)
            .map(|c| c.init.pid as u32)
            .unwrap_or(0)
    }
}
