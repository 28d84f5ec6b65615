//! `compute_pod_actions`: what must happen to bring a pod's runtime state (as CRI reports
//! it) to its spec. A pure function, following upstream's `computePodActions`: create or
//! recreate the sandbox, run init containers one by one in order, start or restart app
//! containers per `restartPolicy`, hold restarts back while in CrashLoopBackOff, kill
//! containers whose liveness or startup probe failed (the prober only records that), and
//! stop the pod's sandbox when nothing is left to run.

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::backoff::{self, Backoff};
use crate::container::{ContainerState, ContainerStatus, Nanos, PodStatus, SandboxState};
use crate::kuberuntime::labels::{hash_container, legacy_hash_container};
use crate::pod_util::{
    app_containers, ephemeral_containers, init_containers, is_sidecar, restart_policy, sidecars,
    RestartPolicy,
};
use crate::prober::{ProbeKind, ProbeResults};

/// A container to stop, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerToKill {
    pub(crate) id: String,
    pub(crate) name: String,
    /// Upstream's message, also the `Killing` event's.
    pub(crate) reason: String,
    /// The failed probe's `terminationGracePeriodSeconds`, which wins over the pod's.
    pub(crate) grace: Option<i64>,
}

impl ContainerToKill {
    /// A kill for a restart, with upstream's message: `{}` in `reason` is the container.
    fn new(s: &ContainerStatus, reason: &str) -> Self {
        ContainerToKill {
            id: s.id.clone(),
            name: s.name.clone(),
            reason: reason.replace("{}", &s.name),
            grace: None,
        }
    }
}

/// A container held back by CrashLoopBackOff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackoffWait {
    pub(crate) name: String,
    /// How long until the restart may happen.
    pub(crate) remaining: Nanos,
    /// The current back-off period (for the status message).
    pub(crate) period: Nanos,
}

/// The actions for one sync of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PodActions {
    /// Stop every container and sandbox of the pod first.
    pub(crate) kill_pod: bool,
    /// Create a new sandbox.
    pub(crate) create_sandbox: bool,
    /// The ready sandbox to start containers in (when not creating one).
    pub(crate) sandbox_id: Option<String>,
    /// The attempt number of the sandbox to create.
    pub(crate) attempt: u32,
    /// Index (in `spec.initContainers`) of the init container to start next.
    pub(crate) next_init_container: Option<usize>,
    /// Indexes (in `spec.initContainers`) of sidecars to start again once the pod is
    /// initialized (they exited, or their liveness probe failed).
    pub(crate) sidecars_to_start: Vec<usize>,
    /// Indexes (in `spec.containers`) of app containers to start.
    pub(crate) containers_to_start: Vec<usize>,
    /// Indexes (in `spec.ephemeralContainers`) of ephemeral containers to start (once
    /// each: they are never restarted).
    pub(crate) ephemeral_to_start: Vec<usize>,
    /// Running containers to stop (spec changed, liveness or startup probe failed).
    pub(crate) containers_to_kill: Vec<ContainerToKill>,
    /// Containers (init or app) whose restart waits for back-off.
    pub(crate) backoff: Vec<BackoffWait>,
    /// Running app containers whose resources change in place (UpdateContainerResources).
    pub(crate) containers_to_update: Vec<ContainerToUpdate>,
}

/// A running container to resize in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerToUpdate {
    /// Index in `spec.containers`.
    pub(crate) index: usize,
    pub(crate) id: String,
}

impl PodActions {
    /// True when this sync changes nothing.
    pub(crate) fn is_noop(&self) -> bool {
        !self.kill_pod
            && !self.create_sandbox
            && self.next_init_container.is_none()
            && self.sidecars_to_start.is_empty()
            && self.containers_to_start.is_empty()
            && self.ephemeral_to_start.is_empty()
            && self.containers_to_kill.is_empty()
            && self.containers_to_update.is_empty()
    }
}

/// How a running container reaches its allocated resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resize {
    InPlace,
    Restart,
}

