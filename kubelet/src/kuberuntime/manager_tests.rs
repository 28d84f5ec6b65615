//! The runtime manager's decisions on the fake CRI runtime: what `apply_pod_actions` creates,
//! starts, kills and removes, container GC, and the status built from the runtime's view.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use nodus_proto::runtime::v1::ContainerState as CriState;

use super::actions::{compute_pod_actions, PodActions};
use super::sandbox::NodePaths;
use super::{RuntimeManager, StartResults};
use crate::backoff::Backoff;
use crate::container::{now_nanos, ContainerState, PodStatus, NANOS_PER_SEC};
use crate::kuberuntime::cri::fake::FakeRuntime;
use crate::kuberuntime::labels;
use crate::prober::{ContainerProbeState, ProbeKind, ProbeResults};
use crate::sources::{load_manifest, Source};
use crate::status_manager::{self, StatusInputs};

/// A runtime manager on a fresh fake runtime holding image `i:1`.
struct Node {
    fake: Arc<FakeRuntime>,
    rm: RuntimeManager,
    backoff: Mutex<Backoff>,
    probes: ProbeResults,
    dir: tempfile::TempDir,
}

/// A runtime manager on `fake` with its paths under `dir` and pod cgroups off (no root).
pub(crate) fn manager(fake: &Arc<FakeRuntime>, dir: &std::path::Path) -> RuntimeManager {
    let mut rm = RuntimeManager::new(
        fake.cri(),
        NodePaths {
            pod_logs_dir: dir.join("logs"),
            cgroup_root: "/nodus-unit".into(),
            dns: Default::default(),
            seccomp_profile_root: dir.join("root/seccomp"),
            seccomp_default: false,
        },
        dir.join("root"),
        dir.join("resolv.conf"),
    );
    rm.pod_cgroups = false;
    rm.userns = Some(
        crate::userns_manager::UsernsManager::new(
            dir.join("root/pods"),
            (65536, 110 * 65536),
            65536,
            110,
        )
        .unwrap(),
    );
    rm
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    fake.add_image("i:1", 100);
    Node {
        rm: manager(&fake, dir.path()),
        fake,
        backoff: Mutex::new(Backoff::new()),
        probes: ProbeResults::new(),
        dir,
    }
}

/// A pod from the `spec:` lines of a manifest (indented by two spaces).
fn pod_yaml(spec: &str) -> Pod {
    let text = format!("kind: Pod\nmetadata: {{name: p, namespace: n}}\nspec:\n{spec}");
    let (mut pods, errs) = load_manifest(&text, Source::File, "/m/p.yaml", "node");
    assert!(errs.is_empty(), "{errs:?}");
    pods.remove(0)
}

fn pod(policy: &str, inits: &[&str], apps: &[&str]) -> Pod {
    crate::testutil::pod(policy, inits, apps)
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap()
}

impl Node {
    async fn status(&self, p: &Pod) -> PodStatus {
        self.rm.get_pod_status(&uid(p)).await.unwrap()
    }

    async fn actions(&self, p: &Pod) -> (PodStatus, PodActions) {
        let st = self.status(p).await;
        let a = {
            let b = self.backoff.lock().unwrap();
            compute_pod_actions(p, &st, &self.probes, &b, now_nanos())
        };
        (st, a)
    }

    /// One sync as the pod worker runs it: status, actions, apply_pod_actions.
    async fn sync(&self, p: &Pod) -> (PodActions, StartResults) {
        let (st, a) = self.actions(p).await;
        let r = self
            .rm
            .apply_pod_actions(p, &st, &a, &self.backoff, &Default::default())
            .await
            .unwrap();
        (a, r)
    }

    /// (name, state, exit code) of every container the fake holds, oldest first.
    fn containers(&self) -> Vec<(String, CriState, i32)> {
        self.fake.containers()
    }

    fn names(&self, op: &str) -> Vec<String> {
        self.fake.calls_of(op)
    }

    fn id(&self, name: &str) -> String {
        self.fake.container_id(name).unwrap()
    }
}

fn running(name: &str) -> (String, CriState, i32) {
    (name.into(), CriState::ContainerRunning, 0)
}

fn exited(name: &str, code: i32) -> (String, CriState, i32) {
    (name.into(), CriState::ContainerExited, code)
}

#[tokio::test]
async fn new_pod_runs_a_sandbox_then_its_containers() {
    let n = node();
    let p = pod("Always", &[], &["a", "b"]);
    let (a, r) = n.sync(&p).await;
    assert!(a.create_sandbox);
    assert!(r.iter().all(|(_, r)| r.is_ok()), "{r:?}");
    assert_eq!(n.names("RunPodSandbox"), [p.metadata.name.clone().unwrap()]);
    let mut created = n.names("CreateContainer");
    created.sort();
    assert_eq!(created, ["a", "b"]);
    assert_eq!(n.fake.count("StartContainer"), 2);
    assert_eq!(n.containers().len(), 2);
    assert!(n
        .containers()
        .iter()
        .all(|c| c.1 == CriState::ContainerRunning));
    // The sandbox comes before any container.
    let calls = n.fake.calls();
    let run = calls.iter().position(|c| c.op == "RunPodSandbox").unwrap();
    let create = calls
        .iter()
        .position(|c| c.op == "CreateContainer")
        .unwrap();
    assert!(run < create);
}

#[tokio::test]
async fn containers_carry_upstream_labels_and_annotations() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    n.sync(&p).await;
    let ann = n.fake.container_annotations(&n.id("a"));
    assert_eq!(ann[labels::CONTAINER_RESTART_COUNT], "0");
    let spec = &p.spec.as_ref().unwrap().containers[0];
    assert_eq!(ann[labels::CONTAINER_HASH], labels::hash_container(spec));
    assert_eq!(ann[labels::CONTAINER_TYPE], labels::CONTAINER_TYPE_APP);
    // The runtime's view finds the container through the pod UID label.
    let st = n.status(&p).await;
    assert_eq!(st.containers.len(), 1);
    assert_eq!(st.containers[0].name, "a");
    assert_eq!(st.name, "p-n", "static pods are named after the node");
    assert_eq!(Some(st.namespace), p.metadata.namespace);
    assert_eq!(st.sandboxes[0].ips, ["10.88.0.1"]);
}

#[tokio::test]
async fn healthy_pod_sync_changes_nothing() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    n.sync(&p).await;
    n.fake.clear_calls();
    let (_, a) = n.actions(&p).await;
    assert!(a.is_noop(), "{a:?}");
    n.sync(&p).await;
    for op in [
        "RunPodSandbox",
        "CreateContainer",
        "StartContainer",
        "StopContainer",
        "StopPodSandbox",
        "RemoveContainer",
    ] {
        assert_eq!(n.fake.count(op), 0, "{op}");
    }
}

#[tokio::test]
async fn init_containers_run_one_at_a_time_in_order() {
    let n = node();
    let p = pod("Always", &["i1", "i2"], &["a"]);
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer"), ["i1"]);
    // Still running: nothing else starts.
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer"), ["i1"]);
    n.fake.exit_container(&n.id("i1"), 0);
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer"), ["i1", "i2"]);
    n.fake.exit_container(&n.id("i2"), 0);
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer"), ["i1", "i2", "a"]);
    let ann = n.fake.container_annotations(&n.id("i1"));
    assert_eq!(ann[labels::CONTAINER_TYPE], labels::CONTAINER_TYPE_INIT);
    assert_eq!(n.names("RunPodSandbox").len(), 1, "one sandbox for all");
}

