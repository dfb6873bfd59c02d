//! `doze serve`: wires the proxy, the control plane, the admin API and the scheduler together,
//! and shuts them down in order on SIGTERM/SIGINT (stop accepting, drain sessions, stop computes).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
#[cfg(feature = "control-plane")]
use doze_control::{ControlConfig, ControlPlane, DriverKind, activity::Activity};
use doze_proxy::limits::Limits;
use doze_proxy::static_routes::StaticRoutes;
use doze_proxy::{Control, ProxyConfig, Shared, accept, tls};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::parse_duration;

#[derive(Args, Debug)]
#[cfg_attr(not(feature = "control-plane"), allow(dead_code))]
pub struct ServeArgs {
    /// A TOML file of settings: every flag below can be a key, by its long name (`proxy-listen = "0.0.0.0:3306"`, or `proxy_listen`). Flags and DOZE_* environment variables win over it. Example: deploy/doze.example.toml.
    #[arg(long, env = "DOZE_CONFIG")]
    config: Option<PathBuf>,

    /// Address the MySQL proxy listens on; applications point their drivers here.
    #[arg(long, env = "DOZE_PROXY_LISTEN", default_value = "127.0.0.1:6033")]
    proxy_listen: SocketAddr,

    /// Address of the admin REST API, /metrics and /healthz. A non-loopback address needs --admin-token.
    #[arg(long, env = "DOZE_ADMIN_LISTEN", default_value = "127.0.0.1:8080")]
    admin_listen: SocketAddr,

