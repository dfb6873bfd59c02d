//! Usage metering through `doze serve`: seconds a project's compute ran and sat frozen, over
//! scripted wake/suspend/freeze cycles, bounded by what the test itself timed; the same figures
//! after a kill -9 and a restart of doze, and after the compute is deleted; CSV that Python's
//! csv module reads; the `doze usage` command.
#![allow(clippy::unwrap_used)]

mod binary;

use std::process::Command;
use std::time::{Duration, SystemTime};

use binary::{Doze, TOKEN, api};
use doze_control::testkit::scratch_dir;
use serde_json::Value;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

/// `GET path` with `Accept: text/csv`, through curl: the body.
fn csv(port: u16, path: &str) -> String {
    let mut curl = Command::new("curl");
    curl.args(["-fsS", "-H", "Accept: text/csv", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .arg(format!("http://127.0.0.1:{port}{path}"));
    stdout_of(curl)
}

/// Runs `cmd`, which must succeed: its stdout.
fn stdout_of(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One total row of `project` over `[from, to)`: (running, frozen) seconds.
fn total(doze: &Doze, project: &str, from: i64, to: i64) -> (f64, f64) {
    let (status, body) = api(
        doze.admin,
        "GET",
        &format!(
            "/api/v1/projects/{project}/usage?granularity=total&from={}&to={}",
            rfc3339(from),
            rfc3339(to)
        ),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let rows = body["usage"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{body}");
    (
        rows[0]["running_seconds"].as_f64().unwrap(),
        rows[0]["frozen_seconds"].as_f64().unwrap(),
    )
}

async fn connect(doze: &Doze, project: &str) {
    mysql_async::Conn::new(doze.opts(project))
        .await
        .unwrap()
        .disconnect()
        .await
        .unwrap();
}

/// Suspends (`mode`), asking again (for up to 15 s) while a closing connection still counts
/// as a session.
async fn suspend(doze: &Doze, compute: &str, mode: &str) {
    let mut last = Value::Null;
    for _ in 0..500 {
        let (status, body) = api(
            doze.admin,
            "POST",
            &format!("/api/v1/compute/{compute}/suspend?mode={mode}"),
            None,
        );
        if status == 200 {
            return;
        }
        assert_eq!(status, 409, "{body}");
        last = body;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    panic!("the compute could not be suspended ({mode}): {last}");
}

fn serve(dir: &std::path::Path) -> Doze {
    Doze::serve(&[
        format!("--data-dir={}", dir.join("data").display()),
        format!("--db-dsn=sqlite://{}/state.db", dir.display()),
        "--freezer=signal".to_owned(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_follows_the_compute_through_cycles_restarts_and_deletion() {
    let dir = scratch_dir("doze-usage-").unwrap();
    let mut doze = serve(dir.path());
    let (project, compute) = doze.project("metered", serde_json::json!({}), serde_json::json!({}));
    let begin = now_ms();

    // Three wake/stop cycles of about a second each, then a freeze of about a second. Each
    // interval is bounded from outside (from before the wake to after the suspend answered) and
    // from inside (from after the wake answered to before the suspend was asked for).
    let (mut running_max, mut running_min) = (0i64, 0i64);
    for _ in 0..3 {
        let outer = now_ms();
        connect(&doze, "metered").await;
        let inner = now_ms();
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let inner_end = now_ms();
        suspend(&doze, &compute, "stop").await;
        running_max += now_ms() - outer;
        running_min += inner_end - inner;
    }
    let outer = now_ms();
    connect(&doze, "metered").await;
    let inner = now_ms();
    suspend(&doze, &compute, "freeze").await;
    let frozen_outer = now_ms();
    let running_before_freeze = (frozen_outer - outer, 0);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let thaw_asked = now_ms();
    connect(&doze, "metered").await;
    let thawed = now_ms();
    suspend(&doze, &compute, "stop").await;
    let end = now_ms();
    running_max += running_before_freeze.0 + (end - thaw_asked);
    running_min += running_before_freeze.1;
    let (frozen_min, frozen_max) = (thaw_asked - frozen_outer, thawed - inner);

    let (running, frozen) = total(&doze, &project, begin, end + 1);
    let running_ms = (running * 1000.0) as i64;
    let frozen_ms = (frozen * 1000.0) as i64;
    assert!(
        running_min <= running_ms && running_ms <= running_max,
        "running {running_ms} ms, timed between {running_min} and {running_max}"
    );
    assert!(
        frozen_min <= frozen_ms && frozen_ms <= frozen_max,
        "frozen {frozen_ms} ms, timed between {frozen_min} and {frozen_max}"
    );

    // By the hour the same seconds, split over the hours the range touches.
    let (status, hourly) = api(
        doze.admin,
        "GET",
        &format!(
            "/api/v1/projects/metered/usage?granularity=hour&from={}&to={}",
            rfc3339(begin),
            rfc3339(end + 1)
        ),
        None,
    );
    assert_eq!(status, 200, "{hourly}");
    let rows = hourly["usage"].as_array().unwrap();
    let sum: f64 = rows
        .iter()
        .map(|r| r["running_seconds"].as_f64().unwrap())
        .sum();
    assert!((sum - running).abs() < 0.01, "{hourly}");
    assert!(rows.iter().all(|r| r["project"] == "metered"));

    // CSV, read by Python's csv module, carries the same figures.
    let text = csv(
        doze.admin,
        &format!(
            "/api/v1/usage?granularity=total&from={}&to={}",
            rfc3339(begin),
            rfc3339(end + 1)
        ),
    );
    let parsed = Command::new("python3")
        .arg("-c")
        .arg(
            "import csv, io, json, sys\n\
             rows = list(csv.DictReader(io.StringIO(sys.stdin.read())))\n\
             print(json.dumps(rows))",
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let rows: Value = serde_json::from_slice(&parsed.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["project"] == "metered")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(row["project_id"], project.as_str());
    let csv_running: f64 = row["running_seconds"].as_str().unwrap().parse().unwrap();
    assert!((csv_running - running).abs() < 0.002, "{text}");

    // The CLI: JSON and CSV.
    let cli = |args: &[&str]| {
        let mut doze_usage = Command::new(binary::doze());
        doze_usage
            .arg("usage")
            .args(args)
            .arg("--admin")
            .arg(format!("http://127.0.0.1:{}", doze.admin))
            .env("DOZE_ADMIN_TOKEN", TOKEN);
        stdout_of(doze_usage)
    };
    let from = rfc3339(begin);
    let to = rfc3339(end + 1);
    let json: Value = serde_json::from_str(&cli(&[
        "metered",
        "--granularity",
        "total",
        "--from",
        &from,
        "--to",
        &to,
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(json["usage"][0]["running_seconds"].as_f64(), Some(running));
    let text = cli(&["metered", "--from", &from, "--to", &to, "-o", "csv"]);
    assert!(text.starts_with(
        "project_id,project,start,end,running_seconds,frozen_seconds,connections,bytes_in,bytes_out"
    ));

    // What the proxy counted: the 5 sessions above, and bytes both ways (a login and a quit at
    // least). Counts are kept per hour, so the range reaches past the current hour.
    let (status, counted) = api(
        doze.admin,
        "GET",
        &format!(
            "/api/v1/projects/metered/usage?granularity=total&from={}&to={}",
            rfc3339(begin),
            rfc3339(end + 7_200_000)
        ),
        None,
    );
    assert_eq!(status, 200, "{counted}");
    let row = &counted["usage"][0];
    assert_eq!(row["connections"], 5, "{counted}");
    assert!(row["bytes_in"].as_i64().unwrap() > 50, "{counted}");
    assert!(row["bytes_out"].as_i64().unwrap() > 50, "{counted}");
    let table = cli(&["--granularity", "total", "--from", &from, "--to", &to]);
    assert!(
        table.contains("RUNNING_SECONDS") && table.contains("metered"),
        "{table}"
    );

    // kill -9, then a new doze on the same state: the past is metered the same.
    connect(&doze, "metered").await;
    doze.kill9();
    let doze = serve(dir.path());
    assert_eq!(total(&doze, &project, begin, end + 1), (running, frozen));
    // Deleting the compute keeps its usage.
    suspend(&doze, &compute, "stop").await;
    let (status, body) = api(
        doze.admin,
        "DELETE",
        &format!("/api/v1/compute/{compute}"),
        None,
    );
    assert_eq!(status, 204, "{body}");
    assert_eq!(total(&doze, &project, begin, end + 1), (running, frozen));

    // Refusals name what is wrong.
    for (query, needle) in [
        ("granularity=week", "granularity"),
        ("from=yesterday", "from"),
        ("from=2026-11-02&to=2026-11-01", "before"),
        ("granularity=hour&from=2000-01-01&to=2026-01-01", "at most"),
    ] {
        let (status, body) = api(
            doze.admin,
            "GET",
            &format!("/api/v1/projects/metered/usage?{query}"),
            None,
        );
        assert_eq!(status, 422, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{query}: {message}");
    }
    assert_eq!(
        api(doze.admin, "GET", "/api/v1/projects/nope/usage", None).0,
        404
    );
}
