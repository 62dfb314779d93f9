//! A small HTTP CONNECT proxy for the tests, with optional basic auth, spoken over plain TCP
//! (`http://` proxy URLs) or TLS (`https://`).

use base64::Engine;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Default)]
struct Seen {
    tunnels: Vec<String>,
    rejected_auth: usize,
}

/// A running CONNECT proxy; stops when dropped.
pub struct ConnectProxy {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    auth: Option<(String, String)>,
    tls: bool,
    seen: Arc<Mutex<Seen>>,
    breaker: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl ConnectProxy {
    /// Starts a proxy; with `auth`, CONNECTs must carry those basic credentials.
    pub async fn start(auth: Option<(&str, &str)>) -> ConnectProxy {
        ConnectProxy::start_with(auth, None).await
    }

    /// Starts a proxy that clients reach over TLS (`https://` proxy URLs), with `tls`'s
    /// certificate.
    pub async fn start_tls(
        auth: Option<(&str, &str)>,
        tls: Arc<rustls::ServerConfig>,
    ) -> ConnectProxy {
        ConnectProxy::start_with(auth, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(
        auth: Option<(&str, &str)>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let auth = auth.map(|(u, p)| (u.to_owned(), p.to_owned()));
        let expected = auth.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (breaker, _) = watch::channel(0u64);
        let over_tls = tls.is_some();
        let task = {
            let seen = Arc::clone(&seen);
            let breaker = breaker.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let seen = Arc::clone(&seen);
                    let expected = expected.clone();
                    let broken = breaker.subscribe();
                    match &tls {
                        None => {
                            tokio::spawn(tunnel(client, expected, seen, broken));
                        }
                        Some(acceptor) => {
                            let accepting = acceptor.accept(client);
                            tokio::spawn(async move {
                                if let Ok(client) = accepting.await {
                                    tunnel(client, expected, seen, broken).await;
                                }
                            });
                        }
                    }
                }
            })
        };
        ConnectProxy {
            addr,
            auth,
            tls: over_tls,
            seen,
            breaker,
            task,
        }
    }

    /// The proxy URL, with credentials when auth is required.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let port = self.addr.port();
        match &self.auth {
            Some((user, pass)) => format!("{scheme}://{user}:{pass}@127.0.0.1:{port}"),
            None => format!("{scheme}://127.0.0.1:{port}"),
        }
    }

    /// The `host:port` targets tunnelled so far.
    pub fn tunnels(&self) -> Vec<String> {
        self.seen
            .lock()
            .map(|s| s.tunnels.clone())
            .unwrap_or_default()
    }

    /// CONNECTs refused for missing or wrong credentials.
    pub fn rejected_auth(&self) -> usize {
        self.seen
            .lock()
            .map(|s| s.rejected_auth)
            .unwrap_or_default()
    }

    /// Drops every open tunnel (a proxy restart, as far as clients can tell).
    pub fn break_connections(&self) {
        self.breaker.send_modify(|generation| *generation += 1);
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tunnel<S: AsyncRead + AsyncWrite + Unpin>(
    client: S,
    expected_auth: Option<String>,
    seen: Arc<Mutex<Seen>>,
    mut broken: watch::Receiver<u64>,
) {
    let mut client = BufReader::new(client);
    let mut request_line = String::new();
    if client.read_line(&mut request_line).await.is_err() {
        return;
    }
    let mut authorization = None;
    loop {
        let mut line = String::new();
        match client.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("proxy-authorization") {
                        authorization = Some(value.trim().to_owned());
                    }
                }
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
        let _ = client
            .get_mut()
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    if expected_auth.is_some() && authorization != expected_auth {
        if let Ok(mut seen) = seen.lock() {
            seen.rejected_auth += 1;
        }
        let _ = client
            .get_mut()
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        let _ = client
            .get_mut()
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    if let Ok(mut seen) = seen.lock() {
        seen.tunnels.push(target.to_owned());
    }
    if client
        .get_mut()
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    broken.borrow_and_update();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = broken.changed() => {}
    }
}
