//! Host tier: user namespaces. A new one gets the config's maps; one joined by path
//! is shared with the container that made it, as a pod's containers share the
//! sandbox's; a rootfs owned by host root is made usable through an idmapped mount,
//! while a bind from the host keeps the host's view (root in the container is not root
//! there).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use common::{ns_of, Bundle};
use nodus_testkit::wait_until;
use serde_json::{json, Value};

const HOST_ID: u32 = 300_000;

fn maps() -> Value {
    json!([{"containerID": 0, "hostID": HOST_ID, "size": 65536}])
}

/// A bundle with a new user namespace mapping 0-65535 to HOST_ID.. (the bundle
/// directory opened to other users, as containerd makes its bundles for user namespaces).
fn userns_bundle(args: &[&str]) -> Bundle {
    let mut b = Bundle::new(args);
    fs::set_permissions(b.path(), fs::Permissions::from_mode(0o711)).unwrap();
    b.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = maps();
        c["linux"]["gidMappings"] = maps();
    });
    b
}

/// Host uid of a process, from /proc/<pid>/status.
fn host_uid(pid: &str) -> u32 {
    let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_new_user_namespace_maps_root_to_the_host_range() {
    let mut b = userns_bundle(&[
        "sh",
        "-c",
        "cat /proc/self/uid_map /proc/self/gid_map; echo uid=$(id -u); \
         touch /root/made && echo rootfs-writable; touch /vol/made && echo vol-writable; \
         exec sleep 1000",
    ]);
    let vol = b.path().join("vol");
    fs::create_dir(&vol).unwrap();
    fs::set_permissions(&vol, fs::Permissions::from_mode(0o777)).unwrap();
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/vol", "type": "bind", "source": "vol", "options": ["rbind"]}),
        );
    });
    let pid = b.start().to_string();
    wait_until(Duration::from_secs(5), "the container's report", || {
        b.stdout().contains("vol-writable") || !b.stderr().is_empty()
    });
    let out = b.stdout();
    let map: Vec<Vec<&str>> = out
        .lines()
        .take(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        map,
        vec![vec!["0", "300000", "65536"]; 2],
        "{out}{}",
        b.stderr()
    );
    assert!(out.contains("uid=0\n"), "{out}");
    // The rootfs belongs to host root; through the idmapped mount it is the container's.
    assert!(out.contains("rootfs-writable"), "{out}{}", b.stderr());
    assert_eq!(
        fs::metadata(b.rootfs().join("root/made")).unwrap().uid(),
        0,
        "a file made in the idmapped rootfs is stored as host root's"
    );
    // The bind is not idmapped: what the container's root makes there is the mapped ID's.
    assert!(out.contains("vol-writable"), "{out}{}", b.stderr());
    let made = fs::metadata(vol.join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (HOST_ID, HOST_ID));
    assert_eq!(host_uid(&pid), HOST_ID);
    assert_ne!(ns_of(&pid, "user"), ns_of("self", "user"));
    // The other new namespaces belong to the container's user namespace: it set its
    // hostname and mounted proc, sysfs and mqueue in them.
    let o = b.ok(&[
        "exec",
        &b.id,
        "sh",
        "-c",
        "hostname; id -u; cat /proc/self/uid_map",
    ]);
    let words: Vec<&str> = o.split_whitespace().collect();
    assert_eq!(words, ["nodus-test", "0", "0", "300000", "65536"], "{o}");
    b.ok(&["delete", "--force", &b.id]);
}

