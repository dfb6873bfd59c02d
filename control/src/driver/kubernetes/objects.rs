//! The objects doze owns per compute, built from the compute's config: a PersistentVolumeClaim
//! for the data directory, a Secret with the administrative credential and the Pod itself.
//! Pure functions, so that every field is checked by unit tests without an API server.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    NodeAffinity, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec,
    PreferredSchedulingTerm, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecretVolumeSource, SecurityContext, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::driver::local::{buffer_pool_for, mariadb_options, parse_memory};
use crate::driver::mariadb::DEFAULT_MAX_CONNECTIONS;

/// The label every object doze creates carries; the watch and the startup LIST select on it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "doze");
pub const PROJECT_LABEL: &str = "doze.io/project";
pub const COMPUTE_LABEL: &str = "doze.io/compute";
/// `app.kubernetes.io/managed-by=doze`, as a label selector.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=doze";

/// The container's name (logs are asked for by it).
pub const CONTAINER: &str = "mariadb";
/// The port MariaDB listens on in the pod; doze connects to `<pod IP>:3306`.
pub const MARIADB_PORT: u16 = 3306;
/// The key of the administrative password in the compute's Secret.
pub const PASSWORD_KEY: &str = "password";
/// The uid and gid of `mysql` in the official image: the server runs as it, never as root.
const MYSQL_UID: i64 = 999;

/// What every compute's objects share (the `doze serve` flags of the driver).
#[derive(Clone, Debug)]
pub struct Defaults {
    /// `--compute-image`, unless the compute's `config.image` says otherwise.
    pub image: String,
    /// `--storage-class`; `None`: the cluster's default class.
    pub storage_class: Option<String>,
    /// `--storage-size`, unless `config.resources.storage` says otherwise.
    pub storage_size: String,
    /// `--max-allowed-packet` of every compute.
    pub max_allowed_packet: String,
    /// The pod's `terminationGracePeriodSeconds`: long enough for a clean InnoDB shutdown.
    pub grace_seconds: i64,
    /// A `kubernetes.io/tls` Secret (e.g. from cert-manager) mounted into every compute: the
    /// server then takes TLS logins only (`--backend-tls require`).
    pub tls_secret: Option<String>,
}

/// Where the compute's certificate and key are mounted.
pub const TLS_DIR: &str = "/etc/mysql/tls";

/// The Pod of a project's compute. One per project, so the name is the project's.
pub fn pod_name(project_id: &str) -> String {
    format!("doze-{project_id}")
}

/// The PVC of a project's compute (same name as the pod: `kubectl get pod,pvc doze-<id>`).
pub fn pvc_name(project_id: &str) -> String {
    format!("doze-{project_id}")
}

/// The Secret with the compute's administrative password.
pub fn secret_name(project_id: &str) -> String {
    format!("doze-{project_id}-admin")
}

/// The labels of every object of a compute.
pub fn labels(project_id: &str, compute_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        ("app.kubernetes.io/name".to_owned(), "mariadb".to_owned()),
        (PROJECT_LABEL.to_owned(), project_id.to_owned()),
        (COMPUTE_LABEL.to_owned(), compute_id.to_owned()),
    ])
}

fn meta(name: String, project_id: &str, compute_id: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        labels: Some(labels(project_id, compute_id)),
        ..ObjectMeta::default()
    }
}

/// The compute's Secret. Immutable: the password is the one the storage was initialised with;
/// a changed Secret would lock doze out of the data, so the API server refuses changes.
pub fn secret(project_id: &str, compute_id: &str, password: &str) -> Secret {
    Secret {
        metadata: meta(secret_name(project_id), project_id, compute_id),
        type_: Some("Opaque".to_owned()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            PASSWORD_KEY.to_owned(),
            ByteString(password.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The password in a compute's Secret.
pub fn password_of(secret: &Secret) -> anyhow::Result<String> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(PASSWORD_KEY))
        .with_context(|| format!("the compute's Secret has no '{PASSWORD_KEY}' key"))?;
    String::from_utf8(bytes.0.clone()).context("the compute's password is not UTF-8")
}

/// The compute's PVC: ReadWriteOnce, sized from `config.resources.storage` or the default.
pub fn pvc(
    project_id: &str,
    compute_id: &str,
    config: &serde_json::Value,
    defaults: &Defaults,
) -> anyhow::Result<PersistentVolumeClaim> {
    let size = storage_of(config)?.unwrap_or_else(|| defaults.storage_size.clone());
    Ok(PersistentVolumeClaim {
        metadata: meta(pvc_name(project_id), project_id, compute_id),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: defaults.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), Quantity(size))])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    })
}

