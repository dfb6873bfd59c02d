//! Reuse of logged-in backend sessions: a client that authenticated in doze takes an idle
//! session of the same compute, user and wire format instead of logging in to MariaDB afresh.
//!
//! - **Check-out** ([`Pool::take`]) matches a [`SessionKey`]: the compute (address and id),
//!   the user and its stored hash (a password change never matches an old session), the
//!   collation, the client's capability flags, and the client's address when the compute sees
//!   it through a PROXY header. Sessions parked before the project's pool epoch moved (a
//!   suspend, freeze or stop of the compute, a role change), too old, idle too long or whose
//!   socket is no longer quiet are closed instead.
//! - **Check-in** ([`check_in`]) runs off the client's path once the client has left at a
//!   command boundary: COM_RESET_CONNECTION, a `SET` of the session's character set (which the
//!   reset returns to the server's default), and a query that returns a fresh nonce and the
//!   current database. Only a session whose answers are exactly those three, and nothing
//!   before them, is parked: a session left mid-result, in LOAD DATA or in an unknown state
//!   fails the check (or its timeout) and is closed; one still running a query is killed.
//! - Parked sessions are counted per project ([`ProjectActivity::park`]) so the scheduler
//!   never mistakes them for clients: a pool never keeps a compute awake.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use doze_gateway::activity::ProjectActivity;
use doze_protocol::Capabilities;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::debug;

use crate::backend::Backend;
use crate::stream::{BackendStream, read_packet};

/// Limits of the pool (`--pool-max-idle`, `--pool-idle-timeout`, `--pool-max-lifetime`).
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Idle sessions kept per project; 0 turns reuse off.
    pub max_idle: usize,
    /// An idle session is closed after this long unused. Keep it well under the compute's
    /// `wait_timeout` (8 hours by default), which would close it on its own.
    pub idle_timeout: Duration,
    /// A session is closed, not parked, once this old (counted from its TCP connect).
    pub max_lifetime: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_idle: 16,
            idle_timeout: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(3600),
        }
    }
}

/// How long a check-in may take before the session is given up (and its query killed).
pub const CHECK_IN_TIMEOUT: Duration = Duration::from_secs(2);

/// What a parked session must match to serve a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionKey {
    pub address: String,
    pub compute_id: String,
    pub user: String,
    pub stored: [u8; 20],
    pub collation: u8,
    /// The client session's flags, minus those that only concern the login itself.
    pub capabilities: Capabilities,
    /// Set only when the compute is told the client's address (PROXY header).
    pub client_ip: Option<IpAddr>,
}

impl SessionKey {
    /// The flags that must be equal for two clients to share a session: every flag the
    /// client and doze agreed on, except TLS (client leg only) and the login-only ones.
    pub fn key_capabilities(client: Capabilities) -> Capabilities {
        client - (Capabilities::SSL | Capabilities::CONNECT_WITH_DB | Capabilities::CONNECT_ATTRS)
    }
}

/// A logged-in backend session waiting in the pool.
pub struct Parked {
    pub key: SessionKey,
    pub backend: Backend,
    /// The session's current database after its reset.
    pub database: Option<String>,
    /// The session's status flags after its reset (autocommit as the server's default), for
    /// the OK the next client gets ([`pooled_ok`]).
    pub status: u16,
    parked_at: Instant,
    epoch: u64,
    activity: Arc<ProjectActivity>,
}

thread_local! {
    static HOME: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as session thread `index` (each `--proxy-threads` thread runs its
/// own single-threaded runtime, with its own I/O driver).
pub fn set_home(index: u32) {
    HOME.with(|h| h.set(index + 1));
}

/// The session thread this code runs on; 0 on the shared runtime (`--proxy-threads 0`),
/// where every thread polls the same I/O driver.
pub(crate) fn home() -> u32 {
    HOME.with(std::cell::Cell::get)
}

/// Why a session was closed instead of reused (the `reason` label of
/// `doze_pool_discards_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// The project's pool was drained (suspend, freeze, stop, role change).
    Drained,
    IdleTimeout,
    Lifetime,
    /// Its socket was closed or had unexpected bytes.
    Stale,
    /// The pool of the project was full.
    Full,
    /// The reset or its check failed: the session was mid-result, in LOAD DATA, or erred.
    ResetFailed,
    /// The reset did not finish in time: a query was still running; it was killed.
    Busy,
    /// The client changed user, or left mid-command: the session's state is unknown.
    Unclean,
    /// Switching to the client's database failed.
    InitDb,
}

impl Discard {
    pub fn as_str(self) -> &'static str {
        match self {
            Discard::Drained => "drained",
            Discard::IdleTimeout => "idle_timeout",
            Discard::Lifetime => "lifetime",
            Discard::Stale => "stale",
            Discard::Full => "full",
            Discard::ResetFailed => "reset_failed",
            Discard::Busy => "busy",
            Discard::Unclean => "unclean",
            Discard::InitDb => "init_db",
        }
    }
}

