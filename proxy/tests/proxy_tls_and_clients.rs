//! TLS (rustls on SSLRequest), SNI routing, --require-tls, and clients that start with
//! caching_sha2_password — against a real mariadbd with real clients.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;
use doze_proxy::ProxyConfig;
use mysql_async::SslOpts;
use mysql_async::prelude::*;

/// A self-signed certificate for `*.db.doze.test` written into `dir`; returns the TLS config.
fn tls_config(dir: &Path) -> std::sync::Arc<rustls::ServerConfig> {
    let certified = rcgen::generate_simple_self_signed(vec![
        "*.db.doze.test".to_owned(),
        "localhost".to_owned(),
    ])
    .unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    doze_proxy::tls::server_config(&cert, &key).unwrap()
}

fn insecure_tls() -> SslOpts {
    SslOpts::default().with_danger_accept_invalid_certs(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_sni_routing_and_require_tls() {
    let db = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = ProxyConfig {
        tls: Some(tls_config(dir.path())),
        require_tls: true,
        sni_suffix: Some("db.doze.test".to_owned()),
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), cfg).await;

    // TLS, routed by user name.
    let o = opts(proxy.addr, "shop.app", PASSWORD, Some("testdb")).ssl_opts(insecure_tls());
    let mut conn = mysql_async::Conn::new(o).await.unwrap();
    let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.as_deref(), Some("app@%"));
    // A 5 MiB round trip through TLS.
    let big = "x".repeat(5 * 1024 * 1024);
    let len: Option<i64> = conn.exec_first("SELECT LENGTH(?)", (big,)).await.unwrap();
    assert_eq!(len, Some(5 * 1024 * 1024));
    conn.disconnect().await.unwrap();

    // TLS, routed by SNI only: the user name carries no project.
    let sni = insecure_tls().with_danger_tls_hostname_override(Some("shop.db.doze.test"));
    let o = opts(proxy.addr, "app", PASSWORD, Some("testdb")).ssl_opts(sni);
    let mut conn = mysql_async::Conn::new(o).await.unwrap();
    let dbname: Option<String> = conn.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(dbname.as_deref(), Some("testdb"));
    conn.disconnect().await.unwrap();

    // The mariadb command-line client over TLS.
    let out = mariadb_cli(
        proxy.addr,
        "shop.app",
        PASSWORD,
        &[
            "--ssl",
            "--skip-ssl-verify-server-cert",
            "-e",
            "SELECT 'tls ok'",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "tls ok");

    // A plain client is refused with an error that says what to do.
    let err = connect(proxy.addr, "shop.app", None).await.unwrap_err();
    assert_eq!(server_code(&err), Some(3159), "{err}");
    assert!(err.to_string().contains("must use TLS"), "{err}");
    let out = mariadb_cli(
        proxy.addr,
        "shop.app",
        PASSWORD,
        &["--skip-ssl", "-e", "SELECT 1"],
    )
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("must use TLS"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_optional_without_require_tls() {
    let db = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = ProxyConfig {
        tls: Some(tls_config(dir.path())),
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), cfg).await;
    let mut plain = connect(proxy.addr, "shop.app", None).await.unwrap();
    let mut tls = mysql_async::Conn::new(
        opts(proxy.addr, "shop.app", PASSWORD, None).ssl_opts(insecure_tls()),
    )
    .await
    .unwrap();
    let a: Option<i64> = plain.query_first("SELECT 1").await.unwrap();
    let b: Option<i64> = tls.query_first("SELECT 2").await.unwrap();
    assert_eq!((a, b), (Some(1), Some(2)));
}

/// mysql-connector-python (pure Python) told to start with caching_sha2_password, as MySQL 8
/// connectors do: doze switches it to mysql_native_password and it logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_sha2_client_is_switched_to_native_password() {
    let db = backend().await;
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), ProxyConfig::default()).await;
    let script = format!(
        r#"
import mysql.connector
def run(password):
    c = mysql.connector.connect(host="127.0.0.1", port={port}, user="shop.app", password=password,
                                auth_plugin="caching_sha2_password", use_pure=True, ssl_disabled=True)
    cur = c.cursor()
    cur.execute("SELECT CURRENT_USER()")
    row = cur.fetchone()
    c.close()
    return row[0]
print(run("{pw}"))
try:
    run("wrong")
    print("wrong password accepted")
except mysql.connector.Error as e:
    print("refused", e.errno)
"#,
        port = proxy.addr.port(),
        pw = PASSWORD
    );
    assert_eq!(python_client(&script).await, "app@%\nrefused 1045");
}

