//! The Kubernetes manifests under `deploy/kubernetes` against the API types doze is built with
//! (k8s-openapi, API v1_35), and against doze itself.
//!
//! - Every YAML document (every file but `kustomization.yaml`) is deserialized by its `kind`
//!   into the matching k8s-openapi type. Those types ignore unknown fields, so each is also
//!   serialized back and compared with the document: a misspelled or misplaced field is in the
//!   document and not in the round trip, and fails here with its path.
//! - The Role grants exactly the verbs the driver uses (RBAC drift fails).
//! - The Deployment passes only flags `doze serve` has (read from proxy/src/cli), reads only
//!   DOZE_* variables it knows, and its ports, probes, grace period, labels, Services,
//!   NetworkPolicy and PodDisruptionBudget agree with each other.
//!
//! `.ci/validate-manifests` checks the same files against the API's OpenAPI schemas.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The namespace every namespaced object is in (and the kustomization's `namespace`).
const NAMESPACE: &str = "doze";

/// What the Kubernetes driver does with each resource, and so what the Role must grant: no
/// more (least privilege), no less (the driver would fail in a real cluster).
const DRIVER_VERBS: &[(&str, &str, &[&str])] = &[
    ("", "pods", &["list", "watch", "create", "delete"]),
    ("", "pods/log", &["get"]),
    ("", "persistentvolumeclaims", &["create", "delete"]),
    ("", "secrets", &["get", "create", "delete"]),
];

/// The label of every object doze creates for a compute (control/src/driver/kubernetes).
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "doze");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One YAML document of a manifest file, as JSON.
struct Doc {
    file: PathBuf,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
    fn what(&self) -> String {
        format!("{} {} ({})", self.kind(), self.name(), self.file.display())
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
            && path.file_name().is_some_and(|n| n != "kustomization.yaml")
        {
            out.push(path);
        }
    }
}

/// Every document of every manifest under deploy/kubernetes.
fn docs() -> Vec<Doc> {
    let mut files = Vec::new();
    yaml_files(&repo().join("deploy/kubernetes"), &mut files);
    assert!(!files.is_empty(), "no manifests under deploy/kubernetes");
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("reading a manifest");
        let values: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
        for value in values {
            assert!(
                value.is_object(),
                "{}: a document that is not a mapping",
                file.display()
            );
            docs.push(Doc {
                file: file.clone(),
                value,
            });
        }
    }
    docs
}

/// Where two JSON values differ, as paths (`spec.template.spec.containers[0].image`).
fn differences(path: &str, doc: &Value, typed: &Value, out: &mut Vec<String>) {
    match (doc, typed) {
        (Value::Object(d), Value::Object(t)) => {
            for (k, v) in d {
                let p = format!("{path}.{k}");
                match t.get(k) {
                    Some(tv) => differences(&p, v, tv, out),
                    None => out.push(format!(
                        "{p}: in the manifest, not in the API type (unknown or misplaced field?)"
                    )),
                }
            }
            for k in t.keys().filter(|k| !d.contains_key(*k)) {
                out.push(format!("{path}.{k}: added by the API type"));
            }
        }
        (Value::Array(d), Value::Array(t)) if d.len() == t.len() => {
            for (i, (dv, tv)) in d.iter().zip(t).enumerate() {
                differences(&format!("{path}[{i}]"), dv, tv, out);
            }
        }
        _ if doc == typed => {}
        _ => out.push(format!(
            "{path}: manifest has {doc}, the API type reads {typed}"
        )),
    }
}

/// The document as `T`, or why it is not one: it does not deserialize, or its round trip
/// (deserialize, serialize back) differs from it.
fn round_trip<T: Resource + DeserializeOwned + Serialize>(doc: &Doc) -> Result<T, String> {
    if doc.value["apiVersion"] != T::API_VERSION {
        return Err(format!(
            "{}: apiVersion {} is not {}'s {}",
            doc.what(),
            doc.value["apiVersion"],
            T::KIND,
            T::API_VERSION
        ));
    }
    let value: T = serde_json::from_value(doc.value.clone())
        .map_err(|e| format!("{}: not a valid {}: {e}", doc.what(), T::KIND))?;
    let back = serde_json::to_value(&value).map_err(|e| format!("serializing: {e}"))?;
    let mut diffs = Vec::new();
    differences("", &doc.value, &back, &mut diffs);
    if !diffs.is_empty() {
        return Err(format!(
            "{} does not round-trip through k8s-openapi's {}:\n  {}",
            doc.what(),
            T::KIND,
            diffs.join("\n  ")
        ));
    }
    Ok(value)
}

