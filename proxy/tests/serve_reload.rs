//! SIGHUP: doze keeps running (it used to die without a drain) and swaps in a renewed TLS
//! certificate; a broken renewal keeps the old one. Checked with `openssl s_client -starttls
//! mysql`, another TLS implementation than doze's.
#![allow(clippy::unwrap_used)]

mod binary;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use binary::{Doze, api};
use doze_control::testkit::scratch_dir;

/// A self-signed certificate for `name`, written to `dir/cert.pem` and `dir/key.pem`.
fn write_cert(dir: &Path, name: &str) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), c.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), c.signing_key.serialize_pem()).unwrap();
}

/// The subject of the certificate the proxy presents, as openssl reads it.
fn presented_subject(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -starttls mysql -connect 127.0.0.1:{port} </dev/null 2>/dev/null \
             | openssl x509 -noout -subject -ext subjectAltName"
        ))
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn hup(doze: &Doze) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(doze.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_serving() {
    let dir = scratch_dir("doze-reload-").unwrap();
    write_cert(dir.path(), "first.doze.test");
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, "").unwrap();
    let mut doze = Doze::serve(&[
        format!("--routes={}", routes.display()),
        format!("--tls-cert={}", dir.path().join("cert.pem").display()),
        format!("--tls-key={}", dir.path().join("key.pem").display()),
    ]);
    assert!(presented_subject(doze.proxy).contains("first.doze.test"));

    write_cert(dir.path(), "second.doze.test");
    hup(&doze);
    let mut seen = String::new();
    for _ in 0..50 {
        seen = presented_subject(doze.proxy);
        if seen.contains("second.doze.test") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen.contains("second.doze.test"), "after SIGHUP: {seen}");
    assert!(
        doze.child.try_wait().unwrap().is_none(),
        "doze survived SIGHUP"
    );

    // A renewal caught half-written: the reload fails and the current pair stays.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    hup(&doze);
    std::thread::sleep(Duration::from_millis(300));
    assert!(doze.child.try_wait().unwrap().is_none(), "still running");
    assert!(presented_subject(doze.proxy).contains("second.doze.test"));
    assert_eq!(api(doze.admin, "GET", "/healthz", None).0, 200);
}
