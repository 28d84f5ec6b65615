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
