//! Phase 0: the listening socket and the accept loop, with the global connection limit and the
//! graceful drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::ProxyConfig;
use crate::connection::{self, Shared};
use crate::control::Control;
use crate::error::ProxyError;
use crate::metrics;
use crate::stream::send_err;

/// Binds the proxy's listening socket with the configured options.
pub fn bind(cfg: &ProxyConfig) -> std::io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(cfg.listen),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if cfg.reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&cfg.listen.into())?;
    socket.listen(cfg.backlog.min(i32::MAX as u32) as i32)?;
    TcpListener::from_std(socket.into())
}

/// Per-socket options of an accepted client: no Nagle delay (the protocol is request/response
/// with small packets) and keepalive so dead peers of idle sessions are noticed.
fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Accepts until `shutdown` resolves, then waits up to the drain timeout for open sessions.
pub async fn serve<C, F>(listener: TcpListener, shared: Arc<Shared<C>>, shutdown: F)
where
    C: Control + Clone,
    F: Future<Output = ()>,
{
    let limit = Arc::new(Semaphore::new(shared.cfg.max_connections));
    let tracker = TaskTracker::new();
    let ids = AtomicU32::new(1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    admit(&shared, &limit, &tracker, stream, peer, id);
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    drain(tracker, shared.cfg.drain_timeout).await;
}

fn admit<C: Control + Clone>(
    shared: &Arc<Shared<C>>,
    limit: &Arc<Semaphore>,
    tracker: &TaskTracker,
    stream: TcpStream,
    peer: SocketAddr,
    id: u32,
) {
    metrics::accepted();
    tune(&stream);
    let Ok(permit) = Arc::clone(limit).try_acquire_owned() else {
        metrics::closed("too_many_connections");
        tracker.spawn(refuse_over_limit(stream));
        return;
    };
    let shared = Arc::clone(shared);
    tracker.spawn(async move {
        connection::handle(shared, stream, peer, id).await;
        drop(permit);
    });
}

/// Answers a connection over the limit with ERR 1040 in place of a greeting, as MariaDB does.
async fn refuse_over_limit(mut stream: TcpStream) {
    if let Some(err) = ProxyError::TooManyConnections("").to_err_packet() {
        let _ = tokio::time::timeout(Duration::from_secs(1), send_err(&mut stream, 0, &err)).await;
    }
}

async fn drain(tracker: TaskTracker, timeout: Duration) {
    tracker.close();
    let open = tracker.len();
    if open > 0 {
        info!(open, "draining open sessions for up to {timeout:?}");
    }
    if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
        warn!(
            open = tracker.len(),
            "drain timeout reached; closing remaining sessions"
        );
    }
}