    /// Where state lives: sqlite://PATH (created on first start) or postgres://user:pass@host/db.
    #[arg(
        long,
        env = "DOZE_DB_DSN",
        default_value = "sqlite://./doze-data/state.db"
    )]
    db_dsn: String,

    /// Directory for the computes' storage (one MariaDB data directory per project).
    #[arg(long, env = "DOZE_DATA_DIR", default_value = "./doze-data")]
    data_dir: PathBuf,

    /// This replica's id, unique among the doze processes sharing one PostgreSQL (shown by GET /api/v1/replicas and in the scheduler's lease). Default: the host name and a random suffix.
    #[arg(long, env = "DOZE_REPLICA_ID")]
    replica_id: Option<String>,

    /// Compute driver: `local` runs mariadbd processes on this machine; `kubernetes` runs a MariaDB pod per compute, with a PersistentVolumeClaim and a Secret (see docs/kubernetes.md).
    #[arg(long, env = "DOZE_DRIVER", default_value = "local")]
    driver: String,

    /// Kubernetes driver: kubeconfig file. Default: the pod's service account when doze runs in a cluster, else KUBECONFIG or ~/.kube/config, as kubectl does.
    #[arg(long, env = "DOZE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,

    /// Kubernetes driver: namespace of the computes' pods, volume claims and secrets.
    #[arg(long, env = "DOZE_NAMESPACE", default_value = "default")]
    namespace: String,

    /// Kubernetes driver: MariaDB image of the computes (a compute's config.image wins).
    #[arg(long, env = "DOZE_COMPUTE_IMAGE", default_value = "mariadb:11.8")]
    compute_image: String,

    /// Kubernetes driver: StorageClass of the computes' volume claims. Default: the cluster's default class.
    #[arg(long, env = "DOZE_STORAGE_CLASS")]
    storage_class: Option<String>,

    /// Kubernetes driver: size of a compute's volume claim (a compute's config.resources.storage wins).
    #[arg(long, env = "DOZE_STORAGE_SIZE", default_value = "10Gi")]
    storage_size: String,

    /// Kubernetes driver: a kubernetes.io/tls Secret (for instance cert-manager's) mounted into every compute at /etc/mysql/tls; computes then accept TLS logins only. Its certificate must name --backend-tls-name; use with --backend-tls require.
    #[arg(long, env = "DOZE_COMPUTE_TLS_SECRET")]
    compute_tls_secret: Option<String>,

    /// TLS on doze's logins to computes: `off`, or `require` (the compute's certificate must chain to --backend-ca). Use `require` when computes are across a network, as with the kubernetes driver.
    #[arg(long, env = "DOZE_BACKEND_TLS", default_value = "off", value_parser = ["off", "require"])]
    backend_tls: String,

    /// PEM CA bundle that computes' certificates must chain to (needed by --backend-tls require).
    #[arg(long, env = "DOZE_BACKEND_CA")]
    backend_ca: Option<PathBuf>,

    /// The name computes' certificates must carry (a DNS SAN) with --backend-tls require. Computes get a new address at every wake, so doze checks this fixed name, not the address.
    #[arg(long, env = "DOZE_BACKEND_TLS_NAME", default_value = "doze-compute")]
    backend_tls_name: String,

    /// Suspend a compute after this long without sessions or traffic (a project's config.idle_timeout, in seconds, overrides; 0 = never).
    #[arg(long, env = "DOZE_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    idle_timeout: Duration,

    /// What an idle compute becomes: `freeze` (the kernel stops scheduling it: no CPU, memory and warm caches kept, the next connection resumes it in about a millisecond; stopped later, see --stop-after) or `stop` (clean shutdown, memory freed; the next connection starts it again). A project's config.suspend_mode overrides. Drivers that cannot freeze (kubernetes) always stop.
    #[arg(long, env = "DOZE_SUSPEND_MODE", default_value = "freeze")]
    suspend_mode: String,

    /// Stop a compute that has been frozen this long (0 = only under memory pressure, see --frozen-memory-budget).
    #[arg(long, env = "DOZE_STOP_AFTER", default_value = "30m", value_parser = parse_duration)]
    stop_after: Duration,

    /// Frozen computes may hold this much memory together (bytes, or a quantity like 2Gi or 512Mi, or a share of the machine like 25%); above it the least recently used frozen computes are stopped. `none` = no budget.
    #[arg(long, env = "DOZE_FROZEN_MEMORY_BUDGET", default_value = "25%")]
    frozen_memory_budget: String,

    /// How the local driver freezes computes: `auto` (cgroup v2 if a writable hierarchy exists, else the cgroup v1 freezer, else SIGSTOP/SIGCONT; the choice is logged at start), `cgroup2`, `cgroup1`, `signal`, or `off` (never freeze: idle computes are stopped).
    #[arg(long, env = "DOZE_FREEZER", default_value = "auto")]
    freezer: String,

    /// How often the scheduler looks for idle computes.
    #[arg(long, env = "DOZE_CHECK_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    check_interval: Duration,

    /// Keep the audit log of admin changes this long (`GET /api/v1/audit`), like `90d` or `1y`; older entries are deleted by the scheduler. `0` keeps them all.
    #[arg(long, env = "DOZE_AUDIT_RETENTION", default_value = "90d", value_parser = parse_duration)]
    audit_retention: Duration,

    /// Bearer token required on every /api route (at least 16 characters, no spaces). Without one, doze generates one into <data-dir>/admin.token (0600), where the doze CLI finds it. Prefer DOZE_ADMIN_TOKEN or --admin-token-file to this flag: a flag's value is visible to every local user in `ps` and /proc/PID/cmdline.
    #[arg(long, env = "DOZE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,

    /// File holding the admin token (its first line); wins over --admin-token. Keep it 0600.
    #[arg(long, env = "DOZE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,

    /// Longest a client waits for its project's compute to wake before it gets an error.
    #[arg(long, env = "DOZE_WAKE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    wake_timeout: Duration,

    /// Largest packet computes accept (MariaDB max_allowed_packet), e.g. 64M or 1G.
    #[arg(long, env = "DOZE_MAX_ALLOWED_PACKET", default_value = "64M")]
    max_allowed_packet: String,

    /// Run the proxy alone with projects, backends and roles from this TOML file (no control plane, nothing is woken).
    #[arg(long, env = "DOZE_ROUTES")]
    routes: Option<PathBuf>,

    /// PEM certificate chain for TLS to clients (with --tls-key). Without it, SSL is not offered.
    #[arg(long, env = "DOZE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "DOZE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Refuse clients that do not upgrade to TLS (with a clear error).
    #[arg(long, env = "DOZE_REQUIRE_TLS", requires = "tls_cert")]
    require_tls: bool,

    /// Route TLS clients by SNI: a client connecting to <project>.<suffix> reaches that project.
    #[arg(long, env = "DOZE_SNI_SUFFIX")]
    sni_suffix: Option<String>,

    /// Server version announced to clients (MariaDB 10.x clients strip the 5.5.5- prefix).
    #[arg(long, env = "DOZE_SERVER_VERSION", default_value = doze_proxy::config::DEFAULT_SERVER_VERSION)]
    server_version: String,

    /// Close clients that have not finished the handshake and login within this time.
    #[arg(long, env = "DOZE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,

    /// Close clients that send nothing (no login request, no TLS request) within this time of the greeting.
    #[arg(long, env = "DOZE_FIRST_PACKET_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    first_packet_timeout: Duration,

    /// Connections still logging in (not yet authenticated), all clients together; more get ERR 1040 at once. Counted apart from --max-connections, so silent sockets cannot take the slots of authenticated sessions.
    #[arg(long, env = "DOZE_MAX_PENDING_LOGINS", default_value_t = 4096)]
    max_pending_logins: usize,

    /// Connections still logging in from one client address once half of --max-pending-logins is taken; more get ERR 1040 at once. Below half, one address (an application's pool) may take more.
    #[arg(long, env = "DOZE_MAX_PENDING_LOGINS_PER_IP", default_value_t = 64)]
    max_pending_logins_per_ip: usize,

    /// After 3 failed passwords in a row for a role or from an address, each further login waits this long before its password is checked, doubling per failure (never a lockout).
    #[arg(long, env = "DOZE_AUTH_BACKOFF", default_value = "100ms", value_parser = parse_duration)]
    auth_backoff: Duration,

    /// Longest wait of one login after failed passwords (0 turns the back-off off).
    #[arg(long, env = "DOZE_AUTH_BACKOFF_MAX", default_value = "2s", value_parser = parse_duration)]
    auth_backoff_max: Duration,

    /// Timeout of the TCP connect to a compute.
    #[arg(long, env = "DOZE_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,

    /// A compute must answer doze's login within this once connected; otherwise the client gets an ERR (after one re-wake if the compute turns out dead), never a hang.
    #[arg(long, env = "DOZE_BACKEND_LOGIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    backend_login_timeout: Duration,

    /// Authenticated client sessions open at once, all projects together; more get ERR 1040.
    #[arg(long, env = "DOZE_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,

    /// Client connections open at once per project (0 = no limit); more get ERR 1040.
    #[arg(long, env = "DOZE_MAX_CONNECTIONS_PER_PROJECT", default_value_t = 0)]
    max_connections_per_project: u64,

    /// On SIGTERM/SIGINT, wait this long for open sessions to finish before closing them.
    #[arg(long, env = "DOZE_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,

    /// Send a PROXY protocol v2 header to computes so MariaDB sees client addresses (computes must list doze in proxy_protocol_networks).
    #[arg(long, env = "DOZE_BACKEND_PROXY_PROTOCOL")]
    backend_proxy_protocol: bool,

    /// Bind the proxy port with SO_REUSEPORT so several doze processes can share it.
    #[arg(long, env = "DOZE_REUSE_PORT")]
    reuse_port: bool,

    /// Threads that carry client sessions, each with its own event loop and its own listening socket on the proxy port (SO_REUSEPORT): a session never moves between threads. Default: one per CPU core. 0 runs sessions on the runtime shared with the control plane.
    #[arg(long, env = "DOZE_PROXY_THREADS")]
    proxy_threads: Option<usize>,

    /// Logged-in backend sessions kept idle per project for the next client of the same user (0 turns reuse off everywhere; a project can turn it off with config.pool.mode = "off"). A reused session is reset with COM_RESET_CONNECTION first.
    #[arg(long, env = "DOZE_POOL_MAX_IDLE", default_value_t = 16)]
    pool_max_idle: usize,

    /// An idle pooled session is closed after this long unused; keep it well under the computes' wait_timeout (8h by default).
    #[arg(long, env = "DOZE_POOL_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pool_idle_timeout: Duration,

    /// A backend session is closed instead of pooled once this old, counted from its connect.
    #[arg(long, env = "DOZE_POOL_MAX_LIFETIME", default_value = "1h", value_parser = parse_duration)]
    pool_max_lifetime: Duration,

    /// Log format on stderr: `text` (for people) or `json` (one object per line, with the connection id, project and user of the session or the project of the lifecycle step, for log pipelines).
    #[arg(long, env = "DOZE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    /// Which log lines to write: error, warn, info, debug or trace, or per-module directives like `info,doze_proxy=debug`. SIGHUP applies the --config file's log-level again, without a restart.
    #[arg(long, env = "DOZE_LOG", default_value = "info")]
    log_level: String,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (log, _log_guard, dropped_log_lines) = init_logging(&args.log_format, &args.log_level)?;
    // Everything doze creates (state, secrets, computes' directories) is private unless doze
    // says otherwise for a given directory.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let metrics = install_metrics()?;
    doze_proxy::metrics::describe();
    publish_dropped_log_lines(dropped_log_lines);
    let fd_limit = accept::raise_fd_limit();
    if fd_limit < 4096 {
        tracing::warn!(
            fd_limit,
            "the open-file limit allows about {} sessions (two sockets each); raise it (LimitNOFILE= in systemd)",
            fd_limit / 2
        );
    }
    let (proxy_cfg, cert) = proxy_config(&args)?;
    let limits = Arc::new(Limits::for_config(&proxy_cfg));
    let listener = accept::bind(&proxy_cfg)
        .with_context(|| format!("binding the proxy to {}", args.proxy_listen))?;
    let proxy_addr = listener.local_addr().unwrap_or(args.proxy_listen);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(wait_for_signal(stop_tx));
    let routes = match &args.routes {
        Some(path) => Some((Arc::new(StaticRoutes::load(path)?), path.clone())),
        None => None,
    };
    tokio::spawn(reload_on_sighup(Reloadable {
        cert,
        routes: routes.clone(),
        log,
        limits: Arc::clone(&limits),
        config: args.config.clone(),
    }));
    if let Some((routes, _)) = routes {
        let admin = TcpListener::bind(args.admin_listen)
            .await
            .with_context(|| format!("binding the admin port {}", args.admin_listen))?;
        let metrics_addr = admin.local_addr().unwrap_or(args.admin_listen);
        tokio::spawn(super::metrics_http::serve(admin, metrics, stop_rx.clone()));
        info!(proxy = %proxy_addr, metrics = %metrics_addr, "doze serving static routes");
        return run_proxy(listener, proxy_cfg, limits, routes, stop_rx).await;
    }
    run_with_control_plane(
        args,
        listener,
        proxy_addr,
        (proxy_cfg, limits),
        metrics,
        stop_rx,
    )
    .await
}

