//! Masquerade (`ipMasq`) and MAC spoof check (`macspoofchk`) rules in nftables.
//!
//! Masquerade state goes through nf_tables netlink ([`crate::nftnl`], [`crate::nftmasq`]);
//! the `nft -f -` batches here are the fallback for masquerade (a lost race, a damaged
//! table) and the way MAC checks are made. Everything lives in tables of ours: `inet nodus`
//! (postrouting NAT) and `bridge nodus` (MAC filter). Per-container state is one map
//! element keyed by the pod address (or host veth name), carrying a comment
//! `<containerID>/<ifname>`, so DEL removes exactly its elements without listing handles and GC
//! finds the ones whose attachment is gone. Base rules are re-written in the same atomic
//! batch each time, so every batch is idempotent and concurrent ADDs cannot duplicate them.
//! A network's chain goes with its last element, and each table once nothing of ours is
//! left in it (DEL, and GC after a crash), so an idle node holds no `nodus` rules.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{code, CniError, Result};
use crate::ip::{self, IpNet};
use crate::nftmasq;
use crate::nftnl;

const TABLE: &str = "inet nodus";
const BR_TABLE: &str = "bridge nodus";
const COMMENT_MAX: usize = 120;

/// The comment that tags an attachment's elements: `<network hash>:<containerID>/<ifname>`
/// (a hash of the container ID if it is too long for an nft comment).
pub fn tag(network: &str, container_id: &str, ifname: &str) -> String {
    let t = format!("{}{container_id}/{ifname}", tag_prefix(network));
    if t.len() <= COMMENT_MAX {
        t
    } else {
        format!(
            "{}h{:016x}/{ifname}",
            tag_prefix(network),
            ip::fnv1a64(&[container_id])
        )
    }
}

/// The part of a tag that names the network.
pub fn tag_prefix(network: &str) -> String {
    format!("{:016x}:", ip::fnv1a64(&[network]))
}

/// Name of the per-network masquerade chain; the subnets are part of the name, so a
/// changed configuration gets a fresh chain (made by the `nft` slow path).
pub fn net_chain(network: &str, subnets: &[IpNet]) -> String {
    let mut parts: Vec<String> = vec![network.to_string()];
    parts.extend(subnets.iter().map(|s| s.trunc().to_string()));
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    format!("net-{:016x}", ip::fnv1a64(&refs))
}

fn masq_groups<'a>(
    ips: &[IpAddr],
    chain: Option<&'a str>,
    tag: Option<&'a str>,
) -> Vec<(&'static str, Vec<nftnl::Element<'a>>)> {
    let elem = |ip: &IpAddr| nftnl::Element {
        key: nftnl::ip_key(ip),
        jump: chain,
        comment: tag,
    };
    vec![
        (
            "masq4",
            ips.iter().filter(|i| i.is_ipv4()).map(elem).collect(),
        ),
        (
            "masq6",
            ips.iter().filter(|i| i.is_ipv6()).map(elem).collect(),
        ),
    ]
}

/// ADD: masquerade traffic from `ips` leaving `subnets`. The elements go straight through
/// netlink; when the network's chain is missing (its first pod, or its last DEL removed
/// it), the chain (and the table, if missing too) is made through netlink with them in
/// one transaction ([`nftmasq::create`]). Only when that fails (a racing ADD made it
/// first), an element is in the way or the base is broken does the idempotent `nft`
/// batch run.
pub fn masq_add(network: &str, subnets: &[IpNet], ips: &[IpAddr], tag: &str) -> Result<()> {
    if masq_add_fast(network, subnets, ips, tag) {
        return Ok(());
    }
    let chain = net_chain(network, subnets);
    if !matches!(
        nftnl::use_count(nftnl::NFPROTO_INET, "nodus", Some(&chain)),
        Ok(Some(_))
    ) {
        let table = nftnl::use_count(nftnl::NFPROTO_INET, "nodus", None);
        let groups = masq_groups(ips, Some(&chain), Some(tag));
        if nftmasq::create(!matches!(table, Ok(Some(_))), &chain, subnets, &groups).is_ok() {
            return Ok(());
        }
    }
    let mut b = Batch::default();
    b.masq_add(network, subnets, ips, tag);
    b.run()
}