/// Upstream's `computePodResizeAction` for one running container: nothing when what the
/// kubelet applied (`s.resources`, unknown for a container it did not start) has the
/// allocated CPU and memory; a restart when a changed resource's `resizePolicy` says
/// `RestartContainer`; otherwise an in-place update.
fn resize_action(c: &Container, s: &ContainerStatus) -> Option<Resize> {
    use crate::allocation_manager::cpu_memory;
    let have = cpu_memory(Some(s.resources.as_ref()?));
    let want = cpu_memory(c.resources.as_ref());
    let cpu = (want.cpu_request, want.cpu_limit) != (have.cpu_request, have.cpu_limit);
    let memory = (want.mem_request, want.mem_limit) != (have.mem_request, have.mem_limit);
    let restarts = |resource: &str| {
        c.resize_policy
            .iter()
            .flatten()
            .any(|p| p.resource_name == resource && p.restart_policy == "RestartContainer")
    };
    match (cpu, memory) {
        (false, false) => None,
        _ if (cpu && restarts("cpu")) || (memory && restarts("memory")) => Some(Resize::Restart),
        _ => Some(Resize::InPlace),
    }
}

/// Upstream's `podSandboxChanged`: (must create, attempt for the new one, current ready id).
fn sandbox_changed(status: &PodStatus, host_network: bool) -> (bool, u32, Option<String>) {
    let Some(newest) = status.sandboxes.first() else {
        return (true, 0, None);
    };
    let ready = status
        .sandboxes
        .iter()
        .filter(|s| s.state == SandboxState::Ready)
        .count();
    // A pod network sandbox without an IP lost its network: recreate it (host network
    // sandboxes have no IP of their own).
    if ready > 1 || newest.state != SandboxState::Ready || (!host_network && newest.ips.is_empty())
    {
        return (true, newest.attempt + 1, Some(newest.id.clone()));
    }
    (false, newest.attempt, Some(newest.id.clone()))
}

fn succeeded(c: &ContainerStatus) -> bool {
    c.state == ContainerState::Exited && c.exit_code == 0
}

/// Upstream's `ShouldContainerBeRestarted` for a container whose newest instance is `last`.
pub(crate) fn should_restart(policy: RestartPolicy, last: Option<&ContainerStatus>) -> bool {
    match last {
        None => true,
        Some(c) => match c.state {
            ContainerState::Running => false,
            ContainerState::Created | ContainerState::Unknown => true,
            ContainerState::Exited => match policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => c.exit_code != 0,
                RestartPolicy::Never => false,
            },
        },
    }
}

/// What the init containers need, as upstream's `findNextInitContainerToRun`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InitProgress {
    /// All init containers succeeded (or there are none).
    Done,
    /// Start this one next (never run, or the previous one just succeeded).
    Next(usize),
    /// This one failed; it is to be restarted (or the pod fails, with restartPolicy Never).
    Failed(usize),
    /// One is running (or a sidecar has not passed its startup probe yet); wait.
    Running,
    /// This sidecar exited before the pod was initialized: start it again (back-off
    /// applies, the pod's restartPolicy does not).
    Restart(usize),
}

pub(crate) fn init_progress(pod: &Pod, status: &PodStatus, probes: &ProbeResults) -> InitProgress {
    let inits = init_containers(pod);
    if inits.is_empty() {
        return InitProgress::Done;
    }
    if inits.iter().any(is_sidecar) {
        return init_progress_with_sidecars(pod, status, probes);
    }
    // A running app container means the init containers ran before (maybe since removed).
    if app_containers(pod).iter().any(|c| {
        status
            .find_container(&c.name)
            .is_some_and(|s| s.state == ContainerState::Running)
    }) {
        return InitProgress::Done;
    }
    for (i, c) in inits.iter().enumerate().rev() {
        if let Some(s) = status.find_container(&c.name) {
            if s.state == ContainerState::Exited && s.exit_code != 0 {
                return InitProgress::Failed(i);
            }
        }
    }
    for (i, c) in inits.iter().enumerate().rev() {
        let Some(s) = status.find_container(&c.name) else {
            continue;
        };
        return match s.state {
            ContainerState::Running => InitProgress::Running,
            ContainerState::Exited if i + 1 == inits.len() => InitProgress::Done,
            ContainerState::Exited => InitProgress::Next(i + 1),
            // Created but never started, or unknown: start it (again).
            ContainerState::Created | ContainerState::Unknown => InitProgress::Next(i),
        };
    }
    InitProgress::Next(0)
}

