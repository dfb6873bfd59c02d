//! A fake Kubernetes API server with a fake kubelet, for testing the Kubernetes compute driver
//! without a cluster.
//!
//! The server speaks plain HTTP/1.1 on 127.0.0.1 and serves the core v1 API for namespaced
//! `pods`, `persistentvolumeclaims` and `secrets`: create, get, list (label and field
//! selectors, `limit`/`continue` pagination over a consistent snapshot), watch (resume from any
//! resourceVersion ever returned, bookmarks, `sendInitialEvents`, `timeoutSeconds`), delete
//! (graceful for pods, `pvc-protection` for claims), merge patch, replace and pod logs. Objects
//! are kept as JSON, so unknown fields round-trip. Every request is recorded.
//!
//! The kubelet runs one fake node, `fake-node-1` (4 cpu, 8Gi). It schedules each pod (or leaves
//! it `Unschedulable`), "pulls" only `mariadb` images (`mariadb`, `docker.io/library/mariadb`,
//! `registry.test/...`), and runs the first container as a real `mariadbd` on its own loopback
//! address (the pod IP), initialising the datadir on the claim mounted at `/var/lib/mysql` as
//! the official image does (root@localhost and root@'%' with `MARIADB_ROOT_PASSWORD`). It
//! restarts crashed servers with back-off and stops them on deletion (SIGTERM, SIGKILL after
//! the grace period). Everything is killed when the [`FakeCluster`] is dropped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Response, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::driver::mariadb::{self, Owner, ServerSpec};

/// The fake node's name.
pub const NODE_NAME: &str = "fake-node-1";
const NODE_CPU: f64 = 4.0;
const NODE_MEMORY: f64 = 8.0 * 1024.0 * 1024.0 * 1024.0;
const KINDS: &[(&str, &str)] = &[
    ("pods", "Pod"),
    ("persistentvolumeclaims", "PersistentVolumeClaim"),
    ("secrets", "Secret"),
];

/// One API request the fake server received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The path without the query, e.g. `/api/v1/namespaces/default/pods`.
    pub path: String,
    /// The raw query string (empty when none).
    pub query: String,
    /// The body: parsed JSON, a JSON string for a body that is not JSON, `None` when empty.
    pub body: Option<Value>,
    /// True for `watch=true` / `watch=1` requests.
    pub watch: bool,
    pub at: Instant,
}

impl Request {
    /// A query parameter, percent-decoded.
    pub fn param(&self, key: &str) -> Option<String> {
        parse_query(&self.query).remove(key)
    }
}

/// A fake API server plus kubelet; see the module docs. Dropping it kills every server it runs.
pub struct FakeCluster {
    inner: Arc<Inner>,
    port: u16,
    server: tokio::task::JoinHandle<()>,
    dir: TempDir,
}

type Key = (String, String, String); // kind (plural), namespace, name
type StopRx = watch::Receiver<Option<Stop>>;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    /// API deletion: SIGTERM, SIGKILL after the grace period, then the object goes.
    Graceful(u64),
    /// Already removed from the API (grace 0, or the cluster is going away): SIGKILL.
    Kill,
    /// The node is lost: SIGKILL, then the object goes without a graceful phase.
    Lost,
}

struct Event {
    rv: u64,
    key: Key,
    typ: &'static str,
    object: Value,
}

struct PodRun {
    stop: watch::Sender<Option<Stop>>,
    pid: Option<i32>,
    logs: Vec<PathBuf>,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// The objects as of `compacted_rv`; `events` holds everything after.
    base: BTreeMap<Key, Value>,
    compacted_rv: u64,
    events: Vec<Event>,
    requests: Vec<Request>,
    pvc_dirs: HashMap<(String, String), PathBuf>,
    started_at: HashMap<(String, String), Instant>,
    ready_at: HashMap<(String, String), Instant>,
    pods: HashMap<String, PodRun>, // by pod uid
    next_ip: u32,
    next_dir: u64,
    closed: bool,
}

struct Inner {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    root: PathBuf,
    owner: Owner,
    net: (u8, u8),
}

impl Inner {
    /// Runs `f` under the state lock, then wakes watchers if the resourceVersion moved.
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut st);
        let rv = st.rv;
        drop(st);
        if *self.changed.borrow() != rv {
            self.changed.send_replace(rv);
        }
        r
    }
}

fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn kind_of(plural: &str) -> Option<&'static str> {
    KINDS.iter().find(|(p, _)| *p == plural).map(|(_, k)| *k)
}

fn key(kind: &str, ns: &str, name: &str) -> Key {
    (kind.to_owned(), ns.to_owned(), name.to_owned())
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or("")
}

fn b64(bytes: &[u8]) -> Value {
    serde_json::to_value(ByteString(bytes.to_vec())).unwrap_or(Value::Null)
}

