//! Log injection (issue 7): a name a client sends can neither forge a log line nor make one
//! huge. Its own test binary, because it installs the process-wide log subscriber.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use doze_proxy::ProxyConfig;

/// Collects everything logged, as the `doze` binary formats it (no ANSI codes).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_names_stay_inside_one_escaped_log_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .init();
    let db = backend().await;
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), ProxyConfig::default()).await;
    let forged = "app\nFORGED 2026-11-27T00:00:00Z INFO conn{id=9}: session started";
    let err = connect(proxy.addr, &format!("shop.{forged}"), None)
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1045), "{err}");
    let long = format!("shop.{}", "y".repeat(60_000));
    connect(proxy.addr, &long, None).await.unwrap_err();
    // A real session still logs normally.
    let c = connect(proxy.addr, "shop.app", None).await.unwrap();
    c.disconnect().await.unwrap();
    proxy.stop().await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let with_forgery: Vec<&&str> = lines.iter().filter(|l| l.contains("FORGED")).collect();
    assert!(
        !with_forgery.is_empty(),
        "the refusal was not logged:\n{text}"
    );
    for line in &with_forgery {
        assert!(line.contains("app\\nFORGED"), "not escaped: {line}");
        assert!(!line.starts_with("FORGED"), "forged line: {line}");
    }
    let longest = lines.iter().map(|l| l.len()).max().unwrap_or(0);
    assert!(longest < 2_000, "a log line of {longest} bytes");
    assert!(text.contains("…(60000 bytes)"), "{text}");
    assert!(text.contains("session started"));
}