/// The compute's image: `config.image`, else the default.
pub fn image_of(config: &serde_json::Value, defaults: &Defaults) -> anyhow::Result<String> {
    match config.get("image") {
        None | Some(serde_json::Value::Null) => Ok(defaults.image.clone()),
        Some(serde_json::Value::String(s)) if valid_image(s) => Ok(s.clone()),
        Some(other) => bail!("image must be an image reference like \"mariadb:11.4\", got {other}"),
    }
}

fn valid_image(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
}

/// `config.resources.storage` as a quantity string.
fn storage_of(config: &serde_json::Value) -> anyhow::Result<Option<String>> {
    match config.pointer("/resources/storage") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if parse_memory(s).is_some_and(|b| b > 0) => {
            Ok(Some(s.clone()))
        }
        Some(other) => {
            bail!("resources.storage must be a quantity string like \"10Gi\", got {other}")
        }
    }
}

/// `config.resources.cpu` as a quantity string ("500m", "2", "1.5").
fn cpu_of(config: &serde_json::Value) -> anyhow::Result<Option<String>> {
    let valid = |s: &str| {
        let digits = s.strip_suffix('m').unwrap_or(s);
        !digits.is_empty()
            && digits.len() <= 12
            && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
            && digits.parse::<f64>().is_ok_and(|v| v > 0.0)
    };
    match config.pointer("/resources/cpu") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if valid(s) => Ok(Some(s.clone())),
        Some(serde_json::Value::Number(n)) if n.as_f64().is_some_and(|v| v > 0.0) => {
            Ok(Some(n.to_string()))
        }
        Some(other) => {
            bail!("resources.cpu must be a quantity like \"500m\" or \"2\", got {other}")
        }
    }
}

/// Checks everything of a compute config this driver reads, so a bad config is refused at
/// creation and not found at the first wake.
pub fn validate(config: &serde_json::Value, defaults: &Defaults) -> anyhow::Result<()> {
    if !config.is_object() {
        bail!("config must be a JSON object");
    }
    image_of(config, defaults)?;
    storage_of(config)?;
    cpu_of(config)?;
    buffer_pool_for(config)?;
    mariadb_options(config)?;
    Ok(())
}

/// mariadbd's options in the pod: doze's compute defaults (as the local driver's), then the
/// compute's allowed `mariadb_options`.
fn server_args(config: &serde_json::Value, defaults: &Defaults) -> anyhow::Result<Vec<String>> {
    let mut args = vec![
        "--skip-name-resolve".to_owned(),
        // DATA/INDEX DIRECTORY would let a role put table files anywhere the server can write.
        "--skip-symbolic-links".to_owned(),
        "--performance-schema=OFF".to_owned(),
        format!("--innodb-buffer-pool-size={}", buffer_pool_for(config)?),
        format!("--max-allowed-packet={}", defaults.max_allowed_packet),
        format!("--max-connections={DEFAULT_MAX_CONNECTIONS}"),
        format!("--back-log={DEFAULT_MAX_CONNECTIONS}"),
    ];
    args.extend(
        crate::driver::mariadb::FAST_START_ARGS
            .iter()
            .map(|a| (*a).to_owned()),
    );
    if defaults.tls_secret.is_some() {
        args.extend([
            format!("--ssl-cert={TLS_DIR}/tls.crt"),
            format!("--ssl-key={TLS_DIR}/tls.key"),
            // Every login, doze's root one included, must come over TLS.
            "--require-secure-transport=ON".to_owned(),
        ]);
    }
    args.extend(mariadb_options(config)?);
    Ok(args)
}

/// cpu and memory requests and limits from `config.resources` (requests = limits: a compute
/// gets what it was sized for, and its buffer pool is sized from that memory).
fn resources(config: &serde_json::Value) -> anyhow::Result<Option<ResourceRequirements>> {
    let mut amounts = BTreeMap::new();
    if let Some(cpu) = cpu_of(config)? {
        amounts.insert("cpu".to_owned(), Quantity(cpu));
    }
    if let Some(serde_json::Value::String(memory)) = config.pointer("/resources/memory") {
        amounts.insert("memory".to_owned(), Quantity(memory.clone()));
    }
    if amounts.is_empty() {
        return Ok(None);
    }
    Ok(Some(ResourceRequirements {
        requests: Some(amounts.clone()),
        limits: Some(amounts),
        ..ResourceRequirements::default()
    }))
}

