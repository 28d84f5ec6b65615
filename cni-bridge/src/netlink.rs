//! A small synchronous rtnetlink client: one socket, one request at a time, wait for the
//! ack (or the end of a dump). The socket stays bound to the network namespace it was
//! opened in, whatever namespace the thread is in later.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::ip::IpNet;
use crate::nlmsg::{self, Msg, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use crate::nlmsg::{NLMSG_DONE, NLMSG_ERROR, NLM_F_REPLACE, NLM_F_REQUEST};

pub const IFF_UP: u32 = 0x1;
pub const IFF_PROMISC: u32 = 0x100;
pub const BRIDGE_VLAN_INFO_PVID: u16 = 0x2;
pub const BRIDGE_VLAN_INFO_UNTAGGED: u16 = 0x4;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_PROTINFO: u16 = 12;
const IFLA_LINKINFO: u16 = 18;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_BR_VLAN_FILTERING: u16 = 7;
const IFLA_VLAN_ID: u16 = 1;
/// `IFLA_BRPORT_MODE`: hairpin mode of a bridge port.
const IFLA_BRPORT_MODE: u16 = 4;
const IFLA_BRIDGE_FLAGS: u16 = 0;
const IFLA_BRIDGE_VLAN_INFO: u16 = 2;
const BRIDGE_FLAGS_SELF: u16 = 2;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_F_NODAD: u8 = 0x2;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_BRIDGE: u8 = 7;
const AF_INET6: u8 = 10;

/// A netlink request that failed: what we tried and the kernel's errno.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {err}")]
pub struct NlError {
    pub what: String,
    #[source]
    pub err: io::Error,
}

impl NlError {
    pub fn errno(&self) -> Option<i32> {
        self.err.raw_os_error()
    }
    pub fn is(&self, errno: i32) -> bool {
        self.errno() == Some(errno)
    }
}

pub type NlResult<T> = Result<T, NlError>;

/// What we need to know about a link.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub flags: u32,
    /// `IFLA_INFO_KIND` ("bridge", "veth", ...).
    pub kind: Option<String>,
    pub master: Option<u32>,
    pub mtu: Option<u32>,
    pub peer_index: Option<u32>,
}

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub net: IpNet,
}

/// A route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
}

pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn family(v4: bool) -> u8 {
    if v4 {
        AF_INET
    } else {
        AF_INET6
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn ip_from(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?))),
        _ => None,
    }
}

