//! nodus-bridge: a CNI plugin (spec 1.0.0 and 1.1.0; configurations in 0.4.0, 1.0.0 and
//! 1.1.0 accepted, results written in the requested version) that attaches containers to a
//! Linux bridge through veth pairs, a drop-in for the reference `bridge` + `host-local` pair.
//!
//! - [`plugin`]: the commands. ADD creates the bridge if missing, puts the gateway on it
//!   once (an `EEXIST` from a concurrent ADD counts as success), creates the veth pair with
//!   the pod end born inside `CNI_NETNS` under `CNI_IFNAME`, and configures addresses and
//!   routes through a netlink socket opened inside the pod's namespace. DEL is idempotent
//!   and works without the netns (the host end has a stable name derived from the
//!   attachment). CHECK compares the namespace with `prevResult`; GC drops leases and
//!   masquerade state of attachments not listed; STATUS fails (code 50) when no address is
//!   left.
//! - [`ipam`]: host-local's on-disk format and allocation order, so both plugins can share
//!   a data dir on a live node.
//! - [`nft`] / [`nftnl`]: `ipMasq` and `macspoofchk` in nftables tables of ours
//!   (`inet nodus`, `bridge nodus`). Per container there is only one map element per
//!   address, tagged `<network hash>:<containerID>/<ifname>`; in steady state it is added or
//!   removed with one nf_tables netlink transaction, and `nft` runs only to create the
//!   tables, chains and maps (first ADD of a network) or to repair state.
//! - [`netlink`] / [`nlmsg`]: a synchronous rtnetlink client on hand-encoded messages. The
//!   process is single-threaded: the only thread enters the pod netns just long enough to
//!   open a socket there and comes back, and each socket stays bound to its namespace.
//!
//! Error codes: the spec's 1 (version), 3 (netns missing), 4 (environment), 5 (I/O),
//! 6 (JSON), 7 (configuration), 50 (STATUS: not available); ours 100 (range exhausted),
//! 101 (requested address unavailable), 102 (`CNI_IFNAME` taken), 110 (netlink),
//! 111 (nftables), 112 (CHECK mismatch), 113 (bridge conflict).

pub mod config;
pub mod error;
pub mod ip;
pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod nftmasq;
pub mod nftnl;
pub mod nlmsg;
pub mod plugin;
pub mod types;