/// ADD fast path: the elements for `ips` straight through netlink. `false` when the
/// table, maps or chain are missing or an element is in the way.
fn masq_add_fast(network: &str, subnets: &[IpNet], ips: &[IpAddr], tag: &str) -> bool {
    let chain = net_chain(network, subnets);
    // A failed transaction costs the kernel an RCU grace period (milliseconds): when the
    // chain is gone (the network's last DEL removed it), go to the slow path at once.
    if !matches!(
        nftnl::use_count(nftnl::NFPROTO_INET, "nodus", Some(&chain)),
        Ok(Some(_))
    ) {
        return false;
    }
    let groups = masq_groups(ips, Some(&chain), Some(tag));
    nftnl::set_elements(nftnl::NFPROTO_INET, "nodus", &groups, true).is_ok()
}

/// DEL fast path: removes the elements of `ips`, and when they look like the network's
/// last ones (use counts read first), its chain and the emptied table in the same
/// transaction. `None` if any element was missing (the whole transaction is then void):
/// use [`Batch::masq_del`], which tolerates missing ones. Keep the returned value while
/// doing other slow work; dropping it waits for the kernel.
pub fn masq_del_fast(network: &str, subnets: &[IpNet], ips: &[IpAddr]) -> Option<nftnl::Done> {
    use nftnl::Object::{Chain, SetWithElements, Table};
    let groups = masq_groups(ips, None, None);
    let chain = net_chain(network, subnets);
    let chain_use = nftnl::use_count(nftnl::NFPROTO_INET, "nodus", Some(&chain));
    let table_use = nftnl::use_count(nftnl::NFPROTO_INET, "nodus", None);
    if let (Ok(Some(c)), Ok(Some(t))) = (chain_use, table_use) {
        if c as usize <= subnets.len() + 2 + ips.len() && t <= MASQ_BASE_USE + 1 {
            let objects = [
                Chain(&chain),
                Chain("postrouting"),
                SetWithElements("masq4"),
                SetWithElements("masq6"),
                Table,
            ];
            if let Ok(d) =
                nftnl::delete_elements_and_unused(nftnl::NFPROTO_INET, "nodus", &groups, &objects)
            {
                return Some(d);
            }
            // Someone got in meanwhile: remove only the elements (below).
        }
    }
    nftnl::set_elements(nftnl::NFPROTO_INET, "nodus", &groups, false).ok()
}

/// What a cleanup transaction answered: done, refused because something still uses the
/// object (`EBUSY`), or the object was already gone (`ENOENT`).
enum Cleanup {
    Done(nftnl::Done),
    InUse,
    Gone,
}

fn cleanup(family: u8, objects: &[nftnl::Object]) -> Result<Cleanup> {
    match nftnl::delete_unused(family, "nodus", objects) {
        Ok(d) => Ok(Cleanup::Done(d)),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(Cleanup::InUse),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Cleanup::Gone),
        Err(e) => Err(CniError::new(
            code::NFTABLES,
            format!("nftables cleanup: {e}"),
        )),
    }
}

/// The table's users when only its base chain and maps are left.
const MASQ_BASE_USE: u32 = 3;
const SPOOF_BASE_USE: u32 = 2;

/// Whether a use count read beforehand lets a cleanup transaction succeed: a refused
/// transaction costs an RCU grace period, so the cheap read skips the sure failures.
fn may_clean(family: u8, chain: Option<&str>, base: u32) -> bool {
    match nftnl::use_count(family, "nodus", chain) {
        Ok(Some(n)) => n <= base,
        Ok(None) => false,
        Err(_) => true, // let the transaction decide
    }
}

/// Removes `table inet nodus` when no network chain or element is left in it.
fn masq_teardown(pending: &mut Vec<nftnl::Done>) -> Result<()> {
    use nftnl::Object::{Chain, Set, Table};
    if !may_clean(nftnl::NFPROTO_INET, None, MASQ_BASE_USE) {
        return Ok(());
    }
    let objects = [Chain("postrouting"), Set("masq4"), Set("masq6"), Table];
    if let Cleanup::Done(d) = cleanup(nftnl::NFPROTO_INET, &objects)? {
        pending.push(d);
    }
    Ok(())
}

