//! The Kubernetes driver: every compute is a MariaDB Pod with a PersistentVolumeClaim for its
//! data and a Secret with its administrative password, all in one namespace and labelled
//! `app.kubernetes.io/managed-by=doze`, `doze.io/project=<id>`, `doze.io/compute=<id>`.
//!
//! - **Create** (a compute is created): the Secret (a generated password, never logged nor
//!   returned by the API) and the PVC.
//! - **Wake**: one POST of the Pod (a 409 adopts the pod already there); the wait is on the
//!   pod watch, not a poll of the API; once the container has started doze probes the
//!   server's greeting on the pod IP every few milliseconds instead of waiting for the
//!   kubelet's probe. A start that cannot succeed (image pull error, unschedulable, crash
//!   loop, missing Secret) fails at once with the kubelet's or scheduler's reason and the
//!   container's last log lines.
//! - **Suspend**: DELETE of the Pod with its grace period (InnoDB shuts down cleanly), then a
//!   wait on the watch until it is gone. The PVC stays.
//! - **Delete**: Pod, PVC and Secret.
//! - **Restart of doze**: pods keep running; the new process adopts them from its watch
//!   cache, filled by one paginated LIST.
//! - **A pod deleted behind doze's back** (eviction, node loss, `kubectl delete`) is seen on
//!   the watch; the compute is marked suspended and the next connection wakes it on the same
//!   PVC.
//!
//! doze connects to the pod IP directly: a Service's DNS name can lag a new pod by seconds.

pub mod objects;
pub mod status;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, LogParams, PostParams};
use tokio::time::Instant;

use self::objects::{Defaults, MARIADB_PORT};
use self::status::Progress;
use self::watch::PodCache;
use super::{BoxFuture, ComputeDriver, ComputeSpec, RoleOp, Running, accounts, mariadb};

/// Bound of doze's root login to a compute.
const ROOT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of doze's administrative work in a compute.
const ROOT_WORK_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the greeting is probed once the container runs.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// How long a pod may stay unschedulable (no node fits it) before the wake fails.
const UNSCHEDULABLE_GRACE: Duration = Duration::from_secs(3);
/// Log lines of a failed container quoted in the wake error.
const LOG_LINES: i64 = 12;

/// The driver's settings (`doze serve --driver kubernetes` flags).
#[derive(Clone, Debug)]
pub struct KubernetesConfig {
    /// `--kubeconfig`; `None`: the in-cluster service account when doze runs in a pod, else
    /// `KUBECONFIG` or `~/.kube/config`, as kubectl does.
    pub kubeconfig: Option<PathBuf>,
    /// `--namespace` of the computes' objects.
    pub namespace: String,
    /// `--compute-image`.
    pub image: String,
    /// `--storage-class`.
    pub storage_class: Option<String>,
    /// `--storage-size`.
    pub storage_size: String,
    /// `--compute-tls-secret`: a `kubernetes.io/tls` Secret mounted into every compute, which
    /// then takes TLS logins only.
    pub tls_secret: Option<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            namespace: "default".to_owned(),
            image: DEFAULT_IMAGE.to_owned(),
            storage_class: None,
            storage_size: "10Gi".to_owned(),
            tls_secret: None,
        }
    }
}

/// The current MariaDB long-term-support release's official image.
pub const DEFAULT_IMAGE: &str = "mariadb:11.8";

/// How doze's own logins to a compute (root, for role changes and the session count) are
/// protected on the cluster network.
#[derive(Clone, Debug, Default)]
pub struct AdminTls {
    /// Require TLS, verified against this CA bundle (PEM). `None`: plain TCP.
    pub ca_file: Option<PathBuf>,
    /// The name the computes' certificate carries (their addresses change at every wake).
    pub server_name: String,
}

/// Builds the kube client configuration as kubectl would find it.
pub async fn client_config(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Config> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    if let Some(path) = kubeconfig {
        let file = Kubeconfig::read_from(path)
            .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
        return kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("using the kubeconfig {}", path.display()));
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return kube::Config::incluster().context("using the pod's service account");
    }
    kube::Config::infer()
        .await
        .context("no --kubeconfig given, not in a cluster, and no KUBECONFIG or ~/.kube/config")
}

