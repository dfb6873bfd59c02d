//! Back-off after failed logins, per role and per client address: delayed answers, never
//! lockouts.
//!
//! A lockout would let anyone who knows a role's name lock its real users out. Instead, once a
//! role or an address has failed [`FREE_FAILURES`] times in a row, every further login for it
//! waits before its password is checked, right or wrong (answering a right password at once
//! would tell a guesser which guess was right without waiting). The wait doubles with each
//! failure from [`Backoff::base`] up to [`Backoff::max`]:
//!
//! - **per role** (project, user): each attempt waits the role's current delay. Attempts are not
//!   queued behind each other, so a real user from another address waits at most `max`;
//! - **per client address**: answers are spaced at least the address's delay apart, so opening
//!   many connections at once from one address gains an attacker nothing (and costs only that
//!   address).
//!
//! A success resets both. Entries are forgotten after [`FORGET_AFTER`] without an attempt,
//! and at most [`CAPACITY`] of each kind are kept, so memory is bounded whatever the traffic.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics;

/// Failures in a row that cost nothing (typos happen).
pub const FREE_FAILURES: u32 = 3;
/// How long an idle entry is remembered.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Entries kept per kind (roles, addresses).
pub const CAPACITY: u64 = 100_000;

/// The delay schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure beyond the free ones.
    pub base: Duration,
    /// Upper bound of one delay; zero turns the back-off off.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// The delay after `failures` failures in a row.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures < FREE_FAILURES || self.max.is_zero() {
            return Duration::ZERO;
        }
        let doublings = (failures - FREE_FAILURES).min(30);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }
}

#[derive(Default)]
struct Entry {
    failures: u32,
    /// When the last answer given to this address is due (address entries only).
    last_answer: Option<Instant>,
}

type Shared = Arc<Mutex<Entry>>;

/// The failure records of one proxy.
pub struct Throttle {
    backoff: Backoff,
    /// When the last failure was recorded (ms since `created`; 0 = never). While no failure
    /// is younger than [`FORGET_AFTER`], no record can exist, and a login costs no lookup at
    /// all: the common case of a front door that sees no guessing.
    last_failure_ms: AtomicU64,
    created: Instant,
    roles: moka::sync::Cache<(String, String), Shared>,
    addresses: moka::sync::Cache<IpAddr, Shared>,
}

/// Who is logging in.
#[derive(Clone, Copy)]
pub struct Attempt<'a> {
    pub ip: IpAddr,
    pub project_id: &'a str,
    pub user: &'a str,
}

impl Throttle {
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            last_failure_ms: AtomicU64::new(0),
            created: Instant::now(),
            roles: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(FORGET_AFTER)
                .build(),
            addresses: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(FORGET_AFTER)
                .build(),
        }
    }

    /// How long this attempt must wait before its password is checked. Reserves the address's
    /// next answer slot, so concurrent attempts from one address are spaced out.
    pub fn wait_before_check(&self, attempt: Attempt<'_>) -> Duration {
        if self.backoff.max.is_zero() || !self.may_have_records() {
            return Duration::ZERO;
        }
        let role_wait = self
            .roles
            .get(&role_key(attempt))
            .map(|e| self.backoff.delay(lock(&e).failures))
            .unwrap_or_default();
        let address_wait = self.reserve_answer(attempt.ip);
        let wait = role_wait.max(address_wait);
        if !wait.is_zero() {
            metrics::auth_throttled();
        }
        wait
    }

    /// How long the answer to a login naming an unknown project waits: the address's delay
    /// (see [`Throttle::failed_address`]).
    pub fn wait_for_address(&self, ip: IpAddr) -> Duration {
        if self.backoff.max.is_zero() || !self.may_have_records() {
            return Duration::ZERO;
        }
        let wait = self.reserve_answer(ip);
        if !wait.is_zero() {
            metrics::auth_throttled();
        }
        wait
    }

    /// The address's next answer slot: spaced by its delay after the last answer, but never
    /// queued further out than one maximum delay (attempts an attacker abandoned must not push
    /// the real user of a shared address, behind NAT or a load balancer, past the handshake
    /// timeout).
    fn reserve_answer(&self, ip: IpAddr) -> Duration {
        let Some(entry) = self.addresses.get(&address_key(ip)) else {
            return Duration::ZERO;
        };
        let mut entry = lock(&entry);
        let delay = self.backoff.delay(entry.failures);
        if delay.is_zero() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let after = entry
            .last_answer
            .map_or(now, |t| t.max(now))
            .min(now + self.backoff.max);
        let answer_at = after + delay;
        entry.last_answer = Some(answer_at);
        answer_at - now
    }

    /// False when no failure was recorded within [`FORGET_AFTER`]: every record has expired.
    fn may_have_records(&self) -> bool {
        let last = self.last_failure_ms.load(Ordering::Relaxed);
        last != 0 && self.elapsed_ms().saturating_sub(last) <= FORGET_AFTER.as_millis() as u64
    }

    fn elapsed_ms(&self) -> u64 {
        (self.created.elapsed().as_millis() as u64).max(1)
    }

    fn note_failure(&self) {
        self.last_failure_ms
            .store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// Records a wrong password (or an unknown role, which must look the same).
    pub fn failed(&self, attempt: Attempt<'_>) {
        self.note_failure();
        for entry in [
            self.roles.get_with(role_key(attempt), Shared::default),
            self.addresses
                .get_with(address_key(attempt.ip), Shared::default),
        ] {
            let mut e = lock(&entry);
            e.failures = e.failures.saturating_add(1);
        }
    }

    /// Records a login naming a project that does not exist: counted against the address
    /// only (there is no role), so probing project names slows down like guessing passwords.
    pub fn failed_address(&self, ip: IpAddr) {
        self.note_failure();
        let entry = self.addresses.get_with(address_key(ip), Shared::default);
        let mut e = lock(&entry);
        e.failures = e.failures.saturating_add(1);
    }

    /// Records a right password: the role starts afresh, and the address is forgiven the
    /// free failures (a user who mistyped and then got it right), not more: otherwise a guesser
    /// could clear its address's record by logging in to a project of its own in between.
    pub fn succeeded(&self, attempt: Attempt<'_>) {
        if !self.may_have_records() {
            return;
        }
        self.roles.invalidate(&role_key(attempt));
        if let Some(entry) = self.addresses.get(&address_key(attempt.ip)) {
            let mut e = lock(&entry);
            e.failures = e.failures.saturating_sub(FREE_FAILURES);
        }
    }
}

