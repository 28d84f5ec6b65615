//! Bridge options against the kernel: mtu, promiscMode, hairpinMode, MAC from CNI_ARGS and
//! from the `mac` capability, macspoofchk (spoofed frames dropped, rules gone after DEL).

mod common;

use common::*;
use nodus_testkit::NodeNetns;
use serde_json::json;

fn link_json(ns: &NodeNetns, dev: &str) -> serde_json::Value {
    ip_json(ns, &["ip", "-d", "-j", "link", "show", "dev", dev])[0].clone()
}

#[test]
fn mtu_promisc_hairpin_mac_and_macspoofchk() {
    let host = Host::new("cnib-opt");
    let mut conf = host.conf("optnet", "br-opt", json!([[{"subnet": "10.216.0.0/24"}]]));
    conf["mtu"] = json!(1400);
    conf["promiscMode"] = json!(true);
    conf["hairpinMode"] = json!(true);
    conf["macspoofchk"] = json!(true);
    let p1 = NodeNetns::create("pod").unwrap();
    let p2 = NodeNetns::create("pod").unwrap();

    let r1 = host.call(Call {
        bin: OURS,
        cmd: "ADD",
        cid: "opt-one",
        netns: p1.path().to_str().unwrap(),
        ifname: "eth0",
        args: "IgnoreUnknown=1;MAC=02:16:00:00:00:01;K8S_POD_NAME=x",
        stdin: conf.to_string().into_bytes(),
        unset: &[],
    });
    assert!(r1.ok, "{r1:?}");
    let mut conf2 = conf.clone();
    conf2["runtimeConfig"] = json!({"mac": "02:16:00:00:00:02"});
    let r2 = host.cni(OURS, "ADD", "opt-two", p2.path(), &conf2);
    assert!(r2.ok, "{r2:?}");

    assert_eq!(mac_of(&p1, "eth0"), "02:16:00:00:00:01");
    assert_eq!(mac_of(&p2, "eth0"), "02:16:00:00:00:02");
    assert_eq!(r2.json["interfaces"][2]["mac"], "02:16:00:00:00:02");
    assert_eq!(link_json(&p1, "eth0")["mtu"], 1400);
    let veth = r1.json["interfaces"][1]["name"].as_str().unwrap();
    let hv = link_json(&host.ns, veth);
    assert_eq!(hv["mtu"], 1400);
    assert_eq!(hv["master"], "br-opt");
    assert_eq!(hv["linkinfo"]["info_slave_data"]["hairpin"], true, "{hv}");
    let br = link_json(&host.ns, "br-opt");
    let flags: Vec<&str> = br["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(flags.contains(&"PROMISC"), "{flags:?}");

    // Traffic with the assigned MAC passes; after spoofing the MAC it is dropped.
    assert!(ping(&p1, "10.216.0.3"));
    assert!(p1
        .run(&["ip", "link", "set", "eth0", "address", "02:16:00:00:00:99"])
        .status
        .success());
    p1.run(&["ip", "neigh", "flush", "all"]);
    p2.run(&["ip", "neigh", "flush", "all"]);
    assert!(
        !ping(&p1, "10.216.0.3"),
        "spoofed source MAC must be dropped"
    );
    assert!(host.nft().contains(&format!("chain mac-{veth}")));

    assert!(host.cni(OURS, "DEL", "opt-one", p1.path(), &conf).ok);
    assert!(host.cni(OURS, "DEL", "opt-two", p2.path(), &conf2).ok);
    let nft = host.nft();
    assert!(!nft.contains("chain mac-"), "{nft}");
    assert_eq!(host.nft_elements(), 0, "{nft}");
    assert!(host.veths().is_empty());
}
