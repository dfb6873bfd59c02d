//! Phase 6: relay the session.
//!
//! Backend to client: raw bytes. Client to backend: raw bytes too, with the packet headers
//! walked (and only the first bytes of short queries read) to catch, at the start of a
//! command, COM_CHANGE_USER (re-signed for the backend), COM_QUIT (the backend session may be
//! pooled) and KILL (doze's ids, see [`kill`]). Everything else — COM_RESET_CONNECTION, LOAD
//! DATA LOCAL INFILE, commands over 16 MiB — passes unchanged.
//!
//! Each direction keeps its buffer and positions in a [`Pipe`], and every await in the loop is
//! a single cancel-safe read, write or flush, so `select!` can drop the losing branch without
//! losing bytes. One task and two fixed buffers per session; no allocation per packet. Plain TCP
//! sessions are split into borrowed halves (no lock at all); TLS sessions use
//! `tokio::io::split`, whose halves share one uncontended lock because rustls keeps one state
//! for both directions.

pub mod change_user;
pub mod kill;
pub mod walker;

use std::io;
use std::sync::Arc;

use doze_gateway::activity::ProjectActivity;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::error::ProxyError;
use crate::metrics;
pub use change_user::SessionAuth;
use walker::{Command, CommandWalker, Scan};

/// Bytes buffered per direction. Pages are only touched when used, so idle sessions stay small.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// How a relayed session ended normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The client left at a command boundary (COM_QUIT, or its socket closed between
    /// commands): the backend session may be reset and reused.
    ClientQuit,
    /// The client's socket closed mid-command (in a LOAD DATA upload, inside a packet).
    ClientClosed,
    BackendClosed,
}

impl End {
    pub fn reason(self) -> &'static str {
        match self {
            End::ClientQuit | End::ClientClosed => "client_closed",
            End::BackendClosed => "backend_closed",
        }
    }
}

/// One direction's buffer: `data[sent..approved]` is waiting to be written, `data[approved..filled]`
/// is held back (a partial header, or an intercepted packet's start).
pub struct Pipe {
    data: Box<[u8]>,
    sent: usize,
    approved: usize,
    filled: usize,
    needs_flush: bool,
    /// Whether the writer buffers (TLS): only then does a write need a flush step.
    flushes: bool,
}

/// What one step of a pipe did.
enum Step {
    Moved,
    Eof,
    Intercept(Command),
}

impl Pipe {
    /// A pipe whose writer needs a flush after writes when `flushes` (TLS); plain TCP writes
    /// go straight to the socket, so the relay skips the extra step there.
    pub fn new(flushes: bool) -> Self {
        Self {
            data: vec![0u8; BUFFER_SIZE].into_boxed_slice(),
            sent: 0,
            approved: 0,
            filled: 0,
            needs_flush: false,
            flushes,
        }
    }

    /// Held bytes at the front of the buffer (after a compaction).
    fn held(&self) -> &[u8] {
        &self.data[self.approved..self.filled]
    }

    /// Drops `n` held bytes that the proxy consumed itself.
    fn consume_held(&mut self, n: usize) {
        self.approved += n;
        self.sent = self.approved;
    }

    fn compact(&mut self) {
        if self.approved > 0 {
            self.data.copy_within(self.approved..self.filled, 0);
            self.filled -= self.approved;
            self.sent = 0;
            self.approved = 0;
        }
    }

