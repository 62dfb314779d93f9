//! Keeping client-supplied endpoints away from the gateway's own network.
//!
//! A UnifiedPush pushkey is a URL the client chose: without a guard, anyone with a Matrix
//! account could make the gateway POST to its loopback or private network. By default only
//! endpoints whose every address is public are used; `allowed_endpoints` (host globs) lets an
//! operator through to hosts of their choice (a distributor on their own network, a test).
//! The check runs before any connection, and again inside the DNS resolver at connect time, so a
//! name cannot resolve to a public address for the check and a private one for the connection.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use sygnal_plugin_api::http::reqwest;
use sygnal_plugin_api::text::glob_match;

/// Host globs the operator allows whatever they resolve to.
#[derive(Debug, Clone, Default)]
pub struct Allowlist(Arc<Vec<String>>);

impl Allowlist {
    /// An allowlist of host globs (`*` any run, `?` one character; case-insensitive).
    pub fn new(globs: Vec<String>) -> Self {
        Allowlist(Arc::new(
            globs.into_iter().map(|g| g.to_ascii_lowercase()).collect(),
        ))
    }

    /// Whether `host` is explicitly allowed.
    pub fn allows(&self, host: &str) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.0.iter().any(|glob| glob_match(glob, &host))
    }
}

/// True for addresses on the public internet; false for loopback, private, link-local,
/// shared, documentation, multicast and other special-purpose ranges.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64: may reach private v4
        || ip.to_ipv4().is_some_and(|v4| !is_public_v4(v4) && ip.segments()[..6] == [0; 6]))
}

/// Why an endpoint may not be used.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not an http(s) URL with a host.
    InvalidUrl(String),
    /// Resolves to (or is) a non-public address, and is not allowlisted.
    NonPublic(String),
    /// The name did not resolve.
    Unresolvable(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::InvalidUrl(why) => write!(f, "invalid endpoint: {why}"),
            Refusal::NonPublic(host) => {
                write!(
                    f,
                    "endpoint host {host} is not public and not in allowed_endpoints"
                )
            }
            Refusal::Unresolvable(why) => write!(f, "endpoint does not resolve: {why}"),
        }
    }
}

/// Checks an endpoint URL before any connection is made.
pub async fn check_endpoint(url: &reqwest::Url, allowlist: &Allowlist) -> Result<(), Refusal> {
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(Refusal::InvalidUrl(format!(
            "scheme {} is not http(s)",
            url.scheme()
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| Refusal::InvalidUrl("no host".to_owned()))?;
    if allowlist.allows(host) {
        return Ok(());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<IpAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|err| Refusal::Unresolvable(err.to_string()))?
            .map(|addr| addr.ip())
            .collect(),
    };
    if addresses.is_empty() {
        return Err(Refusal::Unresolvable(format!("{host} has no addresses")));
    }
    if addresses.iter().all(|ip| is_public(*ip)) {
        Ok(())
    } else {
        Err(Refusal::NonPublic(host.to_owned()))
    }
}

/// A DNS resolver that only hands out public addresses for names not allowlisted.
#[derive(Debug, Clone)]
pub struct PublicOnlyResolver {
    allowlist: Allowlist,
}

impl PublicOnlyResolver {
    /// A resolver honouring `allowlist`.
    pub fn new(allowlist: Allowlist) -> Self {
        PublicOnlyResolver { allowlist }
    }
}

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowlist = self.allowlist.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = allowlist.allows(&host);
            let usable: Vec<SocketAddr> = addresses
                .into_iter()
                .filter(|addr| allowed || is_public(addr.ip()))
                .collect();
            if usable.is_empty() {
                return Err(Box::new(std::io::Error::other(format!(
                    "{host} has no public address"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(usable.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
        ] {
            assert!(
                !is_public(private.parse().unwrap()),
                "{private} should not be public"
            );
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(
                is_public(public.parse().unwrap()),
                "{public} should be public"
            );
        }
    }

    #[test]
    fn allowlist_globs_match_hosts() {
        let allow = Allowlist::new(vec![
            "*.example.org".into(),
            "127.0.0.1".into(),
            "::1".into(),
        ]);
        assert!(allow.allows("push.example.org"));
        assert!(allow.allows("PUSH.Example.org"));
        assert!(!allow.allows("example.org"));
        assert!(allow.allows("127.0.0.1"));
        assert!(allow.allows("[::1]"));
        assert!(!allow.allows("127.0.0.2"));
        assert!(Allowlist::new(vec!["10.0.0.?".into()]).allows("10.0.0.7"));
    }

    #[tokio::test]
    async fn refuses_non_public_endpoints_unless_allowed() {
        let none = Allowlist::default();
        for url in [
            "http://127.0.0.1:1/push",
            "http://10.0.0.1/push",
            "http://[::1]:8080/push",
            "http://localhost:9/push",
        ] {
            let url = reqwest::Url::parse(url).unwrap();
            assert!(
                matches!(
                    check_endpoint(&url, &none).await,
                    Err(Refusal::NonPublic(_))
                ),
                "{url}"
            );
        }
        let url = reqwest::Url::parse("ftp://1.1.1.1/x").unwrap();
        assert!(matches!(
            check_endpoint(&url, &none).await,
            Err(Refusal::InvalidUrl(_))
        ));
        let allow = Allowlist::new(vec!["localhost".into()]);
        let url = reqwest::Url::parse("http://localhost:9/push").unwrap();
        assert_eq!(check_endpoint(&url, &allow).await, Ok(()));
    }
}