/// The address an attempt is counted under: IPv4 as it is, IPv6 by its /64 (one subscriber
/// usually holds a whole /64, so counting single addresses would give it 2^64 fresh starts).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
        v4 => v4,
    }
}

fn role_key(attempt: Attempt<'_>) -> (String, String) {
    (attempt.project_id.to_owned(), attempt.user.to_owned())
}

fn lock(entry: &Shared) -> std::sync::MutexGuard<'_, Entry> {
    entry.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(ip: [u8; 4]) -> Attempt<'static> {
        Attempt {
            ip: IpAddr::from(ip),
            project_id: "p1",
            user: "app",
        }
    }

    #[test]
    fn schedule_doubles_up_to_max_after_free_failures() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(75),
        };
        let delays: Vec<u128> = (0..8).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![0, 0, 0, 10, 20, 40, 75, 75]);
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(75));
        let off = Backoff {
            base: Duration::from_millis(10),
            max: Duration::ZERO,
        };
        assert_eq!(off.delay(100), Duration::ZERO);
    }

    #[test]
    fn role_delay_applies_from_any_address_and_resets_on_success() {
        let t = Throttle::new(Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(40),
        });
        for _ in 0..6 {
            t.failed(attempt([127, 0, 0, 1]));
        }
        let elsewhere = attempt([127, 0, 0, 2]);
        assert_eq!(t.wait_before_check(elsewhere), Duration::from_millis(40));
        t.succeeded(elsewhere);
        assert_eq!(t.wait_before_check(elsewhere), Duration::ZERO);
    }

    #[test]
    fn concurrent_attempts_from_one_address_are_spaced_out() {
        let t = Throttle::new(Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(100),
        });
        let a = attempt([127, 0, 0, 9]);
        for _ in 0..FREE_FAILURES {
            t.failed(Attempt { user: "x", ..a });
        }
        let waits: Vec<Duration> = (0..3).map(|_| t.wait_before_check(a)).collect();
        assert!(waits[0] >= Duration::from_millis(90), "{waits:?}");
        assert!(waits[1] >= Duration::from_millis(190), "{waits:?}");
        // Never queued further than one maximum delay past the next free slot.
        assert!(waits[2] <= Duration::from_millis(200), "{waits:?}");
        let many: Vec<Duration> = (0..1000).map(|_| t.wait_before_check(a)).collect();
        assert!(
            many.iter().all(|w| *w <= Duration::from_millis(200)),
            "a lockout"
        );
    }

    #[test]
    fn ipv6_is_counted_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().expect("ip");
        assert_eq!(
            address_key(mapped),
            "127.0.0.2".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn a_success_elsewhere_forgives_only_the_free_failures() {
        let t = Throttle::new(Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(10),
        });
        let guess = attempt([127, 0, 0, 7]);
        for _ in 0..10 {
            t.failed(guess);
        }
        t.succeeded(Attempt {
            project_id: "mine",
            ..guess
        });
        let other_role = Attempt {
            user: "other",
            ..guess
        };
        assert!(t.wait_before_check(other_role) > Duration::ZERO);
    }
}
