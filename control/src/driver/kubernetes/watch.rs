//! One watch on doze's pods (label `app.kubernetes.io/managed-by=doze`), kept in a reflector
//! cache: liveness checks, adoption after a restart and the wait for a starting pod are cache
//! reads, and startup costs one paginated LIST whatever the number of computes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector as reflect};
use tokio::sync::{Notify, watch};

use super::objects::MANAGED_SELECTOR;
use super::status;

/// The pods doze manages, as the watch last saw them.
pub struct PodCache {
    store: Store<Pod>,
    namespace: String,
    /// Bumped after every event: starts and stops wait on it instead of polling.
    changes: watch::Sender<u64>,
    /// Signalled when a pod disappears (deleted, evicted, lost with its node, or dropped by a
    /// re-list): the lifecycle then looks for computes whose pod is gone.
    lost: Arc<Notify>,
    /// The node each pod last ran on (kept after the pod is gone: the next start prefers it).
    nodes: Mutex<HashMap<String, String>>,
    last_error: Mutex<Option<String>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PodCache {
    /// Starts the watch and returns once its first LIST is in the cache, or fails after
    /// `timeout` with the API's last error.
    pub async fn start(
        api: Api<Pod>,
        namespace: &str,
        timeout: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let (store, writer) = reflector::store::<Pod>();
        let (changes, _) = watch::channel(0u64);
        let cache = Arc::new(PodCache {
            store,
            namespace: namespace.to_owned(),
            changes,
            lost: Arc::new(Notify::new()),
            nodes: Mutex::new(HashMap::new()),
            last_error: Mutex::new(None),
            task: Mutex::new(None),
        });
        let weak = Arc::downgrade(&cache);
        let events = watcher::watcher(api, watcher::Config::default().labels(MANAGED_SELECTOR))
            .default_backoff();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(reflect(writer, events));
            while let Some(event) = events.next().await {
                let Some(cache) = weak.upgrade() else { break };
                cache.observe(event);
            }
        });
        *cache.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        if tokio::time::timeout(timeout, cache.store.wait_until_ready())
            .await
            .is_err()
        {
            let why = cache.last_error().unwrap_or_else(|| "no answer".to_owned());
            anyhow::bail!(
                "listing doze's pods in namespace '{namespace}' did not finish within {timeout:?}: {why}"
            );
        }
        Ok(cache)
    }

    fn observe(&self, event: Result<Event<Pod>, watcher::Error>) {
        match event {
            Ok(Event::Apply(pod)) => {
                self.remember_node(&pod);
                // Evicted (phase Failed) or being deleted (`kubectl delete`, a drain): the
                // compute is going away now, not when the pod object finally goes.
                if !status::is_live(&pod) {
                    self.lost.notify_one();
                }
            }
            Ok(Event::InitApply(pod)) => self.remember_node(&pod),
            Ok(Event::Delete(pod)) => {
                self.remember_node(&pod);
                self.lost.notify_one();
            }
            // A re-list replaced the cache: pods deleted while the watch was down left it
            // without a Delete event.
            Ok(Event::InitDone) => self.lost.notify_one(),
            Ok(Event::Init) => {}
            Err(e) => {
                tracing::warn!(error = %e, "watching doze's pods failed; retrying");
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                return;
            }
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn remember_node(&self, pod: &Pod) {
        if let (Some(name), Some(node)) = (pod.metadata.name.as_ref(), status::node_of(pod)) {
            self.nodes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.clone(), node.to_owned());
        }
    }

    /// The pod of that name, as last seen.
    pub fn get(&self, name: &str) -> Option<Arc<Pod>> {
        self.store
            .get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// Every pod in the cache.
    pub fn all(&self) -> Vec<Arc<Pod>> {
        self.store.state()
    }

    /// A receiver that wakes at the next event (subscribe before acting, then wait).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn lost_notices(&self) -> Arc<Notify> {
        Arc::clone(&self.lost)
    }

    pub fn last_node(&self, name: &str) -> Option<String> {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn forget(&self, name: &str) {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits for the next event, at most until `deadline`. `false` when the deadline passed.
    pub async fn changed(
        rx: &mut watch::Receiver<u64>,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<bool> {
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(r) => r.context("the pod watch stopped").map(|()| true),
            Err(_) => Ok(false),
        }
    }
}

impl Drop for PodCache {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}
