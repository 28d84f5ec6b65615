//! Workload features end to end through containerd, one node for the file (the pods are
//! independent and start together): resources and QoS (container and pod cgroups,
//! admission), container spec (env references, `$(VAR)` expansion, workingDir), volumes
//! (emptyDir on disk and in memory, hostPath, downwardAPI, subPath, readOnly), the
//! security context (user, groups, read-only root, capabilities, runAsNonRoot, privileged,
//! hostPID, hostNetwork, hostIPC, sysctls) and admission (OutOfmemory, OutOfpods).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

fn cgroup_file(ctrl: &str, rel: &str, file: &str) -> Option<String> {
    let p = PathBuf::from("/sys/fs/cgroup")
        .join(ctrl)
        .join(rel.trim_start_matches('/'))
        .join(file);
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// All of container `container`'s CRI log lines of static pod `name`, message part only.
fn log_lines(node: &Node, name: &str, container: &str) -> Vec<String> {
    let Ok(dirs) = std::fs::read_dir(node.ctrd.pod_logs_dir()) else {
        return Vec::new();
    };
    let prefix = format!("default_{name}-{NODE}_");
    let mut out = Vec::new();
    for d in dirs.flatten() {
        if !d.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(d.path().join(container)) else {
            continue;
        };
        let mut files: Vec<_> = files.flatten().map(|f| f.path()).collect();
        files.sort();
        for f in files {
            for l in std::fs::read_to_string(f).unwrap_or_default().lines() {
                // "<time> <stream> <tag> <message>"
                if let Some(msg) = l.splitn(4, ' ').nth(3) {
                    out.push(msg.to_string());
                }
            }
        }
    }
    out
}

/// Waits until the container's log has a line `DONE` and returns the lines before it.
async fn output(node: &Node, name: &str) -> Vec<String> {
    node.wait_for(
        &format!("the output of pod {name}"),
        Duration::from_secs(90),
        || async {
            let l = log_lines(node, name, "main");
            l.iter().any(|x| x == "DONE").then_some(l)
        },
    )
    .await
}

fn value<'a>(lines: &'a [String], key: &str) -> &'a str {
    let prefix = format!("{key}=");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key}= in output {lines:?}"))
}