/// [`init_progress`] for a pod with sidecars (upstream's `computeInitContainerActions`):
/// init containers go in order; a regular one must succeed, a sidecar must be running and
/// past its startup probe before the next starts. Once an app container has been created
/// in the sandbox, the pod is initialized for that sandbox's life.
fn init_progress_with_sidecars(
    pod: &Pod,
    status: &PodStatus,
    probes: &ProbeResults,
) -> InitProgress {
    // Only what ran in the newest sandbox counts: a new sandbox runs every init container
    // again, from the first.
    let sandbox = status.sandboxes.first().map(|s| s.id.as_str());
    let newest = |name: &str| {
        status
            .containers
            .iter()
            .find(|c| c.name == name && Some(c.sandbox_id.as_str()) == sandbox)
    };
    if app_containers(pod)
        .iter()
        .any(|c| newest(&c.name).is_some())
    {
        return InitProgress::Done;
    }
    for (i, c) in init_containers(pod).iter().enumerate() {
        let Some(s) = newest(&c.name) else {
            return InitProgress::Next(i);
        };
        match (is_sidecar(c), s.state) {
            (_, ContainerState::Created | ContainerState::Unknown) => return InitProgress::Next(i),
            (true, ContainerState::Running) => {
                let started = c.startup_probe.is_none()
                    || probes.get(&s.id).and_then(|p| p.started).unwrap_or(false);
                if !started {
                    return InitProgress::Running;
                }
            }
            (true, ContainerState::Exited) => return InitProgress::Restart(i),
            (false, ContainerState::Running) => return InitProgress::Running,
            (false, ContainerState::Exited) if s.exit_code == 0 => {}
            (false, ContainerState::Exited) => return InitProgress::Failed(i),
        }
    }
    InitProgress::Done
}

/// Back-off for restarting `container` whose newest exited instance is in `status`.
fn backoff_wait(
    pod_uid: &str,
    container: &Container,
    status: &PodStatus,
    backoff: &Backoff,
    now: Nanos,
) -> Option<BackoffWait> {
    let last = status.last_exited(&container.name)?;
    let key = backoff::key(pod_uid, &container.name, &hash_container(container));
    let remaining = backoff.remaining(&key, last.started_at, last.finished_at, now)?;
    Some(BackoffWait {
        name: container.name.clone(),
        remaining,
        period: backoff.current(&key).unwrap_or(backoff::INITIAL),
    })
}

/// The kill a failed liveness or startup probe asks for (upstream's messages).
fn probe_kill(
    c: &Container,
    s: &ContainerStatus,
    probes: &ProbeResults,
    restart: bool,
) -> Option<ContainerToKill> {
    let kind = probes.get(&s.id)?.failed?;
    let (what, probe) = match kind {
        ProbeKind::Liveness => ("liveness", c.liveness_probe.as_ref()),
        ProbeKind::Startup => ("startup", c.startup_probe.as_ref()),
        ProbeKind::Readiness => return None,
    };
    let mut reason = format!("Container {} failed {what} probe", c.name);
    if restart {
        reason.push_str(", will be restarted");
    }
    Some(ContainerToKill {
        id: s.id.clone(),
        name: c.name.clone(),
        reason,
        grace: probe.and_then(|p| p.termination_grace_period_seconds),
    })
}

