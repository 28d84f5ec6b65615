//! Pod security as upstream's kubelet enforces it: seccomp profiles reach the runtime
//! (RuntimeDefault blocks `unshare`, Unconfined does not), sysctls outside the safe set are
//! refused at admission with SysctlForbidden while safe ones are applied, and a pod asking
//! for an AppArmor profile on a host without AppArmor is refused as upstream refuses it.

mod common;

use std::time::Duration;

use common::*;

/// The `/pods` status of static pod `name` once `f` holds for it.
async fn wait_status(
    node: &Node,
    name: &str,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    node.wait_for(what, Duration::from_secs(60), || async {
        let status = node.api_pod(name)?["status"].clone();
        f(&status).then_some(status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_profiles_reach_the_runtime() {
    let node = Node::start().await;
    let script = "grep Seccomp: /proc/self/status; unshare -U true && echo unshare=ok || echo unshare=denied";
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: seccomp
spec:
  restartPolicy: Never
  securityContext:
    seccompProfile: {{type: RuntimeDefault}}
  containers:
  - name: pod-default
    image: {BUSYBOX_IMAGE}
    command: [sh, -c, '{script}']
  - name: unconfined
    image: {BUSYBOX_IMAGE}
    command: [sh, -c, '{script}']
    securityContext:
      seccompProfile: {{type: Unconfined}}
"#
    );
    node.write_manifest("seccomp.yaml", &manifest);
    let confined = node.exited_log("seccomp", "pod-default").await;
    assert!(confined.contains("Seccomp:\t2"), "{confined}");
    assert!(confined.contains("unshare=denied"), "{confined}");
    let free = node.exited_log("seccomp", "unconfined").await;
    assert!(free.contains("Seccomp:\t0"), "{free}");
    assert!(free.contains("unshare=ok"), "{free}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysctls_outside_the_safe_set_are_forbidden() {
    let node = Node::start().await;
    let pod = |name: &str, sysctl: &str, value: &str, host_network: bool| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n  hostNetwork: {host_network}\n  securityContext:\n    sysctls: [{{name: {sysctl}, value: '{value}'}}]\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [cat, /proc/sys/net/ipv4/ip_local_port_range]\n"
        )
    };
    node.write_manifest(
        "unsafe.yaml",
        &pod("unsafe", "kernel.msgmax", "10000", false),
    );
    node.write_manifest(
        "hostnet.yaml",
        &pod("hostnet", "net.ipv4.ip_local_port_range", "2000 3000", true),
    );
    node.write_manifest(
        "safe.yaml",
        &pod("safe", "net.ipv4.ip_local_port_range", "2000 3000", false),
    );
    for (name, message) in [
        (
            "unsafe",
            "Pod was rejected: forbidden sysctl: \"kernel.msgmax\" not allowlisted",
        ),
        (
            "hostnet",
            "Pod was rejected: forbidden sysctl: \"net.ipv4.ip_local_port_range\" not allowed with host net enabled",
        ),
    ] {
        let st = wait_status(&node, name, "the pod to be refused", |s| {
            s["phase"] == "Failed"
        })
        .await;
        assert_eq!(st["reason"], "SysctlForbidden", "{name}: {st}");
        assert_eq!(st["message"], message, "{name}");
        assert!(node.sandboxes(name).await.is_empty(), "{name} never ran");
    }
    // A safe sysctl reaches the pod's own network namespace.
    let range = node.exited_log("safe", "main").await;
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["2000", "3000"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apparmor_profile_without_apparmor_on_the_host_is_refused() {
    let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim() == "Y");
    let node = Node::start().await;
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: armored\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    command: ['true']\n    securityContext:\n      appArmorProfile: {{type: RuntimeDefault}}\n"
    );
    node.write_manifest("armored.yaml", &manifest);
    if enabled {
        // This host has AppArmor: admission lets the pod through and the profile goes to
        // the runtime. It runs where containerd applies AppArmor; the test's containerd has
        // it turned off (disable_apparmor), and refuses the profile ("apparmor is not
        // supported"), as the VM tier's Debian guest shows.
        let st = wait_status(&node, "armored", "the pod to reach the runtime", |s| {
            let waiting = &s["containerStatuses"][0]["state"]["waiting"];
            s["phase"] == "Succeeded"
                || (waiting["reason"] == "CreateContainerError"
                    && waiting["message"]
                        .as_str()
                        .is_some_and(|m| m.to_lowercase().contains("apparmor")))
        })
        .await;
        assert_ne!(st["reason"], "AppArmor", "{st}");
        return;
    }
    let st = wait_status(&node, "armored", "the pod to be refused", |s| {
        s["phase"] == "Failed"
    })
    .await;
    assert_eq!(st["reason"], "AppArmor");
    assert_eq!(
        st["message"],
        "Pod was rejected: Cannot enforce AppArmor: AppArmor is not enabled on the host"
    );
}

/// `hostUsers: false` through containerd. Where the runtime handler reports user namespace
/// support (CRI 1.30's features: containerd 2, run by hand with `NODUS_CONTAINERD`), the
/// pod runs in a user namespace of its own: its root is the first ID of the block the
/// kubelet gave it, on the host as well (a file it makes on a hostPath is that ID's).
/// Debian 12's containerd 1.6 reports no handlers: as upstream, the kubelet refuses to
/// make the sandbox rather than run the pod as host root; the pod stays Pending and no IDs
/// are kept for it. With host namespaces the manifest itself is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_users_false_runs_in_a_user_namespace_or_is_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let node = Node::start().await;
    let shared = node.root_dir.parent().unwrap().join("userns-host");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let pod = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  hostUsers: false\n{extra}  volumes:\n  - name: host\n    hostPath: {{path: {}}}\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [sh, -c, 'cat /proc/self/uid_map; echo uid=$(id -u); touch /host/made; exec sleep 3600']\n    volumeMounts:\n    - {{name: host, mountPath: /host}}\n",
            shared.display()
        )
    };
    node.write_manifest("userns.yaml", &pod("userns", ""));
    node.write_manifest(
        "userns-hostnet.yaml",
        &pod("userns-hostnet", "  hostNetwork: true\n"),
    );
    let handlers = node
        .rt()
        .await
        .status(nodus_proto::runtime::v1::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .runtime_handlers;
    let supported = handlers
        .iter()
        .any(|h| h.name.is_empty() && h.features.is_some_and(|f| f.user_namespaces));
    let uid = || {
        node.api_pod("userns").unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    eprintln!("the default runtime handler supports user namespaces: {supported}");
    if supported {
        let c = node.wait_running("userns", 1).await;
        let file: serde_json::Value = serde_json::from_slice(
            &std::fs::read(node.root_dir.join("pods").join(uid()).join("userns")).unwrap(),
        )
        .unwrap();
        let first = file["uidMappings"][0]["hostId"].as_u64().unwrap() as u32;
        assert!(first >= 65536 && first.is_multiple_of(65536), "{file}");
        let made = shared.join("made");
        node.wait_for(
            "the pod's file on the hostPath",
            Duration::from_secs(20),
            || async { made.exists() },
        )
        .await;
        let log_path = node.container_status(&c[0].id).await.unwrap().log_path;
        let log = std::fs::read_to_string(log_path).unwrap();
        let words: Vec<&str> = log
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .flat_map(|l| l.split_whitespace())
            .collect();
        assert_eq!(words, ["0", &first.to_string(), "65536", "uid=0"], "{log}");
        let m = std::fs::metadata(&made).unwrap();
        assert_eq!((m.uid(), m.gid()), (first, first));
    } else {
        // containerd 1.6 lists no handlers ("the handler \"\" is not known" follows);
        // containerd 2 lists runc 1.1's without the feature (nothing follows).
        let refused = "Failed to create pod sandbox: can't set `spec.hostUsers: false`, runtime does not support user namespaces";
        node.wait_for(
            "the sandbox to be refused",
            Duration::from_secs(60),
            || async { node.log_text().contains(refused) },
        )
        .await;
        let st = wait_status(&node, "userns", "the pod to be Pending", |s| {
            s["phase"] == "Pending"
        })
        .await;
        assert_eq!(
            st["containerStatuses"][0]["state"]["waiting"]["reason"], "ContainerCreating",
            "{st}"
        );
        assert!(node.sandboxes("userns").await.is_empty());
        assert!(!node
            .root_dir
            .join("pods")
            .join(uid())
            .join("userns")
            .exists());
        assert!(!shared.join("made").exists());
    }
    // The manifest with hostNetwork is not a pod at all.
    node.wait_for(
        "the hostNetwork manifest to be refused",
        Duration::from_secs(30),
        || async {
            let log = node.log_text();
            log.contains("spec.hostNetwork") && log.contains("when `hostUsers` is false")
        },
    )
    .await;
    assert!(node.api_pod("userns-hostnet").is_none());
}
