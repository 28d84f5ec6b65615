//! Pod status generation (upstream `generateAPIPodStatus`): phase, conditions
//! (PodReadyToStartContainers, Initialized, Ready with readiness gates, ContainersReady,
//! PodScheduled), container statuses with state, restart count, last termination state,
//! resources and volume mounts, pod IPs from the sandbox, observedGeneration. A pure function
//! of the pod, the runtime's view and the back-off waits.

use std::collections::HashMap;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState as ApiState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus as ApiContainerStatus, HostIP, Pod, PodCondition, PodIP,
    PodStatus as ApiPodStatus, ResourceRequirements, VolumeMountStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::container::{ContainerState, ContainerStatus, Nanos, PodStatus};
use crate::kuberuntime::actions::BackoffWait;
use crate::pod_util::{
    app_containers, ephemeral_containers, init_containers, is_sidecar, restart_policy, sidecars,
    RestartPolicy,
};

/// The runtime prefix of container IDs in status (`containerd://<id>`).
pub(crate) const CONTAINER_ID_PREFIX: &str = "containerd://";

fn time(n: Nanos) -> Option<Time> {
    if n <= 0 {
        return None;
    }
    Timestamp::from_nanosecond(n as i128).ok().map(Time)
}

fn terminated(c: &ContainerStatus) -> ContainerStateTerminated {
    let reason = if !c.reason.is_empty() {
        c.reason.clone()
    } else if c.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    ContainerStateTerminated {
        exit_code: c.exit_code,
        reason: Some(reason),
        message: (!c.message.is_empty()).then(|| c.message.clone()),
        started_at: time(c.started_at),
        finished_at: time(c.finished_at),
        container_id: Some(format!("{CONTAINER_ID_PREFIX}{}", c.id)),
        signal: None,
    }
}

fn waiting(reason: &str, message: Option<String>) -> ApiState {
    ApiState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    }
}

fn container_status(
    spec: &Container,
    runtime: &PodStatus,
    inputs: &StatusInputs,
    waiting_reason: &str,
    is_init: bool,
) -> ApiContainerStatus {
    let backoff = inputs.backoff;
    // A failed start (image missing, create error...) is what the container waits on.
    let failed = inputs.reasons.and_then(|r| r.get(&spec.name));
    let waiting_state = || match failed {
        Some((reason, message)) => waiting(reason, Some(message.clone())),
        None => waiting(waiting_reason, None),
    };
    let mut instances = runtime.containers_named(&spec.name);
    let latest = instances.next();
    let previous = instances.next();
    let mut s = ApiContainerStatus {
        name: spec.name.clone(),
        image: spec.image.clone().unwrap_or_default(),
        image_id: String::new(),
        ready: false,
        restart_count: 0,
        volume_mounts: volume_mounts(spec),
        ..Default::default()
    };
    let Some(latest) = latest else {
        s.state = Some(waiting_state());
        return s;
    };
    s.restart_count = latest.restart_count as i32;
    // The spec is the allocated one; a running instance shows what was applied to it (an
    // in-place resize in progress shows the old size until it is done).
    let (resources_allocated, allocated) = resources(spec.resources.as_ref());
    s.resources = match (&latest.state, &latest.resources) {
        (ContainerState::Running, Some(actuated)) => resources(Some(actuated)).0,
        _ => resources_allocated,
    };
    s.allocated_resources = allocated;
    s.user = latest.user.clone();
    s.container_id = Some(format!("{CONTAINER_ID_PREFIX}{}", latest.id));
    s.image_id = latest.image_ref.clone();
    let prev_terminated = previous
        .filter(|p| p.state == ContainerState::Exited)
        .map(|p| ApiState {
            terminated: Some(terminated(p)),
            ..Default::default()
        });
    match latest.state {
        ContainerState::Running => {
            s.state = Some(ApiState {
                running: Some(ContainerStateRunning {
                    started_at: time(latest.started_at),
                }),
                ..Default::default()
            });
            s.last_state = prev_terminated;
            let probe = inputs.probes.and_then(|p| p.get(&latest.id));
            // The startup probe gates readiness; a readiness probe must succeed first.
            let started =
                spec.startup_probe.is_none() || probe.and_then(|p| p.started).unwrap_or(false);
            let ready =
                spec.readiness_probe.is_none() || probe.and_then(|p| p.ready).unwrap_or(false);
            // An init container is never ready, a sidecar is as an app container is.
            s.ready = (!is_init || is_sidecar(spec)) && started && ready;
            s.started = Some(started);
        }
        ContainerState::Exited => {
            let waits = backoff.iter().find(|w| w.name == spec.name);
            if let Some(w) = waits {
                s.state = Some(waiting(
                    "CrashLoopBackOff",
                    Some(format!(
                        "back-off {}s restarting failed container={} pod={}",
                        w.period / crate::container::NANOS_PER_SEC,
                        spec.name,
                        runtime.name
                    )),
                ));
                s.last_state = Some(ApiState {
                    terminated: Some(terminated(latest)),
                    ..Default::default()
                });
            } else if failed.is_some() {
                s.state = Some(waiting_state());
                s.last_state = Some(ApiState {
                    terminated: Some(terminated(latest)),
                    ..Default::default()
                });
            } else {
                s.state = Some(ApiState {
                    terminated: Some(terminated(latest)),
                    ..Default::default()
                });
                s.last_state = prev_terminated;
                // A finished init container counts as ready, as upstream.
                s.ready = is_init && latest.exit_code == 0;
            }
            s.started = Some(false);
        }
        ContainerState::Created | ContainerState::Unknown => {
            s.state = Some(waiting_state());
            s.last_state = prev_terminated;
        }
    }
    // A container the kubelet killed for a failed probe says so.
    if let Some(probes) = inputs.probes {
        for st in [s.state.as_mut(), s.last_state.as_mut()]
            .into_iter()
            .flatten()
        {
            if let Some(t) = st.terminated.as_mut() {
                let id = t
                    .container_id
                    .as_deref()
                    .and_then(|i| i.strip_prefix(CONTAINER_ID_PREFIX))
                    .unwrap_or("");
                if let Some(msg) = probes.get(id).and_then(|p| p.killed.clone()) {
                    if t.message.is_none() {
                        t.message = Some(msg);
                    }
                }
            }
        }
    }
    s
}

