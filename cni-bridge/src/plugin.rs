//! The CNI commands: ADD, DEL, CHECK, GC, STATUS, VERSION.

use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;

use serde_json::{json, Value};

use crate::config::{self, Command, Env, NetConf, SUPPORTED_VERSIONS};
use crate::error::{code, CniError, Result};
use crate::ip::{self, IpNet};
use crate::ipam::{self, Allocation, Store};
use crate::netlink::{self, Link, Netlink, NlError, IFF_PROMISC, IFF_UP};
use crate::netns::NetNs;
use crate::nft::{self, Batch};
use crate::types::{CniResult, Interface, IpConfig, RouteOut};

/// Runs one command; `Ok(Some(json))` is printed on stdout.
pub fn run(cmd: Command, env: &Env, stdin: &[u8]) -> Result<Option<String>> {
    if cmd == Command::Version {
        return Ok(Some(
            json!({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS}).to_string(),
        ));
    }
    let conf = config::parse(stdin, env)?;
    match cmd {
        Command::Add => cmd_add(env, &conf).map(|r| Some(r.to_string())),
        Command::Del => cmd_del(env, &conf).map(|_| None),
        Command::Check => cmd_check(env, &conf).map(|_| None),
        Command::Gc => cmd_gc(&conf).map(|_| None),
        Command::Status => cmd_status(&conf).map(|_| None),
        Command::Version => unreachable!("handled above"),
    }
}

/// The host end of the veth pair: stable per attachment, so DEL finds it without the netns.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = ip::fnv1a64(&[container_id, ifname]);
    format!("veth{:011x}", h & 0xfff_ffff_ffff)
}

fn nl_err(e: NlError) -> CniError {
    CniError::new(code::NETLINK, e.to_string())
}

fn open_netns(path: &str) -> Result<NetNs> {
    NetNs::open(path).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("CNI_NETNS: cannot open network namespace {path:?}: {e}"),
        )
    })
}

/// Host and pod netlink sockets.
struct Sockets {
    host: Netlink,
    pod: Netlink,
    pod_ns: NetNs,
}

fn open_sockets(netns: &str) -> Result<Sockets> {
    let pod_ns = open_netns(netns)?;
    let home = NetNs::current().map_err(|e| CniError::io("open own network namespace", e))?;
    let host = Netlink::open().map_err(|e| CniError::io("open netlink socket", e))?;
    let pod = pod_ns
        .run(&home, Netlink::open)
        .map_err(|e| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("CNI_NETNS: cannot enter {netns:?}: {e}"),
            )
        })?
        .map_err(|e| CniError::io("open netlink socket in the container", e))?;
    Ok(Sockets { host, pod, pod_ns })
}

fn cmd_add(env: &Env, conf: &NetConf) -> Result<Value> {
    let mut s = open_sockets(&env.netns)?;
    if s.pod.link_by_name(&env.ifname).map_err(nl_err)?.is_some() {
        return Err(CniError::new(
            code::IFNAME_TAKEN,
            format!(
                "CNI_IFNAME: interface {:?} already exists in {}",
                env.ifname, env.netns
            ),
        ));
    }
    let prev = match &conf.prev_result {
        Some(p) => Some(CniResult::from_json(p)?),
        None => None,
    };
    let allocs = match &conf.ipam {
        Some(ipam) => {
            let store = Store::open(&ipam.data_dir, &conf.name)?;
            ipam::allocate(&store, ipam, &env.container_id, &env.ifname)?
        }
        None => Vec::new(),
    };
    let veth = host_veth_name(&env.container_id, &env.ifname);
    match add_links(env, conf, &mut s, &allocs, &veth, prev) {
        Ok(r) => Ok(r.to_json(&conf.cni_version)),
        Err(e) => {
            // Undo what this ADD made; the bridge stays (it is shared). nft comes last, so
            // at most the masquerade elements went in before a failing MAC check batch;
            // the leases are still ours, so the elements keyed by them are too.
            let _ = s.host.delete_link(&veth);
            if conf.ip_masq && !allocs.is_empty() {
                let ips: Vec<IpAddr> = allocs.iter().map(|a| a.address.addr).collect();
                drop(nft::masq_del_fast(&conf.name, &conf_subnets(conf), &ips));
                let _ = nft::masq_release(&conf.name, &conf_subnets(conf));
            }
            if let Some(ipam) = &conf.ipam {
                if let Ok(store) = Store::open(&ipam.data_dir, &conf.name) {
                    store.release_by_id(&env.container_id, &env.ifname);
                }
            }
            Err(e)
        }
    }
}

