//! Usage metering: how long each project's compute ran and how long it sat frozen, per hour or
//! day, computed from the compute event log.
//!
//! The event log already records every state change with its time, under the same
//! transaction as the change itself, so metering needs no counter of its own that could drift
//! from it: a compute is metered as running from the event that made it `starting` (the
//! process exists and uses CPU) until the event that made it `suspended` or `failed`, and as
//! frozen while `frozen`. Several replicas write one log, so no interval is counted twice. A
//! compute's events outlive the compute (deleting it keeps them), so a project's usage covers
//! computes it no longer has; deleting the project deletes its usage with it.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::store::{ComputeEvent, UsageCount};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// At most this many rows per project in one answer (a year by the hour is 8,784).
pub const MAX_BUCKETS: i64 = 10_000;

/// At most this many rows in one answer, all projects together.
pub const MAX_ROWS: usize = 100_000;

/// How usage is summed over time: per UTC hour, per UTC day, or one row for the whole range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
    Total,
}

impl Granularity {
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Total => "total",
        }
    }

    /// The bucket length; `None` for one bucket over the whole range.
    fn step(self) -> Option<i64> {
        match self {
            Granularity::Hour => Some(HOUR_MS),
            Granularity::Day => Some(DAY_MS),
            Granularity::Total => None,
        }
    }
}

impl FromStr for Granularity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hour" => Ok(Granularity::Hour),
            "day" => Ok(Granularity::Day),
            "total" => Ok(Granularity::Total),
            other => Err(format!(
                "granularity must be hour, day or total, not {other:?}"
            )),
        }
    }
}

/// One project's usage over `[start, end)` (milliseconds since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub project_id: String,
    pub start: i64,
    pub end: i64,
    /// Time a compute process existed and was not frozen: starting, running or suspending.
    pub running_ms: i64,
    pub frozen_ms: i64,
    /// Client sessions doze authenticated and opened for the project.
    pub connections: i64,
    /// Bytes relayed from clients to the compute, and back.
    pub bytes_in: i64,
    pub bytes_out: i64,
}

/// What a compute in `state` is metered as.
enum Metered {
    Running,
    Frozen,
    Nothing,
}

fn metered(state: &str) -> Metered {
    match state {
        "starting" | "running" | "suspending" => Metered::Running,
        "frozen" => Metered::Frozen,
        _ => Metered::Nothing,
    }
}

/// The buckets of `[from, to)`: aligned to UTC hours or days (the first and last cut to the
/// range), or the range itself. Fails when there would be more than [`MAX_BUCKETS`].
pub fn buckets(from: i64, to: i64, granularity: Granularity) -> Result<Vec<(i64, i64)>, String> {
    if from >= to {
        return Err("from must be before to".into());
    }
    let Some(step) = granularity.step() else {
        return Ok(vec![(from, to)]);
    };
    let first = from.div_euclid(step) * step;
    let count = (to - first + step - 1) / step;
    if count > MAX_BUCKETS {
        return Err(format!(
            "{count} rows of one {} each: at most {MAX_BUCKETS}; ask for a shorter range or a coarser granularity",
            granularity.as_str()
        ));
    }
    Ok((0..count)
        .map(|i| {
            let start = first + i * step;
            (start.max(from), (start + step).min(to))
        })
        .collect())
}

/// Usage of every project in `projects`, one row per bucket of `[from, to)`, from `events`
/// (oldest first; the events of other projects are ignored) and the proxy's hourly `counts`
/// (`(hour start, count)`; an hour that starts before `from` goes to the first row). `now` ends
/// the state of each compute's last event: nothing is metered past it.
pub fn meter(
    events: &[ComputeEvent],
    counts: &[(i64, UsageCount)],
    projects: &[String],
    from: i64,
    to: i64,
    now: i64,
    granularity: Granularity,
) -> Result<Vec<Usage>, String> {
    let buckets = buckets(from, to, granularity)?;
    if buckets.len().saturating_mul(projects.len()) > MAX_ROWS {
        return Err(format!(
            "{} projects x {} rows: at most {MAX_ROWS} rows in one answer; ask for a shorter range, a coarser granularity or one project",
            projects.len(),
            buckets.len()
        ));
    }
    let mut rows: BTreeMap<&str, Vec<Usage>> = projects
        .iter()
        .map(|p| {
            let rows = buckets
                .iter()
                .map(|&(start, end)| Usage {
                    project_id: p.clone(),
                    start,
                    end,
                    running_ms: 0,
                    frozen_ms: 0,
                    connections: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                })
                .collect();
            (p.as_str(), rows)
        })
        .collect();
    // Each compute's events in order: the state an event entered lasts until the next event.
    let mut by_compute: BTreeMap<(&str, &str), Vec<&ComputeEvent>> = BTreeMap::new();
    for e in events {
        if rows.contains_key(e.project_id.as_str()) {
            by_compute
                .entry((e.project_id.as_str(), e.compute_id.as_str()))
                .or_default()
                .push(e);
        }
    }
    for ((project, _), list) in by_compute {
        let Some(project_rows) = rows.get_mut(project) else {
            continue;
        };
        for (i, e) in list.iter().enumerate() {
            let until = list.get(i + 1).map_or(now, |next| next.at).min(now);
            add_interval(project_rows, metered(&e.to_state), e.at, until);
        }
    }
    for (hour, count) in counts {
        let Some(project_rows) = rows.get_mut(count.project_id.as_str()) else {
            continue;
        };
        let at = (*hour).max(from);
        if let Some(row) = project_rows
            .iter_mut()
            .find(|r| r.start <= at && at < r.end)
        {
            row.connections += count.connections;
            row.bytes_in += count.bytes_in;
            row.bytes_out += count.bytes_out;
        }
    }
    Ok(rows.into_values().flatten().collect())
}