fn pod(name: &str, pod_extra: &str, container_extra: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}, tier: test}}\nspec:\n  terminationGracePeriodSeconds: 2\n{pod_extra}  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n    command: [sh, -c, {script:?}]\n{container_extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_spec_volumes_and_security_context() {
    // maxPods 10: exactly the pods below that are admitted ("huge" is rejected).
    let node = Node::start_with("maxPods: 10\n", &[]).await;
    let host_dir = node.ctrd.dir().join("hostpath-src");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("hello.txt"), "from-the-host").unwrap();
    let host_new = node.ctrd.dir().join("hostpath-created");

    // Resources: Guaranteed, Burstable, BestEffort; one far too big for the node.
    node.write_manifest(
        "guaranteed.yaml",
        &pod(
            "guaranteed",
            "",
            "    resources: {limits: {cpu: 500m, memory: 64Mi}}\n",
            "echo OOM=$(cat /proc/self/oom_score_adj); echo DONE; exec sleep 3600",
        ),
    );
    node.write_manifest(
        "burstable.yaml",
        &pod(
            "burstable",
            "",
            "    resources: {requests: {cpu: 100m, memory: 32Mi}, limits: {memory: 128Mi}}\n",
            "echo OOM=$(cat /proc/self/oom_score_adj); echo DONE; exec sleep 3600",
        ),
    );
    node.write_manifest(
        "huge.yaml",
        &pod(
            "huge",
            "",
            "    resources: {requests: {memory: 1Pi}}\n",
            "echo DONE; exec sleep 3600",
        ),
    );
    // Container spec: env references and expansion, workingDir.
    node.write_manifest(
        "env.yaml",
        &pod(
            "env",
            "",
            "    workingDir: /tmp\n    args: ['$(GREETING) $(POD_NAME)', '$$(POD_NAME)', '$(UNKNOWN)']\n    resources: {limits: {memory: 64Mi}, requests: {cpu: 250m, memory: 64Mi}}\n    env:\n    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}\n    - {name: POD_NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}\n    - {name: POD_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}\n    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}\n    - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}\n    - {name: APP, valueFrom: {fieldRef: {fieldPath: \"metadata.labels['app']\"}}}\n    - {name: MEM_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}\n    - {name: CPU_M, valueFrom: {resourceFieldRef: {resource: requests.cpu, divisor: 1m}}}\n    - {name: GREETING, value: hello}\n    - {name: COMBINED, value: '$(GREETING)-$(POD_NS)'}\n",
            "echo ARGS=\"$0|$1|$2\"; echo NAME=$POD_NAME; echo NS=$POD_NS; echo UID=$POD_UID; echo IP=$POD_IP; echo NODE=$NODE_NAME; echo APP=$APP; echo MEM=$MEM_MI; echo CPU=$CPU_M; echo COMBINED=$COMBINED; echo PWD=$(pwd); echo DONE; exec sleep 3600",
        ),
    );
    // Volumes.
    node.write_manifest(
        "vol.yaml",
        &pod(
            "vol",
            &format!(
                "  volumes:\n  - {{name: mem, emptyDir: {{medium: Memory, sizeLimit: 16Mi}}}}\n  - {{name: disk, emptyDir: {{}}}}\n  - {{name: host, hostPath: {{path: {}, type: Directory}}}}\n  - {{name: newdir, hostPath: {{path: {}, type: DirectoryOrCreate}}}}\n  - name: info\n    downwardAPI:\n      items:\n      - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}\n      - {{path: sub/name, fieldRef: {{fieldPath: metadata.name}}}}\n",
                host_dir.display(),
                host_new.display()
            ),
            "    volumeMounts:\n    - {name: mem, mountPath: /mem}\n    - {name: disk, mountPath: /data}\n    - {name: disk, mountPath: /sub, subPath: a/b}\n    - {name: host, mountPath: /host, readOnly: true}\n    - {name: newdir, mountPath: /newdir}\n    - {name: info, mountPath: /info}\n",
            "echo MEMFS=$(awk '$2==\"/mem\"{print $3}' /proc/mounts); echo MEMKB=$(df -k /mem | awk 'NR==2{print $2}'); echo sub > /sub/f; echo SUB=$(cat /data/a/b/f); echo HOST=$(cat /host/hello.txt); if touch /host/x 2>/dev/null; then echo HOSTRO=no; else echo HOSTRO=yes; fi; echo made > /newdir/f; echo NAME=$(cat /info/sub/name); echo APPLABEL=$(grep '^app=' /info/labels); echo DONE; exec sleep 3600",
        ),
    );
    // Security context.
    node.write_manifest(
        "sec.yaml",
        &pod(
            "sec",
            "  securityContext: {runAsUser: 1000, runAsGroup: 3000, supplementalGroups: [4000], fsGroup: 2000}\n  volumes: [{name: scratch, emptyDir: {}}]\n",
            "    securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}\n    volumeMounts: [{name: scratch, mountPath: /scratch}]\n",
            "echo VOLGID=$(stat -c %g /scratch); echo me > /scratch/f && echo FILEGID=$(stat -c %g /scratch/f); echo ID=$(id); if touch /x 2>/dev/null; then echo ROOTFS=rw; else echo ROOTFS=ro; fi; echo CAPEFF=$(awk '/^CapEff/{print $2}' /proc/self/status); echo NNP=$(awk '/^NoNewPrivs/{print $2}' /proc/self/status); echo DONE; exec sleep 3600",
        ),
    );
    node.write_manifest(
        "caps.yaml",
        &pod(
            "caps",
            "  shareProcessNamespace: true\n",
            "    securityContext: {capabilities: {add: [NET_ADMIN]}}\n",
            "echo CAPEFF=$(awk '/^CapEff/{print $2}' /proc/self/status); echo PID1=$(cat /proc/1/cmdline | tr '\\0' ' '); echo DONE; exec sleep 3600",
        ),
    );
    node.write_manifest(
        "host.yaml",
        &pod(
            "host",
            "  hostPID: true\n  securityContext:\n    sysctls: [{name: net.ipv4.ip_local_port_range, value: '20000 30000'}]\n",
            "    securityContext: {privileged: true}\n",
            "echo PID1=$(cat /proc/1/comm); echo RANGE=$(cat /proc/sys/net/ipv4/ip_local_port_range); echo CAPEFF=$(awk '/^CapEff/{print $2}' /proc/self/status); echo DONE; exec sleep 3600",
        ),
    );
    node.write_manifest(
        "hostns.yaml",
        &pod(
            "hostns",
            "  hostNetwork: true\n  hostIPC: true\n",
            "    env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]\n",
            "echo NET=$(readlink /proc/self/ns/net); echo IPC=$(readlink /proc/self/ns/ipc); echo UTS=$(readlink /proc/self/ns/uts); echo IP=$POD_IP; echo DONE; exec sleep 3600",
        ),
    );
    node.write_manifest(
        "badhost.yaml",
        &pod(
            "badhost",
            "  volumes: [{name: h, hostPath: {path: /nonexistent-nodus-path, type: File}}]\n",
            "    volumeMounts: [{name: h, mountPath: /h}]\n",
            "echo DONE; exec sleep 3600",
        ),
    );
    node.write_manifest(
        "nonroot.yaml",
        &pod(
            "nonroot",
            "",
            "    securityContext: {runAsNonRoot: true}\n",
            "echo DONE; exec sleep 3600",
        ),
    );

    // --- resources and QoS ---
    let guaranteed = node.wait_running("guaranteed", 1).await;
    let uid = guaranteed[0].labels["io.kubernetes.pod.uid"].clone();
    let pod_cg = format!("{}/kubepods/pod{uid}", node.ctrd.cgroup_parent());
    let ctr_cg = format!("{pod_cg}/{}", guaranteed[0].id);
    assert_eq!(
        cgroup_file("cpu", &ctr_cg, "cpu.cfs_quota_us").as_deref(),
        Some("50000")
    );
    assert_eq!(
        cgroup_file("cpu", &ctr_cg, "cpu.cfs_period_us").as_deref(),
        Some("100000")
    );
    assert_eq!(
        cgroup_file("cpu", &ctr_cg, "cpu.shares").as_deref(),
        Some("512")
    );
    assert_eq!(
        cgroup_file("memory", &ctr_cg, "memory.limit_in_bytes").as_deref(),
        Some("67108864")
    );
    // The pod cgroup holds the pod's totals.
    assert_eq!(
        cgroup_file("cpu", &pod_cg, "cpu.cfs_quota_us").as_deref(),
        Some("50000")
    );
    assert_eq!(
        cgroup_file("cpu", &pod_cg, "cpu.shares").as_deref(),
        Some("512")
    );
    assert_eq!(
        cgroup_file("memory", &pod_cg, "memory.limit_in_bytes").as_deref(),
        Some("67108864")
    );
    let api = node
        .wait_for("guaranteed pod status", Duration::from_secs(20), || async {
            node.api_pod("guaranteed")
                .filter(|p| p["status"]["phase"] == "Running")
        })
        .await;
    assert_eq!(api["status"]["qosClass"], "Guaranteed");
    // -997, or 0 where nobody may lower oom_score_adj (no CAP_SYS_RESOURCE).
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("CapEff:")
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        })
        .unwrap();
    let expected = if cap_eff & (1 << 24) != 0 {
        "-997"
    } else {
        "0"
    };
    assert_eq!(value(&output(&node, "guaranteed").await, "OOM"), expected);

    let burstable = node.wait_running("burstable", 1).await;
    let buid = burstable[0].labels["io.kubernetes.pod.uid"].clone();
    let bpod_cg = format!("{}/kubepods/burstable/pod{buid}", node.ctrd.cgroup_parent());
    let bctr_cg = format!("{bpod_cg}/{}", burstable[0].id);
    assert_eq!(
        cgroup_file("cpu", &bctr_cg, "cpu.shares").as_deref(),
        Some("102")
    );
    assert_eq!(
        cgroup_file("cpu", &bctr_cg, "cpu.cfs_quota_us").as_deref(),
        Some("-1")
    );
    assert_eq!(
        cgroup_file("memory", &bctr_cg, "memory.limit_in_bytes").as_deref(),
        Some("134217728")
    );
    assert_eq!(
        cgroup_file("cpu", &bpod_cg, "cpu.shares").as_deref(),
        Some("102")
    );
    let api = node
        .wait_for("burstable pod status", Duration::from_secs(20), || async {
            node.api_pod("burstable")
                .filter(|p| p["status"]["phase"] == "Running")
        })
        .await;
    assert_eq!(api["status"]["qosClass"], "Burstable");
    let mem_total: i64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|v| {
            v.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<i64>()
                .unwrap()
                * 1024
        })
        .unwrap();
    let burstable_adj = (1000 - 1000 * (32 << 20) / mem_total).clamp(3, 999);
    assert_eq!(
        value(&output(&node, "burstable").await, "OOM"),
        burstable_adj.to_string()
    );

    // Admission: more memory than the node has.
    let api = node
        .wait_for(
            "the huge pod to be rejected",
            Duration::from_secs(20),
            || async {
                node.api_pod("huge")
                    .filter(|p| p["status"]["phase"] == "Failed")
            },
        )
        .await;
    assert_eq!(api["status"]["reason"], "OutOfmemory");
    assert!(
        api["status"]["message"]
            .as_str()
            .unwrap()
            .contains("memory, requested: 1125899906842624"),
        "{api}"
    );
    assert!(node.sandboxes("huge").await.is_empty());

    // --- container spec ---
    let out = output(&node, "env").await;
    let env_sb = node.sandboxes("env").await;
    let ip = node.sandbox_ip(&env_sb[0].id).await;
    assert_eq!(
        value(&out, "ARGS"),
        format!("hello env-{NODE}|$(POD_NAME)|$(UNKNOWN)")
    );
    assert_eq!(value(&out, "NAME"), format!("env-{NODE}"));
    assert_eq!(value(&out, "NS"), "default");
    assert_eq!(value(&out, "UID"), env_sb[0].metadata.as_ref().unwrap().uid);
    assert_eq!(value(&out, "IP"), ip);
    assert_eq!(value(&out, "NODE"), NODE);
    assert_eq!(value(&out, "APP"), "env");
    assert_eq!(value(&out, "MEM"), "64");
    assert_eq!(value(&out, "CPU"), "250");
    assert_eq!(value(&out, "COMBINED"), "hello-default");
    assert_eq!(value(&out, "PWD"), "/tmp");

    // --- volumes ---
    let out = output(&node, "vol").await;
    assert_eq!(value(&out, "MEMFS"), "tmpfs");
    assert_eq!(value(&out, "MEMKB"), "16384");
    assert_eq!(value(&out, "SUB"), "sub");
    assert_eq!(value(&out, "HOST"), "from-the-host");
    assert_eq!(value(&out, "HOSTRO"), "yes");
    assert_eq!(value(&out, "NAME"), format!("vol-{NODE}"));
    assert_eq!(value(&out, "APPLABEL"), "app=\"vol\"");
    assert_eq!(
        std::fs::read_to_string(host_new.join("f")).unwrap(),
        "made\n"
    );
    let vuid = node.sandboxes("vol").await[0]
        .metadata
        .as_ref()
        .unwrap()
        .uid
        .clone();
    let vol_dir = node.root_dir.join("pods").join(&vuid).join("volumes");
    assert!(vol_dir.join("kubernetes.io~empty-dir/disk/a/b/f").is_file());
    let mem_dir = vol_dir.join("kubernetes.io~empty-dir/mem");

    // --- security context ---
    let out = output(&node, "sec").await;
    let id = value(&out, "ID");
    assert!(id.starts_with("uid=1000 gid=3000"), "{id}");
    assert!(id.contains("4000") && id.contains("2000"), "{id}");
    assert_eq!(value(&out, "ROOTFS"), "ro");
    // fsGroup owns the emptyDir (setgid: new files get the group too).
    assert_eq!(value(&out, "VOLGID"), "2000");
    assert_eq!(value(&out, "FILEGID"), "2000");
    assert_eq!(value(&out, "CAPEFF"), "0000000000000000");
    assert_eq!(value(&out, "NNP"), "1");
    let out = output(&node, "caps").await;
    let capeff = u64::from_str_radix(value(&out, "CAPEFF"), 16).unwrap();
    assert_ne!(capeff & (1 << 12), 0, "CAP_NET_ADMIN added: {capeff:x}");
    assert!(value(&out, "PID1").contains("pause"), "{out:?}");
    // hostNetwork + hostIPC: the container shares the runtime host's network, IPC and UTS
    // namespaces (containerd runs in the test's), and reports the node IP as its pod IP.
    let out = output(&node, "hostns").await;
    let host_ns = |kind: &str| {
        std::fs::read_link(format!("/proc/self/ns/{kind}"))
            .unwrap()
            .display()
            .to_string()
    };
    for (key, kind) in [("NET", "net"), ("IPC", "ipc"), ("UTS", "uts")] {
        assert_eq!(value(&out, key), host_ns(kind), "{key}: {out:?}");
    }
    assert_eq!(value(&out, "IP"), "10.66.0.1");
    let api = node.api_pod("hostns").unwrap();
    assert_eq!(api["status"]["podIP"], "10.66.0.1", "{api}");
    assert_eq!(api["status"]["podIPs"][0]["ip"], "10.66.0.1");
    // A pod network pod does not share them.
    let out = output(&node, "caps").await;
    let caps_pid = node.sandbox_pid(&node.sandboxes("caps").await[0].id).await;
    let caps_ns = |kind: &str| {
        std::fs::read_link(format!("/proc/{caps_pid}/ns/{kind}"))
            .unwrap()
            .display()
            .to_string()
    };
    for kind in ["net", "ipc", "uts"] {
        assert_ne!(caps_ns(kind), host_ns(kind), "{kind}: {out:?}");
    }

    let api = node
        .wait_for(
            "runAsNonRoot to be refused",
            Duration::from_secs(30),
            || async {
                node.api_pod("nonroot").filter(|p| {
                    p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                        == "CreateContainerConfigError"
                })
            },
        )
        .await;
    let msg = api["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("runAsNonRoot and image will run as root"),
        "{msg}"
    );
    assert!(node.wait_running("nonroot", 0).await.is_empty());

    let api = node
        .wait_for(
            "the hostPath type check to fail",
            Duration::from_secs(30),
            || async {
                node.api_pod("badhost").filter(|p| {
                    p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                        == "CreateContainerConfigError"
                })
            },
        )
        .await;
    let msg = api["status"]["containerStatuses"][0]["state"]["waiting"]["message"].to_string();
    assert!(
        msg.contains("hostPath type check failed") && msg.contains("/nonexistent-nodus-path"),
        "{msg}"
    );

    // The node is full (maxPods): one more pod is rejected with OutOfpods.
    node.write_manifest(
        "extra.yaml",
        &pod("extra", "", "", "echo DONE; exec sleep 3600"),
    );
    let api = node
        .wait_for(
            "the extra pod to be rejected",
            Duration::from_secs(20),
            || async {
                node.api_pod("extra")
                    .filter(|p| p["status"]["phase"] == "Failed")
            },
        )
        .await;
    assert_eq!(api["status"]["reason"], "OutOfpods", "{api}");
    assert!(node.sandboxes("extra").await.is_empty());

    // Removing the volume pod unmounts its tmpfs and removes its directories.
    node.remove_manifest("vol.yaml");
    node.wait_for(
        "the volume pod's directories to go",
        Duration::from_secs(60),
        || async { (!vol_dir.exists()).then_some(()) },
    )
    .await;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&mem_dir.display().to_string()),
        "tmpfs left mounted"
    );
    // The rejected pod goes when its manifest does.
    node.remove_manifest("huge.yaml");
    node.wait_for(
        "the rejected pod to go",
        Duration::from_secs(30),
        || async { node.api_pod("huge").is_none().then_some(()) },
    )
    .await;
}