#[tokio::test]
async fn failed_init_container_is_rerun_and_apps_wait() {
    let n = node();
    let p = pod("Always", &["i1", "i2"], &["a"]);
    n.sync(&p).await;
    n.fake.exit_container(&n.id("i1"), 3);
    let (_, r) = n.sync(&p).await;
    assert_eq!(r.len(), 1);
    assert_eq!(n.names("CreateContainer"), ["i1", "i1"]);
    let ann = n.fake.container_annotations(&n.id("i1"));
    assert_eq!(ann[labels::CONTAINER_RESTART_COUNT], "1");
    assert!(n.fake.container_id("a").is_none());
    assert!(n.fake.container_id("i2").is_none());
}

#[tokio::test]
async fn failed_init_container_fails_a_never_pod() {
    let n = node();
    let p = pod("Never", &["i1"], &["a"]);
    n.sync(&p).await;
    n.fake.exit_container(&n.id("i1"), 1);
    let (a, _) = n.sync(&p).await;
    assert!(a.kill_pod);
    assert_eq!(n.names("CreateContainer"), ["i1"]);
    assert_eq!(n.fake.count("StopPodSandbox"), 1);
    assert!(!n.fake.sandboxes()[0].1, "sandbox stopped");
    // And it stays that way.
    n.fake.clear_calls();
    let (_, a) = n.actions(&p).await;
    assert!(a.is_noop(), "{a:?}");
}

#[tokio::test]
async fn restart_policy_always_restarts_a_completed_container() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    n.sync(&p).await;
    n.fake.exit_container(&n.id("a"), 0);
    n.sync(&p).await;
    assert_eq!(n.containers(), [exited("a", 0), running("a")]);
    let ann = n.fake.container_annotations(&n.id("a"));
    assert_eq!(ann[labels::CONTAINER_RESTART_COUNT], "1");
    let st = n.status(&p).await;
    assert_eq!(st.containers[0].restart_count, 1);
}

#[tokio::test]
async fn restart_policy_on_failure_restarts_only_failed_containers() {
    let n = node();
    let p = pod("OnFailure", &[], &["ok", "bad"]);
    n.sync(&p).await;
    n.fake.exit_container(&n.id("ok"), 0);
    n.fake.exit_container(&n.id("bad"), 2);
    n.sync(&p).await;
    let mut created = n.names("CreateContainer");
    created.sort();
    assert_eq!(created, ["bad", "bad", "ok"]);
    assert_eq!(n.fake.count("StopPodSandbox"), 0, "bad runs again");
}

#[tokio::test]
async fn restart_policy_never_leaves_exited_containers_and_stops_the_sandbox() {
    let n = node();
    let p = pod("Never", &[], &["a"]);
    n.sync(&p).await;
    n.fake.exit_container(&n.id("a"), 1);
    let (a, _) = n.sync(&p).await;
    assert!(a.kill_pod);
    assert_eq!(n.names("CreateContainer"), ["a"]);
    assert_eq!(n.fake.count("StopPodSandbox"), 1);
    // A Never pod whose sandbox died after it ran is not run again.
    let (_, a) = n.actions(&p).await;
    assert!(a.is_noop() && !a.create_sandbox, "{a:?}");
}

#[tokio::test]
async fn on_failure_pod_that_succeeded_stops_and_stays_stopped() {
    let n = node();
    let p = pod("OnFailure", &[], &["a"]);
    n.sync(&p).await;
    n.fake.exit_container(&n.id("a"), 0);
    n.sync(&p).await;
    assert_eq!(n.fake.count("StopPodSandbox"), 1);
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer"), ["a"]);
    assert_eq!(n.names("RunPodSandbox").len(), 1);
}

#[tokio::test]
async fn crash_loop_back_off_holds_the_second_restart() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    n.sync(&p).await;
    n.fake.exit_container(&n.id("a"), 1);
    // First crash: restarted at once (and the back-off armed).
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer").len(), 2);
    n.fake.exit_container(&n.id("a"), 1);
    let (a, r) = n.sync(&p).await;
    assert!(r.is_empty());
    assert_eq!(n.names("CreateContainer").len(), 2, "held back");
    assert_eq!(a.backoff.len(), 1);
    assert_eq!(a.backoff[0].name, "a");
    assert!(a.backoff[0].remaining > 0 && a.backoff[0].remaining <= 10 * NANOS_PER_SEC);
    assert!(!a.kill_pod, "a container in back-off keeps the sandbox");
    // Once the 10 s back-off period has passed it restarts.
    let st = n.status(&p).await;
    let later = now_nanos() + 11 * NANOS_PER_SEC;
    let b = n.backoff.lock().unwrap().clone();
    let a = compute_pod_actions(&p, &st, &n.probes, &b, later);
    assert!(a.backoff.is_empty(), "{a:?}");
    assert_eq!(a.containers_to_start, vec![0]);
}

#[tokio::test]
async fn crash_loop_back_off_shows_in_the_status() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    n.sync(&p).await;
    n.fake.exit_container(&n.id("a"), 1);
    n.sync(&p).await;
    n.fake.exit_container(&n.id("a"), 1);
    let (st, a) = n.actions(&p).await;
    let api = status_manager::generate(
        &p,
        &st,
        &StatusInputs {
            backoff: &a.backoff,
            now: now_nanos(),
            ..Default::default()
        },
    );
    let cs = &api.container_statuses.unwrap()[0];
    let waiting = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
    let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(last.exit_code, 1);
    assert_eq!(cs.restart_count, 1);
}

#[tokio::test]
async fn dead_sandbox_is_replaced_with_the_next_attempt() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    n.sync(&p).await;
    let old = n.fake.sandboxes()[0].0.clone();
    n.fake.kill_sandbox(&old);
    let (a, _) = n.sync(&p).await;
    assert!(a.create_sandbox);
    assert!(!a.kill_pod, "nothing was left running");
    let sbs = n.fake.sandboxes();
    assert_eq!(sbs.len(), 2);
    assert_eq!((sbs[1].1, sbs[1].2), (true, 1), "ready, attempt 1");
    let st = n.status(&p).await;
    let new_a = st.find_container("a").unwrap();
    assert_eq!(new_a.sandbox_id, sbs[1].0);
    assert_eq!(new_a.state, ContainerState::Running);
    assert_eq!(new_a.restart_count, 1);
}

#[tokio::test]
async fn sandbox_without_an_ip_is_replaced_after_a_kubelet_restart() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    let sb = n.fake.add_sandbox(&uid(&p), true);
    n.fake.clear_sandbox_ip(&sb);
    let (a, _) = n.sync(&p).await;
    assert!(a.create_sandbox && a.kill_pod);
    assert_eq!(n.names("StopPodSandbox"), [sb]);
    let sbs = n.fake.sandboxes();
    assert_eq!(sbs.len(), 2);
    assert!(sbs[1].1);
}

#[tokio::test]
async fn two_ready_sandboxes_are_both_stopped_and_replaced() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    let s1 = n.fake.add_sandbox(&uid(&p), true);
    let s2 = n.fake.add_sandbox(&uid(&p), true);
    let (a, _) = n.sync(&p).await;
    assert!(a.kill_pod && a.create_sandbox);
    let mut stopped = n.names("StopPodSandbox");
    stopped.sort();
    assert_eq!(stopped, [s1, s2]);
    assert_eq!(n.fake.sandboxes().iter().filter(|s| s.1).count(), 1);
}

#[tokio::test]
async fn restarted_kubelet_adopts_what_the_runtime_runs() {
    let n = node();
    let p = pod("Always", &["i"], &["a"]);
    n.sync(&p).await;
    n.fake.exit_container(&n.id("i"), 0);
    n.sync(&p).await;
    n.fake.clear_calls();
    // A new manager (no caches) on the same runtime.
    let rm2 = manager(&n.fake, n.dir.path());
    let st = rm2.get_pod_status(&uid(&p)).await.unwrap();
    let a = compute_pod_actions(&p, &st, &ProbeResults::new(), &Backoff::new(), now_nanos());
    assert!(a.is_noop(), "{a:?}");
    assert_eq!(n.fake.count("RunPodSandbox"), 0);
}