#[cfg(not(feature = "control-plane"))]
async fn run_with_control_plane(
    _args: ServeArgs,
    _listener: TcpListener,
    _proxy_addr: SocketAddr,
    _proxy: (ProxyConfig, Arc<Limits>),
    _metrics: PrometheusHandle,
    _stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    bail!(
        "this doze was built without the control plane (--no-default-features): serve the proxy \
         alone with --routes FILE, or build with the `control-plane` feature"
    )
}

/// The full doze: control plane, admin API, scheduler and proxy, stopped in order.
#[cfg(feature = "control-plane")]
async fn run_with_control_plane(
    mut args: ServeArgs,
    listener: TcpListener,
    proxy_addr: SocketAddr,
    (proxy_cfg, limits): (ProxyConfig, Arc<Limits>),
    metrics: PrometheusHandle,
    stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    args.admin_token = match admin_token(&args)? {
        Some(token) => Some(token),
        None => Some(generated_admin_token(&args.data_dir)?),
    };
    doze_control::validate_admin_bind(&args.admin_listen, args.admin_token.as_deref())?;
    let control = ControlPlane::start(control_config(&args)?, Activity::new())
        .await
        .context("starting the control plane")?;
    control.set_proxy_address(proxy_addr.to_string());
    let admin = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin API to {}", args.admin_listen))?;
    let admin_addr = admin.local_addr().unwrap_or(args.admin_listen);
    // The admin API (and /readyz, /livez, /metrics) keeps answering through the drain and the
    // computes' shutdown, and stops last.
    let (admin_stop, admin_stop_rx) = watch::channel(false);
    let admin_task = tokio::spawn(serve_http(
        admin,
        doze_control::rest::router(std::sync::Arc::clone(&control), Some(metrics)),
        admin_stop_rx,
    ));
    {
        let control = Arc::clone(&control);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            if stop.wait_for(|s| *s).await.is_ok() {
                control.set_draining();
            }
        });
    }
    let scheduler = control.spawn_scheduler();
    info!(
        proxy = %proxy_addr,
        admin = %format!("http://{admin_addr}"),
        state = %doze_control::store::redact_dsn(&args.db_dsn),
        "doze is up"
    );
    let served = run_proxy(listener, proxy_cfg, limits, Arc::clone(&control), stop_rx).await;
    scheduler.abort();
    info!("stopping computes");
    control.shutdown().await;
    let _ = admin_stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), admin_task).await;
    info!("bye");
    served
}

