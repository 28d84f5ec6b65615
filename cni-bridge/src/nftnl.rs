//! The per-container fast path of [`crate::nft`]: adding and removing map elements by
//! speaking nf_tables netlink directly (one batch, one transaction), with no `nft` process.
//! A missing table or chain is made by [`crate::nftmasq`] over the same transaction code;
//! when that loses a race, or an element is in the way, these calls fail and the caller
//! falls back to the `nft` batch. Removing them once unused is done here, with deletes the
//! kernel refuses (`EBUSY`) while anything still uses them.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_sys::{Socket, SocketAddr};

use crate::nlmsg::{self, Msg, NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};

const NETLINK_NETFILTER: isize = 12;
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
/// On a delete: refuse (`EBUSY`) instead of removing what the object still holds.
const NLM_F_NONREC: u16 = 0x100;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USE: u16 = 3;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_USE: u16 = 6;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;

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
/// `NFPROTO_BRIDGE`, the family of `table bridge ...`.
pub const NFPROTO_BRIDGE: u8 = 7;

/// A message with the `struct nfgenmsg` header.
pub(crate) fn nfmsg(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
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
    transact(element_msgs(family, table, groups, add))
}

/// Deletes elements and then unused objects ([`delete_unused`]) in one transaction: a
/// network's last DEL pays for one commit and one wait instead of three.
pub fn delete_elements_and_unused(
    family: u8,
    table: &str,
    groups: &[(&str, Vec<Element>)],
    objects: &[Object],
) -> io::Result<Done> {
    let mut msgs = element_msgs(family, table, groups, false);
    msgs.extend(delete_msgs(family, table, objects));
    transact(msgs)
}

pub(crate) fn element_msgs(
    family: u8,
    table: &str,
    groups: &[(&str, Vec<Element>)],
    add: bool,
) -> Vec<Msg> {
    let groups: Vec<&(&str, Vec<Element>)> = groups.iter().filter(|g| !g.1.is_empty()).collect();
    let (kind, flags) = if add {
        (
            NFT_MSG_NEWSETELEM,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
    } else {
        (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
    };
    let mut msgs = Vec::new();
    for (set, elems) in &groups {
        let mut m = nfmsg((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, 0, family, 0);
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
        msgs.push(m);
    }
    msgs
}

/// An object of a table [`delete_unused`] removes.
pub enum Object<'a> {
    Chain(&'a str),
    /// A set or map: removed only while it has no element.
    Set(&'a str),
    /// A set or map with whatever elements it still holds: for a transaction that also
    /// deletes elements (the kernel counts those until the commit) and ends with
    /// [`Object::Table`], which fails if anything the elements jump to is left.
    SetWithElements(&'a str),
    /// The table itself: removed only while nothing is left in it.
    Table,
}

/// Deletes `objects` of one table in one transaction, each only if unused: a chain
/// something still jumps to, a map with elements or a table with anything left makes the
/// kernel refuse with `EBUSY` and nothing at all changes. A chain's own rules go with it.
/// Because the kernel checks at commit time, a concurrent transaction adding a user is
/// either seen (the delete fails) or comes after (and finds the object gone).
pub fn delete_unused(family: u8, table: &str, objects: &[Object]) -> io::Result<Done> {
    transact(delete_msgs(family, table, objects))
}

fn delete_msgs(family: u8, table: &str, objects: &[Object]) -> Vec<Msg> {
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_NONREC;
    objects
        .iter()
        .map(|o| match o {
            Object::Chain(name) => {
                let mut m = nfmsg(
                    (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELCHAIN,
                    NLM_F_REQUEST | NLM_F_ACK,
                    0,
                    family,
                    0,
                );
                m.attr_str(NFTA_CHAIN_TABLE, table);
                m.attr_str(NFTA_CHAIN_NAME, name);
                m
            }
            Object::Set(name) | Object::SetWithElements(name) => {
                let set_flags = if matches!(o, Object::Set(_)) {
                    flags
                } else {
                    NLM_F_REQUEST | NLM_F_ACK
                };
                let mut m = nfmsg(
                    (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSET,
                    set_flags,
                    0,
                    family,
                    0,
                );
                m.attr_str(NFTA_SET_TABLE, table);
                m.attr_str(NFTA_SET_NAME, name);
                m
            }
            Object::Table => {
                let mut m = nfmsg(
                    (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE,
                    flags,
                    0,
                    family,
                    0,
                );
                m.attr_str(NFTA_TABLE_NAME, table);
                m
            }
        })
        .collect()
}

/// How many users the kernel counts for a chain (its rules plus the rules and map
/// elements that jump to it) or, with `chain` `None`, for a table (its chains and sets);
/// `None` if it does not exist. A plain read, not a transaction: cheap, and a hint only,
/// since it may change right after.
pub fn use_count(family: u8, table: &str, chain: Option<&str>) -> io::Result<Option<u32>> {
    let (get, new, use_attr) = match chain {
        Some(_) => (NFT_MSG_GETCHAIN, NFT_MSG_NEWCHAIN, NFTA_CHAIN_USE),
        None => (NFT_MSG_GETTABLE, NFT_MSG_NEWTABLE, NFTA_TABLE_USE),
    };
    let mut m = nfmsg(
        (NFNL_SUBSYS_NFTABLES << 8) | get,
        NLM_F_REQUEST | NLM_F_ACK,
        1,
        family,
        0,
    );
    match chain {
        Some(c) => {
            m.attr_str(NFTA_CHAIN_TABLE, table);
            m.attr_str(NFTA_CHAIN_NAME, c);
        }
        None => m.attr_str(NFTA_TABLE_NAME, table),
    }
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    set_timeout(&sock)?;
    sock.send(&m.finish(), 0)?;
    let mut found = None;
    let mut buf = Vec::with_capacity(8192);
    loop {
        buf.clear();
        let n = sock.recv(&mut buf, 0)?;
        for m in nlmsg::messages(&buf[..n]) {
            if m.kind == NLMSG_ERROR {
                return match nlmsg::error_code(m.payload) {
                    0 => Ok(found),
                    c if c == -libc::ENOENT => Ok(None),
                    c => Err(io::Error::from_raw_os_error(-c)),
                };
            }
            if m.kind == (NFNL_SUBSYS_NFTABLES << 8) | new {
                // After the 4-byte nfgenmsg header: attributes; USE is big-endian.
                found = nlmsg::attrs(m.payload.get(4..).unwrap_or_default())
                    .find(|(k, _)| *k == use_attr)
                    .and_then(|(_, v)| v.get(0..4)?.try_into().ok().map(u32::from_be_bytes))
                    .or(Some(0));
            }
        }
    }
}

/// Sends `msgs` as one nf_tables batch (one transaction) and waits for every ack; the
/// first error aborts the whole transaction and is returned.
pub(crate) fn transact(msgs: Vec<Msg>) -> io::Result<Done> {
    if msgs.is_empty() {
        return Ok(Done(None));
    }
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    set_timeout(&sock)?;
    let count = msgs.len();
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
    for (i, mut m) in msgs.into_iter().enumerate() {
        m.set_seq(i as u32 + 2);
        out.extend(m.finish());
    }
    let last = count as u32 + 1;
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
    // One answer per message: an ack (error 0) or its error.
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
                if acked == count {
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