#[tokio::test]
async fn changed_spec_kills_and_restarts_the_container() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    n.sync(&p).await;
    let old = n.id("a");
    let mut p2 = p.clone();
    p2.spec.as_mut().unwrap().containers[0].image = Some("i:2".into());
    let (a, _) = n.sync(&p2).await;
    assert_eq!(a.containers_to_kill.len(), 1);
    assert_eq!(
        a.containers_to_kill[0].reason,
        "Container a definition changed"
    );
    assert!(n.names("StopContainer")[0].starts_with(&format!("{old} ")));
    assert_eq!(n.containers(), [exited("a", 137), running("a")]);
    let ann = n.fake.container_annotations(&n.id("a"));
    let spec2 = &p2.spec.as_ref().unwrap().containers[0];
    assert_eq!(ann[labels::CONTAINER_HASH], labels::hash_container(spec2));
}

#[tokio::test]
async fn present_image_is_not_pulled_with_if_not_present() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    n.sync(&p).await;
    assert_eq!(n.fake.count("PullImage"), 0);
    assert_eq!(n.names("ImageStatus"), ["i:1"]);
}

#[tokio::test]
async fn missing_image_is_pulled_and_always_policy_always_pulls() {
    let n = node();
    let p = pod_yaml("  containers:\n  - {name: a, image: 'other:2'}\n  - {name: b, image: 'i:1', imagePullPolicy: Always}\n");
    let (_, r) = n.sync(&p).await;
    assert!(r.iter().all(|(_, r)| r.is_ok()), "{r:?}");
    let mut pulled = n.names("PullImage");
    pulled.sort();
    assert_eq!(pulled, ["i:1", "other:2"]);
}

#[tokio::test]
async fn never_pull_policy_without_the_image_fails_with_err_image_never_pull() {
    let n = node();
    let p = pod_yaml("  containers:\n  - {name: a, image: 'gone:1', imagePullPolicy: Never}\n");
    let (_, r) = n.sync(&p).await;
    assert_eq!(r[0].1.as_ref().unwrap_err().reason(), "ErrImageNeverPull");
    assert_eq!(n.fake.count("PullImage"), 0);
    assert_eq!(n.fake.count("CreateContainer"), 0);
}

#[tokio::test]
async fn failed_pull_reports_err_image_pull() {
    let n = node();
    let p = pod_yaml("  containers:\n  - {name: a, image: 'other:2'}\n");
    n.fake.inject_error("PullImage", tonic::Code::Unknown);
    let (_, r) = n.sync(&p).await;
    assert_eq!(r[0].1.as_ref().unwrap_err().reason(), "ErrImagePull");
    assert_eq!(n.fake.count("CreateContainer"), 0);
    // The next sync, within the 10 s back-off, does not pull: ImagePullBackOff.
    let (_, r) = n.sync(&p).await;
    let e = r[0].1.as_ref().unwrap_err();
    assert_eq!(e.reason(), "ImagePullBackOff");
    assert_eq!(e.to_string(), "Back-off pulling image \"other:2\"");
    assert_eq!(n.fake.count("PullImage"), 1);
    // Once the back-off has passed, the next sync pulls again and succeeds.
    super::lock(&n.rm.image_backoff).reset(&format!("{}_other:2", uid(&p)));
    let (_, r) = n.sync(&p).await;
    assert!(r[0].1.is_ok());
    assert_eq!(n.fake.count("PullImage"), 2);
}

#[tokio::test]
async fn pull_secrets_reach_the_registry() {
    let n = node();
    n.fake
        .require_registry_auth("registry.test:5000/private:1", "alice", "s3cret");
    let mut p = pod_yaml(
        "  imagePullSecrets: [{name: regcred}]\n  containers:\n  - {name: a, image: 'registry.test:5000/private:1'}\n",
    );
    p.metadata.namespace = Some("n".into());
    let secret = k8s_openapi::api::core::v1::Secret {
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(
            [(
                ".dockerconfigjson".to_string(),
                k8s_openapi::ByteString(
                    br#"{"auths": {"registry.test:5000": {"username": "alice", "password": "s3cret"}}}"#
                        .to_vec(),
                ),
            )]
            .into(),
        ),
        ..Default::default()
    };
    let objects = crate::objects::PodObjects {
        api: true,
        secrets: [(("n".to_string(), "regcred".to_string()), Some(secret))].into(),
        ..Default::default()
    };
    let (st, a) = n.actions(&p).await;
    let r =
        n.rm.apply_pod_actions(&p, &st, &a, &n.backoff, &objects)
            .await
            .unwrap();
    assert!(r[0].1.is_ok(), "{r:?}");
    let auth = n.fake.pull_auths().pop().flatten().unwrap();
    assert_eq!(
        (auth.username.as_str(), auth.password.as_str()),
        ("alice", "s3cret")
    );
    assert_eq!(auth.server_address, "", "containerd parses it as a URL");

    // Without the secret the registry refuses: ErrImagePull, then back-off.
    // (Always: the first pull left the image on the node.)
    let other = pod_yaml(
        "  containers:\n  - {name: b, image: 'registry.test:5000/private:1', imagePullPolicy: Always}\n",
    );
    let (_, r) = n.sync(&other).await;
    let e = r[0].1.as_ref().unwrap_err();
    assert_eq!(e.reason(), "ErrImagePull");
    assert!(e.to_string().contains("401"), "{e}");
    assert_eq!(n.fake.pull_auths().last(), Some(&None));
}

#[tokio::test]
async fn failed_start_removes_the_created_container() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    n.fake.inject_error("StartContainer", tonic::Code::Internal);
    let (_, r) = n.sync(&p).await;
    assert_eq!(r[0].1.as_ref().unwrap_err().reason(), "RunContainerError");
    assert_eq!(n.fake.count("RemoveContainer"), 1);
    assert!(n.containers().is_empty(), "nothing left behind");
    // The next sync creates it again.
    n.sync(&p).await;
    assert_eq!(n.containers(), [running("a")]);
}

#[tokio::test]
async fn failed_create_reports_create_container_error() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    n.fake
        .inject_error("CreateContainer", tonic::Code::Internal);
    let (_, r) = n.sync(&p).await;
    assert_eq!(
        r[0].1.as_ref().unwrap_err().reason(),
        "CreateContainerError"
    );
    assert_eq!(n.fake.count("StartContainer"), 0);
}

#[tokio::test]
async fn run_as_non_root_refuses_an_image_running_as_root() {
    let n = node();
    n.fake.set_image_user("i:1", Some(0), "");
    let p = pod_yaml(
        "  securityContext: {runAsNonRoot: true}\n  containers:\n  - {name: a, image: 'i:1'}\n",
    );
    let (_, r) = n.sync(&p).await;
    let e = r[0].1.as_ref().unwrap_err();
    assert_eq!(e.reason(), "CreateContainerConfigError");
    assert!(e.to_string().contains("image will run as root"), "{e}");
    assert_eq!(n.fake.count("CreateContainer"), 0);
    // A non-root image user is accepted.
    n.fake.set_image_user("i:1", Some(1000), "");
    let (_, r) = n.sync(&p).await;
    assert!(r[0].1.is_ok(), "{r:?}");
}

#[tokio::test]
async fn post_start_hook_failure_kills_the_container() {
    let n = node();
    n.fake.set_exec_exit("a", 1);
    let p = pod_yaml("  containers:\n  - name: a\n    image: 'i:1'\n    lifecycle: {postStart: {exec: {command: [hook]}}}\n");
    let (_, r) = n.sync(&p).await;
    assert_eq!(r[0].1.as_ref().unwrap_err().reason(), "PostStartHookError");
    let execs = n.fake.execs();
    assert_eq!(execs[0].1, ["hook"]);
    assert_eq!(n.fake.count("StopContainer"), 1);
    assert_eq!(n.containers(), [exited("a", 137)]);
}

