//! A network's masquerade state made through nf_tables netlink in one transaction, with no
//! `nft` process: the table `inet nodus` with its postrouting chain and `masq4`/`masq6`
//! verdict maps (when the table is missing), the network's chain with its rules, and the
//! pod's elements. The rules are those `nft` makes from [`crate::nft::Batch::masq_add`]'s
//! text. Table and chain are created exclusively (`EEXIST` aborts everything), so two
//! racing ADDs never duplicate rules: the loser falls back to the idempotent `nft` batch.

use std::io;
use std::net::IpAddr;

use crate::ip::IpNet;
use crate::nftnl::{self, nfmsg, Done, Element, NFNL_SUBSYS_NFTABLES};
use crate::nlmsg::{Msg, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NLM_F_APPEND: u16 = 0x800;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_ID: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

const NF_INET_POST_ROUTING: u32 = 4;
/// `srcnat`.
const NAT_PRIORITY: i32 = 100;
const NF_ACCEPT: u32 = 1;
const NFT_SET_MAP: u32 = 0x8;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
/// nft's data types `ipv4_addr` and `ipv6_addr` (what `nft list` prints from).
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_META_NFPROTO: u32 = 15;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const TABLE: &str = "nodus";

fn msg(kind: u16, flags: u16) -> Msg {
    nfmsg(
        (NFNL_SUBSYS_NFTABLES << 8) | kind,
        NLM_F_REQUEST | NLM_F_ACK | flags,
        0,
        nftnl::NFPROTO_INET,
        0,
    )
}

fn be(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

/// One rule's expressions, in order.
struct Exprs<'m> {
    m: &'m mut Msg,
}

impl Exprs<'_> {
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Msg)) {
        self.m.begin(NFTA_LIST_ELEM);
        self.m.attr_str(NFTA_EXPR_NAME, name);
        self.m.begin(NFTA_EXPR_DATA);
        data(self.m);
        self.m.end();
        self.m.end();
    }

    /// `meta nfproto == proto`: the family dependency nft puts before `ip`/`ip6` matches.
    fn nfproto(&mut self, proto: u8) {
        self.expr("meta", |m| {
            m.attr(1, &be(NFT_REG_1)); // NFTA_META_DREG
            m.attr(2, &be(NFT_META_NFPROTO)); // NFTA_META_KEY
        });
        self.cmp(NFT_CMP_EQ, &[proto]);
    }

    /// Loads `len` bytes of the network header at `offset` into register 1.
    fn payload(&mut self, offset: u32, len: u32) {
        self.expr("payload", |m| {
            m.attr(1, &be(NFT_REG_1)); // NFTA_PAYLOAD_DREG
            m.attr(2, &be(NFT_PAYLOAD_NETWORK_HEADER)); // NFTA_PAYLOAD_BASE
            m.attr(3, &be(offset)); // NFTA_PAYLOAD_OFFSET
            m.attr(4, &be(len)); // NFTA_PAYLOAD_LEN
        });
    }

    /// Register 1 &= mask.
    fn mask(&mut self, mask: &[u8]) {
        let zero = vec![0u8; mask.len()];
        self.expr("bitwise", |m| {
            m.attr(1, &be(NFT_REG_1)); // NFTA_BITWISE_SREG
            m.attr(2, &be(NFT_REG_1)); // NFTA_BITWISE_DREG
            m.attr(3, &be(mask.len() as u32)); // NFTA_BITWISE_LEN
            m.begin(4); // NFTA_BITWISE_MASK
            m.attr(NFTA_DATA_VALUE, mask);
            m.end();
            m.begin(5); // NFTA_BITWISE_XOR
            m.attr(NFTA_DATA_VALUE, &zero);
            m.end();
        });
    }

    fn cmp(&mut self, op: u32, value: &[u8]) {
        self.expr("cmp", |m| {
            m.attr(1, &be(NFT_REG_1)); // NFTA_CMP_SREG
            m.attr(2, &be(op)); // NFTA_CMP_OP
            m.begin(3); // NFTA_CMP_DATA
            m.attr(NFTA_DATA_VALUE, value);
            m.end();
        });
    }

    /// `<family> daddr (==|!=) net`, loading only the prefix's bytes as nft does.
    fn daddr(&mut self, net: &IpNet, op: u32) {
        let (proto, offset, bytes) = match net.trunc().addr {
            IpAddr::V4(a) => (NFPROTO_IPV4, 16, a.octets().to_vec()),
            IpAddr::V6(a) => (NFPROTO_IPV6, 24, a.octets().to_vec()),
        };
        self.nfproto(proto);
        let bits = usize::from(net.prefix).min(bytes.len() * 8);
        if bits == 0 {
            return; // the whole family (only `==` is asked for with /0)
        }
        // A whole-byte prefix loads just those bytes; any other loads the address and masks.
        let n = if bits % 8 == 0 { bits / 8 } else { bytes.len() };
        self.payload(offset, n as u32);
        if bits % 8 != 0 {
            let mask: Vec<u8> = (0..n)
                .map(|i| {
                    let b = bits.saturating_sub(i * 8).min(8);
                    (0xffu16 << (8 - b)) as u8
                })
                .collect();
            self.mask(&mask);
        }
        self.cmp(op, &bytes[..n]);
    }
}