/// Counts a discarded session.
pub fn discarded(why: Discard) {
    metrics::counter!("doze_pool_discards_total", "reason" => why.as_str()).increment(1);
}

/// Idle sessions of every project.
pub struct Pool {
    cfg: PoolConfig,
    idle: Mutex<HashMap<String, Vec<Parked>>>,
    reaper: AtomicBool,
}

impl Pool {
    pub fn new(cfg: PoolConfig) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            idle: Mutex::new(HashMap::new()),
            reaper: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// Whether sessions are reused at all (`--pool-max-idle` above 0).
    pub fn enabled(&self) -> bool {
        self.cfg.max_idle > 0
    }

    /// Sessions idle in `project_id`'s pool now.
    pub fn idle(&self, project_id: &str) -> usize {
        self.lock().get(project_id).map_or(0, Vec::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Parked>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently parked usable session matching `key` whose database can become
    /// `database` (the same one, or any when the client names one: COM_INIT_DB switches it).
    /// Unusable sessions met on the way are closed.
    pub fn take(
        &self,
        project_id: &str,
        activity: &ProjectActivity,
        key: &SessionKey,
        database: Option<&str>,
    ) -> Option<Parked> {
        loop {
            let here = home();
            let found = {
                let mut idle = self.lock();
                let list = idle.get_mut(project_id)?;
                let fits =
                    |p: &Parked| p.key == *key && (database.is_some() || p.database.is_none());
                // A session parked by this thread first: its socket is on this thread's
                // I/O driver.
                let at = list
                    .iter()
                    .rposition(|p| p.backend.home == here && fits(p))
                    .or_else(|| list.iter().rposition(fits))?;
                let p = list.remove(at);
                if list.is_empty() {
                    idle.remove(project_id);
                }
                p
            };
            gauge_idle(-1.0);
            match self.unusable(&found, activity.pool_epoch()) {
                None => {
                    if let Some(found) = rehome(found, here) {
                        found.activity.unpark();
                        return Some(found);
                    }
                }
                Some(why) => close_parked(found.backend, why, found.activity),
            }
        }
    }

    /// Closes the idle sessions of `project_id` now (its pool was drained).
    pub fn drain_project(&self, project_id: &str) {
        let list = self.lock().remove(project_id).unwrap_or_default();
        for p in list {
            gauge_idle(-1.0);
            close_parked(p.backend, Discard::Drained, p.activity);
        }
    }

    /// Closes every idle session (at shutdown, after the drain).
    pub fn clear(&self) {
        let all: Vec<Parked> = self.lock().drain().flat_map(|(_, list)| list).collect();
        for p in all {
            gauge_idle(-1.0);
            close_parked(p.backend, Discard::Drained, p.activity);
        }
    }

    /// Why `p` must not be handed out, if it must not.
    fn unusable(&self, p: &Parked, epoch: u64) -> Option<Discard> {
        if p.epoch != epoch {
            Some(Discard::Drained)
        } else if p.backend.connected_at.elapsed() >= self.cfg.max_lifetime {
            Some(Discard::Lifetime)
        } else if p.parked_at.elapsed() >= self.cfg.idle_timeout {
            Some(Discard::IdleTimeout)
        } else if !is_quiet(&p.backend.stream) {
            Some(Discard::Stale)
        } else {
            None
        }
    }

    /// Parks a session that passed its reset; the oldest idle session makes room when the
    /// project's pool is full. The caller already counted it in `activity` (see
    /// [`check_in`]).
    fn put(self: &Arc<Self>, project_id: &str, activity: &ProjectActivity, parked: Parked) {
        self.start_reaper();
        let weak = Arc::downgrade(self);
        let project = project_id.to_owned();
        activity.set_drain_hook(move || {
            Box::new(move || {
                if let Some(pool) = weak.upgrade() {
                    pool.drain_project(&project);
                }
            })
        });
        // Drained while it was being reset: the compute may be on its way down.
        if parked.epoch != activity.pool_epoch() {
            close_parked(parked.backend, Discard::Drained, parked.activity);
            return;
        }
        let evicted = {
            let mut idle = self.lock();
            let list = idle.entry(project_id.to_owned()).or_default();
            list.push(parked);
            (list.len() > self.cfg.max_idle).then(|| list.remove(0))
        };
        gauge_idle(1.0);
        if let Some(old) = evicted {
            gauge_idle(-1.0);
            close_parked(old.backend, Discard::Full, old.activity);
        }
    }

    /// Closes idle sessions past their idle timeout or lifetime, or drained, every few
    /// seconds, for as long as the pool lives.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reaper.store(false, Ordering::SeqCst);
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        let every =
            (self.cfg.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = weak.upgrade() else { break };
                pool.reap();
            }
        });
    }

    fn reap(&self) {
        let mut closed = Vec::new();
        {
            let mut idle = self.lock();
            for list in idle.values_mut() {
                let mut i = 0;
                while i < list.len() {
                    let p = &list[i];
                    let why = if p.backend.connected_at.elapsed() >= self.cfg.max_lifetime {
                        Some(Discard::Lifetime)
                    } else if p.parked_at.elapsed() >= self.cfg.idle_timeout {
                        Some(Discard::IdleTimeout)
                    } else if p.activity.pool_epoch() != p.epoch {
                        Some(Discard::Drained)
                    } else if !is_quiet(&p.backend.stream) {
                        // Closed by the server (a short wait_timeout, a restart): no longer a
                        // connection to subtract from the compute's process list.
                        Some(Discard::Stale)
                    } else {
                        None
                    };
                    match why {
                        Some(why) => closed.push((list.remove(i), why)),
                        None => i += 1,
                    }
                }
            }
            idle.retain(|_, list| !list.is_empty());
        }
        for (p, why) in closed {
            gauge_idle(-1.0);
            close_parked(p.backend, why, p.activity);
        }
    }
}