/// The document as `T`, checked to survive the round trip unchanged.
fn typed<T: Resource + DeserializeOwned + Serialize>(doc: &Doc) -> T {
    round_trip(doc).unwrap_or_else(|e| panic!("{e}"))
}

/// Round-trips a document through the type of its `kind`.
fn check_kind(doc: &Doc) {
    match doc.kind() {
        "Namespace" => drop(typed::<Namespace>(doc)),
        "ServiceAccount" => drop(typed::<ServiceAccount>(doc)),
        "Role" => drop(typed::<Role>(doc)),
        "RoleBinding" => drop(typed::<RoleBinding>(doc)),
        "Secret" => drop(typed::<Secret>(doc)),
        "ConfigMap" => drop(typed::<ConfigMap>(doc)),
        "Deployment" => drop(typed::<Deployment>(doc)),
        "StatefulSet" => drop(typed::<StatefulSet>(doc)),
        "Service" => drop(typed::<Service>(doc)),
        "PersistentVolumeClaim" => drop(typed::<PersistentVolumeClaim>(doc)),
        "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(doc)),
        "NetworkPolicy" => drop(typed::<NetworkPolicy>(doc)),
        other => panic!(
            "{}: kind {other:?} is not known to this test; add its k8s-openapi type to check_kind \
             (a ClusterRole or ClusterRoleBinding would also widen doze's RBAC: see DRIVER_VERBS)",
            doc.what()
        ),
    }
}

fn only<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    let found: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == kind && d.name() == name)
        .filter(|d| !d.file.ends_with("doze-secrets-patch.yaml"))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} {name}, found {}",
        found.len()
    );
    found[0]
}

#[test]
fn every_manifest_round_trips_through_its_api_type() {
    let docs = docs();
    for doc in &docs {
        check_kind(doc);
        if doc.kind() != "Namespace" {
            assert_eq!(
                doc.value["metadata"]["namespace"],
                NAMESPACE,
                "{}: every object goes in namespace {NAMESPACE} (as the kustomization says)",
                doc.what()
            );
        }
    }
    // The base's objects are all here (the demo's too).
    for (kind, name) in [
        ("Namespace", "doze"),
        ("ServiceAccount", "doze"),
        ("Role", "doze"),
        ("RoleBinding", "doze"),
        ("Secret", "doze-secrets"),
        ("Deployment", "doze"),
        ("Service", "doze"),
        ("Service", "doze-admin"),
        ("PodDisruptionBudget", "doze"),
        ("NetworkPolicy", "doze-computes"),
        ("StatefulSet", "doze-postgres"),
    ] {
        only(&docs, kind, name);
    }
}

#[test]
fn the_round_trip_catches_misspelled_fields() {
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x", "namespace": NAMESPACE},
        "spec": {"selector": {"a": "b"}, "ports": [{"port": 3306, "targetPrt": "mysql"}]},
    });
    let doc = Doc {
        file: PathBuf::from("inline"),
        value,
    };
    let err = round_trip::<Service>(&doc).expect_err("a misspelled field must fail the round trip");
    assert!(
        err.contains(".spec.ports[0].targetPrt: in the manifest"),
        "{err}"
    );
    let mut doc = doc;
    doc.value["spec"]["ports"][0] = serde_json::json!({"port": 3306, "targetPort": "mysql"});
    round_trip::<Service>(&doc).expect("the corrected Service round-trips");
}

#[test]
fn the_role_grants_exactly_what_the_driver_uses() {
    let docs = docs();
    let roles: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "Role").collect();
    assert_eq!(roles.len(), 1, "doze has one Role");
    let role: Role = typed(roles[0]);
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.expect("the Role has rules") {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "doze's rules name neither resourceNames nor nonResourceURLs"
        );
        for group in rule.api_groups.clone().unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                let verbs = granted.entry((group.clone(), resource)).or_default();
                for verb in &rule.verbs {
                    assert!(verbs.insert(verb.clone()), "verb {verb} granted twice");
                }
            }
        }
    }
    let expected: BTreeMap<(String, String), BTreeSet<String>> = DRIVER_VERBS
        .iter()
        .map(|(group, resource, verbs)| {
            (
                ((*group).to_owned(), (*resource).to_owned()),
                verbs.iter().map(|v| (*v).to_owned()).collect(),
            )
        })
        .collect();
    assert_eq!(
        granted, expected,
        "the Role in deploy/kubernetes/base/rbac.yaml drifted from the verbs the Kubernetes \
         driver uses (DRIVER_VERBS here): change both, with the reason in the manifest"
    );

    let binding: RoleBinding = typed(only(&docs, "RoleBinding", "doze"));
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.expect("the RoleBinding has a subject");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, "doze");
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));

    let account: ServiceAccount = typed(only(&docs, "ServiceAccount", "doze"));
    assert_eq!(
        account.automount_service_account_token,
        Some(true),
        "doze talks to the API server with its ServiceAccount's token"
    );
}

