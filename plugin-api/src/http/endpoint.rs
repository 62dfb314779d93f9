//! Keeping client-given endpoints away from the gateway's own network.
//!
//! A UnifiedPush pushkey or a WebPush subscription endpoint is a URL the client chose: without a
//! guard, anyone with a Matrix account could make the gateway POST to its loopback or private
//! network. [`EndpointGuard`] lets through only endpoints whose every address is public, unless
//! the operator's `allowed_endpoints` (host globs) lets a host through whatever it resolves to.
//! The check runs before any connection ([`EndpointGuard::check`]) and again inside the DNS
//! resolver the HTTP client connects with ([`EndpointGuard::resolver`]), so a name cannot
//! resolve to a public address for the check and a private one for the connection.
//!
//! Only a definitive answer condemns an endpoint: a name that does not exist (NXDOMAIN) may get
//! the pushkey rejected, while a resolver failure (timeout, SERVFAIL, no nameserver reachable) is
//! [`Refusal::Unresolved`], a temporary failure to retry, never a reason to reject.

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::{reqwest, retry_untraced, Attempt, RetryPolicy};
use crate::text::glob_match;
use crate::PushError;

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

    /// Whether no host is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// True for addresses on the public internet; false for loopback, private, link-local,
/// shared, documentation, multicast and other special-purpose ranges, and for IPv6 addresses
/// that embed or translate to a non-public IPv4 address (mapped, compatible, 6to4, Teredo) or
/// go through a NAT64 gateway that may reach one.
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
    let segments = ip.segments();
    let [first, second, ..] = segments;
    if ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (first == 0x2001 && second == 0x0db8) // documentation
        // NAT64, well-known (64:ff9b::/96) and local-use (64:ff9b:1::/48) prefixes: the
        // gateway's NAT64 may translate them to any IPv4 address, private ones included.
        || (first == 0x0064 && second == 0xff9b)
    {
        return false;
    }
    // IPv4-compatible (::a.b.c.d, deprecated): judged by the IPv4 address.
    if segments[..6] == [0; 6] {
        return ip.to_ipv4().is_some_and(is_public_v4);
    }
    // 6to4 (2002::/16) carries the IPv4 address of its relay in bits 16-47.
    if first == 0x2002 {
        return is_public_v4(v4_from(segments[1], segments[2]));
    }
    // Teredo (2001::/32) carries the server's IPv4 address in bits 32-63, and the client's,
    // inverted, in the last 32 bits: both must be public.
    if first == 0x2001 && second == 0 {
        let server = v4_from(segments[2], segments[3]);
        let client = v4_from(!segments[6], !segments[7]);
        return is_public_v4(server) && is_public_v4(client);
    }
    true
}

fn v4_from(high: u16, low: u16) -> Ipv4Addr {
    let [a, b] = high.to_be_bytes();
    let [c, d] = low.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// Why an endpoint may not be used now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not an http(s) URL with a host. Definitive.
    InvalidUrl(String),
    /// Resolves to (or is) a non-public address, and is not allowlisted. Definitive.
    NonPublic(String),
    /// The name does not exist (NXDOMAIN). Definitive.
    NoSuchHost(String),
    /// The resolver failed (timeout, SERVFAIL, unreachable nameserver, a name without
    /// addresses): try again later, never reject the pushkey for it.
    Unresolved(String),
}

impl Refusal {
    /// Whether the endpoint is unusable for good (the pushkey may be rejected), rather than
    /// unresolved for now.
    pub fn is_definitive(&self) -> bool {
        !matches!(self, Refusal::Unresolved(_))
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::InvalidUrl(why) => write!(f, "invalid endpoint: {why}"),
            Refusal::NonPublic(host) => write!(
                f,
                "endpoint host {host} is not public and not in allowed_endpoints"
            ),
            Refusal::NoSuchHost(host) => write!(f, "endpoint host {host} does not exist"),
            Refusal::Unresolved(why) => write!(f, "endpoint host did not resolve: {why}"),
        }
    }
}

/// Decides which client-given endpoints may be contacted, and resolves their names.
#[derive(Clone)]
pub struct EndpointGuard {
    allowlist: Allowlist,
    resolver: Arc<TokioResolver>,
}