async fn run_proxy<C: Control + Clone>(
    listener: TcpListener,
    cfg: ProxyConfig,
    limits: Arc<Limits>,
    control: C,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let threads = cfg.threads;
    let shared = Arc::new(Shared::with_limits(cfg, control, limits));
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            info!("shutdown requested: no longer accepting connections");
            shutdown.cancel();
        });
    }
    if threads == 0 {
        accept::serve(listener, shared, shutdown.cancelled_owned()).await;
        return Ok(());
    }
    info!(threads, "client sessions run on {threads} proxy threads");
    accept::serve_on_threads(listener, shared, shutdown)
        .await
        .context("starting the proxy threads")
}

/// The proxy's settings, and the handle that reloads its TLS certificate (when it has one).
fn proxy_config(
    args: &ServeArgs,
) -> anyhow::Result<(ProxyConfig, Option<Arc<tls::ReloadableCert>>)> {
    let (tls, cert) = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let (config, handle) = tls::reloadable_server_config(cert, key)?;
            (Some(config), Some(handle))
        }
        _ => (None, None),
    };
    if args.sni_suffix.is_some() && tls.is_none() {
        bail!("--sni-suffix routes by the TLS server name, so it needs --tls-cert and --tls-key");
    }
    Ok((
        ProxyConfig {
            listen: args.proxy_listen,
            tls,
            require_tls: args.require_tls,
            sni_suffix: args.sni_suffix.clone(),
            server_version: args.server_version.clone(),
            handshake_timeout: args.handshake_timeout,
            first_packet_timeout: args.first_packet_timeout,
            max_pending_logins: args.max_pending_logins,
            max_pending_logins_per_ip: args.max_pending_logins_per_ip,
            auth_backoff: doze_proxy::throttle::Backoff {
                base: args.auth_backoff,
                max: args.auth_backoff_max,
            },
            connect_timeout: args.connect_timeout,
            backend_login_timeout: args.backend_login_timeout,
            wake_timeout: args.wake_timeout,
            max_connections: args.max_connections,
            max_connections_per_project: args.max_connections_per_project,
            drain_timeout: args.drain_timeout,
            backend_proxy_protocol: args.backend_proxy_protocol,
            backend_tls: backend_ca(args)?
                .map(|ca| doze_proxy::tls::backend_config(&ca, &args.backend_tls_name))
                .transpose()?,
            reuse_port: args.reuse_port,
            threads: args.proxy_threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
            }),
            pool: doze_proxy::pool::PoolConfig {
                max_idle: args.pool_max_idle,
                idle_timeout: args.pool_idle_timeout,
                max_lifetime: args.pool_max_lifetime,
            },
            ..ProxyConfig::default()
        },
        cert,
    ))
}

