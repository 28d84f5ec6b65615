//! Host tier: a bad config.json or bundle fails `create` with exit status 1 and an
//! error naming the field; nothing is left behind (state dir, cgroup).

mod common;

use std::fs;

use common::{unique, Bundle};
use serde_json::{json, Value};

type Edit = fn(&mut Value);

#[test]
fn bad_configs_name_the_field_and_leave_nothing() {
    let cases: Vec<(&str, Edit)> = vec![
        ("root", |c| c["root"] = Value::Null),
        ("root.path", |c| c["root"]["path"] = json!("no-such-rootfs")),
        ("ociVersion", |c| c["ociVersion"] = json!("2.0.0")),
        ("process.args", |c| c["process"]["args"] = json!([])),
        ("process.cwd", |c| {
            c["process"]["cwd"] = json!("relative/dir")
        }),
        ("process.env[1]", |c| {
            c["process"]["env"][1] = json!("NOEQUALS")
        }),
        ("process.user.uid", |c| {
            c["process"]["user"]["uid"] = json!("root")
        }),
        ("process.rlimits[0].type", |c| {
            c["process"]["rlimits"][0]["type"] = json!("RLIMIT_BOGUS")
        }),
        ("process.rlimits[0]", |c| {
            c["process"]["rlimits"][0] = json!({"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5})
        }),
        ("process.capabilities.bounding", |c| {
            c["process"]["capabilities"]["bounding"] = json!(["CAP_BOGUS"])
        }),
        ("process.terminal", |c| {
            c["process"]["terminal"] = json!(true)
        }),
        ("linux.namespaces[5].type", |c| {
            c["linux"]["namespaces"][5] = json!({"type": "time"})
        }),
        // A new user namespace needs both maps; maps need a user namespace.
        ("linux.uidMappings", |c| {
            c["linux"]["namespaces"][5] = json!({"type": "user"})
        }),
        ("linux.gidMappings", |c| {
            c["linux"]["namespaces"][5] = json!({"type": "user"});
            c["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 300000, "size": 65536}]);
        }),
        ("linux.uidMappings", |c| {
            c["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 300000, "size": 65536}]);
        }),
        ("linux.gidMappings[0].size", |c| {
            c["linux"]["namespaces"][5] = json!({"type": "user"});
            c["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 300000, "size": 65536}]);
            c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 300000, "size": 0}]);
        }),
        ("mounts[7].gidMappings", |c| {
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/x", "type": "bind",
                "source": "/tmp", "options": ["rbind"],
                "uidMappings": [{"containerID": 0, "hostID": 300000, "size": 65536}]}))
        }),
        ("mounts[7].uidMappings", |c| {
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/x", "type": "tmpfs",
                "source": "tmpfs",
                "uidMappings": [{"containerID": 0, "hostID": 300000, "size": 65536}],
                "gidMappings": [{"containerID": 0, "hostID": 300000, "size": 65536}]}))
        }),
        // The kernel refuses overlapping ranges when the runtime writes the map.
        ("linux.uidMappings", |c| {
            c["linux"]["namespaces"][5] = json!({"type": "user"});
            c["linux"]["uidMappings"] = json!([
                {"containerID": 0, "hostID": 300000, "size": 65536},
                {"containerID": 10, "hostID": 500000, "size": 1}]);
            c["linux"]["gidMappings"] =
                json!([{"containerID": 0, "hostID": 300000, "size": 65536}]);
        }),
        ("linux.namespaces[1].path", |c| {
            c["linux"]["namespaces"][1] =
                json!({"type": "network", "path": "/run/netns/nodus-does-not-exist"})
        }),
        ("linux.namespaces", |c| {
            c["linux"]["namespaces"][4] = json!({"type": "ipc"})
        }),
        // No uts entry at all (a joined one is fine: see isolation.rs).
        ("hostname", |c| {
            c["linux"]["namespaces"].as_array_mut().unwrap().remove(3);
        }),
        ("domainname", |c| {
            c["linux"]["namespaces"].as_array_mut().unwrap().remove(3);
            c["hostname"] = Value::Null;
            c["domainname"] = json!("example.test");
        }),
        // Without a mount namespace, what would change the host's mounts is refused.
        ("linux.maskedPaths", |c| {
            c["linux"]["namespaces"].as_array_mut().unwrap().remove(4);
        }),
        ("linux.readonlyPaths", |c| {
            c["linux"]["namespaces"].as_array_mut().unwrap().remove(4);
            c["linux"]["maskedPaths"] = Value::Null;
        }),
        ("linux.rootfsPropagation", |c| {
            c["linux"]["namespaces"].as_array_mut().unwrap().remove(4);
            c["linux"]["maskedPaths"] = Value::Null;
            c["linux"]["readonlyPaths"] = Value::Null;
            c["linux"]["rootfsPropagation"] = json!("shared");
        }),
        ("root.readonly", |c| {
            c["linux"]["namespaces"].as_array_mut().unwrap().remove(4);
            c["linux"]["maskedPaths"] = Value::Null;
            c["linux"]["readonlyPaths"] = Value::Null;
            c["root"]["readonly"] = json!(true);
        }),
        ("mounts[0].destination", |c| {
            c["mounts"][0]["destination"] = json!("proc")
        }),
        ("mounts[7].source", |c| {
            c["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/x", "type": "bind"}))
        }),
        ("linux.sysctl", |c| {
            c["linux"]["sysctl"] = json!({"kernel.panic": "1"})
        }),
        ("linux.rootfsPropagation", |c| {
            c["linux"]["rootfsPropagation"] = json!("sideways")
        }),
        ("hooks.prestart[0].path", |c| {
            c["hooks"] = json!({"prestart": [{"path": "relative/hook"}]})
        }),
        (
            "linux.seccomp.defaultAction: unknown variant `SCMP_ACT_BOGUS`",
            |c| c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_BOGUS"}),
        ),
        (
            "linux.seccomp.architectures[1]: unknown variant `SCMP_ARCH_Z80`",
            |c| {
                c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_Z80"]})
            },
        ),
        (
            "linux.seccomp.syscalls[0].args[0].op: unknown variant `SCMP_CMP_SORTOF`",
            |c| {
                c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_SORTOF"}]}]})
            },
        ),
        ("linux.seccomp.syscalls[0].args[0].index", |c| {
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]})
        }),
        ("linux.seccomp.syscalls[1].action: SCMP_ACT_NOTIFY", |c| {
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_LOG"},
                {"names": ["write"], "action": "SCMP_ACT_NOTIFY"}]})
        }),
        ("linux.seccomp.syscalls[0].names", |c| {
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": [], "action": "SCMP_ACT_ERRNO"}]})
        }),
        (
            "linux.resources.devices[1].access: 'x' is not one of r, w, m",
            |c| {
                c["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwx"}])
            },
        ),
        ("linux.resources.devices[0].major", |c| {
            c["linux"]["resources"]["devices"] =
                json!([{"allow": true, "type": "c", "major": -5, "access": "r"}])
        }),
        ("linux.resources.memory.swappiness", |c| {
            c["linux"]["resources"]["memory"] = json!({"swappiness": 500})
        }),
        ("linux.resources.memory.limit", |c| {
            c["linux"]["resources"]["memory"] = json!({"limit": "lots"})
        }),
        ("mounts[1] (/dev)", |c| {
            c["mounts"][1]["type"] = json!("nosuchfs")
        }),
        (
            "linux.devices[0].path",
            |c| {
                c["linux"]["devices"] =
                    json!([{"path": "dev/x", "type": "c", "major": 1, "minor": 3}])
            },
        ),
    ];
    for (field, edit) in cases {
        let mut b = Bundle::new(&["true"]);
        b.edit(edit);
        let o = b.rt(&["create", "--bundle", b.path().to_str().unwrap(), &b.id]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{field}: {err}");
        assert!(
            err.contains(field),
            "error for {field} does not name it: {err}"
        );
        assert!(
            !b.state_root().join(&b.id).exists(),
            "{field}: state dir left"
        );
        assert!(
            b.cgroup_left().is_empty(),
            "{field}: cgroups left {:?}",
            b.cgroup_left()
        );
    }
}

