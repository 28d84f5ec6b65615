//! Restart policies through containerd: Always with CrashLoopBackOff (10 s, then 20 s),
//! OnFailure and Never for finished containers, init containers in order and a failing
//! init container blocking the app containers.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use nodus_proto::runtime::v1 as cri;
use nodus_testkit::try_wait_until_async;

const EXITED: i32 = cri::ContainerState::ContainerExited as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_restarts_with_growing_backoff() {
    let node = Node::start().await;
    node.write_manifest(
        "crash.yaml",
        &pod_yaml("crash", "Always", "echo crashing; exit 1"),
    );
    // attempt -> (started_at, finished_at), recorded while polling (older attempts are
    // garbage-collected as newer ones come).
    let mut seen: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
    // A container is listed (Created) before it starts: wait for attempt 3's start time.
    let waited = try_wait_until_async(
        Duration::from_secs(90),
        "a fourth attempt (restart count 3)",
        async || {
            for c in node.containers("crash").await {
                let attempt = c.metadata.clone().unwrap().attempt;
                if let Some(st) = node.container_status(&c.id).await {
                    let e = seen.entry(attempt).or_default();
                    if st.started_at > 0 {
                        e.0 = st.started_at;
                    }
                    if st.state == EXITED {
                        e.1 = st.finished_at;
                    }
                    assert_eq!(
                        c.annotations["io.kubernetes.container.restartCount"],
                        attempt.to_string()
                    );
                }
            }
            seen.get(&3).is_some_and(|e| e.0 != 0)
        },
    )
    .await;
    if let Err(e) = waited {
        node.fail(&format!("{e}: {seen:?}"));
    }
    let delay = |k: u32| {
        let (prev, next) = (seen[&(k - 1)], seen[&k]);
        assert!(prev.1 > 0, "attempt {} finish not seen: {seen:?}", k - 1);
        (next.0 - prev.1) as f64 / 1e9
    };
    let (d1, d2, d3) = (delay(1), delay(2), delay(3));
    eprintln!("restart delays: {d1:.1} s, {d2:.1} s, {d3:.1} s");
    // Upstream's sequence: the first restart at once, then 10 s, then 20 s (loose bounds:
    // the relist and sync ticks are 1 s each).
    assert!(d1 < 5.0, "first restart should be immediate, was {d1:.1} s");
    assert!(
        (8.0..16.0).contains(&d2),
        "second restart after ~10 s, was {d2:.1} s"
    );
    assert!(
        (18.0..28.0).contains(&d3),
        "third restart after ~20 s, was {d3:.1} s"
    );
    // The status reports the restarts and the crash loop.
    let api = node
        .wait_for("/pods restart count", Duration::from_secs(10), || async {
            node.api_pod("crash")
                .filter(|p| p["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(3))
        })
        .await;
    let cs = &api["status"]["containerStatuses"][0];
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(api["status"]["phase"], "Running");
    // Exited containers do not pile up: at most the running/newest and one exited.
    assert!(node.containers("crash").await.len() <= 2);
}

async fn finished_pod(policy: &str, exit: i32, phase: &str) {
    let node = Node::start().await;
    node.write_manifest(
        "job.yaml",
        &pod_yaml("job", policy, &format!("echo working; exit {exit}")),
    );
    let c = node
        .wait_for(
            "the container to finish",
            Duration::from_secs(60),
            || async {
                node.containers("job")
                    .await
                    .into_iter()
                    .find(|c| c.state == EXITED)
            },
        )
        .await;
    let st = node.container_status(&c.id).await.unwrap();
    assert_eq!(st.exit_code, exit);
    // The pod reaches its terminal phase and its sandbox is stopped...
    let api = node
        .wait_for(
            &format!("phase {phase}"),
            Duration::from_secs(20),
            || async {
                node.api_pod("job")
                    .filter(|p| p["status"]["phase"] == phase)
            },
        )
        .await;
    assert_eq!(
        api["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        exit
    );
    node.wait_for(
        "the sandbox to be stopped",
        Duration::from_secs(20),
        || async {
            let sbs = node.sandboxes("job").await;
            (sbs.len() == 1 && sbs[0].state == cri::PodSandboxState::SandboxNotready as i32)
                .then_some(())
        },
    )
    .await;
    // ...and nothing is restarted afterwards: several relists pass without a new container
    // or sandbox.
    node.wait_relists(5).await;
    let containers = node.containers("job").await;
    assert_eq!(containers.len(), 1, "no restart expected: {containers:?}");
    assert_eq!(containers[0].id, c.id);
    assert_eq!(
        node.sandboxes("job").await.len(),
        1,
        "no new sandbox expected"
    );
    assert_eq!(node.api_pod("job").unwrap()["status"]["phase"], phase);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_with_exit_0_stays_completed() {
    finished_pod("OnFailure", 0, "Succeeded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_with_exit_1_stays_failed() {
    finished_pod("Never", 1, "Failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_message_is_reported() {
    let node = Node::start().await;
    node.write_manifest(
        "msg.yaml",
        &pod_yaml(
            "msg",
            "Never",
            "echo -n goodbye > /dev/termination-log; exit 3",
        ),
    );
    let api = node
        .wait_for("the pod to fail", Duration::from_secs(60), || async {
            node.api_pod("msg")
                .filter(|p| p["status"]["phase"] == "Failed")
        })
        .await;
    let t = &api["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 3);
    assert_eq!(t["reason"], "Error");
    assert_eq!(t["message"], "goodbye");
}

fn init_pod(name: &str, policy: &str, second_init: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {policy}\n  terminationGracePeriodSeconds: 2\n  initContainers:\n  - name: init1\n    image: {BUSYBOX_IMAGE}\n    command: [sh, -c, 'sleep 1; echo init1']\n  - name: init2\n    image: {BUSYBOX_IMAGE}\n    command: [sh, -c, {second_init:?}]\n  containers:\n  - name: app\n    image: {BUSYBOX_IMAGE}\n    command: [sh, -c, 'echo app; exec sleep 3600']\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_before_apps() {
    let node = Node::start().await;
    node.write_manifest(
        "init.yaml",
        &init_pod("init", "Always", "sleep 1; echo init2"),
    );
    node.wait_for(
        "the app container to run",
        Duration::from_secs(60),
        || async {
            node.containers("init")
                .await
                .iter()
                .any(|c| {
                    c.metadata.as_ref().is_some_and(|m| m.name == "app")
                        && c.state == cri::ContainerState::ContainerRunning as i32
                })
                .then_some(())
        },
    )
    .await;
    let mut times = BTreeMap::new();
    for c in node.containers("init").await {
        let st = node.container_status(&c.id).await.unwrap();
        let name = c.metadata.unwrap().name;
        times.insert(name.clone(), (st.started_at, st.finished_at, st.exit_code));
        if name != "app" {
            assert_eq!(c.annotations["io.kubernetes.container.type"], "init");
        }
    }
    if times.len() != 3 {
        node.fail(&format!("expected init1, init2 and app: {times:?}"));
    }
    let (i1, i2, app) = (times["init1"], times["init2"], times["app"]);
    assert_eq!((i1.2, i2.2), (0, 0));
    assert!(
        i1.1 <= i2.0,
        "init2 started before init1 finished: {times:?}"
    );
    assert!(
        i2.1 <= app.0,
        "app started before init2 finished: {times:?}"
    );
    let api = node
        .wait_for(
            "Running with init statuses",
            Duration::from_secs(20),
            || async {
                node.api_pod("init")
                    .filter(|p| p["status"]["phase"] == "Running")
            },
        )
        .await;
    let inits = api["status"]["initContainerStatuses"].as_array().unwrap();
    assert_eq!(inits.len(), 2);
    assert!(inits
        .iter()
        .all(|s| s["state"]["terminated"]["reason"] == "Completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_init_container_blocks_apps() {
    let node = Node::start().await;
    // Never: the pod fails; Always: the init container is retried. Apps never start.
    node.write_manifest("never.yaml", &init_pod("never", "Never", "exit 3"));
    node.write_manifest("always.yaml", &init_pod("always", "Always", "exit 3"));
    node.wait_for(
        "pod with Never to fail",
        Duration::from_secs(60),
        || async {
            node.api_pod("never")
                .filter(|p| p["status"]["phase"] == "Failed")
        },
    )
    .await;
    node.wait_for(
        "init2 of the Always pod to be retried",
        Duration::from_secs(60),
        || async {
            node.containers("always")
                .await
                .iter()
                .any(|c| {
                    c.metadata
                        .as_ref()
                        .is_some_and(|m| m.name == "init2" && m.attempt >= 1)
                })
                .then_some(())
        },
    )
    .await;
    // The apps stay unstarted: a few relists pass, then none of them may exist.
    node.wait_relists(3).await;
    for pod in ["never", "always"] {
        let names: Vec<String> = node
            .containers(pod)
            .await
            .into_iter()
            .map(|c| c.metadata.unwrap().name)
            .collect();
        assert!(
            !names.contains(&"app".to_string()),
            "{pod}: app started: {names:?}"
        );
        assert!(names.contains(&"init2".to_string()), "{pod}: {names:?}");
    }
    let api = node.api_pod("always").unwrap();
    assert_eq!(api["status"]["phase"], "Pending");
    assert!(api["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Initialized" && c["status"] == "False"));
}