fn ensure_bridge(nl: &mut Netlink, conf: &NetConf) -> Result<Link> {
    let link = match nl.link_by_name(&conf.bridge).map_err(nl_err)? {
        Some(l) => l,
        None => {
            match nl.create_bridge(
                &conf.bridge,
                conf.mtu,
                ip::random_mac(),
                conf.vlan.is_some(),
            ) {
                Ok(()) => {}
                Err(e) if e.is(libc::EEXIST) => {} // created concurrently by another ADD
                Err(e) if e.is(libc::EOPNOTSUPP) && conf.vlan.is_some() => {
                    return Err(CniError::config(format!(
                        "vlan: this kernel's bridge has no VLAN filtering ({e})"
                    )))
                }
                Err(e) => return Err(nl_err(e)),
            }
            nl.link_by_name(&conf.bridge)
                .map_err(nl_err)?
                .ok_or_else(|| {
                    CniError::new(
                        code::NETLINK,
                        format!("bridge: {} vanished after creation", conf.bridge),
                    )
                })?
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(CniError::new(
            code::BRIDGE_CONFLICT,
            format!("bridge: {:?} exists and is not a bridge", conf.bridge),
        ));
    }
    let mut want = IFF_UP;
    if conf.promisc_mode {
        want |= IFF_PROMISC;
    }
    if link.flags & want != want {
        nl.set_flags(link.index, want, want).map_err(nl_err)?;
    }
    Ok(link)
}

/// Puts `gw` on the bridge once: concurrent ADDs racing here all succeed (`EEXIST` is fine).
fn ensure_gateway(nl: &mut Netlink, conf: &NetConf, index: u32, gw: &IpNet) -> Result<()> {
    let addrs = nl.addrs(index).map_err(nl_err)?;
    if addrs.iter().any(|a| a.net == *gw) {
        return Ok(());
    }
    for a in addrs
        .iter()
        .filter(|a| a.net.is_ipv4() == gw.is_ipv4() && a.net.trunc() == gw.trunc())
    {
        if conf.force_address {
            match nl.del_addr(index, &a.net) {
                Ok(()) => {}
                Err(e) if e.is(libc::EADDRNOTAVAIL) => {}
                Err(e) => return Err(nl_err(e)),
            }
        } else {
            return Err(CniError::new(
                code::BRIDGE_CONFLICT,
                format!(
                    "bridge: {} already has address {} in the subnet of gateway {} (set forceAddress to replace it)",
                    conf.bridge, a.net, gw.addr
                ),
            ));
        }
    }
    match nl.add_addr(index, gw, true) {
        Ok(()) => Ok(()),
        Err(e) if e.is(libc::EEXIST) => Ok(()),
        Err(e) => Err(nl_err(e)),
    }
}

fn enable_forwarding(v4: bool, v6: bool) -> Result<()> {
    let mut paths = Vec::new();
    if v4 {
        paths.push("/proc/sys/net/ipv4/ip_forward");
    }
    if v6 {
        paths.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    for p in paths {
        if fs::read_to_string(p)
            .map(|s| s.trim() == "1")
            .unwrap_or(false)
        {
            continue;
        }
        fs::write(p, "1").map_err(|e| CniError::io(format!("write {p}"), e))?;
    }
    Ok(())
}

fn add_links(
    env: &Env,
    conf: &NetConf,
    s: &mut Sockets,
    allocs: &[Allocation],
    veth: &str,
    prev: Option<CniResult>,
) -> Result<CniResult> {
    let bridge = ensure_bridge(&mut s.host, conf)?;
    // With a VLAN the gateway lives on a VLAN interface of the bridge.
    let mut gw_index = bridge.index;
    if let Some(vid) = conf.vlan {
        if conf.is_gateway {
            let _ = s.host.bridge_vlan(bridge.index, vid, 0, true, true);
            let name = format!("{}.{}", conf.bridge, vid);
            let name: String = name.chars().take(15).collect();
            let l = match s.host.link_by_name(&name).map_err(nl_err)? {
                Some(l) => l,
                None => {
                    match s.host.create_vlan(&name, bridge.index, vid) {
                        Ok(()) => {}
                        Err(e) if e.is(libc::EEXIST) => {}
                        Err(e) => return Err(nl_err(e)),
                    }
                    s.host.link_by_name(&name).map_err(nl_err)?.ok_or_else(|| {
                        CniError::new(code::NETLINK, format!("vlan: {name} vanished"))
                    })?
                }
            };
            gw_index = l.index;
        }
    }
    if conf.is_gateway {
        for a in allocs {
            let gw = IpNet {
                addr: a.gateway,
                prefix: a.address.prefix,
            };
            ensure_gateway(&mut s.host, conf, gw_index, &gw)?;
        }
        enable_forwarding(
            allocs.iter().any(|a| a.address.is_ipv4()),
            allocs.iter().any(|a| !a.address.is_ipv4()),
        )?;
    }

    let pod_mac = conf.mac.unwrap_or_else(ip::random_mac);
    let host_mac = ip::random_mac();
    match s.host.create_veth(
        veth,
        host_mac,
        bridge.index,
        &env.ifname,
        pod_mac,
        s.pod_ns.fd(),
        conf.mtu,
    ) {
        Ok(()) => {}
        Err(e) if e.is(libc::EEXIST) => {
            return Err(CniError::new(
                code::IFNAME_TAKEN,
                format!(
                    "CNI_IFNAME: host interface {veth} for {}/{} already exists",
                    env.container_id, env.ifname
                ),
            ))
        }
        Err(e) => return Err(nl_err(e)),
    }
    if conf.hairpin_mode || conf.vlan.is_some() {
        let hl = s
            .host
            .link_by_name(veth)
            .map_err(nl_err)?
            .ok_or_else(|| CniError::new(code::NETLINK, format!("{veth} vanished")))?;
        if conf.hairpin_mode {
            s.host.set_hairpin(hl.index).map_err(nl_err)?;
        }
        if let Some(vid) = conf.vlan {
            s.host
                .bridge_vlan(
                    hl.index,
                    vid,
                    netlink::BRIDGE_VLAN_INFO_PVID | netlink::BRIDGE_VLAN_INFO_UNTAGGED,
                    false,
                    true,
                )
                .map_err(nl_err)?;
            let _ = s.host.bridge_vlan(hl.index, 1, 0, false, false);
        }
    }

    // Inside the pod: addresses, then routes.
    let pl = s
        .pod
        .link_by_name(&env.ifname)
        .map_err(nl_err)?
        .ok_or_else(|| {
            CniError::new(
                code::NETLINK,
                format!(
                    "CNI_IFNAME: {} not found in the container after creation",
                    env.ifname
                ),
            )
        })?;
    s.pod.set_flags(pl.index, IFF_UP, IFF_UP).map_err(nl_err)?;
    for a in allocs {
        s.pod
            .add_addr(pl.index, &a.address, false)
            .map_err(nl_err)?;
    }
    let routes = pod_routes(conf, allocs);
    for r in &routes {
        s.pod.add_route(&r.dst, r.gw, pl.index).map_err(nl_err)?;
    }

    let tag = nft::tag(&conf.name, &env.container_id, &env.ifname);
    let mut b = Batch::default();
    if conf.ip_masq && !allocs.is_empty() {
        let subnets = conf_subnets(conf);
        let ips: Vec<IpAddr> = allocs.iter().map(|a| a.address.addr).collect();
        nft::masq_add(&conf.name, &subnets, &ips, &tag)?;
    }
    if conf.macspoofchk {
        b.spoof_add(veth, &ip::format_mac(&pod_mac), &tag);
    }
    b.run()?;

    let mut result = prev.unwrap_or_default();
    let base = result.interfaces.len();
    result.interfaces.push(Interface {
        name: conf.bridge.clone(),
        mac: ip::format_mac(&bridge.mac),
        mtu: bridge.mtu,
        sandbox: None,
    });
    result.interfaces.push(Interface {
        name: veth.to_string(),
        mac: ip::format_mac(&host_mac),
        mtu: conf.mtu,
        sandbox: None,
    });
    result.interfaces.push(Interface {
        name: env.ifname.clone(),
        mac: ip::format_mac(&pod_mac),
        mtu: conf.mtu,
        sandbox: Some(env.netns.clone()),
    });
    for a in allocs {
        result.ips.push(IpConfig {
            address: a.address,
            gateway: conf.is_gateway.then_some(a.gateway),
            interface: Some(base + 2),
        });
    }
    result.routes.extend(routes);
    if let Some(d) = &conf.dns {
        if d.as_object().is_some_and(|o| !o.is_empty()) {
            result.dns = Some(d.clone());
        }
    }
    Ok(result)
}

/// Every subnet of the network's ranges (what masquerading leaves alone).
fn conf_subnets(conf: &NetConf) -> Vec<IpNet> {
    conf.ipam
        .iter()
        .flat_map(|i| i.range_sets.iter().flatten().map(|r| r.subnet))
        .collect()
}

/// Routes for the pod: the IPAM routes (gateway of the same family when none is given),
/// then default routes via the gateway for `isDefaultGateway`.
fn pod_routes(conf: &NetConf, allocs: &[Allocation]) -> Vec<RouteOut> {
    let gw_for = |v4: bool| {
        allocs
            .iter()
            .find(|a| a.address.is_ipv4() == v4)
            .map(|a| a.gateway)
    };
    let mut out: Vec<RouteOut> = Vec::new();
    if let Some(ipam) = &conf.ipam {
        for r in &ipam.routes {
            let v4 = r.dst.is_ipv4();
            if gw_for(v4).is_none() && r.gw.is_none() {
                continue; // no address of that family: the route cannot work
            }
            out.push(RouteOut {
                dst: r.dst,
                gw: r.gw.or_else(|| gw_for(v4)),
            });
        }
    }
    if conf.is_default_gateway {
        for v4 in [true, false] {
            let Some(gw) = gw_for(v4) else { continue };
            let dst = IpNet::default_route(v4);
            if !out.iter().any(|r| r.dst == dst) {
                out.push(RouteOut { dst, gw: Some(gw) });
            }
        }
    }
    out
}

fn cmd_del(env: &Env, conf: &NetConf) -> Result<()> {
    let veth = host_veth_name(&env.container_id, &env.ifname);
    // While the lease files exist no one else can take these addresses, so the nft
    // elements keyed by them are ours to remove before the leases go.
    let ips = match &conf.ipam {
        Some(ipam) => {
            let store = Store::open(&ipam.data_dir, &conf.name)?;
            store.get_by_id(&env.container_id, &env.ifname)
        }
        None => Vec::new(),
    };
    // Removing map elements and removing links each end with the kernel waiting for an RCU
    // grace period. The element transaction's wait happens when its socket closes, so the
    // socket stays open across the link removal and both waits overlap, on one thread.
    let mut pending = None;
    let mut b = Batch::default();
    if conf.ip_masq && !ips.is_empty() {
        pending = nft::masq_del_fast(&conf.name, &conf_subnets(conf), &ips);
        if pending.is_none() {
            b.masq_del(&conf.name, &conf_subnets(conf), &ips);
        }
    }
    if conf.macspoofchk {
        b.spoof_del(&veth);
    }
    b.run()?;
    del_links(env, &veth)?;
    // The network's chain (and the tables) go with its last attachment. After the links,
    // so their RCU waits overlap too.
    let mut released = Vec::new();
    if conf.ip_masq {
        released = nft::masq_release(&conf.name, &conf_subnets(conf))?;
    }
    if conf.macspoofchk {
        released.extend(nft::spoof_release()?);
    }
    drop(pending);
    drop(released);

    if let Some(ipam) = &conf.ipam {
        let store = Store::open(&ipam.data_dir, &conf.name)?;
        store.release_by_id(&env.container_id, &env.ifname);
    }
    Ok(())
}

/// Removes the pod's interface (from inside the pod if its netns is still there, which
/// also covers links made by the reference plugin), else the host end by its name.
fn del_links(env: &Env, veth: &str) -> Result<()> {
    if !env.netns.is_empty() {
        if let Ok(ns) = NetNs::open(&env.netns) {
            let home =
                NetNs::current().map_err(|e| CniError::io("open own network namespace", e))?;
            if let Ok(Ok(mut pod)) = ns.run(&home, Netlink::open) {
                if pod.delete_link(&env.ifname).map_err(nl_err)? {
                    return Ok(());
                }
            }
        }
    }
    let mut host = Netlink::open().map_err(|e| CniError::io("open netlink socket", e))?;
    host.delete_link(veth).map_err(nl_err)?;
    Ok(())
}

fn check_failed(msg: String) -> CniError {
    CniError::new(code::CHECK_FAILED, msg)
}

fn cmd_check(env: &Env, conf: &NetConf) -> Result<()> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("prevResult: required for CHECK"))?;
    let prev = CniResult::from_json(prev)?;
    let mut s = open_sockets(&env.netns)?;
    let idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            check_failed(format!(
                "prevResult.interfaces: no container interface {:?}",
                env.ifname
            ))
        })?;
    let want = &prev.interfaces[idx];
    let link = s
        .pod
        .link_by_name(&env.ifname)
        .map_err(nl_err)?
        .ok_or_else(|| {
            check_failed(format!(
                "CNI_IFNAME: interface {:?} not found in {}",
                env.ifname, env.netns
            ))
        })?;
    if !want.mac.is_empty() && !want.mac.eq_ignore_ascii_case(&ip::format_mac(&link.mac)) {
        return Err(check_failed(format!(
            "interface {}: MAC {} differs from prevResult {}",
            env.ifname,
            ip::format_mac(&link.mac),
            want.mac
        )));
    }
    let have = s.pod.addrs(link.index).map_err(nl_err)?;
    let ours: Vec<&IpConfig> = prev
        .ips
        .iter()
        .filter(|c| c.interface.is_none_or(|i| i == idx))
        .collect();
    for c in &ours {
        if !have.iter().any(|a| a.net == c.address) {
            return Err(check_failed(format!(
                "interface {}: address {} from prevResult is missing",
                env.ifname, c.address
            )));
        }
    }
    for v4 in [true, false] {
        let wanted: Vec<&RouteOut> = prev
            .routes
            .iter()
            .filter(|r| r.dst.is_ipv4() == v4)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let routes = s.pod.routes(v4).map_err(nl_err)?;
        for r in wanted {
            let ok = routes
                .iter()
                .any(|x| x.dst == r.dst && (r.gw.is_none() || x.gw == r.gw));
            if !ok {
                return Err(check_failed(format!(
                    "interface {}: route {} from prevResult is missing",
                    env.ifname, r.dst
                )));
            }
        }
    }
    // Host side: the bridge exists and the peer of the pod interface is attached to it.
    let bridge = s
        .host
        .link_by_name(&conf.bridge)
        .map_err(nl_err)?
        .ok_or_else(|| check_failed(format!("bridge: {} not found", conf.bridge)))?;
    if let Some(peer) = link.peer_index {
        let hv = prev
            .interfaces
            .iter()
            .find(|i| i.sandbox.is_none() && i.name != conf.bridge)
            .map(|i| i.name.clone())
            .unwrap_or_else(|| host_veth_name(&env.container_id, &env.ifname));
        let host = s
            .host
            .link_by_name(&hv)
            .map_err(nl_err)?
            .ok_or_else(|| check_failed(format!("host interface {hv} not found")))?;
        if host.index != peer || host.master != Some(bridge.index) {
            return Err(check_failed(format!(
                "host interface {hv} is not the peer of {} on bridge {}",
                env.ifname, conf.bridge
            )));
        }
    }
    if let Some(ipam) = &conf.ipam {
        let store = Store::open(&ipam.data_dir, &conf.name)?;
        let held: HashSet<IpAddr> = store
            .get_by_id(&env.container_id, &env.ifname)
            .into_iter()
            .collect();
        for c in &ours {
            if !held.contains(&c.address.addr) {
                return Err(check_failed(format!(
                    "ipam: no lease for {} held by {}/{}",
                    c.address.addr, env.container_id, env.ifname
                )));
            }
        }
    }
    Ok(())
}

fn cmd_gc(conf: &NetConf) -> Result<()> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::config("cni.dev/valid-attachments: missing from the GC configuration")
    })?;
    if let Some(ipam) = &conf.ipam {
        let store = Store::open(&ipam.data_dir, &conf.name)?;
        store.release_unlisted(valid);
    }
    if conf.ip_masq || conf.macspoofchk {
        let keep: HashSet<String> = valid
            .iter()
            .map(|a| nft::tag(&conf.name, &a.container_id, &a.ifname))
            .collect();
        let prefix = nft::tag_prefix(&conf.name);
        let stale: Vec<nft::Tagged> = nft::list_tagged()?
            .into_iter()
            .filter(|t| t.tag.starts_with(&prefix) && !keep.contains(&t.tag))
            .collect();
        nft::remove_tagged(&stale)?;
        nft::release_unused()?;
    }
    Ok(())
}

fn cmd_status(conf: &NetConf) -> Result<()> {
    if let Some(ipam) = &conf.ipam {
        let store = Store::open(&ipam.data_dir, &conf.name)?;
        if let Some(set) = ipam::exhausted_set(&store, ipam) {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                format!("ipam: no IP addresses available in range set {set}"),
            ));
        }
    }
    Ok(())
}
