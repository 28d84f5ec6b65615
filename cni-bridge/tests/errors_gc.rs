//! Bad input, CHECK, GC and STATUS, in private network namespaces.

mod common;

use common::*;
use nodus_testkit::NodeNetns;
use serde_json::json;

/// Nothing of an attachment is left: no lease file, no veth, no tagged nft element.
fn assert_clean(host: &Host, network: &str) {
    assert!(
        host.leases(network).is_empty(),
        "{:?}",
        host.leases(network)
    );
    assert!(host.veths().is_empty(), "{:?}", host.veths());
    assert_eq!(host.nft_elements(), 0, "{}", host.nft());
}

#[test]
fn bad_input_gives_spec_codes_and_leaves_nothing() {
    let host = Host::new("cnib-bad");
    let pod = NodeNetns::create("pod").unwrap();
    let good = host.conf("badnet", "cni0", json!([[{"subnet": "10.210.0.0/24"}]]));
    let pod_path = pod.path().to_str().unwrap().to_string();
    let missing_ns = format!("/run/netns/nodus-missing-{}", std::process::id());
    let mut unknown_version = good.clone();
    unknown_version["cniVersion"] = json!("0.9.9");
    let mut bad_subnet = good.clone();
    bad_subnet["ipam"]["ranges"] = json!([[{"subnet": "10.210.0.0/40"}]]);
    let mut no_name = good.clone();
    no_name.as_object_mut().unwrap().remove("name");
    // Hostile configs: each a copy of the good one with one field set.
    let with = |pointer: &str, v: serde_json::Value| {
        let mut c = good.clone();
        *c.pointer_mut(pointer).unwrap() = v;
        c.to_string().into_bytes()
    };
    let with_key = |key: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[key] = v;
        c.to_string().into_bytes()
    };

    struct Case<'a> {
        what: &'a str,
        stdin: Vec<u8>,
        netns: &'a str,
        unset: &'a [&'a str],
        code: u64,
        field: &'a str,
    }
    let cases = [
        Case {
            what: "malformed JSON",
            stdin: b"{\"cniVersion\": \"1.0.0\", ".to_vec(),
            netns: &pod_path,
            unset: &[],
            code: 6,
            field: "invalid JSON",
        },
        Case {
            what: "unknown cniVersion",
            stdin: unknown_version.to_string().into_bytes(),
            netns: &pod_path,
            unset: &[],
            code: 1,
            field: "cniVersion",
        },
        Case {
            what: "missing name",
            stdin: no_name.to_string().into_bytes(),
            netns: &pod_path,
            unset: &[],
            code: 7,
            field: "name",
        },
        Case {
            what: "missing CNI_NETNS",
            stdin: good.to_string().into_bytes(),
            netns: &pod_path,
            unset: &["CNI_NETNS"],
            code: 4,
            field: "CNI_NETNS",
        },
        Case {
            what: "missing CNI_CONTAINERID",
            stdin: good.to_string().into_bytes(),
            netns: &pod_path,
            unset: &["CNI_CONTAINERID"],
            code: 4,
            field: "CNI_CONTAINERID",
        },
        Case {
            what: "missing CNI_COMMAND",
            stdin: good.to_string().into_bytes(),
            netns: &pod_path,
            unset: &["CNI_COMMAND"],
            code: 4,
            field: "CNI_COMMAND",
        },
        Case {
            what: "bad subnet",
            stdin: bad_subnet.to_string().into_bytes(),
            netns: &pod_path,
            unset: &[],
            code: 7,
            field: "ipam.ranges[0][0].subnet",
        },
        Case {
            what: "a network name with a path",
            stdin: with("/name", json!("../../etc")),
            netns: &pod_path,
            unset: &[],
            code: 7,
            field: "name: \"../../etc\"",
        },
        Case {
            what: "a 10 MB network name",
            stdin: with("/name", json!("n".repeat(10 << 20))),
            netns: &pod_path,
            unset: &[],
            code: 7,
            field: "name",
        },
        Case {
            what: "a bridge name with a slash",
            stdin: with_key("bridge", json!("br/../x")),
            netns: &pod_path,
            unset: &[],
            code: 7,
            field: "bridge",
        },
        Case {
            what: "an MTU out of range",
            stdin: with_key("mtu", json!(10)),
            netns: &pod_path,
            unset: &[],
            code: 7,
            field: "mtu: 10",
        },
        Case {
            what: "a VLAN out of range",
            stdin: with_key("vlan", json!(5000)),
            netns: &pod_path,
            unset: &[],
            code: 7,
            field: "vlan: 5000",
        },
        Case {
            what: "ipMasq of the wrong type",
            stdin: with_key("ipMasq", json!("yes")),
            netns: &pod_path,
            unset: &[],
            code: 6,
            field: "invalid type",
        },
        Case {
            what: "a gateway outside its subnet",
            stdin: with(
                "/ipam/ranges/0/0",
                json!({"subnet": "10.210.0.0/24", "gateway": "10.9.9.1"}),
            ),
            netns: &pod_path,
            unset: &[],
            code: 7,
            field: "10.9.9.1",
        },
        Case {
            what: "a range that ends before it starts",
            stdin: with(
                "/ipam/ranges/0/0",
                json!({"subnet": "10.210.0.0/24", "rangeStart": "10.210.0.200", "rangeEnd": "10.210.0.10"}),
            ),
            netns: &pod_path,
            unset: &[],
            code: 7,
            field: "10.210.0.200",
        },
        Case {
            what: "a multicast MAC",
            stdin: with_key("args", json!({"cni": {"mac": "01:00:5e:00:00:01"}})),
            netns: &pod_path,
            unset: &[],
            code: 7,
            field: "args.cni.mac",
        },
        Case {
            what: "netns path missing",
            stdin: good.to_string().into_bytes(),
            netns: &missing_ns,
            unset: &[],
            code: 3,
            field: "CNI_NETNS",
        },
    ];
    for c in cases {
        let o = host.call(Call {
            bin: OURS,
            cmd: "ADD",
            cid: "bad",
            netns: c.netns,
            ifname: "eth0",
            args: "",
            stdin: c.stdin,
            unset: c.unset,
        });
        assert!(!o.ok, "{}: {o:?}", c.what);
        assert_eq!(o.code(), c.code, "{}: {o:?}", c.what);
        assert!(
            o.msg().contains(c.field),
            "{}: {:?} lacks {}",
            c.what,
            o.msg(),
            c.field
        );
        assert!(o.json["cniVersion"].is_string(), "{}: {o:?}", c.what);
        assert_clean(&host, "badnet");
    }

    // Interface name taken inside the pod.
    assert!(pod
        .run(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"])
        .status
        .success());
    let o = host.cni(OURS, "ADD", "taken", pod.path(), &good);
    assert!(!o.ok);
    assert_eq!(o.code(), 102, "{o:?}");
    assert!(o.msg().contains("CNI_IFNAME"), "{o:?}");
    assert_clean(&host, "badnet");
    // The pod's own eth0 is untouched.
    assert_eq!(mac_of(&pod, "eth0").len(), 17);

    // Range exhausted: a /30 has one address besides the gateway.
    let tiny = host.conf("tinynet", "cni0", json!([[{"subnet": "10.211.0.0/30"}]]));
    let a = NodeNetns::create("pod").unwrap();
    let b = NodeNetns::create("pod").unwrap();
    let first = host.cni(OURS, "ADD", "first", a.path(), &tiny);
    assert!(first.ok, "{first:?}");
    let st = host.call(Call {
        bin: OURS,
        cmd: "STATUS",
        cid: "",
        netns: "",
        ifname: "",
        args: "",
        stdin: tiny.to_string().into_bytes(),
        unset: &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
    });
    assert!(!st.ok);
    assert_eq!(st.code(), 50, "{st:?}");
    let second = host.cni(OURS, "ADD", "second", b.path(), &tiny);
    assert!(!second.ok);
    assert_eq!(second.code(), 100, "{second:?}");
    assert!(
        second.msg().contains("no IP addresses available"),
        "{second:?}"
    );
    assert_eq!(host.leases("tinynet"), ["10.211.0.2"]);
    assert_eq!(host.veths().len(), 1);
    assert_eq!(host.nft_elements(), 1);
    assert!(b.run(&["ip", "link", "show", "eth0"]).stdout.is_empty());
    assert!(host.cni(OURS, "DEL", "first", a.path(), &tiny).ok);
    assert_clean(&host, "tinynet");
    let st = host.call(Call {
        bin: OURS,
        cmd: "STATUS",
        cid: "",
        netns: "",
        ifname: "",
        args: "",
        stdin: tiny.to_string().into_bytes(),
        unset: &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
    });
    assert!(st.ok, "{st:?}");
    assert!(st.stdout.trim().is_empty());
}