/// The admin token from --admin-token-file, DOZE_ADMIN_TOKEN or --admin-token, checked.
#[cfg(feature = "control-plane")]
fn admin_token(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    let on_command_line =
        std::env::args().any(|a| a == "--admin-token" || a.starts_with("--admin-token="));
    if on_command_line {
        tracing::warn!(
            "--admin-token on the command line is visible to every local user (ps, /proc); \
             use DOZE_ADMIN_TOKEN or --admin-token-file"
        );
    }
    let token = match &args.admin_token_file {
        Some(path) => Some(super::read_token_file(path)?),
        None => args.admin_token.clone(),
    };
    if let Some(t) = &token {
        doze_control::validate_admin_token(t)?;
    }
    Ok(token)
}

/// Without a token, anyone on this machine could administer every project (set a role's
/// password, then log in as it). So there is always one: when none is given, doze keeps one in
/// `<data_dir>/admin.token` (0600, made once and reused), which the `doze` CLI reads from
/// there, like a database's local socket only its owner may use.
#[cfg(feature = "control-plane")]
fn generated_admin_token(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join(super::ADMIN_TOKEN_FILE);
    if let Ok(existing) = super::read_token_file(&path)
        && doze_control::validate_admin_token(&existing).is_ok()
    {
        info!(path = %path.display(), "admin API token: the one kept in the data dir");
        return Ok(existing);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data dir {}", data_dir.display()))?;
    let token: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..32)
            .map(|_| format!("{:02x}", rng.random::<u8>()))
            .collect()
    };
    doze_control::driver::local::write_private_file(&path, &format!("{token}\n"))?;
    info!(path = %path.display(), "no admin token given: generated one (the doze CLI reads it from there)");
    Ok(token)
}

