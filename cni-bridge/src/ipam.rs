//! Built-in IPAM with the on-disk format of the reference `host-local` plugin, so leases
//! survive switching between the two on a live node:
//! `<dataDir>/<network>/<ip>` holds `<containerID>\r\n<ifname>`,
//! `last_reserved_ip.<range set index>` holds the last address handed out from that set, and
//! every change happens under an exclusive `flock` on `<dataDir>/<network>/lock`.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::{Attachment, IpamConf, Range};
use crate::error::{code, CniError, Result};
use crate::ip::{self, IpNet};

const LAST_IP_PREFIX: &str = "last_reserved_ip.";
const LINE_BREAK: &str = "\r\n";

/// The lease directory of one network, locked for as long as this value lives.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

/// One lease file.
#[derive(Debug, Clone)]
pub struct Lease {
    pub ip: IpAddr,
    pub container_id: String,
    /// Empty for files in the old one-line format.
    pub ifname: String,
}

/// An address handed out for an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address with the prefix length of its subnet.
    pub address: IpNet,
    pub gateway: IpAddr,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/<network>` and takes its lock.
    pub fn open(data_dir: &str, network: &str) -> Result<Store> {
        let dir = Path::new(data_dir).join(network);
        fs::create_dir_all(&dir)
            .map_err(|e| CniError::io(format!("ipam.dataDir {}", dir.display()), e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| CniError::io(format!("open {}", lock_path.display()), e))?;
        loop {
            // SAFETY: flock on a file descriptor we own.
            let r = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(CniError::io(format!("flock {}", lock_path.display()), e));
            }
        }
        Ok(Store { dir, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the lease file for `ip`; `Ok(false)` if it is already taken.
    pub fn reserve(&self, id: &str, ifname: &str, ip: &IpAddr, range_id: usize) -> Result<bool> {
        let path = self.dir.join(ip.to_string());
        let mut f = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(CniError::io(format!("create {}", path.display()), e)),
        };
        let content = format!("{}{LINE_BREAK}{ifname}", id.trim());
        if let Err(e) = f.write_all(content.as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(CniError::io(format!("write {}", path.display()), e));
        }
        drop(f);
        let last = self.dir.join(format!("{LAST_IP_PREFIX}{range_id}"));
        fs::write(&last, ip.to_string())
            .map_err(|e| CniError::io(format!("write {}", last.display()), e))?;
        Ok(true)
    }

    pub fn last_reserved(&self, range_id: usize) -> Option<IpAddr> {
        let s = fs::read_to_string(self.dir.join(format!("{LAST_IP_PREFIX}{range_id}"))).ok()?;
        ip::parse_ip(&s)
    }

    /// Every lease file (files named by an IP address).
    pub fn leases(&self) -> Vec<Lease> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return out;
        };
        for ent in rd.flatten() {
            let name = ent.file_name();
            let Some(ip) = name.to_str().and_then(ip::parse_ip) else {
                continue;
            };
            let Ok(data) = fs::read_to_string(ent.path()) else {
                continue;
            };
            let data = data.trim();
            let (id, ifname) = match data.split_once(LINE_BREAK) {
                Some((a, b)) => (a.trim().to_string(), b.trim().to_string()),
                None => (data.to_string(), String::new()),
            };
            out.push(Lease {
                ip,
                container_id: id,
                ifname,
            });
        }
        out
    }

    /// Addresses held by (id, ifname); files in the old format match by id alone.
    pub fn get_by_id(&self, id: &str, ifname: &str) -> Vec<IpAddr> {
        let id = id.trim();
        self.leases()
            .into_iter()
            .filter(|l| l.container_id == id && (l.ifname == ifname || l.ifname.is_empty()))
            .map(|l| l.ip)
            .collect()
    }

    /// Removes the leases of (id, ifname), as host-local does (the old one-line format
    /// only if nothing in the new format matched). Returns the released addresses.
    pub fn release_by_id(&self, id: &str, ifname: &str) -> Vec<IpAddr> {
        let id = id.trim();
        let leases = self.leases();
        let mut hits: Vec<&Lease> = leases
            .iter()
            .filter(|l| l.container_id == id && l.ifname == ifname)
            .collect();
        if hits.is_empty() {
            hits = leases
                .iter()
                .filter(|l| l.container_id == id && l.ifname.is_empty())
                .collect();
        }
        let mut out = Vec::new();
        for l in hits {
            if fs::remove_file(self.dir.join(l.ip.to_string())).is_ok() {
                out.push(l.ip);
            }
        }
        out
    }

    /// GC: removes every lease whose attachment is not in `valid`. Returns what it removed.
    pub fn release_unlisted(&self, valid: &[Attachment]) -> Vec<Lease> {
        let keep: HashSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let keep_ids: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
        let mut removed = Vec::new();
        for l in self.leases() {
            let listed = if l.ifname.is_empty() {
                keep_ids.contains(l.container_id.as_str())
            } else {
                keep.contains(&(l.container_id.as_str(), l.ifname.as_str()))
            };
            if !listed && fs::remove_file(self.dir.join(l.ip.to_string())).is_ok() {
                removed.push(l);
            }
        }
        removed
    }
}

fn set_contains(set: &[Range], ip: &IpAddr) -> bool {
    set.iter().any(|r| r.contains(ip))
}

fn set_string(set: &[Range]) -> String {
    set.iter()
        .map(|r| format!("{}-{}", r.start, r.end))
        .collect::<Vec<_>>()
        .join(",")
}

/// host-local's round-robin iterator over one range set: it starts after the last reserved
/// address (or at the first range's start), goes through every range in order, wraps
/// around, and stops when it is back where it began. Gateways are skipped, and so are
/// network and IPv4 broadcast addresses should a range include them.
pub struct RangeIter<'a> {
    set: &'a [Range],
    idx: usize,
    cur: Option<IpAddr>,
    start: Option<IpAddr>,
}

impl<'a> RangeIter<'a> {
    pub fn new(set: &'a [Range], last_reserved: Option<IpAddr>) -> Self {
        let mut it = RangeIter {
            set,
            idx: 0,
            cur: None,
            start: None,
        };
        if let Some(last) = last_reserved {
            if let Some(i) = set.iter().position(|r| r.contains(&last)) {
                it.idx = i;
                it.cur = Some(last);
            }
        }
        it
    }

    fn skip(r: &Range, ip: &IpAddr) -> bool {
        *ip == r.gateway
            || *ip == r.subnet.network()
            || (r.subnet.is_ipv4() && *ip == r.subnet.last())
    }
}

impl Iterator for RangeIter<'_> {
    type Item = (IpNet, IpAddr);

    fn next(&mut self) -> Option<Self::Item> {
        // Bounded by the number of addresses; each turn moves one step.
        loop {
            let mut r = &self.set[self.idx];
            match self.cur {
                None => {
                    self.cur = Some(r.start);
                    self.start = Some(r.start);
                }
                Some(cur) => {
                    let next = if cur == r.end {
                        self.idx = (self.idx + 1) % self.set.len();
                        r = &self.set[self.idx];
                        r.start
                    } else {
                        ip::next_ip(&cur)
                    };
                    self.cur = Some(next);
                    match self.start {
                        None => self.start = Some(next),
                        Some(s) if s == next => return None,
                        Some(_) => {}
                    }
                }
            }
            let cur = self.cur.expect("set above");
            if Self::skip(r, &cur) {
                continue;
            }
            return Some((
                IpNet {
                    addr: cur,
                    prefix: r.subnet.prefix,
                },
                r.gateway,
            ));
        }
    }
}

/// Allocates one address from every range set for (id, ifname), honouring requested
/// addresses. On error nothing stays reserved for this attachment.
pub fn allocate(store: &Store, conf: &IpamConf, id: &str, ifname: &str) -> Result<Vec<Allocation>> {
    let mut out = Vec::new();
    match allocate_into(store, conf, id, ifname, &mut out) {
        Ok(()) => Ok(out),
        Err(e) => {
            // Only what this call reserved: an earlier lease of the same attachment stays.
            for a in &out {
                let _ = fs::remove_file(store.dir.join(a.address.addr.to_string()));
            }
            Err(e)
        }
    }
}

fn allocate_into(
    store: &Store,
    conf: &IpamConf,
    id: &str,
    ifname: &str,
    out: &mut Vec<Allocation>,
) -> Result<()> {
    let mut requested: Vec<IpAddr> = conf.requested.clone();
    let held = store.get_by_id(id, ifname);
    for (idx, set) in conf.range_sets.iter().enumerate() {
        let want = requested
            .iter()
            .position(|ip| set.iter().any(|r| r.subnet.contains(ip)))
            .map(|i| requested.remove(i));
        if let Some(ip) = want {
            let r = set.iter().find(|r| r.contains(&ip)).ok_or_else(|| {
                CniError::new(
                    code::ADDRESS_UNAVAILABLE,
                    format!("requested IP {ip}: outside range set {}", set_string(set)),
                )
            })?;
            if ip == r.gateway {
                return Err(CniError::new(
                    code::ADDRESS_UNAVAILABLE,
                    format!("requested IP {ip}: is the subnet's gateway"),
                ));
            }
            if !store.reserve(id, ifname, &ip, idx)? {
                return Err(CniError::new(
                    code::ADDRESS_UNAVAILABLE,
                    format!(
                        "requested IP {ip}: not available in range set {}",
                        set_string(set)
                    ),
                ));
            }
            out.push(Allocation {
                address: IpNet {
                    addr: ip,
                    prefix: r.subnet.prefix,
                },
                gateway: r.gateway,
            });
            continue;
        }
        if let Some(ip) = held.iter().find(|ip| set_contains(set, ip)) {
            return Err(CniError::new(
                code::ADDRESS_UNAVAILABLE,
                format!("{ip} has been allocated to {id}, duplicate allocation is not allowed"),
            ));
        }
        let mut got = None;
        for (addr, gw) in RangeIter::new(set, store.last_reserved(idx)) {
            if store.reserve(id, ifname, &addr.addr, idx)? {
                got = Some(Allocation {
                    address: addr,
                    gateway: gw,
                });
                break;
            }
        }
        match got {
            Some(a) => out.push(a),
            None => {
                return Err(CniError::new(
                    code::NO_ADDRESS,
                    format!(
                        "no IP addresses available in range set: {}",
                        set_string(set)
                    ),
                ))
            }
        }
    }
    if !requested.is_empty() {
        let list: Vec<String> = requested.iter().map(|i| i.to_string()).collect();
        return Err(CniError::new(
            code::ADDRESS_UNAVAILABLE,
            format!(
                "requested IPs {}: not in any configured range set",
                list.join(",")
            ),
        ));
    }
    Ok(())
}

/// STATUS: the first range set with no free address left, if any.
pub fn exhausted_set(store: &Store, conf: &IpamConf) -> Option<String> {
    let leases = store.leases();
    for set in &conf.range_sets {
        let mut total: u128 = 0;
        for r in set {
            let n = ip::to_u128(&r.end) - ip::to_u128(&r.start) + 1;
            let skipped = [
                Some(r.gateway),
                Some(r.subnet.network()),
                r.subnet.is_ipv4().then(|| r.subnet.last()),
            ]
            .into_iter()
            .flatten()
            .collect::<HashSet<_>>()
            .into_iter()
            .filter(|ip| r.contains(ip))
            .count() as u128;
            total = total.saturating_add(n.saturating_sub(skipped));
        }
        let used = leases
            .iter()
            .filter(|l| set.iter().any(|r| r.contains(&l.ip) && l.ip != r.gateway))
            .count() as u128;
        if used >= total {
            return Some(set_string(set));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Env};

    fn conf(json: &str) -> IpamConf {
        parse(json.as_bytes(), &Env::default())
            .unwrap()
            .ipam
            .unwrap()
    }

    fn set(subnet: &str, start: &str, end: &str, gw: &str) -> Range {
        let subnet: IpNet = subnet.parse().unwrap();
        Range {
            subnet,
            start: start.parse().unwrap(),
            end: end.parse().unwrap(),
            gateway: gw.parse().unwrap(),
        }
    }

    #[test]
    fn iter_starts_at_range_start_and_skips_gateway() {
        let s = vec![set("10.0.0.0/29", "10.0.0.1", "10.0.0.6", "10.0.0.1")];
        let got: Vec<String> = RangeIter::new(&s, None)
            .map(|(a, _)| a.addr.to_string())
            .collect();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
    }

    #[test]
    fn iter_resumes_after_last_reserved_and_wraps() {
        let s = vec![set("10.0.0.0/29", "10.0.0.1", "10.0.0.6", "10.0.0.1")];
        let got: Vec<String> = RangeIter::new(&s, Some("10.0.0.4".parse().unwrap()))
            .map(|(a, _)| a.addr.to_string())
            .collect();
        assert_eq!(
            got,
            ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
    }

    #[test]
    fn iter_walks_several_ranges_and_skips_network_broadcast() {
        let s = vec![
            set("10.0.0.0/30", "10.0.0.0", "10.0.0.3", "10.0.0.1"),
            set("10.0.1.0/29", "10.0.1.5", "10.0.1.6", "10.0.1.1"),
        ];
        let got: Vec<String> = RangeIter::new(&s, Some("10.0.1.5".parse().unwrap()))
            .map(|(a, _)| a.addr.to_string())
            .collect();
        assert_eq!(got, ["10.0.1.6", "10.0.0.2", "10.0.1.5"]);
    }

    #[test]
    fn allocate_store_format_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let c = conf(&format!(
            r#"{{"cniVersion":"1.0.0","name":"n","ipam":{{"dataDir":"{}","ranges":[[{{"subnet":"10.9.0.0/30"}}],[{{"subnet":"fd00::/126"}}]]}}}}"#,
            dir.path().display()
        ));
        let st = Store::open(c.data_dir.as_str(), "net1").unwrap();
        let a = allocate(&st, &c, "ctr1", "eth0").unwrap();
        assert_eq!(a[0].address.to_string(), "10.9.0.2/30");
        assert_eq!(a[1].address.to_string(), "fd00::2/126");
        let net = dir.path().join("net1");
        assert_eq!(
            fs::read_to_string(net.join("10.9.0.2")).unwrap(),
            "ctr1\r\neth0"
        );
        assert_eq!(
            fs::read_to_string(net.join("last_reserved_ip.0")).unwrap(),
            "10.9.0.2"
        );
        assert_eq!(
            fs::read_to_string(net.join("last_reserved_ip.1")).unwrap(),
            "fd00::2"
        );
        assert!(net.join("lock").exists());
        // Duplicate allocation is refused and leaves the first lease alone.
        let e = allocate(&st, &c, "ctr1", "eth0").unwrap_err();
        assert_eq!(e.code, code::ADDRESS_UNAVAILABLE);
        assert_eq!(st.get_by_id("ctr1", "eth0").len(), 2);
        // The IPv4 /30 has one usable address: exhausted for the next container.
        let e = allocate(&st, &c, "ctr2", "eth0").unwrap_err();
        assert_eq!(e.code, code::NO_ADDRESS);
        assert!(e.msg.contains("no IP addresses available"));
        assert!(exhausted_set(&st, &c).is_some());
        // ctr2 got nothing in the second set either (rolled back).
        assert!(st.get_by_id("ctr2", "eth0").is_empty());
        let mut rel = st.release_by_id("ctr1", "eth0");
        rel.sort();
        assert_eq!(rel.len(), 2);
        assert!(exhausted_set(&st, &c).is_none());
        assert!(!net.join("10.9.0.2").exists());
    }

    #[test]
    fn old_format_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let st = Store::open(dir.path().to_str().unwrap(), "n").unwrap();
        fs::write(st.dir().join("10.0.0.7"), "oldctr").unwrap();
        fs::write(st.dir().join("10.0.0.8"), "keep\r\neth0").unwrap();
        fs::write(st.dir().join("10.0.0.9"), "gone\r\neth0").unwrap();
        assert_eq!(
            st.get_by_id("oldctr", "eth0"),
            vec!["10.0.0.7".parse::<IpAddr>().unwrap()]
        );
        let removed = st.release_unlisted(&[Attachment {
            container_id: "keep".into(),
            ifname: "eth0".into(),
        }]);
        let mut ips: Vec<String> = removed.iter().map(|l| l.ip.to_string()).collect();
        ips.sort();
        assert_eq!(ips, ["10.0.0.7", "10.0.0.9"]);
        assert!(st.dir().join("10.0.0.8").exists());
    }
}