#[tokio::test]
async fn kill_pod_stops_containers_with_the_pods_grace_then_the_sandbox() {
    let n = node();
    let p = pod_yaml("  terminationGracePeriodSeconds: 7\n  containers:\n  - {name: a, image: 'i:1'}\n  - {name: b, image: 'i:1'}\n");
    n.sync(&p).await;
    n.fake.clear_calls();
    n.rm.kill_pod(&uid(&p), Some(&p), None).await.unwrap();
    let stops = n.names("StopContainer");
    assert_eq!(stops.len(), 2);
    assert!(stops.iter().all(|s| s.ends_with(" 7")), "{stops:?}");
    let ops: Vec<&str> = n.fake.calls().iter().map(|c| c.op).collect();
    let last_stop = ops.iter().rposition(|o| *o == "StopContainer").unwrap();
    let sandbox_stop = ops.iter().position(|o| *o == "StopPodSandbox").unwrap();
    assert!(last_stop < sandbox_stop, "{ops:?}");
    assert!(n
        .containers()
        .iter()
        .all(|c| c.1 == CriState::ContainerExited));
    assert!(!n.fake.sandboxes()[0].1);
}

#[tokio::test]
async fn kill_pod_grace_override_and_minimum() {
    let n = node();
    let p = pod_yaml(
        "  terminationGracePeriodSeconds: 7\n  containers:\n  - {name: a, image: 'i:1'}\n",
    );
    n.sync(&p).await;
    n.rm.kill_pod(&uid(&p), Some(&p), Some(0)).await.unwrap();
    assert_eq!(n.names("StopContainer"), [format!("{} 2", n.id("a"))]);
}

#[tokio::test]
async fn kill_pod_of_an_unknown_pod_takes_grace_from_annotations() {
    let n = node();
    let p = pod_yaml(
        "  terminationGracePeriodSeconds: 9\n  containers:\n  - {name: a, image: 'i:1'}\n",
    );
    n.sync(&p).await;
    // An orphan: the kubelet no longer has the pod object.
    n.rm.kill_pod(&uid(&p), None, None).await.unwrap();
    assert_eq!(n.names("StopContainer"), [format!("{} 9", n.id("a"))]);
}

#[tokio::test]
async fn kill_pod_runs_pre_stop_before_the_stop_signal() {
    let n = node();
    let p = pod_yaml("  containers:\n  - name: a\n    image: 'i:1'\n    lifecycle: {preStop: {exec: {command: [bye]}}}\n");
    n.sync(&p).await;
    n.fake.clear_calls();
    n.rm.kill_pod(&uid(&p), Some(&p), None).await.unwrap();
    let ops: Vec<&str> = n.fake.calls().iter().map(|c| c.op).collect();
    let exec = ops.iter().position(|o| *o == "ExecSync").unwrap();
    let stop = ops.iter().position(|o| *o == "StopContainer").unwrap();
    assert!(exec < stop, "{ops:?}");
    assert_eq!(n.fake.execs()[0].1, ["bye"]);
}

#[tokio::test]
async fn kill_pod_tolerates_not_found_but_not_other_errors() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    n.sync(&p).await;
    n.fake.inject_error("StopContainer", tonic::Code::NotFound);
    n.rm.kill_pod(&uid(&p), Some(&p), None).await.unwrap();
    let n = node();
    n.sync(&p).await;
    n.fake
        .inject_error("StopContainer", tonic::Code::Unavailable);
    assert!(n.rm.kill_pod(&uid(&p), Some(&p), None).await.is_err());
    assert_eq!(
        n.fake.count("StopPodSandbox"),
        0,
        "the sandbox waits for its containers"
    );
}

#[tokio::test]
async fn remove_pod_leaves_nothing_behind() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    let other = pod_yaml("  containers:\n  - {name: x, image: 'i:1'}\n");
    let mut other = other;
    other.metadata.uid = Some("other-uid".into());
    n.sync(&p).await;
    n.sync(&other).await;
    let pod_dir = n.dir.path().join("root/pods").join(uid(&p));
    assert!(pod_dir.exists(), "the sync made the pod's directory");
    let logs: Vec<PathBuf> = std::fs::read_dir(n.dir.path().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(logs.len(), 2);
    n.rm.remove_pod(&uid(&p), Some(&p), None).await.unwrap();
    assert_eq!(n.fake.sandboxes().len(), 1, "only the other pod's sandbox");
    assert_eq!(n.containers(), [running("x")]);
    assert!(!pod_dir.exists());
    let logs_left = std::fs::read_dir(n.dir.path().join("logs"))
        .unwrap()
        .count();
    assert_eq!(logs_left, 1);
}

#[tokio::test]
async fn pods_asking_for_one_image_at_once_share_one_image_status() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    fake.add_image("i:1", 100);
    fake.set_slow_image_status();
    let rm = manager(&fake, dir.path());
    let answers = futures::future::join_all((0..5).map(|_| rm.image_present("i:1"))).await;
    let ids: Vec<Option<String>> = answers
        .into_iter()
        .map(|a| a.unwrap().map(|i| i.id))
        .collect();
    assert!(
        ids[0].is_some() && ids.iter().all(|id| id == &ids[0]),
        "{ids:?}"
    );
    assert_eq!(fake.count("ImageStatus"), 1);
    // Nothing is kept once answered: a later ask (the image may be gone) asks again.
    assert_eq!(rm.image_present("i:1").await.unwrap().map(|i| i.id), ids[0]);
    assert_eq!(fake.count("ImageStatus"), 2);
    // A missing image is shared the same way, and an error reaches every asker.
    fake.inject_error("ImageStatus", tonic::Code::Unavailable);
    let answers = futures::future::join_all((0..3).map(|_| rm.image_present("i:1"))).await;
    assert!(answers.iter().all(Result::is_err), "{answers:?}");
    assert_eq!(fake.count("ImageStatus"), 3);
}

#[tokio::test]
async fn container_gc_keeps_max_per_pod_container_dead_instances() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    n.sync(&p).await;
    for _ in 0..3 {
        n.fake.exit_container(&n.id("a"), 0);
        // Restart at once: the crash is long past any back-off.
        let id = n.id("a");
        let past = now_nanos() - 600 * NANOS_PER_SEC;
        n.fake
            .set_container_times(&id, past - 1000 * NANOS_PER_SEC, past);
        n.sync(&p).await;
    }
    // Each sync removes what is beyond the newest dead one (maxPerPodContainer 1).
    assert_eq!(n.names("CreateContainer").len(), 4);
    let dead = n
        .containers()
        .iter()
        .filter(|c| c.1 == CriState::ContainerExited)
        .count();
    assert_eq!(dead, 1, "{:?}", n.containers());
    assert_eq!(n.fake.count("RemoveContainer"), 2);
}

#[tokio::test]
async fn container_gc_honours_a_larger_max_per_pod_container() {
    let mut n = node();
    n.rm.max_per_pod_container = 3;
    let p = pod("Always", &[], &["a"]);
    n.sync(&p).await;
    for _ in 0..3 {
        n.fake.exit_container(&n.id("a"), 0);
        let id = n.id("a");
        let past = now_nanos() - 600 * NANOS_PER_SEC;
        n.fake
            .set_container_times(&id, past - 1000 * NANOS_PER_SEC, past);
        n.sync(&p).await;
    }
    assert_eq!(n.fake.count("RemoveContainer"), 0);
    assert_eq!(n.containers().len(), 4);
}