impl State {
    fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.objects.get(&key(kind, ns, name)).cloned()
    }

    /// Stores `obj` under a new resourceVersion and records the event.
    fn put(
        &mut self,
        kind: &str,
        ns: &str,
        name: &str,
        mut obj: Value,
        typ: &'static str,
    ) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = self.rv.to_string().into();
        let k = key(kind, ns, name);
        self.objects.insert(k.clone(), obj.clone());
        self.events.push(Event {
            rv: self.rv,
            key: k,
            typ,
            object: obj.clone(),
        });
        obj
    }

    fn remove(&mut self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let k = key(kind, ns, name);
        let mut obj = self.objects.remove(&k)?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = self.rv.to_string().into();
        self.events.push(Event {
            rv: self.rv,
            key: k,
            typ: "DELETED",
            object: obj.clone(),
        });
        if kind == "pods" {
            self.reap_pvcs();
        }
        Some(obj)
    }

    /// The objects of `kind` as of resourceVersion `rv` (replayed from the history).
    fn snapshot(&self, kind: &str, rv: u64) -> BTreeMap<Key, Value> {
        let of_kind = |m: &BTreeMap<Key, Value>| -> BTreeMap<Key, Value> {
            m.iter()
                .filter(|(k, _)| k.0 == kind)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        if rv >= self.rv {
            return of_kind(&self.objects);
        }
        let mut m = of_kind(&self.base);
        for ev in self
            .events
            .iter()
            .take_while(|e| e.rv <= rv)
            .filter(|e| e.key.0 == kind)
        {
            if ev.typ == "DELETED" {
                m.remove(&ev.key);
            } else {
                m.insert(ev.key.clone(), ev.object.clone());
            }
        }
        m
    }

    /// Removes claims being deleted that no pod uses any more, with their directories.
    fn reap_pvcs(&mut self) {
        let used: HashSet<(String, String)> = self
            .objects
            .iter()
            .filter(|(k, _)| k.0 == "pods")
            .flat_map(|(k, pod)| claims(pod).into_iter().map(|c| (k.1.clone(), c)))
            .collect();
        let doomed: Vec<Key> = self
            .objects
            .iter()
            .filter(|(k, v)| {
                k.0 == "persistentvolumeclaims"
                    && !v["metadata"]["deletionTimestamp"].is_null()
                    && !used.contains(&(k.1.clone(), k.2.clone()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for (kind, ns, name) in doomed {
            self.remove(&kind, &ns, &name);
            if let Some(dir) = self.pvc_dirs.remove(&(ns, name)) {
                let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));
            }
        }
    }

    /// Deletes an object as the API server does; `None` when it does not exist.
    fn delete(&mut self, kind: &str, ns: &str, name: &str, grace: Option<i64>) -> Option<Value> {
        let mut cur = self.get(kind, ns, name)?;
        let uid = meta_str(&cur, "uid").to_owned();
        match kind {
            "secrets" => {
                self.remove(kind, ns, name);
                Some(
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "kind": kind, "uid": uid}}),
                )
            }
            "persistentvolumeclaims" => {
                if cur["metadata"]["deletionTimestamp"].is_null() {
                    cur["metadata"]["deletionTimestamp"] = now().into();
                    cur["metadata"]["deletionGracePeriodSeconds"] = 0.into();
                    cur = self.put(kind, ns, name, cur, "MODIFIED");
                }
                self.reap_pvcs();
                Some(cur)
            }
            _ => {
                let grace = grace
                    .or_else(|| cur["spec"]["terminationGracePeriodSeconds"].as_i64())
                    .unwrap_or(30)
                    .max(0);
                let scheduled = cur["spec"]["nodeName"].as_str().is_some();
                let run = self.pods.get(&uid);
                if grace == 0 || run.is_none() || !scheduled {
                    if let Some(run) = run {
                        run.stop.send_replace(Some(Stop::Kill));
                        if let Some(pid) = run.pid {
                            mariadb::signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
                        }
                    }
                    cur["metadata"]["deletionTimestamp"] = now().into();
                    cur["metadata"]["deletionGracePeriodSeconds"] = 0.into();
                    self.objects.insert(key(kind, ns, name), cur);
                    return self.remove(kind, ns, name);
                }
                if !cur["metadata"]["deletionTimestamp"].is_null() {
                    return Some(cur);
                }
                let at = Timestamp::now()
                    .checked_add(SignedDuration::from_secs(grace))
                    .unwrap_or_else(|_| Timestamp::now());
                cur["metadata"]["deletionTimestamp"] =
                    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string().into();
                cur["metadata"]["deletionGracePeriodSeconds"] = grace.into();
                let cur = self.put(kind, ns, name, cur, "MODIFIED");
                if let Some(run) = self.pods.get(&uid) {
                    run.stop.send_replace(Some(Stop::Graceful(grace as u64)));
                }
                Some(cur)
            }
        }
    }

    /// Why the scheduler cannot place `pod`, or `None` when it fits.
    fn unschedulable(&self, ns: &str, pod: &Value) -> Option<String> {
        const NOT_HELPFUL: &str =
            "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.";
        for claim in claims(pod) {
            let Some(pvc) = self.get("persistentvolumeclaims", ns, &claim) else {
                return Some(format!(
                    "0/1 nodes are available: persistentvolumeclaim \"{claim}\" not found. {NOT_HELPFUL}"
                ));
            };
            if !pvc["metadata"]["deletionTimestamp"].is_null() {
                return Some(format!(
                    "0/1 nodes are available: persistentvolumeclaim \"{claim}\" is being deleted. {NOT_HELPFUL}"
                ));
            }
            if pvc["status"]["phase"] != "Bound" {
                return Some(format!(
                    "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. {NOT_HELPFUL}"
                ));
            }
        }
        let (mut cpu, mut memory) = (0.0, 0.0);
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let res = &c["resources"];
            let get = |r: &str| {
                let v = if res["requests"][r].is_null() {
                    &res["limits"][r]
                } else {
                    &res["requests"][r]
                };
                v.as_str().map(quantity).or(v.as_f64()).unwrap_or(0.0)
            };
            cpu += get("cpu");
            memory += get("memory");
        }
        let mut short = Vec::new();
        if cpu > NODE_CPU {
            short.push("1 Insufficient cpu");
        }
        if memory > NODE_MEMORY {
            short.push("1 Insufficient memory");
        }
        (!short.is_empty()).then(|| {
            format!(
                "0/1 nodes are available: {}. preemption: 0/1 nodes are available: 1 No preemption \
                 victims found for incoming pod.",
                short.join(", ")
            )
        })
    }

    /// A fresh loopback address, free on `port`, never 127.0.0.1.
    fn alloc_ip(&mut self, net: (u8, u8), port: u16) -> Ipv4Addr {
        for _ in 0..1000 {
            self.next_ip += 1;
            let n = self.next_ip;
            let ip = Ipv4Addr::new(
                127,
                net.0,
                net.1.wrapping_add((n / 250) as u8),
                (n % 250 + 2) as u8,
            );
            if std::net::TcpListener::bind((ip, port)).is_ok() {
                return ip;
            }
        }
        Ipv4Addr::new(127, net.0, net.1, 2)
    }
}

/// Claim names of a pod's volumes.
fn claims(pod: &Value) -> Vec<String> {
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            v["persistentVolumeClaim"]["claimName"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// A Kubernetes quantity ("500m", "8Gi", "64") as a number.
fn quantity(s: &str) -> f64 {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1.125_899_906_842_624e15),
        ("Ei", 1.152_921_504_606_847e18),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, mul) in SUFFIXES {
        if let Some(n) = s.strip_suffix(suffix)
            && let Ok(v) = n.parse::<f64>()
        {
            return v * mul;
        }
    }
    s.parse().unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Selectors and queries

enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A label selector plus a field selector.
struct Filter {
    ns: Option<String>,
    labels: Vec<Req>,
    fields: Vec<Req>,
}

fn parse_selector(s: &str, fields: bool) -> Result<Vec<Req>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    let set = |rest: &str| -> Vec<String> {
        rest.trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(|v| v.trim().to_owned())
            .collect()
    };
    let mut out = Vec::new();
    for t in terms.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
        let own = |k: &str| k.trim().to_owned();
        out.push(if let Some((k, v)) = t.split_once("!=") {
            Req::Ne(own(k), own(v))
        } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            Req::Eq(own(k), own(v))
        } else if !fields && let Some((k, rest)) = t.split_once(" notin ") {
            Req::NotIn(own(k), set(rest))
        } else if !fields && let Some((k, rest)) = t.split_once(" in ") {
            Req::In(own(k), set(rest))
        } else if !fields && let Some(k) = t.strip_prefix('!') {
            Req::NotExists(own(k))
        } else if !fields && !t.contains(' ') {
            Req::Exists(own(t))
        } else {
            return Err(format!("unable to parse requirement: {t:?}"));
        });
    }
    Ok(out)
}

fn satisfies(reqs: &[Req], get: impl Fn(&str) -> Option<String>) -> bool {
    reqs.iter().all(|r| match r {
        Req::Eq(k, v) => get(k).as_deref().unwrap_or("") == v,
        Req::Ne(k, v) => get(k).as_deref().unwrap_or("") != v,
        Req::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
        Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
        Req::Exists(k) => get(k).is_some(),
        Req::NotExists(k) => get(k).is_none(),
    })
}

