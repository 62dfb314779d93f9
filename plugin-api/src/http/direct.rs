//! [`DirectClient`]: the client for requests sent per notification, with the shared TLS and
//! proxy setup and nothing else around it (HTTP/2 through hyper's pool, HTTP/1.1 through
//! connections the request drives itself: the `h1` module).
//!
//! reqwest wraps every request in layers a pushkin's hot path does not use: a redirect policy
//! that turns the URI back into a string and re-parses it as a URL (redirects are off), a retry
//! layer that clones the request, headers and body in case it is retried (pushkins retry
//! themselves, with backoff), and a URL-to-URI round trip. Under the FCM benchmark these cost
//! about a seventh of the gateway's CPU per notification (BENCHMARKS.md). Requests that are not
//! per notification (an OAuth token fetch) can keep [`build_client`](super::build_client).

use super::h1::{H1Pool, H1Route, Sent};
use super::tcp::{Tcp, TcpConnector};
use super::{error_chain, tls_config, ClientOptions};
use crate::HostInfo;
use bytes::Bytes;
use http::header::{HeaderValue, USER_AGENT};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// A TCP connection to the upstream, or a tunnel to it through the proxy (itself plain or TLS).
type Hop = MaybeHttpsStream<TokioIo<Tcp>>;

/// A connection to the upstream: TLS or not, over a [`Hop`].
pub(super) type Stream = MaybeHttpsStream<Hop>;

/// A pooled HTTP/1.1 and HTTP/2 client (HTTP/2 when the upstream's TLS offers it, or only
/// HTTP/2 with [`ClientOptions::http2_only`]) honouring the host's proxy, trust roots and user
/// agent, as [`build_client`](super::build_client) does. HTTP/2 goes through hyper's pool,
/// HTTP/1.1 through connections each request drives itself (see the `h1` module). Cloning
/// shares the pools.
#[derive(Clone)]
pub struct DirectClient {
    client: Client<Connector, Full<Bytes>>,
    /// HTTP/1.1 origins are sent to here; `None` when all requests are HTTP/2.
    h1: Option<Arc<H1Pool>>,
    connector: Connector,
    request_timeout: Duration,
    user_agent: Option<HeaderValue>,
}

impl std::fmt::Debug for DirectClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectClient")
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl DirectClient {
    /// A client for `host`'s proxy and trust roots, with `options`' limits.
    pub fn new(host: &HostInfo, options: &ClientOptions) -> Result<DirectClient, String> {
        let tls = Arc::new(tls_config(host, options)?);
        let connector = |to_host| -> Result<Connector, String> {
            let route = match &host.proxy {
                None => Route::Direct(TcpConnector::new(to_host)),
                Some(proxy) => Route::Tunnel(Box::new(tunnel(host, options, proxy, to_host)?)),
            };
            Ok(Connector(Arc::new(ConnectorParts {
                tls: HttpsConnector::from((route, Arc::clone(&tls))),
                timeout: options.connect_timeout,
            })))
        };
        let h1 = (!options.http2_only).then(|| Arc::new(H1Pool::new(options.max_idle_per_host)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(600))
            .pool_max_idle_per_host(options.max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if options.http2_only {
            builder.http2_only(true).http2_adaptive_window(true);
        }
        let user_agent = match host.user_agent.as_str() {
            "" => None,
            agent => Some(
                HeaderValue::from_str(agent)
                    .map_err(|_| format!("user agent {agent:?} is not a valid header value"))?,
            ),
        };
        Ok(DirectClient {
            // hyper's HTTP/2 connections are tasks on this library's runtime: their sockets
            // stay in its reactor. The HTTP/1.1 ones are driven by the dispatch itself, which
            // the host polls: theirs go to the host's reactor.
            client: builder.build(connector(false)?),
            h1,
            connector: connector(true)?,
            request_timeout: options.request_timeout,
            user_agent,
        })
    }

    /// Sends `request` and reads its answer whole, refusing a body over `limit` bytes; all of
    /// it within the client's `request_timeout`. The error says what failed with its causes,
    /// where hyper keeps the useful part ("client error (Connect): tcp connect error: Connection
    /// refused"), and without the URL (URLs can hold secrets).
    pub async fn send(
        &self,
        mut request: Request<Bytes>,
        limit: usize,
    ) -> Result<Response<Bytes>, String> {
        if let Some(agent) = &self.user_agent {
            request
                .headers_mut()
                .entry(USER_AGENT)
                .or_insert_with(|| agent.clone());
        }
        let exchange = async {
            let (request, unknown) = match &self.h1 {
                Some(h1) => match h1.route(&self.connector, request, limit) {
                    H1Route::Http1(exchange) => match exchange.await? {
                        Sent::Answered(response) => return Ok(response),
                        Sent::NotHere(request) => (request, false),
                    },
                    H1Route::Elsewhere { request, unknown } => (request, unknown),
                },
                None => (request, false),
            };
            let uri = unknown.then(|| request.uri().clone());
            let response = self
                .client
                .request(request.map(Full::new))
                .await
                .map_err(|err| error_chain(&err))?;
            if let (Some(h1), Some(uri)) = (&self.h1, uri) {
                h1.learn(&uri, response.version());
            }
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|err| unreadable_body(&*err, limit))?
                .to_bytes();
            Ok(Response::from_parts(parts, body))
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {} s",
                    self.request_timeout.as_secs_f64()
                ))
            })
    }
}