#[tokio::test]
async fn pod_status_reads_exit_codes_reasons_and_times_from_the_runtime() {
    let n = node();
    let p = pod("Never", &[], &["a"]);
    n.sync(&p).await;
    n.fake.exit_container(&n.id("a"), 42);
    let st = n.status(&p).await;
    let c = &st.containers[0];
    assert_eq!(c.state, ContainerState::Exited);
    assert_eq!(c.exit_code, 42);
    assert_eq!(c.reason, "Error");
    assert!(c.finished_at >= c.started_at && c.started_at > 0);
    assert_eq!(c.image_ref, "sha256:i:1");
}

#[tokio::test]
async fn pod_status_asks_container_status_only_when_the_state_changed() {
    let n = node();
    let p = pod("Always", &[], &["a", "b"]);
    n.sync(&p).await;
    n.status(&p).await;
    n.fake.clear_calls();
    n.status(&p).await;
    assert_eq!(n.fake.count("ContainerStatus"), 0, "cached");
    assert_eq!(n.fake.count("PodSandboxStatus"), 0, "IPs cached");
    n.fake.exit_container(&n.id("a"), 1);
    let st = n.status(&p).await;
    assert_eq!(n.names("ContainerStatus"), [n.id("a")]);
    assert_eq!(st.find_container("a").unwrap().exit_code, 1);
}

#[tokio::test]
async fn the_status_of_a_container_the_kubelet_started_is_known_without_asking() {
    let n = node();
    n.fake.set_image_digest("i:1", "reg.example/i@sha256:d1");
    let p = pod("Always", &[], &["a", "b"]);
    n.sync(&p).await;
    n.fake.clear_calls();
    let ours = n.status(&p).await;
    assert_eq!(n.fake.count("ContainerStatus"), 0);
    // The same as the runtime's answer, but for startedAt, taken when StartContainer
    // answered (later than the runtime's, by little).
    let dir = tempfile::tempdir().unwrap();
    let mut fresh = manager(&n.fake, dir.path());
    // The same record of what was applied to the containers.
    fresh.allocation = n.rm.allocation.clone();
    let theirs = fresh.get_pod_status(&uid(&p)).await.unwrap();
    assert_eq!(n.fake.count("ContainerStatus"), 2);
    assert_eq!(ours.containers.len(), 2);
    for (o, t) in ours.containers.iter().zip(&theirs.containers) {
        assert_eq!(o.image_ref, "reg.example/i@sha256:d1");
        assert!(o.started_at >= t.started_at && o.started_at - t.started_at < NANOS_PER_SEC);
        let o = crate::container::ContainerStatus {
            started_at: t.started_at,
            ..o.clone()
        };
        assert_eq!(&o, t);
    }
    // An exit is not known: the runtime is asked.
    n.fake.clear_calls();
    n.fake.exit_container(&n.id("a"), 3);
    assert_eq!(n.status(&p).await.find_container("a").unwrap().exit_code, 3);
    assert_eq!(n.names("ContainerStatus"), [n.id("a")]);
}

#[tokio::test]
async fn after_a_pull_the_runtime_is_asked_for_the_image_ref() {
    let n = node();
    let p = pod_yaml("  containers:\n  - {name: a, image: 'other:2'}\n");
    n.sync(&p).await;
    n.fake.clear_calls();
    let st = n.status(&p).await;
    assert_eq!(n.names("ContainerStatus"), [n.id("a")]);
    assert_eq!(st.containers[0].state, ContainerState::Running);
}

#[tokio::test]
async fn pod_status_skips_a_container_removed_while_listing() {
    let n = node();
    let p = pod("Always", &[], &["a"]);
    let sb = n.fake.add_sandbox(&uid(&p), true);
    n.fake
        .add_container(&uid(&p), &sb, "a", CriState::ContainerRunning);
    n.fake
        .inject_error("ContainerStatus", tonic::Code::NotFound);
    let st = n.status(&p).await;
    assert!(st.containers.is_empty());
    n.fake
        .inject_error("ContainerStatus", tonic::Code::Unavailable);
    assert!(n.rm.get_pod_status(&uid(&p)).await.is_err());
}

#[tokio::test]
async fn termination_message_comes_from_the_file_the_container_wrote() {
    let n = node();
    let p = pod("Never", &[], &["a"]);
    n.sync(&p).await;
    let file = n
        .dir
        .path()
        .join("root/pods")
        .join(uid(&p))
        .join("containers/a/0");
    std::fs::write(&file, "bye from a").unwrap();
    n.fake.exit_container(&n.id("a"), 0);
    let st = n.status(&p).await;
    assert_eq!(st.containers[0].message, "bye from a");
}

#[tokio::test]
async fn api_status_follows_the_runtime_through_a_pods_life() {
    let n = node();
    let p = pod("Never", &["i"], &["a"]);
    let gen = |st: &PodStatus| {
        status_manager::generate(
            &p,
            st,
            &StatusInputs {
                now: now_nanos(),
                ..Default::default()
            },
        )
    };
    n.sync(&p).await;
    let api = gen(&n.status(&p).await);
    assert_eq!(api.phase.as_deref(), Some("Pending"));
    n.fake.exit_container(&n.id("i"), 0);
    n.sync(&p).await;
    let api = gen(&n.status(&p).await);
    assert_eq!(api.phase.as_deref(), Some("Running"));
    assert_eq!(api.pod_ip.as_deref(), Some("10.88.0.1"));
    let cs = &api.container_statuses.unwrap()[0];
    assert!(cs.state.as_ref().unwrap().running.is_some());
    assert!(cs.ready);
    n.fake.exit_container(&n.id("a"), 0);
    let api = gen(&n.status(&p).await);
    assert_eq!(api.phase.as_deref(), Some("Succeeded"));
    let t = api.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
}

#[tokio::test]
async fn failed_container_of_a_never_pod_makes_it_failed() {
    let n = node();
    let p = pod("Never", &[], &["a"]);
    n.sync(&p).await;
    n.fake.exit_container(&n.id("a"), 3);
    let st = n.status(&p).await;
    let api = status_manager::generate(&p, &st, &StatusInputs::default());
    assert_eq!(api.phase.as_deref(), Some("Failed"));
}

// One writer per pod: a failed liveness or startup probe is a kill in the pod's sync.

fn probe_failed(n: &mut Node, id: &str, kind: ProbeKind) {
    n.probes.insert(
        id.to_string(),
        ContainerProbeState {
            failed: Some(kind),
            killed: Some("Container a failed liveness probe, will be restarted: no".into()),
            ..Default::default()
        },
    );
}

fn probed_pod(policy: &str, extra: &str) -> Pod {
    pod_yaml(&format!(
        "  restartPolicy: {policy}\n  terminationGracePeriodSeconds: 20\n  containers:\n  - name: a\n    image: 'i:1'\n    livenessProbe: {{exec: {{command: [live]}}{extra}}}\n    startupProbe: {{exec: {{command: [start]}}}}\n    lifecycle: {{preStop: {{exec: {{command: [bye]}}}}}}\n  - {{name: b, image: 'i:1'}}\n"
    ))
}