pub struct KubernetesDriver {
    pods: Api<Pod>,
    pvcs: Api<PersistentVolumeClaim>,
    secrets: Api<Secret>,
    cache: Arc<PodCache>,
    defaults: Defaults,
    ready_timeout: Duration,
    stop_timeout: Duration,
    admin_tls: AdminTls,
    /// Administrative passwords read from (or written to) the computes' Secrets.
    passwords: Mutex<HashMap<String, String>>,
    /// Projects whose PVC and Secret this process made or found.
    provisioned: Mutex<HashSet<String>>,
}

impl KubernetesDriver {
    /// Connects: starts the pod watch and waits for its first LIST (bounded by
    /// `ready_timeout`), so that adoption after a restart reads the cache.
    pub async fn connect(
        client: kube::Client,
        settings: &KubernetesConfig,
        max_allowed_packet: String,
        stop_timeout: Duration,
        ready_timeout: Duration,
        admin_tls: AdminTls,
    ) -> anyhow::Result<Self> {
        let ns = settings.namespace.as_str();
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let cache = PodCache::start(pods.clone(), ns, ready_timeout).await?;
        Ok(Self {
            pods,
            pvcs: Api::namespaced(client.clone(), ns),
            secrets: Api::namespaced(client, ns),
            cache,
            defaults: Defaults {
                image: settings.image.clone(),
                storage_class: settings.storage_class.clone(),
                storage_size: settings.storage_size.clone(),
                max_allowed_packet,
                // The kubelet's SIGKILL must come after a clean shutdown had its chance.
                grace_seconds: i64::try_from(stop_timeout.as_secs()).unwrap_or(30).max(30),
                tls_secret: settings.tls_secret.clone(),
            },
            ready_timeout,
            stop_timeout,
            admin_tls,
            passwords: Mutex::new(HashMap::new()),
            provisioned: Mutex::new(HashSet::new()),
        })
    }

    fn is_provisioned(&self, project_id: &str) -> bool {
        self.provisioned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(project_id)
    }

    fn password(&self, project_id: &str) -> Option<String> {
        self.passwords
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(project_id)
            .cloned()
    }

    fn remember_password(&self, project_id: &str, password: String) {
        self.passwords
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(project_id.to_owned(), password);
    }

