//! The per-container fast path of [`crate::nft`]: adding and removing map elements by
//! speaking nf_tables netlink directly (one batch, one transaction), with no `nft` process.
//! Tables, chains, maps and rules are still made by `nft` (once per node and network); when
//! they are missing, or an element is in the way, these calls fail and the caller falls
//! back to the `nft` batch.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_sys::{Socket, SocketAddr};

use crate::nlmsg::{self, Msg, NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;
/// libnftnl's user data type for an element comment (a NUL-terminated string).
const NFTNL_UDATA_SET_ELEM_COMMENT: u8 = 0;

/// `NFPROTO_INET`, the family of `table inet ...`.
pub const NFPROTO_INET: u8 = 1;

/// A message with the `struct nfgenmsg` header.
fn nfmsg(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
    let r = res_id.to_be_bytes();
    Msg::new(kind, flags, seq, &[family, 0, r[0], r[1]])
}

/// One map element: key bytes, optional jump target, optional comment.
pub struct Element<'a> {
    pub key: Vec<u8>,
    pub jump: Option<&'a str>,
    pub comment: Option<&'a str>,
}

/// Key bytes of an address as nf_tables stores `ipv4_addr` / `ipv6_addr`.
pub fn ip_key(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The socket a transaction went through. Closing it waits until the kernel has freed
/// what the transaction removed (an RCU grace period after a delete), so a caller with
/// other slow work keeps it open meanwhile and drops it afterwards.
pub struct Done(#[allow(dead_code)] Option<Socket>);

/// Adds (`create`: fails with `EEXIST` if present) or deletes elements of maps of one
/// table, all in one transaction. Any error (missing table/map/chain, element present or
/// absent) aborts the whole transaction.
pub fn set_elements(
    family: u8,
    table: &str,
    groups: &[(&str, Vec<Element>)],
    add: bool,
) -> io::Result<Done> {
    let groups: Vec<&(&str, Vec<Element>)> = groups.iter().filter(|g| !g.1.is_empty()).collect();
    if groups.is_empty() {
        return Ok(Done(None));
    }
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    set_timeout(&sock)?;
    let mut out = Vec::new();
    out.extend(
        nfmsg(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            1,
            0,
            NFNL_SUBSYS_NFTABLES,
        )
        .finish(),
    );
    let (kind, flags) = if add {
        (
            NFT_MSG_NEWSETELEM,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
    } else {
        (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
    };
    let mut seq = 1u32;
    for (set, elems) in &groups {
        seq += 1;
        let mut m = nfmsg((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, seq, family, 0);
        m.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
        m.attr_str(NFTA_SET_ELEM_LIST_SET, set);
        m.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
        for e in elems {
            m.begin(NFTA_LIST_ELEM);
            m.begin(NFTA_SET_ELEM_KEY);
            m.attr(NFTA_DATA_VALUE, &e.key);
            m.end();
            if add {
                if let Some(chain) = e.jump {
                    m.begin(NFTA_SET_ELEM_DATA);
                    m.begin(NFTA_DATA_VERDICT);
                    m.attr(NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
                    m.attr_str(NFTA_VERDICT_CHAIN, chain);
                    m.end();
                    m.end();
                }
                if let Some(c) = e.comment {
                    let mut ud = vec![NFTNL_UDATA_SET_ELEM_COMMENT, (c.len() + 1) as u8];
                    ud.extend_from_slice(c.as_bytes());
                    ud.push(0);
                    m.attr(NFTA_SET_ELEM_USERDATA, &ud);
                }
            }
            m.end();
        }
        m.end();
        out.extend(m.finish());
    }
    let last = seq;
    out.extend(
        nfmsg(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            last + 1,
            0,
            NFNL_SUBSYS_NFTABLES,
        )
        .finish(),
    );
    sock.send(&out, 0)?;
    // One answer per element message: an ack (error 0) or its error.
    let mut acked = 0;
    let mut buf = Vec::with_capacity(8192);
    loop {
        buf.clear();
        let n = sock.recv(&mut buf, 0)?;
        for m in nlmsg::messages(&buf[..n]) {
            if m.kind != NLMSG_ERROR {
                continue;
            }
            let code = nlmsg::error_code(m.payload);
            if code != 0 {
                return Err(io::Error::from_raw_os_error(-code));
            }
            if (2..=last).contains(&m.seq) {
                acked += 1;
                if acked == groups.len() {
                    return Ok(Done(Some(sock)));
                }
            }
        }
    }
}

fn set_timeout(sock: &Socket) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
