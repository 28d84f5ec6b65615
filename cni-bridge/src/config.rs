//! Input of one plugin call: the `CNI_*` environment and the network configuration on stdin,
//! validated into typed values with errors naming the field.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{code, CniError, Result};
use crate::ip::{self, IpNet};

/// The spec versions this plugin reads and writes.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];
/// Default bridge name, as the reference plugin.
pub const DEFAULT_BRIDGE: &str = "cni0";
/// Default IPAM data directory, as the reference host-local.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// The `CNI_*` variables.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

pub fn parse_command(s: Option<&str>) -> Result<Command> {
    match s {
        Some("ADD") => Ok(Command::Add),
        Some("DEL") => Ok(Command::Del),
        Some("CHECK") => Ok(Command::Check),
        Some("VERSION") => Ok(Command::Version),
        Some("STATUS") => Ok(Command::Status),
        Some("GC") => Ok(Command::Gc),
        Some(other) => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND: unknown command {other:?}"),
        )),
        None => Err(CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND: environment variable is missing",
        )),
    }
}

impl Env {
    /// Reads the variables a command needs; `get` abstracts the process environment.
    pub fn load(cmd: Command, get: impl Fn(&str) -> Option<String>) -> Result<Env> {
        let need = |name: &str| -> Result<String> {
            match get(name) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(CniError::new(
                    code::INVALID_ENV,
                    format!("{name}: environment variable is missing or empty"),
                )),
            }
        };
        let opt = |name: &str| get(name).unwrap_or_default();
        let mut env = Env {
            args: opt("CNI_ARGS"),
            path: opt("CNI_PATH"),
            ..Default::default()
        };
        match cmd {
            Command::Add | Command::Check => {
                env.container_id = need("CNI_CONTAINERID")?;
                env.netns = need("CNI_NETNS")?;
                env.ifname = need("CNI_IFNAME")?;
            }
            Command::Del => {
                env.container_id = need("CNI_CONTAINERID")?;
                env.ifname = need("CNI_IFNAME")?;
                env.netns = opt("CNI_NETNS");
            }
            Command::Version | Command::Status | Command::Gc => {}
        }
        if matches!(cmd, Command::Add | Command::Check | Command::Del) {
            validate_ifname("CNI_IFNAME", &env.ifname, code::INVALID_ENV)?;
        }
        Ok(env)
    }

    /// `CNI_ARGS` as key/value pairs (`K=V;K2=V2`).
    pub fn args_map(&self) -> Result<HashMap<String, String>> {
        let mut m = HashMap::new();
        for pair in self.args.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
                )
            })?;
            m.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(m)
    }
}

/// Linux interface name rules (IFNAMSIZ, no '/', no whitespace, not "." or "..").
pub fn validate_ifname(field: &str, name: &str, err_code: u32) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        return Err(CniError::new(
            err_code,
            format!("{field}: {name:?} is not a valid interface name"),
        ));
    }
    Ok(())
}

/// A GC attachment entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RawRoute {
    dst: Option<String>,
    gw: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type")]
    ipam_type: Option<String>,
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
    #[serde(default)]
    ranges: Vec<Vec<RawRange>>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    data_dir: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRuntimeConfig {
    mac: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    ip_ranges: Vec<Vec<RawRange>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    name: Option<String>,
    bridge: Option<String>,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    force_address: bool,
    #[serde(default)]
    ip_masq: bool,
    mtu: Option<u32>,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
    vlan: Option<u16>,
    #[serde(default)]
    macspoofchk: bool,
    ipam: Option<RawIpam>,
    #[serde(default)]
    runtime_config: RawRuntimeConfig,
    args: Option<Value>,
    prev_result: Option<Value>,
    dns: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<Attachment>>,
}

/// One address range (host-local's `Range`), canonicalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.subnet.contains(ip)
            && ip::to_u128(ip) >= ip::to_u128(&self.start)
            && ip::to_u128(ip) <= ip::to_u128(&self.end)
    }

    fn overlaps(&self, o: &Range) -> bool {
        self.subnet.is_ipv4() == o.subnet.is_ipv4()
            && (self.contains(&o.start)
                || self.contains(&o.end)
                || o.contains(&self.start)
                || o.contains(&self.end))
    }
}