/// Why an answer's body could not be read whole (at most `limit` bytes).
fn unreadable_body(err: &(dyn std::error::Error + 'static), limit: usize) -> String {
    if err.is::<http_body_util::LengthLimitError>() {
        super::body_over(limit)
    } else {
        super::read_failed(error_chain(err))
    }
}

/// A CONNECT tunnel through `proxy` (`http://` or `https://`, credentials as basic auth).
fn tunnel(
    host: &HostInfo,
    options: &ClientOptions,
    proxy: &str,
    to_host: bool,
) -> Result<Tunnel<HttpsConnector<TcpConnector>>, String> {
    let invalid = |why: &str| {
        format!(
            "invalid proxy {}: {why}",
            crate::host_info::redact_url_credentials(proxy)
        )
    };
    let url = reqwest::Url::parse(proxy).map_err(|err| invalid(&err.to_string()))?;
    let host_part = match url.host_str() {
        Some(host_part) if matches!(url.scheme(), "http" | "https") => host_part,
        _ => return Err(invalid("not an http:// or https:// URL")),
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| invalid("no port"))?;
    let proxy_uri: Uri = format!("{}://{host_part}:{port}", url.scheme())
        .parse()
        .map_err(|_| invalid("not a valid URI"))?;
    // The proxy speaks HTTP/1.1 (CONNECT): no ALPN towards it, and the pushkin's client
    // certificate is for its upstream, not for the proxy.
    let to_proxy_options = ClientOptions {
        client_identity_pem: None,
        ..options.clone()
    };
    let mut proxy_tls = tls_config(host, &to_proxy_options)?;
    proxy_tls.alpn_protocols.clear();
    let to_proxy = HttpsConnector::from((TcpConnector::new(to_host), Arc::new(proxy_tls)));
    let tunnel = Tunnel::new(proxy_uri, to_proxy);
    if url.username().is_empty() && url.password().is_none() {
        return Ok(tunnel);
    }
    let decode = |part: &str| crate::host_info::decode_url_credential(part).map_err(invalid);
    let credentials = format!(
        "{}:{}",
        decode(url.username())?,
        decode(url.password().unwrap_or(""))?
    );
    let mut auth = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, credentials)
    ))
    .map_err(|_| invalid("credentials do not fit in a header"))?;
    auth.set_sensitive(true);
    Ok(tunnel.with_auth(auth))
}

/// How a connection reaches the upstream: straight, or through the proxy's tunnel.
#[derive(Clone)]
enum Route {
    Direct(TcpConnector),
    Tunnel(Box<Tunnel<HttpsConnector<TcpConnector>>>),
}