impl std::fmt::Debug for EndpointGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointGuard")
            .field("allowlist", &self.allowlist)
            .finish_non_exhaustive()
    }
}

impl EndpointGuard {
    /// A guard resolving through the system's DNS configuration (`/etc/resolv.conf`, and
    /// `/etc/hosts`). Without a readable configuration, only `/etc/hosts` names resolve (and
    /// a warning is logged): lookups then fail as temporary, never as a rejection.
    pub fn new(allowlist: Allowlist) -> Self {
        let resolver = match TokioResolver::builder_tokio() {
            Ok(builder) => builder.build(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the system DNS configuration; only /etc/hosts names will resolve");
                TokioResolver::builder_with_config(
                    ResolverConfig::new(),
                    TokioConnectionProvider::default(),
                )
                .build()
            }
        };
        EndpointGuard {
            allowlist,
            resolver: Arc::new(resolver),
        }
    }

    /// A guard asking only `nameservers` (plain DNS over UDP, then TCP), waiting at most
    /// `timeout` for each answer. For tests and operators with their own resolvers.
    pub fn with_nameservers(
        allowlist: Allowlist,
        nameservers: &[SocketAddr],
        timeout: Duration,
    ) -> Self {
        let mut config = ResolverConfig::new();
        for address in nameservers {
            for protocol in [Protocol::Udp, Protocol::Tcp] {
                let mut server = NameServerConfig::new(*address, protocol);
                server.trust_negative_responses = true;
                config.add_name_server(server);
            }
        }
        let mut options = ResolverOpts::default();
        options.timeout = timeout;
        options.attempts = 1;
        let mut builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        *builder.options_mut() = options;
        EndpointGuard {
            allowlist,
            resolver: Arc::new(builder.build()),
        }
    }

    /// The operator's allowlist.
    pub fn allowlist(&self) -> &Allowlist {
        &self.allowlist
    }

