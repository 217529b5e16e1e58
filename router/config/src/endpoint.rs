//! WireGuard endpoints as people write them: `IPv4:port`, `[IPv6]:port` or `dns-name:port`.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Where a peer is dialled. DNS names are kept as written and resolved by the router.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// A literal address and port.
    Addr(SocketAddr),
    /// A DNS name and port, resolved at run time.
    Name { host: String, port: u16 },
}

impl Endpoint {
    /// The UDP port peers dial.
    pub fn port(&self) -> u16 {
        match self {
            Endpoint::Addr(a) => a.port(),
            Endpoint::Name { port, .. } => *port,
        }
    }

    /// The same host with another port.
    pub fn with_port(&self, port: u16) -> Endpoint {
        match self {
            Endpoint::Addr(a) => Endpoint::Addr(SocketAddr::new(a.ip(), port)),
            Endpoint::Name { host, .. } => Endpoint::Name {
                host: host.clone(),
                port,
            },
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // SocketAddr's Display brackets IPv6 addresses.
            Endpoint::Addr(a) => write!(f, "{a}"),
            Endpoint::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

const VALID: &str = "use IPv4:port, [IPv6]:port or dns-name:port, e.g. 198.51.100.1:51820";

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(format!("endpoint is empty; {VALID}"));
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (host, port) = rest
                .split_once("]:")
                .ok_or_else(|| format!("{s:?} has no port after the bracketed address; {VALID}"))?;
            let ip: Ipv6Addr = host
                .parse()
                .map_err(|_| format!("{host:?} in {s:?} is not an IPv6 address; {VALID}"))?;
            let port = parse_port(port, s)?;
            return Ok(Endpoint::Addr(SocketAddr::new(IpAddr::V6(ip), port)));
        }
        if s.matches(':').count() > 1 {
            return Err(format!(
                "{s:?} looks like an IPv6 address without brackets; write [address]:port, e.g. [2001:db8::1]:51820"
            ));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} has no port; {VALID}"))?;
        let port = parse_port(port, s)?;
        if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            return Ok(Endpoint::Addr(SocketAddr::new(IpAddr::V4(ip), port)));
        }
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!(
                "{host:?} in {s:?} is not a valid IPv4 address; {VALID}"
            ));
        }
        check_dns_name(host).map_err(|why| format!("{host:?} in {s:?} {why}; {VALID}"))?;
        Ok(Endpoint::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

fn parse_port(port: &str, whole: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!(
            "port {port:?} in {whole:?} is not a UDP port; use a number from 1 to 65535"
        )),
    }
}

/// RFC 1123 host name: labels of letters, digits and '-', not starting or ending with '-'.
fn check_dns_name(host: &str) -> Result<(), &'static str> {
    if host.is_empty() || host.len() > 253 {
        return Err("is not a DNS name (1 to 253 characters)");
    }
    for label in host.trim_end_matches('.').split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("is not a DNS name (labels of letters, digits and '-')");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            "198.51.100.1:51820"
                .parse::<Endpoint>()
                .unwrap()
                .to_string(),
            "198.51.100.1:51820"
        );
        assert_eq!(
            "[2001:db8:5::1]:51820"
                .parse::<Endpoint>()
                .unwrap()
                .to_string(),
            "[2001:db8:5::1]:51820"
        );
        let e: Endpoint = "VPN.Example.com:4500".parse().unwrap();
        assert_eq!(e.to_string(), "vpn.example.com:4500");
        assert_eq!(e.with_port(4501).port(), 4501);
    }

    #[test]
    fn refuses_bad_forms_with_a_hint() {
        let err = "2001:db8::1:51820".parse::<Endpoint>().unwrap_err();
        assert!(err.contains("without brackets"), "{err}");
        assert!("1.2.3.4"
            .parse::<Endpoint>()
            .unwrap_err()
            .contains("no port"));
        assert!("1.2.3.4:0"
            .parse::<Endpoint>()
            .unwrap_err()
            .contains("1 to 65535"));
        assert!("1.2.3.4:70000".parse::<Endpoint>().is_err());
        assert!("1.2.3.999:5"
            .parse::<Endpoint>()
            .unwrap_err()
            .contains("IPv4"));
        assert!("bad_host:5"
            .parse::<Endpoint>()
            .unwrap_err()
            .contains("DNS"));
        assert!("[::1]".parse::<Endpoint>().is_err());
    }
}
