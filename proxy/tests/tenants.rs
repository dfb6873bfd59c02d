//! Tenants end to end through `doze serve` and real mariadbd: the operator makes a tenant with
//! a quota and a token (with the `doze` CLI); the tenant works with its token alone; a
//! connection that would wake one compute too many gets MySQL error 1226 at once, not a hang;
//! the tenant sees only its own projects and audit log; a revoked token fails at once.
#![allow(clippy::unwrap_used)]

mod binary;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use binary::{Doze, TOKEN, api};
use doze_control::testkit::scratch_dir;
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

/// Runs `doze <args> -o json` against `doze` with `token`.
fn cli(doze: &Doze, token: &str, args: &[&str]) -> Output {
    Command::new(binary::doze())
        .args(args)
        .args(["-o", "json", "--admin"])
        .arg(format!("http://127.0.0.1:{}", doze.admin))
        .env("DOZE_ADMIN_TOKEN", token)
        .env_remove("DOZE_ADMIN_TOKEN_FILE")
        .output()
        .unwrap()
}

/// As [`cli`], which must succeed: its JSON answer (null for none).
fn cli_ok(doze: &Doze, token: &str, args: &[&str]) -> Value {
    let out = cli(doze, token, args);
    assert!(
        out.status.success(),
        "doze {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

async fn select_one(doze: &Doze, project: &str) -> Result<i64, mysql_async::Error> {
    let mut conn = mysql_async::Conn::new(doze.opts(project)).await?;
    let one: Option<i64> = conn.query_first("SELECT 1").await?;
    conn.disconnect().await?;
    Ok(one.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_works_with_its_token_within_its_quota() {
    let dir = scratch_dir("doze-tenants-").unwrap();
    let doze = Doze::serve(&[
        format!("--data-dir={}", dir.path().join("data").display()),
        format!("--db-dsn=sqlite://{}/state.db", dir.path().display()),
    ]);
    // Another customer's project, in the default tenant.
    doze.project("other-shop", json!({}), json!({}));

    let tenant = cli_ok(
        &doze,
        TOKEN,
        &["tenant", "create", "acme", "--max-running-computes", "1"],
    );
    assert_eq!(tenant["quotas"]["max_running_computes"], 1, "{tenant}");
    let created = cli_ok(
        &doze,
        TOKEN,
        &[
            "token",
            "create",
            "acme",
            "--name",
            "ci",
            "--expires-in",
            "1h",
        ],
    );
    let secret = created["token"].as_str().unwrap().to_owned();
    let token_id = created["id"].as_str().unwrap().to_owned();
    assert!(created["expires_at"].is_string(), "{created}");

    // The tenant, with its token alone: two projects, each with a compute and a role.
    for name in ["acme-one", "acme-two"] {
        let p = cli_ok(
            &doze,
            &secret,
            &[
                "project",
                "create",
                name,
                "--compute",
                "--role",
                "app",
                "--password",
                "app-password-1",
            ],
        );
        assert_eq!(p["tenant_id"], tenant["id"], "{p}");
    }
    // It creates no tenants, and sees only its own projects.
    let refused = cli(&doze, &secret, &["tenant", "create", "rogue"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("operator"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let list = cli_ok(&doze, &secret, &["project", "list"]);
    let names: Vec<&str> = list["projects"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["acme-one", "acme-two"]);
    let other = cli(&doze, &secret, &["project", "get", "other-shop"]);
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("no project"));

    // The first connection wakes acme-one; the second project does not fit the quota.
    assert_eq!(select_one(&doze, "acme-one").await.unwrap(), 1);
    let t0 = Instant::now();
    let err = select_one(&doze, "acme-two").await.unwrap_err();
    let waited = t0.elapsed();
    match &err {
        mysql_async::Error::Server(e) => {
            assert_eq!(e.code, 1226, "{e:?}");
            assert_eq!(e.state, "42000");
            assert!(
                e.message.contains("max_running_computes = 1"),
                "{}",
                e.message
            );
        }
        other => panic!("expected MySQL error 1226, got {other:?}"),
    }
    assert!(
        waited < Duration::from_secs(5),
        "refused at once, not after a wait: {waited:?}"
    );
    let (_, acme) = api(doze.admin, "GET", "/api/v1/tenants/acme", None);
    assert_eq!(acme["usage"]["running_computes"], 1, "{acme}");

    // The operator raises the quota: the same connection now wakes the second compute.
    cli_ok(
        &doze,
        TOKEN,
        &[
            "tenant",
            "set-quotas",
            "acme",
            "--max-running-computes",
            "2",
        ],
    );
    assert_eq!(select_one(&doze, "acme-two").await.unwrap(), 1);

    // The tenant's audit log has its own changes and the operator's on its objects, nothing else.
    let audit = cli_ok(&doze, &secret, &["audit", "--limit", "1000"]);
    let entries = audit["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["actor"] == token_id.as_str()
            && e["method"] == "POST"
            && e["path"] == "/api/v1/projects"
            && e["status"] == 201),
        "{audit}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["actor"] == "operator" && e["method"] == "PATCH"),
        "{audit}"
    );
    assert!(!audit.to_string().contains("other-shop"), "{audit}");

    // Usage of the tenant's projects only, for the operator as for the tenant.
    for token in [TOKEN, secret.as_str()] {
        let usage = cli_ok(
            &doze,
            token,
            &["usage", "--tenant", "acme", "--granularity", "total"],
        );
        let mut names: Vec<&str> = usage["usage"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["project"].as_str())
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["acme-one", "acme-two"], "{usage}");
    }

    // Revoked: the next call fails, with a message that says why.
    cli_ok(&doze, TOKEN, &["token", "revoke", "acme", &token_id]);
    let after = cli(&doze, &secret, &["project", "list"]);
    assert!(!after.status.success());
    assert!(
        String::from_utf8_lossy(&after.stderr).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
    let tokens = cli_ok(&doze, TOKEN, &["token", "list", "acme"]);
    assert!(tokens["tokens"][0]["revoked_at"].is_string(), "{tokens}");
    assert!(!tokens.to_string().contains(&secret));
}