#[cfg(feature = "control-plane")]
fn control_config(args: &ServeArgs) -> anyhow::Result<ControlConfig> {
    let driver: DriverKind = args
        .driver
        .parse()
        .map_err(|e| anyhow::anyhow!("--driver {}: {e}", args.driver))?;
    Ok(ControlConfig {
        db_dsn: args.db_dsn.clone(),
        data_dir: args.data_dir.clone(),
        driver,
        idle_timeout: args.idle_timeout,
        check_interval: args.check_interval,
        audit_retention: args.audit_retention,
        wake_timeout: args.wake_timeout,
        admin_token: args.admin_token.clone(),
        max_allowed_packet: args.max_allowed_packet.clone(),
        replica_id: args
            .replica_id
            .clone()
            .unwrap_or_else(doze_control::replicas::default_replica_id),
        kubernetes: doze_control::KubernetesConfig {
            kubeconfig: args.kubeconfig.clone(),
            namespace: args.namespace.clone(),
            image: args.compute_image.clone(),
            storage_class: args.storage_class.clone(),
            storage_size: args.storage_size.clone(),
            tls_secret: args.compute_tls_secret.clone(),
        },
        admin_tls: doze_control::AdminTls {
            ca_file: backend_ca(args)?,
            server_name: args.backend_tls_name.clone(),
        },
        frozen: doze_control::FrozenPolicy {
            suspend_mode: args
                .suspend_mode
                .parse()
                .map_err(|e| anyhow::anyhow!("--suspend-mode: {e}"))?,
            stop_after: args.stop_after,
            memory_budget: parse_memory_budget(&args.frozen_memory_budget)
                .map_err(|e| anyhow::anyhow!("--frozen-memory-budget: {e}"))?,
            freezer: args
                .freezer
                .parse()
                .map_err(|e| anyhow::anyhow!("--freezer: {e}"))?,
        },
        ..ControlConfig::default()
    })
}

/// `--frozen-memory-budget`: `none`, a share of the machine's memory (`25%`), or a
/// quantity (`2Gi`, `512Mi`, `1073741824`).
#[cfg(feature = "control-plane")]
fn parse_memory_budget(text: &str) -> anyhow::Result<Option<u64>> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    if let Some(pct) = t.strip_suffix('%') {
        let pct: f64 = pct
            .trim()
            .parse()
            .ok()
            .filter(|p| (0.0..=100.0).contains(p))
            .ok_or_else(|| anyhow::anyhow!("'{t}' is not a percentage from 0% to 100%"))?;
        let total = doze_control::default_memory_budget()
            .map(|quarter| quarter * 4)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "cannot read the machine's memory from /proc/meminfo; give the budget in bytes"
                )
            })?;
        return Ok(Some((total as f64 * pct / 100.0) as u64));
    }
    doze_control::driver::local::parse_memory(t)
        .map(Some)
        .ok_or_else(|| {
            anyhow::anyhow!("'{t}' is not `none`, a percentage like 25%, or a quantity like 2Gi")
        })
}

