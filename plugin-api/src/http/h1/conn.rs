//! One HTTP/1.1 connection of the pool: a request written, its answer read whole.

use super::super::direct::Stream;
use super::super::wire::{self, Chunked, Framing};
use super::super::{body_over, read_failed};
use bytes::Bytes;
use http::{Request, Response};
use hyper::rt::{Read, ReadBuf, Write};
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// A connection's read buffer starts at this size, and goes back to it after a larger answer.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Why an exchange failed.
pub(super) enum Failure {
    /// Before any of the request was written: it may be sent again.
    Unsent(String),
    /// The request may have reached the server.
    Sent(String),
}

/// An HTTP/1.1 connection: the stream, and the buffers its exchanges reuse.
pub(super) struct Conn {
    stream: Stream,
    /// Bytes read: `read[..filled]`, from the start of the answer being read.
    read: Vec<u8>,
    filled: usize,
    /// The request head being written.
    head: Vec<u8>,
    /// The thread it was made on, whose reactor waits on it when the host lends its own.
    home: u32,
}

impl Conn {
    pub(super) fn new(stream: Stream) -> Conn {
        Conn {
            stream,
            read: vec![0; READ_BUFFER_BYTES],
            filled: 0,
            head: Vec::new(),
            home: super::this_thread(),
        }
    }

    /// The thread it was made on (see `this_thread`).
    pub(super) fn home(&self) -> u32 {
        self.home
    }

    /// Whether an idle connection can take a request: not closed by the server, and with
    /// nothing unasked for to read. Never waits.
    pub(super) fn is_open(&mut self, cx: &mut Context<'_>) -> bool {
        matches!(self.poll_fill(cx), Poll::Pending)
    }

    /// Sends `request` (its URI absolute or origin-form) and reads the answer whole, its body
    /// at most `limit` bytes. Also says whether the connection may carry another request.
    pub(super) async fn exchange(
        &mut self,
        request: &Request<Bytes>,
        limit: usize,
    ) -> Result<(Response<Bytes>, bool), Failure> {
        let target = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str());
        wire::write_head(
            &mut self.head,
            request.method(),
            target,
            request.headers(),
            request.body().len(),
        );
        let body = request.body();
        let mut written = 0;
        poll_fn(|cx| self.poll_write_all(cx, body, &mut written))
            .await
            .map_err(|err| {
                let why = format!("sending the request failed: {err}");
                if written == 0 {
                    Failure::Unsent(why)
                } else {
                    Failure::Sent(why)
                }
            })?;
        self.read_answer(request, limit)
            .await
            .map_err(Failure::Sent)
    }

    async fn read_answer(
        &mut self,
        request: &Request<Bytes>,
        limit: usize,
    ) -> Result<(Response<Bytes>, bool), String> {
        self.filled = 0;
        let head = loop {
            if self.filled == 0 {
                self.fill("the answer's head").await?;
            }
            match wire::parse_head(&self.read[..self.filled], request.method())? {
                // Interim answers (100 Continue, 103 Early Hints) are skipped.
                Some(head) if head.status.is_informational() => {
                    if head.status.as_u16() == 101 {
                        return Err("the server switched protocols".to_owned());
                    }
                    self.consume(head.len);
                }
                Some(head) => break head,
                None => self.fill("the answer's head").await?,
            }
        };
        self.consume(head.len);
        let mut keep_alive = head.keep_alive && !wants_close(request);
        let body = match head.framing {
            Framing::Empty => Bytes::new(),
            Framing::Length(length) => {
                let length = usize::try_from(length)
                    .ok()
                    .filter(|&length| length <= limit)
                    .ok_or_else(|| body_over(limit))?;
                while self.filled < length {
                    self.fill("the answer's body").await?;
                }
                let body = Bytes::copy_from_slice(&self.read[..length]);
                self.consume(length);
                body
            }
            Framing::Chunked => {
                let (mut decoder, mut body) = (Chunked::default(), Vec::new());
                loop {
                    let used = decoder.decode(&self.read[..self.filled], &mut body, limit)?;
                    self.consume(used);
                    if decoder.is_done() {
                        break;
                    }
                    self.fill("the answer's body").await?;
                }
                Bytes::from(body)
            }
            Framing::UntilClose => {
                while poll_fn(|cx| self.poll_fill(cx))
                    .await
                    .map_err(read_failed)?
                    > 0
                {
                    if self.filled > limit {
                        return Err(body_over(limit));
                    }
                }
                Bytes::copy_from_slice(&self.read[..self.filled])
            }
        };
        // Bytes past the answer were not asked for: the connection's framing is in doubt.
        keep_alive &= self.filled == 0;
        if self.read.len() > READ_BUFFER_BYTES {
            self.read = vec![0; READ_BUFFER_BYTES];
        }
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        Ok((response, keep_alive))
    }

    /// Reads more of `what`; the connection ending first is an error.
    async fn fill(&mut self, what: &str) -> Result<(), String> {
        match poll_fn(|cx| self.poll_fill(cx)).await {
            Ok(0) => Err(format!("the connection closed before {what} was complete")),
            Ok(_) => Ok(()),
            Err(err) => Err(read_failed(err)),
        }
    }

    /// Reads what the stream has into the buffer (grown when full); `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.filled == self.read.len() {
            // Bounded by the callers: a head over its limit or a body over the caller's
            // limit is refused before the buffer grows again.
            self.read.resize(self.read.len() * 2, 0);
        }
        let mut buf = ReadBuf::new(&mut self.read[self.filled..]);
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf.unfilled()))?;
        let n = buf.filled().len();
        self.filled += n;
        Poll::Ready(Ok(n))
    }

    /// Drops the first `n` bytes read.
    fn consume(&mut self, n: usize) {
        self.read.copy_within(n..self.filled, 0);
        self.filled -= n;
    }

    /// Writes the head and `body`, `written` bytes of them already written, then flushes.
    fn poll_write_all(
        &mut self,
        cx: &mut Context<'_>,
        body: &[u8],
        written: &mut usize,
    ) -> Poll<std::io::Result<()>> {
        let total = self.head.len() + body.len();
        while *written < total {
            let stream = Pin::new(&mut self.stream);
            let n = if *written < self.head.len() {
                let parts = [IoSlice::new(&self.head[*written..]), IoSlice::new(body)];
                ready!(stream.poll_write_vectored(cx, &parts))?
            } else {
                ready!(stream.poll_write(cx, &body[*written - self.head.len()..]))?
            };
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }
}