#[tokio::test]
async fn failed_liveness_probe_kills_and_restarts_in_the_sync() {
    let mut n = node();
    let p = probed_pod("Always", "");
    n.sync(&p).await;
    let old = n.id("a");
    probe_failed(&mut n, &old, ProbeKind::Liveness);
    n.fake.clear_calls();
    let (a, r) = n.sync(&p).await;
    assert_eq!(a.containers_to_kill.len(), 1);
    assert_eq!(
        a.containers_to_kill[0].reason,
        "Container a failed liveness probe, will be restarted"
    );
    assert!(r.iter().all(|(_, r)| r.is_ok()));
    // preStop, then the stop with the pod's grace, then the new instance.
    let ops: Vec<&str> = n.fake.calls().iter().map(|c| c.op).collect();
    let exec = ops.iter().position(|o| *o == "ExecSync").unwrap();
    let stop = ops.iter().position(|o| *o == "StopContainer").unwrap();
    let create = ops.iter().position(|o| *o == "CreateContainer").unwrap();
    assert!(exec < stop && stop < create, "{ops:?}");
    assert_eq!(n.fake.execs()[0].1, ["bye"]);
    let stops = n.names("StopContainer");
    assert_eq!(stops.len(), 1);
    assert!(stops[0].starts_with(&format!("{old} ")));
    assert!(
        stops[0].ends_with(" 20") || stops[0].ends_with(" 19"),
        "{stops:?}"
    );
    assert_eq!(
        n.containers(),
        [exited("a", 137), running("b"), running("a")]
    );
    let ann = n.fake.container_annotations(&n.id("a"));
    assert_eq!(ann[labels::CONTAINER_RESTART_COUNT], "1");
    // The killed container's status says why.
    let st = n.status(&p).await;
    let api = status_manager::generate(
        &p,
        &st,
        &StatusInputs {
            probes: Some(&n.probes),
            now: now_nanos(),
            ..Default::default()
        },
    );
    let a_status = api
        .container_statuses
        .unwrap()
        .into_iter()
        .find(|c| c.name == "a")
        .unwrap();
    let last = a_status.last_state.unwrap().terminated.unwrap();
    assert!(last.message.unwrap().contains("failed liveness probe"));
    // The next sync leaves the new instance alone.
    n.fake.clear_calls();
    let (a, _) = n.sync(&p).await;
    assert!(a.is_noop(), "{a:?}");
}

#[tokio::test]
async fn failed_startup_probe_kills_with_upstreams_message() {
    let mut n = node();
    let p = probed_pod("OnFailure", "");
    n.sync(&p).await;
    let old = n.id("a");
    probe_failed(&mut n, &old, ProbeKind::Startup);
    let (_, a) = n.actions(&p).await;
    assert_eq!(
        a.containers_to_kill[0].reason,
        "Container a failed startup probe, will be restarted"
    );
    assert_eq!(a.containers_to_start, vec![0], "OnFailure restarts it too");
}

#[tokio::test]
async fn failed_liveness_probe_with_restart_policy_never_kills_without_restart() {
    let mut n = node();
    let p = probed_pod("Never", "");
    n.sync(&p).await;
    let old = n.id("a");
    probe_failed(&mut n, &old, ProbeKind::Liveness);
    let (a, _) = n.sync(&p).await;
    assert_eq!(
        a.containers_to_kill[0].reason,
        "Container a failed liveness probe"
    );
    assert!(a.containers_to_start.is_empty());
    assert!(!a.kill_pod, "b still runs");
    assert_eq!(
        n.names("CreateContainer").len(),
        2,
        "a is not started again"
    );
    assert_eq!(n.containers(), [exited("a", 137), running("b")]);
}

#[tokio::test]
async fn probe_grace_period_wins_over_the_pods() {
    let mut n = node();
    let p = probed_pod("Always", ", terminationGracePeriodSeconds: 4");
    n.sync(&p).await;
    let old = n.id("a");
    n.fake.set_exec_exit("a", 0);
    probe_failed(&mut n, &old, ProbeKind::Liveness);
    let (a, _) = n.sync(&p).await;
    assert_eq!(a.containers_to_kill[0].grace, Some(4));
    let stop = &n.names("StopContainer")[0];
    // 4 s minus the (instant) preStop.
    assert!(stop.ends_with(" 4"), "{stop}");
}

#[tokio::test]
async fn readiness_failure_or_a_stale_result_kills_nothing() {
    let mut n = node();
    let p = probed_pod("Always", "");
    n.sync(&p).await;
    let a_id = n.id("a");
    probe_failed(&mut n, &a_id, ProbeKind::Readiness);
    probe_failed(&mut n, "some-old-container", ProbeKind::Liveness);
    n.fake.clear_calls();
    let (a, _) = n.sync(&p).await;
    assert!(a.is_noop(), "{a:?}");
    assert_eq!(n.fake.count("StopContainer"), 0);
}

#[tokio::test]
async fn a_failed_kill_is_retried_by_the_next_sync() {
    let mut n = node();
    let p = probed_pod("Always", "");
    n.sync(&p).await;
    let old = n.id("a");
    probe_failed(&mut n, &old, ProbeKind::Liveness);
    n.fake
        .inject_error("StopContainer", tonic::Code::Unavailable);
    let (st, a) = n.actions(&p).await;
    let r =
        n.rm.apply_pod_actions(&p, &st, &a, &n.backoff, &Default::default())
            .await;
    assert!(r.is_err());
    assert_eq!(
        n.names("CreateContainer").len(),
        2,
        "no second instance yet"
    );
    let (a, _) = n.sync(&p).await;
    assert_eq!(a.containers_to_kill.len(), 1);
    assert_eq!(n.containers().len(), 3, "one new instance");
}

/// A Never pod with two sidecars around a regular init container.
const SIDECAR_POD: &str = "  restartPolicy: Never\n  terminationGracePeriodSeconds: 3\n  initContainers:\n  - {name: s1, image: 'i:1', restartPolicy: Always}\n  - {name: i1, image: 'i:1'}\n  - {name: s2, image: 'i:1', restartPolicy: Always}\n  containers:\n  - {name: a, image: 'i:1'}\n";

impl Node {
    fn api_status(&self, p: &Pod, st: &PodStatus) -> k8s_openapi::api::core::v1::PodStatus {
        status_manager::generate(
            p,
            st,
            &StatusInputs {
                now: now_nanos(),
                probes: Some(&self.probes),
                ..Default::default()
            },
        )
    }
}

