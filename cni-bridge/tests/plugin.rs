//! nodus-bridge against the real kernel: every bridge, veth, address and nft rule lives in
//! network namespaces created here (a private "host" namespace where the plugin runs, and
//! one per pod); Drop guards remove them even when an assertion fails.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::thread;

use common::*;
use nodus_testkit::NodeNetns;
use serde_json::{json, Value};

fn v4_range(subnet: &str) -> Value {
    json!([[{ "subnet": subnet }]])
}

/// Routes of `ns` as (dst, gateway) with "default" spelled as the CIDR.
fn routes(ns: &NodeNetns, v6: bool) -> Vec<(String, Option<String>)> {
    let fam = if v6 { "-6" } else { "-4" };
    let v = ip_json(ns, &["ip", "-j", fam, "route", "show"]);
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let dst = r["dst"].as_str().unwrap_or_default().to_string();
            let dst = match dst.as_str() {
                "default" if v6 => "::/0".to_string(),
                "default" => "0.0.0.0/0".to_string(),
                d if !d.contains('/') => format!("{d}/{}", if v6 { 128 } else { 32 }),
                _ => dst,
            };
            (dst, r["gateway"].as_str().map(str::to_string))
        })
        .collect()
}

/// The result of an ADD describes exactly what is in the namespaces.
fn assert_result_matches(host: &Host, pod: &NodeNetns, res: &Value, bridge: &str) {
    let ifs = res["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifs.len(), 3, "{res}");
    assert_eq!(ifs[0]["name"], bridge);
    assert_eq!(ifs[0]["mac"], mac_of(&host.ns, bridge));
    let veth = ifs[1]["name"].as_str().unwrap();
    assert_eq!(ifs[1]["mac"], mac_of(&host.ns, veth));
    assert_eq!(ifs[2]["name"], "eth0");
    assert_eq!(ifs[2]["sandbox"], pod.path().to_str().unwrap());
    assert_eq!(ifs[2]["mac"], mac_of(pod, "eth0"));
    let mut want: Vec<String> = res["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["interface"], 2);
            i["address"].as_str().unwrap().to_string()
        })
        .collect();
    want.sort();
    assert_eq!(global_addrs(pod, "eth0"), want);
    for r in res["routes"].as_array().into_iter().flatten() {
        let dst = r["dst"].as_str().unwrap();
        let have = routes(pod, dst.contains(':'));
        let gw = r["gw"].as_str().map(str::to_string);
        assert!(
            have.iter().any(|(d, g)| d == dst && *g == gw),
            "route {r} not in {have:?}"
        );
    }
}