/// The CA of computes' certificates when `--backend-tls require`, checked to be there.
fn backend_ca(args: &ServeArgs) -> anyhow::Result<Option<PathBuf>> {
    if args.compute_tls_secret.is_some() && args.backend_tls != "require" {
        anyhow::bail!(
            "--compute-tls-secret makes computes refuse logins without TLS; add --backend-tls require and --backend-ca"
        );
    }
    match (args.backend_tls.as_str(), &args.backend_ca) {
        ("require", Some(ca)) => {
            std::fs::metadata(ca)
                .map_err(|e| anyhow::anyhow!("--backend-ca {}: {e}", ca.display()))?;
            Ok(Some(ca.clone()))
        }
        ("require", None) => {
            anyhow::bail!(
                "--backend-tls require needs --backend-ca, the CA computes' certificates chain to"
            )
        }
        _ => Ok(None),
    }
}

/// Changes the log filter while serving (SIGHUP).
type LogHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Lines waiting for the log thread before new ones are dropped (and counted).
const LOG_QUEUE_LINES: usize = 64 * 1024;

/// Log lines go to stderr through a thread of their own (`doze-log`): session threads format a
/// line and queue it, never waiting on the write. A herd of 500 clients writes 1,000 lines,
/// which the log thread writes in a few batched `write` calls instead of 1,000 on the session
/// threads; and a stalled reader of stderr (a full pipe, a throttled journald) cannot stop
/// the relay. Once [`LOG_QUEUE_LINES`] are waiting, further lines are dropped and counted in
/// `doze_log_lines_dropped_total`, as HAProxy drops logs rather than traffic. The guard
/// flushes what is queued when it is dropped, at the end of `doze serve`.
fn init_logging(
    format: &str,
    level: &str,
) -> anyhow::Result<(
    LogHandle,
    tracing_appender::non_blocking::WorkerGuard,
    tracing_appender::non_blocking::ErrorCounter,
)> {
    use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*, reload};
    let filter =
        EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("--log-level '{level}': {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("doze-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let dropped = writer.error_counter();
    let lines = if format == "json" {
        // The fields of the enclosing spans (connection id, project, user; the lifecycle's
        // project and compute) are flattened into each line, so every line stands alone.
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(writer)
            .boxed()
    } else {
        fmt::layer()
            .with_writer(writer)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .try_init();
    Ok((handle, guard, dropped))
}

/// Publishes the log thread's count of dropped lines every 5 s (from now: the metrics
/// recorder is installed).
fn publish_dropped_log_lines(dropped: tracing_appender::non_blocking::ErrorCounter) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            metrics::counter!("doze_log_lines_dropped_total")
                .absolute(dropped.dropped_lines() as u64);
        }
    });
}

/// Installs the global Prometheus recorder, with 0.5 ms .. 30 s buckets for every `*_seconds`
/// histogram.
fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            doze_proxy::metrics::DURATION_BUCKETS,
        )
        .context("metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")
}

#[cfg(feature = "control-plane")]
async fn serve_http(listener: TcpListener, router: axum::Router, mut stop: watch::Receiver<bool>) {
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        error!("admin API stopped: {e}");
    }
}

/// What SIGHUP reloads.
struct Reloadable {
    cert: Option<Arc<tls::ReloadableCert>>,
    /// `--routes`: the routes and their file.
    routes: Option<(Arc<StaticRoutes>, PathBuf)>,
    log: LogHandle,
    limits: Arc<Limits>,
    /// `--config`: its `log-level`, `max-connections` and `max-connections-per-project` are
    /// applied again.
    config: Option<PathBuf>,
}