/// Prefer the node the compute last ran on: its volume (and page cache) is there, and a
/// zonal or local volume may not attach anywhere else without need.
fn affinity_to(node: Option<&str>) -> Option<k8s_openapi::api::core::v1::Affinity> {
    let node = node?;
    Some(k8s_openapi::api::core::v1::Affinity {
        node_affinity: Some(NodeAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                PreferredSchedulingTerm {
                    weight: 100,
                    preference: NodeSelectorTerm {
                        match_fields: Some(vec![NodeSelectorRequirement {
                            key: "metadata.name".to_owned(),
                            operator: "In".to_owned(),
                            values: Some(vec![node.to_owned()]),
                        }]),
                        ..NodeSelectorTerm::default()
                    },
                },
            ]),
            ..NodeAffinity::default()
        }),
        ..Default::default()
    })
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    }
}

fn volume_mounts(defaults: &Defaults) -> Vec<VolumeMount> {
    let mut mounts = vec![
        mount("data", "/var/lib/mysql"),
        mount("run", "/run/mysqld"),
        mount("tmp", "/tmp"),
    ];
    if defaults.tls_secret.is_some() {
        mounts.push(VolumeMount {
            read_only: Some(true),
            ..mount("tls", TLS_DIR)
        });
    }
    mounts
}