impl Filter {
    fn new(ns: Option<&str>, q: &HashMap<String, String>) -> Result<Self, String> {
        let sel =
            |name: &str, fields| parse_selector(q.get(name).map_or("", String::as_str), fields);
        Ok(Self {
            ns: ns.map(str::to_owned),
            labels: sel("labelSelector", false)?,
            fields: sel("fieldSelector", true)?,
        })
    }

    fn matches(&self, k: &Key, obj: &Value) -> bool {
        self.ns.as_ref().is_none_or(|ns| *ns == k.1)
            && satisfies(&self.labels, |l| {
                obj["metadata"]["labels"][l].as_str().map(str::to_owned)
            })
            && satisfies(&self.fields, |f| {
                obj.pointer(&format!("/{}", f.replace('.', "/")))
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
            })
    }
}

fn parse_query(q: &str) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(v) => {
                            out.push(v);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// HTTP

type Body = UnsyncBoxBody<Bytes, Infallible>;
type Resp = Response<Body>;

fn respond(code: u16, ctype: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

fn json_resp(code: u16, v: &Value) -> Resp {
    respond(code, "application/json", v.to_string())
}

fn status_obj(code: u16, reason: &str, message: &str, details: Value) -> Value {
    let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    if !details.is_null() {
        s["details"] = details;
    }
    s
}

fn status(code: u16, reason: &str, message: &str, details: Value) -> Resp {
    json_resp(code, &status_obj(code, reason, message, details))
}

fn not_found(kind: &str, name: &str) -> Resp {
    status(
        404,
        "NotFound",
        &format!("{kind} \"{name}\" not found"),
        json!({"name": name, "kind": kind}),
    )
}

async fn handle(inner: Arc<Inner>, req: hyper::Request<Incoming>) -> Result<Resp, Infallible> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let ctype = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = (!bytes.is_empty()).then(|| {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    });
    let q = parse_query(&query);
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    inner.with(|st| {
        st.requests.push(Request {
            method: method.clone(),
            path: path.clone(),
            query,
            body: body.clone(),
            watch,
            at: Instant::now(),
        })
    });
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let known = |k: &str| kind_of(k).is_some();
    Ok(match (method.as_str(), segs.as_slice()) {
        ("GET", ["version"]) => json_resp(
            200,
            &json!({"major": "1", "minor": "35",
            "gitVersion": "v1.35.0-fake", "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean", "buildDate": "2025-12-17T00:00:00Z", "goVersion": "go1.25.5",
            "compiler": "gc", "platform": "linux/amd64"}),
        ),
        ("GET", ["api", "v1", kind]) if known(kind) => collection(&inner, kind, None, &q, watch),
        ("GET", ["api", "v1", "namespaces", ns, kind]) if known(kind) => {
            collection(&inner, kind, Some(ns), &q, watch)
        }
        ("POST", ["api", "v1", "namespaces", ns, kind]) if known(kind) => {
            create(&inner, kind, ns, body)
        }
        ("GET", ["api", "v1", "namespaces", ns, kind, name]) if known(kind) => {
            match inner.with(|st| st.get(kind, ns, name)) {
                Some(obj) => json_resp(200, &obj),
                None => not_found(kind, name),
            }
        }
        ("DELETE", ["api", "v1", "namespaces", ns, kind, name]) if known(kind) => {
            let grace = q
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse().ok())
                .or_else(|| body.as_ref().and_then(|b| b["gracePeriodSeconds"].as_i64()));
            match inner.with(|st| st.delete(kind, ns, name, grace)) {
                Some(v) => json_resp(200, &v),
                None => not_found(kind, name),
            }
        }
        ("PATCH" | "PUT", ["api", "v1", "namespaces", ns, kind, name]) if known(kind) => {
            update(&inner, &method, &ctype, kind, ns, name, body)
        }
        ("GET", ["api", "v1", "namespaces", ns, "pods", name, "log"]) => logs(&inner, ns, name, &q),
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
            json!({}),
        ),
    })
}

/// Fills in what the API server (and its admission plugins) add to a new object.
fn admit(kind: &str, ns: &str, obj: &mut Value) {
    obj["apiVersion"] = "v1".into();
    obj["kind"] = kind_of(kind).unwrap_or("").into();
    let m = &mut obj["metadata"];
    m["namespace"] = ns.into();
    if m["uid"].is_null() {
        m["uid"] = uuid::Uuid::new_v4().to_string().into();
    }
    if m["creationTimestamp"].is_null() {
        m["creationTimestamp"] = now().into();
    }
    normalize(kind, obj);
}

/// Secrets: `stringData` merges into `data`. Claims: a default class, protection, Pending.
/// Pods: spec defaults, Pending.
fn normalize(kind: &str, obj: &mut Value) {
    match kind {
        "secrets" => {
            if let Some(Value::Object(sd)) =
                obj.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                for (k, v) in sd {
                    obj["data"][k] = b64(v.as_str().unwrap_or("").as_bytes());
                }
            }
            if obj["type"].is_null() {
                obj["type"] = "Opaque".into();
            }
        }
        "persistentvolumeclaims" => {
            if obj["spec"]["storageClassName"].is_null() {
                obj["spec"]["storageClassName"] = "standard".into();
            }
            if obj["spec"]["volumeMode"].is_null() {
                obj["spec"]["volumeMode"] = "Filesystem".into();
            }
            if obj["metadata"]["finalizers"].is_null() {
                obj["metadata"]["finalizers"] = json!(["kubernetes.io/pvc-protection"]);
            }
            if obj["status"].is_null() {
                obj["status"] = json!({"phase": "Pending"});
            }
        }
        _ => {
            let spec = &mut obj["spec"];
            for (field, default) in [
                ("restartPolicy", json!("Always")),
                ("terminationGracePeriodSeconds", json!(30)),
                ("dnsPolicy", json!("ClusterFirst")),
                ("schedulerName", json!("default-scheduler")),
                ("serviceAccountName", json!("default")),
            ] {
                if spec[field].is_null() {
                    spec[field] = default;
                }
            }
            if obj["status"].is_null() {
                obj["status"] = json!({"phase": "Pending", "qosClass": "Burstable"});
            }
        }
    }
}

fn invalid(kind: &str, name: &str, field: &str, message: &str) -> Resp {
    let k = kind_of(kind).unwrap_or("");
    status(
        422,
        "Invalid",
        &format!("{k} \"{name}\" is invalid: {field}: {message}"),
        json!({"name": name, "kind": k, "causes": [{"reason": "FieldValueRequired", "message": message, "field": field}]}),
    )
}

