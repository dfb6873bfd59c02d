//! The `doze` command line against a running `doze serve`: every admin command, names that need
//! encoding, exit codes, connection strings with the real proxy address, health probes
//! through a drain.
#![allow(clippy::unwrap_used)]

mod binary;

use std::process::Command;

use binary::{Doze, TOKEN, api};
use doze_control::testkit::scratch_dir;
use serde_json::Value;

/// Runs `doze ARGS --admin <this doze>`: (exit code, stdout, stderr).
fn cli(doze: &Doze, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary::doze())
        .args(args)
        .arg("--admin")
        .arg(format!("http://127.0.0.1:{}", doze.admin))
        .env("DOZE_OUTPUT", "json")
        .env("DOZE_ADMIN_TOKEN", TOKEN)
        .env_remove("DOZE_ROLE_PASSWORD")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(doze: &Doze, args: &[&str]) -> Value {
    let (code, out, err) = cli(doze, args);
    assert_eq!(code, 0, "doze {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or(Value::String(out))
}

fn serve() -> (Doze, tempfile::TempDir) {
    let dir = scratch_dir("doze-cli-").unwrap();
    let doze = Doze::serve(&[
        format!("--data-dir={}", dir.path().join("data").display()),
        format!("--db-dsn=sqlite://{}/state.db", dir.path().display()),
        "--suspend-mode=stop".to_owned(),
    ]);
    (doze, dir)
}

#[test]
fn project_create_takes_durations_rolls_back_and_prints_the_real_address() {
    let (doze, dir) = serve();
    let _cleanup = KillComputes(dir.path().to_path_buf());
    let (code, out, err) = cli(
        &doze,
        &[
            "project",
            "create",
            "shop",
            "--compute",
            "--role",
            "app",
            "--password",
            "app-password-1",
            "--idle-timeout",
            "5m",
            "--suspend-mode",
            "freeze",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let project: Value = serde_json::from_str(&out).expect("stdout is the project alone");
    assert_eq!(project["config"]["idle_timeout"], 300.0);
    assert_eq!(project["config"]["suspend_mode"], "freeze");
    let port = doze.proxy.to_string();
    assert!(
        err.contains(&format!("-P {port} -u shop.app")),
        "the hint names the proxy's real port: {err}"
    );
    assert!(!err.contains("6033"), "{err}");

    // --password needs --role: a usage error, nothing created.
    let (code, _, err) = cli(
        &doze,
        &["project", "create", "lonely", "--password", "pw-123456"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--role"), "{err}");
    assert_eq!(cli(&doze, &["project", "get", "lonely"]).0, 3);

    // A failed later step (a role name MariaDB refuses) deletes the project again.
    let (code, _, err) = cli(
        &doze,
        &[
            "project",
            "create",
            "half",
            "--compute",
            "--role",
            "",
            "--password",
            "pw-123456",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("deleted again"), "{err}");
    assert_eq!(cli(&doze, &["project", "get", "half"]).0, 3, "rolled back");

    // The connection string printer.
    let hint = ok(&doze, &["project", "connect", "shop", "--role", "app"]);
    assert_eq!(hint["url"], format!("mysql://shop.app@127.0.0.1:{port}/"));
    assert_eq!(
        hint["command"],
        format!("mariadb -h 127.0.0.1 -P {port} -u shop.app -p")
    );
    let (code, text, _) = cli(
        &doze,
        &["project", "connect", "shop", "--role", "app", "-o", "table"],
    );
    assert_eq!(code, 0);
    assert!(
        text.contains(&format!("mysql://shop.app@127.0.0.1:{port}/")),
        "{text}"
    );

    // Output formats: a table for people, YAML and JSON for scripts.
    let (code, table, _) = cli(&doze, &["project", "list", "-o", "table"]);
    assert_eq!(code, 0);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NAME") && header.contains("ID"),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("shop ")), "{table}");
    let (code, yaml, _) = cli(&doze, &["project", "get", "shop", "-o", "yaml"]);
    assert_eq!(code, 0);
    assert!(yaml.contains("\"name\": \"shop\""), "{yaml}");
    assert!(yaml.contains("\"idle_timeout\": 300"), "{yaml}");
}

#[test]
fn computes_by_name_list_and_lookups_that_do_not_wake() {
    let (doze, dir) = serve();
    let _cleanup = KillComputes(dir.path().to_path_buf());
    ok(&doze, &["project", "create", "shop", "--compute"]);
    let listed = ok(&doze, &["compute", "list"]);
    let computes = listed["computes"].as_array().unwrap();
    assert_eq!(computes.len(), 1);
    let id = computes[0]["id"].as_str().unwrap().to_owned();
    // By project name: the same compute, still suspended (a lookup never wakes).
    let got = ok(&doze, &["compute", "get", "shop"]);
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["state"], "suspended");
    let only = ok(&doze, &["compute", "list", "--project", "shop"]);
    assert_eq!(only["computes"].as_array().map(Vec::len), Some(1));
    let resumed = ok(&doze, &["compute", "resume", "shop"]);
    assert_eq!(resumed["state"], "running");
    let frozen = ok(&doze, &["compute", "suspend", "shop", "--mode", "freeze"]);
    assert_eq!(frozen["state"], "frozen");
    let stopped = ok(&doze, &["compute", "suspend", &id]);
    assert_eq!(stopped["state"], "suspended");
    // Exit codes: not found 3, conflict 4, unreachable 5, usage 2.
    assert_eq!(cli(&doze, &["compute", "get", "nope"]).0, 3);
    assert_eq!(cli(&doze, &["compute", "create", "shop"]).0, 4);
    assert_eq!(
        cli(&doze, &["compute", "suspend", "shop", "--mode", "nap"]).0,
        2
    );
    // Delete by name: the compute with it; then both are gone.
    ok(&doze, &["compute", "delete", "shop"]);
    assert_eq!(cli(&doze, &["compute", "get", id.as_str()]).0, 3);
    ok(&doze, &["project", "delete", "shop"]);
    assert_eq!(cli(&doze, &["project", "get", "shop"]).0, 3);
    assert_eq!(cli(&doze, &["project", "delete", "shop"]).0, 3);
    let out = Command::new(binary::doze())
        .args(["project", "list", "--admin", "http://127.0.0.1:9"])
        .env("DOZE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
}

#[test]
fn roles_with_names_that_need_encoding_and_password_changes() {
    let (doze, _dir) = serve();
    ok(&doze, &["project", "create", "shop"]);
    for name in ["q", "q?z", "a b", "x/y"] {
        ok(
            &doze,
            &["role", "create", "shop", name, "--password", "first-pw-1"],
        );
    }
    ok(&doze, &["role", "delete", "shop", "q?z"]);
    // `-o csv` is only for `doze usage`: refused as a usage error before anything is done.
    let (code, _, err) = cli(&doze, &["role", "delete", "shop", "q", "-o", "csv"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("doze usage"), "{err}");
    let roles = ok(&doze, &["role", "list", "shop"]);
    let names: Vec<&str> = roles["roles"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(names.contains(&"q"), "deleting 'q?z' left 'q': {names:?}");
    assert!(!names.contains(&"q?z"), "{names:?}");
    assert!(
        names.contains(&"a b") && names.contains(&"x/y"),
        "{names:?}"
    );
    // set-password: generated when not given, printed once on stderr.
    let (code, _, err) = cli(&doze, &["role", "set-password", "shop", "a b"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("password (shown once)"), "{err}");
    ok(
        &doze,
        &[
            "role",
            "set-password",
            "shop",
            "x/y",
            "--password",
            "second-pw-2",
        ],
    );
    assert_eq!(cli(&doze, &["role", "set-password", "shop", "ghost"]).0, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_health_probes_through_a_drain() {
    let (mut doze, dir) = serve();
    let _cleanup = KillComputes(dir.path().to_path_buf());
    let (code, out, err) = cli(&doze, &["version"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("client: doze "), "{out}");
    assert!(
        out.contains(&format!("proxy 127.0.0.1:{}", doze.proxy)),
        "{out}"
    );
    let flag = Command::new(binary::doze())
        .arg("--version")
        .output()
        .unwrap();
    let flag = String::from_utf8_lossy(&flag.stdout).into_owned();
    assert!(flag.starts_with("doze ") && flag.contains('('), "{flag}");

    assert_eq!(api(doze.admin, "GET", "/readyz", None).0, 200);
    assert_eq!(api(doze.admin, "GET", "/livez", None).0, 200);
    // A session open through the drain keeps doze draining: readiness is 503 then, liveness
    // still 200, and the admin API still answers.
    doze.project("held", serde_json::json!({}), serde_json::json!({}));
    let held = mysql_async::Conn::new(doze.opts("held")).await.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(doze.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut saw = None;
    for _ in 0..100 {
        let ready = api(doze.admin, "GET", "/readyz", None);
        if ready.0 == 503 {
            saw = Some((ready, api(doze.admin, "GET", "/livez", None).0));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (ready, live) = saw.expect("/readyz turned 503 during the drain");
    assert_eq!(ready.1["error"]["code"], "draining", "{}", ready.1);
    assert_eq!(live, 200);
    held.disconnect().await.unwrap();
    let _ = doze.child.wait();
}

/// Kills the computes a test started when it ends (a failed assertion included).
struct KillComputes(std::path::PathBuf);

impl Drop for KillComputes {
    fn drop(&mut self) {
        doze_control::testkit::kill_mariadbd_under(&self.0);
    }
}

/// `--log-format json`: every line one JSON object; a session's lines carry its connection id
/// and project, from the enclosing spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_session_fields() {
    use std::io::Read;
    let dir = scratch_dir("doze-cli-").unwrap();
    let _cleanup = KillComputes(dir.path().to_path_buf());
    let mut doze = Doze::spawn(
        &[
            format!("--data-dir={}", dir.path().join("data").display()),
            format!("--db-dsn=sqlite://{}/state.db", dir.path().display()),
            "--log-format=json".to_owned(),
        ],
        std::process::Stdio::piped(),
    );
    for _ in 0..300 {
        if api(doze.admin, "GET", "/healthz", None).0 == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    doze.project("logged", serde_json::json!({}), serde_json::json!({}));
    let conn = mysql_async::Conn::new(doze.opts("logged")).await.unwrap();
    conn.disconnect().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(doze.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut stderr = String::new();
    doze.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let _ = doze.child.wait();
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 3, "{stderr}");
    let session_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["project"] == "logged"))
        })
        .collect();
    assert!(
        !session_lines.is_empty(),
        "no line names the project: {stderr}"
    );
    for l in &session_lines {
        assert!(l["level"].is_string() && l["timestamp"].is_string(), "{l}");
    }
}

/// `doze completions SHELL` and `doze man`: scripts the shells accept, and a manual page that
/// names every command.
#[test]
fn completions_parse_in_their_shells_and_the_man_page_lists_every_command() {
    let run = |args: &[&str]| {
        let out = Command::new(binary::doze()).args(args).output().unwrap();
        assert!(out.status.success(), "doze {args:?}: {:?}", out.status);
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("complete -F"), "{bash}");
    for word in [
        "project",
        "compute",
        "role",
        "set-password",
        "--proxy-threads",
    ] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    let dir = scratch_dir("doze-completions-").unwrap();
    let script = dir.path().join("doze.bash");
    std::fs::write(&script, &bash).unwrap();
    // Sourced into a real bash, it registers a completion for `doze`.
    let registered = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p doze", script.display()))
        .output()
        .unwrap();
    assert!(
        registered.status.success(),
        "bash rejects the script: {}",
        String::from_utf8_lossy(&registered.stderr)
    );
    assert!(String::from_utf8_lossy(&registered.stdout).contains("doze"));
    assert!(run(&["completions", "zsh"]).starts_with("#compdef doze"));
    assert!(run(&["completions", "fish"]).contains("complete -c doze"));
    assert_eq!(
        Command::new(binary::doze())
            .args(["completions", "tcsh"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2),
        "an unknown shell is a usage error"
    );

    let man = run(&["man"]);
    assert!(man.contains(".TH doze 1"), "not a roff page for doze(1)");
    for word in ["serve", "project", "compute", "role", "completions"] {
        assert!(man.contains(word), "the man page lacks {word}");
    }
}