fn volumes(project_id: &str, defaults: &Defaults) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: "data".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc_name(project_id),
                read_only: Some(false),
            }),
            ..Volume::default()
        },
        empty_dir("run"),
        empty_dir("tmp"),
    ];
    if let Some(secret) = &defaults.tls_secret {
        volumes.push(Volume {
            name: "tls".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                // Readable by the server (group `mysql` through fsGroup), by no one else.
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    volumes
}

/// The compute's Pod: the image's own entrypoint initialises an empty volume with the
/// Secret's password for root (its only account), then runs mariadbd with doze's options.
///
/// Hardening: no service-account token and no service links (a tenant's SQL cannot read
/// the cluster's credentials or the addresses of other services from the environment), not
/// root, no privilege escalation, no capabilities, the runtime's seccomp profile and a
/// read-only root file system (the server writes only its volume, /run/mysqld and /tmp).
pub fn pod(
    project_id: &str,
    compute_id: &str,
    config: &serde_json::Value,
    defaults: &Defaults,
    last_node: Option<&str>,
) -> anyhow::Result<Pod> {
    let container = Container {
        name: CONTAINER.to_owned(),
        image: Some(image_of(config, defaults)?),
        args: Some(server_args(config, defaults)?),
        ports: Some(vec![ContainerPort {
            name: Some("mysql".to_owned()),
            container_port: i32::from(MARIADB_PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        env: Some(vec![
            EnvVar {
                name: "MARIADB_ROOT_PASSWORD".to_owned(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret_name(project_id),
                        key: PASSWORD_KEY.to_owned(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            // After an image upgrade, the entrypoint upgrades the system tables itself.
            EnvVar {
                name: "MARIADB_AUTO_UPGRADE".to_owned(),
                value: Some("1".to_owned()),
                ..EnvVar::default()
            },
        ]),
        resources: resources(config)?,
        // The kubelet's view only (Service endpoints, `kubectl get`); doze itself probes the
        // greeting every few milliseconds and does not wait for this.
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(MARIADB_PORT)),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(2),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        volume_mounts: Some(volume_mounts(defaults)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    Ok(Pod {
        metadata: meta(pod_name(project_id), project_id, compute_id),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes(project_id, defaults)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(defaults.grace_seconds),
            restart_policy: Some("Always".to_owned()),
            affinity: affinity_to(last_node),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(MYSQL_UID),
                run_as_group: Some(MYSQL_UID),
                fs_group: Some(MYSQL_UID),
                // Not a chown of the whole volume at every wake: only when its root is wrong.
                fs_group_change_policy: Some("OnRootMismatch".to_owned()),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
        ..Pod::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults() -> Defaults {
        Defaults {
            image: "mariadb:11.4".into(),
            storage_class: Some("fast".into()),
            storage_size: "10Gi".into(),
            max_allowed_packet: "64M".into(),
            grace_seconds: 60,
            tls_secret: None,
        }
    }

    #[test]
    fn a_tls_secret_is_mounted_and_required() {
        let d = Defaults {
            tls_secret: Some("compute-tls".into()),
            ..defaults()
        };
        let v = serde_json::to_value(pod("p1", "c1", &json!({}), &d, None).expect("pod"))
            .expect("json");
        let c = &v["spec"]["containers"][0];
        let args = c["args"].to_string();
        assert!(
            args.contains("--ssl-cert=/etc/mysql/tls/tls.crt")
                && args.contains("--require-secure-transport=ON"),
            "{args}"
        );
        assert_eq!(
            c["volumeMounts"][3],
            json!({"name": "tls", "mountPath": "/etc/mysql/tls", "readOnly": true})
        );
        assert_eq!(
            v["spec"]["volumes"][3]["secret"],
            json!({"secretName": "compute-tls", "defaultMode": 0o440})
        );
        let plain =
            serde_json::to_value(pod("p1", "c1", &json!({}), &defaults(), None).expect("pod"))
                .expect("json");
        assert!(!plain.to_string().contains("ssl-cert"));
    }

    #[test]
    fn pod_is_sized_hardened_and_mounts_its_volume() {
        let config = json!({"resources": {"cpu": "500m", "memory": "1Gi"}, "image": "registry.test/mariadb:11.8"});
        let pod = pod("p1", "c1", &config, &defaults(), Some("node-a")).expect("pod");
        let v = serde_json::to_value(&pod).expect("json");
        assert_eq!(v["metadata"]["name"], "doze-p1");
        assert_eq!(v["metadata"]["labels"]["doze.io/project"], "p1");
        assert_eq!(
            v["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "doze"
        );
        let spec = &v["spec"];
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["enableServiceLinks"], false);
        assert_eq!(spec["terminationGracePeriodSeconds"], 60);
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        let c = &spec["containers"][0];
        assert_eq!(c["image"], "registry.test/mariadb:11.8");
        assert_eq!(c["resources"]["limits"]["memory"], "1Gi");
        assert_eq!(c["resources"]["requests"]["cpu"], "500m");
        let args: Vec<&str> = c["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(
            args.contains(&"--innodb-buffer-pool-size=536870912"),
            "{args:?}"
        );
        assert!(args.contains(&"--skip-symbolic-links"));
        assert_eq!(
            c["env"][0]["valueFrom"]["secretKeyRef"],
            json!({"name": "doze-p1-admin", "key": "password", "optional": false})
        );
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/var/lib/mysql");
        assert_eq!(
            spec["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "doze-p1"
        );
        let pref =
            &spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
        assert_eq!(pref["preference"]["matchFields"][0]["values"][0], "node-a");
    }

    #[test]
    fn pvc_and_secret() {
        let pvc = pvc(
            "p1",
            "c1",
            &json!({"resources": {"storage": "5Gi"}}),
            &defaults(),
        )
        .expect("pvc");
        let v = serde_json::to_value(&pvc).expect("json");
        assert_eq!(v["spec"]["resources"]["requests"]["storage"], "5Gi");
        assert_eq!(v["spec"]["accessModes"][0], "ReadWriteOnce");
        assert_eq!(v["spec"]["storageClassName"], "fast");
        let default_sized = pvc_default();
        assert_eq!(default_sized, "10Gi");
        let s = secret("p1", "c1", "s3cret");
        assert_eq!(password_of(&s).expect("password"), "s3cret");
        assert_eq!(s.immutable, Some(true));
    }

    fn pvc_default() -> String {
        let pvc = pvc("p1", "c1", &json!({}), &defaults()).expect("pvc");
        pvc.spec
            .and_then(|s| s.resources)
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned())
            .map(|q| q.0)
            .unwrap_or_default()
    }

    #[test]
    fn bad_configs_are_refused_with_the_field() {
        let d = defaults();
        for (config, field) in [
            (json!({"image": "bad image"}), "image"),
            (json!({"image": 5}), "image"),
            (json!({"resources": {"cpu": "lots"}}), "resources.cpu"),
            (
                json!({"resources": {"storage": "big"}}),
                "resources.storage",
            ),
            (json!({"resources": {"memory": "x"}}), "resources.memory"),
            (json!({"mariadb_options": {"datadir": "/"}}), "datadir"),
        ] {
            let err = format!("{:#}", validate(&config, &d).expect_err("refused"));
            assert!(err.contains(field), "{config}: {err}");
        }
        validate(
            &json!({"resources": {"cpu": 2, "memory": "512Mi", "storage": "1Gi"}}),
            &d,
        )
        .expect("valid");
    }
}