/// `--flag`s of a struct deriving clap's `Args`, and the types it flattens in.
#[derive(Default, Debug)]
struct CliStruct {
    flags: BTreeSet<String>,
    flattened: Vec<String>,
}

fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
}

/// The `#[arg(long ...)]` fields of every struct in proxy/src/cli, by struct name. A reading of
/// the source, not of clap: enough for rustfmt-formatted field declarations.
fn cli_structs() -> BTreeMap<String, CliStruct> {
    let mut structs = BTreeMap::new();
    let dir = repo().join("proxy/src/cli");
    for entry in std::fs::read_dir(&dir).expect("proxy/src/cli") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("reading a CLI source file");
        let mut current: Option<(String, CliStruct)> = None;
        let mut attrs: Vec<String> = Vec::new();
        let mut open_attr: Option<String> = None;
        for line in text.lines() {
            let t = line.trim();
            let Some((_, fields)) = current.as_mut() else {
                let decl = t.strip_prefix("pub ").unwrap_or(t);
                if let Some(rest) = decl.strip_prefix("struct ")
                    && t.ends_with('{')
                {
                    let name = words(rest).next().unwrap_or("").to_owned();
                    current = Some((name, CliStruct::default()));
                    attrs.clear();
                }
                continue;
            };
            if line == "}" {
                let (name, fields) = current.take().expect("in a struct");
                structs.insert(name, fields);
                continue;
            }
            if let Some(open) = open_attr.as_mut() {
                open.push_str(t);
                if t.ends_with(")]") {
                    attrs.push(open_attr.take().expect("open attribute"));
                }
                continue;
            }
            if t.starts_with("#[") {
                if t.ends_with(']') {
                    attrs.push(t.to_owned());
                } else {
                    open_attr = Some(t.to_owned());
                }
                continue;
            }
            if t.is_empty() || t.starts_with("//") {
                continue;
            }
            let decl = t.strip_prefix("pub ").unwrap_or(t);
            if let Some((field, ty)) = decl.split_once(':') {
                let field = field.trim();
                for attr in attrs.drain(..) {
                    if attr.starts_with("#[arg(") && words(&attr).any(|w| w == "long") {
                        let explicit = attr
                            .split_once("long = \"")
                            .and_then(|(_, rest)| rest.split_once('"'))
                            .map(|(name, _)| name.to_owned());
                        let name = explicit.unwrap_or_else(|| field.replace('_', "-"));
                        fields.flags.insert(format!("--{name}"));
                    }
                    if attr.starts_with("#[command(") && words(&attr).any(|w| w == "flatten") {
                        let ty = words(ty).find(|w| !w.is_empty()).unwrap_or("");
                        fields.flattened.push(ty.to_owned());
                    }
                }
            }
            attrs.clear();
        }
    }
    structs
}

/// Every flag of `doze serve`: ServeArgs's and those of the structs it flattens in.
fn serve_flags() -> BTreeSet<String> {
    let structs = cli_structs();
    let mut flags = BTreeSet::new();
    let mut todo = vec!["ServeArgs".to_owned()];
    while let Some(name) = todo.pop() {
        let s = structs
            .get(&name)
            .unwrap_or_else(|| panic!("struct {name} not found in proxy/src/cli"));
        flags.extend(s.flags.iter().cloned());
        todo.extend(s.flattened.iter().cloned());
    }
    assert!(
        flags.contains("--proxy-listen") && flags.contains("--drain-timeout"),
        "reading ServeArgs's flags failed: {flags:?}"
    );
    flags
}

