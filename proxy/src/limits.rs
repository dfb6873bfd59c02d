//! Connection budgets. A connection holds a **login slot** from accept until it has
//! authenticated, then trades it for a **session slot**:
//!
//! - login slots are limited overall (`max_pending_logins`), and once half of them are taken,
//!   per client address too (`max_pending_logins_per_ip`): a flood of silent or slow sockets
//!   from a few addresses fills at most about half the login slots, the other addresses keep
//!   the rest, and no login slot is ever a session slot of a client that proved a password.
//!   Below half, one address may take more than its share: an application server's pool
//!   reconnecting 500 clients at once is one address, and no attack;
//! - session slots are the `max_connections` limit, and each project's sessions are limited
//!   too (`max_connections_per_project`). Both can change while serving (SIGHUP with a
//!   `--config` file): a lower limit refuses new sessions until enough have ended, and never
//!   cuts an open one.
//!
//! Each slot is a guard that gives itself back when dropped, whatever ends the connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a login slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every login slot is taken.
    Overall,
    /// This address holds its share of login slots.
    ThisAddress,
}

/// The budgets of one proxy.
pub struct Limits {
    logins: Arc<Semaphore>,
    /// Free login slots at or below which the per-address share applies (half the budget).
    pressure_at: usize,
    per_ip: usize,
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Sessions open now, and the most allowed (a counter, not a semaphore, so that the
    /// limit can change while sessions hold slots).
    open_sessions: Arc<AtomicUsize>,
    max_sessions: AtomicUsize,
    /// Sessions per project (0 = no limit).
    per_project: AtomicU64,
}

impl Limits {
    pub fn new(max_pending_logins: usize, per_ip: usize, max_sessions: usize) -> Self {
        Self {
            logins: Arc::new(Semaphore::new(max_pending_logins)),
            pressure_at: max_pending_logins / 2,
            per_ip: per_ip.max(1),
            by_ip: Arc::default(),
            open_sessions: Arc::default(),
            max_sessions: AtomicUsize::new(max_sessions),
            per_project: AtomicU64::new(0),
        }
    }

    /// The budgets of a proxy configured with `cfg`.
    pub fn for_config(cfg: &crate::config::ProxyConfig) -> Self {
        let limits = Self::new(
            cfg.max_pending_logins,
            cfg.max_pending_logins_per_ip,
            cfg.max_connections,
        );
        limits.set_per_project(cfg.max_connections_per_project);
        limits
    }

    /// Changes the most sessions open at once; sessions over a lowered limit stay open.
    pub fn set_max_sessions(&self, max: usize) {
        self.max_sessions.store(max, Ordering::Relaxed);
    }

    /// Changes the most sessions one project may have open (0 = no limit).
    pub fn set_per_project(&self, max: u64) {
        self.per_project.store(max, Ordering::Relaxed);
    }

    /// The most sessions one project may have open (0 = no limit).
    pub fn per_project(&self) -> u64 {
        self.per_project.load(Ordering::Relaxed)
    }

    /// A login slot for a connection from `ip`.
    pub fn login_slot(&self, ip: IpAddr) -> Result<LoginSlot, Refused> {
        let ip = crate::throttle::address_key(ip);
        {
            let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
            let held = by_ip.entry(ip).or_insert(0);
            let under_pressure = self.logins.available_permits() <= self.pressure_at;
            if under_pressure && *held >= self.per_ip {
                return Err(Refused::ThisAddress);
            }
            *held += 1;
        }
        let address = AddressShare {
            ip,
            by_ip: Arc::clone(&self.by_ip),
        };
        let permit = Arc::clone(&self.logins)
            .try_acquire_owned()
            .map_err(|_| Refused::Overall)?;
        Ok(LoginSlot {
            _permit: permit,
            _address: address,
        })
    }

    /// A session slot, or `None` when `max_connections` sessions are open.
    pub fn session_slot(&self) -> Option<SessionSlot> {
        let max = self.max_sessions.load(Ordering::Relaxed);
        if self.open_sessions.fetch_add(1, Ordering::AcqRel) >= max {
            self.open_sessions.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(SessionSlot {
            open: Arc::clone(&self.open_sessions),
        })
    }

    /// Login slots held by `ip` now (for tests and logs).
    pub fn pending_from(&self, ip: IpAddr) -> usize {
        let ip = crate::throttle::address_key(ip);
        let by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        by_ip.get(&ip).copied().unwrap_or(0)
    }
}

/// A held session slot.
pub struct SessionSlot {
    open: Arc<AtomicUsize>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A held login slot.
pub struct LoginSlot {
    _permit: OwnedSemaphorePermit,
    _address: AddressShare,
}

/// One unit of an address's share; removes the address from the map at zero.
struct AddressShare {
    ip: IpAddr,
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for AddressShare {
    fn drop(&mut self) {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = by_ip.get_mut(&self.ip) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_pressure_an_address_fills_only_its_share() {
        let limits = Limits::new(10, 2, 5);
        let a: IpAddr = "127.0.0.2".parse().expect("ip");
        let b: IpAddr = "127.0.0.3".parse().expect("ip");
        // Below half the budget, one address may take more than its share (a pool's herd).
        let mut held: Vec<LoginSlot> = (0..5)
            .map(|_| limits.login_slot(a).expect("no pressure yet"))
            .collect();
        assert_eq!(limits.login_slot(a).err(), Some(Refused::ThisAddress));
        assert_eq!(limits.pending_from(a), 5);
        let other = limits.login_slot(b).expect("another address is unaffected");
        drop(other);
        held.truncate(3);
        assert_eq!(limits.pending_from(a), 3);
        let _again = limits.login_slot(a).expect("below half again");
    }

    #[test]
    fn overall_budget_and_refusal_leave_no_trace() {
        let limits = Limits::new(1, 5, 5);
        // With a budget of one, the first slot is taken before any pressure.
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let _held = limits.login_slot(a).expect("first");
        assert_eq!(limits.login_slot(b).err(), Some(Refused::Overall));
        assert_eq!(limits.pending_from(b), 0, "a refused slot is given back");
    }

    #[test]
    fn sessions_are_counted_apart() {
        let limits = Limits::new(1, 1, 1);
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let _login = limits.login_slot(ip).expect("login");
        let session = limits.session_slot().expect("session");
        assert!(limits.session_slot().is_none());
        drop(session);
        assert!(limits.session_slot().is_some());
    }

    #[test]
    fn session_limits_change_while_serving_without_cutting_sessions() {
        let limits = Limits::new(10, 5, 2);
        let a = limits.session_slot().expect("first");
        let b = limits.session_slot().expect("second");
        assert!(limits.session_slot().is_none(), "at the limit");
        limits.set_max_sessions(1);
        drop(a);
        assert!(
            limits.session_slot().is_none(),
            "still one open, the new limit"
        );
        limits.set_max_sessions(3);
        let c = limits.session_slot().expect("raised");
        let _d = limits.session_slot().expect("raised");
        assert!(limits.session_slot().is_none());
        drop((b, c));
        assert_eq!(limits.per_project(), 0);
        limits.set_per_project(7);
        assert_eq!(limits.per_project(), 7);
    }
}
