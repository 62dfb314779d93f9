//! A small Redis (or Valkey) client for the shared duplicate store: RESP2 over one pipelined TCP
//! connection, reconnected on demand.
//!
//! The store needs five commands (AUTH, SELECT, SET with NX/PX, GET, EVAL), so a full client
//! crate would bring far more than it gives. Commands from concurrent requests are written in
//! order by one task and their replies matched in order by another, so requests never wait for
//! each other's round trips. Every command is bounded by the configured timeout; after a failed
//! connection attempt, commands fail at once for a second rather than each trying to connect.

use arc_swap::ArcSwapOption;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sygnal_plugin_api::decode_url_credential;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// Pause between connection attempts while Redis is unreachable.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// Replies larger than this are a protocol error (the store's values are a few bytes).
const MAX_REPLY_BYTES: usize = 1 << 20;

/// Where Redis is: `redis://[[user]:password@]host[:port][/db]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
    db: u32,
}

impl RedisUrl {
    /// Parses a `redis://` URL; errors say what is wrong with it (never echoing a password).
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        if url.starts_with("rediss://") {
            return Err("TLS (rediss://) is not supported: use redis:// on a trusted network, or a local TLS tunnel".to_owned());
        }
        let rest = url
            .strip_prefix("redis://")
            .ok_or("must be a redis://host:port URL")?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (credentials, address) = match authority.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, authority),
        };
        let (user, password) = match credentials {
            None => (None, None),
            Some(credentials) => {
                let (user, password) = credentials.split_once(':').unwrap_or(("", credentials));
                let user = decode_url_credential(user)?;
                let password = decode_url_credential(password)?;
                (
                    Some(user).filter(|u| !u.is_empty()),
                    Some(password).filter(|p| !p.is_empty()),
                )
            }
        };
        let (host, port) = if let Some(bracketed) = address.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or("unclosed [ in host")?;
            (host, after.strip_prefix(':'))
        } else {
            match address.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (address, None),
            }
        };
        if host.is_empty() {
            return Err("no host".to_owned());
        }
        let port = match port {
            None => 6379,
            Some(port) => port.parse().map_err(|_| format!("bad port `{port}`"))?,
        };
        let db = match path.split('?').next().unwrap_or("") {
            "" => 0,
            db => db
                .parse()
                .map_err(|_| format!("bad database number `{db}`"))?,
        };
        Ok(RedisUrl {
            host: host.to_owned(),
            port,
            user,
            password,
            db,
        })
    }

    /// `host:port`, for logs.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK` and friends.
    Status(String),
    /// An integer.
    Integer(i64),
    /// A bulk string.
    Bulk(Vec<u8>),
    /// The null bulk string (no such key, SET NX not done).
    Nil,
}

type Pending = Arc<Mutex<VecDeque<oneshot::Sender<Result<Reply, String>>>>>;

struct Request {
    command: Vec<u8>,
    reply: oneshot::Sender<Result<Reply, String>>,
}

struct Connection {
    requests: mpsc::Sender<Request>,
    /// Set by the reader when the connection breaks.
    closed: Arc<AtomicBool>,
}

/// The client: one pipelined connection, replaced when it breaks.
pub struct RedisClient {
    url: RedisUrl,
    timeout: Duration,
    /// The live connection; read without locking on every command.
    connection: ArcSwapOption<Connection>,
    /// Serialises reconnection; holds when the next attempt may be made.
    reconnect: tokio::sync::Mutex<Option<Instant>>,
}

impl RedisClient {
    /// A client for `url`; nothing connects until the first command.
    pub fn new(url: RedisUrl, timeout: Duration) -> Self {
        RedisClient {
            url,
            timeout,
            connection: ArcSwapOption::empty(),
            reconnect: tokio::sync::Mutex::new(None),
        }
    }

    /// Runs one command, bounded by the timeout. Redis' own errors come back as `Err` too.
    pub async fn command(&self, args: &[&[u8]]) -> Result<Reply, String> {
        let deadline = Instant::now() + self.timeout;
        let (reply_tx, reply_rx) = oneshot::channel();
        let request = Request {
            command: encode(args),
            reply: reply_tx,
        };
        let sent = tokio::time::timeout_at(deadline.into(), self.send(request)).await;
        match sent {
            Err(_) => return Err("timed out connecting".to_owned()),
            Ok(Err(err)) => return Err(err),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline.into(), reply_rx).await {
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            Ok(Err(_)) => Err("connection lost".to_owned()),
            Ok(Ok(reply)) => reply,
        }
    }

    async fn send(&self, request: Request) -> Result<(), String> {
        let request = match self.try_send(request) {
            Ok(sent) => return sent,
            Err(request) => request,
        };
        let mut next_attempt = self.reconnect.lock().await;
        // Another request may have reconnected while this one waited for the lock.
        let request = match self.try_send(request) {
            Ok(sent) => return sent,
            Err(request) => request,
        };
        if next_attempt.is_some_and(|at| Instant::now() < at) {
            return Err("unreachable (waiting before reconnecting)".to_owned());
        }
        // Set first: an attempt cut short by the caller's timeout also waits its turn.
        *next_attempt = Some(Instant::now() + RECONNECT_PAUSE);
        let connection = connect(&self.url).await?;
        *next_attempt = None;
        let sent = connection
            .requests
            .try_send(request)
            .map_err(|_| "connection lost".to_owned());
        self.connection.store(Some(Arc::new(connection)));
        sent
    }