fn gauge_idle(delta: f64) {
    metrics::gauge!("doze_pool_idle_sessions").increment(delta);
}

/// Closes a session politely (COM_QUIT, so MariaDB does not count an aborted connection),
/// without waiting for anything.
pub fn close(backend: Backend, why: Discard) {
    discarded(why);
    debug!(
        thread_id = backend.thread_id,
        reason = why.as_str(),
        "backend session closed"
    );
    quit(backend.stream);
}

/// Closes a parked session. It stays counted as parked until the server has closed it, so
/// that a count of the compute's process list in between never takes it for a client.
fn close_parked(backend: Backend, why: Discard, activity: Arc<ProjectActivity>) {
    discarded(why);
    debug!(
        thread_id = backend.thread_id,
        reason = why.as_str(),
        "parked backend session closed"
    );
    quit_then(backend.stream, move || activity.unpark());
}

/// Sends COM_QUIT and drops the socket, in the background when a runtime is there.
pub fn quit(stream: BackendStream) {
    quit_then(stream, || {});
}

/// COM_QUIT, then waits (at most a second) for the server to close its end, then `done`.
fn quit_then(mut stream: BackendStream, done: impl FnOnce() + Send + 'static) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        done();
        return;
    };
    runtime.spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream
                .write_all(&[1, 0, 0, 0, doze_protocol::COM_QUIT])
                .await?;
            stream.flush().await?;
            let mut sink = [0u8; 256];
            while tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? > 0 {}
            std::io::Result::Ok(())
        })
        .await;
        done();
    });
}

/// Moves a session parked by another session thread onto this thread's I/O driver. Left on
/// the other one, every packet of the session would be noticed by that thread's `epoll_wait`
/// and handed over with a cross-thread wake-up (an eventfd write and a second thread woken),
/// and delayed whenever that thread is busy: with two threads, about half the pooled sessions
/// would pay it on every packet. Costs two `epoll_ctl` calls, once per check-out. A TLS
/// session cannot be taken apart and rebuilt, so it stays where it is (it still works; the
/// wake-ups are its cost).
fn rehome(mut p: Parked, here: u32) -> Option<Parked> {
    if here == 0 || p.backend.home == here {
        return Some(p);
    }
    let BackendStream::Plain(tcp) = p.backend.stream else {
        return Some(p);
    };
    // Deregisters from the other thread's driver, then registers with this one's.
    match tcp.into_std().and_then(tokio::net::TcpStream::from_std) {
        Ok(tcp) => {
            p.backend.stream = BackendStream::Plain(tcp);
            p.backend.home = here;
            Some(p)
        }
        Err(e) => {
            // The socket was closed with the error: nothing left to send COM_QUIT on.
            debug!(
                thread_id = p.backend.thread_id,
                "re-registering a pooled session failed: {e}"
            );
            discarded(Discard::Stale);
            p.activity.unpark();
            None
        }
    }
}