/// A route from the IPAM config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConf {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// The IPAM part of the configuration.
#[derive(Debug, Clone)]
pub struct IpamConf {
    pub range_sets: Vec<Vec<Range>>,
    pub routes: Vec<RouteConf>,
    pub data_dir: String,
    /// Addresses requested by `CNI_ARGS IP=`, `args.cni.ips` or the `ips` capability.
    pub requested: Vec<IpAddr>,
}

/// The whole validated network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    pub vlan: Option<u16>,
    pub macspoofchk: bool,
    pub mac: Option<[u8; 6]>,
    pub ipam: Option<IpamConf>,
    pub prev_result: Option<Value>,
    pub dns: Option<Value>,
    /// GC: the attachments to keep (`None` when the key is absent).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Reads only `cniVersion` (for VERSION and for the version of an error object).
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct V {
        #[serde(rename = "cniVersion")]
        v: Option<String>,
    }
    serde_json::from_slice::<V>(stdin).ok().and_then(|v| v.v)
}

pub fn check_version(v: &str) -> Result<()> {
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion: {v:?} is not supported (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ))
    }
}

fn parse_ip_field(field: &str, s: &str) -> Result<IpAddr> {
    ip::parse_ip(s).ok_or_else(|| CniError::config(format!("{field}: invalid IP address {s:?}")))
}

fn parse_range(field: &str, r: &RawRange) -> Result<Range> {
    let subnet_s = r
        .subnet
        .as_deref()
        .ok_or_else(|| CniError::config(format!("{field}.subnet: missing")))?;
    let subnet: IpNet = subnet_s
        .parse()
        .map_err(|_| CniError::config(format!("{field}.subnet: invalid CIDR {subnet_s:?}")))?;
    let subnet = subnet.trunc();
    if subnet.prefix + 2 > ip::max_prefix(&subnet.addr) {
        return Err(CniError::config(format!(
            "{field}.subnet: network {subnet} too small to allocate from"
        )));
    }
    let in_subnet = |name: &str, ip: IpAddr| -> Result<IpAddr> {
        if !subnet.contains(&ip) {
            return Err(CniError::config(format!(
                "{field}.{name}: {ip} not in network {subnet}"
            )));
        }
        Ok(ip)
    };
    let gateway = match &r.gateway {
        Some(g) => in_subnet("gateway", parse_ip_field(&format!("{field}.gateway"), g)?)?,
        None => ip::next_ip(&subnet.addr),
    };
    let start = match &r.range_start {
        Some(s) => in_subnet(
            "rangeStart",
            parse_ip_field(&format!("{field}.rangeStart"), s)?,
        )?,
        None => ip::next_ip(&subnet.addr),
    };
    let end = match &r.range_end {
        Some(s) => in_subnet("rangeEnd", parse_ip_field(&format!("{field}.rangeEnd"), s)?)?,
        None => {
            let last = subnet.last();
            if subnet.is_ipv4() {
                ip::from_u128(ip::to_u128(&last) - 1, &last)
            } else {
                last
            }
        }
    };
    if ip::to_u128(&start) > ip::to_u128(&end) {
        return Err(CniError::config(format!(
            "{field}.rangeStart: {start} is after rangeEnd {end}"
        )));
    }
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

fn parse_range_sets(field: &str, sets: &[Vec<RawRange>]) -> Result<Vec<Vec<Range>>> {
    let mut out = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        if set.is_empty() {
            return Err(CniError::config(format!("{field}[{i}]: empty range set")));
        }
        let mut rs = Vec::new();
        for (j, r) in set.iter().enumerate() {
            rs.push(parse_range(&format!("{field}[{i}][{j}]"), r)?);
        }
        let v4 = rs[0].subnet.is_ipv4();
        if rs.iter().any(|r| r.subnet.is_ipv4() != v4) {
            return Err(CniError::config(format!(
                "{field}[{i}]: mixes IPv4 and IPv6 ranges"
            )));
        }
        for a in 0..rs.len() {
            for b in a + 1..rs.len() {
                if rs[a].overlaps(&rs[b]) {
                    return Err(CniError::config(format!(
                        "{field}[{i}]: range {a} overlaps with range {b}"
                    )));
                }
            }
        }
        out.push(rs);
    }
    Ok(out)
}