/// DEL: once no element jumps to the network's chain any more, removes the chain, and
/// then the table if no other network is left in it. Each step is one transaction the
/// kernel refuses while something still uses the object, so an ADD that got in first
/// keeps its state and one that comes after finds it gone and recreates it (slow path).
/// Keep the returned sockets like [`masq_del_fast`]'s.
pub fn masq_release(network: &str, subnets: &[IpNet]) -> Result<Vec<nftnl::Done>> {
    let mut pending = Vec::new();
    let chain = net_chain(network, subnets);
    // The chain's own rules (as masq_add makes them) count as users too.
    let rules = subnets.len() as u32 + 2;
    match nftnl::use_count(nftnl::NFPROTO_INET, "nodus", Some(&chain)) {
        Ok(Some(n)) if n > rules => return Ok(pending),
        Ok(None) => {} // already gone; the table may still be left empty
        _ => match cleanup(nftnl::NFPROTO_INET, &[nftnl::Object::Chain(&chain)])? {
            Cleanup::InUse => return Ok(pending),
            Cleanup::Done(d) => pending.push(d),
            Cleanup::Gone => {}
        },
    }
    masq_teardown(&mut pending)?;
    Ok(pending)
}

/// Removes `table bridge nodus` when no MAC check is left in it.
pub fn spoof_release() -> Result<Option<nftnl::Done>> {
    use nftnl::Object::{Chain, Set, Table};
    if !may_clean(nftnl::NFPROTO_BRIDGE, None, SPOOF_BASE_USE) {
        return Ok(None);
    }
    match cleanup(
        nftnl::NFPROTO_BRIDGE,
        &[Chain("prerouting"), Set("macspoof"), Table],
    )? {
        Cleanup::Done(d) => Ok(Some(d)),
        _ => Ok(None),
    }
}

/// GC: removes every network chain nothing jumps to (also those of networks whose
/// configuration changed, or whose last DEL never ran), then the tables left empty.
pub fn release_unused() -> Result<()> {
    let mut pending = Vec::new();
    for chain in list_chains("inet", TABLE)? {
        if !chain.starts_with("net-") {
            continue;
        }
        if let Cleanup::Done(d) = cleanup(nftnl::NFPROTO_INET, &[nftnl::Object::Chain(&chain)])? {
            pending.push(d);
        }
    }
    masq_teardown(&mut pending)?;
    spoof_release()?;
    Ok(())
}

/// A batch of nft commands, run with one `nft -f -`.
#[derive(Default)]
pub struct Batch {
    text: String,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn line(&mut self, s: &str) {
        self.text.push_str(s);
        self.text.push('\n');
    }

    fn masq_base(&mut self) {
        self.line(&format!("add table {TABLE}"));
        self.line(&format!(
            "add chain {TABLE} postrouting {{ type nat hook postrouting priority srcnat; }}"
        ));
        self.line(&format!(
            "add map {TABLE} masq4 {{ type ipv4_addr : verdict; }}"
        ));
        self.line(&format!(
            "add map {TABLE} masq6 {{ type ipv6_addr : verdict; }}"
        ));
        self.line(&format!("flush chain {TABLE} postrouting"));
        self.line(&format!(
            "add rule {TABLE} postrouting ip saddr vmap @masq4"
        ));
        self.line(&format!(
            "add rule {TABLE} postrouting ip6 saddr vmap @masq6"
        ));
    }

    /// ADD: masquerade traffic from `ips` leaving `subnets` (the network's own ranges).
    pub fn masq_add(&mut self, network: &str, subnets: &[IpNet], ips: &[IpAddr], tag: &str) {
        self.masq_base();
        let chain = self.masq_chain(network, subnets);
        for ip in ips {
            let map = if ip.is_ipv4() { "masq4" } else { "masq6" };
            // add (no-op if present), delete, add with our comment: replaces a stale element.
            self.line(&format!(
                "add element {TABLE} {map} {{ {ip} : jump {chain} }}"
            ));
            self.line(&format!("delete element {TABLE} {map} {{ {ip} }}"));
            self.line(&format!(
                "add element {TABLE} {map} {{ {ip} comment \"{tag}\" : jump {chain} }}"
            ));
        }
    }

    /// The network's chain and its rules; returns its name.
    fn masq_chain(&mut self, network: &str, subnets: &[IpNet]) -> String {
        let chain = net_chain(network, subnets);
        self.line(&format!("add chain {TABLE} {chain}"));
        self.line(&format!("flush chain {TABLE} {chain}"));
        for s in subnets {
            let fam = if s.is_ipv4() { "ip" } else { "ip6" };
            self.line(&format!(
                "add rule {TABLE} {chain} {fam} daddr {} accept",
                s.trunc()
            ));
        }
        self.line(&format!(
            "add rule {TABLE} {chain} ip daddr != 224.0.0.0/4 masquerade"
        ));
        self.line(&format!(
            "add rule {TABLE} {chain} ip6 daddr != ff00::/8 masquerade"
        ));
        chain
    }