fn create(inner: &Arc<Inner>, kind: &str, ns: &str, body: Option<Value>) -> Resp {
    let Some(mut obj) = body.filter(Value::is_object) else {
        return status(
            400,
            "BadRequest",
            "the body of the request was not a JSON object",
            Value::Null,
        );
    };
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if let Some(other) = obj["metadata"]["namespace"].as_str()
        && other != ns
    {
        return status(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
            Value::Null,
        );
    }
    if obj["metadata"]["name"].as_str().unwrap_or("").is_empty()
        && let Some(prefix) = obj["metadata"]["generateName"].as_str()
    {
        let suffix: String = uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .chars()
            .take(5)
            .collect();
        obj["metadata"]["name"] = format!("{prefix}{suffix}").into();
    }
    let name = meta_str(&obj, "name").to_owned();
    if name.is_empty() {
        return invalid(
            kind,
            "",
            "metadata.name",
            "Required value: name or generateName is required",
        );
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        || name.len() > 253
    {
        return invalid(
            kind,
            &name,
            "metadata.name",
            "Invalid value: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
        );
    }
    if kind == "pods"
        && !obj["spec"]["containers"].as_array().is_some_and(|cs| {
            !cs.is_empty()
                && cs
                    .iter()
                    .all(|c| c["name"].is_string() && c["image"].is_string())
        })
    {
        return invalid(kind, &name, "spec.containers", "Required value");
    }
    for field in [
        "resourceVersion",
        "deletionTimestamp",
        "uid",
        "creationTimestamp",
    ] {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove(field);
        }
    }
    admit(kind, ns, &mut obj);
    let created = inner.with(|st| {
        if st.objects.contains_key(&key(kind, ns, &name)) {
            return None;
        }
        if kind == "persistentvolumeclaims" {
            st.next_dir += 1;
            let base = inner.root.join("pv").join(st.next_dir.to_string());
            let vol = base.join("vol");
            if mariadb::own_dir(&base, mariadb::TRAVERSE_ONLY_DIR, None).is_ok() && std::fs::create_dir(&vol).is_ok() {
                st.pvc_dirs.insert((ns.to_owned(), name.clone()), vol);
            }
        }
        let created = st.put(kind, ns, &name, obj, "ADDED");
        if kind == "persistentvolumeclaims" && created["spec"]["storageClassName"] != "missing" {
            // The binder: a volume of the requested size, bound at once.
            let mut bound = created.clone();
            bound["spec"]["volumeName"] = format!("pvc-{}", meta_str(&created, "uid")).into();
            bound["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = "yes".into();
            bound["status"] = json!({"phase": "Bound", "accessModes": created["spec"]["accessModes"],
                "capacity": {"storage": created["spec"]["resources"]["requests"]["storage"]}});
            st.put(kind, ns, &name, bound, "MODIFIED");
        }
        if kind == "pods" {
            let (tx, rx) = watch::channel(None);
            let uid = meta_str(&created, "uid").to_owned();
            st.pods.insert(uid.clone(), PodRun { stop: tx, pid: None, logs: Vec::new() });
            tokio::spawn(kubelet(inner.clone(), ns.to_owned(), name.clone(), uid, rx));
        }
        Some(created)
    });
    match created {
        Some(obj) => json_resp(201, &obj),
        None => status(
            409,
            "AlreadyExists",
            &format!("{kind} \"{name}\" already exists"),
            json!({"name": name, "kind": kind}),
        ),
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// PATCH (merge, strategic treated as merge, apply) and PUT (replace, optimistic concurrency).
fn update(
    inner: &Arc<Inner>,
    method: &str,
    ctype: &str,
    kind: &str,
    ns: &str,
    name: &str,
    body: Option<Value>,
) -> Resp {
    let Some(body) = body.filter(Value::is_object) else {
        return status(
            400,
            "BadRequest",
            "the body of the request was not a JSON object",
            Value::Null,
        );
    };
    if ctype.starts_with("application/json-patch") {
        return status(
            415,
            "UnsupportedMediaType",
            "the fake API server supports merge patches only",
            Value::Null,
        );
    }
    let Some(cur) = inner.with(|st| st.get(kind, ns, name)) else {
        if ctype.starts_with("application/apply-patch") {
            return create(inner, kind, ns, Some(body));
        }
        return not_found(kind, name);
    };
    let mut new = cur.clone();
    if method == "PUT" {
        let rv = body["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !rv.is_empty() && rv != meta_str(&cur, "resourceVersion") {
            return status(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {kind} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                ),
                json!({"name": name, "kind": kind}),
            );
        }
        new = body;
        new["status"] = cur["status"].clone();
    } else {
        merge(&mut new, &body);
    }
    for field in [
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "deletionTimestamp",
        "resourceVersion",
    ] {
        new["metadata"][field] = cur["metadata"][field].clone();
    }
    if let Some(m) = new["metadata"].as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    new["apiVersion"] = "v1".into();
    new["kind"] = kind_of(kind).unwrap_or("").into();
    normalize(kind, &mut new);
    if new == cur {
        return json_resp(200, &cur);
    }
    json_resp(
        200,
        &inner.with(|st| st.put(kind, ns, name, new, "MODIFIED")),
    )
}

fn collection(
    inner: &Arc<Inner>,
    kind: &str,
    ns: Option<&str>,
    q: &HashMap<String, String>,
    watch: bool,
) -> Resp {
    let filter = match Filter::new(ns, q) {
        Ok(f) => f,
        Err(e) => return status(400, "BadRequest", &e, Value::Null),
    };
    if watch {
        return start_watch(inner.clone(), kind, filter, q);
    }
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    inner.with(|st| {
        let (rv, after) = if let Some(token) = q.get("continue").filter(|t| !t.is_empty()) {
            let decoded = serde_json::from_value::<ByteString>(Value::String(token.clone()))
                .ok()
                .and_then(|b| serde_json::from_slice::<(u64, String, String)>(&b.0).ok());
            match decoded {
                Some((rv, ns, name)) if rv >= st.compacted_rv => (rv, Some((ns, name))),
                Some(_) => return status(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results.", Value::Null),
                None => return status(400, "BadRequest", "continue key is not valid", Value::Null),
            }
        } else if q.get("resourceVersionMatch").map(String::as_str) == Some("Exact") {
            match q.get("resourceVersion").and_then(|r| r.parse::<u64>().ok()) {
                Some(rv) if rv >= st.compacted_rv => (rv, None),
                _ => return status(410, "Expired", "too old resource version", Value::Null),
            }
        } else {
            (st.rv, None)
        };
        let snap = st.snapshot(kind, rv);
        let mut items = snap
            .iter()
            .filter(|(k, _)| after.as_ref().is_none_or(|(ns, name)| (&k.1, &k.2) > (ns, name)))
            .filter(|(k, v)| filter.matches(k, v));
        let page: Vec<(&Key, &Value)> = items.by_ref().take(limit.unwrap_or(usize::MAX)).collect();
        let remaining = items.count();
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if remaining > 0
            && let Some((k, _)) = page.last()
        {
            let token = serde_json::to_vec(&(rv, &k.1, &k.2)).unwrap_or_default();
            meta["continue"] = b64(&token);
            meta["remainingItemCount"] = remaining.into();
        }
        json_resp(200, &json!({"kind": format!("{}List", kind_of(kind).unwrap_or("")), "apiVersion": "v1",
            "metadata": meta, "items": page.into_iter().map(|(_, v)| v.clone()).collect::<Vec<_>>()}))
    })
}

fn event_line(typ: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": typ, "object": object})))
}

fn start_watch(inner: Arc<Inner>, kind: &str, filter: Filter, q: &HashMap<String, String>) -> Resp {
    let kind = kind.to_owned();
    let timeout = Duration::from_secs(
        q.get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1800),
    );
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let initial = q.get("sendInitialEvents").map(String::as_str) == Some("true");
    let from = q.get("resourceVersion").cloned().unwrap_or_default();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let mut changed = inner.changed.subscribe();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let bookmark = |rv: u64, end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            event_line(
                "BOOKMARK",
                &json!({"kind": kind_of(&kind), "apiVersion": "v1", "metadata": meta}),
            )
        };
        // The starting point: the current state as ADDED events, or a past resourceVersion.
        let (mut last, mut lines) = inner.with(|st| {
            if initial || from.is_empty() || from == "0" {
                let lines: Vec<Bytes> = st
                    .objects
                    .iter()
                    .filter(|(k, v)| k.0 == kind && filter.matches(k, v))
                    .map(|(_, v)| event_line("ADDED", v))
                    .collect();
                return (st.rv, lines);
            }
            match from.parse::<u64>() {
                Ok(rv) if rv >= st.compacted_rv => (rv, Vec::new()),
                Ok(rv) => (
                    u64::MAX,
                    vec![event_line(
                        "ERROR",
                        &status_obj(
                            410,
                            "Expired",
                            &format!("too old resource version: {rv} ({})", st.compacted_rv),
                            Value::Null,
                        ),
                    )],
                ),
                Err(_) => (
                    u64::MAX,
                    vec![event_line(
                        "ERROR",
                        &status_obj(
                            400,
                            "BadRequest",
                            &format!("invalid resource version: {from}"),
                            Value::Null,
                        ),
                    )],
                ),
            }
        });
        if initial && last != u64::MAX {
            lines.push(bookmark(last, true));
        }
        loop {
            for line in lines.drain(..) {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            if last == u64::MAX {
                return;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return;
            }
            let wait = (deadline - now).min(Duration::from_secs(1));
            match tokio::time::timeout(wait, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) if bookmarks && tokio::time::Instant::now() < deadline => {
                    lines.push(bookmark(last, false))
                }
                Err(_) => {}
            }
            let closed = inner.with(|st| {
                let start = st.events.partition_point(|e| e.rv <= last);
                for e in &st.events[start..] {
                    if e.key.0 == kind && filter.matches(&e.key, &e.object) {
                        lines.push(event_line(e.typ, &e.object));
                    }
                }
                last = last.max(st.rv);
                st.closed
            });
            if closed || tx.is_closed() {
                return;
            }
        }
    });
    let stream =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))));
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn logs(inner: &Arc<Inner>, ns: &str, name: &str, q: &HashMap<String, String>) -> Resp {
    let found = inner.with(|st| {
        let pod = st.get("pods", ns, name)?;
        let logs = st
            .pods
            .get(meta_str(&pod, "uid"))
            .map(|r| r.logs.clone())
            .unwrap_or_default();
        Some((pod, logs))
    });
    let Some((pod, logs)) = found else {
        return not_found("pods", name);
    };
    let first = pod["spec"]["containers"][0]["name"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let container = q.get("container").cloned().unwrap_or(first.clone());
    if container != first {
        return status(
            400,
            "BadRequest",
            &format!("container {container} is not valid for pod {name}"),
            Value::Null,
        );
    }
    let previous = matches!(q.get("previous").map(String::as_str), Some("true" | "1"));
    let file = if previous {
        logs.len().checked_sub(2)
    } else {
        logs.len().checked_sub(1)
    }
    .and_then(|i| logs.get(i));
    let Some(file) = file else {
        let msg = if previous {
            format!("previous terminated container \"{container}\" in pod \"{name}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
            )
        };
        return status(400, "BadRequest", &msg, Value::Null);
    };
    let text = String::from_utf8_lossy(&std::fs::read(file).unwrap_or_default()).into_owned();
    let text = match q.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
        Some(n) => mariadb::tail(&text, n) + "\n",
        None => text,
    };
    respond(200, "text/plain", text)
}