/// The start of the UTC hour holding `ms`: counts are kept per hour.
pub fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// Adds `[start, end)` in state `what` to the rows it overlaps.
fn add_interval(rows: &mut [Usage], what: Metered, start: i64, end: i64) {
    if matches!(what, Metered::Nothing) || start >= end {
        return;
    }
    for row in rows.iter_mut() {
        let overlap = end.min(row.end) - start.max(row.start);
        if overlap <= 0 {
            continue;
        }
        match what {
            Metered::Running => row.running_ms += overlap,
            Metered::Frozen => row.frozen_ms += overlap,
            Metered::Nothing => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event(compute: &str, to_state: &str, at: i64) -> ComputeEvent {
        ComputeEvent {
            compute_id: compute.into(),
            project_id: "p".into(),
            from_state: String::new(),
            to_state: to_state.into(),
            reason: String::new(),
            at,
        }
    }

    fn p() -> Vec<String> {
        vec!["p".to_owned()]
    }

    #[test]
    fn running_and_frozen_intervals_split_over_hours() {
        let h = HOUR_MS;
        let events = [
            event("c", "starting", h / 2),
            event("c", "running", h / 2 + 1_000),
            event("c", "frozen", h + h / 4),
            event("c", "running", h + h / 2),
            event("c", "suspending", 2 * h + 10_000),
            event("c", "suspended", 2 * h + 11_000),
        ];
        let rows = meter(&events, &[], &p(), 0, 3 * h, 10 * h, Granularity::Hour).unwrap();
        let got: Vec<(i64, i64)> = rows.iter().map(|r| (r.running_ms, r.frozen_ms)).collect();
        assert_eq!(
            got,
            [(h / 2, 0), (3 * h / 4, h / 4), (11_000, 0)],
            "{rows:?}"
        );
        let total = meter(&events, &[], &p(), 0, 3 * h, 10 * h, Granularity::Total).unwrap();
        assert_eq!(total.len(), 1);
        assert_eq!(total[0].running_ms, h / 2 + 3 * h / 4 + 11_000);
    }

    #[test]
    fn an_open_state_ends_at_now_and_two_computes_add_up() {
        let events = [
            event("old", "starting", 0),
            event("old", "running", 100),
            event("old", "suspended", 1_000),
            event("new", "starting", 2_000),
            event("new", "running", 2_100),
        ];
        let rows = meter(&events, &[], &p(), 0, 10_000, 5_000, Granularity::Total).unwrap();
        assert_eq!(rows[0].running_ms, 1_000 + 3_000);
        // A range that starts inside a state counts only its part.
        let rows = meter(&events, &[], &p(), 500, 10_000, 5_000, Granularity::Total).unwrap();
        assert_eq!(rows[0].running_ms, 500 + 3_000);
    }

    #[test]
    fn buckets_align_to_utc_and_are_bounded() {
        let b = buckets(HOUR_MS / 2, 2 * HOUR_MS, Granularity::Hour).unwrap();
        assert_eq!(b, [(HOUR_MS / 2, HOUR_MS), (HOUR_MS, 2 * HOUR_MS)]);
        assert!(buckets(5, 5, Granularity::Day).is_err());
        assert!(buckets(0, (MAX_BUCKETS + 1) * HOUR_MS, Granularity::Hour).is_err());
        assert!(buckets(0, (MAX_BUCKETS + 1) * HOUR_MS, Granularity::Day).is_ok());
        assert!("week".parse::<Granularity>().is_err());
    }

    #[test]
    fn hourly_counts_land_in_their_rows() {
        let count = |project: &str, n: i64| UsageCount {
            project_id: project.into(),
            connections: n,
            bytes_in: 10 * n,
            bytes_out: 100 * n,
        };
        let h = HOUR_MS;
        let counts = [
            (0, count("p", 1)),
            (h, count("p", 2)),
            (h, count("q", 4)),
            (2 * h, count("p", 8)),
        ];
        let rows = meter(&[], &counts, &p(), h / 2, 2 * h, 3 * h, Granularity::Hour).unwrap();
        // The hour before `from` goes to the first row; the hour at `to` is outside.
        let got: Vec<(i64, i64, i64)> = rows
            .iter()
            .map(|r| (r.connections, r.bytes_in, r.bytes_out))
            .collect();
        assert_eq!(got, [(1, 10, 100), (2, 20, 200)]);
        assert_eq!(hour_of(h + 5), h);
        assert_eq!(hour_of(-1), -h);
    }

    #[test]
    fn other_projects_events_are_ignored() {
        let mut e = event("c", "running", 0);
        e.project_id = "q".into();
        let rows = meter(&[e], &[], &p(), 0, 1_000, 1_000, Granularity::Total).unwrap();
        assert_eq!(rows[0].running_ms, 0);
    }
}