    /// Checks an endpoint URL before any connection is made.
    pub async fn check(&self, url: &reqwest::Url) -> Result<(), Refusal> {
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(Refusal::InvalidUrl(format!(
                "scheme {} is not http(s)",
                url.scheme()
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| Refusal::InvalidUrl("no host".to_owned()))?;
        if self.allowlist.allows(host) {
            return Ok(());
        }
        let addresses = self.addresses(host).await?;
        if addresses.iter().all(|ip| is_public(*ip)) {
            Ok(())
        } else {
            Err(Refusal::NonPublic(host.to_owned()))
        }
    }

    /// [`check`](Self::check), retrying resolver failures with `policy`: `Ok(Ok(()))` to go
    /// ahead, `Ok(Err(refusal))` for a definitive refusal, `Err` (temporary) when the name
    /// stayed unresolved.
    pub async fn check_retrying(
        &self,
        url: &reqwest::Url,
        policy: &RetryPolicy,
    ) -> Result<Result<(), Refusal>, PushError> {
        retry_untraced(policy, |_| async {
            match self.check(url).await {
                Err(Refusal::Unresolved(why)) => Ok(Attempt::Retry {
                    reason: format!("endpoint host did not resolve: {why}"),
                    retry_after: None,
                }),
                decided => Ok(Attempt::Done(decided)),
            }
        })
        .await
    }

    /// The addresses `host` (a name or an address literal) stands for.
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, Refusal> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let lookup = self
            .resolver
            .lookup_ip(bare)
            .await
            .map_err(|err| classify(bare, &err))?;
        let addresses: Vec<IpAddr> = lookup.iter().collect();
        if addresses.is_empty() {
            return Err(Refusal::Unresolved(format!("{bare} has no addresses")));
        }
        Ok(addresses)
    }

    /// A DNS resolver for the HTTP client (`ClientBuilder::dns_resolver`) that hands out only
    /// the addresses this guard allows.
    pub fn resolver(&self) -> Arc<dyn Resolve> {
        Arc::new(self.clone())
    }

    /// The HTTP client for endpoints this guard checks: [`build_client`](super::build_client)'s,
    /// connecting only through [`EndpointGuard::resolver`], so the check holds again at connect
    /// time whatever DNS answers by then.
    pub fn client(
        &self,
        host: &crate::HostInfo,
        options: &super::ClientOptions,
    ) -> Result<reqwest::Client, String> {
        super::client_builder(host, options)?
            .dns_resolver(self.resolver())
            .build()
            .map_err(|err| format!("cannot build the HTTP client: {err}"))
    }
}

/// Tells a name that does not exist from a resolver that failed.
fn classify(host: &str, err: &ResolveError) -> Refusal {
    if err.is_nx_domain() {
        Refusal::NoSuchHost(host.to_owned())
    } else {
        Refusal::Unresolved(err.to_string())
    }
}

impl Resolve for EndpointGuard {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let host = name.as_str();
            let allowed = guard.allowlist.allows(host);
            let addresses = guard
                .addresses(host)
                .await
                .map_err(|refusal| Box::new(std::io::Error::other(refusal.to_string())))?;
            let usable: Vec<SocketAddr> = addresses
                .into_iter()
                .filter(|ip| allowed || is_public(*ip))
                .map(|ip| SocketAddr::new(ip, 0))
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
    use tokio::net::UdpSocket;

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
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::808:808", // NAT64, even of a public address: the translator decides
            "64:ff9b:1::a00:1", // local-use NAT64
            "64:ff9b:1:ffff::1",
            "2001:db8::1",
            "2002:7f00:1::",                // 6to4 of 127.0.0.1
            "2002:a00:1::1",                // 6to4 of 10.0.0.1
            "2002:c0a8:101::1",             // 6to4 of 192.168.1.1
            "2001:0:7f00:1::1",             // Teredo, server 127.0.0.1
            "2001:0:808:808:0:0:f5ff:fffe", // Teredo, client 10.0.0.1 (inverted)
        ] {
            assert!(
                !is_public(private.parse().unwrap()),
                "{private} should not be public"
            );
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "2002:808:808::1",              // 6to4 of 8.8.8.8
            "2001:0:808:808:0:0:f7f7:f7f7", // Teredo, both ends 8.8.8.8
            "2001:4860:4860::8888",         // not Teredo (2001::/32 only)
        ] {
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

    /// What the fake DNS server answers.
    #[derive(Clone, Copy)]
    enum Answer {
        /// An A record (and no AAAA).
        Address([u8; 4]),
        /// RCODE 3: the name does not exist.
        NxDomain,
        /// RCODE 2: the resolver failed.
        ServFail,
        /// Nothing at all.
        Silence,
    }

    /// A DNS server on loopback answering every query with `answer` (UDP only).
    async fn fake_dns(answer: Answer) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
                if let Some(reply) = dns_reply(&buf[..len], answer) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        (address, task)
    }

    /// The reply to `query` (one question): header, the question echoed, maybe one A record.
    fn dns_reply(query: &[u8], answer: Answer) -> Option<Vec<u8>> {
        if query.len() < 12 {
            return None;
        }
        // The question: labels up to the root, then type and class.
        let mut end = 12;
        while *query.get(end)? != 0 {
            end += 1 + usize::from(query[end]);
        }
        let question = query.get(12..end + 5)?;
        let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
        let rcode = match answer {
            Answer::Silence => return None,
            Answer::NxDomain => 3,
            Answer::ServFail => 2,
            Answer::Address(_) => 0,
        };
        let record = match answer {
            Answer::Address(ip) if qtype == 1 => Some(ip),
            _ => None,
        };
        let mut reply = Vec::with_capacity(64);
        reply.extend_from_slice(&query[..2]); // id
        reply.extend_from_slice(&[0x81 | (query[2] & 0x01), 0x80 | rcode]); // QR, RD, RA
        reply.extend_from_slice(&[0, 1, 0, u8::from(record.is_some()), 0, 0, 0, 0]);
        reply.extend_from_slice(question);
        if let Some(ip) = record {
            // Name pointer to the question, type A, class IN, TTL 60, 4 bytes.
            reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            reply.extend_from_slice(&ip);
        }
        Some(reply)
    }

