//! A small synchronous rtnetlink client: one socket, one request at a time, wait for the
//! ack (or the end of a dump). The socket stays bound to the network namespace it was
//! opened in, whatever namespace the thread is in later.

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    AfSpecBridge, BridgeFlag, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge, InfoData, InfoKind,
    InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkProtoInfoBridge,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::ip::IpNet;

/// `IFLA_BRPORT_MODE`: hairpin mode of a bridge port.
const IFLA_BRPORT_MODE: u16 = 4;

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
    pub flags: LinkFlags,
    pub kind: Option<InfoKind>,
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

fn fam(v4: bool) -> AddressFamily {
    if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
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
            buf: Vec::with_capacity(65536),
        })
    }

    /// Sends one request and collects the answers until the ack or the end of the dump.
    fn request(
        &mut self,
        what: impl Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> NlResult<Vec<RouteNetlinkMessage>> {
        let fail = |err: io::Error| NlError { what: what(), err };
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock.send(&out, 0).map_err(fail)?;
        let mut answers = Vec::new();
        loop {
            self.buf.clear();
            self.buf.reserve(65536);
            let n = loop {
                match self.sock.recv(&mut self.buf, 0) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(fail(e)),
                }
            };
            let mut off = 0;
            while off < n {
                let chunk = &self.buf[off..n];
                let len = match NetlinkBuffer::new_checked(chunk) {
                    Ok(b) => b.length() as usize,
                    Err(_) => break,
                };
                if len == 0 {
                    break;
                }
                let this = &chunk[..len.min(chunk.len())];
                off += (len + 3) & !3;
                let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(this) else {
                    // A message this crate cannot parse: skip it, keep the rest of the dump.
                    continue;
                };
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(answers),
                        Some(code) => {
                            return Err(fail(io::Error::from_raw_os_error(-code.get())));
                        }
                    },
                    NetlinkPayload::Done(_) => return Ok(answers),
                    // GET answers come before the ack; dump parts before NLMSG_DONE.
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    _ => {}
                }
            }
        }
    }

    /// A link by name, `Ok(None)` if there is none.
    pub fn link_by_name(&mut self, name: &str) -> NlResult<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            || format!("get link {name}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        ) {
            Ok(v) => Ok(v.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(l)),
                _ => None,
            })),
            Err(e) if e.is(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a bridge (`EEXIST` is returned as is, for the caller's race handling).
    pub fn create_bridge(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        mac: [u8; 6],
        vlan_filtering: bool,
    ) -> NlResult<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        if let Some(m) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        if vlan_filtering {
            info.push(LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::VlanFiltering(true),
            ])));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(info));
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            || format!("create bridge {name}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Sets (or clears) flags on a link.
    pub fn set_flags(&mut self, index: u32, flags: LinkFlags, mask: LinkFlags) -> NlResult<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = flags;
        msg.header.change_mask = mask;
        self.request(
            || format!("set flags on link {index}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
        .map(drop)
    }

    /// Creates a veth pair: `host` on `master` here and up, `peer` moved into `peer_netns`.
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
        let mut pm = LinkMessage::default();
        pm.attributes.push(LinkAttribute::IfName(peer.to_string()));
        pm.attributes
            .push(LinkAttribute::Address(peer_mac.to_vec()));
        pm.attributes.push(LinkAttribute::NetNsFd(peer_netns));
        if let Some(m) = mtu {
            pm.attributes.push(LinkAttribute::Mtu(m));
        }
        // The peer cannot be set up here (the kernel answers ENOTCONN when it lands in
        // another namespace): the caller brings it up from inside the pod.
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(host.to_string()));
        msg.attributes
            .push(LinkAttribute::Address(host_mac.to_vec()));
        msg.attributes.push(LinkAttribute::Controller(master));
        if let Some(m) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(m));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(pm))),
        ]));
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            || format!("create veth {host} (peer {peer})"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Deletes a link by name; `Ok(false)` if it did not exist.
    pub fn delete_link(&mut self, name: &str) -> NlResult<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            || format!("delete link {name}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.is(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Turns hairpin mode on for a bridge port.
    pub fn set_hairpin(&mut self, index: u32) -> NlResult<()> {
        let mut msg = LinkMessage::default();
        msg.header.interface_family = AddressFamily::Bridge;
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
            LinkProtoInfoBridge::Other(netlink_packet_core::DefaultNla::new(
                IFLA_BRPORT_MODE,
                vec![1],
            )),
        ]));
        self.request(
            || format!("set hairpin mode on link {index}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
        .map(drop)
    }

    /// Adds (`add`) or removes a VLAN on a bridge port, or on the bridge itself (`self_`).
    pub fn bridge_vlan(
        &mut self,
        index: u32,
        vid: u16,
        flags: BridgeVlanInfoFlags,
        self_: bool,
        add: bool,
    ) -> NlResult<()> {
        let mut msg = LinkMessage::default();
        msg.header.interface_family = AddressFamily::Bridge;
        msg.header.index = index;
        let mut spec = Vec::new();
        if self_ {
            spec.push(AfSpecBridge::Flags(BridgeFlag::LowerDev));
        }
        spec.push(AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid }));
        msg.attributes.push(LinkAttribute::AfSpecBridge(spec));
        let m = if add {
            RouteNetlinkMessage::SetLink(msg)
        } else {
            RouteNetlinkMessage::DelLink(msg)
        };
        self.request(|| format!("bridge vlan {vid} on link {index}"), m, 0)
            .map(drop)
    }

    /// Creates a VLAN sub-interface `name` of `parent`, up.
    pub fn create_vlan(&mut self, name: &str, parent: u32, vid: u16) -> NlResult<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Link(parent));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vlan),
            LinkInfo::Data(InfoData::Vlan(vec![
                netlink_packet_route::link::InfoVlan::Id(vid),
            ])),
        ]));
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            || format!("create vlan link {name}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Addresses of one link (both families).
    pub fn addrs(&mut self, index: u32) -> NlResult<Vec<Addr>> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        let v = self.request(
            || format!("list addresses of link {index}"),
            RouteNetlinkMessage::GetAddress(msg),
            NLM_F_DUMP,
        )?;
        Ok(v.into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let ip = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })?;
                    Some(Addr {
                        index,
                        net: IpNet {
                            addr: ip,
                            prefix: a.header.prefix_len,
                        },
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Adds an address (IPv6 without duplicate address detection). `exclusive` makes an
    /// existing identical address an `EEXIST` error.
    pub fn add_addr(&mut self, index: u32, net: &IpNet, exclusive: bool) -> NlResult<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = fam(net.is_ipv4());
        msg.header.prefix_len = net.prefix;
        msg.header.index = index;
        msg.header.scope = AddressScope::Universe;
        msg.attributes.push(AddressAttribute::Local(net.addr));
        msg.attributes.push(AddressAttribute::Address(net.addr));
        if let IpAddr::V4(v4) = net.addr {
            let b = net.last();
            if net.prefix < 31 {
                if let IpAddr::V4(b) = b {
                    msg.attributes.push(AddressAttribute::Broadcast(b));
                }
            }
            let _ = v4;
        } else {
            msg.header.flags = AddressHeaderFlags::Nodad;
        }
        let flags = NLM_F_CREATE | if exclusive { NLM_F_EXCL } else { NLM_F_REPLACE };
        self.request(
            || format!("add address {net} to link {index}"),
            RouteNetlinkMessage::NewAddress(msg),
            flags,
        )
        .map(drop)
    }

    pub fn del_addr(&mut self, index: u32, net: &IpNet) -> NlResult<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = fam(net.is_ipv4());
        msg.header.prefix_len = net.prefix;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(net.addr));
        msg.attributes.push(AddressAttribute::Address(net.addr));
        self.request(
            || format!("delete address {net} from link {index}"),
            RouteNetlinkMessage::DelAddress(msg),
            0,
        )
        .map(drop)
    }

    /// Adds a route in the main table (replacing an identical one).
    pub fn add_route(&mut self, dst: &IpNet, gw: Option<IpAddr>, oif: u32) -> NlResult<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = fam(dst.is_ipv4());
        msg.header.destination_prefix_length = dst.prefix;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if dst.prefix > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst.addr)));
        }
        if let Some(g) = gw {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(g)));
        }
        msg.attributes.push(RouteAttribute::Oif(oif));
        self.request(
            || match gw {
                Some(g) => format!("add route {dst} via {g}"),
                None => format!("add route {dst}"),
            },
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Routes of the main table for one family.
    pub fn routes(&mut self, v4: bool) -> NlResult<Vec<Route>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = fam(v4);
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        let v = self.request(
            || "list routes".to_string(),
            RouteNetlinkMessage::GetRoute(msg),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in v {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let mut dst = None;
            let mut gw = None;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = route_ip(d),
                    RouteAttribute::Gateway(g) => gw = route_ip(g),
                    RouteAttribute::Oif(o) => oif = Some(*o),
                    _ => {}
                }
            }
            let dst = dst.unwrap_or(IpNet::default_route(v4).addr);
            out.push(Route {
                dst: IpNet {
                    addr: dst,
                    prefix: r.header.destination_prefix_length,
                },
                gw,
                oif,
            });
        }
        Ok(out)
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn to_link(l: LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: Vec::new(),
        flags: l.header.flags,
        kind: None,
        master: None,
        mtu: None,
        peer_index: None,
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(m) => link.mac = m,
            LinkAttribute::Controller(m) => link.master = Some(m),
            LinkAttribute::Mtu(m) => link.mtu = Some(m),
            LinkAttribute::Link(p) => link.peer_index = Some(p),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k);
                    }
                }
            }
            _ => {}
        }
    }
    link
}