#[test]
fn an_idmapped_bind_shows_host_roots_files_as_the_containers_root() {
    // runtime-spec 1.1 mounts[].uidMappings, as containerd 2 asks for volumes: the source
    // belongs to host root and is not open to others, yet the container's root owns it.
    let mut b = userns_bundle(&[
        "sh",
        "-c",
        "stat -c %u /idm; touch /idm/made && echo idm-writable; touch /plain/made 2>/dev/null || echo plain-refused",
    ]);
    for d in ["idm", "plain"] {
        fs::create_dir(b.path().join(d)).unwrap();
        fs::set_permissions(b.path().join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
    b.edit(|c| {
        let m = c["mounts"].as_array_mut().unwrap();
        m.push(json!({"destination": "/idm", "type": "bind", "source": "idm", "options": ["rbind"],
            "uidMappings": maps(), "gidMappings": maps()}));
        m.push(json!({"destination": "/plain", "type": "bind", "source": "plain", "options": ["rbind"]}));
    });
    let (code, out) = b.run_to_end();
    assert_eq!(code, 0, "{out}{}", b.stderr());
    assert_eq!(out, "0\nidm-writable\nplain-refused\n", "{}", b.stderr());
    // Through the idmapped mount the container's root writes as host root.
    assert_eq!(fs::metadata(b.path().join("idm/made")).unwrap().uid(), 0);
}

#[test]
fn a_pod_container_joins_the_sandboxes_user_namespace_by_path() {
    let sandbox = userns_bundle(&["sleep", "1000"]);
    let spid = sandbox.start().to_string();
    let mut app = Bundle::new(&[
        "sh",
        "-c",
        "cat /proc/self/uid_map > /tmp/map; id -u > /tmp/uid; ps > /tmp/ps; exec sleep 1000",
    ]);
    fs::set_permissions(app.path(), fs::Permissions::from_mode(0o711)).unwrap();
    app.edit(|c| {
        c["hostname"] = Value::Null;
        c["linux"]["namespaces"] = json!([
            {"type": "user", "path": format!("/proc/{spid}/ns/user")},
            {"type": "pid", "path": format!("/proc/{spid}/ns/pid")},
            {"type": "network", "path": format!("/proc/{spid}/ns/net")},
            {"type": "ipc", "path": format!("/proc/{spid}/ns/ipc")},
            {"type": "uts", "path": format!("/proc/{spid}/ns/uts")},
            {"type": "mount"},
            {"type": "cgroup"},
        ]);
        // containerd gives the maps of the joined namespace too.
        c["linux"]["uidMappings"] = maps();
        c["linux"]["gidMappings"] = maps();
    });
    let apid = app.start().to_string();
    let ps = app.rootfs().join("tmp/ps");
    wait_until(Duration::from_secs(5), "the app's /tmp/ps", || {
        fs::metadata(&ps).is_ok_and(|m| m.len() > 0)
    });
    for ns in ["user", "pid", "net", "ipc", "uts"] {
        assert_eq!(ns_of(&apid, ns), ns_of(&spid, ns), "{ns} shared");
    }
    assert_ne!(ns_of(&apid, "mnt"), ns_of(&spid, "mnt"));
    let map = fs::read_to_string(app.rootfs().join("tmp/map")).unwrap();
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", "300000", "65536"]
    );
    assert_eq!(
        fs::read_to_string(app.rootfs().join("tmp/uid")).unwrap(),
        "0\n"
    );
    assert_eq!(host_uid(&apid), HOST_ID);
    // The file the app made in its idmapped rootfs is host root's on disk.
    assert_eq!(fs::metadata(&ps).unwrap().uid(), 0);
    // Its /proc is the shared pid namespace's: the sandbox's sleep is pid 1.
    let ps = fs::read_to_string(&ps).unwrap();
    assert!(
        ps.lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("sleep 1000")),
        "{ps}"
    );
}

#[test]
fn a_rootfs_made_for_the_mapped_ids_is_not_idmapped() {
    // As containerd's remapped snapshots: the rootfs already belongs to the mapped root.
    let b = userns_bundle(&[
        "sh",
        "-c",
        "touch /root/made && grep ' / ' /proc/self/mountinfo",
    ]);
    let status = std::process::Command::new("chown")
        .args(["-R", &format!("{HOST_ID}:{HOST_ID}")])
        .arg(b.rootfs())
        .status()
        .unwrap();
    assert!(status.success());
    let (code, out) = b.run_to_end();
    assert_eq!(code, 0, "{out}{}", b.stderr());
    assert!(!out.contains("idmapped"), "{out}");
    assert_eq!(
        fs::metadata(b.rootfs().join("root/made")).unwrap().uid(),
        HOST_ID
    );
}

#[test]
fn the_idmapped_rootfs_shows_in_mountinfo() {
    let b = userns_bundle(&["grep", " / ", "/proc/self/mountinfo"]);
    let (code, out) = b.run_to_end();
    assert_eq!(code, 0, "{out}{}", b.stderr());
    assert!(out.contains("idmapped"), "{out}");
}

#[test]
fn runtime_features_list_user_namespaces_and_idmap() {
    let b = Bundle::new(&["true"]);
    let f: Value = serde_json::from_str(&b.ok(&["features"])).unwrap();
    let ns = f["linux"]["namespaces"].as_array().unwrap();
    assert!(ns.contains(&json!("user")), "{f}");
    assert_eq!(f["linux"]["mountExtensions"]["idmap"]["enabled"], true);
}
