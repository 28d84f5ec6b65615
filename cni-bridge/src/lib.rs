//! nodus-bridge: a CNI plugin (spec 1.0.0 and 1.1.0) that attaches containers to a Linux
//! bridge through veth pairs, with IPAM built in that keeps the on-disk format of the
//! reference `host-local` plugin.

pub mod config;
pub mod error;
pub mod ip;
pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod nftnl;
pub mod nlmsg;
pub mod plugin;
pub mod types;