/// `struct ifinfomsg`.
fn ifinfomsg(family: u8, index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = family;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// `struct ifaddrmsg`.
fn ifaddrmsg(family: u8, prefix: u8, flags: u8, scope: u8, index: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = family;
    b[1] = prefix;
    b[2] = flags;
    b[3] = scope;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b
}

/// `struct rtmsg`.
fn rtmsg(family: u8, dst_len: u8, table: u8, protocol: u8, scope: u8, kind: u8) -> [u8; 12] {
    [
        family, dst_len, 0, 0, table, protocol, scope, kind, 0, 0, 0, 0,
    ]
}

impl Netlink {
    /// Opens a route netlink socket in the calling thread's current network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Lets the kernel filter dumps by the header fields we set (ifindex, family).
        let _ = sock.set_netlink_get_strict_chk(true);
        Ok(Netlink {
            sock,
            seq: 0,
            buf: Vec::with_capacity(32768),
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends one message (built with our sequence number) and collects the payloads of
    /// the answers (type, payload) until the ack or the end of the dump.
    fn request(
        &mut self,
        what: impl Fn() -> String,
        seq: u32,
        msg: Vec<u8>,
    ) -> NlResult<Vec<(u16, Vec<u8>)>> {
        let fail = |err: io::Error| NlError { what: what(), err };
        self.sock.send(&msg, 0).map_err(fail)?;
        let mut answers = Vec::new();
        loop {
            self.buf.clear();
            self.buf.reserve(32768);
            let n = loop {
                match self.sock.recv(&mut self.buf, 0) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(fail(e)),
                }
            };
            for m in nlmsg::messages(&self.buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                match m.kind {
                    NLMSG_ERROR => {
                        let code = nlmsg::error_code(m.payload);
                        if code == 0 {
                            return Ok(answers);
                        }
                        return Err(fail(io::Error::from_raw_os_error(-code)));
                    }
                    NLMSG_DONE => return Ok(answers),
                    kind => answers.push((kind, m.payload.to_vec())),
                }
            }
        }
    }

    fn simple(
        &mut self,
        what: impl Fn() -> String,
        kind: u16,
        flags: u16,
        fixed: &[u8],
        add: impl FnOnce(&mut Msg),
    ) -> NlResult<Vec<(u16, Vec<u8>)>> {
        let seq = self.next_seq();
        let mut m = Msg::new(kind, NLM_F_REQUEST | NLM_F_ACK | flags, seq, fixed);
        add(&mut m);
        self.request(what, seq, m.finish())
    }

    /// A link by name, `Ok(None)` if there is none.
    pub fn link_by_name(&mut self, name: &str) -> NlResult<Option<Link>> {
        match self.simple(
            || format!("get link {name}"),
            RTM_GETLINK,
            0,
            &ifinfomsg(AF_UNSPEC, 0, 0, 0),
            |m| m.attr_str(IFLA_IFNAME, name),
        ) {
            Ok(v) => Ok(v
                .iter()
                .find(|(k, _)| *k == RTM_NEWLINK)
                .and_then(|(_, p)| parse_link(p))),
            Err(e) if e.is(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a bridge, up (`EEXIST` is returned as is, for the caller's race handling).
    pub fn create_bridge(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        mac: [u8; 6],
        vlan_filtering: bool,
    ) -> NlResult<()> {
        self.simple(
            || format!("create bridge {name}"),
            RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(AF_UNSPEC, 0, IFF_UP, IFF_UP),
            |m| {
                m.attr_str(IFLA_IFNAME, name);
                m.attr(IFLA_ADDRESS, &mac);
                if let Some(v) = mtu {
                    m.attr_u32(IFLA_MTU, v);
                }
                m.begin(IFLA_LINKINFO);
                m.attr_str(IFLA_INFO_KIND, "bridge");
                if vlan_filtering {
                    m.begin(IFLA_INFO_DATA);
                    m.attr_u8(IFLA_BR_VLAN_FILTERING, 1);
                    m.end();
                }
                m.end();
            },
        )
        .map(drop)
    }

    /// Sets (or clears) flags on a link.
    pub fn set_flags(&mut self, index: u32, flags: u32, mask: u32) -> NlResult<()> {
        self.simple(
            || format!("set flags on link {index}"),
            RTM_SETLINK,
            0,
            &ifinfomsg(AF_UNSPEC, index, flags, mask),
            |_| {},
        )
        .map(drop)
    }

    /// Creates a veth pair: `host` on `master` here and up, `peer` moved into `peer_netns`.
    /// The peer cannot be set up here (the kernel answers ENOTCONN when it lands in another
    /// namespace): the caller brings it up from inside the pod.
    #[allow(clippy::too_many_arguments)]
    pub fn create_veth(
        &mut self,
        host: &str,
        host_mac: [u8; 6],
        master: u32,
        peer: &str,
        peer_mac: [u8; 6],
        peer_netns: RawFd,
        mtu: Option<u32>,
    ) -> NlResult<()> {
        self.simple(
            || format!("create veth {host} (peer {peer})"),
            RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(AF_UNSPEC, 0, IFF_UP, IFF_UP),
            |m| {
                m.attr_str(IFLA_IFNAME, host);
                m.attr(IFLA_ADDRESS, &host_mac);
                m.attr_u32(IFLA_MASTER, master);
                if let Some(v) = mtu {
                    m.attr_u32(IFLA_MTU, v);
                }
                m.begin(IFLA_LINKINFO);
                m.attr_str(IFLA_INFO_KIND, "veth");
                m.begin(IFLA_INFO_DATA);
                m.begin(VETH_INFO_PEER);
                m.raw(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
                m.attr_str(IFLA_IFNAME, peer);
                m.attr(IFLA_ADDRESS, &peer_mac);
                m.attr_u32(IFLA_NET_NS_FD, peer_netns as u32);
                if let Some(v) = mtu {
                    m.attr_u32(IFLA_MTU, v);
                }
                m.end();
                m.end();
                m.end();
            },
        )
        .map(drop)
    }

    /// Deletes a link by name; `Ok(false)` if it did not exist.
    pub fn delete_link(&mut self, name: &str) -> NlResult<bool> {
        match self.simple(
            || format!("delete link {name}"),
            RTM_DELLINK,
            0,
            &ifinfomsg(AF_UNSPEC, 0, 0, 0),
            |m| m.attr_str(IFLA_IFNAME, name),
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.is(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Turns hairpin mode on for a bridge port.
    pub fn set_hairpin(&mut self, index: u32) -> NlResult<()> {
        self.simple(
            || format!("set hairpin mode on link {index}"),
            RTM_SETLINK,
            0,
            &ifinfomsg(AF_BRIDGE, index, 0, 0),
            |m| {
                m.begin(IFLA_PROTINFO);
                m.attr_u8(IFLA_BRPORT_MODE, 1);
                m.end();
            },
        )
        .map(drop)
    }

    /// Adds (`add`) or removes a VLAN on a bridge port, or on the bridge itself (`self_`).
    pub fn bridge_vlan(
        &mut self,
        index: u32,
        vid: u16,
        flags: u16,
        self_: bool,
        add: bool,
    ) -> NlResult<()> {
        let kind = if add { RTM_SETLINK } else { RTM_DELLINK };
        self.simple(
            || format!("bridge vlan {vid} on link {index}"),
            kind,
            0,
            &ifinfomsg(AF_BRIDGE, index, 0, 0),
            |m| {
                m.begin(IFLA_AF_SPEC);
                if self_ {
                    m.attr_u16(IFLA_BRIDGE_FLAGS, BRIDGE_FLAGS_SELF);
                }
                let mut info = [0u8; 4];
                info[0..2].copy_from_slice(&flags.to_ne_bytes());
                info[2..4].copy_from_slice(&vid.to_ne_bytes());
                m.attr(IFLA_BRIDGE_VLAN_INFO, &info);
                m.end();
            },
        )
        .map(drop)
    }

    /// Creates a VLAN sub-interface `name` of `parent`, up.
    pub fn create_vlan(&mut self, name: &str, parent: u32, vid: u16) -> NlResult<()> {
        self.simple(
            || format!("create vlan link {name}"),
            RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(AF_UNSPEC, 0, IFF_UP, IFF_UP),
            |m| {
                m.attr_str(IFLA_IFNAME, name);
                m.attr_u32(IFLA_LINK, parent);
                m.begin(IFLA_LINKINFO);
                m.attr_str(IFLA_INFO_KIND, "vlan");
                m.begin(IFLA_INFO_DATA);
                m.attr_u16(IFLA_VLAN_ID, vid);
                m.end();
                m.end();
            },
        )
        .map(drop)
    }

    /// Addresses of one link (both families).
    pub fn addrs(&mut self, index: u32) -> NlResult<Vec<Addr>> {
        let v = self.simple(
            || format!("list addresses of link {index}"),
            RTM_GETADDR,
            NLM_F_DUMP,
            &ifaddrmsg(AF_UNSPEC, 0, 0, 0, index),
            |_| {},
        )?;
        let mut out = Vec::new();
        for (kind, p) in v {
            if kind != RTM_NEWADDR || p.len() < 8 {
                continue;
            }
            let prefix = p[1];
            let idx = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]);
            if idx != index {
                continue;
            }
            let mut local = None;
            let mut address = None;
            for (t, val) in nlmsg::attrs(&p[8..]) {
                match t {
                    IFA_LOCAL => local = ip_from(val),
                    IFA_ADDRESS => address = ip_from(val),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                out.push(Addr {
                    index,
                    net: IpNet { addr: ip, prefix },
                });
            }
        }
        Ok(out)
    }

    /// Adds an address (IPv6 without duplicate address detection). `exclusive` makes an
    /// existing identical address an `EEXIST` error.
    pub fn add_addr(&mut self, index: u32, net: &IpNet, exclusive: bool) -> NlResult<()> {
        let v4 = net.is_ipv4();
        let flags = if v4 { 0 } else { IFA_F_NODAD };
        let nl_flags = NLM_F_CREATE | if exclusive { NLM_F_EXCL } else { NLM_F_REPLACE };
        self.simple(
            || format!("add address {net} to link {index}"),
            RTM_NEWADDR,
            nl_flags,
            &ifaddrmsg(family(v4), net.prefix, flags, RT_SCOPE_UNIVERSE, index),
            |m| {
                let b = ip_bytes(&net.addr);
                m.attr(IFA_LOCAL, &b);
                m.attr(IFA_ADDRESS, &b);
                if v4 && net.prefix < 31 {
                    m.attr(IFA_BROADCAST, &ip_bytes(&net.last()));
                }
            },
        )
        .map(drop)
    }

    pub fn del_addr(&mut self, index: u32, net: &IpNet) -> NlResult<()> {
        self.simple(
            || format!("delete address {net} from link {index}"),
            RTM_DELADDR,
            0,
            &ifaddrmsg(family(net.is_ipv4()), net.prefix, 0, 0, index),
            |m| {
                let b = ip_bytes(&net.addr);
                m.attr(IFA_LOCAL, &b);
                m.attr(IFA_ADDRESS, &b);
            },
        )
        .map(drop)
    }

    /// Adds a route in the main table (replacing an identical one).
    pub fn add_route(&mut self, dst: &IpNet, gw: Option<IpAddr>, oif: u32) -> NlResult<()> {
        let scope = if gw.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        };
        self.simple(
            || match gw {
                Some(g) => format!("add route {dst} via {g}"),
                None => format!("add route {dst}"),
            },
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_REPLACE,
            &rtmsg(
                family(dst.is_ipv4()),
                dst.prefix,
                RT_TABLE_MAIN,
                RTPROT_BOOT,
                scope,
                RTN_UNICAST,
            ),
            |m| {
                if dst.prefix > 0 {
                    m.attr(RTA_DST, &ip_bytes(&dst.addr));
                }
                if let Some(g) = gw {
                    m.attr(RTA_GATEWAY, &ip_bytes(&g));
                }
                m.attr_u32(RTA_OIF, oif);
            },
        )
        .map(drop)
    }

    /// Routes of the main table for one family.
    pub fn routes(&mut self, v4: bool) -> NlResult<Vec<Route>> {
        let v = self.simple(
            || "list routes".to_string(),
            RTM_GETROUTE,
            NLM_F_DUMP,
            &rtmsg(family(v4), 0, RT_TABLE_MAIN, 0, 0, 0),
            |_| {},
        )?;
        let mut out = Vec::new();
        for (kind, p) in v {
            if kind != RTM_NEWROUTE || p.len() < 12 {
                continue;
            }
            let mut table = p[4] as u32;
            let mut dst = None;
            let mut gw = None;
            let mut oif = None;
            for (t, val) in nlmsg::attrs(&p[12..]) {
                match t {
                    RTA_DST => dst = ip_from(val),
                    RTA_GATEWAY => gw = ip_from(val),
                    RTA_OIF => oif = nlmsg::u32_of(val),
                    RTA_TABLE => table = nlmsg::u32_of(val).unwrap_or(table),
                    _ => {}
                }
            }
            if table != RT_TABLE_MAIN as u32 {
                continue;
            }
            out.push(Route {
                dst: IpNet {
                    addr: dst.unwrap_or(IpNet::default_route(v4).addr),
                    prefix: p[1],
                },
                gw,
                oif,
            });
        }
        Ok(out)
    }
}

fn parse_link(p: &[u8]) -> Option<Link> {
    if p.len() < 16 {
        return None;
    }
    let mut link = Link {
        index: u32::from_ne_bytes(p[4..8].try_into().ok()?),
        name: String::new(),
        mac: Vec::new(),
        flags: u32::from_ne_bytes(p[8..12].try_into().ok()?),
        kind: None,
        master: None,
        mtu: None,
        peer_index: None,
    };
    for (t, v) in nlmsg::attrs(&p[16..]) {
        match t {
            IFLA_IFNAME => link.name = nlmsg::str_of(v),
            IFLA_ADDRESS => link.mac = v.to_vec(),
            IFLA_MASTER => link.master = nlmsg::u32_of(v),
            IFLA_MTU => link.mtu = nlmsg::u32_of(v),
            IFLA_LINK => link.peer_index = nlmsg::u32_of(v),
            IFLA_LINKINFO => {
                for (it, iv) in nlmsg::attrs(v) {
                    if it == IFLA_INFO_KIND {
                        link.kind = Some(nlmsg::str_of(iv));
                    }
                }
            }
            _ => {}
        }
    }
    Some(link)
}