impl Service<Uri> for Route {
    type Response = Hop;
    type Error = BoxError;
    type Future = BoxFuture<Hop>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Route::Direct(tcp) => tcp.poll_ready(cx),
            Route::Tunnel(tunnel) => tunnel.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> BoxFuture<Hop> {
        match self {
            Route::Direct(tcp) => {
                let connecting = tcp.call(dst);
                Box::pin(async move { Ok(MaybeHttpsStream::Http(connecting.await?)) })
            }
            Route::Tunnel(tunnel) => {
                // The tunnel assumes port 443 when the URI names none.
                let dst = with_explicit_port(dst);
                let connecting = tunnel.call(dst);
                Box::pin(async move { Ok(connecting.await?) })
            }
        }
    }
}

fn with_explicit_port(dst: Uri) -> Uri {
    if dst.port().is_some() || dst.scheme() != Some(&http::uri::Scheme::HTTP) {
        return dst;
    }
    let Some(host) = dst.host() else {
        return dst;
    };
    let authority = format!("{host}:80");
    let mut parts = dst.clone().into_parts();
    match authority.parse() {
        Ok(authority) => {
            parts.authority = Some(authority);
            Uri::from_parts(parts).unwrap_or(dst)
        }
        Err(_) => dst,
    }
}

/// TLS over the route, the whole of connecting bounded by `connect_timeout`.
///
/// Shared, not copied: hyper's pool clones its connector for every request, in case it has to
/// connect, and copying and dropping the TLS and proxy setup showed in the profile (half a
/// percent of the gateway's CPU under the FCM benchmark) although a pooled connection is used.
#[derive(Clone)]
pub(super) struct Connector(Arc<ConnectorParts>);

struct ConnectorParts {
    tls: HttpsConnector<Route>,
    timeout: Duration,
}

