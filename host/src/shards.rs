//! Connection shards: each client connection is served, start to end, by one thread running a
//! current-thread runtime of its own.
//!
//! A notification is a client exchange and an upstream exchange. The host polls the dispatch of
//! a plugin built with plugin-api's SDK on its own thread, the upstream's socket in its own
//! reactor (`host_io`), so a shard serves the request, builds and sends the push, reads the
//! answer and responds without handing anything to another thread. On a multi-thread runtime
//! the same work cost a fifth more CPU per notification (tasks and the reactor passing between
//! workers; BENCHMARKS.md). Connections are dealt to the shards in turn, like nginx's worker
//! processes; everything else (accept loops, reloads, signals) stays on the main runtime.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use tokio::net::TcpStream;
use tokio::runtime::Handle;

struct Shards {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static SHARDS: OnceLock<Shards> = OnceLock::new();

/// Starts `count` shard threads; they live as long as the process.
pub fn start(count: usize) -> io::Result<()> {
    let mut handles = Vec::with_capacity(count);
    for index in 0..count.max(1) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        handles.push(runtime.handle().clone());
        std::thread::Builder::new()
            .name(format!("sygnal-shard-{index}"))
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    }
    let _ = SHARDS.set(Shards {
        handles,
        next: AtomicUsize::new(0),
    });
    Ok(())
}

/// Serves `stream` with `serve` on the next shard, or on the current runtime when there are
/// no shards (the host's own tests).
pub fn spawn_connection<F, S>(stream: TcpStream, serve: S)
where
    S: FnOnce(TcpStream) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let Some(shards) = SHARDS.get() else {
        tokio::spawn(serve(stream));
        return;
    };
    // Moved from the accepting runtime's reactor to the shard's.
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(error = %err, "cannot hand a connection to a shard");
            return;
        }
    };
    let at = shards.next.fetch_add(1, Ordering::Relaxed) % shards.handles.len();
    shards.handles[at].spawn(async move {
        match TcpStream::from_std(stream) {
            Ok(stream) => serve(stream).await,
            Err(err) => tracing::debug!(error = %err, "cannot serve a connection on its shard"),
        }
    });
}
