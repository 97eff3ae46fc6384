//! Who the client is behind proxies, and the `X-Forwarded-For` sent upstream: one rule for
//! both transports.
//!
//! Without trusted proxies (`PAKE_TRUSTED_PROXIES` unset) the client is the connection's
//! peer, and `X-Forwarded-For` is the client's list with the peer appended, as proxies have
//! always done. With trusted proxies, as nginx's `real_ip_recursive` and Envoy's trusted
//! hops do: when the peer is one of them, the client is the right-most address of the
//! list that is not (the left-most when all are); when the peer is not, whatever list it
//! sent is its own invention and is dropped. That client address keys the per-address
//! limits (anonymous rate limits, the token endpoint's).

use std::net::{IpAddr, SocketAddr};

/// Networks whose `X-Forwarded-For` is believed: load balancers in front of the gateway.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    networks: Vec<ipnet::IpNet>,
}

impl TrustedProxies {
    /// Parses a comma-separated list of CIDRs (`10.0.0.0/8, fd00::/8`); a bare address
    /// is a network of one.
    pub fn parse(text: &str) -> Result<TrustedProxies, String> {
        let mut networks = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            let network = match entry.parse::<ipnet::IpNet>() {
                Ok(network) => network,
                Err(_) => match entry.parse::<IpAddr>() {
                    Ok(address) => ipnet::IpNet::from(address),
                    Err(_) => return Err(format!("{entry:?} is not a CIDR (such as 10.0.0.0/8) or an address")),
                },
            };
            networks.push(network.trunc());
        }
        Ok(TrustedProxies { networks })
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.networks.iter().any(|network| network.contains(&address))
    }

    /// The caller of a request from `peer` with these `X-Forwarded-For` lines.
    pub fn caller<'v>(&self, peer: SocketAddr, forwarded_for: impl Iterator<Item = &'v [u8]>) -> Caller {
        if self.networks.is_empty() {
            return Caller { peer, client: peer, keep_list: true };
        }
        if !self.trusts(peer.ip()) {
            return Caller { peer, client: peer, keep_list: false };
        }
        let listed: Vec<&[u8]> = forwarded_for.flat_map(entries).collect();
        let mut client = peer.ip();
        for entry in listed.iter().rev() {
            // An entry that is not an address ends the walk: what is left of it cannot be
            // believed, and the last trusted hop's view stands.
            let Some(address) = address(entry) else { break };
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        Caller { peer, client: SocketAddr::new(client, 0), keep_list: true }
    }
}

/// Who sent a request, as the gateway judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The connection's peer.
    pub peer: SocketAddr,
    /// The client the per-address limits count (the peer, or the address a trusted proxy
    /// reports; its port is then 0).
    pub client: SocketAddr,
    /// Whether the `X-Forwarded-For` the peer sent is passed on.
    keep_list: bool,
}

impl Caller {
    /// Appends the `X-Forwarded-For` value sent upstream: the addresses of the lines the
    /// peer sent (when they are passed on), in order and empty ones skipped, then the
    /// peer's own.
    pub fn forwarded_for<'v>(&self, out: &mut Vec<u8>, previous: impl Iterator<Item = &'v [u8]>) {
        if self.keep_list {
            for value in previous.map(<[u8]>::trim_ascii).filter(|value| !value.is_empty()) {
                out.extend_from_slice(value);
                out.extend_from_slice(b", ");
            }
        }
        let mut text = [0u8; 48];
        let length = crate::headers::write_ip(&mut text, self.peer.ip());
        out.extend_from_slice(&text[..length]);
    }
}

/// The comma-separated entries of one `X-Forwarded-For` line, trimmed.
fn entries(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|entry| !entry.is_empty())
}

/// An entry's address: `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`, with or without a port.
fn address(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    let address = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|socket| socket.ip()))
        .or_else(|| text.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(canonical(address))
}

/// IPv4-mapped IPv6 addresses (from dual-stack listeners) as the IPv4 ones they are.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(text: &str) -> SocketAddr {
        SocketAddr::new(text.parse().unwrap(), 4000)
    }

    fn written(caller: &Caller, lines: &[&str]) -> String {
        let mut out = Vec::new();
        caller.forwarded_for(&mut out, lines.iter().map(|line| line.as_bytes()));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_and_the_list_is_extended() {
        let none = TrustedProxies::default();
        let lines = ["203.0.113.9", " 198.51.100.1, 192.0.2.7 ", ""];
        let caller = none.caller(peer("10.1.2.3"), lines.iter().map(|l| l.as_bytes()));
        assert_eq!(caller.client, peer("10.1.2.3"));
        assert_eq!(written(&caller, &lines), "203.0.113.9, 198.51.100.1, 192.0.2.7, 10.1.2.3");
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_address_is_the_client() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1, fd00::/8").unwrap();
        let caller = |from: &str, lines: &[&str]| trusted.caller(peer(from), lines.iter().map(|l| l.as_bytes()));
        let client = |from: &str, lines: &[&str]| caller(from, lines).client.ip().to_string();
        // The load balancer reports the client; a spoofed entry left of it does not count.
        assert_eq!(client("10.0.0.5", &["6.6.6.6, 203.0.113.9"]), "203.0.113.9");
        assert_eq!(client("10.0.0.5", &["6.6.6.6", "203.0.113.9, 10.2.2.2"]), "203.0.113.9");
        assert_eq!(client("10.0.0.5", &["[2001:db8::7]:443, 192.168.1.1"]), "2001:db8::7");
        assert_eq!(client("10.0.0.5", &["203.0.113.9:5555"]), "203.0.113.9");
        // All trusted: the left-most; none at all, or garbage next to the proxy: the peer.
        assert_eq!(client("10.0.0.5", &["10.9.9.9, 10.8.8.8"]), "10.9.9.9");
        assert_eq!(client("10.0.0.5", &[]), "10.0.0.5");
        assert_eq!(client("10.0.0.5", &["203.0.113.9, unknown"]), "10.0.0.5");
        // IPv4 seen through a dual-stack socket.
        assert_eq!(client("::ffff:10.0.0.5", &["203.0.113.9"]), "203.0.113.9");
        // An untrusted peer is the client, and its list is not passed on.
        let direct = caller("203.0.113.50", &["10.0.0.1"]);
        assert_eq!(direct.client, peer("203.0.113.50"));
        assert_eq!(written(&direct, &["10.0.0.1"]), "203.0.113.50");
        assert_eq!(written(&caller("10.0.0.5", &["203.0.113.9"]), &["203.0.113.9"]), "203.0.113.9, 10.0.0.5");
    }

    #[test]
    fn bad_networks_are_named() {
        let error = TrustedProxies::parse("10.0.0.0/8, 10.0.0.0/99").unwrap_err();
        assert!(error.contains("10.0.0.0/99"), "{error}");
        assert!(TrustedProxies::parse("proxy.internal").is_err());
        assert!(TrustedProxies::parse("").unwrap().is_empty());
    }
}
