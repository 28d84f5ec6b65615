//! netlink, ours: what one ADD + DEL of nodus-bridge does through nodus_cni_bridge::netlink
//! and ::netns (a socket here and one opened inside the pod namespace, the veth pair with
//! its pod end born in the pod namespace and its host end on the bridge, then in the pod:
//! the link up, its address, a default route; then the pod end deleted, which takes the
//! host end with it). Run inside the node namespace; arguments: the pod namespace's path and
//! the bridge. `get <bridge>` instead: open a socket and look the bridge up by name (one
//! request whose kernel side is cheap, so the time is the client's encoding, decoding and
//! system calls).

use std::error::Error;
use std::net::IpAddr;

use nodus_cni_bridge::ip::IpNet;
use nodus_cni_bridge::netlink::{Netlink, IFF_UP};
use nodus_cni_bridge::netns::NetNs;
use nodus_crate_compare as cc;

fn run(pod_path: &str, bridge: &str, keep: bool) -> Result<(), Box<dyn Error>> {
    let pod_ns = NetNs::open(pod_path)?;
    let home = NetNs::current()?;
    let mut host = Netlink::open()?;
    let mut pod = pod_ns.run(&home, Netlink::open)??;

    if pod.link_by_name(cc::POD_IF)?.is_some() {
        return Err(format!("{} already exists in the pod", cc::POD_IF).into());
    }
    let br = host
        .link_by_name(bridge)?
        .ok_or_else(|| format!("no bridge {bridge}"))?;
    host.create_veth(
        cc::HOST_IF,
        cc::HOST_MAC,
        br.index,
        cc::POD_IF,
        cc::POD_MAC,
        pod_ns.fd(),
        None,
    )?;
    let link = pod
        .link_by_name(cc::POD_IF)?
        .ok_or("pod interface missing after create")?;
    pod.set_flags(link.index, IFF_UP, IFF_UP)?;
    let addr = IpNet {
        addr: IpAddr::V4(cc::POD_IP),
        prefix: cc::PREFIX,
    };
    pod.add_addr(link.index, &addr, false)?;
    pod.add_route(
        &IpNet::default_route(true),
        Some(IpAddr::V4(cc::GATEWAY)),
        link.index,
    )?;
    if !keep && !pod.delete_link(cc::POD_IF)? {
        return Err("pod interface vanished before delete".into());
    }
    Ok(())
}

fn get(bridge: &str) -> Result<(), Box<dyn Error>> {
    let mut host = Netlink::open()?;
    host.link_by_name(bridge)?
        .ok_or_else(|| format!("no bridge {bridge}"))?;
    Ok(())
}

fn run_args(a: &[String], keep: bool) -> Result<(), Box<dyn Error>> {
    if a[0] == "get" {
        get(&a[1])
    } else {
        run(&a[0], &a[1], keep)
    }
}

fn main() {
    let (a, keep) = cc::args(2, "nl-ours <pod-netns-path>|get <bridge>");
    match cc::repeat_count() {
        Some(n) if !keep => cc::repeat("nl-ours", n, || run_args(&a, false)),
        _ => cc::exit_on_error("nl-ours", run_args(&a, keep)),
    }
}
