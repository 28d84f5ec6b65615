//! netlink, crate: the same requests as nl-ours through rtnetlink (netlink-packet-route),
//! on a tokio current-thread runtime with the connection spawned on it, as rtnetlink's
//! documentation shows. The pod socket is opened the same way (enter, open, return): a
//! netlink socket stays bound to the namespace it was made in. `get <bridge>` instead: one
//! connection and one lookup by name (see nl-ours).

use std::error::Error;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use futures_util::stream::TryStreamExt;
use nodus_crate_compare as cc;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

fn setns(f: &File) -> std::io::Result<()> {
    // SAFETY: a namespace fd we own; changes only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The index of a link by name; None when the kernel says ENODEV.
async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, rtnetlink::Error> {
    let mut links = h.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e),
    }
}

async fn run(pod_path: &str, bridge: &str, keep: bool) -> Result<(), Box<dyn Error>> {
    let pod_ns = File::open(pod_path)?;
    let home = File::open("/proc/thread-self/ns/net")?;
    let (conn, host, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    setns(&pod_ns)?;
    let opened = rtnetlink::new_connection();
    if let Err(e) = setns(&home) {
        eprintln!("nl-crate: cannot return to the node namespace: {e}");
        std::process::abort();
    }
    let (conn, pod, _) = opened?;
    tokio::spawn(conn);

    if link_index(&pod, cc::POD_IF).await?.is_some() {
        return Err(format!("{} already exists in the pod", cc::POD_IF).into());
    }
    let br = link_index(&host, bridge)
        .await?
        .ok_or_else(|| format!("no bridge {bridge}"))?;
    let peer = LinkUnspec::new_with_name(cc::POD_IF)
        .address(cc::POD_MAC.to_vec())
        .setns_by_fd(pod_ns.as_raw_fd())
        .build();
    let veth = LinkVeth::new(cc::HOST_IF, cc::POD_IF)
        .address(cc::HOST_MAC.to_vec())
        .controller(br)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.link().add(veth).execute().await?;
    let index = link_index(&pod, cc::POD_IF)
        .await?
        .ok_or("pod interface missing after create")?;
    pod.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await?;
    pod.address()
        .add(index, cc::POD_IP.into(), cc::PREFIX)
        .replace()
        .execute()
        .await?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(cc::GATEWAY)
        .output_interface(index)
        // ours and nl-npr use RTPROT_BOOT (ip route's default); the builder's is STATIC
        .protocol(RouteProtocol::Boot)
        .build();
    pod.route().add(route).replace().execute().await?;
    if !keep {
        pod.link()
            .del_with_message(LinkUnspec::new_with_name(cc::POD_IF).build())
            .execute()
            .await?;
    }
    Ok(())
}

async fn get(bridge: &str) -> Result<(), Box<dyn Error>> {
    let (conn, host, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    link_index(&host, bridge)
        .await?
        .ok_or_else(|| format!("no bridge {bridge}"))?;
    Ok(())
}

async fn run_args(a: &[String], keep: bool) -> Result<(), Box<dyn Error>> {
    if a[0] == "get" {
        get(&a[1]).await
    } else {
        run(&a[0], &a[1], keep).await
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (a, keep) = cc::args(2, "nl-crate <pod-netns-path>|get <bridge>");
    match cc::repeat_count() {
        Some(n) if !keep => {
            // As cc::repeat, for an async operation.
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let t = std::time::Instant::now();
                cc::exit_on_error("nl-crate", run_args(&a, false).await);
                times.push(t.elapsed());
            }
            println!("{}", cc::median(&mut times).as_nanos());
        }
        _ => cc::exit_on_error("nl-crate", run_args(&a, keep).await),
    }
}
