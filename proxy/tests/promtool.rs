//! `promtool check metrics` on what a busy `doze serve` exposes: every metric family passes
//! Prometheus's own lint (names, units, help texts, counter suffixes). Needs promtool, which
//! .ci/install-deps fetches into target/tools.
#![allow(clippy::unwrap_used)]

mod binary;

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use binary::Doze;
use doze_control::testkit::scratch_dir;

fn promtool() -> String {
    let local = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/tools/promtool");
    if std::path::Path::new(local).exists() {
        return local.to_owned();
    }
    "promtool".to_owned()
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_pass_promtool_check_metrics() {
    let dir = scratch_dir("doze-promtool-").unwrap();
    let doze = Doze::serve(&[
        format!("--data-dir={}", dir.path().join("data").display()),
        format!("--db-dsn=sqlite://{}/state.db", dir.path().display()),
    ]);
    // Exercise every part: a wake (start), a session, a refused login, a freeze and a thaw.
    let (_, compute) = doze.project("scraped", serde_json::json!({}), serde_json::json!({}));
    let conn = mysql_async::Conn::new(doze.opts("scraped")).await.unwrap();
    conn.disconnect().await.unwrap();
    let bad = doze.opts("scraped").pass(Some("wrong"));
    assert!(mysql_async::Conn::new(bad).await.is_err());
    let mut frozen = false;
    for _ in 0..100 {
        let (status, _) = binary::api(
            doze.admin,
            "POST",
            &format!("/api/v1/compute/{compute}/suspend?mode=freeze"),
            None,
        );
        if status == 200 {
            frozen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(frozen);
    let conn = mysql_async::Conn::new(doze.opts("scraped")).await.unwrap();
    conn.disconnect().await.unwrap();

    let text = scrape(doze.admin);
    for family in [
        "doze_build_info",
        "doze_log_lines_dropped_total",
        "doze_wake_duration_seconds",
        "doze_thaw_duration_seconds",
        "doze_freezes_total",
        "doze_compute_starts_total",
        "doze_proxy_connections_accepted_total",
        "doze_proxy_auth_failures_total",
        "doze_pool_checkouts_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(text.contains(family), "{family} missing from:\n{text}");
    }
    let mut check = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool ({}): {e}; run .ci/install-deps", promtool()));
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
    drop(doze);
    doze_control::testkit::kill_mariadbd_under(dir.path());
}