fn rule(chain: &str, build: impl FnOnce(&mut Exprs)) -> Msg {
    let mut m = msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
    m.attr_str(NFTA_RULE_TABLE, TABLE);
    m.attr_str(NFTA_RULE_CHAIN, chain);
    m.begin(NFTA_RULE_EXPRESSIONS);
    build(&mut Exprs { m: &mut m });
    m.end();
    m
}

/// The base: table, postrouting chain, the two maps and the rules looking them up.
fn base_msgs() -> Vec<Msg> {
    let mut out = Vec::new();
    let mut t = msg(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL);
    t.attr_str(NFTA_TABLE_NAME, TABLE);
    out.push(t);
    let mut c = msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL);
    c.attr_str(NFTA_CHAIN_TABLE, TABLE);
    c.attr_str(NFTA_CHAIN_NAME, "postrouting");
    c.begin(NFTA_CHAIN_HOOK);
    c.attr(NFTA_HOOK_HOOKNUM, &be(NF_INET_POST_ROUTING));
    c.attr(NFTA_HOOK_PRIORITY, &NAT_PRIORITY.to_be_bytes());
    c.end();
    c.attr(NFTA_CHAIN_POLICY, &be(NF_ACCEPT));
    c.attr_str(NFTA_CHAIN_TYPE, "nat");
    out.push(c);
    for (id, name, key_type, key_len) in [
        (1u32, "masq4", TYPE_IPADDR, 4u32),
        (2, "masq6", TYPE_IP6ADDR, 16),
    ] {
        let mut s = msg(NFT_MSG_NEWSET, NLM_F_CREATE | NLM_F_EXCL);
        s.attr_str(NFTA_SET_TABLE, TABLE);
        s.attr_str(NFTA_SET_NAME, name);
        s.attr(NFTA_SET_FLAGS, &be(NFT_SET_MAP));
        s.attr(NFTA_SET_KEY_TYPE, &be(key_type));
        s.attr(NFTA_SET_KEY_LEN, &be(key_len));
        s.attr(NFTA_SET_DATA_TYPE, &be(NFT_DATA_VERDICT));
        s.attr(NFTA_SET_ID, &be(id));
        out.push(s);
    }
    // ip saddr vmap @masq4 / ip6 saddr vmap @masq6
    for (id, name, proto, offset, len) in [
        (1u32, "masq4", NFPROTO_IPV4, 12u32, 4u32),
        (2, "masq6", NFPROTO_IPV6, 8, 16),
    ] {
        out.push(rule("postrouting", |e| {
            e.nfproto(proto);
            e.payload(offset, len);
            e.expr("lookup", |m| {
                m.attr_str(1, name); // NFTA_LOOKUP_SET
                m.attr(2, &be(NFT_REG_1)); // NFTA_LOOKUP_SREG
                m.attr(3, &be(NFT_REG_VERDICT)); // NFTA_LOOKUP_DREG
                m.attr(4, &be(id)); // NFTA_LOOKUP_SET_ID
            });
        }));
    }
    out
}

/// The network's chain: its own subnets accepted, everything else but multicast
/// masqueraded.
fn chain_msgs(chain: &str, subnets: &[IpNet]) -> Vec<Msg> {
    let mut out = Vec::new();
    let mut c = msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL);
    c.attr_str(NFTA_CHAIN_TABLE, TABLE);
    c.attr_str(NFTA_CHAIN_NAME, chain);
    out.push(c);
    for s in subnets {
        out.push(rule(chain, |e| {
            e.daddr(s, NFT_CMP_EQ);
            e.expr("immediate", |m| {
                m.attr(1, &be(NFT_REG_VERDICT)); // NFTA_IMMEDIATE_DREG
                m.begin(2); // NFTA_IMMEDIATE_DATA
                m.begin(NFTA_DATA_VERDICT);
                m.attr(NFTA_VERDICT_CODE, &be(NF_ACCEPT));
                m.end();
                m.end();
            });
        }));
    }
    let multicast = [
        IpNet {
            addr: "224.0.0.0".parse().expect("literal"),
            prefix: 4,
        },
        IpNet {
            addr: "ff00::".parse().expect("literal"),
            prefix: 8,
        },
    ];
    for net in &multicast {
        out.push(rule(chain, |e| {
            e.daddr(net, NFT_CMP_NEQ);
            e.expr("masq", |_| {});
        }));
    }
    out
}

/// Makes the network's chain (and, with `base`, the table) with the elements, in one
/// transaction that fails as a whole if any of it already exists.
pub fn create(
    base: bool,
    chain: &str,
    subnets: &[IpNet],
    groups: &[(&str, Vec<Element>)],
) -> io::Result<Done> {
    let mut msgs = if base { base_msgs() } else { Vec::new() };
    msgs.extend(chain_msgs(chain, subnets));
    msgs.extend(nftnl::element_msgs(
        nftnl::NFPROTO_INET,
        TABLE,
        groups,
        true,
    ));
    nftnl::transact(msgs)
}