/// Parses the configuration. `env` provides `CNI_ARGS` for `IP=` and `MAC=`.
pub fn parse(stdin: &[u8], env: &Env) -> Result<NetConf> {
    let raw: RawConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("network configuration: invalid JSON: {e}"),
        )
    })?;
    let cni_version = raw
        .cni_version
        .clone()
        .ok_or_else(|| CniError::config("cniVersion: missing"))?;
    check_version(&cni_version)?;
    let name = raw
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| CniError::config("name: missing"))?;
    let name_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    // The name is a directory's (IPAM data): at most NAME_MAX bytes, and an error about a
    // longer one must not carry all of it.
    if name.len() > 255 {
        return Err(CniError::config(format!(
            "name: {:?}... ({} bytes) is too long: at most 255 bytes",
            name.chars().take(32).collect::<String>(),
            name.len()
        )));
    }
    if !name_ok {
        return Err(CniError::config(format!(
            "name: {name:?} is not a valid network name"
        )));
    }
    let bridge = raw.bridge.clone().unwrap_or_else(|| DEFAULT_BRIDGE.into());
    validate_ifname("bridge", &bridge, code::INVALID_CONFIG)?;
    if let Some(m) = raw.mtu {
        if !(68..=65535).contains(&m) {
            return Err(CniError::config(format!(
                "mtu: {m} is out of range 68..65535"
            )));
        }
    }
    if let Some(v) = raw.vlan {
        if !(1..=4094).contains(&v) {
            return Err(CniError::config(format!(
                "vlan: {v} is out of range 1..4094"
            )));
        }
    }

    let args = env.args_map()?;
    // MAC: CNI_ARGS, then args.cni.mac, then the `mac` capability (last one wins, as upstream).
    let mut mac_src: Option<(String, String)> =
        args.get("MAC").map(|m| ("CNI_ARGS MAC".into(), m.clone()));
    if let Some(m) = raw
        .args
        .as_ref()
        .and_then(|a| a.pointer("/cni/mac"))
        .and_then(Value::as_str)
    {
        mac_src = Some(("args.cni.mac".into(), m.to_string()));
    }
    if let Some(m) = &raw.runtime_config.mac {
        mac_src = Some(("runtimeConfig.mac".into(), m.clone()));
    }
    let mac = match mac_src {
        Some((field, m)) => {
            let mac = ip::parse_mac(&m)
                .ok_or_else(|| CniError::config(format!("{field}: invalid MAC address {m:?}")))?;
            if mac[0] & 1 == 1 {
                return Err(CniError::config(format!(
                    "{field}: {m} is a multicast address"
                )));
            }
            Some(mac)
        }
        None => None,
    };

    let ipam = match &raw.ipam {
        None => None,
        Some(ri) => Some(parse_ipam(ri, &raw, &args, &cni_version)?),
    };

    let valid_attachments = raw
        .valid_attachments
        .clone()
        .or_else(|| raw.attachments.clone());

    Ok(NetConf {
        cni_version,
        name,
        bridge,
        is_gateway: raw.is_gateway || raw.is_default_gateway,
        is_default_gateway: raw.is_default_gateway,
        force_address: raw.force_address,
        ip_masq: raw.ip_masq,
        mtu: raw.mtu,
        hairpin_mode: raw.hairpin_mode,
        promisc_mode: raw.promisc_mode,
        vlan: raw.vlan,
        macspoofchk: raw.macspoofchk,
        mac,
        ipam,
        prev_result: raw.prev_result.clone(),
        dns: raw.dns.clone(),
        valid_attachments,
    })
}

