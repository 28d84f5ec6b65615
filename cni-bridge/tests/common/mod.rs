//! Shared test harness: a private "host" network namespace where the plugin runs (through
//! `nsenter --net`), a temporary IPAM data dir, and helpers to run CNI commands and inspect
//! what they left behind.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nodus_testkit::NodeNetns;
use serde_json::{json, Value};

pub const OURS: &str = env!("CARGO_BIN_EXE_nodus-bridge");
pub const REF_BRIDGE: &str = "/usr/lib/cni/bridge";

/// What a plugin call returned.
#[derive(Debug)]
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
    pub json: Value,
}

impl Out {
    pub fn code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or(0)
    }
    pub fn msg(&self) -> String {
        self.json["msg"].as_str().unwrap_or_default().to_string()
    }
}

pub struct Host {
    pub ns: NodeNetns,
    pub data: tempfile::TempDir,
}

/// A call's parameters.
pub struct Call<'a> {
    pub bin: &'a str,
    pub cmd: &'a str,
    pub cid: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
    pub stdin: Vec<u8>,
    /// Variables not to set (to test missing ones).
    pub unset: &'a [&'a str],
}

impl Host {
    pub fn new(prefix: &str) -> Host {
        Host {
            ns: NodeNetns::create(prefix).expect("create host netns"),
            data: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    pub fn lease_dir(&self, network: &str) -> PathBuf {
        self.data.path().join(network)
    }

    /// A bridge config (our plugin) for `network` on `bridge` with the given ranges.
    pub fn conf(&self, network: &str, bridge: &str, ranges: Value) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": network,
            "type": "nodus-bridge",
            "bridge": bridge,
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "host-local",
                "ranges": ranges,
                "dataDir": self.data.path(),
            }
        })
    }

    pub fn call(&self, c: Call) -> Out {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.ns.path().display()))
            .arg("--")
            .arg(c.bin)
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let vars = [
            ("CNI_COMMAND", c.cmd),
            ("CNI_CONTAINERID", c.cid),
            ("CNI_NETNS", c.netns),
            ("CNI_IFNAME", c.ifname),
            ("CNI_ARGS", c.args),
        ];
        for (k, v) in vars {
            if !c.unset.contains(&k) {
                cmd.env(k, v);
            } else {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("spawn plugin");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&c.stdin)
            .expect("write stdin");
        let o = child.wait_with_output().expect("wait plugin");
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        let json = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
        Out {
            ok: o.status.success(),
            stdout,
            stderr: String::from_utf8_lossy(&o.stderr).to_string(),
            json,
        }
    }

    /// ADD/DEL/CHECK with our binary and the usual parameters.
    pub fn cni(&self, bin: &str, cmd: &str, cid: &str, pod: &Path, conf: &Value) -> Out {
        self.call(Call {
            bin,
            cmd,
            cid,
            netns: pod.to_str().unwrap(),
            ifname: "eth0",
            args: "",
            stdin: conf.to_string().into_bytes(),
            unset: &[],
        })
    }

    /// Lease files (names that parse as IPs) of a network.
    pub fn leases(&self, network: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.lease_dir(network))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Links in the host netns, as `ip -j link` reports them.
    pub fn links(&self) -> Vec<String> {
        ip_json(&self.ns, &["ip", "-j", "link", "show"])
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    pub fn veths(&self) -> Vec<String> {
        self.links()
            .into_iter()
            .filter(|l| l.starts_with("veth"))
            .collect()
    }

    /// The nft ruleset of the host netns, as text.
    pub fn nft(&self) -> String {
        let o = self.ns.run(&["nft", "list", "ruleset"]);
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    /// Number of map elements tagged by us (comments).
    pub fn nft_elements(&self) -> usize {
        self.nft().matches("comment \"").count()
    }
}

pub fn ip_json(ns: &NodeNetns, args: &[&str]) -> Value {
    let o = ns.run(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

/// Addresses (`addr/prefix`, scope global) of `ifname` in `ns`.
pub fn global_addrs(ns: &NodeNetns, ifname: &str) -> Vec<String> {
    let v = ip_json(ns, &["ip", "-j", "addr", "show", "dev", ifname]);
    let mut out = Vec::new();
    for l in v.as_array().into_iter().flatten() {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            if a["scope"] == "global" {
                out.push(format!(
                    "{}/{}",
                    a["local"].as_str().unwrap(),
                    a["prefixlen"]
                ));
            }
        }
    }
    out.sort();
    out
}

pub fn mac_of(ns: &NodeNetns, ifname: &str) -> String {
    let v = ip_json(ns, &["ip", "-j", "link", "show", "dev", ifname]);
    v[0]["address"].as_str().unwrap_or_default().to_string()
}

pub fn ping(ns: &NodeNetns, target: &str) -> bool {
    ns.run(&["ping", "-c", "1", "-W", "2", target])
        .status
        .success()
}