    /// DEL: remove the elements of `ips` (present or not).
    pub fn masq_del(&mut self, network: &str, subnets: &[IpNet], ips: &[IpAddr]) {
        if ips.is_empty() {
            return;
        }
        let chain = net_chain(network, subnets);
        self.line(&format!("add table {TABLE}"));
        self.line(&format!(
            "add map {TABLE} masq4 {{ type ipv4_addr : verdict; }}"
        ));
        self.line(&format!(
            "add map {TABLE} masq6 {{ type ipv6_addr : verdict; }}"
        ));
        self.line(&format!("add chain {TABLE} {chain}"));
        for ip in ips {
            let map = if ip.is_ipv4() { "masq4" } else { "masq6" };
            self.line(&format!(
                "add element {TABLE} {map} {{ {ip} : jump {chain} }}"
            ));
            self.line(&format!("delete element {TABLE} {map} {{ {ip} }}"));
        }
    }

    fn spoof_base(&mut self) {
        self.line(&format!("add table {BR_TABLE}"));
        self.line(&format!(
            "add chain {BR_TABLE} prerouting {{ type filter hook prerouting priority -300; }}"
        ));
        self.line(&format!(
            "add map {BR_TABLE} macspoof {{ type ifname : verdict; }}"
        ));
        self.line(&format!("flush chain {BR_TABLE} prerouting"));
        self.line(&format!(
            "add rule {BR_TABLE} prerouting iifname vmap @macspoof"
        ));
    }

    /// ADD: frames from `host_veth` must carry `mac` as source.
    pub fn spoof_add(&mut self, host_veth: &str, mac: &str, tag: &str) {
        self.spoof_base();
        let chain = format!("mac-{host_veth}");
        self.line(&format!("add chain {BR_TABLE} {chain}"));
        self.line(&format!("flush chain {BR_TABLE} {chain}"));
        self.line(&format!(
            "add rule {BR_TABLE} {chain} ether saddr {mac} return"
        ));
        self.line(&format!("add rule {BR_TABLE} {chain} drop"));
        self.line(&format!(
            "add element {BR_TABLE} macspoof {{ \"{host_veth}\" : jump {chain} }}"
        ));
        self.line(&format!(
            "delete element {BR_TABLE} macspoof {{ \"{host_veth}\" }}"
        ));
        self.line(&format!(
            "add element {BR_TABLE} macspoof {{ \"{host_veth}\" comment \"{tag}\" : jump {chain} }}"
        ));
    }

    /// DEL: remove the MAC check of `host_veth` (present or not).
    pub fn spoof_del(&mut self, host_veth: &str) {
        self.spoof_base();
        let chain = format!("mac-{host_veth}");
        self.line(&format!("add chain {BR_TABLE} {chain}"));
        self.line(&format!(
            "add element {BR_TABLE} macspoof {{ \"{host_veth}\" : jump {chain} }}"
        ));
        self.line(&format!(
            "delete element {BR_TABLE} macspoof {{ \"{host_veth}\" }}"
        ));
        self.line(&format!("flush chain {BR_TABLE} {chain}"));
        self.line(&format!("delete chain {BR_TABLE} {chain}"));
    }

    /// Runs the batch (nothing to do if empty).
    pub fn run(&self) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let out = nft(&["-f", "-"], Some(self.text.as_bytes()))?;
        if !out.status.success() {
            return Err(CniError::new(
                code::NFTABLES,
                format!(
                    "nft: {}",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .next()
                        .unwrap_or("failed")
                ),
            )
            .with_details(format!(
                "{}\nbatch:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.text
            )));
        }
        Ok(())
    }
}

fn nft(args: &[&str], stdin: Option<&[u8]>) -> Result<std::process::Output> {
    let spawn = |prog: &str| {
        Command::new(prog)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let mut child = match spawn("nft") {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => spawn("/usr/sbin/nft")
            .or_else(|_| spawn("/sbin/nft"))
            .map_err(|e| CniError::new(code::NFTABLES, format!("run nft: {e}")))?,
        Err(e) => return Err(CniError::new(code::NFTABLES, format!("run nft: {e}"))),
    };
    if let Some(input) = stdin {
        if let Some(mut si) = child.stdin.take() {
            si.write_all(input)
                .map_err(|e| CniError::new(code::NFTABLES, format!("write to nft: {e}")))?;
        }
    }
    child
        .wait_with_output()
        .map_err(|e| CniError::new(code::NFTABLES, format!("wait for nft: {e}")))
}

/// A tagged map element found by [`list_tagged`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    /// `inet` or `bridge`.
    pub family: String,
    pub map: String,
    /// The key as nft prints it (address or interface name).
    pub key: String,
    pub tag: String,
}