fn cond(s: &k8s_openapi::api::core::v1::PodStatus, kind: &str) -> String {
    s.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn sidecars_start_in_order_restart_in_a_never_pod_and_stop_last() {
    let n = node();
    let p = pod_yaml(SIDECAR_POD);
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer"), ["s1"]);
    let st = n.status(&p).await;
    assert_eq!(n.api_status(&p, &st).phase.as_deref(), Some("Pending"));
    // s1 runs (no startup probe): the next init container starts beside it.
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer"), ["s1", "i1"]);
    n.sync(&p).await;
    assert_eq!(
        n.names("CreateContainer"),
        ["s1", "i1"],
        "i1 must finish first"
    );
    n.fake.exit_container(&n.id("i1"), 0);
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer"), ["s1", "i1", "s2"]);
    let st = n.status(&p).await;
    let api = n.api_status(&p, &st);
    assert_eq!(cond(&api, "Initialized"), "True", "{api:?}");
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer"), ["s1", "i1", "s2", "a"]);
    let st = n.status(&p).await;
    let api = n.api_status(&p, &st);
    assert_eq!(api.phase.as_deref(), Some("Running"));
    assert_eq!(cond(&api, "ContainersReady"), "True");
    let inits = api.init_container_statuses.unwrap();
    assert!(
        inits[0].ready && inits[0].started == Some(true),
        "{inits:?}"
    );

    // s1 exits: started again although the pod's restartPolicy is Never; a runs on.
    n.fake.exit_container(&n.id("s1"), 1);
    let (a, _) = n.sync(&p).await;
    assert_eq!(a.sidecars_to_start, [0]);
    assert!(a.containers_to_start.is_empty() && !a.kill_pod);
    assert_eq!(n.names("CreateContainer").last().unwrap(), "s1");
    assert_eq!(n.names("CreateContainer").len(), 5);

    // The app container finishes: the pod Succeeded with its sidecars running, then
    // they are stopped, the last one first, and nothing starts again.
    n.fake.exit_container(&n.id("a"), 0);
    let st = n.status(&p).await;
    assert_eq!(n.api_status(&p, &st).phase.as_deref(), Some("Succeeded"));
    let (s1, s2) = (n.id("s1"), n.id("s2"));
    n.fake.clear_calls();
    let (a, _) = n.sync(&p).await;
    assert!(a.kill_pod && a.sidecars_to_start.is_empty(), "{a:?}");
    let stops = n.names("StopContainer");
    assert_eq!(stops.len(), 2, "{stops:?}");
    assert!(stops[0].starts_with(&format!("{s2} ")), "{stops:?}");
    assert!(stops[1].starts_with(&format!("{s1} ")), "{stops:?}");
    n.sync(&p).await;
    assert!(n.names("CreateContainer").is_empty());
    let st = n.status(&p).await;
    assert_eq!(n.api_status(&p, &st).phase.as_deref(), Some("Succeeded"));
}

#[tokio::test]
async fn a_sidecar_with_a_startup_probe_holds_the_next_init_container() {
    let mut n = node();
    let p = pod_yaml("  initContainers:\n  - name: s\n    image: 'i:1'\n    restartPolicy: Always\n    startupProbe: {exec: {command: ['true']}}\n    readinessProbe: {exec: {command: ['true']}}\n  containers:\n  - {name: a, image: 'i:1'}\n");
    n.sync(&p).await;
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer"), ["s"], "not started yet");
    let st = n.status(&p).await;
    let api = n.api_status(&p, &st);
    assert_eq!(api.phase.as_deref(), Some("Pending"));
    assert_eq!(cond(&api, "Initialized"), "False");
    let id = n.id("s");
    n.probes.insert(
        id.clone(),
        ContainerProbeState {
            started: Some(true),
            ..Default::default()
        },
    );
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer"), ["s", "a"]);
    // Running, but the sidecar's readiness counts: not ready until its probe says so.
    let st = n.status(&p).await;
    let api = n.api_status(&p, &st);
    assert_eq!(cond(&api, "ContainersReady"), "False", "{api:?}");
    n.probes.get_mut(&id).unwrap().ready = Some(true);
    let api = n.api_status(&p, &st);
    assert_eq!(cond(&api, "ContainersReady"), "True");
    // A failed liveness (here: startup) probe restarts the sidecar.
    n.probes.get_mut(&id).unwrap().failed = Some(ProbeKind::Startup);
    let (a, _) = n.sync(&p).await;
    assert_eq!(a.containers_to_kill.len(), 1);
    assert_eq!(a.containers_to_kill[0].name, "s");
    assert_eq!(a.sidecars_to_start, [0]);
}

#[tokio::test]
async fn an_ephemeral_container_starts_once_in_its_targets_pid_namespace() {
    let n = node();
    let mut p = pod("Always", &[], &["a"]);
    n.sync(&p).await;
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer"), ["a"]);
    // `kubectl debug` adds an ephemeral container to the running pod.
    let spec = p.spec.as_mut().unwrap();
    spec.ephemeral_containers = Some(vec![serde_json::from_value(serde_json::json!({
        "name": "debug", "image": "i:1", "targetContainerName": "a"
    }))
    .unwrap()]);
    let (a, r) = n.sync(&p).await;
    assert_eq!(a.ephemeral_to_start, [0]);
    assert!(r.iter().all(|(_, r)| r.is_ok()), "{r:?}");
    assert_eq!(n.names("CreateContainer"), ["a", "debug"]);
    let ns = n.fake.container_namespaces(&n.id("debug")).unwrap();
    assert_eq!(
        ns.pid,
        nodus_proto::runtime::v1::NamespaceMode::Target as i32
    );
    assert_eq!(ns.target_id, n.id("a"));
    let st = n.status(&p).await;
    let api = n.api_status(&p, &st);
    let eph = api.ephemeral_container_statuses.unwrap();
    assert_eq!(eph[0].name, "debug");
    assert!(eph[0].state.as_ref().unwrap().running.is_some(), "{eph:?}");
    assert!(!eph[0].ready);
    // It exits: never started again, and the pod runs on.
    n.fake.exit_container(&n.id("debug"), 0);
    let (a, _) = n.sync(&p).await;
    assert!(a.is_noop(), "{a:?}");
    assert_eq!(n.names("CreateContainer"), ["a", "debug"]);
    let st = n.status(&p).await;
    assert_eq!(n.api_status(&p, &st).phase.as_deref(), Some("Running"));
}

#[tokio::test]
async fn a_new_sandbox_runs_sidecars_and_init_containers_again_in_order() {
    let n = node();
    let p = pod_yaml(&SIDECAR_POD.replace("restartPolicy: Never", "restartPolicy: Always"));
    n.sync(&p).await;
    n.sync(&p).await;
    n.fake.exit_container(&n.id("i1"), 0);
    n.sync(&p).await;
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer"), ["s1", "i1", "s2", "a"]);
    // The sandbox dies (a node reboot): everything runs again in the new one, in order,
    // although the old sandbox's app container is still listed.
    let old = n.fake.sandboxes()[0].0.clone();
    n.fake.kill_sandbox(&old);
    n.fake.clear_calls();
    let (a, _) = n.sync(&p).await;
    assert!(a.create_sandbox);
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer"), ["s1", "i1"], "i1 runs again");
    n.fake.exit_container(&n.id("i1"), 0);
    n.sync(&p).await;
    n.sync(&p).await;
    assert_eq!(n.names("CreateContainer"), ["s1", "i1", "s2", "a"]);
}

#[tokio::test]
async fn a_pod_without_host_users_gets_its_own_id_block_where_the_runtime_can_make_one() {
    use nodus_proto::runtime::v1 as cri;
    let n = node();
    let p = pod_yaml("  hostUsers: false\n  containers:\n  - {name: a, image: 'i:1'}\n");
    let userns_file = n.dir.path().join("root/pods").join(uid(&p)).join("userns");
    // A runtime that reports no handlers (containerd 1.6): refused, nothing made.
    let (st, a) = n.actions(&p).await;
    let e =
        n.rm.apply_pod_actions(&p, &st, &a, &n.backoff, &Default::default())
            .await
            .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Failed to create pod sandbox: can't set `spec.hostUsers: false`, runtime does not support user namespaces: the handler \"\" is not known"
    );
    assert_eq!(e.reason(), "CreatePodSandboxError");
    assert!(n.fake.sandboxes().is_empty());
    assert!(!userns_file.exists());
    // Its default handler can: the sandbox and the container get the pod's block.
    n.fake.set_runtime_handlers(vec![cri::RuntimeHandler {
        name: String::new(),
        features: Some(cri::RuntimeHandlerFeatures {
            user_namespaces: true,
            recursive_read_only_mounts: false,
        }),
    }]);
    n.sync(&p).await;
    let ns = n
        .fake
        .container_namespaces(&n.id("a"))
        .and_then(|o| o.userns_options)
        .expect("user namespace options");
    assert_eq!(ns.mode, cri::NamespaceMode::Pod as i32);
    assert_eq!(ns.uids, ns.gids);
    let m = ns.uids[0];
    assert_eq!((m.container_id, m.length), (0, 65536));
    assert!(
        m.host_id >= 65536 && m.host_id.is_multiple_of(65536),
        "{m:?}"
    );
    let file = std::fs::read_to_string(&userns_file).unwrap();
    assert!(
        file.contains(&format!("\"hostId\":{}", m.host_id)),
        "{file}"
    );
    // A pod that does not ask gets the node's.
    let q = pod_yaml("  containers:\n  - {name: b, image: 'i:1'}\n");
    n.sync(&q).await;
    let ns = n
        .fake
        .container_namespaces(&n.id("b"))
        .and_then(|o| o.userns_options);
    assert_eq!(ns.map(|n| n.mode), Some(cri::NamespaceMode::Node as i32));
    // Removing the pod frees its block.
    n.rm.remove_pod(&uid(&p), Some(&p), None).await.unwrap();
    assert!(!userns_file.exists());
}