fn parse_ipam(
    ri: &RawIpam,
    raw: &RawConf,
    args: &HashMap<String, String>,
    _cni_version: &str,
) -> Result<IpamConf> {
    match ri.ipam_type.as_deref() {
        None | Some("host-local") | Some("nodus") | Some("nodus-bridge") => {}
        Some(other) => {
            return Err(CniError::config(format!(
                "ipam.type: {other:?} is not supported; nodus-bridge has host-local IPAM built in"
            )))
        }
    }
    // Order as host-local: runtime ipRanges, then the single top-level range, then ranges.
    let mut range_sets = parse_range_sets("runtimeConfig.ipRanges", &raw.runtime_config.ip_ranges)?;
    if ri.subnet.is_some() {
        let single = RawRange {
            subnet: ri.subnet.clone(),
            range_start: ri.range_start.clone(),
            range_end: ri.range_end.clone(),
            gateway: ri.gateway.clone(),
        };
        range_sets.push(vec![parse_range("ipam", &single)?]);
    }
    range_sets.extend(parse_range_sets("ipam.ranges", &ri.ranges)?);
    if range_sets.is_empty() {
        return Err(CniError::config(
            "ipam: no IP ranges specified (set ipam.subnet or ipam.ranges)",
        ));
    }
    for a in 0..range_sets.len() {
        for b in a + 1..range_sets.len() {
            let overlap = range_sets[a]
                .iter()
                .any(|x| range_sets[b].iter().any(|y| x.overlaps(y)));
            if overlap {
                return Err(CniError::config(format!(
                    "ipam.ranges: range set {a} overlaps with {b}"
                )));
            }
        }
    }
    let mut routes = Vec::new();
    for (i, r) in ri.routes.iter().enumerate() {
        let dst_s = r
            .dst
            .as_deref()
            .ok_or_else(|| CniError::config(format!("ipam.routes[{i}].dst: missing")))?;
        let dst: IpNet = dst_s.parse().map_err(|_| {
            CniError::config(format!("ipam.routes[{i}].dst: invalid CIDR {dst_s:?}"))
        })?;
        let gw = match &r.gw {
            Some(g) => Some(parse_ip_field(&format!("ipam.routes[{i}].gw"), g)?),
            None => None,
        };
        routes.push(RouteConf {
            dst: dst.trunc(),
            gw,
        });
    }
    let mut requested = Vec::new();
    if let Some(ips) = args.get("IP") {
        for s in ips.split(',').filter(|s| !s.is_empty()) {
            requested.push(
                ip::parse_ip(s)
                    .ok_or_else(|| CniError::config(format!("CNI_ARGS IP: invalid IP {s:?}")))?,
            );
        }
    }
    if let Some(list) = raw
        .args
        .as_ref()
        .and_then(|a| a.pointer("/cni/ips"))
        .and_then(Value::as_array)
    {
        for v in list {
            let s = v.as_str().unwrap_or_default();
            requested.push(strip_prefix_ip("args.cni.ips", s)?);
        }
    }
    for s in &raw.runtime_config.ips {
        requested.push(strip_prefix_ip("runtimeConfig.ips", s)?);
    }
    Ok(IpamConf {
        range_sets,
        routes,
        data_dir: ri
            .data_dir
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
        requested,
    })
}

