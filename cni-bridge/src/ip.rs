//! Small IP helpers: a CIDR type with the arithmetic IPAM needs.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address with a prefix length, e.g. `10.22.0.5/16` (host bits kept as given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

pub fn max_prefix(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// The address as an integer in the low bits of a u128.
pub fn to_u128(addr: &IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(*a) as u128,
        IpAddr::V6(a) => u128::from(*a),
    }
}

/// Inverse of [`to_u128`] for the family of `like`.
pub fn from_u128(v: u128, like: &IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// The next address (wrapping within the family).
pub fn next_ip(addr: &IpAddr) -> IpAddr {
    let bits = max_prefix(addr) as u32;
    let mask = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    from_u128(to_u128(addr).wrapping_add(1) & mask, addr)
}

/// Parses an address, accepting an IPv4-mapped IPv6 form as IPv4 (as host-local does).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let ip = IpAddr::from_str(s.trim()).ok()?;
    Some(canonical(ip))
}

pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

impl IpNet {
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        (prefix <= max_prefix(&addr)).then_some(IpNet { addr, prefix })
    }

    fn host_mask(&self) -> u128 {
        let bits = max_prefix(&self.addr) as u32 - self.prefix as u32;
        if bits >= 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        }
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        from_u128(to_u128(&self.addr) & !self.host_mask(), &self.addr)
    }

    /// The last address of the network (the IPv4 broadcast address).
    pub fn last(&self) -> IpAddr {
        from_u128(
            (to_u128(&self.addr) & !self.host_mask()) | self.host_mask(),
            &self.addr,
        )
    }

    /// This network with host bits cleared.
    pub fn trunc(&self) -> IpNet {
        IpNet {
            addr: self.network(),
            prefix: self.prefix,
        }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && (to_u128(ip) & !self.host_mask()) == (to_u128(&self.addr) & !self.host_mask())
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Netmask in dotted/colon form (for the 0.4.0 result the address carries the prefix).
    pub fn default_route(v4: bool) -> IpNet {
        if v4 {
            IpNet {
                addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                prefix: 0,
            }
        } else {
            IpNet {
                addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                prefix: 0,
            }
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (a, p) = s.trim().split_once('/').ok_or(())?;
        let addr = IpAddr::from_str(a).map_err(|_| ())?;
        let mut prefix: u8 = p.parse().map_err(|_| ())?;
        let addr = match (addr, canonical(addr)) {
            (IpAddr::V6(_), IpAddr::V4(v4)) => {
                // ::ffff:a.b.c.d/120 style: keep the IPv4 part and its prefix.
                prefix = prefix.checked_sub(96).ok_or(())?;
                IpAddr::V4(v4)
            }
            (a, _) => a,
        };
        IpNet::new(addr, prefix).ok_or(())
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (or `-` separated).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// 64-bit FNV-1a: a stable short name for a (container ID, ifname) pair.
pub fn fnv1a64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for (i, p) in parts.iter().enumerate() {
        // A NUL byte between parts keeps ("ab", "c") and ("a", "bc") apart.
        let sep: &[u8] = if i > 0 { &[0] } else { &[] };
        for &b in sep.iter().chain(p.as_bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// Random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let r = unsafe {
            libc::getrandom(
                buf[filled..].as_mut_ptr() as *mut libc::c_void,
                N - filled,
                0,
            )
        };
        if r > 0 {
            filled += r as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    buf
}

/// A random locally administered unicast MAC address.
pub fn random_mac() -> [u8; 6] {
    let mut mac = random_bytes::<6>();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_math() {
        let n: IpNet = "10.1.2.3/24".parse().unwrap();
        assert_eq!(n.network().to_string(), "10.1.2.0");
        assert_eq!(n.last().to_string(), "10.1.2.255");
        assert!(n.contains(&"10.1.2.200".parse().unwrap()));
        assert!(!n.contains(&"10.1.3.1".parse().unwrap()));
        let v6: IpNet = "fd00::5/64".parse().unwrap();
        assert_eq!(v6.last().to_string(), "fd00::ffff:ffff:ffff:ffff");
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("10.0.0.0".parse::<IpNet>().is_err());
        assert_eq!(
            next_ip(&"10.0.0.255".parse().unwrap()).to_string(),
            "10.0.1.0"
        );
    }

    #[test]
    fn mac_roundtrip() {
        let m = parse_mac("0A:58:0a:f4:00:07").unwrap();
        assert_eq!(format_mac(&m), "0a:58:0a:f4:00:07");
        assert!(parse_mac("0a:58:0a").is_none());
        let r = random_mac();
        assert_eq!(r[0] & 0x03, 0x02);
    }
}
