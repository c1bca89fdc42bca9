//! Value types of the configuration and their text forms: durations
//! (`"30s"`), networks (`"127.0.0.0/8"`), the bare-LF policy, host names and
//! smarthost `host:port`. Each parses from the exact text a user writes and
//! prints back to text that parses to the same value.
//!
//! Place in the pipeline: used while loading the configuration at start-up,
//! and by `Cidr::contains` on every RCPT from a client that wants to relay.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::{BareLf, Cidr, Duration, Nul};

/// Duration units, largest first, as (suffix, nanoseconds). `Display` picks
/// the largest unit that divides the value exactly.
const DURATION_UNITS: [(&str, u64); 7] = [
    ("d", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Longest host name accepted (RFC 1035 §2.3.4 limits a domain to 255 octets).
pub const HOST_NAME_BYTES_MAX: usize = 255;

impl Duration {
    /// A duration of whole seconds (how a bare TOML integer is read).
    pub fn from_secs(secs: u64) -> Duration {
        Duration(std::time::Duration::from_secs(secs))
    }
}

impl FromStr for Duration {
    type Err = String;

    /// `"<integer><unit>"` with unit one of d, h, m, s, ms, us, ns; a bare
    /// integer is seconds.
    fn from_str(text: &str) -> Result<Duration, String> {
        let digits_len = text.bytes().take_while(u8::is_ascii_digit).count();
        let (digits, unit) = text.split_at(digits_len);
        if digits.is_empty() {
            return Err(format!("bad duration {text:?}: expected an integer and a unit (250ms, 30s, 5m, 1h, 5d)"));
        }
        let count: u64 = digits.parse().map_err(|_| format!("bad duration {text:?}: number too large"))?;
        let unit_ns = if unit.is_empty() {
            1_000_000_000
        } else {
            match DURATION_UNITS.iter().find(|(suffix, _)| *suffix == unit) {
                Some((_, ns)) => *ns,
                None => {
                    return Err(format!("bad duration {text:?}: unknown unit {unit:?} (use ms, s, m, h or d)"));
                }
            }
        };
        let nanos = count.checked_mul(unit_ns).ok_or_else(|| format!("bad duration {text:?}: too large"))?;
        Ok(Duration(std::time::Duration::from_nanos(nanos)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        for (suffix, unit_ns) in DURATION_UNITS {
            let unit_ns = u128::from(unit_ns);
            if nanos.is_multiple_of(unit_ns) {
                return write!(f, "{}{suffix}", nanos / unit_ns);
            }
        }
        unreachable!("every duration is a whole number of nanoseconds")
    }
}

impl Cidr {
    /// The widest prefix for this address family (32 or 128).
    pub fn prefix_len_max(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    /// Whether `ip` lies in this network. An IPv4-mapped IPv6 client
    /// (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4 peers) matches
    /// the IPv4 networks its IPv4 address is in, and an IPv4 client matches an
    /// IPv6 network written in the mapped form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(client)) => prefix_eq(&net.octets(), &client.octets(), self.prefix_len),
            (IpAddr::V4(net), IpAddr::V6(client)) => match client.to_ipv4_mapped() {
                Some(client) => prefix_eq(&net.octets(), &client.octets(), self.prefix_len),
                None => false,
            },
            (IpAddr::V6(net), IpAddr::V6(client)) => prefix_eq(&net.octets(), &client.octets(), self.prefix_len),
            (IpAddr::V6(net), IpAddr::V4(client)) => {
                prefix_eq(&net.octets(), &client.to_ipv6_mapped().octets(), self.prefix_len)
            }
        }
    }
}

/// Whether the first `prefix_len` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], prefix_len: u8) -> bool {
    debug_assert_eq!(a.len(), b.len());
    debug_assert!(usize::from(prefix_len) <= a.len() * 8);
    let whole_bytes = usize::from(prefix_len / 8);
    let rest_bits = prefix_len % 8;
    if a[..whole_bytes] != b[..whole_bytes] {
        return false;
    }
    if rest_bits == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest_bits);
    (a[whole_bytes] & mask) == (b[whole_bytes] & mask)
}

impl FromStr for Cidr {
    type Err = String;

    /// `"a.b.c.d/n"` or `"v6addr/n"`; a bare address is a host network.
    /// Host bits after the prefix must be zero, so `10.0.0.1/8` (usually a
    /// typing slip) is refused rather than silently widened.
    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("bad network {text:?}: {addr_text:?} is not an IPv4 or IPv6 address"))?;
        let prefix_len_max = match addr {
            IpAddr::V4(_) => 32u8,
            IpAddr::V6(_) => 128u8,
        };
        let prefix_len = match prefix_text {
            None => prefix_len_max,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(len) if len <= prefix_len_max && prefix.bytes().all(|b| b.is_ascii_digit()) => len,
                _ => {
                    return Err(format!("bad network {text:?}: prefix length must be 0 to {prefix_len_max}"));
                }
            },
        };
        let network = network_addr(addr, prefix_len);
        if network != addr {
            return Err(format!(
                "bad network {text:?}: address has bits set after the prefix (did you mean {network}/{prefix_len}?)"
            ));
        }
        Ok(Cidr { addr, prefix_len })
    }
}

