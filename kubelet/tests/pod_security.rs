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
        // This host enforces AppArmor: the pod runs.
        wait_status(&node, "armored", "the pod to succeed", |s| {
            s["phase"] == "Succeeded"
        })
        .await;
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

/// `hostUsers: false` through containerd: Debian's containerd 1.6 reports no runtime
/// handlers (CRI 1.30's features), so, as upstream, the kubelet refuses to make the
/// sandbox rather than run the pod as host root; the pod stays Pending, no user namespace
/// IDs are kept for it, and the reason is in the log. With host namespaces the manifest
/// itself is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_users_false_is_refused_where_the_runtime_cannot_make_user_namespaces() {
    let node = Node::start().await;
    let pod = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  hostUsers: false\n{extra}  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [sleep, '3600']\n"
        )
    };
    node.write_manifest("userns.yaml", &pod("userns", ""));
    node.write_manifest(
        "userns-hostnet.yaml",
        &pod("userns-hostnet", "  hostNetwork: true\n"),
    );
    let refused = "Failed to create pod sandbox: can't set `spec.hostUsers: false`, runtime does not support user namespaces: the handler \"\" is not known";
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
    let uid = node.api_pod("userns").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!node
        .root_dir
        .join("pods")
        .join(&uid)
        .join("userns")
        .exists());
    // The manifest with hostNetwork is not a pod at all.
    node.wait_for(
        "the hostNetwork manifest to be refused",
        Duration::from_secs(30),
        || async {
            node.log_text().contains("spec.hostNetwork")
                && node.log_text().contains("when `hostUsers` is false")
        },
    )
    .await;
    assert!(node.api_pod("userns-hostnet").is_none());
}
