//! Native sidecars (init containers with `restartPolicy: Always`) through containerd, as
//! upstream runs them: started before the app container, restarted when they exit (in a
//! `restartPolicy: Never` pod too), and a pod whose app container finished Succeeds with
//! its sidecar stopped after it.

mod common;

use std::time::Duration;

use common::*;
use nodus_proto::runtime::v1 as cri;

/// A Never pod: the sidecar `proxy` and the app `main`, which runs `main` with the host
/// directory `signal` at /sig.
fn sidecar_pod(name: &str, main: &str, signal: &std::path::Path) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 2\n  volumes:\n  - {{name: sig, hostPath: {{path: {}}}}}\n  initContainers:\n  - name: proxy\n    image: {BUSYBOX_IMAGE}\n    restartPolicy: Always\n    command: [sh, -c, 'exec sleep 3600']\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [sh, -c, {main:?}]\n    volumeMounts: [{{name: sig, mountPath: /sig}}]\n",
        signal.display()
    )
}

fn named<'a>(cs: &'a [cri::Container], name: &str) -> Vec<&'a cri::Container> {
    cs.iter()
        .filter(|c| c.metadata.as_ref().is_some_and(|m| m.name == name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_runs_before_the_app_restarts_and_stops_after_it() {
    let node = Node::start().await;
    // The app waits for a file the test writes, so the sidecar's restart happens while it runs.
    let signal = node.ctrd.dir().join("signal");
    std::fs::create_dir_all(&signal).unwrap();
    node.write_manifest(
        "job.yaml",
        &sidecar_pod(
            "job",
            "while [ ! -e /sig/done ]; do sleep 0.2; done; echo finished",
            &signal,
        ),
    );
    let running = node.wait_running("job", 2).await;
    let proxy = named(&running, "proxy")[0].clone();
    let main = named(&running, "main")[0].clone();
    assert!(
        proxy.created_at < main.created_at,
        "the sidecar starts first"
    );
    let pod = node
        .wait_for(
            "the pod Running and Initialized",
            Duration::from_secs(20),
            || async {
                let p = node.api_pod("job")?;
                let init = p["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Initialized" && c["status"] == "True");
                (p["status"]["phase"] == "Running" && init).then_some(p)
            },
        )
        .await;
    let sidecar = &pod["status"]["initContainerStatuses"][0];
    assert_eq!(sidecar["name"], "proxy");
    assert_eq!(sidecar["ready"], true, "{sidecar}");
    assert_eq!(sidecar["started"], true, "{sidecar}");

    // The sidecar dies: started again although the pod's restartPolicy is Never.
    let mut rt = node.rt().await;
    rt.stop_container(cri::StopContainerRequest {
        container_id: proxy.id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let again = node
        .wait_for("the sidecar restarted", Duration::from_secs(30), || async {
            let cs = node.containers("job").await;
            let running = named(&cs, "proxy")
                .into_iter()
                .find(|c| {
                    c.id != proxy.id && c.state == cri::ContainerState::ContainerRunning as i32
                })
                .cloned();
            running
        })
        .await;
    assert_eq!(again.metadata.as_ref().unwrap().attempt, 1);
    let cs = node.containers("job").await;
    assert_eq!(
        named(&cs, "main").len(),
        1,
        "the app container was not touched"
    );

    // The app finishes: the pod Succeeds and its sidecar is stopped; nothing starts again.
    std::fs::write(signal.join("done"), b"").unwrap();
    node.wait_for("the pod Succeeded", Duration::from_secs(30), || async {
        let p = node.api_pod("job")?;
        (p["status"]["phase"] == "Succeeded").then_some(())
    })
    .await;
    node.wait_for("the sidecar stopped", Duration::from_secs(30), || async {
        let cs = node.containers("job").await;
        cs.iter()
            .all(|c| c.state != cri::ContainerState::ContainerRunning as i32)
            .then_some(())
    })
    .await;
    node.wait_relists(3).await;
    let cs = node.containers("job").await;
    assert_eq!(named(&cs, "main").len(), 1);
    assert_eq!(
        named(&cs, "proxy").len(),
        2,
        "not restarted after the app finished"
    );
    assert_eq!(
        node.exited_log("job", "main").await.trim(),
        "finished",
        "the app ran to its end"
    );
}