/// True when nothing is waiting to be read on an idle session's socket: a parked session
/// that the server closed (restart, `wait_timeout`, KILL) or that holds stray bytes reads
/// ready. Asks the kernel (a non-blocking `MSG_PEEK`), not tokio's cached readiness: for a
/// session parked by another thread, that is only as fresh as that thread's last turn of
/// its event loop, and a session that was just moved has none yet.
fn is_quiet(stream: &BackendStream) -> bool {
    let tcp = match stream {
        BackendStream::Plain(tcp) => tcp,
        BackendStream::Tls(tls) => tls.get_ref().0,
    };
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(
        socket2::SockRef::from(tcp).peek(&mut byte),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}

/// What a check-in needs besides the session.
pub struct CheckIn {
    pub project_id: String,
    pub activity: Arc<ProjectActivity>,
    pub key: SessionKey,
    pub backend: Backend,
}

/// Resets a session a client left and parks it, or closes it. Runs as its own task: the
/// client is already gone. `kill` ends a query still running after [`CHECK_IN_TIMEOUT`].
pub async fn check_in<K, F>(pool: Arc<Pool>, mut c: CheckIn, kill: K)
where
    K: FnOnce(u32) -> F,
    F: std::future::Future<Output = ()>,
{
    c.activity.park();
    if c.backend.connected_at.elapsed() >= pool.cfg.max_lifetime {
        close_parked(c.backend, Discard::Lifetime, c.activity);
        return;
    }
    // A full pool would only evict its oldest session for this one: spare the compute the
    // reset (a herd of clients leaving at once would otherwise reset hundreds of sessions).
    if pool.idle(&c.project_id) >= pool.cfg.max_idle {
        close_parked(c.backend, Discard::Full, c.activity);
        return;
    }
    let epoch = c.activity.pool_epoch();
    let reset = tokio::time::timeout(
        CHECK_IN_TIMEOUT,
        reset(
            &mut c.backend.stream,
            c.backend.capabilities,
            c.key.collation,
        ),
    )
    .await;
    metrics::counter!("doze_pool_resets_total", "result" => if matches!(reset, Ok(Ok(_))) { "ok" } else { "failed" }).increment(1);
    match reset {
        Ok(Ok((database, status))) => {
            let parked = Parked {
                key: c.key,
                backend: c.backend,
                database,
                status,
                parked_at: Instant::now(),
                epoch,
                activity: Arc::clone(&c.activity),
            };
            pool.put(&c.project_id, &c.activity, parked);
        }
        Ok(Err(why)) => {
            debug!(
                thread_id = c.backend.thread_id,
                "session not reusable: {why}"
            );
            close_parked(c.backend, Discard::ResetFailed, c.activity);
        }
        Err(_) => {
            let thread_id = c.backend.thread_id;
            discarded(Discard::Busy);
            drop(c.backend);
            kill(thread_id).await;
            c.activity.unpark();
        }
    }
}

/// COM_RESET_CONNECTION, then the collation back, then `SELECT '<nonce>', DATABASE()`, sent
/// at once; the answers must be exactly OK, OK and that one row. Returns the database and the
/// status flags the row's end carried.
async fn reset<S>(
    stream: &mut S,
    caps: Capabilities,
    collation: u8,
) -> Result<(Option<String>, u16), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let nonce = format!("doze-{:016x}", rand::random::<u64>());
    let mut out = BytesMut::with_capacity(160);
    put_packet(&mut out, &[doze_protocol::COM_RESET_CONNECTION]);
    // The reset returns the character set variables to the server's defaults; the next
    // client expects the collation of its handshake (numbers are collation ids).
    let set = format!(
        "\x03SET character_set_client = {collation}, character_set_results = {collation}, collation_connection = {collation}"
    );
    put_packet(&mut out, set.as_bytes());
    let select = format!("\x03SELECT '{nonce}', DATABASE()");
    put_packet(&mut out, select.as_bytes());
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    // The answers come in one or two segments: read them through a buffer, not with two
    // exact reads per packet.
    let mut answers = tokio::io::BufReader::with_capacity(2048, &mut *stream);
    for what in ["the reset", "the character set"] {
        let p = read(&mut answers).await?;
        if p.seq != 1 || p.payload.first() != Some(&0x00) {
            return Err(format!("{what} was not answered by an OK"));
        }
    }
    let row = read_nonce_row(&mut answers, caps, &nonce).await?;
    if !answers.buffer().is_empty() || !is_quiet_stream(stream) {
        return Err("more bytes followed the check".into());
    }
    Ok(row)
}

