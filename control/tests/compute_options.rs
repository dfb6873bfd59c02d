//! Every value `config.mariadb_options` accepts at create also starts a real mariadbd.
//!
//! A value doze accepts but MariaDB refuses is found only at the compute's first start, as a
//! 503 to the client that woke it: the create should have said no. So each allowed option is
//! tried at the ends of its range (every number at its minimum in one start and its maximum in
//! another), and every character set, each with one of its collations, every enum value, every
//! SQL mode (half of them at once, then one by one) and the time zone offsets at both limits rotate
//! through further starts. All starts reuse one data directory, as a compute's restarts do.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use doze_control::driver::mariadb::{self, ServerSpec};
use doze_control::driver::options::{self, ALLOWED, OptionType};
use doze_control::testkit::scratch_dir;
use serde_json::{Map, Value, json};

const TIME_ZONES: &[&str] = &["SYSTEM", "+13:00", "-12:59", "+00:00"];

/// The value of a non-character-set option in start `round`; `None` leaves it out.
fn sample(kind: OptionType, round: usize) -> Option<Value> {
    let ends = |min: Value, max: Value| match round {
        0 => Some(min),
        1 => Some(max),
        _ => None,
    };
    match kind {
        OptionType::Int { min, max } => ends(json!(min), json!(max)),
        OptionType::Size { min, max } => ends(json!(min), json!(max)),
        OptionType::Float { min, max } => ends(json!(min), json!(max)),
        OptionType::Bool => Some(json!(round.is_multiple_of(2))),
        OptionType::Enum(values) => Some(json!(values[round % values.len()])),
        OptionType::SqlMode => {
            let modes = options::sql_modes();
            // All of them at once is longer than the 512 bytes doze takes: half in each of
            // the first two starts.
            let half = modes.len() / 2;
            Some(json!(match round {
                0 => modes[..half].join(","),
                1 => modes[half..].join(","),
                _ => modes[round % modes.len()].to_owned(),
            }))
        }
        OptionType::TimeZone => Some(json!(TIME_ZONES[round % TIME_ZONES.len()])),
        OptionType::Charset | OptionType::Collation => None,
    }
}

/// `config.mariadb_options` of start `round`.
fn options_of_round(round: usize) -> Value {
    let mut opts = Map::new();
    for (name, kind) in ALLOWED {
        if let Some(v) = sample(*kind, round) {
            opts.insert((*name).to_owned(), v);
        }
    }
    let charsets = options::charsets();
    let charset = charsets[round % charsets.len()];
    let canonical = if charset == "utf8" {
        "utf8mb3"
    } else {
        charset
    };
    let collations = options::collations_of(canonical);
    assert!(!collations.is_empty(), "no collation of {charset}");
    opts.insert("character_set_server".into(), json!(charset));
    opts.insert(
        "collation_server".into(),
        json!(collations[round % collations.len()]),
    );
    json!({ "mariadb_options": opts })
}

fn rounds() -> usize {
    let enums = ALLOWED
        .iter()
        .filter_map(|(_, kind)| match kind {
            OptionType::Enum(values) => Some(values.len()),
            _ => None,
        })
        .max()
        .unwrap_or(1);
    [
        options::charsets().len(),
        options::sql_modes().len(),
        enums,
        TIME_ZONES.len(),
    ]
    .into_iter()
    .max()
    .unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_option_value_starts_mariadbd() {
    let dir = scratch_dir("doze-options-").unwrap();
    let datadir = dir.path().join("data");
    let owner = mariadb::mysql_owner().unwrap();
    mariadb::install_db(&datadir, &mariadb::new_admin_password(), owner)
        .await
        .unwrap();
    let mut refused = Vec::new();
    let rounds = rounds();
    for round in 0..rounds {
        let config = options_of_round(round);
        let args = options::server_args(&config)
            .unwrap_or_else(|e| panic!("doze refuses its own sample {config}: {e}"));
        let port = mariadb::free_port().unwrap();
        let mut spec = ServerSpec::in_datadir(&datadir, port);
        spec.extra_args = args.clone();
        let mut child = spec.spawn().unwrap();
        let started =
            mariadb::wait_for_greeting(port, &mut child, &spec.error_log, Duration::from_secs(120))
                .await;
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
        let _ = child.kill().await;
        if let Err(e) = started {
            refused.push(format!("start {round} with {args:?}: {e:#}"));
        }
    }
    assert!(
        refused.is_empty(),
        "{} of {rounds} starts failed with options doze accepts:\n{}",
        refused.len(),
        refused.join("\n")
    );
}
