//! The life of one client connection, phase by phase:
//! handshake -> route -> authenticate -> wake -> backend login -> relay.
//!
//! Every phase returns the value the next one consumes. Failures become a MySQL ERR packet for
//! the client (when it can still read one) and a fixed `reason` label in the metrics. Every log
//! line of a session carries its connection id, and its project once known.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use doze_gateway::activity::{ProjectActivity, SessionGuard};
use doze_protocol::Capabilities;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, field, info, info_span, warn};

use crate::auth::{self, Attempt, Credentials};
use crate::backend::{Backend, Login};
use crate::config::ProxyConfig;
use crate::connector::{Connector, KillError};
use crate::control::Control;
use crate::error::ProxyError;
use crate::handshake::{self, ClientHello};
use crate::limits::{Limits, LoginSlot};
use crate::metrics;
use crate::names;
use crate::pool::{self, CheckIn};
use crate::relay::{self, End, change_user::AuthState, change_user::SessionAuth, kill};
use crate::route::{self, Route};
use crate::sessions::{self, Registry};
use crate::stream::{BackendStream, ClientStream, PacketStream};
use crate::throttle::{self, Throttle};

/// What every connection shares: settings, the control plane, the connection budgets and the
/// failed-login records.
pub struct Shared<C> {
    pub cfg: ProxyConfig,
    pub control: C,
    /// Shared with whoever changes the limits while serving (SIGHUP).
    pub limits: Arc<Limits>,
    pub throttle: Throttle,
    /// How sessions get logged-in backends (wake, pool, connect, login, retries).
    pub connector: Connector,
    /// Which backend session serves which client (for KILL).
    pub sessions: Arc<Registry>,
    /// Cancelled when a shutdown's drain timeout runs out: open sessions tell their clients
    /// and close.
    pub shutdown: CancellationToken,
}

impl<C> Shared<C> {
    pub fn new(cfg: ProxyConfig, control: C) -> Self {
        let limits = Arc::new(Limits::for_config(&cfg));
        Self::with_limits(cfg, control, limits)
    }

    /// As [`Shared::new`], with limits the caller keeps a handle to (to change them while
    /// serving).
    pub fn with_limits(cfg: ProxyConfig, control: C, limits: Arc<Limits>) -> Self {
        let throttle = Throttle::new(cfg.auth_backoff);
        let connector = Connector::new(&cfg);
        Self {
            cfg,
            control,
            limits,
            throttle,
            connector,
            sessions: Registry::new(),
            shutdown: CancellationToken::new(),
        }
    }
}