fn is_quiet_stream<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    matches!(
        std::pin::Pin::new(stream).poll_read(&mut cx, &mut buf),
        Poll::Pending
    )
}

async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> Result<doze_protocol::Packet, String> {
    read_packet(stream, 1 << 16)
        .await
        .map_err(|e| e.to_string())
}

/// Reads the result set of the check query: 2 columns, one row (`nonce`, database), end.
async fn read_nonce_row<S: AsyncRead + Unpin>(
    stream: &mut S,
    caps: Capabilities,
    nonce: &str,
) -> Result<(Option<String>, u16), String> {
    let count = read(stream).await?;
    if count.seq != 1 || count.payload.first() != Some(&2) {
        return Err("the check query did not start its result".into());
    }
    // With metadata caching, a second byte says whether column definitions follow.
    let metadata = !caps.contains(Capabilities::MARIADB_CLIENT_CACHE_METADATA)
        || count.payload.get(1) != Some(&0);
    if metadata {
        for _ in 0..2 {
            let def = read(stream).await?;
            if matches!(def.payload.first(), Some(0xff | 0xfe) | None) {
                return Err("bad column definition".into());
            }
        }
        if !caps.contains(Capabilities::DEPRECATE_EOF) {
            let eof = read(stream).await?;
            if eof.payload.first() != Some(&0xfe) || eof.payload.len() >= 9 {
                return Err("missing EOF after the columns".into());
            }
        }
    }
    let row = read(stream).await?;
    let (first, rest) = lenenc_str(&row.payload).ok_or("bad row")?;
    if first != nonce.as_bytes() {
        return Err("the row is not the check's".into());
    }
    let database = match rest {
        [0xfb] => None,
        _ => {
            let (db, tail) = lenenc_str(rest).ok_or("bad row")?;
            if !tail.is_empty() {
                return Err("bad row".into());
            }
            Some(String::from_utf8_lossy(db).into_owned())
        }
    };
    let end = read(stream).await?;
    if end.payload.first() != Some(&0xfe) || end.payload.len() >= 0xff_ffff {
        return Err("the result did not end".into());
    }
    let status = status_of_end(&end.payload, caps);
    if status & SERVER_MORE_RESULTS_EXISTS != 0 {
        return Err("more results follow".into());
    }
    Ok((database, status))
}

const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

/// The status flags of an EOF packet, or of an OK packet with the EOF header.
fn status_of_end(p: &[u8], caps: Capabilities) -> u16 {
    if caps.contains(Capabilities::DEPRECATE_EOF) {
        // 0xfe, affected rows, last insert id (both length-encoded), status.
        let mut at = 1;
        for _ in 0..2 {
            let Some((_, n)) = lenenc_int(p.get(at..).unwrap_or_default()) else {
                return SERVER_MORE_RESULTS_EXISTS;
            };
            at += n;
        }
        match p.get(at..at + 2) {
            Some(s) => u16::from_le_bytes([s[0], s[1]]),
            None => SERVER_MORE_RESULTS_EXISTS,
        }
    } else {
        match p.get(3..5) {
            Some(s) => u16::from_le_bytes([s[0], s[1]]),
            None => SERVER_MORE_RESULTS_EXISTS,
        }
    }
}