/// PyMySQL: a third independent client, following the greeting's plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymysql_client() {
    let db = backend().await;
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), ProxyConfig::default()).await;
    let script = format!(
        r#"
import pymysql
c = pymysql.connect(host="127.0.0.1", port={port}, user="shop.app", password="{pw}", database="testdb")
with c.cursor() as cur:
    cur.execute("CREATE TABLE p (id INT PRIMARY KEY, s TEXT)")
    cur.executemany("INSERT INTO p VALUES (%s, %s)", [(i, "row%d" % i) for i in range(100)])
    c.commit()
    cur.execute("SELECT COUNT(*), MAX(s) FROM p")
    print(*cur.fetchone())
c.close()
"#,
        port = proxy.addr.port(),
        pw = PASSWORD
    );
    assert_eq!(python_client(&script).await, "100 row99");
}

/// A CA and a compute certificate it signed for `doze-compute`, written into a directory the
/// compute user can read; returns (dir, CA path, cert path, key path).
fn compute_certificates() -> (tempfile::TempDir, std::path::PathBuf, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = doze_control::testkit::scratch_dir("doze-ca-").unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["doze-compute".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let ca_path = dir.path().join("ca.pem");
    let cert = dir.path().join("compute.pem");
    let key = dir.path().join("compute.key");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    for f in [&cert, &key] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    (dir, ca_path, cert, key)
}

/// `--backend-tls require`: the backend leg is TLS, verified against the CA and the fixed name;
/// a compute with another name is refused with the reason, never used in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_is_verified_and_required() {
    let (_dir, ca, cert, key) = compute_certificates();
    let db = backend_with(&[
        &format!("--ssl-cert={cert}"),
        &format!("--ssl-key={key}"),
        // The compute takes TLS logins only: a plain backend leg would be refused.
        "--require-secure-transport=ON",
    ])
    .await;
    let routes = routes(&[("shop", &db.addr())]);

    let tls = doze_proxy::tls::backend_config(&ca, "doze-compute").unwrap();
    let cfg = ProxyConfig {
        backend_tls: Some(tls),
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start_static(&routes, cfg).await;
    let mut conn = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .unwrap();
    let cipher: Option<String> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .await
        .unwrap()
        .map(|(_, v): (String, String)| v);
    assert!(
        cipher.as_deref().is_some_and(|c| !c.is_empty()),
        "the backend leg is TLS: {cipher:?}"
    );
    // A large result through both legs.
    let big: Option<i64> = conn
        .query_first("SELECT LENGTH(REPEAT('x', 4000000))")
        .await
        .unwrap();
    assert_eq!(big, Some(4_000_000));
    let thread: Option<u64> = conn.query_first("SELECT CONNECTION_ID()").await.unwrap();
    conn.disconnect().await.unwrap();
    // The TLS backend session goes back to the pool and serves the next client.
    for _ in 0..250 {
        if proxy.pool_idle("id-shop") == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        proxy.pool_idle("id-shop"),
        1,
        "the TLS session was not parked"
    );
    let mut again = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .unwrap();
    let reused: Option<u64> = again.query_first("SELECT CONNECTION_ID()").await.unwrap();
    assert_eq!(reused, thread, "the parked TLS session was not reused");
    again.disconnect().await.unwrap();
    proxy.stop().await;

    // Without --backend-tls the compute refuses the plain leg (what the flag prevents; the
    // proxy does not tell the client more than the compute's refusal of the login).
    let proxy = Proxy::start_static(&routes, ProxyConfig::default()).await;
    let err = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1045), "{err}");
    proxy.stop().await;

    // A certificate for another name: refused, with the reason.
    let tls = doze_proxy::tls::backend_config(&ca, "other-compute").unwrap();
    let cfg = ProxyConfig {
        backend_tls: Some(tls),
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start_static(&routes, cfg).await;
    let err = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
    proxy.stop().await;
}