/// A pod whose container `a` has `cpu` and `memory` as requests and limits, memory resized
/// by a restart.
fn sized_pod(cpu: &str, memory: &str) -> Pod {
    pod_yaml(&format!(
        "  containers:\n  - name: a\n    image: 'i:1'\n    \
         resources: {{requests: {{cpu: {cpu}, memory: {memory}}}, limits: {{cpu: {cpu}, memory: {memory}}}}}\n    \
         resizePolicy: [{{resourceName: memory, restartPolicy: RestartContainer}}]\n"
    ))
}

/// `p` with container `a` resized (the same UID, as the API server's resize subresource).
fn resized(p: &Pod, cpu: &str, memory: &str) -> Pod {
    let mut p2 = p.clone();
    p2.spec.as_mut().unwrap().containers[0].resources =
        sized_pod(cpu, memory).spec.unwrap().containers[0]
            .resources
            .clone();
    p2
}

fn resize_status(n: &Node, p: &Pod, st: &PodStatus) -> k8s_openapi::api::core::v1::PodStatus {
    let u = uid(p);
    status_manager::generate(
        p,
        st,
        &StatusInputs {
            now: now_nanos(),
            resize: status_manager::generate::ResizeInputs {
                pending: n.rm.allocation.pending(&u),
                error: n.rm.allocation.error(&u),
            },
            ..Default::default()
        },
    )
}

fn condition(s: &k8s_openapi::api::core::v1::PodStatus, kind: &str) -> Option<(String, String)> {
    s.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind)
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

fn shown_cpu(s: &k8s_openapi::api::core::v1::PodStatus) -> (String, String) {
    let c = &s.container_statuses.as_ref().unwrap()[0];
    (
        c.resources.as_ref().unwrap().limits.as_ref().unwrap()["cpu"]
            .0
            .clone(),
        c.allocated_resources.as_ref().unwrap()["cpu"].0.clone(),
    )
}

#[tokio::test]
async fn a_cpu_resize_updates_the_running_container_in_place() {
    use crate::allocation_manager::Allocation;
    let n = node();
    let p = sized_pod("500m", "128Mi");
    assert_eq!(n.rm.allocation.allocate(&p).1, Allocation::Current);
    n.sync(&p).await;
    let id = n.id("a");
    assert_eq!(n.fake.container_resources(&id).unwrap().cpu_quota, 50_000);

    let r = resized(&p, "1", "128Mi");
    let (p2, decision) = n.rm.allocation.allocate(&r);
    assert_eq!(decision, Allocation::ResizeAdmitted);
    let (st, a) = n.actions(&p2).await;
    assert_eq!(
        a.containers_to_update,
        [super::actions::ContainerToUpdate {
            index: 0,
            id: id.clone()
        }]
    );
    assert!(
        a.containers_to_kill.is_empty() && a.containers_to_start.is_empty(),
        "{a:?}"
    );
    // Allocated, not yet applied: in progress, the status shows the old size running.
    let s = resize_status(&n, &p2, &st);
    assert_eq!(
        condition(&s, "PodResizeInProgress"),
        Some((String::new(), String::new()))
    );
    assert_eq!(shown_cpu(&s), ("500m".to_string(), "1".to_string()));

    n.fake.clear_calls();
    n.sync(&p2).await;
    assert_eq!(
        n.names("UpdateContainerResources"),
        std::slice::from_ref(&id)
    );
    assert_eq!(n.fake.count("StopContainer"), 0);
    let r = n.fake.container_resources(&id).unwrap();
    assert_eq!((r.cpu_quota, r.cpu_shares), (100_000, 1024));
    assert_eq!(r.memory_limit_in_bytes, 128 << 20);
    assert_eq!(n.containers(), [running("a")]);
    let (st, a) = n.actions(&p2).await;
    assert!(a.is_noop(), "{a:?}");
    let s = resize_status(&n, &p2, &st);
    assert_eq!(condition(&s, "PodResizeInProgress"), None);
    assert_eq!(shown_cpu(&s), ("1".to_string(), "1".to_string()));
}

#[tokio::test]
async fn a_memory_resize_whose_policy_says_restart_restarts_the_container() {
    let n = node();
    let p = sized_pod("500m", "128Mi");
    n.rm.allocation.allocate(&p);
    n.sync(&p).await;
    let old = n.id("a");
    let r = resized(&p, "500m", "256Mi");
    let (p2, _) = n.rm.allocation.allocate(&r);
    let (a, _) = n.sync(&p2).await;
    assert_eq!(
        a.containers_to_kill[0].reason,
        "Container a resize requires restart"
    );
    assert!(a.containers_to_update.is_empty());
    assert_eq!(n.containers(), [exited("a", 137), running("a")]);
    let new = n.id("a");
    assert_ne!(new, old);
    assert_eq!(
        n.fake
            .container_resources(&new)
            .unwrap()
            .memory_limit_in_bytes,
        256 << 20
    );
    assert!(n.actions(&p2).await.1.is_noop());
}

#[tokio::test]
async fn a_failed_resize_is_reported_and_tried_again() {
    let n = node();
    let p = sized_pod("500m", "128Mi");
    n.rm.allocation.allocate(&p);
    n.sync(&p).await;
    let r = resized(&p, "250m", "128Mi");
    let (p2, _) = n.rm.allocation.allocate(&r);
    n.fake
        .inject_error("UpdateContainerResources", tonic::Code::Internal);
    let (st, a) = n.actions(&p2).await;
    let err =
        n.rm.apply_pod_actions(&p2, &st, &a, &n.backoff, &Default::default())
            .await
            .unwrap_err();
    assert!(
        err.to_string().contains("UpdateContainerResources"),
        "{err}"
    );
    let s = resize_status(&n, &p2, &n.status(&p2).await);
    let (reason, message) = condition(&s, "PodResizeInProgress").unwrap();
    assert_eq!(reason, "Error");
    assert!(
        message.starts_with("Failed to resize container a: "),
        "{message}"
    );
    // The next sync tries again and succeeds; the error is gone.
    n.sync(&p2).await;
    assert_eq!(
        n.fake.container_resources(&n.id("a")).unwrap().cpu_quota,
        25_000
    );
    let s = resize_status(&n, &p2, &n.status(&p2).await);
    assert_eq!(condition(&s, "PodResizeInProgress"), None);
}

#[tokio::test]
async fn a_resize_beyond_the_node_is_infeasible_and_changes_nothing() {
    use crate::allocation_manager::{AllocationManager, INFEASIBLE};
    use crate::resources::NodeAllocatable;
    let mut n = node();
    n.rm.allocation = Arc::new(AllocationManager::new(
        None,
        NodeAllocatable {
            cpu_milli: 2000,
            memory: 4 << 30,
        },
    ));
    let p = sized_pod("500m", "128Mi");
    n.rm.allocation.allocate(&p);
    n.sync(&p).await;
    let r = resized(&p, "3", "128Mi");
    let (p2, _) = n.rm.allocation.allocate(&r);
    // The pod runs at its allocation: nothing to do.
    let (st, a) = n.actions(&p2).await;
    assert!(a.is_noop(), "{a:?}");
    let s = resize_status(&n, &p2, &st);
    assert_eq!(
        condition(&s, "PodResizePending"),
        Some((
            INFEASIBLE.to_string(),
            "Node didn't have enough capacity: cpu, requested: 3000, capacity: 2000".to_string()
        ))
    );
    assert_eq!(condition(&s, "PodResizeInProgress"), None);
    assert_eq!(shown_cpu(&s), ("500m".to_string(), "500m".to_string()));
}