    /// Makes (or finds) the compute's Secret and PVC. `fresh`: the compute was just created,
    /// so the Secret is created without looking first.
    async fn ensure_objects(&self, spec: &ComputeSpec, fresh: bool) -> anyhow::Result<()> {
        let (project_id, compute_id) = (spec.project_id.as_str(), spec.compute_id.as_str());
        if !fresh {
            self.admin_password(project_id).await.ok();
        }
        if self.password(project_id).is_none() {
            let password = mariadb::new_admin_password();
            let secret = objects::secret(project_id, compute_id, &password);
            match bounded(
                "creating the compute's Secret",
                self.secrets.create(&PostParams::default(), &secret),
            )
            .await?
            {
                Ok(_) => self.remember_password(project_id, password),
                Err(e) if is_status(&e, 409) => {
                    self.admin_password(project_id).await?;
                }
                Err(e) => return Err(e).context("creating the compute's Secret"),
            }
        }
        let pvc = objects::pvc(project_id, compute_id, &spec.config, &self.defaults)?;
        match bounded(
            "creating the compute's PersistentVolumeClaim",
            self.pvcs.create(&PostParams::default(), &pvc),
        )
        .await?
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(e).context("creating the compute's PersistentVolumeClaim"),
        }
        self.provisioned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(project_id.to_owned());
        Ok(())
    }

    /// The compute's administrative password, from memory or its Secret.
    async fn admin_password(&self, project_id: &str) -> anyhow::Result<String> {
        if let Some(p) = self.password(project_id) {
            return Ok(p);
        }
        let name = objects::secret_name(project_id);
        let secret = bounded("reading the compute's Secret", self.secrets.get(&name))
            .await?
            .with_context(|| format!("reading the Secret {name}"))?;
        let password = objects::password_of(&secret)?;
        self.remember_password(project_id, password.clone());
        Ok(password)
    }

    /// A start; on failure nothing is left running (the pod is deleted, not awaited) and the
    /// next start checks the PVC and Secret again (they may have been deleted meanwhile).
    async fn start_or_clean(&self, spec: &ComputeSpec) -> anyhow::Result<Running> {
        let result = self.start_inner(spec).await;
        if result.is_err() {
            self.provisioned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&spec.project_id);
            let name = objects::pod_name(&spec.project_id);
            let live = self.cache.get(&name).filter(|p| status::is_live(p));
            // A pod whose server never ran has nothing to shut down cleanly.
            let grace = match &live {
                Some(pod) if status::ever_ran(pod) => None,
                _ => Some(0),
            };
            if live.is_some()
                && let Err(e) = self.delete_pod(&name, grace).await
            {
                tracing::warn!(pod = %name, error = %format!("{e:#}"), "removing the pod of a failed start");
            }
        }
        result
    }

    async fn start_inner(&self, spec: &ComputeSpec) -> anyhow::Result<Running> {
        let deadline = Instant::now() + self.ready_timeout;
        let project_id = spec.project_id.as_str();
        let name = objects::pod_name(project_id);
        if !self.is_provisioned(project_id) {
            self.ensure_objects(spec, false).await?;
        }
        let pod = objects::pod(
            project_id,
            &spec.compute_id,
            &spec.config,
            &self.defaults,
            self.cache.last_node(&name).as_deref(),
        )?;
        let uid = self.create_pod(&name, &pod, deadline).await?;
        let ip = self.wait_started(&name, &uid, deadline).await?;
        let address = format!("{ip}:{MARIADB_PORT}");
        self.wait_greeting(&name, &uid, &address, deadline).await?;
        tracing::debug!(project_id, pod = %name, %address, "compute pod ready");
        if let Some(roles) = &spec.roles
            && let Err(e) = self.apply(project_id, &[RoleOp::Sync(roles.clone())]).await
        {
            let _ = self.stop_inner(project_id).await;
            return Err(e.context("synchronising roles into the new compute"));
        }
        Ok(Running {
            address,
            handle: Some(handle(&name, &uid)),
        })
    }

    /// Creates the pod and returns its uid. A live pod of this compute already there is
    /// adopted; a finished one (evicted, failed) or another compute's is deleted first; a
    /// terminating one is awaited (no new request until the watch shows it gone).
    async fn create_pod(&self, name: &str, pod: &Pod, deadline: Instant) -> anyhow::Result<String> {
        let compute_id = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(objects::COMPUTE_LABEL))
            .cloned();
        loop {
            let mut changes = self.cache.subscribe();
            match self.cache.get(name) {
                None => {
                    match bounded(
                        "creating the compute's pod",
                        self.pods.create(&PostParams::default(), pod),
                    )
                    .await?
                    {
                        Ok(created) => return uid_of(&created),
                        // Not in the cache yet: the next event shows it.
                        Err(e) if is_status(&e, 409) => {}
                        Err(e) => {
                            return Err(e).with_context(|| format!("creating the pod {name}"));
                        }
                    }
                }
                Some(existing) if existing.metadata.deletion_timestamp.is_some() => {}
                Some(existing) => {
                    let ours = existing
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(objects::COMPUTE_LABEL))
                        == compute_id.as_ref();
                    if ours && status::is_live(&existing) {
                        tracing::info!(
                            pod = name,
                            "a pod of this compute is already there; adopting it"
                        );
                        return uid_of(&existing);
                    }
                    tracing::info!(
                        pod = name,
                        ours,
                        "removing a finished or foreign pod before the start"
                    );
                    self.delete_pod(name, Some(0)).await?;
                }
            }
            if !PodCache::changed(&mut changes, deadline).await? {
                let node = self
                    .cache
                    .get(name)
                    .and_then(|p| status::node_of(&p).map(str::to_owned))
                    .unwrap_or_else(|| "an unknown node".to_owned());
                bail!(
                    "the previous pod {name} (on {node}) was still terminating when the wake timed out; \
                     if that node is gone, remove the pod with `kubectl delete pod {name} --force --grace-period=0`"
                );
            }
        }
    }

    /// Waits on the watch until the pod runs with an IP, or fails with the reason it cannot.
    async fn wait_started(
        &self,
        name: &str,
        uid: &str,
        deadline: Instant,
    ) -> anyhow::Result<String> {
        let mut changes = self.cache.subscribe();
        let mut seen = false;
        let mut last_step = String::new();
        let mut unschedulable_since: Option<Instant> = None;
        loop {
            match self.cache.get(name) {
                Some(pod) if uid_of(&pod).ok().as_deref() == Some(uid) => {
                    seen = true;
                    // Progress of a start that takes a while (image pull, volume attach).
                    let step = status::step(&pod);
                    if step != last_step {
                        tracing::info!(pod = name, step = %step, "compute pod starting");
                        last_step = step;
                    }
                    match status::progress(&pod) {
                        Progress::Started { ip } => return Ok(ip),
                        Progress::Pending => unschedulable_since = None,
                        Progress::Unschedulable { message } => {
                            // A moment for an autoscaler's node or a volume being bound; a
                            // pod that stays unplaceable fails the wake with the reason.
                            let since = *unschedulable_since.get_or_insert_with(Instant::now);
                            if !status::waits_for_volume(&message)
                                && since.elapsed() >= UNSCHEDULABLE_GRACE
                            {
                                return Err(self
                                    .failed(name, "Unschedulable", &message, false)
                                    .await);
                            }
                            let recheck = (since + UNSCHEDULABLE_GRACE).min(deadline);
                            if !PodCache::changed(&mut changes, recheck).await?
                                && recheck == deadline
                            {
                                bail!(
                                    "the pod {name} could not be scheduled within {:?}: {message}",
                                    self.ready_timeout
                                );
                            }
                            continue;
                        }
                        Progress::Terminating => bail!("the pod {name} was deleted while starting"),
                        Progress::Failed {
                            reason,
                            message,
                            has_logs,
                        } => {
                            return Err(self.failed(name, &reason, &message, has_logs).await);
                        }
                    }
                }
                _ if seen => bail!("the pod {name} disappeared while starting"),
                _ => {}
            }
            if !PodCache::changed(&mut changes, deadline).await? {
                let step = self
                    .cache
                    .get(name)
                    .map(|p| status::step(&p))
                    .unwrap_or_else(|| "not seen on the watch".to_owned());
                let watch = self
                    .cache
                    .last_error()
                    .map(|e| format!("; the pod watch fails: {e}"))
                    .unwrap_or_default();
                bail!(
                    "the pod {name} did not start within {:?} (it is at {step}){watch}",
                    self.ready_timeout
                );
            }
        }
    }

    /// Probes the server's greeting on the pod IP every few milliseconds (the kubelet's
    /// readiness probe runs once a second at best), watching the pod meanwhile.
    async fn wait_greeting(
        &self,
        name: &str,
        uid: &str,
        address: &str,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        loop {
            if mariadb::probe_greeting_at(address).await {
                return Ok(());
            }
            match self.cache.get(name) {
                Some(pod) if uid_of(&pod).ok().as_deref() == Some(uid) => {
                    if let Progress::Failed {
                        reason,
                        message,
                        has_logs,
                    } = status::progress(&pod)
                    {
                        return Err(self.failed(name, &reason, &message, has_logs).await);
                    }
                    if !status::is_live(&pod) {
                        bail!("the pod {name} was deleted while starting");
                    }
                }
                _ => bail!("the pod {name} disappeared while starting"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "MariaDB in the pod {name} did not answer on {address} within {:?}",
                    self.ready_timeout
                );
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// The error of a start that cannot succeed, with the container's last log lines (the
    /// failed start's pod is then deleted by [`KubernetesDriver::start_or_clean`]).
    async fn failed(
        &self,
        name: &str,
        reason: &str,
        message: &str,
        has_logs: bool,
    ) -> anyhow::Error {
        let logs = if has_logs {
            let params = LogParams {
                container: Some(objects::CONTAINER.to_owned()),
                tail_lines: Some(LOG_LINES),
                previous: reason == "CrashLoopBackOff",
                ..LogParams::default()
            };
            match bounded("reading the pod's log", self.pods.logs(name, &params)).await {
                Ok(Ok(text)) if !text.trim().is_empty() => {
                    format!(
                        "; last log lines:\n{}",
                        mariadb::tail(&text, LOG_LINES as usize)
                    )
                }
                _ => String::new(),
            }
        } else {
            String::new()
        };
        anyhow::anyhow!("the compute's pod {name} cannot start: {reason}: {message}{logs}")
    }

    async fn delete_pod(&self, name: &str, grace: Option<u32>) -> anyhow::Result<bool> {
        let params = DeleteParams {
            grace_period_seconds: Some(grace.unwrap_or(self.defaults.grace_seconds as u32)),
            ..DeleteParams::default()
        };
        match bounded(
            "deleting the compute's pod",
            self.pods.delete(name, &params),
        )
        .await?
        {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("deleting the pod {name}")),
        }
    }

    async fn stop_inner(&self, project_id: &str) -> anyhow::Result<()> {
        let name = objects::pod_name(project_id);
        let mut changes = self.cache.subscribe();
        self.delete_pod(&name, None).await?;
        // Gone means gone from the watch: the kubelet has stopped the server (clean shutdown
        // within the grace period) and the API server removed the pod.
        let deadline = Instant::now() + self.stop_timeout + Duration::from_secs(30);
        while self.cache.get(&name).is_some() {
            if !PodCache::changed(&mut changes, deadline).await? {
                bail!(
                    "the pod {name} was still being deleted after {:?}",
                    self.stop_timeout
                );
            }
        }
        Ok(())
    }

    async fn adopt_inner(&self, project_id: &str) -> anyhow::Result<Option<Running>> {
        let name = objects::pod_name(project_id);
        let Some(pod) = self.cache.get(&name) else {
            return Ok(None);
        };
        if let Progress::Started { ip } = status::progress(&pod) {
            let address = format!("{ip}:{MARIADB_PORT}");
            if mariadb::probe_greeting_at(&address).await {
                return Ok(Some(Running {
                    address,
                    handle: Some(handle(&name, &uid_of(&pod)?)),
                }));
            }
        }
        if status::is_live(&pod) {
            // Not waited for: a restart of doze must not hang on one compute's pod.
            tracing::warn!(project_id, pod = %name, "a pod from a previous run is not serving; deleting it");
            self.delete_pod(&name, None).await?;
        }
        Ok(None)
    }

    async fn root_conn(&self, project_id: &str) -> anyhow::Result<mysql_async::Conn> {
        let name = objects::pod_name(project_id);
        let ip = match self.cache.get(&name).map(|p| status::progress(&p)) {
            Some(Progress::Started { ip }) => ip,
            _ => bail!("the compute of project {project_id} is not running"),
        };
        let password = self.admin_password(project_id).await?;
        let mut opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname(ip)
            .tcp_port(MARIADB_PORT)
            .user(Some("root"))
            .pass(Some(password))
            .prefer_socket(false);
        if let Some(ca) = &self.admin_tls.ca_file {
            opts = opts.ssl_opts(Some(
                mysql_async::SslOpts::default()
                    // The CA given, and no public one: a public certificate for the name must
                    // not receive doze's root login.
                    .with_disable_built_in_roots(true)
                    .with_root_certs(vec![ca.clone().into()])
                    .with_danger_tls_hostname_override(Some(self.admin_tls.server_name.clone())),
            ));
        }
        tokio::time::timeout(ROOT_CONNECT_TIMEOUT, mysql_async::Conn::new(opts))
            .await
            .with_context(|| {
                format!("the compute did not answer doze's login within {ROOT_CONNECT_TIMEOUT:?}")
            })?
            .context("logging in to the compute as root")
    }

    async fn apply(&self, project_id: &str, ops: &[RoleOp]) -> anyhow::Result<()> {
        let conn = self.root_conn(project_id).await?;
        accounts::apply(conn, ops, ROOT_WORK_TIMEOUT).await
    }

    async fn delete_objects(&self, project_id: &str) -> anyhow::Result<()> {
        self.stop_inner(project_id).await?;
        let dp = DeleteParams::default();
        let pvc = objects::pvc_name(project_id);
        match bounded(
            "deleting the compute's PersistentVolumeClaim",
            self.pvcs.delete(&pvc, &dp),
        )
        .await?
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e).context("deleting the compute's PersistentVolumeClaim"),
        }
        match self
            .secrets
            .delete(&objects::secret_name(project_id), &dp)
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e).context("deleting the compute's Secret"),
        }
        self.passwords
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(project_id);
        self.provisioned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(project_id);
        self.cache.forget(&objects::pod_name(project_id));
        Ok(())
    }
}