impl Service<Uri> for Connector {
    type Response = MaybeHttpsStream<Hop>;
    type Error = BoxError;
    type Future = BoxFuture<MaybeHttpsStream<Hop>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The connector's own readiness is awaited in `call`, on the copy that connects.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut tls = self.0.tls.clone();
        let timeout = self.0.timeout;
        Box::pin(async move {
            let connecting = async move {
                std::future::poll_fn(|cx| tls.poll_ready(cx)).await?;
                tls.call(dst).await
            };
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(format!("connecting took over {} s", timeout.as_secs_f64()).into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::read_request_head;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server answering every request on its connections with `answer` (nothing if empty).
    async fn serve(answer: &'static str) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if !answer.is_empty() {
                            let _ = stream.write_all(answer.as_bytes()).await;
                        }
                    }
                });
            }
        });
        addr
    }

    fn client(request_timeout: Duration) -> DirectClient {
        let host = HostInfo {
            user_agent: "sygnal-test".to_owned(),
            ..HostInfo::default()
        };
        let options = ClientOptions {
            request_timeout,
            ..ClientOptions::default()
        };
        DirectClient::new(&host, &options).unwrap()
    }

    fn get(addr: std::net::SocketAddr) -> Request<Bytes> {
        Request::get(format!("http://{addr}/secret-device-token"))
            .body(Bytes::new())
            .unwrap()
    }

    #[tokio::test]
    async fn reads_the_answer_whole_within_its_limit() {
        let addr =
            serve("HTTP/1.1 200 OK\r\ncontent-length: 11\r\nretry-after: 7\r\n\r\nhello world")
                .await;
        let client = client(Duration::from_secs(5));
        let response = client.send(get(addr), 11).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["retry-after"], "7");
        assert_eq!(response.body().as_ref(), b"hello world");
        let err = client.send(get(addr), 10).await.unwrap_err();
        assert_eq!(err, "response body over 10 bytes");
    }

    #[tokio::test]
    async fn bounds_the_wait_and_leaves_the_url_out_of_errors() {
        let silent = serve("").await;
        let started = std::time::Instant::now();
        let err = client(Duration::from_millis(300))
            .send(get(silent), 100)
            .await
            .unwrap_err();
        assert_eq!(err, "no answer within 0.3 s");
        assert!(started.elapsed() < Duration::from_secs(2));
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let err = client(Duration::from_secs(5))
            .send(get(closed), 100)
            .await
            .unwrap_err();
        assert!(err.contains("onnect"), "{err}");
        assert!(!err.contains("secret-device-token"), "{err}");
    }

    #[tokio::test]
    async fn plain_http_requests_carry_their_host() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut heads = Vec::new();
            for _ in 0..2 {
                let head = read_request_head(&mut stream).await;
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .unwrap();
                heads.push(head.to_lowercase());
            }
            heads
        });
        let client = client(Duration::from_secs(5));
        client.send(get(addr), 10).await.unwrap();
        let mut named = get(addr);
        named
            .headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("push.example"));
        client.send(named, 10).await.unwrap();
        let heads = heads.await.unwrap();
        assert!(
            heads[0].contains(&format!("\r\nhost: {addr}\r\n")),
            "{}",
            heads[0]
        );
        assert!(
            heads[1].contains("\r\nhost: push.example\r\n"),
            "{}",
            heads[1]
        );
        assert_eq!(heads[1].matches("host:").count(), 1, "{}", heads[1]);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_replaced_not_failed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            // First connection: one answer, then closed by the server (keep-alive timeout).
            let (mut first, _) = listener.accept().await.unwrap();
            read_request_head(&mut first).await;
            first
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst")
                .await
                .unwrap();
            // Closed once the client has put the connection back in its pool.
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(first);
            closed_tx.send(()).unwrap();
            let (mut second, _) = listener.accept().await.unwrap();
            read_request_head(&mut second).await;
            second
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond")
                .await
                .unwrap();
            second
        });
        let client = client(Duration::from_secs(5));
        let first = client.send(get(addr), 10).await.unwrap();
        assert_eq!(first.body().as_ref(), b"first");
        closed_rx.await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = client.send(get(addr), 10).await.unwrap();
        assert_eq!(second.body().as_ref(), b"second");
        drop(server.await.unwrap());
    }

    #[tokio::test]
    async fn one_connection_carries_request_after_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // One connection only: a request that opened another would wait for ever.
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            loop {
                if read_request_head(&mut stream).await.is_empty() {
                    break;
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world";
                if stream.write_all(answer).await.is_err() {
                    break;
                }
            }
        });
        let client = client(Duration::from_secs(5));
        for _ in 0..5 {
            let response = client.send(get(addr), 100).await.unwrap();
            assert_eq!(response.body().as_ref(), b"hello world");
        }
    }

    #[tokio::test]
    async fn a_connection_closing_after_its_answer_is_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut accepted = 0;
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().await.unwrap();
                accepted += 1;
                read_request_head(&mut stream).await;
                stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                    )
                    .await
                    .unwrap();
            }
            accepted
        });
        let client = client(Duration::from_secs(5));
        for _ in 0..2 {
            assert_eq!(
                client.send(get(addr), 10).await.unwrap().body().as_ref(),
                b"ok"
            );
        }
        assert_eq!(server.await.unwrap(), 2);
    }

    #[test]
    fn proxy_credentials_and_ports() {
        let port = |uri: &str| with_explicit_port(uri.parse().unwrap()).to_string();
        assert_eq!(
            port("http://fcm.example/send"),
            "http://fcm.example:80/send"
        );
        assert_eq!(
            port("http://fcm.example:8080/send"),
            "http://fcm.example:8080/send"
        );
        assert_eq!(port("https://fcm.example/send"), "https://fcm.example/send");
        let host = |proxy: &str| HostInfo {
            proxy: Some(proxy.to_owned()),
            ..HostInfo::default()
        };
        let options = ClientOptions::default();
        assert!(
            DirectClient::new(&host("http://user:p%40ss@proxy.example:3128"), &options).is_ok()
        );
        let err =
            DirectClient::new(&host("socks5://user:secret@proxy.example"), &options).unwrap_err();
        assert!(err.contains("not an http:// or https:// URL"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