// ---------------------------------------------------------------------------------------------
// The kubelet

/// One pod the kubelet runs, by uid (a pod of the same name created later is another pod).
struct PodRef<'a> {
    inner: &'a Arc<Inner>,
    ns: &'a str,
    name: &'a str,
    uid: &'a str,
}

impl PodRef<'_> {
    fn get(&self) -> Option<Value> {
        self.inner
            .with(|st| st.get("pods", self.ns, self.name))
            .filter(|p| meta_str(p, "uid") == self.uid)
    }

    fn clear_pid(&self) {
        self.inner.with(|st| {
            if let Some(r) = st.pods.get_mut(self.uid) {
                r.pid = None;
            }
        })
    }

    /// Applies `f` to the pod and emits MODIFIED when it changed anything.
    fn update(&self, f: impl FnOnce(&mut Value)) {
        self.inner.with(|st| {
            let Some(cur) = st
                .get("pods", self.ns, self.name)
                .filter(|p| meta_str(p, "uid") == self.uid)
            else {
                return;
            };
            let mut new = cur.clone();
            f(&mut new);
            if new != cur {
                st.put("pods", self.ns, self.name, new, "MODIFIED");
            }
        })
    }
}

fn set_cond(pod: &mut Value, typ: &str, ok: bool, reason: Option<&str>, message: Option<&str>) {
    let st = if ok { "True" } else { "False" };
    let conds = &mut pod["status"]["conditions"];
    if !conds.is_array() {
        *conds = json!([]);
    }
    let mut c =
        json!({"type": typ, "status": st, "lastProbeTime": null, "lastTransitionTime": now()});
    if let Some(r) = reason {
        c["reason"] = r.into();
    }
    if let Some(m) = message {
        c["message"] = m.into();
    }
    let Some(arr) = conds.as_array_mut() else {
        return;
    };
    match arr.iter_mut().find(|o| o["type"] == typ) {
        Some(old) => {
            if old["status"] == st {
                c["lastTransitionTime"] = old["lastTransitionTime"].clone();
            }
            *old = c;
        }
        None => arr.push(c),
    }
}