/// The request asked for its connection to be closed after the answer.
fn wants_close(request: &Request<Bytes>) -> bool {
    request
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|value| wire::has_token(value, b"close"))
}

#[cfg(test)]
mod tests {
    use super::super::super::{read_request_head, ClientOptions, DirectClient};
    use crate::HostInfo;
    use bytes::Bytes;
    use http::Request;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A server writing `answers` in turn, one per request head it reads, across whatever
    /// connections it is given (closing a connection after an answer ending in `CLOSE`).
    /// Counts the connections.
    async fn scripted(answers: &'static [&'static str]) -> (String, Arc<AtomicUsize>) {
        const CLOSE: &str = "CLOSE";
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/send", listener.local_addr().unwrap());
        let (connections, next) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let counted = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let next = Arc::clone(&next);
                tokio::spawn(async move {
                    // Until the client closes the connection (no whole head).
                    while read_request_head(&mut stream).await.ends_with("\r\n\r\n") {
                        let answer = answers[next.fetch_add(1, Ordering::SeqCst)];
                        let closing = answer.ends_with(CLOSE);
                        let answer = answer.trim_end_matches(CLOSE);
                        if stream.write_all(answer.as_bytes()).await.is_err() || closing {
                            break;
                        }
                    }
                });
            }
        });
        (url, connections)
    }

    async fn get(client: &DirectClient, url: &str) -> Result<(u16, Bytes), String> {
        let request = Request::get(url).body(Bytes::new()).unwrap();
        let response = client.send(request, 64).await?;
        Ok((response.status().as_u16(), response.into_body()))
    }

    fn client() -> DirectClient {
        DirectClient::new(&HostInfo::default(), &ClientOptions::default()).unwrap()
    }

    #[tokio::test]
    async fn interim_and_chunked_answers_are_read_on_one_connection() {
        let (url, connections) = scripted(&[
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\ngone",
            "HTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        let client = client();
        assert_eq!(
            get(&client, &url).await.unwrap(),
            (200, "hello world".into())
        );
        assert_eq!(get(&client, &url).await.unwrap(), (404, "gone".into()));
        assert_eq!(get(&client, &url).await.unwrap(), (204, Bytes::new()));
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_ending_with_the_connection_is_read_and_the_connection_not_reused() {
        let (url, connections) = scripted(&[
            "HTTP/1.1 200 OK\r\n\r\nuntil closeCLOSE",
            // Bytes after the answer that nobody asked for: the framing is in doubt.
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nthird",
        ])
        .await;
        let client = client();
        assert_eq!(
            get(&client, &url).await.unwrap(),
            (200, "until close".into())
        );
        assert_eq!(get(&client, &url).await.unwrap(), (200, "ok".into()));
        // Give the stray bytes time to arrive before the connection is taken again.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(get(&client, &url).await.unwrap(), (200, "third".into()));
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn answers_cut_short_or_malformed_fail_with_a_reason() {
        let (url, _) = scripted(&[
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshortCLOSE",
            "HTTP/1.1 200 OK\r\ncontent-lengCLOSE",
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ])
        .await;
        let client = client();
        for expected in [
            "the connection closed before the answer's body was complete",
            "the connection closed before the answer's head was complete",
            "response body over 64 bytes",
            "invalid chunked body: bad chunk size",
            "the server switched protocols",
        ] {
            assert_eq!(get(&client, &url).await.unwrap_err(), expected);
        }
    }
}
