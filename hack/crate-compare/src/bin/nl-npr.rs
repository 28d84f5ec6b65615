//! netlink, netlink-packet-route as netavark uses it: typed messages from
//! netlink-packet-route serialized into a buffer and sent on a synchronous netlink-sys
//! socket, one request at a time, reading until the ack or the end of a dump (no async
//! runtime). The same socket crate and the same requests as nl-ours; only the message
//! encoding and decoding differ. Arguments: the pod namespace's path, the bridge; or `get
//! <bridge>` (see nl-ours).

use std::error::Error;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nodus_crate_compare as cc;

struct Nl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Nl {
    fn open() -> std::io::Result<Nl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Nl {
            sock,
            seq: 0,
            buf: vec![0; 32768],
        })
    }

    /// Sends one request and returns the messages answered before the ack (or the end of
    /// a dump); a kernel error comes back as its errno.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, std::io::Error> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.sock.send(&out, 0)?;
        let mut answers = Vec::new();
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                let len = m.header.length as usize;
                if m.header.sequence_number == self.seq {
                    match m.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(answers),
                                Some(_) => Err(e.to_io()),
                            }
                        }
                        NetlinkPayload::Done(_) => return Ok(answers),
                        NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }

    fn link_index(&mut self, name: &str) -> Result<Option<u32>, std::io::Error> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(v) => Ok(v.into_iter().find_map(|a| match a {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn setns(f: &File) -> std::io::Result<()> {
    // SAFETY: a namespace fd we own; changes only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn run(pod_path: &str, bridge: &str, keep: bool) -> Result<(), Box<dyn Error>> {
    let pod_ns = File::open(pod_path)?;
    let home = File::open("/proc/thread-self/ns/net")?;
    let mut host = Nl::open()?;
    setns(&pod_ns)?;
    let opened = Nl::open();
    if let Err(e) = setns(&home) {
        eprintln!("nl-npr: cannot return to the node namespace: {e}");
        std::process::abort();
    }
    let mut pod = opened?;

    if pod.link_index(cc::POD_IF)?.is_some() {
        return Err(format!("{} already exists in the pod", cc::POD_IF).into());
    }
    let br = host
        .link_index(bridge)?
        .ok_or_else(|| format!("no bridge {bridge}"))?;

    let mut peer = LinkMessage::default();
    peer.attributes = vec![
        LinkAttribute::IfName(cc::POD_IF.to_string()),
        LinkAttribute::Address(cc::POD_MAC.to_vec()),
        LinkAttribute::NetNsFd(pod_ns.as_raw_fd()),
    ];
    let mut veth = LinkMessage::default();
    veth.header.flags = LinkFlags::Up;
    veth.header.change_mask = LinkFlags::Up;
    veth.attributes = vec![
        LinkAttribute::IfName(cc::HOST_IF.to_string()),
        LinkAttribute::Address(cc::HOST_MAC.to_vec()),
        LinkAttribute::Controller(br),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]),
    ];
    host.request(
        RouteNetlinkMessage::NewLink(veth),
        NLM_F_CREATE | NLM_F_EXCL,
    )?;

    let index = pod
        .link_index(cc::POD_IF)?
        .ok_or("pod interface missing after create")?;
    let mut up = LinkMessage::default();
    up.header.index = index;
    up.header.flags = LinkFlags::Up;
    up.header.change_mask = LinkFlags::Up;
    pod.request(RouteNetlinkMessage::SetLink(up), 0)?;

    let mut addr = AddressMessage::default();
    addr.header.family = AddressFamily::Inet;
    addr.header.prefix_len = cc::PREFIX;
    addr.header.index = index;
    let ip = IpAddr::V4(cc::POD_IP);
    let broadcast = Ipv4Addr::from(u32::from(cc::POD_IP) | (u32::MAX >> cc::PREFIX));
    addr.attributes = vec![
        AddressAttribute::Local(ip),
        AddressAttribute::Address(ip),
        AddressAttribute::Broadcast(broadcast),
    ];
    pod.request(
        RouteNetlinkMessage::NewAddress(addr),
        NLM_F_CREATE | NLM_F_REPLACE,
    )?;

    let mut route = RouteMessage::default();
    route.header.address_family = AddressFamily::Inet;
    route.header.table = RouteHeader::RT_TABLE_MAIN;
    route.header.protocol = RouteProtocol::Boot;
    route.header.scope = RouteScope::Universe;
    route.header.kind = RouteType::Unicast;
    route.attributes = vec![
        RouteAttribute::Gateway(RouteAddress::Inet(cc::GATEWAY)),
        RouteAttribute::Oif(index),
    ];
    pod.request(
        RouteNetlinkMessage::NewRoute(route),
        NLM_F_CREATE | NLM_F_REPLACE,
    )?;

    if !keep {
        let mut del = LinkMessage::default();
        del.attributes
            .push(LinkAttribute::IfName(cc::POD_IF.to_string()));
        pod.request(RouteNetlinkMessage::DelLink(del), 0)?;
    }
    Ok(())
}

fn run_args(a: &[String], keep: bool) -> Result<(), Box<dyn Error>> {
    if a[0] == "get" {
        Nl::open()?
            .link_index(&a[1])?
            .ok_or_else(|| format!("no bridge {}", a[1]))?;
        Ok(())
    } else {
        run(&a[0], &a[1], keep)
    }
}

fn main() {
    let (a, keep) = cc::args(2, "nl-npr <pod-netns-path>|get <bridge>");
    match cc::repeat_count() {
        Some(n) if !keep => cc::repeat("nl-npr", n, || run_args(&a, false)),
        _ => cc::exit_on_error("nl-npr", run_args(&a, keep)),
    }
}