/// The first container's status, created when missing.
fn cstatus(pod: &mut Value) -> &mut Value {
    let (name, image) = (
        pod["spec"]["containers"][0]["name"].clone(),
        pod["spec"]["containers"][0]["image"].clone(),
    );
    let list = &mut pod["status"]["containerStatuses"];
    if list.as_array().is_none_or(|a| a.is_empty()) {
        *list = json!([{"name": name, "image": image, "imageID": "", "ready": false, "started": false,
            "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]);
    }
    &mut list[0]
}

fn set_waiting(pod: &mut Value, reason: &str, message: Option<&str>) {
    let cs = cstatus(pod);
    cs["state"] = json!({"waiting": {"reason": reason}});
    if let Some(m) = message {
        cs["state"]["waiting"]["message"] = m.into();
    }
}

fn not_ready(pod: &mut Value) {
    let cname = pod["spec"]["containers"][0]["name"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let cs = cstatus(pod);
    cs["ready"] = false.into();
    cs["started"] = false.into();
    let msg = format!("containers with unready status: [{cname}]");
    set_cond(pod, "Ready", false, Some("ContainersNotReady"), Some(&msg));
    set_cond(
        pod,
        "ContainersReady",
        false,
        Some("ContainersNotReady"),
        Some(&msg),
    );
}

fn image_ok(image: &str) -> bool {
    let repo = image.split('@').next().unwrap_or(image);
    let repo = match repo.rfind(':') {
        Some(i) if !repo[i..].contains('/') => &repo[..i],
        _ => repo,
    };
    matches!(
        repo,
        "mariadb" | "library/mariadb" | "docker.io/library/mariadb"
    ) || repo.starts_with("registry.test/")
}

fn full_image_ref(image: &str) -> String {
    let first = image.split('/').next().unwrap_or("");
    let mut full = if !image.contains('/') {
        format!("docker.io/library/{image}")
    } else if !first.contains('.') && !first.contains(':') && first != "localhost" {
        format!("docker.io/{image}")
    } else {
        image.to_owned()
    };
    if !full.rsplit('/').next().unwrap_or("").contains(':') && !full.contains('@') {
        full.push_str(":latest");
    }
    full
}

/// Sleeps `d` unless a stop arrives; true when stopping.
async fn pause(stop: &mut StopRx, d: Duration) -> bool {
    let _ = tokio::time::timeout(d, stop.wait_for(|s| s.is_some())).await;
    stop.borrow().is_some()
}

/// True when `ip:port` sends a MySQL greeting (or an ERR packet).
async fn greets(ip: Ipv4Addr, port: u16) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect((ip, port)),
    )
    .await
    else {
        return false;
    };
    let mut head = [0u8; 5];
    matches!(tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut head)).await,
        Ok(Ok(_)) if head[4] == 0x0a || head[4] == 0xff)
}

/// What the official image's entrypoint does for an empty datadir: install, then root@localhost
/// and root@'%' with `password` and every privilege.
async fn init_datadir(datadir: &Path, password: &str, owner: Owner) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    mariadb::install_db(datadir, &mariadb::new_admin_password(), owner).await?;
    let tmp = mariadb::private_tmpdir(datadir, owner)?;
    let mut cmd = tokio::process::Command::new(mariadb::find_binary("mariadbd")?);
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("TMPDIR", &tmp)
        .current_dir(&tmp)
        .arg("--no-defaults")
        .arg("--bootstrap")
        .arg(format!("--datadir={}", datadir.display()))
        .arg("--skip-networking")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some((uid, gid)) = owner {
        cmd.uid(uid.as_raw()).gid(gid.as_raw());
    }
    let mut child = cmd.spawn().context("starting mariadbd --bootstrap")?;
    let pw = password.replace('\\', "\\\\").replace('\'', "\\'");
    let sql = format!(
        "UPDATE mysql.global_priv SET Priv = JSON_SET(Priv, '$.plugin', 'mysql_native_password', \
         '$.authentication_string', PASSWORD('{pw}')) WHERE User = 'root' AND Host = 'localhost';\n\
         INSERT INTO mysql.global_priv SELECT '%', User, Priv FROM mysql.global_priv \
         WHERE User = 'root' AND Host = 'localhost';\n"
    );
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(sql.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("ERROR") {
        bail!(
            "creating root@'%' failed ({}): {}",
            out.status,
            mariadb::tail(&stderr, 20)
        );
    }
    Ok(())
}

/// The kubelet's work for one pod, then the removal of the object as its stop asks.
async fn kubelet(inner: Arc<Inner>, ns: String, name: String, uid: String, mut stop: StopRx) {
    let p = PodRef {
        inner: &inner,
        ns: &ns,
        name: &name,
        uid: &uid,
    };
    run_pod(&p, &mut stop).await;
    let how = *stop.borrow();
    inner.with(|st| {
        if how != Some(Stop::Kill)
            && st
                .get("pods", &ns, &name)
                .is_some_and(|o| meta_str(&o, "uid") == uid)
        {
            st.remove("pods", &ns, &name);
        }
        st.pods.remove(&uid);
    });
}

/// The container's settings, resolved as a kubelet does (secrets, volumes); the error is a
/// `CreateContainerConfigError` message.
fn container_config(
    st: &State,
    ns: &str,
    pod: &Value,
) -> Result<(Option<String>, PathBuf), String> {
    let c = &pod["spec"]["containers"][0];
    let mut password = None;
    for e in c["env"].as_array().into_iter().flatten() {
        if !matches!(
            e["name"].as_str(),
            Some("MARIADB_ROOT_PASSWORD" | "MYSQL_ROOT_PASSWORD")
        ) {
            continue;
        }
        if let Some(v) = e["value"].as_str() {
            password = Some(v.to_owned());
        } else if let Some(sref) = e["valueFrom"]["secretKeyRef"].as_object() {
            let (sname, skey) = (
                sref["name"].as_str().unwrap_or(""),
                sref["key"].as_str().unwrap_or(""),
            );
            let secret = st
                .get("secrets", ns, sname)
                .ok_or_else(|| format!("secret \"{sname}\" not found"))?;
            let v = secret["data"][skey].clone();
            let bytes = serde_json::from_value::<ByteString>(v)
                .map_err(|_| format!("couldn't find key {skey} in Secret {ns}/{sname}"))?;
            password = Some(String::from_utf8_lossy(&bytes.0).into_owned());
        }
    }
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == "/var/lib/mysql");
    let volume = mount.and_then(|m| {
        pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == m["name"])
    });
    let datadir = match volume.and_then(|v| v["persistentVolumeClaim"]["claimName"].as_str()) {
        Some(claim) => st
            .pvc_dirs
            .get(&(ns.to_owned(), claim.to_owned()))
            .cloned()
            .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" not found"))?,
        // No claim: the container's own file system (an empty path here).
        None => PathBuf::new(),
    };
    Ok((password, datadir))
}