    async fn check_against(answer: Answer, url: &str) -> Result<(), Refusal> {
        let (dns, task) = fake_dns(answer).await;
        let guard = EndpointGuard::with_nameservers(
            Allowlist::default(),
            &[dns],
            Duration::from_millis(300),
        );
        let result = guard.check(&reqwest::Url::parse(url).unwrap()).await;
        task.abort();
        result
    }

    #[tokio::test]
    async fn only_nxdomain_condemns_a_name() {
        let nx = check_against(Answer::NxDomain, "https://gone.example.org/push").await;
        assert_eq!(nx, Err(Refusal::NoSuchHost("gone.example.org".into())));
        assert!(nx.unwrap_err().is_definitive());
        for answer in [Answer::ServFail, Answer::Silence] {
            let failed = check_against(answer, "https://push.example.org/x").await;
            match failed {
                Err(refusal @ Refusal::Unresolved(_)) => assert!(!refusal.is_definitive()),
                other => panic!("expected a temporary failure, got {other:?}"),
            }
        }
        // A name with a public address passes; one resolving to a private address does not.
        let public =
            check_against(Answer::Address([8, 8, 8, 8]), "https://push.example.org/").await;
        assert_eq!(public, Ok(()));
        let private =
            check_against(Answer::Address([10, 0, 0, 1]), "https://in.example.org/").await;
        assert_eq!(private, Err(Refusal::NonPublic("in.example.org".into())));
    }

    #[tokio::test]
    async fn no_reachable_nameserver_is_temporary() {
        // Bound then dropped: nothing answers there.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .unwrap();
        let guard = EndpointGuard::with_nameservers(
            Allowlist::default(),
            &[port],
            Duration::from_millis(300),
        );
        let url = reqwest::Url::parse("https://push.example.org/").unwrap();
        assert!(matches!(
            guard.check(&url).await,
            Err(Refusal::Unresolved(_))
        ));
        // Retried per the policy, then a temporary error: never a definitive refusal.
        let policy = crate::http::RetrySettings {
            max_tries: 2,
            retry_delay_base: 0.0,
        }
        .policy()
        .unwrap();
        let err = guard.check_retrying(&url, &policy).await.unwrap_err();
        assert!(err.temporary && err.message.contains("2 tries"), "{err}");
    }

    #[tokio::test]
    async fn the_resolver_hands_out_only_allowed_addresses() {
        let (dns, task) = fake_dns(Answer::Address([127, 0, 0, 1])).await;
        let timeout = Duration::from_millis(300);
        let strict = EndpointGuard::with_nameservers(Allowlist::default(), &[dns], timeout);
        let name = || "up.example.org".parse::<Name>().unwrap();
        assert!(strict.resolve(name()).await.is_err());
        let allowing = EndpointGuard::with_nameservers(
            Allowlist::new(vec!["*.example.org".into()]),
            &[dns],
            timeout,
        );
        let addresses: Vec<SocketAddr> = allowing.resolve(name()).await.unwrap().collect();
        assert_eq!(addresses, vec!["127.0.0.1:0".parse().unwrap()]);
        task.abort();
    }

    #[tokio::test]
    async fn refuses_non_public_endpoints_unless_allowed() {
        let none = EndpointGuard::new(Allowlist::default());
        for url in [
            "http://127.0.0.1:1/push",
            "http://10.0.0.1/push",
            "http://[::1]:8080/push",
            "http://[2002:7f00:1::]/push",
            "http://[64:ff9b:1::a00:1]/push",
            "http://localhost:9/push",
        ] {
            let url = reqwest::Url::parse(url).unwrap();
            assert!(
                matches!(none.check(&url).await, Err(Refusal::NonPublic(_))),
                "{url}"
            );
        }
        let url = reqwest::Url::parse("ftp://1.1.1.1/x").unwrap();
        assert!(matches!(
            none.check(&url).await,
            Err(Refusal::InvalidUrl(_))
        ));
        let allow = EndpointGuard::new(Allowlist::new(vec!["localhost".into()]));
        let url = reqwest::Url::parse("http://localhost:9/push").unwrap();
        assert_eq!(allow.check(&url).await, Ok(()));
    }
}