/// Runs one connection to its end, logging and counting how it ended. `login_slot` is given
/// back once the client has authenticated (or failed to).
pub async fn handle<C: Control + Clone>(
    shared: Arc<Shared<C>>,
    tcp: TcpStream,
    peer: SocketAddr,
    id: u32,
    login_slot: LoginSlot,
) {
    let span = info_span!("conn", id, %peer, project = field::Empty, user = field::Empty);
    async move {
        let _active = metrics::ActiveGuard::new();
        let started = Instant::now();
        match run(&shared, tcp, peer, id, login_slot).await {
            Ok(end) => {
                metrics::closed(end.reason());
                info!(
                    reason = end.reason(),
                    secs = started.elapsed().as_secs_f64(),
                    "session closed"
                );
            }
            Err(e) => {
                metrics::closed(e.reason());
                if e.is_client_fault() {
                    info!(reason = e.reason(), "connection refused: {e}");
                } else {
                    warn!(reason = e.reason(), "connection failed: {e}");
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// A client that proved its password.
struct Authenticated {
    /// The client's socket, at the sequence id of our next packet to it.
    conn: PacketStream<ClientStream>,
    hello_caps: Capabilities,
    collation: u8,
    max_packet: u32,
    attributes: Option<Vec<(String, String)>>,
    scramble: [u8; 20],
    route: Route,
    project_id: String,
    project_name: String,
    /// The project's own session limit (`config.max_connections`).
    max_connections: Option<u64>,
    /// Whether the project's backend sessions may be reused (`config.pool.mode`).
    pooling: bool,
    credentials: Credentials,
}

async fn run<C: Control + Clone>(
    shared: &Shared<C>,
    tcp: TcpStream,
    peer: SocketAddr,
    id: u32,
    login_slot: LoginSlot,
) -> Result<End, ProxyError> {
    let cfg = &shared.cfg;
    // Only the PROXY header needs it (one syscall per connection otherwise spent for nothing).
    let local = if cfg.backend_proxy_protocol {
        tcp.local_addr().ok()
    } else {
        None
    };
    let started = Instant::now();
    let login = tokio::time::timeout(cfg.handshake_timeout, login_client(shared, tcp, peer, id));
    let mut client = login.await.map_err(|_| ProxyError::HandshakeTimeout)??;
    drop(login_slot);
    metrics::handshake_duration().record(started.elapsed().as_secs_f64());
    let Some(_session_slot) = shared.limits.session_slot() else {
        return fail(client.conn, ProxyError::TooManyConnections("")).await;
    };
    let activity = shared.control.activity(&client.project_id);
    if let Err(e) = check_project_limit(
        shared.limits.per_project(),
        client.max_connections,
        &activity,
    ) {
        return fail(client.conn, e).await;
    }
    let _session = activity.open_session();
    let proxy_header = match (cfg.backend_proxy_protocol, local) {
        (true, Some(local)) => Some((peer, local)),
        _ => None,
    };
    let pooled = (client.pooling && poolable(client.hello_caps)).then_some(activity.as_ref());
    let backend = match connect_backend(shared, &client, proxy_header, pooled).await {
        Ok(b) => b,
        Err(e) => return fail(client.conn, e).await,
    };
    if let Err(e) = client.conn.write(&backend.ok_payload).await {
        // Never relayed anything: the session is as clean as it was handed over.
        pool::quit(backend.stream);
        return Err(ProxyError::ClientIo(e));
    }
    let kills = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let registered = shared.sessions.register(
        id,
        sessions::Entry {
            project_id: client.project_id.clone(),
            user: client.route.user.clone(),
            address: backend.address.clone(),
            thread_id: backend.thread_id,
            credentials: client.credentials.clone(),
            kills: Arc::clone(&kills),
        },
    );
    debug!(thread_id = backend.thread_id, "backend session");
    let (ended, mut leftover) =
        relay_session(shared, client, backend, &activity, _session, &registered).await;
    // Unfindable from here on: a KILL that has not yet checked its target gives up; one that
    // has is counted in `kills`, and then the session is not pooled.
    drop(registered);
    leftover.reusable &= kills.load(std::sync::atomic::Ordering::SeqCst) == 0;
    after_session(shared, &ended, leftover, activity);
    ended
}

/// Whether a client's sessions can be reused at all. MariaDB applies CLIENT_INTERACTIVE
/// (`wait_timeout` = `interactive_timeout`) and CLIENT_IGNORE_SPACE (in `sql_mode`) at login
/// only, and COM_RESET_CONNECTION undoes them: such clients always get a fresh login.
fn poolable(caps: Capabilities) -> bool {
    !caps.intersects(Capabilities::INTERACTIVE | Capabilities::IGNORE_SPACE)
}

/// What becomes of a backend session once its client is gone: reset and pooled when the
/// client left cleanly and nothing changed its identity, closed otherwise.
fn after_session<C: Control + Clone>(
    shared: &Shared<C>,
    ended: &Result<End, ProxyError>,
    leftover: Leftover,
    activity: Arc<ProjectActivity>,
) {
    let Leftover {
        backend,
        project_id,
        reusable,
        credentials,
        user,
    } = leftover;
    let clean = matches!(ended, Ok(End::ClientQuit));
    match (&backend.pool_key, clean) {
        (Some(key), true) if reusable => {
            let key = key.clone();
            let pool = Arc::clone(&shared.connector.pool);
            let killer = shared.connector.killer();
            let address = backend.address.clone();
            let check_in = CheckIn {
                project_id,
                activity,
                key,
                backend,
            };
            let span = tracing::Span::current();
            tokio::spawn(
                pool::check_in(pool, check_in, move |thread_id| async move {
                    // The client left a query running: end it, as its session is gone.
                    let killed = killer
                        .kill_thread(&address, &user, &credentials, thread_id, false, || true)
                        .await;
                    debug!(
                        thread_id,
                        ?killed,
                        "killed a session its client left mid-query"
                    );
                })
                .instrument(span),
            );
        }
        (Some(_), _) => {
            pool::discarded(pool::Discard::Unclean);
            if clean {
                pool::quit(backend.stream);
            }
        }
        (None, true) => pool::quit(backend.stream),
        (None, false) => {}
    }
}

/// Phases 1-3 (handshake, route, authenticate), all under the handshake timeout.
async fn login_client<C: Control>(
    shared: &Shared<C>,
    tcp: TcpStream,
    peer: SocketAddr,
    id: u32,
) -> Result<Authenticated, ProxyError> {
    let cfg = &shared.cfg;
    let hello = match handshake::client_handshake(tcp, id, cfg).await {
        Ok(h) => h,
        Err(failed) => {
            if let Some(conn) = failed.conn {
                return fail(conn, failed.error).await;
            }
            return Err(failed.error);
        }
    };
    let ClientHello {
        mut conn,
        response,
        scramble,
        capabilities,
    } = hello;
    let Some(route) = route::route(
        conn.get_ref().sni(),
        cfg.sni_suffix.as_deref(),
        &response.username,
        response.database.as_deref(),
    ) else {
        metrics::auth_failure("no_project");
        return fail(conn, ProxyError::NoProject).await;
    };
    let span = tracing::Span::current();
    span.record(
        "project",
        field::display(names::for_log(&route.project_key)),
    );
    span.record("user", field::display(names::for_log(&route.user)));
    if let Err(what) = names::check_login_names(&route.user, route.database.as_deref()) {
        metrics::auth_failure("bad_name");
        return fail(conn, ProxyError::BadName(what)).await;
    }
    let lookup = match shared
        .control
        .lookup_role(&route.project_key, &route.user)
        .await
    {
        Ok(l) => l,
        Err(e) => {
            metrics::auth_failure("unknown_project");
            if matches!(e, doze_gateway::LookupError::UnknownProject(_)) {
                // Probing project names is slowed down like guessing passwords.
                let wait = shared.throttle.wait_for_address(peer.ip());
                tokio::time::sleep(wait).await;
                shared.throttle.failed_address(peer.ip());
            }
            return fail(conn, e.into()).await;
        }
    };
    let attempt = Attempt {
        plugin: response.auth_plugin.as_deref(),
        token: &response.auth_response,
    };
    let who = throttle::Attempt {
        ip: peer.ip(),
        project_id: &lookup.project_id,
        user: &route.user,
    };
    let wait = shared.throttle.wait_before_check(who);
    if !wait.is_zero() {
        debug!(
            ms = wait.as_millis() as u64,
            "delaying the answer after failed logins"
        );
        tokio::time::sleep(wait).await;
    }
    let checked = auth::authenticate(
        &mut conn,
        &scramble,
        attempt,
        lookup.stored_hash,
        &route.user,
    )
    .await;
    let credentials = match checked {
        Ok(c) => c,
        Err(e) => {
            if matches!(e, ProxyError::AccessDenied { .. }) {
                metrics::auth_failure("bad_password");
                shared.throttle.failed(who);
            }
            return fail(conn, e).await;
        }
    };
    shared.throttle.succeeded(who);
    debug!(via = route.via, "authenticated");
    Ok(Authenticated {
        conn,
        hello_caps: capabilities,
        collation: response.collation,
        max_packet: response.max_packet,
        attributes: response.attributes,
        scramble,
        route,
        project_id: lookup.project_id,
        project_name: lookup.project_name,
        max_connections: lookup.max_connections,
        pooling: lookup.pooling,
        credentials,
    })
}

/// The project's session limit: the smaller of the proxy-wide `--max-connections-per-project`
/// (0 = none) and the project's own `config.max_connections`.
fn check_project_limit(
    per_project: u64,
    project_max: Option<u64>,
    activity: &ProjectActivity,
) -> Result<(), ProxyError> {
    let global = Some(per_project).filter(|m| *m > 0);
    let max = match (global, project_max) {
        (Some(g), Some(p)) => Some(g.min(p)),
        (g, p) => g.or(p),
    };
    if max.is_some_and(|max| activity.sessions() >= max) {
        return Err(ProxyError::TooManyConnections(" for this project"));
    }
    Ok(())
}

/// Phases 4-5 through the connector: the backend login for this client.
async fn connect_backend<C: Control>(
    shared: &Shared<C>,
    client: &Authenticated,
    proxy_header: Option<(SocketAddr, SocketAddr)>,
    pooled: Option<&ProjectActivity>,
) -> Result<Backend, ProxyError> {
    let login = Login {
        user: &client.route.user,
        database: client.route.database.as_deref(),
        credentials: &client.credentials,
        capabilities: client.hello_caps,
        collation: client.collation,
        max_packet: client.max_packet,
        attributes: client.attributes.as_deref(),
        proxy_header,
    };
    shared
        .connector
        .backend_for(&shared.control, &client.project_id, &login, pooled)
        .await
}

/// Counts a KILL in flight until dropped, unless kept.
struct KillCounted {
    kills: Arc<std::sync::atomic::AtomicU32>,
    keep: bool,
}

impl KillCounted {
    fn new(kills: &Arc<std::sync::atomic::AtomicU32>) -> Self {
        kills.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self {
            kills: Arc::clone(kills),
            keep: false,
        }
    }

    /// Leaves the KILL counted for good: its target is never pooled.
    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for KillCounted {
    fn drop(&mut self) {
        if !self.keep {
            self.kills.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// What is left of a session once relaying stopped: the backend (for the pool) and who it
/// is logged in as.
struct Leftover {
    backend: Backend,
    project_id: String,
    /// False when the session changed user (COM_CHANGE_USER) or a KILL of it was under way:
    /// its state is not the one it was logged in with, and it is never pooled.
    reusable: bool,
    user: String,
    credentials: Credentials,
}

/// Phase 6: relay until one side closes. Returns how it ended, and the backend with who it is
/// logged in as.
async fn relay_session<C: Control + Clone>(
    shared: &Shared<C>,
    client: Authenticated,
    mut backend: Backend,
    activity: &Arc<ProjectActivity>,
    _session: SessionGuard,
    registered: &sessions::Registered,
) -> (Result<End, ProxyError>, Leftover) {
    info!(via = client.route.via, "session started");
    let mut auth = ConnAuth {
        shared,
        registered,
        project_id: client.project_id,
        project_name: client.project_name,
        state: AuthState {
            proxy_scramble: client.scramble,
            client_caps: client.hello_caps,
            backend_caps: backend.capabilities,
            backend_scramble: std::mem::take(&mut backend.scramble),
            user: client.route.user,
            credentials: client.credentials,
            changed_user: false,
            set_option: false,
        },
    };
    let client = client.conn.into_parts().0;
    let shutdown = &shared.shutdown;
    // Plain sockets split without a lock (`TcpStream::split`); TLS halves share one.
    // Moved out for the relay and put back after it (the rest of `backend` waits).
    let (ended, stream) = match backend.stream {
        BackendStream::Plain(mut tcp) => {
            let ended = {
                let (mut br, mut bw) = tcp.split();
                relay_to(
                    client,
                    (&mut br, &mut bw, false),
                    activity,
                    &mut auth,
                    shutdown,
                )
                .await
            };
            (ended, BackendStream::Plain(tcp))
        }
        other => {
            let (mut br, mut bw) = tokio::io::split(other);
            let ended = relay_to(
                client,
                (&mut br, &mut bw, true),
                activity,
                &mut auth,
                shutdown,
            )
            .await;
            (ended, br.unsplit(bw))
        }
    };
    backend.stream = stream;
    backend.scramble = auth.state.backend_scramble;
    let leftover = Leftover {
        backend,
        project_id: auth.project_id,
        reusable: !auth.state.changed_user && !auth.state.set_option,
        user: auth.state.user,
        credentials: auth.state.credentials,
    };
    (ended, leftover)
}

async fn relay_to<BR, BW, A>(
    client: ClientStream,
    (br, bw, backend_flushes): (&mut BR, &mut BW, bool),
    activity: &Arc<ProjectActivity>,
    auth: &mut A,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<End, ProxyError>
where
    BR: tokio::io::AsyncRead + Unpin,
    BW: tokio::io::AsyncWrite + Unpin,
    A: SessionAuth,
{
    match client {
        ClientStream::Plain(mut tcp) => {
            let (mut cr, mut cw) = tcp.split();
            relay::relay(
                &mut cr,
                &mut cw,
                (false, backend_flushes),
                br,
                bw,
                activity,
                auth,
                shutdown,
            )
            .await
        }
        tls @ ClientStream::Tls(_) => {
            let (mut cr, mut cw) = tokio::io::split(tls);
            relay::relay(
                &mut cr,
                &mut cw,
                (true, backend_flushes),
                br,
                bw,
                activity,
                auth,
                shutdown,
            )
            .await
        }
    }
}

/// COM_CHANGE_USER lookups and KILLs for a session, within its project (and user) only.
struct ConnAuth<'a, C> {
    shared: &'a Shared<C>,
    /// This session's entry in the registry KILLs search.
    registered: &'a sessions::Registered,
    project_id: String,
    project_name: String,
    state: AuthState,
}

impl<C: Control> SessionAuth for ConnAuth<'_, C> {
    fn is_own_project(&self, key: &str) -> bool {
        key == self.project_id || key == self.project_name
    }

    async fn lookup(&self, user: &str) -> Result<Option<[u8; 20]>, ProxyError> {
        let found = self
            .shared
            .control
            .lookup_role(&self.project_id, user)
            .await?;
        Ok(found.stored_hash)
    }

    fn state(&mut self) -> &mut AuthState {
        &mut self.state
    }

    fn user_changed(&mut self) {
        self.registered
            .set_user(&self.state.user, &self.state.credentials);
    }

    async fn kill(&self, request: kill::KillRequest) -> Result<(), doze_protocol::ErrPacket> {
        let registry = &self.shared.sessions;
        let Some((id, target)) = registry.find(&self.project_id, &self.state.user, request.id)
        else {
            info!(
                target = request.id,
                "KILL of a session this user may not name; refused"
            );
            return Err(kill::unknown_thread(request.id));
        };
        info!(
            target = id,
            thread_id = target.thread_id,
            query_only = request.query_only,
            "KILL"
        );
        let counted = KillCounted::new(&target.kills);
        let result = self
            .shared
            .connector
            .killer()
            .kill_thread(
                &target.address,
                &target.user,
                &self.state.credentials,
                target.thread_id,
                request.query_only,
                || registry.still_serves(id, &target.address, target.thread_id),
            )
            .await;
        if let Err(KillError::Unanswered(_)) = &result {
            // The KILL may still land: the target's session stays marked, so it is never
            // pooled (a late KILL would otherwise hit the next client of the session).
            counted.keep();
        }
        result.map_err(|e| match e {
            KillError::Gone => kill::unknown_thread(request.id),
            KillError::Refused(err) => err,
            KillError::Failed(why) | KillError::Unanswered(why) => doze_protocol::ErrPacket::new(
                1105,
                "HY000",
                format!("doze: could not reach the compute to carry out the KILL: {why}"),
            ),
        })
    }
}

/// Sends the client the ERR for `error` (when it has one) and returns the error.
async fn fail<T>(mut conn: PacketStream<ClientStream>, error: ProxyError) -> Result<T, ProxyError> {
    if let Some(packet) = error.to_err_packet() {
        conn.send_err(&packet).await;
    }
    Err(error)
}