/// All tagged elements of our maps (GC).
pub fn list_tagged() -> Result<Vec<Tagged>> {
    let mut out = Vec::new();
    for (family, table) in [("inet", TABLE), ("bridge", BR_TABLE)] {
        let mut args = vec!["-j", "list", "table"];
        args.extend(table.split(' '));
        let o = nft(&args, None)?;
        if !o.status.success() {
            continue; // no such table: nothing of ours there
        }
        let v: Value = serde_json::from_slice(&o.stdout)
            .map_err(|e| CniError::new(code::NFTABLES, format!("nft -j output: {e}")))?;
        out.extend(parse_tagged(family, &v));
    }
    Ok(out)
}

/// Names of the chains of one of our tables (none if it does not exist).
fn list_chains(family: &str, table: &str) -> Result<Vec<String>> {
    let mut args = vec!["-j", "list", "table"];
    args.extend(table.split(' '));
    let o = nft(&args, None)?;
    if !o.status.success() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_slice(&o.stdout)
        .map_err(|e| CniError::new(code::NFTABLES, format!("nft -j output: {e}")))?;
    Ok(parse_chains(family, &v))
}

fn parse_chains(family: &str, v: &Value) -> Vec<String> {
    let items = v.get("nftables").and_then(Value::as_array);
    items
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("chain"))
        .filter(|c| c.get("family").and_then(Value::as_str) == Some(family))
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

fn parse_tagged(family: &str, v: &Value) -> Vec<Tagged> {
    let mut out = Vec::new();
    let items = v.get("nftables").and_then(Value::as_array);
    for item in items.into_iter().flatten() {
        let Some(map) = item.get("map") else { continue };
        let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
        for e in map
            .get("elem")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = e.get(0).and_then(|k| k.get("elem"));
            let (Some(val), Some(tag)) = (
                key.and_then(|k| k.get("val")).and_then(Value::as_str),
                key.and_then(|k| k.get("comment")).and_then(Value::as_str),
            ) else {
                continue;
            };
            out.push(Tagged {
                family: family.to_string(),
                map: name.to_string(),
                key: val.to_string(),
                tag: tag.to_string(),
            });
        }
    }
    out
}

/// GC: removes the given elements (and, for MAC checks, their chains).
pub fn remove_tagged(items: &[Tagged]) -> Result<()> {
    let mut b = Batch::default();
    for t in items {
        if t.family == "bridge" {
            b.line(&format!(
                "delete element {BR_TABLE} {} {{ \"{}\" }}",
                t.map, t.key
            ));
            b.line(&format!("flush chain {BR_TABLE} mac-{}", t.key));
            b.line(&format!("delete chain {BR_TABLE} mac-{}", t.key));
        } else {
            b.line(&format!("delete element {TABLE} {} {{ {} }}", t.map, t.key));
        }
    }
    b.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_parse() {
        let t = tag("net", "abc", "eth0");
        assert!(
            t.starts_with(&tag_prefix("net")) && t.ends_with(":abc/eth0"),
            "{t}"
        );
        let long = "x".repeat(200);
        assert!(tag("net", &long, "eth0").len() <= COMMENT_MAX);
        let v: Value = serde_json::from_str(
            r#"{"nftables":[{"metainfo":{}},{"map":{"family":"inet","name":"masq4","table":"nodus","type":"ipv4_addr","map":"verdict","elem":[[{"elem":{"val":"10.0.0.5","comment":"c1/eth0"}},{"jump":{"target":"net-a"}}],["10.0.0.6",{"accept":null}]]}}]}"#,
        )
        .unwrap();
        let t = parse_tagged("inet", &v);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].key, "10.0.0.5");
        assert_eq!(t[0].tag, "c1/eth0");
    }

    #[test]
    fn parse_chains_of_one_family() {
        let v: Value = serde_json::from_str(
            r#"{"nftables":[{"metainfo":{}},{"table":{"family":"inet","name":"nodus"}},{"chain":{"family":"inet","table":"nodus","name":"postrouting"}},{"chain":{"family":"inet","table":"nodus","name":"net-00ff"}},{"chain":{"family":"bridge","table":"nodus","name":"mac-x"}},{"chain":{"family":"inet","table":"nodus"}}]}"#,
        )
        .unwrap();
        assert_eq!(parse_chains("inet", &v), ["postrouting", "net-00ff"]);
        assert!(parse_chains("inet", &Value::Null).is_empty());
    }
}
