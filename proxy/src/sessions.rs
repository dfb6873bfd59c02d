//! Which backend session serves which client: what a KILL needs to find its target and to
//! check, right before it is sent, that the target still serves that client (a session that
//! went back to the pool serves someone else and is never killed for the old client).
//!
//! One short lock when a session starts and ends, and per KILL; never per packet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::auth::Credentials;

/// A relayed session as a KILL sees it.
#[derive(Clone)]
pub struct Entry {
    pub project_id: String,
    pub user: String,
    /// The compute's address and MariaDB's id of the backend session.
    pub address: String,
    pub thread_id: u32,
    pub credentials: Credentials,
    /// KILLs of this session being carried out.
    pub kills: Arc<std::sync::atomic::AtomicU32>,
}

/// Every session relaying now, by doze connection id.
#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<u32, Entry>>,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records session `id` until the guard is dropped. An id still in use (the counter
    /// wrapped past a session older than 16 million connections) keeps its first session;
    /// the new one is then not found by that id.
    pub fn register(self: &Arc<Self>, id: u32, entry: Entry) -> Registered {
        let owned = match self.lock().entry(id) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(entry);
                true
            }
            std::collections::hash_map::Entry::Occupied(_) => false,
        };
        Registered {
            registry: Arc::clone(self),
            id,
            owned,
        }
    }

    /// The session `id` names, if it is a session of `project_id` and `user`: either a doze
    /// connection id, or the thread id of a backend session serving one of their clients now.
    pub fn find(&self, project_id: &str, user: &str, id: u64) -> Option<(u32, Entry)> {
        let map = self.lock();
        let mine = |e: &Entry| e.project_id == project_id && e.user == user;
        if let Ok(doze_id) = u32::try_from(id)
            && let Some(e) = map.get(&doze_id)
            && crate::accept::is_doze_id(doze_id)
        {
            return mine(e).then(|| (doze_id, e.clone()));
        }
        let thread_id = u32::try_from(id).ok()?;
        map.iter()
            .find(|(_, e)| e.thread_id == thread_id && mine(e))
            .map(|(k, e)| (*k, e.clone()))
    }

    /// Whether session `id` is still served by backend thread `thread_id` at `address`.
    pub fn still_serves(&self, id: u32, address: &str, thread_id: u32) -> bool {
        self.lock()
            .get(&id)
            .is_some_and(|e| e.thread_id == thread_id && e.address == address)
    }
}

/// Keeps a session findable; dropping it removes it.
pub struct Registered {
    registry: Arc<Registry>,
    id: u32,
    owned: bool,
}

impl Registered {
    /// The session now runs as `user` (a COM_CHANGE_USER succeeded): KILLs are checked
    /// against its new user, as MariaDB checks them.
    pub fn set_user(&self, user: &str, credentials: &Credentials) {
        if !self.owned {
            return;
        }
        if let Some(e) = self.registry.lock().get_mut(&self.id) {
            e.user = user.to_owned();
            e.credentials = credentials.clone();
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if self.owned {
            self.registry.lock().remove(&self.id);
        }
    }
}
