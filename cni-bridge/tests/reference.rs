//! Switching plugins on a live node: the reference `bridge` + `host-local` from Debian's
//! containernetworking-plugins and nodus-bridge share one bridge and one IPAM data dir, and
//! each honours (and can delete) what the other made.

mod common;

use std::path::Path;

use common::*;
use nodus_testkit::NodeNetns;
use serde_json::{json, Value};

fn addr(v: &Value) -> String {
    v["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn reference_and_ours_share_leases_both_ways() {
    if !Path::new(REF_BRIDGE).exists() {
        panic!("{REF_BRIDGE} missing: install Debian's containernetworking-plugins");
    }
    let host = Host::new("cnib-ref");
    let mut ours = host.conf("mixnet", "cni0", json!([[{"subnet": "10.215.0.0/24"}]]));
    // The reference masquerades with iptables; keep both plugins on the same config without it.
    ours["ipMasq"] = json!(false);
    let mut reference = ours.clone();
    reference["type"] = json!("bridge");

    let pa = NodeNetns::create("pod").unwrap();
    let pb = NodeNetns::create("pod").unwrap();
    let pc = NodeNetns::create("pod").unwrap();

    let r1 = host.cni(REF_BRIDGE, "ADD", "ref-one", pa.path(), &reference);
    assert!(r1.ok, "{r1:?}");
    let o1 = host.cni(OURS, "ADD", "ours-one", pb.path(), &ours);
    assert!(o1.ok, "{o1:?}");
    let r2 = host.cni(REF_BRIDGE, "ADD", "ref-two", pc.path(), &reference);
    assert!(r2.ok, "{r2:?}");
    // host-local's round robin continues across plugins: .2, .3, .4.
    assert_eq!(addr(&r1.json), "10.215.0.2");
    assert_eq!(addr(&o1.json), "10.215.0.3");
    assert_eq!(addr(&r2.json), "10.215.0.4");

    let dir = host.lease_dir("mixnet");
    for (ip, cid) in [
        ("10.215.0.2", "ref-one"),
        ("10.215.0.3", "ours-one"),
        ("10.215.0.4", "ref-two"),
    ] {
        let content = std::fs::read_to_string(dir.join(ip)).unwrap();
        assert_eq!(content, format!("{cid}\r\neth0"), "{ip}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(),
        "10.215.0.4"
    );

    // A lease held by the reference cannot be requested through ours.
    let pd = NodeNetns::create("pod").unwrap();
    let taken = host.call(Call {
        bin: OURS,
        cmd: "ADD",
        cid: "wants-taken",
        netns: pd.path().to_str().unwrap(),
        ifname: "eth0",
        args: "IgnoreUnknown=1;IP=10.215.0.2",
        stdin: ours.to_string().into_bytes(),
        unset: &[],
    });
    assert!(!taken.ok);
    assert_eq!(taken.code(), 101, "{taken:?}");
    assert_eq!(host.leases("mixnet").len(), 3);

    // Pods of both plugins on one bridge reach each other.
    assert!(ping(&pa, "10.215.0.3"));
    assert!(ping(&pb, "10.215.0.2"));

    // Ours deletes the reference's attachment, the reference deletes ours.
    let d = host.cni(OURS, "DEL", "ref-one", pa.path(), &ours);
    assert!(d.ok, "{d:?}");
    assert!(!dir.join("10.215.0.2").exists());
    assert!(pa.run(&["ip", "link", "show", "eth0"]).stdout.is_empty());
    let d = host.cni(REF_BRIDGE, "DEL", "ours-one", pb.path(), &reference);
    assert!(d.ok, "{d:?}");
    assert!(!dir.join("10.215.0.3").exists());
    assert!(pb.run(&["ip", "link", "show", "eth0"]).stdout.is_empty());
    let d = host.cni(OURS, "DEL", "ref-two", pc.path(), &ours);
    assert!(d.ok, "{d:?}");
    assert!(host.leases("mixnet").is_empty());
    assert!(host.veths().is_empty(), "{:?}", host.veths());
}

#[test]
fn concurrent_allocations_with_reference_host_local_never_collide() {
    let host_local = "/usr/lib/cni/host-local";
    assert!(Path::new(host_local).exists(), "{host_local} missing");
    let host = Host::new("cnib-refpar");
    let mut ours = host.conf("parnet", "cni0", json!([[{"subnet": "10.218.0.0/24"}]]));
    ours["ipMasq"] = json!(false);
    let pods: Vec<NodeNetns> = (0..10).map(|_| NodeNetns::create("pod").unwrap()).collect();
    let results: Vec<(bool, Out)> = std::thread::scope(|s| {
        let mut hs = Vec::new();
        for (i, p) in pods.iter().enumerate() {
            let (host, ours) = (&host, &ours);
            // Ours: a full attachment.
            hs.push(s.spawn(move || {
                (
                    true,
                    host.cni(OURS, "ADD", &format!("o{i}"), p.path(), ours),
                )
            }));
            // The reference IPAM alone, on the same data dir, at the same time.
            hs.push(s.spawn(move || {
                (
                    false,
                    host.cni(host_local, "ADD", &format!("r{i}"), p.path(), ours),
                )
            }));
        }
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips = std::collections::HashSet::new();
    for (_, r) in &results {
        assert!(r.ok, "{r:?}");
        ips.insert(addr(&r.json));
    }
    assert_eq!(ips.len(), 20, "{ips:?}");
    assert_eq!(host.leases("parnet").len(), 20);
    for (i, p) in pods.iter().enumerate() {
        assert!(host.cni(OURS, "DEL", &format!("o{i}"), p.path(), &ours).ok);
        assert!(
            host.cni(host_local, "DEL", &format!("r{i}"), p.path(), &ours)
                .ok
        );
    }
    assert!(host.leases("parnet").is_empty());
    assert!(host.veths().is_empty());
}