    /// Queues the request on the live connection; gives it back when there is none.
    fn try_send(&self, request: Request) -> Result<Result<(), String>, Request> {
        let guard = self.connection.load();
        let Some(connection) = guard.as_ref().filter(|c| !c.closed.load(Ordering::Acquire)) else {
            return Err(request);
        };
        match connection.requests.try_send(request) {
            Ok(()) => Ok(Ok(())),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Ok(Err("too many commands queued".to_owned()))
            }
            Err(mpsc::error::TrySendError::Closed(request)) => Err(request),
        }
    }
}

/// Encodes a command as a RESP array of bulk strings.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn connect(url: &RedisUrl) -> Result<Connection, String> {
    let stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|err| format!("cannot connect: {err}"))?;
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    // Handshake before the connection is shared.
    let mut handshake: Vec<Vec<&[u8]>> = Vec::new();
    if let Some(password) = &url.password {
        match &url.user {
            Some(user) => handshake.push(vec![b"AUTH", user.as_bytes(), password.as_bytes()]),
            None => handshake.push(vec![b"AUTH", password.as_bytes()]),
        }
    }
    let db = url.db.to_string();
    if url.db != 0 {
        handshake.push(vec![b"SELECT", db.as_bytes()]);
    }
    for command in handshake {
        write
            .write_all(&encode(&command))
            .await
            .map_err(|err| format!("cannot write: {err}"))?;
        let reply = read_reply(&mut reader).await?;
        if let Err(err) = reply {
            let what = String::from_utf8_lossy(command[0]);
            return Err(format!("{what} refused: {err}"));
        }
    }
    let pending: Pending = Arc::default();
    let closed = Arc::new(AtomicBool::new(false));
    let (requests, receiver) = mpsc::channel(4096);
    tokio::spawn(write_loop(write, receiver, Arc::clone(&pending)));
    tokio::spawn(read_loop(reader, pending, Arc::clone(&closed)));
    Ok(Connection { requests, closed })
}

async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut requests: mpsc::Receiver<Request>,
    pending: Pending,
) {
    while let Some(request) = requests.recv().await {
        // Queued before writing, so the reply (read by the other task) finds it.
        if let Ok(mut queue) = pending.lock() {
            queue.push_back(request.reply);
        }
        if writer.write_all(&request.command).await.is_err() {
            break;
        }
    }
}

async fn read_loop(
    mut reader: BufReader<OwnedReadHalf>,
    pending: Pending,
    closed: Arc<AtomicBool>,
) {
    loop {
        let reply = match read_reply(&mut reader).await {
            Ok(reply) => reply,
            Err(_) => break,
        };
        let waiter = pending.lock().ok().and_then(|mut queue| queue.pop_front());
        if let Some(waiter) = waiter {
            let _ = waiter.send(reply);
        }
    }
    // The next command sees the flag and reconnects; the writer ends when the replaced
    // connection's sender is dropped.
    closed.store(true, Ordering::Release);
    if let Ok(mut queue) = pending.lock() {
        for waiter in queue.drain(..) {
            let _ = waiter.send(Err("connection lost".to_owned()));
        }
    }
}

/// Reads one reply: `Ok(Err(..))` is an error reply from Redis, `Err` a broken connection.
async fn read_reply(
    reader: &mut BufReader<OwnedReadHalf>,
) -> Result<Result<Reply, String>, String> {
    let mut line = Vec::new();
    let read = reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|err| err.to_string())?;
    if read == 0 || line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err("connection closed".to_owned());
    }
    let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let number = || {
        text.parse::<i64>()
            .map_err(|_| format!("bad reply `{text}`"))
    };
    match line[0] {
        b'+' => Ok(Ok(Reply::Status(text))),
        b'-' => Ok(Err(text)),
        b':' => Ok(Ok(Reply::Integer(number()?))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Ok(Reply::Nil));
            }
            let len = usize::try_from(len).map_err(|_| "bad length".to_owned())?;
            if len > MAX_REPLY_BYTES {
                return Err(format!("reply of {len} bytes refused"));
            }
            let mut data = vec![0; len + 2];
            reader
                .read_exact(&mut data)
                .await
                .map_err(|err| err.to_string())?;
            data.truncate(len);
            Ok(Ok(Reply::Bulk(data)))
        }
        other => Err(format!("unexpected reply type `{}`", other as char)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            RedisUrl::parse("redis://cache:6380/2").unwrap(),
            RedisUrl {
                host: "cache".into(),
                port: 6380,
                user: None,
                password: None,
                db: 2
            }
        );
        let url = RedisUrl::parse("redis://app:p%40ss@[::1]").unwrap();
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, 6379);
        assert_eq!(url.user.as_deref(), Some("app"));
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        assert_eq!(url.address(), "[::1]:6379");
        let url = RedisUrl::parse("redis://:secret@127.0.0.1").unwrap();
        assert_eq!((url.user, url.password.as_deref()), (None, Some("secret")));
        for bad in [
            "http://x",
            "redis://",
            "redis://h:port",
            "redis://h/db",
            "rediss://h",
        ] {
            let err = RedisUrl::parse(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(!RedisUrl::parse("redis://:hunter2@h:x")
            .unwrap_err()
            .contains("hunter2"));
    }

    #[test]
    fn encodes_commands_as_resp_arrays() {
        assert_eq!(
            encode(&[b"SET", b"k", b"v"]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
        );
    }
}