/// The container's mounts as status reports them (upstream 1.30+).
fn volume_mounts(spec: &Container) -> Option<Vec<VolumeMountStatus>> {
    let mounts = spec.volume_mounts.as_ref()?;
    Some(
        mounts
            .iter()
            .map(|m| VolumeMountStatus {
                name: m.name.clone(),
                mount_path: m.mount_path.clone(),
                read_only: m.read_only.filter(|r| *r),
                recursive_read_only: m.recursive_read_only.clone(),
            })
            .collect(),
    )
}

/// `resources` (requests and limits of cpu and memory) and `allocatedResources` (the
/// requests) of a started container, as upstream reports them for in-place resize.
fn resources(
    r: Option<&ResourceRequirements>,
) -> (
    Option<ResourceRequirements>,
    Option<BTreeMap<String, Quantity>>,
) {
    let keep = |m: Option<&BTreeMap<String, Quantity>>| -> Option<BTreeMap<String, Quantity>> {
        let out: BTreeMap<String, Quantity> = m?
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "cpu" | "memory"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (!out.is_empty()).then_some(out)
    };
    // API defaulting: a limit without a request makes the request.
    let requests = keep(r.and_then(|r| r.requests.as_ref()))
        .or_else(|| keep(r.and_then(|r| r.limits.as_ref())));
    let limits = keep(r.and_then(|r| r.limits.as_ref()));
    // Always present, if empty, as upstream's: a 1.33+ API server takes a container status
    // without it for a node that cannot resize, and refuses every resize of the pod.
    let resources = ResourceRequirements {
        requests: requests.clone(),
        limits,
        ..Default::default()
    };
    (Some(resources), requests)
}

/// Upstream's PodResizePending (a resize the node cannot take now) and PodResizeInProgress
/// (allocated, not yet applied to every running container, or failed), present only while
/// true.
fn resize_conditions(pod: &Pod, runtime: &PodStatus, inputs: &StatusInputs) -> Vec<PodCondition> {
    use crate::allocation_manager::cpu_memory;
    let mut out = Vec::new();
    let generation = pod.metadata.generation;
    if let Some(p) = &inputs.resize.pending {
        out.push(PodCondition {
            observed_generation: generation,
            ..condition(
                "PodResizePending",
                true,
                Some((p.reason, p.message.clone())),
                inputs.previous,
                inputs.now,
            )
        });
    }
    let resizable = app_containers(pod)
        .iter()
        .chain(sidecars(pod).map(|(_, c)| c));
    let unapplied = resizable.into_iter().any(|c| {
        runtime.find_container(&c.name).is_some_and(|s| {
            s.state == ContainerState::Running
                && s.resources
                    .as_ref()
                    .is_some_and(|a| cpu_memory(Some(a)) != cpu_memory(c.resources.as_ref()))
        })
    });
    if unapplied || inputs.resize.error.is_some() {
        let why = inputs.resize.error.clone().map(|e| ("Error", e));
        out.push(PodCondition {
            observed_generation: generation,
            ..condition(
                "PodResizeInProgress",
                true,
                why,
                inputs.previous,
                inputs.now,
            )
        });
    }
    out
}

