//! Hostile input end to end, through the kubelet on a private containerd: broken and
//! malicious static manifests are logged naming the file, the field and the value and
//! start nothing; a `subPath` symlink out of its volume is refused with
//! CreateContainerConfigError; a `subPath` symlink inside its volume works through the
//! kubelet's bind mount, and nothing of it (mount or directory) is left after the pod.

mod common;

use std::time::Duration;

use common::*;

/// `(file, manifest, what its log line must contain)`.
fn hostile_manifests() -> Vec<(&'static str, String, Vec<&'static str>)> {
    let good = pod_yaml("x", "Never", "true");
    let with_container = |extra: &str| format!("{good}{extra}");
    let with_volume = |volume: &str, mount: &str| {
        good.replace(
            "  containers:\n",
            &format!("  volumes:\n  - {volume}\n  containers:\n"),
        ) + &format!("    volumeMounts: [{mount}]\n")
    };
    let ten_mb = "a".repeat(10 << 20);
    let bomb = "kind: Pod\na: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]\n";
    vec![
        (
            "binary.yaml",
            "\u{0}\u{1}\u{2}\u{ff}PK\u{3}".into(),
            vec!["(document)"],
        ),
        ("bomb.yaml", bomb.into(), vec!["(document)"]),
        (
            "deep.json",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
            vec!["(document)"],
        ),
        (
            "containers-type.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: t}\nspec: {containers: nope}\n".into(),
            vec!["spec.containers", "nope"],
        ),
        (
            "uid-type.yaml",
            with_container("    securityContext: {runAsUser: root}\n"),
            vec!["spec.containers[0].securityContext.runAsUser", "root"],
        ),
        (
            "grace.yaml",
            good.replace(
                "terminationGracePeriodSeconds: 2",
                "terminationGracePeriodSeconds: -5",
            ),
            vec!["spec.terminationGracePeriodSeconds", "-5"],
        ),
        (
            "grace-huge.yaml",
            good.replace(
                "terminationGracePeriodSeconds: 2",
                "terminationGracePeriodSeconds: 99999999999999999999999",
            ),
            vec!["spec.terminationGracePeriodSeconds"],
        ),
        (
            "port.yaml",
            with_container("    ports: [{containerPort: 70000}]\n"),
            vec!["spec.containers[0].ports[0].containerPort", "70000"],
        ),
        (
            "memory.yaml",
            with_container("    resources: {limits: {memory: 12Zi}}\n"),
            vec!["spec.containers[0].resources.limits.memory", "12Zi"],
        ),
        (
            "cpu.yaml",
            with_container("    resources: {requests: {cpu: '-3'}}\n"),
            vec!["spec.containers[0].resources.requests.cpu", "-3"],
        ),
        (
            "annotation.yaml",
            good.replace(
                "  name: x\n",
                &format!("  name: x\n  annotations: {{big: {ten_mb}}}\n"),
            ),
            vec!["metadata.annotations", "262144"],
        ),
        (
            "name.yaml",
            good.replace("  name: x\n", &format!("  name: {}\n", "n".repeat(300))),
            vec!["metadata.name"],
        ),
        (
            "subpath-up.yaml",
            with_volume(
                "{name: v, emptyDir: {}}",
                "{name: v, mountPath: /m, subPath: ../../../etc}",
            ),
            vec![
                "spec.containers[0].volumeMounts[0].subPath",
                "../../../etc",
                "'..'",
            ],
        ),
        (
            "subpath-abs.yaml",
            with_volume(
                "{name: v, emptyDir: {}}",
                "{name: v, mountPath: /m, subPath: /etc/shadow}",
            ),
            vec!["spec.containers[0].volumeMounts[0].subPath", "/etc/shadow"],
        ),
        (
            "hostpath-up.yaml",
            with_volume(
                "{name: v, hostPath: {path: /tmp/../etc}}",
                "{name: v, mountPath: /m}",
            ),
            vec!["spec.volumes[0].hostPath.path", "/tmp/../etc"],
        ),
        (
            "mount-unknown.yaml",
            with_container("    volumeMounts: [{name: ghost, mountPath: /g}]\n"),
            vec!["spec.containers[0].volumeMounts[0].name", "ghost"],
        ),
        (
            "kind.yaml",
            good.replace("kind: Pod", "kind: Secret"),
            vec!["kind", "Secret"],
        ),
        (
            "version.yaml",
            good.replace("apiVersion: v1", "apiVersion: v9"),
            vec!["apiVersion", "unsupported value \"v9\""],
        ),
        (
            "policy.yaml",
            with_container("    imagePullPolicy: Sometimes\n"),
            vec!["spec.containers[0].imagePullPolicy", "Sometimes"],
        ),
        (
            "container-name.yaml",
            good.replace("  - name: main\n", "  - name: ../../etc\n"),
            vec!["spec.containers[0].name", "../../etc"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_manifests_are_named_and_start_nothing() {
    let mut node = Node::start().await;
    let cases = hostile_manifests();
    for (file, text, _) in &cases {
        node.write_manifest(file, text);
    }
    // A good pod written last: once it runs, every file before it was read.
    node.write_manifest(
        "zz-good.yaml",
        &pod_yaml("good", "Always", "exec sleep 3600"),
    );
    node.wait_running("good", 1).await;
    let dir = node.pod_dir().display().to_string();
    let log = node
        .wait_for(
            "every hostile manifest to be logged",
            Duration::from_secs(30),
            || async {
                let log = node.log_text();
                cases
                    .iter()
                    .all(|(f, _, _)| log.contains(&format!("{dir}/{f}")))
                    .then_some(log)
            },
        )
        .await;
    for (file, _, expect) in &cases {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("{dir}/{file}")))
            .unwrap_or_else(|| panic!("{file} not logged"));
        eprintln!("{file}: {}", &line[line.find("error").unwrap_or(0)..]);
        // No log line carries a 10 MB value.
        assert!(
            line.len() < 64 * 1024,
            "{file}: a line of {} bytes",
            line.len()
        );
        for e in expect {
            assert!(line.contains(e), "{file}: {e:?} missing from: {line}");
        }
    }
    assert!(node.kubelet_alive(), "the kubelet died on hostile input");
    // Nothing but the good pod was started, a few relists after every file was read.
    node.wait_relists(2).await;
    assert_eq!(node.all_sandboxes().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_path_symlinks_stay_inside_their_volume() {
    let node = Node::start().await;
    let secret = node.ctrd.dir().join("outside-secret");
    std::fs::write(&secret, "host secret\n").unwrap();
    // The init container plants two symlinks in the shared volume: one out of it (to the
    // host's file, by its host path: what the kubelet would follow), one inside it.
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: links
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  volumes:
  - {{name: shared, emptyDir: {{}}}}
  initContainers:
  - name: plant
    image: {BUSYBOX_IMAGE}
    command: [sh, -c, 'mkdir /v/real && echo inside > /v/real/f && ln -s {secret} /v/out && ln -s / /v/root && ln -s real /v/in']
    volumeMounts: [{{name: shared, mountPath: /v}}]
  containers:
  - name: escape-file
    image: {BUSYBOX_IMAGE}
    command: [cat, /m]
    volumeMounts: [{{name: shared, mountPath: /m, subPath: out}}]
  - name: escape-root
    image: {BUSYBOX_IMAGE}
    command: [ls, /m]
    volumeMounts: [{{name: shared, mountPath: /m, subPath: root}}]
  - name: inside
    image: {BUSYBOX_IMAGE}
    command: [sh, -c, 'cat /m/f; sleep 3600']
    volumeMounts: [{{name: shared, mountPath: /m, subPath: in}}]
"#,
        secret = secret.display()
    );
    node.write_manifest("links.yaml", &manifest);
    let statuses = node
        .wait_for(
            "both escapes to be refused and the inside link to run",
            Duration::from_secs(60),
            || async {
                let p = node.api_pod("links")?;
                let st = p["status"]["containerStatuses"].as_array()?.clone();
                let by = |n: &str| st.iter().find(|c| c["name"] == n).cloned();
                let refused = |c: Option<serde_json::Value>| {
                    c.is_some_and(|c| {
                        c["state"]["waiting"]["reason"] == "CreateContainerConfigError"
                    })
                };
                (refused(by("escape-file"))
                    && refused(by("escape-root"))
                    && by("inside")?["state"]["running"].is_object())
                .then_some(st)
            },
        )
        .await;
    for (name, sub) in [("escape-file", "out"), ("escape-root", "root")] {
        let c = statuses.iter().find(|c| c["name"] == name).unwrap();
        let msg = c["state"]["waiting"]["message"].as_str().unwrap_or("");
        assert!(
            msg.contains(&format!("subPath \"{sub}\" leads outside the volume")),
            "{name}: {msg}"
        );
    }
    let running = node.wait_running("links", 1).await;
    assert_eq!(running.len(), 1, "only the inside container runs");
    let log_path = node
        .container_status(&running[0].id)
        .await
        .unwrap()
        .log_path;
    let log = node
        .wait_for(
            "the inside container's output",
            Duration::from_secs(20),
            || async {
                let l = std::fs::read_to_string(&log_path).ok()?;
                l.contains("inside").then_some(l)
            },
        )
        .await;
    assert!(!log.contains("host secret"), "{log}");

    // The runtime was given the kubelet's bind mount, which goes with the pod.
    let root = node.ctrd.dir().join("kubelet").display().to_string();
    let sub_mounts = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&root) && l.contains("/volume-subpaths/"))
            .count()
    };
    assert_eq!(
        sub_mounts(),
        1,
        "one subPath mount for the running container"
    );
    node.remove_manifest("links.yaml");
    node.wait_for("the pod to be removed", Duration::from_secs(30), || async {
        node.sandboxes("links").await.is_empty().then_some(())
    })
    .await;
    node.wait_for(
        "its subPath mount to go",
        Duration::from_secs(20),
        || async { (sub_mounts() == 0).then_some(()) },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "host secret\n",
        "the host file is untouched"
    );
}
