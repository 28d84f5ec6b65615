//! What DEL and GC leave behind in nftables: a network's masquerade chain goes with its
//! last attachment, the tables once nothing of any network is left, and GC reclaims both
//! after a crash. Every rule lives in network namespaces created here.

mod common;

use std::thread;

use common::*;
use nodus_testkit::NodeNetns;
use serde_json::{json, Value};

/// Lines of the host's real ruleset that are ours.
fn nodus_lines(host: &Host) -> Vec<String> {
    host.nft()
        .lines()
        .filter(|l| l.contains("nodus") || l.contains("net-") || l.contains("masq"))
        .map(str::to_string)
        .collect()
}

fn first_ip(r: &Out) -> String {
    r.json["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn net_chains(host: &Host) -> usize {
    host.nft().matches("chain net-").count()
}

/// An "outside" namespace on a link of the host namespace that knows no route back to
/// the pods: a pod reaches it only when its traffic is masqueraded to the host's address.
fn outside(host: &Host) -> NodeNetns {
    let out = NodeNetns::create("out").unwrap();
    for args in [
        vec![
            "ip",
            "link",
            "add",
            "vout",
            "type",
            "veth",
            "peer",
            "name",
            "vin",
            "netns",
            out.name(),
        ],
        vec!["ip", "addr", "add", "192.0.2.1/24", "dev", "vout"],
        vec!["ip", "link", "set", "vout", "up"],
    ] {
        let o = host.ns.run(&args);
        assert!(o.status.success(), "{args:?}: {o:?}");
    }
    for args in [
        vec!["ip", "addr", "add", "192.0.2.2/24", "dev", "vin"],
        vec!["ip", "link", "set", "vin", "up"],
        vec!["ip", "link", "set", "lo", "up"],
    ] {
        let o = out.run(&args);
        assert!(o.status.success(), "{args:?}: {o:?}");
    }
    out
}

#[test]
fn last_del_leaves_nothing_of_ours_in_nftables() {
    let host = Host::new("cnib-last");
    let mut conf = host.conf("lastnet", "cni0", json!([[{"subnet": "10.218.0.0/24"}]]));
    conf["macspoofchk"] = json!(true);
    let pod = NodeNetns::create("pod").unwrap();
    for round in 0..2 {
        let a = host.cni(OURS, "ADD", "last", pod.path(), &conf);
        assert!(a.ok, "round {round}: {a:?}");
        let nft = host.nft();
        assert!(nft.contains("table inet nodus"), "{nft}");
        assert!(nft.contains("table bridge nodus"), "{nft}");
        assert_eq!(net_chains(&host), 1, "{nft}");
        let d = host.cni(OURS, "DEL", "last", pod.path(), &conf);
        assert!(d.ok, "round {round}: {d:?}");
        assert!(
            nodus_lines(&host).is_empty(),
            "round {round}: {}",
            host.nft()
        );
    }
    // A repeated DEL on the clean state succeeds and makes nothing.
    let d = host.cni(OURS, "DEL", "last", pod.path(), &conf);
    assert!(d.ok, "{d:?}");
    assert!(nodus_lines(&host).is_empty(), "{}", host.nft());
}

#[test]
fn chain_stays_while_another_pod_uses_it_and_goes_with_the_last() {
    let host = Host::new("cnib-share");
    let conf = host.conf("sharenet", "cni0", json!([[{"subnet": "10.219.0.0/24"}]]));
    let out = outside(&host);
    let pa = NodeNetns::create("pod").unwrap();
    let pb = NodeNetns::create("pod").unwrap();
    let a = host.cni(OURS, "ADD", "share-a", pa.path(), &conf);
    assert!(a.ok, "{a:?}");
    let b = host.cni(OURS, "ADD", "share-b", pb.path(), &conf);
    assert!(b.ok, "{b:?}");
    assert!(ping(&pb, "192.0.2.2"), "masqueraded before: {}", host.nft());
    // Without masquerade the outside cannot answer: the ping above proves the rules work.
    let mut plain = host.conf("sharenet0", "cni2", json!([[{"subnet": "10.223.0.0/24"}]]));
    plain["ipMasq"] = json!(false);
    let p0 = NodeNetns::create("pod").unwrap();
    assert!(host.cni(OURS, "ADD", "share-0", p0.path(), &plain).ok);
    assert!(!ping(&p0, "192.0.2.2"), "{}", host.nft());
    assert!(host.cni(OURS, "DEL", "share-0", p0.path(), &plain).ok);

    let d = host.cni(OURS, "DEL", "share-a", pa.path(), &conf);
    assert!(d.ok, "{d:?}");
    let nft = host.nft();
    assert_eq!(net_chains(&host), 1, "{nft}");
    assert_eq!(host.nft_elements(), 1, "{nft}");
    assert!(nft.contains(&format!("{} comment", first_ip(&b))), "{nft}");
    assert!(nft.contains(":share-b/eth0\""), "{nft}");
    assert!(ping(&pb, "192.0.2.2"), "masqueraded after: {nft}");

    // Another network in the same table keeps the table when this one goes.
    let other = host.conf("sharenet2", "cni1", json!([[{"subnet": "10.220.0.0/24"}]]));
    let pc = NodeNetns::create("pod").unwrap();
    let c = host.cni(OURS, "ADD", "share-c", pc.path(), &other);
    assert!(c.ok, "{c:?}");
    assert_eq!(net_chains(&host), 2, "{}", host.nft());
    let d = host.cni(OURS, "DEL", "share-b", pb.path(), &conf);
    assert!(d.ok, "{d:?}");
    let nft = host.nft();
    assert_eq!(net_chains(&host), 1, "{nft}");
    assert!(nft.contains(":share-c/eth0\""), "{nft}");
    assert!(ping(&pc, "192.0.2.2"), "other network masqueraded: {nft}");

    let d = host.cni(OURS, "DEL", "share-c", pc.path(), &other);
    assert!(d.ok, "{d:?}");
    assert!(nodus_lines(&host).is_empty(), "{}", host.nft());
    drop(out);
}

fn gc(host: &Host, conf: &Value, keep: &[&str]) -> Out {
    let mut g = conf.clone();
    g["cniVersion"] = json!("1.1.0");
    g["cni.dev/valid-attachments"] = keep
        .iter()
        .map(|c| json!({"containerID": c, "ifname": "eth0"}))
        .collect();
    host.call(Call {
        bin: OURS,
        cmd: "GC",
        cid: "",
        netns: "",
        ifname: "",
        args: "",
        stdin: g.to_string().into_bytes(),
        unset: &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
    })
}

#[test]
fn gc_after_a_crash_removes_unused_chains_and_the_table() {
    let host = Host::new("cnib-gcc");
    let mut conf = host.conf("gccnet", "cni0", json!([[{"subnet": "10.221.0.0/24"}]]));
    conf["macspoofchk"] = json!(true);
    let pa = NodeNetns::create("pod").unwrap();
    let pb = NodeNetns::create("pod").unwrap();
    assert!(host.cni(OURS, "ADD", "gcc-a", pa.path(), &conf).ok);
    assert!(host.cni(OURS, "ADD", "gcc-b", pb.path(), &conf).ok);
    // A chain left empty by a DEL that died between its steps (or an old configuration).
    let o = host
        .ns
        .run(&["nft", "add chain inet nodus net-00000000deadbeef"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(net_chains(&host), 2, "{}", host.nft());

    // b is still listed: its chain, element and MAC check stay; the empty chain goes.
    let g = gc(&host, &conf, &["gcc-b"]);
    assert!(g.ok, "{g:?}");
    let nft = host.nft();
    assert_eq!(net_chains(&host), 1, "{nft}");
    assert!(!nft.contains("deadbeef"), "{nft}");
    assert!(nft.contains(":gcc-b/eth0\""), "{nft}");
    assert!(!nft.contains(":gcc-a/eth0\""), "{nft}");
    assert!(nft.contains("table bridge nodus"), "{nft}");

    // The runtime crashed and lost b (no DEL ever comes): GC reclaims everything.
    let g = gc(&host, &conf, &[]);
    assert!(g.ok, "{g:?}");
    assert!(host.leases("gccnet").is_empty());
    assert!(nodus_lines(&host).is_empty(), "{}", host.nft());
    // GC on nothing at all is fine too.
    let g = gc(&host, &conf, &[]);
    assert!(g.ok, "{g:?}");
    for (cid, p) in [("gcc-a", &pa), ("gcc-b", &pb)] {
        assert!(host.cni(OURS, "DEL", cid, p.path(), &conf).ok);
    }
    assert!(host.veths().is_empty(), "{:?}", host.veths());
    assert!(nodus_lines(&host).is_empty(), "{}", host.nft());
}

#[test]
fn add_racing_the_last_del_keeps_its_masquerade() {
    let host = Host::new("cnib-race");
    let conf = host.conf("racenet", "cni0", json!([[{"subnet": "10.222.0.0/24"}]]));
    let pods: Vec<NodeNetns> = (0..2).map(|_| NodeNetns::create("pod").unwrap()).collect();
    // Each round: the only pod's DEL (which tears the network down) runs at the same
    // time as the next pod's ADD. Whatever the order, the new pod keeps its element and
    // the chain it jumps to.
    let first = host.cni(OURS, "ADD", "race-0", pods[0].path(), &conf);
    assert!(first.ok, "{first:?}");
    for round in 1..=20usize {
        let (old, new) = (&pods[(round - 1) % 2], &pods[round % 2]);
        let (del, add) = thread::scope(|s| {
            let d = s.spawn(|| {
                host.cni(
                    OURS,
                    "DEL",
                    &format!("race-{}", round - 1),
                    old.path(),
                    &conf,
                )
            });
            let a = s.spawn(|| host.cni(OURS, "ADD", &format!("race-{round}"), new.path(), &conf));
            (d.join().unwrap(), a.join().unwrap())
        });
        assert!(del.ok, "round {round}: {del:?}");
        assert!(add.ok, "round {round}: {add:?}");
        let nft = host.nft();
        assert_eq!(host.nft_elements(), 1, "round {round}: {nft}");
        assert!(
            nft.contains(&format!("{} comment \"", first_ip(&add))),
            "round {round}: {nft}"
        );
        assert!(
            nft.contains(&format!(":race-{round}/eth0\" : jump net-")),
            "round {round}: {nft}"
        );
        assert_eq!(net_chains(&host), 1, "round {round}: {nft}");
        assert!(nft.contains("masquerade"), "round {round}: {nft}");
    }
    let last = &pods[20 % 2];
    assert!(host.cni(OURS, "DEL", "race-20", last.path(), &conf).ok);
    assert!(nodus_lines(&host).is_empty(), "{}", host.nft());
}