/// Upstream's `getPhase` over generated statuses.
pub(crate) fn phase(
    pod: &Pod,
    init: &[ApiContainerStatus],
    apps: &[ApiContainerStatus],
) -> &'static str {
    let policy = restart_policy(pod);
    let (mut pending_init, mut failed_init) = (0, 0);
    for (c, s) in init_containers(pod).iter().zip(init) {
        let st = s.state.clone().unwrap_or_default();
        if is_sidecar(c) {
            // A sidecar holds the pod Pending until it has started; once it ran, its exits
            // do not count (upstream's getPhase).
            let started = st.running.is_some() && s.started == Some(true);
            let ran = st.terminated.is_some()
                || s.last_state
                    .as_ref()
                    .and_then(|l| l.terminated.as_ref())
                    .is_some();
            if !started && !ran {
                pending_init += 1;
            }
            continue;
        }
        let last_exit = s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .map(|t| t.exit_code);
        if st.running.is_some() {
            pending_init += 1;
        } else if let Some(t) = &st.terminated {
            if t.exit_code != 0 {
                pending_init += 1;
                failed_init += 1;
            }
        } else if st.waiting.is_some() {
            match last_exit {
                Some(0) => {}
                Some(_) => {
                    pending_init += 1;
                    failed_init += 1;
                }
                None => pending_init += 1,
            }
        } else {
            pending_init += 1;
        }
    }
    let (mut running, mut waiting_n, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in apps {
        let st = s.state.clone().unwrap_or_default();
        if st.running.is_some() {
            running += 1;
        } else if let Some(t) = &st.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_some()
        {
            stopped += 1;
        } else {
            waiting_n += 1;
        }
    }
    if failed_init > 0 && policy == RestartPolicy::Never {
        return "Failed";
    }
    if pending_init > 0 || waiting_n > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        return match policy {
            RestartPolicy::Always => "Running",
            _ if stopped == succeeded => "Succeeded",
            RestartPolicy::Never => "Failed",
            RestartPolicy::OnFailure => "Running",
        };
    }
    "Pending"
}

fn condition(
    kind: &str,
    ok: bool,
    why: Option<(&str, String)>,
    previous: Option<&ApiPodStatus>,
    now: Nanos,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // Keep the transition time while the status stays the same.
    let prev = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind));
    let last_transition_time = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => time(now),
    };
    let (reason, message) = match why {
        Some((reason, message)) => (
            Some(reason.to_owned()),
            (!message.is_empty()).then_some(message),
        ),
        None => (None, None),
    };
    PodCondition {
        type_: kind.into(),
        status: status.into(),
        reason,
        message,
        last_transition_time,
        ..Default::default()
    }
}

/// The containers among `statuses` that are not ready, as upstream's messages list them
/// (Go's `[a b]`).
fn not_ready(statuses: &[ApiContainerStatus]) -> Option<String> {
    let names: Vec<&str> = statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    (!names.is_empty()).then(|| format!("[{}]", names.join(" ")))
}

/// Initialized (upstream `GeneratePodInitializedCondition`): true when every init container
/// completed; a succeeded pod says PodCompleted; otherwise ContainersNotInitialized names
/// the incomplete ones.
fn initialized_condition(
    init: &[ApiContainerStatus],
    initialized: bool,
    phase: &str,
    prev: Option<&ApiPodStatus>,
    now: Nanos,
) -> PodCondition {
    if init.is_empty() {
        return condition("Initialized", true, None, prev, now);
    }
    if phase == "Succeeded" {
        let why = Some(("PodCompleted", String::new()));
        return condition("Initialized", true, why, prev, now);
    }
    match not_ready(init).filter(|_| !initialized) {
        Some(names) => {
            let why = (
                "ContainersNotInitialized",
                format!("containers with incomplete status: {names}"),
            );
            condition("Initialized", false, Some(why), prev, now)
        }
        None => condition("Initialized", true, None, prev, now),
    }
}