#[test]
fn two_pods_ping_each_other_and_the_gateway() {
    let host = Host::new("cnib-ping");
    let conf = host.conf("pingnet", "cni0", v4_range("10.201.0.0/24"));
    let p1 = NodeNetns::create("pod").unwrap();
    let p2 = NodeNetns::create("pod").unwrap();
    let r1 = host.cni(OURS, "ADD", "ctr-one", p1.path(), &conf);
    assert!(r1.ok, "{r1:?}");
    let r2 = host.cni(OURS, "ADD", "ctr-two", p2.path(), &conf);
    assert!(r2.ok, "{r2:?}");
    assert_eq!(r1.json["cniVersion"], "1.0.0");
    assert_result_matches(&host, &p1, &r1.json, "cni0");
    assert_result_matches(&host, &p2, &r2.json, "cni0");
    let ip1 = r1.json["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let ip2 = r2.json["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(r1.json["ips"][0]["gateway"], "10.201.0.1");
    assert!(ping(&p1, &ip2), "pod1 -> pod2 {ip2}");
    assert!(ping(&p2, &ip1), "pod2 -> pod1 {ip1}");
    assert!(ping(&p1, "10.201.0.1"), "pod1 -> gateway");
    assert!(ping(&p2, "10.201.0.1"), "pod2 -> gateway");
    // Masquerade elements exist for both pods and go with DEL.
    assert_eq!(host.nft_elements(), 2, "{}", host.nft());
    for (cid, p) in [("ctr-one", &p1), ("ctr-two", &p2)] {
        let d = host.cni(OURS, "DEL", cid, p.path(), &conf);
        assert!(d.ok, "{d:?}");
    }
    assert!(host.leases("pingnet").is_empty());
    assert!(host.veths().is_empty());
    assert_eq!(host.nft_elements(), 0);
}

#[test]
fn hundred_concurrent_adds_then_dels_leave_nothing() {
    let host = Host::new("cnib-many");
    let conf = host.conf("manynet", "cni0", v4_range("10.202.0.0/24"));
    let pods: Vec<NodeNetns> = (0..100)
        .map(|_| NodeNetns::create("pod").unwrap())
        .collect();
    let results: Vec<Out> = thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (host, conf) = (&host, &conf);
                s.spawn(move || host.cni(OURS, "ADD", &format!("ctr{i}"), p.path(), conf))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips = HashSet::new();
    for r in &results {
        assert!(r.ok, "{r:?}");
        ips.insert(r.json["ips"][0]["address"].as_str().unwrap().to_string());
    }
    assert_eq!(ips.len(), 100, "distinct addresses");
    assert_eq!(host.leases("manynet").len(), 100);
    assert_eq!(host.veths().len(), 100);
    assert_eq!(host.nft_elements(), 100);
    // The gateway address went on the bridge once despite the race.
    assert_eq!(global_addrs(&host.ns, "cni0"), ["10.202.0.1/24"]);

    let dels: Vec<Out> = thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (host, conf) = (&host, &conf);
                s.spawn(move || host.cni(OURS, "DEL", &format!("ctr{i}"), p.path(), conf))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for d in &dels {
        assert!(d.ok, "{d:?}");
    }
    assert!(
        host.leases("manynet").is_empty(),
        "{:?}",
        host.leases("manynet")
    );
    assert!(host.veths().is_empty(), "{:?}", host.veths());
    assert_eq!(host.nft_elements(), 0, "{}", host.nft());

    // DEL three times in a row.
    let p = &pods[0];
    assert!(host.cni(OURS, "ADD", "again", p.path(), &conf).ok);
    for _ in 0..3 {
        let d = host.cni(OURS, "DEL", "again", p.path(), &conf);
        assert!(d.ok, "{d:?}");
    }
    assert!(host.leases("manynet").is_empty());

    // DEL after the netns is gone still frees the lease and the host end.
    let gone = NodeNetns::create("pod").unwrap();
    let path = gone.path().to_path_buf();
    let a = host.cni(OURS, "ADD", "orphan", &path, &conf);
    assert!(a.ok, "{a:?}");
    assert_eq!(host.leases("manynet").len(), 1);
    drop(gone);
    assert!(!path.exists());
    let d = host.cni(OURS, "DEL", "orphan", &path, &conf);
    assert!(d.ok, "{d:?}");
    assert!(host.leases("manynet").is_empty());
    assert!(host.veths().is_empty(), "{:?}", host.veths());
    assert_eq!(host.nft_elements(), 0);
}

#[test]
fn dual_stack_add_gives_both_families_with_routes() {
    let host = Host::new("cnib-dual");
    let conf = host.conf(
        "dualnet",
        "cni0",
        json!([[{"subnet": "10.203.0.0/24"}], [{"subnet": "fd00:203::/64"}]]),
    );
    let pod = NodeNetns::create("pod").unwrap();
    let r = host.cni(OURS, "ADD", "dual", pod.path(), &conf);
    assert!(r.ok, "{r:?}");
    let ips = r.json["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2);
    assert_eq!(ips[0]["address"], "10.203.0.2/24");
    assert_eq!(ips[1]["address"], "fd00:203::2/64");
    assert_result_matches(&host, &pod, &r.json, "cni0");
    let rs: Vec<&str> = r.json["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap())
        .collect();
    assert_eq!(rs, ["0.0.0.0/0", "::/0"]);
    assert!(ping(&pod, "10.203.0.1"));
    assert!(ping(&pod, "fd00:203::1"));
    let mut leases = host.leases("dualnet");
    leases.sort();
    assert_eq!(leases, ["10.203.0.2", "fd00:203::2"]);
    assert!(host.cni(OURS, "DEL", "dual", pod.path(), &conf).ok);
    assert!(host.leases("dualnet").is_empty());
    assert_eq!(host.nft_elements(), 0);
}

#[test]
fn results_follow_the_requested_version() {
    let host = Host::new("cnib-ver");
    let pod = NodeNetns::create("pod").unwrap();
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        let mut conf = host.conf("vernet", "cni0", v4_range("10.204.0.0/24"));
        conf["cniVersion"] = json!(v);
        conf["mtu"] = json!(1400);
        let r = host.cni(OURS, "ADD", "ver", pod.path(), &conf);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.json["cniVersion"], v);
        assert_eq!(
            r.json["ips"][0].get("version").is_some(),
            v == "0.4.0",
            "{v}: {}",
            r.json
        );
        assert_eq!(
            r.json["interfaces"][2].get("mtu").is_some(),
            v == "1.1.0",
            "{v}"
        );
        assert!(host.cni(OURS, "DEL", "ver", pod.path(), &conf).ok);
    }
    let o = host.call(Call {
        bin: OURS,
        cmd: "VERSION",
        cid: "",
        netns: "",
        ifname: "",
        args: "",
        stdin: br#"{"cniVersion":"1.1.0"}"#.to_vec(),
        unset: &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
    });
    assert!(o.ok, "{o:?}");
    assert_eq!(
        o.json["supportedVersions"],
        json!(["0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn chained_prev_result_is_kept() {
    let host = Host::new("cnib-prev");
    let pod = NodeNetns::create("pod").unwrap();
    let mut conf = host.conf("prevnet", "cni0", v4_range("10.205.0.0/24"));
    conf["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": pod.path()}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}],
        "dns": {"nameservers": ["10.0.0.10"]}
    });
    let r = host.cni(OURS, "ADD", "prev", pod.path(), &conf);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.json["interfaces"].as_array().unwrap().len(), 4);
    assert_eq!(r.json["ips"][0]["address"], "127.0.0.1/8");
    assert_eq!(r.json["ips"][1]["interface"], 3);
    assert_eq!(r.json["dns"]["nameservers"][0], "10.0.0.10");
    assert!(host.cni(OURS, "DEL", "prev", pod.path(), &conf).ok);
}

