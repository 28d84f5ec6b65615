//! The CNI result object, read from `prevResult` and written in the requested version
//! (0.4.0 adds `version` to each IP; 1.0.0 and 1.1.0 do not).

use std::net::IpAddr;

use serde_json::{json, Map, Value};

use crate::error::{code, CniError, Result};
use crate::ip::{self, IpNet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOut {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteOut>,
    pub dns: Option<Value>,
}

impl CniResult {
    /// The result as JSON in spec version `version`.
    pub fn to_json(&self, version: &str) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), json!(version));
        let v11 = version == "1.1.0";
        if !self.interfaces.is_empty() {
            let ifs: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut o = Map::new();
                    o.insert("name".into(), json!(i.name));
                    o.insert("mac".into(), json!(i.mac));
                    if let (true, Some(mtu)) = (v11, i.mtu) {
                        o.insert("mtu".into(), json!(mtu));
                    }
                    if let Some(s) = &i.sandbox {
                        o.insert("sandbox".into(), json!(s));
                    }
                    Value::Object(o)
                })
                .collect();
            m.insert("interfaces".into(), Value::Array(ifs));
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|c| {
                    let mut o = Map::new();
                    if version == "0.4.0" {
                        let v = if c.address.is_ipv4() { "4" } else { "6" };
                        o.insert("version".into(), json!(v));
                    }
                    o.insert("address".into(), json!(c.address.to_string()));
                    if let Some(g) = c.gateway {
                        o.insert("gateway".into(), json!(g.to_string()));
                    }
                    if let Some(i) = c.interface {
                        o.insert("interface".into(), json!(i));
                    }
                    Value::Object(o)
                })
                .collect();
            m.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let rs: Vec<Value> = self
                .routes
                .iter()
                .map(|r| {
                    let mut o = Map::new();
                    o.insert("dst".into(), json!(r.dst.to_string()));
                    if let Some(g) = r.gw {
                        o.insert("gw".into(), json!(g.to_string()));
                    }
                    Value::Object(o)
                })
                .collect();
            m.insert("routes".into(), Value::Array(rs));
        }
        m.insert("dns".into(), self.dns.clone().unwrap_or_else(|| json!({})));
        Value::Object(m)
    }

    /// Reads a `prevResult` (0.4.0 or 1.x shape).
    pub fn from_json(v: &Value) -> Result<CniResult> {
        let bad = |what: String| CniError::new(code::DECODE, format!("prevResult.{what}"));
        let mut r = CniResult::default();
        for (i, it) in arr(v, "interfaces").iter().enumerate() {
            r.interfaces.push(Interface {
                name: s(it, "name").ok_or_else(|| bad(format!("interfaces[{i}].name: missing")))?,
                mac: s(it, "mac").unwrap_or_default(),
                mtu: it.get("mtu").and_then(Value::as_u64).map(|m| m as u32),
                sandbox: s(it, "sandbox"),
            });
        }
        for (i, it) in arr(v, "ips").iter().enumerate() {
            let a = s(it, "address").ok_or_else(|| bad(format!("ips[{i}].address: missing")))?;
            let address: IpNet = a
                .parse()
                .map_err(|_| bad(format!("ips[{i}].address: invalid CIDR {a:?}")))?;
            let gateway = match s(it, "gateway") {
                Some(g) => Some(
                    ip::parse_ip(&g)
                        .ok_or_else(|| bad(format!("ips[{i}].gateway: invalid {g:?}")))?,
                ),
                None => None,
            };
            r.ips.push(IpConfig {
                address,
                gateway,
                interface: it
                    .get("interface")
                    .and_then(Value::as_u64)
                    .map(|x| x as usize),
            });
        }
        for (i, it) in arr(v, "routes").iter().enumerate() {
            let d = s(it, "dst").ok_or_else(|| bad(format!("routes[{i}].dst: missing")))?;
            let dst: IpNet = d
                .parse()
                .map_err(|_| bad(format!("routes[{i}].dst: invalid CIDR {d:?}")))?;
            let gw = s(it, "gw").and_then(|g| ip::parse_ip(&g));
            r.routes.push(RouteOut { dst, gw });
        }
        r.dns = v
            .get("dns")
            .cloned()
            .filter(|d| d.as_object().is_some_and(|o| !o.is_empty()));
        Ok(r)
    }
}

fn arr<'a>(v: &'a Value, k: &str) -> &'a [Value] {
    v.get(k)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: Some(1400),
                sandbox: Some("/run/netns/x".into()),
            }],
            ips: vec![
                IpConfig {
                    address: "10.0.0.2/24".parse().unwrap(),
                    gateway: Some("10.0.0.1".parse().unwrap()),
                    interface: Some(0),
                },
                IpConfig {
                    address: "fd00::2/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![RouteOut {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.0.0.1".parse().unwrap()),
            }],
            dns: None,
        }
    }

    #[test]
    fn version_shapes() {
        let r = sample();
        let v04 = r.to_json("0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["ips"][1]["version"], "6");
        assert!(v04["interfaces"][0].get("mtu").is_none());
        let v10 = r.to_json("1.0.0");
        assert!(v10["ips"][0].get("version").is_none());
        assert_eq!(v10["cniVersion"], "1.0.0");
        let v11 = r.to_json("1.1.0");
        assert_eq!(v11["interfaces"][0]["mtu"], 1400);
        assert_eq!(v11["routes"][0]["gw"], "10.0.0.1");
    }

    #[test]
    fn roundtrip_through_each_version() {
        for v in ["0.4.0", "1.0.0"] {
            let mut back = CniResult::from_json(&sample().to_json(v)).unwrap();
            back.interfaces[0].mtu = Some(1400);
            assert_eq!(back, sample(), "version {v}");
        }
        let e = CniResult::from_json(&json!({"ips":[{"address":"nope"}]})).unwrap_err();
        assert!(e.msg.contains("prevResult.ips[0].address"));
    }
}