async fn run_pod(p: &PodRef<'_>, stop: &mut StopRx) {
    // The scheduler.
    loop {
        let verdict = p.inner.with(|st| {
            let pod = st
                .get("pods", p.ns, p.name)
                .filter(|o| meta_str(o, "uid") == p.uid)?;
            Some(st.unschedulable(p.ns, &pod))
        });
        match verdict {
            None => return,
            Some(None) => break,
            Some(Some(msg)) => p.update(|pod| {
                set_cond(
                    pod,
                    "PodScheduled",
                    false,
                    Some("Unschedulable"),
                    Some(&msg),
                )
            }),
        }
        if pause(stop, Duration::from_millis(300)).await {
            return;
        }
    }
    p.update(|pod| {
        pod["spec"]["nodeName"] = NODE_NAME.into();
        set_cond(pod, "PodScheduled", true, None, None);
    });
    let Some(pod) = p.get() else { return };
    let c = pod["spec"]["containers"][0].clone();
    let image = c["image"].as_str().unwrap_or("").to_owned();
    let cname = c["name"].as_str().unwrap_or("").to_owned();
    let port = c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "mysql")
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(3306);
    let ip = p.inner.with(|st| st.alloc_ip(p.inner.net, port));
    p.update(|pod| {
        let s = &mut pod["status"];
        s["hostIP"] = "127.0.0.1".into();
        s["hostIPs"] = json!([{"ip": "127.0.0.1"}]);
        s["podIP"] = ip.to_string().into();
        s["podIPs"] = json!([{"ip": ip.to_string()}]);
        s["startTime"] = now().into();
        set_cond(pod, "PodReadyToStartContainers", true, None, None);
        set_cond(pod, "Initialized", true, None, None);
        not_ready(pod);
        set_waiting(pod, "ContainerCreating", None);
    });
    // The image.
    if !image_ok(&image) {
        let full = full_image_ref(&image);
        let msg = format!(
            "failed to pull and unpack image \"{full}\": failed to resolve reference \"{full}\": {full}: not found"
        );
        p.update(|pod| {
            set_waiting(
                pod,
                "ErrImagePull",
                Some(&format!("rpc error: code = NotFound desc = {msg}")),
            )
        });
        if pause(stop, Duration::from_secs(1)).await {
            return;
        }
        p.update(|pod| {
            set_waiting(
                pod,
                "ImagePullBackOff",
                Some(&format!("Back-off pulling image \"{image}\"")),
            )
        });
        let _ = stop.wait_for(|s| s.is_some()).await;
        return;
    }
    // Secrets and volumes.
    let (password, datadir) = loop {
        let cfg = p.inner.with(|st| {
            st.get("pods", p.ns, p.name)
                .map(|pod| container_config(st, p.ns, &pod))
        });
        match cfg {
            None => return,
            Some(Ok(cfg)) => break cfg,
            Some(Err(msg)) => {
                p.update(|pod| set_waiting(pod, "CreateContainerConfigError", Some(&msg)))
            }
        }
        if pause(stop, Duration::from_millis(500)).await {
            return;
        }
    };
    let datadir = if datadir.as_os_str().is_empty() {
        let base = p.inner.root.join("pv").join(format!("pod-{}", p.uid));
        let _ = mariadb::own_dir(&base, mariadb::TRAVERSE_ONLY_DIR, None);
        base.join("vol")
    } else {
        datadir
    };
    let mut args: Vec<String> = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    if args
        .first()
        .is_some_and(|a| a == "mariadbd" || a == "mysqld")
    {
        args.remove(0);
    }
    args.push(format!("--bind-address={ip}"));
    args.push(format!("--port={port}"));
    let log_dir = p.inner.root.join("logs").join(p.uid);
    let _ = mariadb::own_dir(&log_dir, mariadb::PRIVATE_DIR, p.inner.owner);
    let mut restarts = 0u32;
    loop {
        let log = log_dir.join(format!("{restarts}.log"));
        p.inner.with(|st| {
            if let Some(r) = st.pods.get_mut(p.uid) {
                r.logs.push(log.clone());
            }
        });
        let started = now();
        let mut failure = None;
        if !datadir.join("mysql").is_dir() {
            let res = match &password {
                Some(pw) => init_datadir(&datadir, pw, p.inner.owner).await,
                None => Err(anyhow::anyhow!(
                    "[ERROR] [Entrypoint]: Database is uninitialized and password option is not specified\n\tYou need to specify one of MARIADB_ROOT_PASSWORD, MARIADB_ROOT_PASSWORD_HASH, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD and MARIADB_RANDOM_ROOT_PASSWORD"
                )),
            };
            failure = res.err();
        }
        let mut spec = ServerSpec::in_datadir(&datadir, port);
        if !spec.socket.starts_with(&datadir) {
            spec.socket = std::env::temp_dir()
                .join(format!("doze-kube-{}", &p.uid[..8]))
                .join("mariadbd.sock");
        }
        spec.error_log = log.clone();
        spec.extra_args = args.clone();
        let spawned = match failure {
            Some(e) => Some(Err(e)),
            None => p.inner.with(|st| {
                if st.closed || stop.borrow().is_some() {
                    return None;
                }
                let child = spec.spawn();
                if let Ok(c) = &child {
                    if let Some(r) = st.pods.get_mut(p.uid) {
                        r.pid = c.id().and_then(|id| i32::try_from(id).ok());
                    }
                    st.started_at
                        .insert((p.ns.to_owned(), p.name.to_owned()), Instant::now());
                }
                Some(child)
            }),
        };
        let code = match spawned {
            None => return,
            Some(Err(e)) => {
                let _ = std::fs::write(&log, format!("{e:#}\n"));
                1
            }
            Some(Ok(mut child)) => {
                let cid = format!("containerd://{}", uuid::Uuid::new_v4().simple());
                p.update(|pod| {
                    pod["status"]["phase"] = "Running".into();
                    let cs = cstatus(pod);
                    cs["state"] = json!({"running": {"startedAt": started}});
                    cs["started"] = true.into();
                    cs["containerID"] = cid.clone().into();
                    cs["imageID"] = "docker.io/library/mariadb@sha256:0000000000000000000000000000000000000000000000000000000000000000".into();
                });
                enum Ev {
                    Ready,
                    Exited(Option<std::process::ExitStatus>),
                    Stop,
                }
                // Every millisecond: the moment the server first greets is what benchmarks
                // measure the driver's overhead from (`container_ready_at`).
                let probe = async {
                    while !greets(ip, port).await {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                };
                tokio::pin!(probe);
                let mut ready = false;
                let exit = loop {
                    let ev = tokio::select! {
                        biased;
                        _ = stop.wait_for(|s| s.is_some()) => Ev::Stop,
                        s = child.wait() => Ev::Exited(s.ok()),
                        _ = &mut probe, if !ready => Ev::Ready,
                    };
                    match ev {
                        Ev::Ready => {
                            ready = true;
                            let at = Instant::now();
                            p.inner.with(|st| {
                                st.ready_at.insert((p.ns.to_owned(), p.name.to_owned()), at)
                            });
                            p.update(|pod| {
                                cstatus(pod)["ready"] = true.into();
                                set_cond(pod, "Ready", true, None, None);
                                set_cond(pod, "ContainersReady", true, None, None);
                            });
                        }
                        Ev::Exited(s) => break s,
                        Ev::Stop => {
                            let how = *stop.borrow();
                            match how {
                                Some(Stop::Graceful(g)) => {
                                    let _ = mariadb::stop_child(&mut child, Duration::from_secs(g))
                                        .await;
                                }
                                _ => {
                                    let _ = child.kill().await;
                                }
                            }
                            let status = child.try_wait().ok().flatten();
                            p.clear_pid();
                            if matches!(*stop.borrow(), Some(Stop::Graceful(_))) {
                                let code = exit_code(status);
                                p.update(|pod| {
                                    not_ready(pod);
                                    cstatus(pod)["state"] = json!({"terminated": {"exitCode": code,
                                        "reason": if code == 0 { "Completed" } else { "Error" },
                                        "startedAt": started, "finishedAt": now(), "containerID": cid}});
                                });
                            }
                            return;
                        }
                    }
                };
                p.clear_pid();
                exit_code(exit)
            }
        };
        // Crashed (or could not start): back off, then run it again.
        restarts += 1;
        let backoff = 1u64 << (restarts - 1).min(3);
        let (name, ns, uid) = (p.name, p.ns, p.uid);
        p.update(|pod| {
            not_ready(pod);
            let cs = cstatus(pod);
            cs["lastState"] = json!({"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": started, "finishedAt": now()}});
            cs["restartCount"] = restarts.into();
            set_waiting(pod, "CrashLoopBackOff", Some(&format!(
                "back-off {backoff}s restarting failed container={cname} pod={name}_{ns}({uid})")));
        });
        if pause(stop, Duration::from_secs(backoff)).await {
            return;
        }
    }
}