/// Computes the actions for one sync. `probes` (by container ID) name containers to kill;
/// `backoff` and `now` decide CrashLoopBackOff.
pub(crate) fn compute_pod_actions(
    pod: &Pod,
    status: &PodStatus,
    probes: &ProbeResults,
    backoff: &Backoff,
    now: Nanos,
) -> PodActions {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let policy = restart_policy(pod);
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let (create, attempt, sandbox_id) = sandbox_changed(status, host_network);
    // Something to stop before a new sandbox: a ready sandbox or a live container.
    let anything_up = status
        .sandboxes
        .iter()
        .any(|s| s.state == SandboxState::Ready)
        || status
            .containers
            .iter()
            .any(|c| matches!(c.state, ContainerState::Running | ContainerState::Created));
    let mut a = PodActions {
        kill_pod: create && anything_up,
        create_sandbox: create,
        sandbox_id: sandbox_id.clone(),
        attempt,
        ..Default::default()
    };
    let apps = app_containers(pod);

    if create {
        a.sandbox_id = None;
        if policy == RestartPolicy::Never && attempt != 0 && !status.containers.is_empty() {
            // The pod ran and must not run again.
            a.create_sandbox = false;
            return a;
        }
        let to_start: Vec<usize> = apps
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                !(policy == RestartPolicy::OnFailure
                    && status.find_container(&c.name).is_some_and(succeeded))
            })
            .map(|(i, _)| i)
            .collect();
        if to_start.is_empty() {
            a.create_sandbox = false;
            return a;
        }
        if !init_containers(pod).is_empty() {
            // A new sandbox runs the init containers again, from the first.
            a.next_init_container = Some(0);
            return a;
        }
        for i in to_start {
            match backoff_wait(uid, &apps[i], status, backoff, now) {
                Some(w) => a.backoff.push(w),
                None => a.containers_to_start.push(i),
            }
        }
        return a;
    }

    match init_progress(pod, status, probes) {
        InitProgress::Done => {}
        InitProgress::Running => return a,
        InitProgress::Next(i) => {
            a.next_init_container = Some(i);
            return a;
        }
        InitProgress::Restart(i) => {
            match backoff_wait(uid, &init_containers(pod)[i], status, backoff, now) {
                Some(w) => a.backoff.push(w),
                None => a.next_init_container = Some(i),
            }
            return a;
        }
        InitProgress::Failed(i) => {
            if policy == RestartPolicy::Never {
                // A failed init container fails the pod.
                a.kill_pod = true;
                return a;
            }
            match backoff_wait(uid, &init_containers(pod)[i], status, backoff, now) {
                Some(w) => a.backoff.push(w),
                None => a.next_init_container = Some(i),
            }
            return a;
        }
    }

    let mut keep = 0;
    let mut to_start = Vec::new();
    for (i, c) in apps.iter().enumerate() {
        let last = status.find_container(&c.name);
        match last {
            Some(s) if s.state == ContainerState::Running => {
                // Upstream restarts a probe-killed container unless restartPolicy is Never.
                let restart = policy != RestartPolicy::Never;
                if s.hash != hash_container(c) && s.hash != legacy_hash_container(c) {
                    a.containers_to_kill
                        .push(ContainerToKill::new(s, "Container {} definition changed"));
                    to_start.push(i);
                } else if let Some(k) = probe_kill(c, s, probes, restart) {
                    a.containers_to_kill.push(k);
                    if restart {
                        to_start.push(i);
                    }
                } else {
                    match resize_action(c, s) {
                        Some(Resize::Restart) => {
                            a.containers_to_kill.push(ContainerToKill::new(
                                s,
                                "Container {} resize requires restart",
                            ));
                            to_start.push(i);
                            continue;
                        }
                        Some(Resize::InPlace) => a.containers_to_update.push(ContainerToUpdate {
                            index: i,
                            id: s.id.clone(),
                        }),
                        None => {}
                    }
                    keep += 1;
                }
            }
            _ => {
                if should_restart(policy, last) {
                    to_start.push(i);
                }
            }
        }
    }
    if keep == 0 && to_start.is_empty() {
        // Everything finished (or is being killed) and stays finished: stop the sandbox.
        a.kill_pod = status
            .sandboxes
            .iter()
            .any(|s| s.state == SandboxState::Ready);
        return a;
    }
    for i in to_start {
        let c = &apps[i];
        let killing = a.containers_to_kill.iter().any(|k| k.name == c.name);
        match (!killing)
            .then(|| backoff_wait(uid, c, status, backoff, now))
            .flatten()
        {
            Some(w) => a.backoff.push(w),
            None => a.containers_to_start.push(i),
        }
    }
    // Sidecars keep running while the app containers do: one that exited, or whose
    // liveness or startup probe failed, starts again whatever the pod's restartPolicy.
    for (i, c) in sidecars(pod) {
        match status.find_container(&c.name) {
            Some(s) if s.state == ContainerState::Running => {
                if let Some(k) = probe_kill(c, s, probes, true) {
                    a.containers_to_kill.push(k);
                    a.sidecars_to_start.push(i);
                }
            }
            _ => match backoff_wait(uid, c, status, backoff, now) {
                Some(w) => a.backoff.push(w),
                None => a.sidecars_to_start.push(i),
            },
        }
    }
    // An ephemeral container (kubectl debug) starts once in the running pod.
    for (i, (c, _)) in ephemeral_containers(pod).iter().enumerate() {
        if status.find_container(&c.name).is_none() {
            a.ephemeral_to_start.push(i);
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{SandboxStatus, NANOS_PER_SEC as S};
    use crate::testutil::pod;

    fn sandbox(id: &str, ready: bool, attempt: u32) -> SandboxStatus {
        SandboxStatus {
            id: id.into(),
            state: if ready {
                SandboxState::Ready
            } else {
                SandboxState::NotReady
            },
            attempt,
            created_at: attempt as i64 * S,
            ips: vec!["10.0.0.2".into()],
        }
    }

    /// A container instance. `created` orders instances (newest first after sort).
    fn ctr(
        pod: &Pod,
        name: &str,
        state: ContainerState,
        exit: i32,
        created: i64,
    ) -> ContainerStatus {
        let spec = init_containers(pod)
            .iter()
            .chain(app_containers(pod))
            .find(|c| c.name == name)
            .unwrap();
        ContainerStatus {
            id: format!("{name}-{created}"),
            name: name.into(),
            sandbox_id: "sb".into(),
            state,
            created_at: created * S,
            started_at: created * S,
            finished_at: if state == ContainerState::Exited {
                created * S + S
            } else {
                0
            },
            exit_code: exit,
            reason: String::new(),
            message: String::new(),
            image: "i:1".into(),
            image_ref: String::new(),
            hash: hash_container(spec),
            restart_count: 0,
            resources: spec.resources.clone(),
            user: None,
        }
    }

    fn status(sandboxes: Vec<SandboxStatus>, containers: Vec<ContainerStatus>) -> PodStatus {
        let mut s = PodStatus {
            uid: "u".into(),
            sandboxes,
            containers,
            ..Default::default()
        };
        s.sort();
        s
    }

    fn compute(pod: &Pod, st: &PodStatus) -> PodActions {
        compute_pod_actions(pod, st, &ProbeResults::new(), &Backoff::new(), 1_000 * S)
    }

    #[test]
    fn an_upgraded_kubelet_keeps_containers_its_predecessor_hashed_whole() {
        let p = pod("Always", &[], &["a"]);
        let mut c = ctr(&p, "a", ContainerState::Running, 0, 1);
        c.hash = legacy_hash_container(&app_containers(&p)[0]);
        // Started before resources were recorded: no resize either.
        c.resources = None;
        let a = compute(&p, &status(vec![sandbox("sb", true, 0)], vec![c.clone()]));
        assert!(a.is_noop(), "{a:?}");
        // Another image is another container, under either hash.
        let mut p2 = p.clone();
        p2.spec.as_mut().unwrap().containers[0].image = Some("i:2".into());
        let a = compute(&p2, &status(vec![sandbox("sb", true, 0)], vec![c]));
        assert_eq!(
            a.containers_to_kill[0].reason,
            "Container a definition changed"
        );
        assert_eq!(a.containers_to_start, [0]);
    }

    use ContainerState::*;

    #[test]
    fn new_pod_creates_sandbox_and_starts_everything() {
        let p = pod("Always", &[], &["a", "b"]);
        let a = compute(&p, &PodStatus::default());
        assert!(a.create_sandbox && !a.kill_pod, "nothing to kill yet");
        assert_eq!(a.attempt, 0);
        assert_eq!(a.containers_to_start, vec![0, 1]);
    }

    #[test]
    fn healthy_pod_is_left_alone() {
        let p = pod("Always", &[], &["a", "b"]);
        let st = status(
            vec![sandbox("sb", true, 0)],
            vec![ctr(&p, "a", Running, 0, 1), ctr(&p, "b", Running, 0, 1)],
        );
        let a = compute(&p, &st);
        assert!(a.is_noop(), "{a:?}");
        assert_eq!(a.sandbox_id.as_deref(), Some("sb"));
    }

    #[test]
    fn dead_sandbox_is_recreated_with_next_attempt() {
        let p = pod("Always", &[], &["a"]);
        let st = status(
            vec![sandbox("sb", false, 2)],
            vec![ctr(&p, "a", Exited, 137, 1)],
        );
        let a = compute(&p, &st);
        assert!(a.create_sandbox && !a.kill_pod);
        assert_eq!(a.attempt, 3);
        assert_eq!(a.containers_to_start, vec![0]);
        // A dead sandbox with a container still running: stop it first.
        let st = status(
            vec![sandbox("sb", false, 2)],
            vec![ctr(&p, "a", Running, 0, 1)],
        );
        let a = compute(&p, &st);
        assert!(a.create_sandbox && a.kill_pod);
        // A ready sandbox without an IP is recreated too.
        let mut sb = sandbox("sb", true, 0);
        sb.ips.clear();
        let a = compute(&p, &status(vec![sb.clone()], vec![]));
        assert!(a.create_sandbox);
        assert_eq!(a.attempt, 1);
        // ...unless the pod uses the host network.
        let mut host = p.clone();
        host.spec.as_mut().unwrap().host_network = Some(true);
        let a = compute(&host, &status(vec![sb], vec![]));
        assert!(!a.create_sandbox);
        assert_eq!(a.containers_to_start, vec![0]);
    }

    #[test]
    fn two_ready_sandboxes_are_reconciled() {
        let p = pod("Always", &[], &["a"]);
        let st = status(vec![sandbox("s1", true, 0), sandbox("s2", true, 1)], vec![]);
        let a = compute(&p, &st);
        assert!(a.create_sandbox && a.kill_pod);
        assert_eq!(a.attempt, 2);
    }

    #[test]
    fn restart_policies_for_exited_containers() {
        for (policy, exit, restart) in [
            ("Always", 0, true),
            ("Always", 1, true),
            ("OnFailure", 0, false),
            ("OnFailure", 1, true),
            ("Never", 0, false),
            ("Never", 1, false),
        ] {
            let p = pod(policy, &[], &["a", "b"]);
            let st = status(
                vec![sandbox("sb", true, 0)],
                vec![ctr(&p, "a", Exited, exit, 1), ctr(&p, "b", Running, 0, 1)],
            );
            let a = compute(&p, &st);
            assert_eq!(
                a.containers_to_start == vec![0],
                restart,
                "{policy} exit {exit}"
            );
            assert!(!a.kill_pod && !a.create_sandbox);
        }
    }

    #[test]
    fn finished_pod_stops_its_sandbox_and_stays_finished() {
        for (policy, exit) in [("OnFailure", 0), ("Never", 0), ("Never", 1)] {
            let p = pod(policy, &[], &["a"]);
            let st = status(
                vec![sandbox("sb", true, 0)],
                vec![ctr(&p, "a", Exited, exit, 1)],
            );
            let a = compute(&p, &st);
            assert!(a.kill_pod && !a.create_sandbox, "{policy} {exit}: {a:?}");
            assert!(a.containers_to_start.is_empty());
            // Once the sandbox is down nothing more happens.
            let st = status(
                vec![sandbox("sb", false, 0)],
                vec![ctr(&p, "a", Exited, exit, 1)],
            );
            let a = compute(&p, &st);
            assert!(a.is_noop(), "{policy} {exit}: {a:?}");
        }
    }

    #[test]
    fn on_failure_recreated_sandbox_skips_succeeded_containers() {
        let p = pod("OnFailure", &[], &["a", "b"]);
        let st = status(
            vec![sandbox("sb", false, 0)],
            vec![ctr(&p, "a", Exited, 0, 1), ctr(&p, "b", Exited, 2, 1)],
        );
        let a = compute(&p, &st);
        assert!(a.create_sandbox);
        assert_eq!(a.containers_to_start, vec![1]);
    }

    #[test]
    fn init_containers_run_in_order() {
        let p = pod("Always", &["i1", "i2"], &["a"]);
        // New pod: sandbox, then the first init container only.
        let a = compute(&p, &PodStatus::default());
        assert!(a.create_sandbox);
        assert_eq!(a.next_init_container, Some(0));
        assert!(a.containers_to_start.is_empty());
        let sb = || vec![sandbox("sb", true, 0)];
        // i1 running: wait.
        let a = compute(&p, &status(sb(), vec![ctr(&p, "i1", Running, 0, 1)]));
        assert!(a.is_noop(), "{a:?}");
        // i1 done: i2.
        let a = compute(&p, &status(sb(), vec![ctr(&p, "i1", Exited, 0, 1)]));
        assert_eq!(a.next_init_container, Some(1));
        // Both done: app containers.
        let st = status(
            sb(),
            vec![ctr(&p, "i1", Exited, 0, 1), ctr(&p, "i2", Exited, 0, 2)],
        );
        let a = compute(&p, &st);
        assert_eq!(a.next_init_container, None);
        assert_eq!(a.containers_to_start, vec![0]);
        // App running, init containers gone (removed): still done.
        let a = compute(&p, &status(sb(), vec![ctr(&p, "a", Running, 0, 3)]));
        assert!(a.is_noop(), "{a:?}");
    }

    #[test]
    fn failing_init_container_blocks_apps() {
        let p = pod("Always", &["i1", "i2"], &["a"]);
        let sb = || vec![sandbox("sb", true, 0)];
        let st = status(
            sb(),
            vec![ctr(&p, "i1", Exited, 0, 1), ctr(&p, "i2", Exited, 3, 2)],
        );
        let a = compute(&p, &st);
        assert_eq!(a.next_init_container, Some(1));
        assert!(a.containers_to_start.is_empty());
        // With back-off in force the restart waits, apps still blocked.
        let mut b = Backoff::new();
        let i2 = &init_containers(&p)[1];
        let key = backoff::key(
            p.metadata.uid.as_deref().unwrap(),
            "i2",
            &hash_container(i2),
        );
        b.next(&key, 2 * S, 3 * S, 3 * S);
        let a = compute_pod_actions(&p, &st, &ProbeResults::new(), &b, 5 * S);
        assert_eq!(a.next_init_container, None);
        assert!(a.containers_to_start.is_empty());
        assert_eq!(a.backoff[0].name, "i2");
        assert_eq!(a.backoff[0].remaining, 8 * S);
        // restartPolicy Never: the pod fails.
        let p = pod("Never", &["i1"], &["a"]);
        let st = status(sb(), vec![ctr(&p, "i1", Exited, 1, 1)]);
        let a = compute(&p, &st);
        assert!(a.kill_pod);
        assert!(a.next_init_container.is_none() && a.containers_to_start.is_empty());
    }

    #[test]
    fn crash_loop_backoff_holds_restarts() {
        let p = pod("Always", &[], &["a"]);
        let uid = p.metadata.uid.clone().unwrap();
        let c = &app_containers(&p)[0];
        let key = backoff::key(&uid, "a", &hash_container(c));
        let mut st = status(
            vec![sandbox("sb", true, 0)],
            vec![ctr(&p, "a", Exited, 1, 100)],
        );
        let (started, finished) = (100 * S, 101 * S);
        let mut b = Backoff::new();
        // First crash: immediate restart.
        let a = compute_pod_actions(&p, &st, &ProbeResults::new(), &b, finished);
        assert_eq!(a.containers_to_start, vec![0]);
        b.next(&key, started, finished, finished);
        // Crashes again right away: 10 s.
        st.containers[0].started_at = 102 * S;
        st.containers[0].finished_at = 103 * S;
        let a = compute_pod_actions(&p, &st, &ProbeResults::new(), &b, 104 * S);
        assert!(a.containers_to_start.is_empty());
        assert_eq!(
            a.backoff,
            vec![BackoffWait {
                name: "a".into(),
                remaining: 9 * S,
                period: 10 * S
            }]
        );
        assert!(!a.kill_pod, "a container in back-off keeps the pod up");
        let a = compute_pod_actions(&p, &st, &ProbeResults::new(), &b, 113 * S);
        assert_eq!(a.containers_to_start, vec![0]);
        b.next(&key, 102 * S, 103 * S, 113 * S);
        // Next crash: 20 s.
        st.containers[0].started_at = 114 * S;
        st.containers[0].finished_at = 115 * S;
        let a = compute_pod_actions(&p, &st, &ProbeResults::new(), &b, 115 * S);
        assert_eq!(a.backoff[0].remaining, 20 * S);
        // After ten minutes of running, no back-off.
        st.containers[0].finished_at = 114 * S + backoff::RESET_AFTER_RUNNING;
        let a = compute_pod_actions(
            &p,
            &st,
            &ProbeResults::new(),
            &b,
            st.containers[0].finished_at,
        );
        assert_eq!(a.containers_to_start, vec![0]);
    }

    #[test]
    fn changed_spec_restarts_running_container_without_backoff() {
        let p = pod("Always", &[], &["a"]);
        let mut c = ctr(&p, "a", Running, 0, 1);
        c.hash = "deadbeef".into();
        let a = compute(&p, &status(vec![sandbox("sb", true, 0)], vec![c]));
        assert_eq!(a.containers_to_kill.len(), 1);
        assert_eq!(a.containers_to_start, vec![0]);
    }

    #[test]
    fn never_policy_does_not_recreate_a_sandbox_that_ran() {
        let p = pod("Never", &[], &["a"]);
        let st = status(
            vec![sandbox("sb", false, 0)],
            vec![ctr(&p, "a", Exited, 0, 1)],
        );
        let a = compute(&p, &st);
        assert!(!a.create_sandbox);
        assert!(a.is_noop());
    }
}
