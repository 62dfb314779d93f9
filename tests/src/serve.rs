//! Fake upstreams: an axum router served over loopback, plain or TLS (HTTP/1.1 and HTTP/2).

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What a handler can learn about the connection its request came on
/// (`axum::Extension<ConnInfo>`).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// 0 for the first connection accepted, 1 for the next...
    pub connection_id: usize,
    /// The client's certificate chain (DER), when it sent one.
    pub peer_certificates: Vec<Vec<u8>>,
    /// The ALPN protocol agreed.
    pub alpn: Option<Vec<u8>>,
}

/// A running fake server; stops when dropped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    tls: bool,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// The base URL: `https://localhost:PORT` (matching the test certificate) or
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://127.0.0.1:{}", self.addr.port())
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(router: axum::Router, tls: Option<Arc<rustls::ServerConfig>>) -> TestServer {
    crate::install_crypto();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    let acceptor = tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let connection_id = counter.fetch_add(1, Ordering::SeqCst);
            let router = router.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let builder = auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let (_, session) = stream.get_ref();
                        let info = ConnInfo {
                            connection_id,
                            peer_certificates: session
                                .peer_certificates()
                                .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
                                .unwrap_or_default(),
                            alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                        };
                        let service = TowerToHyperService::new(router.layer(axum::Extension(info)));
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    None => {
                        let info = ConnInfo {
                            connection_id,
                            peer_certificates: Vec::new(),
                            alpn: None,
                        };
                        let service = TowerToHyperService::new(router.layer(axum::Extension(info)));
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    TestServer {
        addr,
        tls: tls.is_some(),
        connections,
        task,
    }
}

/// Serves `router` over TLS with `config` (HTTP/2 when ALPN agrees on h2).
pub async fn serve_tls(router: axum::Router, config: Arc<rustls::ServerConfig>) -> TestServer {
    serve(router, Some(config)).await
}

/// Serves `router` over plain HTTP (HTTP/1.1, or HTTP/2 with prior knowledge).
pub async fn serve_http(router: axum::Router) -> TestServer {
    serve(router, None).await
}