impl ComputeDriver for KubernetesDriver {
    fn validate_config(&self, config: &serde_json::Value) -> Result<(), String> {
        objects::validate(config, &self.defaults).map_err(|e| format!("{e:#}"))
    }

    fn provision<'a>(&'a self, spec: &'a ComputeSpec) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.ensure_objects(spec, true))
    }

    fn start<'a>(&'a self, spec: &'a ComputeSpec) -> BoxFuture<'a, anyhow::Result<Running>> {
        Box::pin(self.start_or_clean(spec))
    }

    fn stop<'a>(&'a self, project_id: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.stop_inner(project_id))
    }

    fn is_alive(&self, project_id: &str) -> bool {
        self.cache
            .get(&objects::pod_name(project_id))
            .is_some_and(|p| status::is_live(&p))
    }

    fn adopt<'a>(
        &'a self,
        project_id: &'a str,
        _recorded: Option<Running>,
    ) -> BoxFuture<'a, anyhow::Result<Option<Running>>> {
        Box::pin(self.adopt_inner(project_id))
    }

    fn client_sessions<'a>(&'a self, project_id: &'a str) -> BoxFuture<'a, anyhow::Result<u64>> {
        Box::pin(async move {
            let conn = self.root_conn(project_id).await?;
            accounts::client_sessions(conn, ROOT_WORK_TIMEOUT).await
        })
    }

    fn apply_roles<'a>(
        &'a self,
        project_id: &'a str,
        ops: &'a [RoleOp],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.apply(project_id, ops))
    }

    fn destroy_storage<'a>(&'a self, project_id: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.delete_objects(project_id))
    }

    fn compute_deleted<'a>(&'a self, project_id: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.delete_objects(project_id))
    }

    fn lost_notices(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.cache.lost_notices())
    }

    fn computes_outlive_doze(&self) -> bool {
        true
    }
}

/// Bound of one API request (the watch excepted): a stalled API server or a dead pooled
/// connection must not hold a project's lock (and with it the scheduler) for ever.
const API_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs one API request within [`API_TIMEOUT`]; the outer error is the timeout, the inner one
/// the API's answer (a 404 or 409 Status the caller may expect).
async fn bounded<T>(
    what: &str,
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> anyhow::Result<Result<T, kube::Error>> {
    tokio::time::timeout(API_TIMEOUT, request)
        .await
        .map_err(|_| {
            anyhow::anyhow!("the Kubernetes API did not answer {what} within {API_TIMEOUT:?}")
        })
}

/// The handle stored with a running compute: the pod's name and uid.
fn handle(name: &str, uid: &str) -> String {
    serde_json::json!({"pod": name, "uid": uid}).to_string()
}

fn uid_of(pod: &Pod) -> anyhow::Result<String> {
    pod.metadata
        .uid
        .clone()
        .context("the API server returned a pod without a uid")
}

/// Whether `e` is the API server's Status with this code.
fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}