fn exit_code(status: Option<std::process::ExitStatus>) -> i32 {
    status.map_or(137, |s| {
        s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9))
    })
}

// ---------------------------------------------------------------------------------------------
// The handle

impl FakeCluster {
    /// Starts the API server on a free port of 127.0.0.1, with its root dir in a scratch dir.
    pub async fn start() -> anyhow::Result<FakeCluster> {
        use rand::Rng;
        let dir = crate::testkit::scratch_dir("doze-kube-")?;
        let root = dir.path().to_path_buf();
        for sub in ["pv", "logs"] {
            mariadb::own_dir(&root.join(sub), mariadb::TRAVERSE_ONLY_DIR, None)?;
        }
        let mut rng = rand::rng();
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
            root,
            owner: mariadb::mysql_owner()?,
            net: (rng.random_range(20..250), rng.random_range(0..=255)),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let accepting = inner.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let inner = accepting.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(inner.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let cluster = FakeCluster {
            inner,
            port,
            server,
            dir,
        };
        let url = cluster.url();
        std::fs::write(
            cluster.kubeconfig_path(),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: fake\n  user:\n    token: fake-token\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n"
            ),
        )?;
        Ok(cluster)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The cluster's root dir (claims' volumes under `pv/`, container logs under `logs/`).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A kubeconfig (one cluster, user, context; namespace `default`) in the root dir.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A client config for this server, default namespace `default`.
    pub fn kube_config(&self) -> kube::Config {
        let mut cfg = kube::Config::new(self.url().parse::<http::Uri>().unwrap_or_default());
        cfg.default_namespace = "default".to_owned();
        cfg
    }

    /// Every API request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.with(|st| st.requests.clone())
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.inner.with(|st| st.requests.clear())
    }

    /// The stored object (`kind` is the plural resource name: `pods`, `secrets`, ...).
    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.inner.with(|st| st.get(kind, ns, name))
    }

    /// Every stored object of `kind` in `ns`, by name.
    pub fn list(&self, kind: &str, ns: &str) -> Vec<Value> {
        self.inner.with(|st| {
            st.objects
                .iter()
                .filter(|(k, _)| k.0 == kind && k.1 == ns)
                .map(|(_, v)| v.clone())
                .collect()
        })
    }

    /// The directory of a claim's volume (what a pod mounts; mariadbd's datadir).
    pub fn pvc_dir(&self, ns: &str, name: &str) -> Option<PathBuf> {
        self.inner
            .with(|st| st.pvc_dirs.get(&(ns.to_owned(), name.to_owned())).cloned())
    }

    /// When the pod's mariadbd was last spawned.
    pub fn container_started_at(&self, ns: &str, pod: &str) -> Option<Instant> {
        self.inner
            .with(|st| st.started_at.get(&(ns.to_owned(), pod.to_owned())).copied())
    }

    /// When the pod's server first answered with a greeting (the kubelet's readiness probe,
    /// every millisecond here), for the latest start.
    pub fn container_ready_at(&self, ns: &str, pod: &str) -> Option<Instant> {
        self.inner
            .with(|st| st.ready_at.get(&(ns.to_owned(), pod.to_owned())).copied())
    }

    /// Deletes a pod as `kubectl delete pod` does: gracefully, with the pod's grace period.
    pub async fn delete_pod_externally(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        match self.inner.with(|st| st.delete("pods", ns, name, None)) {
            Some(_) => Ok(()),
            None => bail!("pod {ns}/{name} not found"),
        }
    }

    /// Loses the pod's node: SIGKILL, then the pod object goes (DELETED) with no graceful phase.
    /// Returns once the object is gone.
    pub async fn lose_pod(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        let uid = self.inner.with(|st| {
            let uid = meta_str(&st.get("pods", ns, name)?, "uid").to_owned();
            match st.pods.get(&uid) {
                Some(run) => {
                    run.stop.send_replace(Some(Stop::Lost));
                    if let Some(pid) = run.pid {
                        mariadb::signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                }
                None => {
                    st.remove("pods", ns, name);
                }
            }
            Some(uid)
        });
        let Some(uid) = uid else {
            bail!("pod {ns}/{name} not found")
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .get("pods", ns, name)
            .is_some_and(|p| meta_str(&p, "uid") == uid)
        {
            if Instant::now() > deadline {
                bail!("pod {ns}/{name} was not removed");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// SIGKILLs the pod's mariadbd, as a crash would: the kubelet restarts it after a back-off.
    /// False when it does not run.
    pub fn kill_container(&self, ns: &str, name: &str) -> bool {
        self.inner
            .with(|st| {
                let pod = st.get("pods", ns, name)?;
                let pid = st.pods.get(meta_str(&pod, "uid"))?.pid?;
                mariadb::signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
                Some(())
            })
            .is_some()
    }

    /// Stores an object as is (kind/apiVersion, namespace, uid and creationTimestamp filled in
    /// when missing; a new resourceVersion; an ADDED or MODIFIED event). The kubelet never runs
    /// pods inserted this way, and deleting them removes them at once.
    pub async fn insert_raw(&self, kind: &str, ns: &str, mut object: Value) {
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        object["apiVersion"] = "v1".into();
        object["kind"] = kind_of(kind).unwrap_or("").into();
        object["metadata"]["namespace"] = ns.into();
        for (field, value) in [
            ("uid", uuid::Uuid::new_v4().to_string()),
            ("creationTimestamp", now()),
        ] {
            if object["metadata"][field].is_null() {
                object["metadata"][field] = value.into();
            }
        }
        let name = meta_str(&object, "name").to_owned();
        self.inner.with(|st| {
            let typ = if st.get(kind, ns, &name).is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            st.put(kind, ns, &name, object, typ);
        });
    }

    /// Drops the event history: a watch from any resourceVersion older than now gets a
    /// 410 Gone (`Expired`) ERROR event, as after an etcd compaction.
    pub fn compact_history(&self) {
        self.inner.with(|st| {
            st.base = st.objects.clone();
            st.compacted_rv = st.rv;
            st.events.clear();
        })
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.server.abort();
        let pids: Vec<i32> = self.inner.with(|st| {
            st.closed = true;
            for run in st.pods.values() {
                run.stop.send_replace(Some(Stop::Kill));
            }
            st.pods.values().filter_map(|r| r.pid).collect()
        });
        self.inner.changed.send_modify(|_| {});
        for pid in pids {
            mariadb::signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
        }
        crate::testkit::kill_mariadbd_under(self.dir.path());
    }
}