/// A length-encoded integer: (value, bytes used).
fn lenenc_int(p: &[u8]) -> Option<(u64, usize)> {
    let first = *p.first()?;
    let width = match first {
        0..=0xfa => return Some((u64::from(first), 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let bytes = p.get(1..1 + width)?;
    let mut v = [0u8; 8];
    v[..width].copy_from_slice(bytes);
    Some((u64::from_le_bytes(v), 1 + width))
}

/// A length-encoded string and what follows it.
fn lenenc_str(p: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, used) = lenenc_int(p)?;
    let len = usize::try_from(len).ok()?;
    let end = used.checked_add(len)?;
    Some((p.get(used..end)?, p.get(end..)?))
}

fn put_packet(out: &mut BytesMut, payload: &[u8]) {
    let len = payload.len();
    out.put_slice(&[len as u8, (len >> 8) as u8, (len >> 16) as u8, 0]);
    out.put_slice(payload);
}

/// Switches a checked-out session to the client's database with COM_INIT_DB. An ERR (no such
/// database, no access) is returned for the client, as a fresh login would have answered.
pub async fn init_db<S>(
    stream: &mut S,
    database: &str,
) -> Result<Result<(), doze_protocol::ErrPacket>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(8 + database.len());
    let mut payload = Vec::with_capacity(1 + database.len());
    payload.push(doze_protocol::COM_INIT_DB);
    payload.extend_from_slice(database.as_bytes());
    put_packet(&mut out, &payload);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let answer = read(stream).await?;
    match answer.payload.first() {
        Some(0x00) if answer.seq == 1 => Ok(Ok(())),
        Some(0xff) => doze_protocol::ErrPacket::decode(&answer.payload)
            .map(Err)
            .map_err(|e| e.to_string()),
        _ => Err("unexpected answer to COM_INIT_DB".into()),
    }
}

/// The OK a client gets when it is given a pooled session (a fresh login forwards the
/// compute's own): no rows, autocommit on, no warnings.
pub const POOLED_OK: [u8; 7] = [0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00];

/// The status flags that describe a session between commands (in a transaction, read-only
/// transaction, autocommit, NO_BACKSLASH_ESCAPES), as opposed to ones about the last result.
const SESSION_STATUS: u16 = 0x0001 | 0x0002 | 0x0200 | 0x2000;

/// The OK a client gets when it is handed a pooled session: [`POOLED_OK`] with the session's
/// own status flags, so that a driver reading them (autocommit off on a server configured so)
/// is told the truth.
pub fn pooled_ok(status: u16) -> [u8; 7] {
    let [lo, hi] = (status & SESSION_STATUS).to_le_bytes();
    [0x00, 0x00, 0x00, lo, hi, 0x00, 0x00]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenenc_strings_parse_without_panics() {
        assert_eq!(
            lenenc_str(&[3, b'a', b'b', b'c', 0xfb]),
            Some((&b"abc"[..], &[0xfb][..]))
        );
        assert_eq!(lenenc_str(&[5, b'a']), None);
        assert_eq!(lenenc_str(&[0xfc, 0xff]), None);
        assert_eq!(lenenc_str(&[]), None);
        assert_eq!(lenenc_int(&[0xfc, 0x01, 0x02]), Some((0x0201, 3)));
        assert_eq!(lenenc_int(&[0xff]), None);
    }

    #[test]
    fn end_status_reads_both_formats() {
        let eof = [0xfe, 0, 0, 0x08, 0x00];
        assert_eq!(status_of_end(&eof, Capabilities::PROTOCOL_41), 0x0008);
        let ok = [0xfe, 0, 0, 0x02, 0x00, 0, 0];
        assert_eq!(status_of_end(&ok, Capabilities::DEPRECATE_EOF), 0x0002);
        // Truncated: treated as "more results", so the session is not reused.
        assert_eq!(
            status_of_end(&[0xfe], Capabilities::DEPRECATE_EOF),
            SERVER_MORE_RESULTS_EXISTS
        );
    }

    #[tokio::test]
    async fn a_leftover_ok_before_the_reset_fails_the_check() {
        // A client sent a statement and quit before reading its OK: that OK arrives first.
        let (mut near, mut far) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut far, &mut buf).await;
            let ok = [7, 0, 0, 1, 0, 1, 0, 2, 0, 0, 0];
            // Leftover OK, reset OK, SET OK, then the SET's OK where the result should start.
            for _ in 0..3 {
                far.write_all(&ok).await.expect("write");
            }
            far
        });
        let r = reset(
            &mut near,
            Capabilities::PROTOCOL_41 | Capabilities::DEPRECATE_EOF,
            45,
        )
        .await;
        assert!(r.is_err(), "{r:?}");
        drop(server);
    }
}