fn strip_prefix_ip(field: &str, s: &str) -> Result<IpAddr> {
    let a = s.split('/').next().unwrap_or_default();
    ip::parse_ip(a).ok_or_else(|| CniError::config(format!("{field}: invalid IP {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(args: &str) -> Env {
        Env {
            args: args.into(),
            ..Default::default()
        }
    }

    #[test]
    fn single_subnet_defaults() {
        let c = parse(
            br#"{"cniVersion":"1.0.0","name":"n1","type":"nodus-bridge","ipam":{"type":"host-local","subnet":"10.22.0.0/24"}}"#,
            &env(""),
        )
        .unwrap();
        assert_eq!(c.bridge, "cni0");
        let ipam = c.ipam.unwrap();
        let r = &ipam.range_sets[0][0];
        assert_eq!(r.start.to_string(), "10.22.0.1");
        assert_eq!(r.end.to_string(), "10.22.0.254");
        assert_eq!(r.gateway.to_string(), "10.22.0.1");
        assert_eq!(ipam.data_dir, "/var/lib/cni/networks");
    }

    #[test]
    fn dual_stack_ranges_and_requested_ips() {
        let c = parse(
            br#"{"cniVersion":"1.1.0","name":"n1","ipam":{"ranges":[[{"subnet":"10.1.0.0/16","rangeStart":"10.1.2.10","rangeEnd":"10.1.2.20","gateway":"10.1.0.254"}],[{"subnet":"fd00:1::/64"}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0","gw":"fd00:1::99"}]},"runtimeConfig":{"ips":["fd00:1::7/64"],"mac":"02:00:00:00:00:01"}}"#,
            &env("IgnoreUnknown=1;IP=10.1.2.15;K8S_POD_NAME=x"),
        )
        .unwrap();
        let ipam = c.ipam.unwrap();
        assert_eq!(ipam.range_sets.len(), 2);
        assert_eq!(
            ipam.range_sets[1][0].end.to_string(),
            "fd00:1::ffff:ffff:ffff:ffff"
        );
        assert_eq!(ipam.range_sets[1][0].gateway.to_string(), "fd00:1::1");
        assert_eq!(ipam.requested.len(), 2);
        assert_eq!(ipam.routes[1].gw.unwrap().to_string(), "fd00:1::99");
        assert_eq!(c.mac, Some([2, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn a_long_name_is_refused_with_a_short_error() {
        for name in ["n".repeat(10 << 20), "é".repeat(200)] {
            let conf = serde_json::json!({"cniVersion": "1.0.0", "name": name});
            let e = parse(conf.to_string().as_bytes(), &env("")).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG);
            assert!(
                e.msg.starts_with("name: ") && e.msg.len() < 200,
                "{}",
                e.msg
            );
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&[u8], u32, &str)] = &[
            (b"{not json", code::DECODE, "invalid JSON"),
            (br#"{"cniVersion":"9.9.9","name":"n"}"#, code::INCOMPATIBLE_VERSION, "cniVersion"),
            (br#"{"cniVersion":"1.0.0"}"#, code::INVALID_CONFIG, "name"),
            (
                br#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.0.0.0/33"}}"#,
                code::INVALID_CONFIG,
                "ipam.subnet",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24","gateway":"10.9.0.1"}]]}}"#,
                code::INVALID_CONFIG,
                "ipam.ranges[0][0].gateway",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.0/25"}]]}}"#,
                code::INVALID_CONFIG,
                "overlaps",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"dhcp"}}"#,
                code::INVALID_CONFIG,
                "ipam.type",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","mtu":10}"#,
                code::INVALID_CONFIG,
                "mtu",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","bridge":"a/b"}"#,
                code::INVALID_CONFIG,
                "bridge",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"mac":"zz"}}"#,
                code::INVALID_CONFIG,
                "runtimeConfig.mac",
            ),
        ];
        for (input, want_code, field) in cases {
            let e = parse(input, &env("")).unwrap_err();
            assert_eq!(e.code, *want_code, "{e:?}");
            assert!(e.msg.contains(field), "{} lacks {field}", e.msg);
        }
    }

    #[test]
    fn env_requirements() {
        let vars = |k: &str| match k {
            "CNI_CONTAINERID" => Some("abc".to_string()),
            "CNI_IFNAME" => Some("eth0".to_string()),
            _ => None,
        };
        let e = Env::load(Command::Add, vars).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_NETNS"));
        let d = Env::load(Command::Del, vars).unwrap();
        assert_eq!(d.netns, "");
        assert_eq!(parse_command(None).unwrap_err().code, code::INVALID_ENV);
        let bad_args = Env {
            args: "novalue".into(),
            ..Default::default()
        };
        assert!(bad_args.args_map().unwrap_err().msg.contains("CNI_ARGS"));
    }
}