/// Ready (upstream `GeneratePodReadyCondition`): as ContainersReady while that is not True;
/// then every `readinessGates` condition (set on the pod by others) must be True, else
/// ReadinessGatesNotReady says which is not.
fn pod_ready_condition(
    pod: &Pod,
    containers_ready: &PodCondition,
    prev: Option<&ApiPodStatus>,
    now: Nanos,
) -> PodCondition {
    if containers_ready.status != "True" {
        let why = containers_ready.reason.as_deref().map(|r| {
            let message = containers_ready.message.clone().unwrap_or_default();
            (r, message)
        });
        return condition("Ready", false, why, prev, now);
    }
    let existing = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or(&[]);
    let mut unready = Vec::new();
    for gate in pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_deref())
        .unwrap_or(&[])
    {
        match existing.iter().find(|c| c.type_ == gate.condition_type) {
            None => unready.push(format!(
                "corresponding condition of pod readiness gate {:?} does not exist.",
                gate.condition_type
            )),
            Some(c) if c.status != "True" => unready.push(format!(
                "the status of pod readiness gate {:?} is not \"True\", but {}",
                gate.condition_type, c.status
            )),
            Some(_) => {}
        }
    }
    if unready.is_empty() {
        condition("Ready", true, None, prev, now)
    } else {
        let why = ("ReadinessGatesNotReady", unready.join(", "));
        condition("Ready", false, Some(why), prev, now)
    }
}

/// ContainersReady (upstream `GenerateContainersReadyCondition`): a succeeded pod says
/// PodCompleted; otherwise ContainersNotReady names the unready containers.
fn ready_condition(
    kind: &str,
    apps: &[ApiContainerStatus],
    phase: &str,
    prev: Option<&ApiPodStatus>,
    now: Nanos,
) -> PodCondition {
    if phase == "Succeeded" {
        let why = Some(("PodCompleted", String::new()));
        return condition(kind, false, why, prev, now);
    }
    match not_ready(apps) {
        Some(names) => {
            let why = (
                "ContainersNotReady",
                format!("containers with unready status: {names}"),
            );
            condition(kind, false, Some(why), prev, now)
        }
        None => condition(kind, true, None, prev, now),
    }
}

/// Why the last start of each container failed: name -> (waiting reason, message).
pub(crate) type StartFailures = HashMap<String, (String, String)>;

/// Everything `generate` needs besides the pod and the runtime's view.
#[derive(Debug, Clone, Default)]
pub(crate) struct StatusInputs<'a> {
    pub(crate) backoff: &'a [BackoffWait],
    /// Why the last start of a container failed: name -> (reason, message).
    pub(crate) reasons: Option<&'a StartFailures>,
    /// The node's IPs, the primary first.
    pub(crate) node_ips: Vec<String>,
    pub(crate) previous: Option<&'a ApiPodStatus>,
    pub(crate) now: Nanos,
    /// Probe results by container ID (None: no probes known).
    pub(crate) probes: Option<&'a crate::prober::ProbeResults>,
    /// A resize that waits, and the last resize error (in-place resize conditions).
    pub(crate) resize: ResizeInputs,
}

/// What the allocation manager knows of a pod's resize.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResizeInputs {
    pub(crate) pending: Option<crate::allocation_manager::ResizePending>,
    pub(crate) error: Option<String>,
}