/// The rules a network's first ADD makes through netlink compile to the same bytecode as
/// the same ruleset text loaded by `nft` (also for prefixes that are not whole bytes).
#[test]
fn first_add_makes_the_rules_nft_makes() {
    let host = Host::new("cnib-same");
    let conf = host.conf(
        "samenet",
        "cni0",
        json!([[{"subnet": "10.206.16.0/20"}], [{"subnet": "fd00:206::/60"}]]),
    );
    let pod = NodeNetns::create("pod").unwrap();
    let r = host.cni(OURS, "ADD", "same", pod.path(), &conf);
    assert!(r.ok, "{r:?}");
    let text = host.nft();
    assert!(text.contains("masquerade"), "{text}");
    let bytecode = |ns: &NodeNetns| {
        let o = ns.run(&["nft", "--debug=netlink", "list", "table", "inet", "nodus"]);
        assert!(o.status.success(), "{o:?}");
        // Rule headers carry handles ("inet nodus <chain> <handle> <previous>"): drop them.
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| match l.strip_prefix("inet nodus ") {
                Some(rest) => rest.split(' ').next().unwrap_or_default().to_string(),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let ours = bytecode(&host.ns);
    let other = NodeNetns::create("cnib-same-nft").unwrap();
    let mut load = other.command(&["nft", "-f", "-"]);
    load.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = load.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let theirs = bytecode(&other);
    assert!(ours.contains("[ lookup reg 1 set masq4 dreg 0"), "{ours}");
    assert!(ours.contains("bitwise"), "{ours}");
    assert_eq!(ours, theirs);
    assert!(host.cni(OURS, "DEL", "same", pod.path(), &conf).ok);
}