/// `30s`, `2m`, `1h` as seconds (what the manifests use of doze's duration syntax).
fn seconds(s: &str) -> i64 {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n.parse().unwrap_or_else(|_| panic!("duration {s:?}"));
    match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => panic!("duration {s:?}: use s, m or h"),
    }
}

fn container_port(container: &Container, name: &str) -> i32 {
    container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("container {} has no port named {name}", container.name))
        .container_port
}

fn port_of_listen(addr: &str) -> i32 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("listen address {addr:?}"))
}

#[test]
fn the_deployment_runs_doze_serve_with_flags_it_has() {
    let docs = docs();
    let deployment: Deployment = typed(only(&docs, "Deployment", "doze"));
    let spec = deployment.spec.expect("spec");
    assert_eq!(
        spec.replicas,
        Some(2),
        "replicas on one PostgreSQL coordinate: two, so that one serves while the other restarts"
    );
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("RollingUpdate"),
        "one replica at a time"
    );
    let template = spec.template;
    let pod_labels = template.metadata.as_ref().and_then(|m| m.labels.clone());
    let pod_labels = pod_labels.expect("pod labels");
    let matches_pod = |selector: &BTreeMap<String, String>| {
        selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
    };
    assert!(matches_pod(
        spec.selector.match_labels.as_ref().expect("matchLabels")
    ));
    assert_ne!(
        pod_labels.get(MANAGED_BY.0).map(String::as_str),
        Some(MANAGED_BY.1),
        "doze's own pod must not look like a compute (the NetworkPolicy and the driver's watch select on {}={})",
        MANAGED_BY.0,
        MANAGED_BY.1
    );

    let pod = template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("doze"));
    assert_eq!(pod.automount_service_account_token, Some(true));
    assert_eq!(pod.enable_service_links, Some(false));
    let psc = pod.security_context.clone().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65532));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    let sc = c
        .security_context
        .clone()
        .expect("container securityContext");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );

    // The arguments: `serve`, then --flag=value items, each a flag of `doze serve`.
    let args = c.args.clone().expect("args");
    assert_eq!(args.first().map(String::as_str), Some("serve"));
    let known = serve_flags();
    let mut given: BTreeMap<String, String> = BTreeMap::new();
    for arg in &args[1..] {
        let (flag, value) = arg
            .split_once('=')
            .unwrap_or_else(|| panic!("write {arg:?} as --flag=value (one item per flag)"));
        assert!(
            known.contains(flag),
            "the Deployment passes {flag}, which `doze serve` does not have (its flags: {known:?})"
        );
        assert!(
            given.insert(flag.to_owned(), value.to_owned()).is_none(),
            "{flag} given twice"
        );
    }
    for secret_flag in ["--admin-token", "--db-dsn"] {
        assert!(
            !given.contains_key(secret_flag),
            "{secret_flag} would put a secret on the command line: use its DOZE_* variable"
        );
    }
    assert_eq!(given["--driver"], "kubernetes");
    assert_eq!(given["--namespace"], "$(POD_NAMESPACE)");
    assert_eq!(
        port_of_listen(&given["--proxy-listen"]),
        container_port(c, "mysql")
    );
    assert_eq!(
        port_of_listen(&given["--admin-listen"]),
        container_port(c, "admin")
    );
    let data_dir = &given["--data-dir"];
    assert!(
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| &m.mount_path == data_dir && m.read_only != Some(true)),
        "--data-dir {data_dir} must be a writable volume (the root filesystem is read-only)"
    );

    // Environment: the downward API's namespace, and DOZE_* variables doze reads, from the
    // doze-secrets Secret's keys.
    let serve_rs =
        std::fs::read_to_string(repo().join("proxy/src/cli/serve.rs")).expect("serve.rs");
    let secret: Secret = typed(only(&docs, "Secret", "doze-secrets"));
    let secret_keys: BTreeSet<String> = secret
        .string_data
        .clone()
        .unwrap_or_default()
        .into_keys()
        .collect();
    let env = c.env.clone().expect("env");
    let namespace_env = env
        .iter()
        .find(|e| e.name == "POD_NAMESPACE")
        .expect("POD_NAMESPACE");
    assert_eq!(
        namespace_env
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.namespace")
    );
    for var in env.iter().filter(|e| e.name.starts_with("DOZE_")) {
        assert!(
            serve_rs.contains(&format!("\"{}\"", var.name)),
            "the Deployment sets {}, which `doze serve` does not read",
            var.name
        );
        if let Some(key_ref) = var
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
        {
            assert_eq!(key_ref.name, "doze-secrets");
            assert!(
                secret_keys.contains(&key_ref.key),
                "{} reads key {} that doze-secrets does not have",
                var.name,
                key_ref.key
            );
        }
    }
    for var in ["DOZE_DB_DSN", "DOZE_ADMIN_TOKEN"] {
        assert!(env.iter().any(|e| e.name == var), "{var} is not set");
    }
    let placeholder = &secret.string_data.as_ref().expect("stringData")["DOZE_ADMIN_TOKEN"];
    assert!(
        doze_control::validate_admin_token(placeholder).is_err(),
        "the checked-in admin token placeholder must be one doze refuses, so that nobody runs \
         with a token published in git"
    );

    // Probes on the admin port, at paths the admin API serves without a token.
    for (what, probe) in [
        ("readiness", &c.readiness_probe),
        ("liveness", &c.liveness_probe),
        ("startup", &c.startup_probe),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what} probe: httpGet"));
        assert_eq!(get.port, IntOrString::String("admin".to_owned()), "{what}");
        let path = get.path.as_deref().unwrap_or("");
        assert!(
            ["/healthz", "/metrics"].contains(&path),
            "{what} probe path {path}"
        );
    }

    // SIGTERM: the preStop sleep, then the drain, must fit in the grace period.
    let sleep = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map_or(0, |s| s.seconds);
    let drain = seconds(given.get("--drain-timeout").map_or("30s", String::as_str));
    let grace = pod.termination_grace_period_seconds.unwrap_or(30);
    assert!(
        grace > sleep + drain,
        "terminationGracePeriodSeconds {grace} must exceed preStop {sleep}s + drain {drain}s"
    );

    // The Services send to ports the container has, and select this pod.
    for name in ["doze", "doze-admin"] {
        let service: Service = typed(only(&docs, "Service", name));
        let sspec = service.spec.expect("service spec");
        assert!(matches_pod(sspec.selector.as_ref().expect("selector")));
        for port in sspec.ports.expect("ports") {
            match port.target_port.expect("targetPort") {
                IntOrString::String(n) => drop(container_port(c, &n)),
                IntOrString::Int(n) => panic!("{name}: name the target port, not {n}"),
            }
        }
    }
    let admin: Service = typed(only(&docs, "Service", "doze-admin"));
    assert_eq!(
        admin.spec.and_then(|s| s.type_).as_deref(),
        Some("ClusterIP"),
        "the admin API is never exposed outside the cluster"
    );

    let pdb: PodDisruptionBudget = typed(only(&docs, "PodDisruptionBudget", "doze"));
    let pdb = pdb.spec.expect("pdb spec");
    assert!(matches_pod(
        pdb.selector
            .and_then(|s| s.match_labels)
            .as_ref()
            .expect("pdb selector")
    ));
    assert!(
        pdb.min_available.is_none(),
        "maxUnavailable, so that a drain never blocks"
    );

    // The computes accept 3306 from doze's pods only.
    let policy: NetworkPolicy = typed(only(&docs, "NetworkPolicy", "doze-computes"));
    let policy = policy.spec.expect("policy spec");
    assert_eq!(
        policy.pod_selector.and_then(|s| s.match_labels),
        Some(BTreeMap::from([(
            MANAGED_BY.0.to_owned(),
            MANAGED_BY.1.to_owned()
        )]))
    );
    let ingress = policy.ingress.expect("ingress rules");
    assert_eq!(ingress.len(), 1);
    let from = ingress[0].from.clone().expect("from");
    assert_eq!(from.len(), 1);
    assert!(matches_pod(
        from[0]
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .expect("from doze's pods")
    ));
    let ports = ingress[0].ports.clone().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, Some(IntOrString::Int(3306)));
}

#[test]
fn the_flag_reader_reads_serve_args() {
    let dir = repo().join("proxy/src/cli");
    let structs = cli_structs();
    assert!(
        structs.contains_key("ServeArgs"),
        "no ServeArgs in {}",
        dir.display()
    );
    let serve = &structs["ServeArgs"];
    assert!(serve.flags.contains("--db-dsn"), "{serve:?}");
    assert!(
        serve.flags.contains("--max-pending-logins-per-ip"),
        "{serve:?}"
    );
    assert!(!serve.flags.contains("--serve"), "{serve:?}");
}
