//! Phase 0: the listening socket and the accept loop, with the login budget (see
//! [`crate::limits`]) and the graceful drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::ProxyConfig;
use crate::connection::{self, Shared};
use crate::control::Control;
use crate::error::ProxyError;
use crate::metrics;
use crate::stream::send_err;

/// Binds the proxy's listening socket with the configured options.
pub fn bind(cfg: &ProxyConfig) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_std(cfg, cfg.listen)?)
}

/// Binds a listening socket on `addr`, not yet registered with a runtime. With more than one
/// session thread, every thread listens on the same address, which takes SO_REUSEPORT (Linux
/// lets only processes of doze's own user join that group; computes run as other users).
fn bind_std(cfg: &ProxyConfig, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if cfg.reuse_port || cfg.threads > 1 {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(cfg.backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Keepalive probes after a minute idle, then every 10 s, so dead peers of idle sessions are
/// noticed.
fn keepalive() -> TcpKeepalive {
    TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
}

/// The options every client socket needs (no Nagle delay: the protocol is request/response
/// with small packets; keepalive), set once on the listening socket: Linux copies them into
/// each socket it accepts, which spares four `setsockopt` calls per connection. False when
/// the listener refused one, and each accepted socket must be tuned itself ([`tune`]).
fn tune_listener(listener: &TcpListener) -> bool {
    let socket = SockRef::from(listener);
    socket.set_tcp_nodelay(true).is_ok() && socket.set_tcp_keepalive(&keepalive()).is_ok()
}

/// Per-socket options of an accepted client, when the listener could not pass them on.
fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive());
}

/// Accepts until `shutdown` resolves, then waits up to the drain timeout for open sessions.
pub async fn serve<C, F>(listener: TcpListener, shared: Arc<Shared<C>>, shutdown: F)
where
    C: Control + Clone,
    F: Future<Output = ()>,
{
    let tracker = TaskTracker::new();
    let inherited = tune_listener(&listener);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let id = connection_id(CONNECTIONS.fetch_add(1, Ordering::Relaxed));
                    if !inherited {
                        tune(&stream);
                    }
                    admit(&shared, &tracker, stream, peer, id);
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
    drain(tracker, shared.cfg.drain_timeout, &shared.shutdown).await;
    shared.connector.pool.clear();
}

/// Serves on `shared.cfg.threads` threads. Each runs its own single-threaded runtime and
/// accepts on its own socket bound to the listener's address; the kernel spreads new
/// connections over the sockets (SO_REUSEPORT), and a session stays on the thread that
/// accepted it. That is the layout of event-driven proxies (HAProxy, Envoy): relaying a packet
/// wakes no other thread, where tokio's shared runtime hands wake-ups between workers (futex
/// calls and cache misses; measured in docs/benchmarks.md). Everything else (pool, limits,
/// control plane) is shared through `shared`. Returns once every thread has drained; fails
/// only at start, before any connection is accepted.
pub async fn serve_on_threads<C>(
    listener: TcpListener,
    shared: Arc<Shared<C>>,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    C: Control + Clone,
{
    let threads = shared.cfg.threads.max(1);
    let addr = listener.local_addr()?;
    let mut sockets = vec![listener.into_std()?];
    for _ in 1..threads {
        sockets.push(bind_std(&shared.cfg, addr)?);
    }
    let mut finished = Vec::with_capacity(threads);
    for (i, socket) in sockets.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(socket)?
        };
        let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
        finished.push(done_rx);
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name(format!("doze-proxy-{i}"))
            .spawn(move || {
                crate::pool::set_home(i as u32);
                runtime.block_on(async move {
                    serve(listener, shared, shutdown.cancelled_owned()).await;
                    let _ = done.send(());
                    // Tasks that this thread's sessions started live on its runtime: a
                    // compute's start and its watcher, a pooled session's check-in, database
                    // connections of the store. Keep driving them until the process exits.
                    std::future::pending::<()>().await
                })
            })?;
    }
    for done in finished {
        let _ = done.await;
    }
    // A check-in that finished on one thread after another thread's drain cleared the pool.
    shared.connector.pool.clear();
    Ok(())
}