#[test]
fn check_passes_then_fails_when_an_address_is_removed() {
    let host = Host::new("cnib-check");
    let pod = NodeNetns::create("pod").unwrap();
    let mut conf = host.conf("checknet", "cni0", json!([[{"subnet": "10.212.0.0/24"}]]));
    let r = host.cni(OURS, "ADD", "chk", pod.path(), &conf);
    assert!(r.ok, "{r:?}");
    conf["prevResult"] = r.json.clone();
    let c = host.cni(OURS, "CHECK", "chk", pod.path(), &conf);
    assert!(c.ok, "{c:?}");
    let addr = r.json["ips"][0]["address"].as_str().unwrap();
    assert!(pod
        .run(&["ip", "addr", "del", addr, "dev", "eth0"])
        .status
        .success());
    let c = host.cni(OURS, "CHECK", "chk", pod.path(), &conf);
    assert!(!c.ok);
    assert_eq!(c.code(), 112, "{c:?}");
    assert!(c.msg().contains(addr), "{c:?}");
    assert!(host.cni(OURS, "DEL", "chk", pod.path(), &conf).ok);
}

#[test]
fn gc_releases_unlisted_attachments_and_keeps_listed_ones() {
    let host = Host::new("cnib-gc");
    let conf = host.conf("gcnet", "cni0", json!([[{"subnet": "10.213.0.0/24"}]]));
    let pods: Vec<NodeNetns> = (0..3).map(|_| NodeNetns::create("pod").unwrap()).collect();
    let mut ips = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let r = host.cni(OURS, "ADD", &format!("gc{i}"), p.path(), &conf);
        assert!(r.ok, "{r:?}");
        ips.push(
            r.json["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    // Another network's elements in the same table must survive our GC.
    let other = host.conf("othernet", "cni1", json!([[{"subnet": "10.214.0.0/24"}]]));
    let op = NodeNetns::create("pod").unwrap();
    assert!(host.cni(OURS, "ADD", "other", op.path(), &other).ok);

    let gc = |conf: &serde_json::Value, key: &str, keep: &[&str]| {
        let mut g = conf.clone();
        g["cniVersion"] = json!("1.1.0");
        g[key] = keep
            .iter()
            .map(|c| json!({"containerID": c, "ifname": "eth0"}))
            .collect();
        let o = host.call(Call {
            bin: OURS,
            cmd: "GC",
            cid: "",
            netns: "",
            ifname: "",
            args: "",
            stdin: g.to_string().into_bytes(),
            unset: &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
        });
        assert!(o.ok, "{o:?}");
    };
    gc(&conf, "cni.dev/valid-attachments", &["gc0", "gc2"]);
    let mut want = vec![ips[0].clone(), ips[2].clone()];
    want.sort();
    assert_eq!(host.leases("gcnet"), want);
    let nft = host.nft();
    assert!(!nft.contains(&format!("{} comment", ips[1])), "{nft}");
    assert!(nft.contains(&format!("{} comment", ips[0])), "{nft}");
    assert_eq!(host.nft_elements(), 3, "{nft}");
    // The older key works too.
    gc(&conf, "cni.dev/attachments", &["gc0"]);
    assert_eq!(host.leases("gcnet"), [ips[0].clone()]);
    assert_eq!(host.nft_elements(), 2);
    assert_eq!(host.leases("othernet").len(), 1);
    // A DEL after GC still succeeds.
    for (i, p) in pods.iter().enumerate() {
        assert!(host.cni(OURS, "DEL", &format!("gc{i}"), p.path(), &conf).ok);
    }
    assert!(host.cni(OURS, "DEL", "other", op.path(), &other).ok);
    assert_eq!(host.nft_elements(), 0);
}

#[test]
fn masquerade_state_recovers_from_missing_and_stale_elements() {
    let host = Host::new("cnib-nftfix");
    let conf = host.conf("fixnet", "cni0", json!([[{"subnet": "10.217.0.0/24"}]]));
    let pa = NodeNetns::create("pod").unwrap();
    let pb = NodeNetns::create("pod").unwrap();

    // DEL when the element is already gone (someone flushed it): still succeeds and
    // releases the lease.
    let a = host.cni(OURS, "ADD", "fix-a", pa.path(), &conf);
    assert!(a.ok, "{a:?}");
    let ip_a = a.json["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let del = format!("delete element inet nodus masq4 {{ {ip_a} }}");
    assert!(host.ns.run(&["nft", &del]).status.success());
    let d = host.cni(OURS, "DEL", "fix-a", pa.path(), &conf);
    assert!(d.ok, "{d:?}");
    assert!(host.leases("fixnet").is_empty());
    assert_eq!(host.nft_elements(), 0, "{}", host.nft());

    // A stale element (its lease lost) for the address the next pod gets: ADD replaces it
    // with one tagged for the new attachment.
    let a = host.cni(OURS, "ADD", "fix-a", pa.path(), &conf);
    assert!(a.ok, "{a:?}");
    let ip_a = a.json["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    std::fs::remove_file(host.lease_dir("fixnet").join(&ip_a)).unwrap();
    let b = host.call(Call {
        bin: OURS,
        cmd: "ADD",
        cid: "fix-b",
        netns: pb.path().to_str().unwrap(),
        ifname: "eth0",
        args: &format!("IP={ip_a}"),
        stdin: conf.to_string().into_bytes(),
        unset: &[],
    });
    assert!(b.ok, "{b:?}");
    let nft = host.nft();
    assert!(nft.contains(":fix-b/eth0\""), "{nft}");
    assert!(!nft.contains(":fix-a/eth0\""), "{nft}");
    assert_eq!(host.nft_elements(), 1, "{nft}");
    assert!(host.cni(OURS, "DEL", "fix-b", pb.path(), &conf).ok);
    assert!(host.cni(OURS, "DEL", "fix-a", pa.path(), &conf).ok);
    assert_eq!(host.nft_elements(), 0, "{}", host.nft());
    assert!(host.veths().is_empty());
}