/// `addr` with every bit after `prefix_len` cleared.
fn network_addr(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl BareLf {
    /// The configuration spelling: `"reject"` or `"normalize"`.
    pub fn as_str(self) -> &'static str {
        match self {
            BareLf::Reject => "reject",
            BareLf::Normalize => "normalize",
        }
    }
}

impl FromStr for BareLf {
    type Err = String;

    fn from_str(text: &str) -> Result<BareLf, String> {
        match text {
            "reject" => Ok(BareLf::Reject),
            "normalize" => Ok(BareLf::Normalize),
            _ => Err(format!("must be \"reject\" or \"normalize\", not {text:?}")),
        }
    }
}

impl fmt::Display for BareLf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Nul {
    /// The configuration spelling: `"reject"` or `"strip"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Nul::Reject => "reject",
            Nul::Strip => "strip",
        }
    }
}

impl FromStr for Nul {
    type Err = String;

    fn from_str(text: &str) -> Result<Nul, String> {
        match text {
            "reject" => Ok(Nul::Reject),
            "strip" => Ok(Nul::Strip),
            _ => Err(format!("must be \"reject\" or \"strip\", not {text:?}")),
        }
    }
}

impl fmt::Display for Nul {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a host or domain name as used in greetings, EHLO and domain lists:
/// dot-separated labels of letters, digits, hyphens and underscores, one
/// trailing dot allowed, or an address literal such as `[192.0.2.1]`.
pub fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_string());
    }
    if name.len() > HOST_NAME_BYTES_MAX {
        return Err(format!("longer than {HOST_NAME_BYTES_MAX} bytes"));
    }
    if let Some(literal) = name.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
        let literal = literal.strip_prefix("IPv6:").unwrap_or(literal);
        return match literal.parse::<IpAddr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("bad address literal {name:?}")),
        };
    }
    let labels = name.strip_suffix('.').unwrap_or(name);
    for label in labels.split('.') {
        let label_ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !label_ok {
            return Err(format!("{name:?} is not a host name (letters, digits, '-', '_' in dot-separated labels)"));
        }
    }
    Ok(())
}

/// Checks a next hop written `host:port`: a host name, an IPv4 address or a
/// bracketed IPv6 address, and a port from 1 to 65535.
pub fn check_smarthost(text: &str) -> Result<(), String> {
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("bad smarthost {text:?}: expected \"host:port\""));
    };
    match port.parse::<u16>() {
        Ok(port) if port != 0 => {}
        _ => return Err(format!("bad smarthost {text:?}: port must be 1 to 65535")),
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
        return match v6.parse::<Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("bad smarthost {text:?}: {v6:?} is not an IPv6 address")),
        };
    }
    if host.contains(':') {
        return Err(format!("bad smarthost {text:?}: write an IPv6 address in brackets, \"[::1]:25\""));
    }
    check_host_name(host).map_err(|reason| format!("bad smarthost {text:?}: {reason}"))
}