/// Connections accepted by this process, over all threads: numbers its connection ids.
static CONNECTIONS: AtomicU32 = AtomicU32::new(0);

/// The first connection id doze hands out. MariaDB numbers its sessions from 1 up and never
/// reaches 2^31 in practice, so an id at or above this is doze's and one below is a compute's
/// (what a KILL names).
pub const FIRST_CONNECTION_ID: u32 = 0x8000_0000;

/// Bits 24 to 30 of this process's connection ids: chosen at random once, so that processes
/// sharing a port (`--reuse-port`, replicas behind one address) rarely hand out the same id,
/// and a KILL that reaches another process than its target's finds no session there.
fn process_bits() -> u32 {
    static BITS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *BITS.get_or_init(|| rand::random_range(0..128u32) << 24)
}

/// The connection id of the `n`-th connection: the low 24 bits count (and wrap), skipping 0.
pub fn connection_id(n: u32) -> u32 {
    FIRST_CONNECTION_ID | process_bits() | (n % 0x00ff_ffff + 1)
}

/// Whether `id` is from doze's range.
pub fn is_doze_id(id: u32) -> bool {
    id >= FIRST_CONNECTION_ID
}

fn admit<C: Control + Clone>(
    shared: &Arc<Shared<C>>,
    tracker: &TaskTracker,
    stream: TcpStream,
    peer: SocketAddr,
    id: u32,
) {
    metrics::accepted();
    let slot = match shared.limits.login_slot(peer.ip()) {
        Ok(slot) => slot,
        Err(refused) => {
            let error = ProxyError::LoginBudget(refused);
            metrics::closed(error.reason());
            debug!(%peer, "refused at accept: {error}");
            tracker.spawn(refuse(stream, error));
            return;
        }
    };
    let shared = Arc::clone(shared);
    tracker.spawn(connection::handle(shared, stream, peer, id, slot));
}

/// Answers a refused connection with an ERR in place of a greeting, as MariaDB does, and
/// closes it (at most a second is spent on a client that does not read).
async fn refuse(mut stream: TcpStream, error: ProxyError) {
    if let Some(err) = error.to_err_packet() {
        let _ = tokio::time::timeout(Duration::from_secs(1), send_err(&mut stream, 0, &err)).await;
    }
}

/// Waits up to `timeout` for open sessions to end by themselves; then tells the remaining
/// clients that the server is shutting down (ERR 1053) and closes them.
async fn drain(tracker: TaskTracker, timeout: Duration, shutdown: &CancellationToken) {
    tracker.close();
    let open = tracker.len();
    if open > 0 {
        info!(open, "draining open sessions for up to {timeout:?}");
    }
    if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
        warn!(
            open = tracker.len(),
            "drain timeout reached; telling the remaining clients (ERR 1053) and closing them"
        );
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(3), tracker.wait()).await;
    }
}

/// Raises this process's open-file limit to its hard limit. Every session holds two sockets
/// (client and compute), so the usual soft limit of 1024 would refuse clients past about 500
/// sessions with EMFILE, well below what the relay can carry. Returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sockets accepted from a tuned listener carry its options: no per-connection calls are
    /// needed for them.
    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_options() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        assert!(tune_listener(&listener));
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let socket = SockRef::from(&accepted);
        assert!(accepted.nodelay().expect("nodelay"), "TCP_NODELAY");
        assert!(socket.keepalive().expect("keepalive"), "SO_KEEPALIVE");
        assert_eq!(
            socket.tcp_keepalive_time().expect("keepidle"),
            Duration::from_secs(60)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().expect("keepintvl"),
            Duration::from_secs(10)
        );
    }
}