    /// One write or flush of pending bytes; `None` when nothing is pending.
    async fn write_some<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> Option<io::Result<()>> {
        if self.sent < self.approved {
            return Some(match w.write(&self.data[self.sent..self.approved]).await {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += n;
                    self.needs_flush = self.flushes;
                    Ok(())
                }
                Err(e) => Err(e),
            });
        }
        if self.needs_flush {
            let r = w.flush().await;
            self.needs_flush = false;
            return Some(r);
        }
        None
    }

    /// Backend to client: one write, flush or read.
    async fn step_raw<R, W>(
        &mut self,
        r: &mut R,
        w: &mut W,
        activity: &ProjectActivity,
    ) -> io::Result<Step>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if let Some(res) = self.write_some(w).await {
            return res.map(|()| Step::Moved);
        }
        self.sent = 0;
        self.approved = 0;
        self.filled = 0;
        let n = r.read(&mut self.data).await?;
        if n == 0 {
            return Ok(Step::Eof);
        }
        self.filled = n;
        self.approved = n;
        activity.touch();
        activity.relayed_down(n as u64);
        metrics::hot().bytes_b2c.increment(n as u64);
        Ok(Step::Moved)
    }

    /// Scans the bytes a client sent after an intercepted packet (pipelined commands), which
    /// would otherwise wait for the client's next read.
    fn rescan(&mut self, walker: &mut CommandWalker, intercepted: &mut Option<Command>) {
        match walker.scan(&self.data[self.approved..self.filled]) {
            Scan::Forward(k) => self.approved += k,
            Scan::Intercept { at, command } => {
                self.approved += at;
                *intercepted = Some(command);
            }
        }
    }

    /// Client to backend: one write, flush or read, walking headers of what was read.
    async fn step_walked<R, W>(
        &mut self,
        r: &mut R,
        w: &mut W,
        walker: &mut CommandWalker,
        intercepted: &mut Option<Command>,
        activity: &ProjectActivity,
    ) -> io::Result<Step>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if let Some(res) = self.write_some(w).await {
            return res.map(|()| Step::Moved);
        }
        self.compact();
        if let Some(command) = *intercepted {
            return Ok(Step::Intercept(command));
        }
        let n = r.read(&mut self.data[self.filled..]).await?;
        if n == 0 {
            return Ok(Step::Eof);
        }
        self.filled += n;
        activity.touch();
        activity.relayed_up(n as u64);
        metrics::hot().bytes_c2b.increment(n as u64);
        match walker.scan(&self.data[self.approved..self.filled]) {
            Scan::Forward(k) => self.approved += k,
            Scan::Intercept { at, command } => {
                self.approved += at;
                *intercepted = Some(command);
            }
        }
        Ok(Step::Moved)
    }
}

/// Relays until either side closes, or `shutdown` is cancelled (the drain timeout of a
/// shutdown ran out): then the client is told (ERR 1053) before the session is closed.
/// `auth` carries what COM_CHANGE_USER needs; `flushes` says which writers buffer (TLS):
/// (client, backend). A COM_SET_OPTION seen on the way is recorded in `auth`'s state (the
/// session is then never pooled).
#[allow(clippy::too_many_arguments)]
pub async fn relay<CR, CW, BR, BW, A>(
    client_r: &mut CR,
    client_w: &mut CW,
    flushes: (bool, bool),
    backend_r: &mut BR,
    backend_w: &mut BW,
    activity: &Arc<ProjectActivity>,
    auth: &mut A,
    shutdown: &CancellationToken,
) -> Result<End, ProxyError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
    A: SessionAuth,
{
    let mut walker = CommandWalker::new();
    let legs = change_user::Legs {
        client_r,
        client_w,
        backend_r,
        backend_w,
    };
    let ended = relay_walking(legs, flushes, activity, auth, shutdown, &mut walker).await;
    if walker.saw_set_option() {
        auth.state().set_option = true;
    }
    ended
}

async fn relay_walking<CR, CW, BR, BW, A>(
    legs: change_user::Legs<'_, CR, CW, BR, BW>,
    flushes: (bool, bool),
    activity: &Arc<ProjectActivity>,
    auth: &mut A,
    shutdown: &CancellationToken,
    walker: &mut CommandWalker,
) -> Result<End, ProxyError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
    A: SessionAuth,
{
    let change_user::Legs {
        client_r,
        client_w,
        backend_r,
        backend_w,
    } = legs;
    let (client_flushes, backend_flushes) = flushes;
    let mut up = Pipe::new(backend_flushes);
    let mut down = Pipe::new(client_flushes);
    let mut intercepted = None;
    // Created and registered with the token once: a fresh `cancelled()` per turn of the loop
    // would lock the token's waiter list twice per packet.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            step = up.step_walked(client_r, backend_w, walker, &mut intercepted, activity) => {
                match step.map_err(ProxyError::ClientIo)? {
                    Step::Moved => {}
                    Step::Eof if walker.at_boundary() && up.held().is_empty() => {
                        return Ok(End::ClientQuit);
                    }
                    Step::Eof => return Ok(End::ClientClosed),
                    Step::Intercept(Command::Quit) => return Ok(End::ClientQuit),
                    Step::Intercept(command) => {
                        flush_all(&mut down, client_w).await.map_err(ProxyError::ClientIo)?;
                        let mut io = change_user::Legs { client_r, client_w, backend_r, backend_w };
                        match command {
                            Command::Kill => handle_kill(&mut up, &mut io, auth).await?,
                            _ => change_user::handle(&mut up, &mut io, auth).await?,
                        }
                        intercepted = None;
                        walker.after_intercept();
                        up.rescan(walker, &mut intercepted);
                    }
                }
            }
            step = down.step_raw(backend_r, client_w, activity) => {
                match step.map_err(ProxyError::BackendIo)? {
                    Step::Moved => {}
                    Step::Eof => {
                        flush_all(&mut down, client_w).await.map_err(ProxyError::ClientIo)?;
                        return Ok(End::BackendClosed);
                    }
                    Step::Intercept(_) => {}
                }
            }
            () = &mut cancelled => {
                tell_shutdown(&mut down, client_w).await;
                return Err(ProxyError::ShuttingDown);
            }
        }
    }
}