/// Generates the API status of a pod from the runtime's view of it.
pub(crate) fn generate(pod: &Pod, runtime: &PodStatus, inputs: &StatusInputs) -> ApiPodStatus {
    let init_statuses: Vec<ApiContainerStatus> = init_containers(pod)
        .iter()
        .map(|c| container_status(c, runtime, inputs, "PodInitializing", true))
        .collect();
    let has_sidecars = sidecars(pod).next().is_some();
    // Regular init containers succeeded and sidecars started (past their startup probe);
    // or app containers ran already.
    let initialized = init_containers(pod)
        .iter()
        .zip(&init_statuses)
        .all(|(c, s)| {
            let st = s.state.as_ref();
            if is_sidecar(c) {
                st.is_some_and(|st| st.running.is_some()) && s.started == Some(true)
            } else {
                st.and_then(|st| st.terminated.as_ref())
                    .is_some_and(|t| t.exit_code == 0)
            }
        })
        || app_containers(pod).iter().any(|c| {
            runtime
                .find_container(&c.name)
                .is_some_and(|s| has_sidecars || s.state == ContainerState::Running)
        });
    let app_reason = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let app_statuses: Vec<ApiContainerStatus> = app_containers(pod)
        .iter()
        .map(|c| container_status(c, runtime, inputs, app_reason, false))
        .collect();
    let phase = phase(pod, &init_statuses, &app_statuses);
    // Ephemeral containers are never ready and leave the phase alone.
    let ephemeral_statuses: Vec<ApiContainerStatus> = ephemeral_containers(pod)
        .iter()
        .map(|(c, _)| container_status(c, runtime, inputs, "ContainerCreating", true))
        .collect();
    let prev = inputs.previous;
    // A ready sandbox is one whose network is set up: containers can start in it.
    let sandbox_ready = runtime
        .sandboxes
        .iter()
        .any(|s| s.state == crate::container::SandboxState::Ready);
    // Sidecars count for readiness (listed first, as upstream).
    let ready_set: Vec<ApiContainerStatus> = init_containers(pod)
        .iter()
        .zip(&init_statuses)
        .filter(|(c, _)| is_sidecar(c))
        .map(|(_, s)| s.clone())
        .chain(app_statuses.iter().cloned())
        .collect();
    let containers_ready = ready_condition("ContainersReady", &ready_set, phase, prev, inputs.now);
    let generation = pod.metadata.generation;
    let mut conditions: Vec<PodCondition> = vec![
        condition(
            "PodReadyToStartContainers",
            sandbox_ready,
            None,
            prev,
            inputs.now,
        ),
        initialized_condition(&init_statuses, initialized, phase, prev, inputs.now),
        pod_ready_condition(pod, &containers_ready, prev, inputs.now),
        containers_ready,
        condition("PodScheduled", true, None, prev, inputs.now),
    ]
    .into_iter()
    .map(|c| PodCondition {
        observed_generation: generation,
        ..c
    })
    .collect();
    conditions.extend(resize_conditions(pod, runtime, inputs));
    let ips = crate::kuberuntime::status_pod_ips(pod, runtime, &inputs.node_ips);
    ApiPodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: inputs.node_ips.first().cloned(),
        host_ips: (!inputs.node_ips.is_empty()).then(|| {
            inputs
                .node_ips
                .iter()
                .map(|ip| HostIP { ip: ip.clone() })
                .collect()
        }),
        pod_ip: ips.first().cloned(),
        pod_ips: (!ips.is_empty()).then(|| ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        start_time: prev
            .and_then(|p| p.start_time.clone())
            .or_else(|| time(inputs.now)),
        container_statuses: Some(app_statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        ephemeral_container_statuses: (!ephemeral_statuses.is_empty())
            .then_some(ephemeral_statuses),
        qos_class: Some(crate::resources::pod_qos(pod).as_str().into()),
        observed_generation: generation,
        ..Default::default()
    }
}

/// The status of a pod admission rejected (phase Failed with the reason).
pub(crate) fn rejected(pod: &Pod, reason: &str, message: &str, now: Nanos) -> ApiPodStatus {
    ApiPodStatus {
        phase: Some("Failed".into()),
        reason: Some(reason.into()),
        message: Some(format!("Pod was rejected: {message}")),
        start_time: time(now),
        qos_class: Some(crate::resources::pod_qos(pod).as_str().into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{SandboxState, SandboxStatus, NANOS_PER_SEC as S};
    use crate::kuberuntime::labels::hash_container;
    use crate::testutil::pod;
    use ContainerState::*;

    fn ctr(
        name: &str,
        state: ContainerState,
        exit: i32,
        created: i64,
        restarts: u32,
    ) -> ContainerStatus {
        ContainerStatus {
            id: format!("{name}{created}"),
            name: name.into(),
            sandbox_id: "sb".into(),
            state,
            created_at: created * S,
            started_at: created * S,
            finished_at: if state == Exited { created * S + S } else { 0 },
            exit_code: exit,
            reason: String::new(),
            message: String::new(),
            image: "i:1".into(),
            image_ref: "sha256:x".into(),
            hash: hash_container(&Container {
                name: name.into(),
                ..Default::default()
            }),
            restart_count: restarts,
            resources: None,
            user: None,
        }
    }

    fn runtime(containers: Vec<ContainerStatus>) -> PodStatus {
        let mut s = PodStatus {
            uid: "u".into(),
            name: "p-n".into(),
            namespace: "default".into(),
            sandboxes: vec![SandboxStatus {
                id: "sb".into(),
                state: SandboxState::Ready,
                attempt: 0,
                created_at: S,
                ips: vec!["10.1.0.5".into()],
            }],
            containers,
        };
        s.sort();
        s
    }

    fn gen(p: &Pod, r: &PodStatus, backoff: &[BackoffWait]) -> ApiPodStatus {
        generate(
            p,
            r,
            &StatusInputs {
                backoff,
                reasons: None,
                node_ips: vec!["10.0.0.1".into()],
                previous: None,
                now: 100 * S,
                probes: None,
                resize: Default::default(),
            },
        )
    }

    fn cond(s: &ApiPodStatus, kind: &str) -> String {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == kind)
            .unwrap()
            .status
            .clone()
    }

    #[test]
    fn running_pod() {
        let p = pod("Always", &[], &["a"]);
        let s = gen(&p, &runtime(vec![ctr("a", Running, 0, 5, 0)]), &[]);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.1.0.5"));
        assert_eq!(s.host_ip.as_deref(), Some("10.0.0.1"));
        for c in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert_eq!(cond(&s, c), "True", "{c}");
        }
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready);
        assert!(cs.state.as_ref().unwrap().running.is_some());
        assert_eq!(cs.container_id.as_deref(), Some("containerd://a5"));
    }

    #[test]
    fn host_network_pod_reports_the_node_ip() {
        let mut p = pod("Always", &[], &["a"]);
        let mut r = runtime(vec![ctr("a", Running, 0, 5, 0)]);
        r.sandboxes[0].ips.clear();
        // Pod network without an address yet: no pod IP.
        assert_eq!(gen(&p, &r, &[]).pod_ip, None);
        p.spec.as_mut().unwrap().host_network = Some(true);
        let s = gen(&p, &r, &[]);
        assert_eq!(s.pod_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(s.pod_ips.unwrap()[0].ip, "10.0.0.1");
    }

    #[test]
    fn a_dual_stack_node_reports_both_host_ips() {
        let mut p = pod("Always", &[], &["a"]);
        let mut r = runtime(vec![ctr("a", Running, 0, 5, 0)]);
        r.sandboxes[0].ips.clear();
        p.spec.as_mut().unwrap().host_network = Some(true);
        let s = generate(
            &p,
            &r,
            &StatusInputs {
                node_ips: vec!["10.0.0.1".into(), "fd00::1".into()],
                now: 100 * S,
                ..Default::default()
            },
        );
        assert_eq!(s.host_ip.as_deref(), Some("10.0.0.1"));
        let host_ips: Vec<String> = s.host_ips.unwrap().into_iter().map(|h| h.ip).collect();
        assert_eq!(host_ips, ["10.0.0.1", "fd00::1"]);
        let pod_ips: Vec<String> = s.pod_ips.unwrap().into_iter().map(|h| h.ip).collect();
        assert_eq!(pod_ips, ["10.0.0.1", "fd00::1"]);
    }

    #[test]
    fn pending_pod_without_containers() {
        let p = pod("Always", &[], &["a"]);
        let s = gen(&p, &runtime(vec![]), &[]);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s, "Ready"), "False");
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        let w = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(w.reason.as_deref(), Some("ContainerCreating"));
    }

    #[test]
    fn crash_loop_shows_waiting_with_last_state() {
        let p = pod("Always", &[], &["a"]);
        let r = runtime(vec![ctr("a", Exited, 1, 5, 2), ctr("a", Exited, 1, 3, 1)]);
        let wait = [BackoffWait {
            name: "a".into(),
            remaining: 5 * S,
            period: 20 * S,
        }];
        let s = gen(&p, &r, &wait);
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 2);
        let w = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
        assert!(w.message.as_ref().unwrap().contains("back-off 20s"));
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(last.exit_code, 1);
        assert_eq!(last.reason.as_deref(), Some("Error"));
        assert_eq!(s.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn restarted_container_has_previous_termination() {
        let p = pod("Always", &[], &["a"]);
        let r = runtime(vec![ctr("a", Running, 0, 5, 1), ctr("a", Exited, 7, 3, 0)]);
        let s = gen(&p, &r, &[]);
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 1);
        assert_eq!(
            cs.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            7
        );
    }

    #[test]
    fn phases_of_finished_pods() {
        for (policy, exit, phase) in [
            ("OnFailure", 0, "Succeeded"),
            ("Never", 0, "Succeeded"),
            ("Never", 1, "Failed"),
            ("Always", 0, "Running"),
            ("OnFailure", 1, "Running"),
        ] {
            let p = pod(policy, &[], &["a"]);
            let s = gen(&p, &runtime(vec![ctr("a", Exited, exit, 5, 0)]), &[]);
            assert_eq!(s.phase.as_deref(), Some(phase), "{policy} {exit}");
            let t = s.container_statuses.as_ref().unwrap()[0]
                .state
                .as_ref()
                .unwrap()
                .terminated
                .clone()
                .unwrap();
            assert_eq!(t.exit_code, exit);
            assert_eq!(
                t.reason.as_deref(),
                Some(if exit == 0 { "Completed" } else { "Error" })
            );
        }
    }

    #[test]
    fn init_containers_gate_initialized() {
        let p = pod("Always", &["i"], &["a"]);
        let s = gen(&p, &runtime(vec![ctr("i", Running, 0, 5, 0)]), &[]);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s, "Initialized"), "False");
        let app = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            app.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("PodInitializing")
        );
        let s = gen(
            &p,
            &runtime(vec![ctr("i", Exited, 0, 5, 0), ctr("a", Running, 0, 7, 0)]),
            &[],
        );
        assert_eq!(cond(&s, "Initialized"), "True");
        assert_eq!(s.phase.as_deref(), Some("Running"));
        // A failed init container with restartPolicy Never fails the pod.
        let p = pod("Never", &["i"], &["a"]);
        let s = gen(&p, &runtime(vec![ctr("i", Exited, 1, 5, 0)]), &[]);
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(cond(&s, "Initialized"), "False");
    }

    fn full_cond(s: &ApiPodStatus, kind: &str) -> (String, Option<String>, Option<String>) {
        let c = s
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind)
            .unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn conditions_name_the_containers_they_wait_for() {
        // Two init containers, the first crash-looping: both are incomplete.
        let p = pod("Always", &["init1", "init2"], &["run1"]);
        let s = gen(&p, &runtime(vec![ctr("init1", Exited, 1, 5, 6)]), &[]);
        assert_eq!(
            full_cond(&s, "Initialized"),
            (
                "False".into(),
                Some("ContainersNotInitialized".into()),
                Some("containers with incomplete status: [init1 init2]".into())
            )
        );
        assert_eq!(
            full_cond(&s, "Ready"),
            (
                "False".into(),
                Some("ContainersNotReady".into()),
                Some("containers with unready status: [run1]".into())
            )
        );
        // RestartPolicy Never: the first succeeded, the second failed; the pod fails.
        let p = pod("Never", &["init1", "init2"], &["run1"]);
        let s = gen(
            &p,
            &runtime(vec![
                ctr("init1", Exited, 0, 5, 6),
                ctr("init2", Exited, 1, 7, 8),
            ]),
            &[],
        );
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        let (_, reason, message) = full_cond(&s, "Initialized");
        assert_eq!(reason.as_deref(), Some("ContainersNotInitialized"));
        assert_eq!(
            message.as_deref(),
            Some("containers with incomplete status: [init2]")
        );
        // A succeeded pod: Initialized true, Ready false, both PodCompleted.
        let p = pod("Never", &["init1"], &["run1"]);
        let s = gen(
            &p,
            &runtime(vec![
                ctr("init1", Exited, 0, 5, 6),
                ctr("run1", Exited, 0, 7, 8),
            ]),
            &[],
        );
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        assert_eq!(
            full_cond(&s, "Initialized"),
            ("True".into(), Some("PodCompleted".into()), None)
        );
        assert_eq!(
            full_cond(&s, "ContainersReady"),
            ("False".into(), Some("PodCompleted".into()), None)
        );
    }

    #[test]
    fn readiness_gates_hold_ready_back() {
        let mut p = pod("Always", &[], &["a"]);
        p.spec.as_mut().unwrap().readiness_gates =
            Some(vec![k8s_openapi::api::core::v1::PodReadinessGate {
                condition_type: "example.com/lb".into(),
            }]);
        let running = runtime(vec![ctr("a", Running, 0, 5, 0)]);
        let s = gen(&p, &running, &[]);
        assert_eq!(cond(&s, "ContainersReady"), "True");
        assert_eq!(
            full_cond(&s, "Ready"),
            (
                "False".into(),
                Some("ReadinessGatesNotReady".into()),
                Some("corresponding condition of pod readiness gate \"example.com/lb\" does not exist.".into())
            )
        );
        let gate = |status: &str| PodCondition {
            type_: "example.com/lb".into(),
            status: status.into(),
            ..Default::default()
        };
        p.status = Some(ApiPodStatus {
            conditions: Some(vec![gate("False")]),
            ..Default::default()
        });
        let (_, _, message) = full_cond(&gen(&p, &running, &[]), "Ready");
        assert_eq!(
            message.as_deref(),
            Some("the status of pod readiness gate \"example.com/lb\" is not \"True\", but False")
        );
        p.status = Some(ApiPodStatus {
            conditions: Some(vec![gate("True")]),
            ..Default::default()
        });
        assert_eq!(
            full_cond(&gen(&p, &running, &[]), "Ready"),
            ("True".into(), None, None)
        );
    }

    #[test]
    fn ready_to_start_containers_generation_resources_and_mounts() {
        let mut p = pod("Always", &[], &["a"]);
        p.metadata.generation = Some(3);
        let c = &mut p.spec.as_mut().unwrap().containers[0];
        c.resources = Some(ResourceRequirements {
            limits: Some(
                [("memory".to_string(), Quantity("64Mi".into()))]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        });
        c.volume_mounts = Some(vec![k8s_openapi::api::core::v1::VolumeMount {
            name: "data".into(),
            mount_path: "/data".into(),
            read_only: Some(true),
            ..Default::default()
        }]);
        // No sandbox yet: not ready to start containers.
        let mut no_sandbox = runtime(vec![]);
        no_sandbox.sandboxes.clear();
        let s = gen(&p, &no_sandbox, &[]);
        assert_eq!(cond(&s, "PodReadyToStartContainers"), "False");
        let s = gen(&p, &runtime(vec![ctr("a", Running, 0, 5, 0)]), &[]);
        assert_eq!(cond(&s, "PodReadyToStartContainers"), "True");
        assert_eq!(s.observed_generation, Some(3));
        assert!(s
            .conditions
            .iter()
            .flatten()
            .all(|c| c.observed_generation == Some(3)));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        let r = cs.resources.as_ref().unwrap();
        assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "64Mi");
        // The request defaults to the limit.
        assert_eq!(cs.allocated_resources.as_ref().unwrap()["memory"].0, "64Mi");
        let m = &cs.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (m.name.as_str(), m.mount_path.as_str(), m.read_only),
            ("data", "/data", Some(true))
        );
        // A container without resources still reports them (empty: a 1.33+ API server
        // reads a missing field as a node that cannot resize), and the runtime's user.
        let p2 = pod("Always", &[], &["a"]);
        let mut c = ctr("a", Running, 0, 5, 0);
        let user = k8s_openapi::api::core::v1::ContainerUser {
            linux: Some(k8s_openapi::api::core::v1::LinuxContainerUser {
                uid: 1000,
                gid: 1000,
                supplemental_groups: Some(vec![1000, 4]),
            }),
        };
        c.user = Some(user.clone());
        let s = gen(&p2, &runtime(vec![c]), &[]);
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.resources, Some(ResourceRequirements::default()));
        assert_eq!(cs.allocated_resources, None);
        assert_eq!(cs.user, Some(user));
    }

    #[test]
    fn failed_start_shows_its_reason() {
        let p = pod("Always", &[], &["a"]);
        let reasons = HashMap::from([(
            "a".to_string(),
            ("ErrImageNeverPull".to_string(), "image missing".to_string()),
        )]);
        let inputs = StatusInputs {
            reasons: Some(&reasons),
            ..Default::default()
        };
        let s = generate(&p, &runtime(vec![]), &inputs);
        let w = s.container_statuses.as_ref().unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert_eq!(w.reason.as_deref(), Some("ErrImageNeverPull"));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        // A restart that fails keeps the last termination.
        let s = generate(&p, &runtime(vec![ctr("a", Exited, 2, 5, 0)]), &inputs);
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.state.as_ref().unwrap().waiting.is_some());
        assert_eq!(
            cs.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            2
        );
    }

    #[test]
    fn transition_time_is_kept_while_status_holds() {
        let p = pod("Always", &[], &["a"]);
        let r = runtime(vec![ctr("a", Running, 0, 5, 0)]);
        let first = gen(&p, &r, &[]);
        let second = generate(
            &p,
            &r,
            &StatusInputs {
                previous: Some(&first),
                now: 500 * S,
                probes: None,
                ..Default::default()
            },
        );
        assert_eq!(first.conditions, second.conditions);
        assert_eq!(first.start_time, second.start_time);
    }
}