#[test]
fn bad_bundle_and_id() {
    let b = Bundle::new(&["true"]);
    let o = b.rt(&["create", "--bundle", "/nonexistent-bundle", "x1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bundle"),
        "{o:?}"
    );
    fs::write(b.path().join("config.json"), "{not json").unwrap();
    let o = b.rt(&["create", "--bundle", b.path().to_str().unwrap(), "x2"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("config.json"),
        "{o:?}"
    );
    let o = b.rt(&["create", "--bundle", b.path().to_str().unwrap(), "../evil"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("invalid container id"),
        "{o:?}"
    );
    assert!(!b.state_root().exists() || fs::read_dir(b.state_root()).unwrap().count() == 0);
}

#[test]
fn duplicate_id_is_refused() {
    let b = Bundle::new(&["sleep", "100"]);
    b.create();
    let o = b.rt(&["create", "--bundle", b.path().to_str().unwrap(), &b.id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already exists"),
        "{o:?}"
    );
    assert_eq!(
        b.state()["status"],
        "created",
        "the first container is untouched"
    );
}

#[test]
fn closed_stdout_ends_quietly_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    // stdout is a pipe whose reader is gone, as in `nodus-runtime --version | head -0`.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(common::runtime_bin())
        .arg("--version")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGPIPE),
        "{:?}",
        out.status
    );
    assert_eq!(out.status.signal(), None);
}

/// A rootfs symlink to a host directory, and mounts whose destination goes through it or
/// climbs with `..`: every mount lands inside the rootfs (resolved as if the rootfs were
/// `/`), and the host directory is never touched. A 10 MB hostname is refused with a short
/// error naming the field.
#[test]
fn hostile_paths_stay_inside_the_rootfs() {
    let host_dir = std::env::temp_dir().join(unique("nodus-host-target"));
    fs::create_dir_all(&host_dir).unwrap();
    let mut b = Bundle::new(&["sh", "-c", "ls /escape/m1 /m2 > /dev/null && echo inside"]);
    std::os::unix::fs::symlink(&host_dir, b.rootfs().join("escape")).unwrap();
    b.edit(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/escape/m1", "type": "tmpfs", "source": "tmpfs"}));
        mounts.push(json!({"destination": "/../../../m2", "type": "tmpfs", "source": "tmpfs"}));
    });
    let (code, out) = b.run_to_end();
    let host_entries: Vec<_> = fs::read_dir(&host_dir).unwrap().flatten().collect();
    let _ = fs::remove_dir_all(&host_dir);
    assert_eq!((code, out.trim()), (0, "inside"), "{}", b.stderr());
    assert!(
        host_entries.is_empty(),
        "made on the host: {host_entries:?}"
    );
    assert!(b
        .rootfs()
        .join(host_dir.strip_prefix("/").unwrap())
        .join("m1")
        .is_dir());
    assert!(!std::path::Path::new("/m2").exists());

    let mut b = Bundle::new(&["true"]);
    b.edit(|c| c["hostname"] = json!("h".repeat(10 << 20)));
    let o = b.rt(&["create", "--bundle", b.path().to_str().unwrap(), &b.id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("hostname") && err.len() < 4096,
        "{} bytes",
        err.len()
    );
    assert!(!b.state_root().join(&b.id).exists());
}