/// Carries out (or refuses) the KILL held at the front of `up`; KILL forms doze leaves to the
/// compute are forwarded unchanged.
async fn handle_kill<CR, CW, BR, BW, A>(
    up: &mut Pipe,
    io: &mut change_user::Legs<'_, CR, CW, BR, BW>,
    auth: &mut A,
) -> Result<(), ProxyError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
    A: SessionAuth,
{
    // A client that sends part of a KILL and stalls holds only its own session, but not for
    // ever (the drain at shutdown does not reach this wait).
    let packet = tokio::time::timeout(
        KILL_PACKET_TIMEOUT,
        take_packet(up, io.client_r, walker::MAX_KILL_QUERY),
    )
    .await
    .map_err(|_| {
        ProxyError::ClientIo(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client sent part of a KILL and stalled",
        ))
    })?
    .map_err(ProxyError::ClientIo)?;
    let Some(request) = kill::parse(&packet.payload) else {
        crate::stream::write_payload(io.backend_w, packet.seq, &packet.payload)
            .await
            .map_err(ProxyError::BackendIo)?;
        return Ok(());
    };
    match auth.kill(request).await {
        Ok(()) => {
            metrics::kill("done");
            // The client's answer is the compute's answer to a COM_PING sent in the KILL's
            // place: an OK with the session's real status flags (in a transaction,
            // autocommit off...), where a fixed OK would tell a driver that tracks them
            // (Connector/J, mysql-connector) that its transaction ended. It comes back
            // through the relay, after any answer still on its way to a client that
            // pipelined commands before the KILL. A KILL of the session's own connection
            // ends it, and the client learns it as from MariaDB: the connection closes.
            crate::stream::write_payload(io.backend_w, packet.seq, &[doze_protocol::COM_PING])
                .await
                .map_err(ProxyError::BackendIo)?;
        }
        Err(err) => {
            metrics::kill(if err.code == 1094 {
                "refused"
            } else {
                "failed"
            });
            // Written straight to the client: for a client that pipelined commands before
            // the KILL and has answers still in flight, this ERR arrives before them.
            crate::stream::send_err(io.client_w, packet.seq.wrapping_add(1), &err).await;
        }
    }
    Ok(())
}

/// How long the rest of a KILL packet may take to arrive once its start did.
const KILL_PACKET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends the client ERR 1053 (server shutdown in progress), as MariaDB does to the sessions it
/// closes on shutdown: after what the compute already sent, as the answer to the client's next
/// command (sequence id 1). At most a second is spent on a client that does not read.
async fn tell_shutdown<W: AsyncWrite + Unpin>(down: &mut Pipe, client_w: &mut W) {
    let Some(err) = ProxyError::ShuttingDown.to_err_packet() else {
        return;
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        flush_all(down, client_w).await?;
        crate::stream::send_err(client_w, 1, &err).await;
        client_w.flush().await
    })
    .await;
}

/// Writes out everything a pipe still holds for its writer.
async fn flush_all<W: AsyncWrite + Unpin>(pipe: &mut Pipe, w: &mut W) -> io::Result<()> {
    while let Some(res) = pipe.write_some(w).await {
        res?;
    }
    Ok(())
}

/// Reads a whole packet whose first bytes are held in `pipe`, the rest from `r`, and removes it
/// from the pipe. Used for intercepted packets (small by nature, capped at `max`).
pub async fn take_packet<R: AsyncRead + Unpin>(
    pipe: &mut Pipe,
    r: &mut R,
    max: usize,
) -> io::Result<doze_protocol::Packet> {
    let mut header = [0u8; 4];
    let from_buf = pipe.held().len().min(4);
    header[..from_buf].copy_from_slice(&pipe.held()[..from_buf]);
    pipe.consume_held(from_buf);
    r.read_exact(&mut header[from_buf..]).await?;
    let (len, seq) = doze_protocol::parse_header(header);
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "intercepted packet too large",
        ));
    }
    let mut payload = vec![0u8; len];
    let from_buf = pipe.held().len().min(len);
    payload[..from_buf].copy_from_slice(&pipe.held()[..from_buf]);
    pipe.consume_held(from_buf);
    r.read_exact(&mut payload[from_buf..]).await?;
    pipe.compact();
    Ok(doze_protocol::Packet::new(seq, payload))
}
