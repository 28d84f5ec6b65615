//! What a container finds around it, as upstream's kubelet sets it up (the node conformance
//! specs these behaviours come from are named on each test): the managed /etc/hosts, the
//! resolver of ClusterFirst pods, resource env with the API server's default divisor, the
//! termination-message file for a non-root user, a missing hostPath subPath, and
//! activeDeadlineSeconds.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_see_hosts_dns_env_and_volumes_as_upstream_sets_them() {
    let node = Node::start_with(
        "clusterDNS: [10.96.0.10]\nclusterDomain: cluster.local\n",
        &[],
    )
    .await;
    let host_dir = node.ctrd.dir().join("hostpath");
    std::fs::create_dir_all(&host_dir).unwrap();
    let own_hosts = node.ctrd.dir().join("own-hosts");
    std::fs::write(&own_hosts, "1.2.3.4 mine\n").unwrap();
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: env
  namespace: ns1
spec:
  restartPolicy: Never
  hostname: box
  subdomain: sub
  hostAliases: [{{ip: 10.1.2.3, hostnames: [foo.local, bar.local]}}]
  volumes:
  - {{name: host, hostPath: {{path: {host}}}}}
  - {{name: own, hostPath: {{path: {own}, type: File}}}}
  containers:
  - name: hosts
    image: {BUSYBOX_IMAGE}
    command: [cat, /etc/hosts]
  - name: own-hosts
    image: {BUSYBOX_IMAGE}
    command: [cat, /etc/hosts]
    volumeMounts: [{{name: own, mountPath: /etc/hosts}}]
  - name: resolv
    image: {BUSYBOX_IMAGE}
    command: [cat, /etc/resolv.conf]
  - name: env
    image: {BUSYBOX_IMAGE}
    command: [sh, -c, 'echo "mem=$MEM cpu=$CPU"']
    resources: {{limits: {{memory: 64Mi, cpu: 250m}}}}
    env:
    - {{name: MEM, valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: '0'}}}}}}
    - {{name: CPU, valueFrom: {{resourceFieldRef: {{resource: limits.cpu, divisor: '0'}}}}}}
  - name: term
    image: {BUSYBOX_IMAGE}
    command: [sh, -c, 'echo -n written-as-1000 > /dev/termination-log']
    securityContext: {{runAsUser: 1000}}
  - name: subpath
    image: {BUSYBOX_IMAGE}
    command: [sh, -c, 'echo hi > /data/file && echo done']
    volumeMounts: [{{name: host, mountPath: /data, subPath: made/here}}]
"#,
        host = host_dir.display(),
        own = own_hosts.display(),
    );
    node.write_manifest("env.yaml", &manifest);

    // kubernetes node conformance: "KubeletManagedEtcHosts should test kubelet managed
    // /etc/hosts file" and "should be able to add HostAliases".
    let hosts = node.exited_log("env", "hosts").await;
    assert!(
        hosts.starts_with("# Kubernetes-managed hosts file."),
        "{hosts}"
    );
    let pod_line = hosts
        .lines()
        .find(|l| l.ends_with("\tbox"))
        .unwrap_or_else(|| node.fail(&format!("no line for the pod's name:\n{hosts}")));
    let sandbox = &node.sandboxes("env").await[0];
    let ip = node.sandbox_ip(&sandbox.id).await;
    assert_eq!(
        pod_line,
        format!("{ip}\tbox.sub.ns1.svc.cluster.local\tbox")
    );
    assert!(
        hosts.ends_with("# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local"),
        "{hosts}"
    );
    assert_eq!(node.exited_log("env", "own-hosts").await, "1.2.3.4 mine");

    // DNS for a ClusterFirst pod: the cluster's server only, its search path, ndots:5.
    let resolv = node.exited_log("env", "resolv").await;
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert_eq!(
        resolv
            .lines()
            .filter(|l| l.starts_with("nameserver"))
            .count(),
        1,
        "{resolv}"
    );
    assert!(
        resolv.contains("search ns1.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("ndots:5"), "{resolv}");

    // "Downward API should provide container's limits.cpu/memory ... as env vars": the API
    // server stores divisor "0" when none is given.
    assert_eq!(
        node.exited_log("env", "env").await,
        format!("mem={} cpu=1", 64 << 20)
    );

    // "Container Runtime ... should report termination message ... as non-root user".
    node.exited_log("env", "term").await;
    let message = node
        .wait_for(
            "the termination message in the status",
            Duration::from_secs(20),
            || async {
                let pod = node.api_pod("env")?;
                let statuses = pod["status"]["containerStatuses"].as_array()?.clone();
                let term = statuses.iter().find(|s| s["name"] == "term")?;
                term["state"]["terminated"]["message"]
                    .as_str()
                    .map(str::to_owned)
            },
        )
        .await;
    assert_eq!(message, "written-as-1000");

    // "HostPath should support subPath": a missing subPath directory is made in the volume.
    assert_eq!(node.exited_log("env", "subpath").await, "done");
    assert_eq!(
        std::fs::read_to_string(host_dir.join("made/here/file")).unwrap(),
        "hi\n"
    );
}

// kubernetes node conformance: "Pods should allow activeDeadlineSeconds to be updated" (the
// deadline part: a pod past it is failed with DeadlineExceeded and its containers stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_past_its_active_deadline_is_failed_and_stopped() {
    let node = Node::start().await;
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: deadline\nspec:\n  activeDeadlineSeconds: 3\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [sleep, '3600']\n"
    );
    node.write_manifest("deadline.yaml", &manifest);
    let c = node.wait_running("deadline", 1).await.remove(0);
    let status = node
        .wait_for("the pod to fail", Duration::from_secs(30), || async {
            let pod = node.api_pod("deadline")?;
            (pod["status"]["phase"] == "Failed").then(|| pod["status"].clone())
        })
        .await;
    assert_eq!(status["reason"], "DeadlineExceeded");
    assert_eq!(
        status["message"],
        "Pod was active on the node longer than the specified deadline"
    );
    let st = node.container_status(&c.id).await.unwrap();
    assert_eq!(
        st.state,
        nodus_proto::runtime::v1::ContainerState::ContainerExited as i32
    );
    // It stays failed: no container is started again.
    assert_eq!(node.containers("deadline").await.len(), 1);
}