/// SIGHUP reloads what can change without a restart: the TLS certificate and key (a renewal
/// by cert-manager or certbot), the `--routes` file, and the `--config` file's log level.
/// Sessions are untouched; a part that fails to reload keeps its current state and the log
/// says why. (Before, SIGHUP's default action ended doze without a drain.)
async fn reload_on_sighup(what: Reloadable) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        error!("cannot listen for SIGHUP");
        return;
    };
    while hup.recv().await.is_some() {
        // The log level first, so the lines about the rest follow it.
        if let Some(config) = &what.config {
            match config_limits(config) {
                Ok((sessions, per_project)) => {
                    if let Some(max) = sessions {
                        what.limits.set_max_sessions(max);
                        info!(
                            max_connections = max,
                            "SIGHUP: session limit set from the config file"
                        );
                    }
                    if let Some(max) = per_project {
                        what.limits.set_per_project(max);
                        info!(
                            max_connections_per_project = max,
                            "SIGHUP: per-project session limit set from the config file"
                        );
                    }
                }
                Err(e) => {
                    error!(error = %format!("{e:#}"), "SIGHUP: the config file's limits did not load; keeping the current ones")
                }
            }
            match config_log_level(config) {
                Ok(Some(level)) => match tracing_subscriber::EnvFilter::try_new(&level) {
                    Ok(filter) => match what.log.reload(filter) {
                        Ok(()) => info!(%level, "SIGHUP: log level set from the config file"),
                        Err(e) => error!(error = %e, "SIGHUP: the log level did not change"),
                    },
                    Err(e) => {
                        error!(%level, error = %e, "SIGHUP: the config file's log-level is not valid; keeping the current one")
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    error!(error = %format!("{e:#}"), "SIGHUP: the config file did not load; keeping the current log level")
                }
            }
        }
        if let Some(cert) = &what.cert {
            match cert.reload() {
                Ok(()) => info!("SIGHUP: reloaded the TLS certificate and key"),
                Err(e) => {
                    error!(error = %format!("{e:#}"), "SIGHUP: the TLS certificate and key did not reload; keeping the current ones")
                }
            }
        }
        if let Some((routes, path)) = &what.routes {
            match routes.reload(path) {
                Ok(projects) => {
                    info!(projects, file = %path.display(), "SIGHUP: reloaded the routes")
                }
                Err(e) => {
                    error!(error = %format!("{e:#}"), "SIGHUP: the routes did not reload; keeping the current ones")
                }
            }
        }
        if what.cert.is_none() && what.routes.is_none() && what.config.is_none() {
            info!("SIGHUP: nothing to reload (no --tls-cert, --routes or --config)");
        }
    }
}

/// The `max-connections` and `max-connections-per-project` a config file sets.
fn config_limits(path: &std::path::Path) -> anyhow::Result<(Option<usize>, Option<u64>)> {
    let table = read_config(path)?;
    let number = |key: &str| -> anyhow::Result<Option<u64>> {
        match table.get(key).or_else(|| table.get(&key.replace('-', "_"))) {
            None => Ok(None),
            Some(v) => v
                .as_integer()
                .and_then(|n| u64::try_from(n).ok())
                .map(Some)
                .with_context(|| format!("{key} must be a whole number, not {v}")),
        }
    };
    let sessions = number("max-connections")?
        .map(|n| usize::try_from(n).context("max-connections is too large"))
        .transpose()?;
    Ok((sessions, number("max-connections-per-project")?))
}

fn read_config(path: &std::path::Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    toml::from_str(&text)
        .with_context(|| format!("the config file {} is not valid TOML", path.display()))
}

/// The `log-level` (or `log_level`) of a config file, if it sets one.
fn config_log_level(path: &std::path::Path) -> anyhow::Result<Option<String>> {
    let table = read_config(path)?;
    Ok(table
        .get("log-level")
        .or_else(|| table.get("log_level"))
        .and_then(|v| v.as_str())
        .map(str::to_owned))
}

async fn wait_for_signal(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        error!("cannot listen for SIGTERM");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = stop.send(true);
}
