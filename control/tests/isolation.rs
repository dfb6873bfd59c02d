//! Tenant isolation, tried as an attacker would (issue 7): every test here failed on the doze
//! that granted roles ALL PRIVILEGES ON *.*, left root without a password and took server
//! options from a deny-list.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use doze_control::store::ComputeState;
use mysql_async::prelude::Queryable;

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The MySQL error code of a failed statement.
fn code(e: &mysql_async::Error) -> u16 {
    match e {
        mysql_async::Error::Server(s) => s.code,
        other => panic!("expected a server error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_reaches_neither_files_nor_the_server_nor_another_project() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let (a, _) = env.project_with_compute("tenant-a", "app", "a-pw").await;
    let (b, _) = env.project_with_compute("tenant-b", "app", "b-pw").await;
    let a_addr = plane.wake(&a).await.expect("wake a").address;
    let b_addr = plane.wake(&b).await.expect("wake b").address;
    let mut victim = connect(&b_addr, "app", "b-pw").await.expect("b");
    victim
        .query_drop("CREATE DATABASE secrets")
        .await
        .expect("b db");
    victim
        .query_drop("CREATE TABLE secrets.t (v TEXT) ENGINE=InnoDB")
        .await
        .expect("b table");
    victim
        .query_drop("INSERT INTO secrets.t VALUES ('b-secret-marker-42')")
        .await
        .expect("b row");
    victim.disconnect().await.ok();

    let b_data = datadir_of(plane, &b);
    let b_log = b_data.join("ib_logfile0");
    let state_db = env.dir.path().join("state.db");
    let mut attacker = connect(&a_addr, "app", "a-pw").await.expect("a");

    // Reading files: LOAD_FILE answers NULL without the FILE privilege.
    for path in [
        b_log.clone(),
        b_data.join("mysql").join("global_priv.MAD"),
        "/etc/passwd".into(),
        state_db.clone(),
    ] {
        let got: Option<Option<Vec<u8>>> = attacker
            .query_first(format!("SELECT LOAD_FILE('{}')", path.display()))
            .await
            .expect("load_file runs");
        assert_eq!(got, Some(None), "LOAD_FILE read {}", path.display());
    }
    attacker
        .query_drop("CREATE DATABASE loot")
        .await
        .expect("a db");
    attacker
        .query_drop("CREATE TABLE loot.t (v LONGBLOB)")
        .await
        .expect("a table");
    let e = attacker
        .query_drop(format!(
            "LOAD DATA INFILE '{}' INTO TABLE loot.t",
            b_log.display()
        ))
        .await
        .expect_err("LOAD DATA INFILE");
    assert!(matches!(code(&e), 1045 | 1227 | 1290), "{e}");

    // Writing files: SELECT INTO OUTFILE, and table files placed elsewhere.
    let planted = b_data.join("secrets").join("planted.txt");
    let e = attacker
        .query_drop(format!("SELECT 'x' INTO OUTFILE '{}'", planted.display()))
        .await
        .expect_err("INTO OUTFILE");
    assert!(matches!(code(&e), 1045 | 1227 | 1290), "{e}");
    assert!(!planted.exists());
    for engine in ["InnoDB", "Aria", "MyISAM"] {
        attacker
            .query_drop(format!(
                "CREATE TABLE loot.far_{engine} (a INT) ENGINE={engine} DATA DIRECTORY='{}'",
                b_data.join("secrets").display()
            ))
            .await
            .expect("DATA DIRECTORY is ignored, not an error");
    }
    let planted_tables: Vec<String> = std::fs::read_dir(b_data.join("secrets"))
        .expect("b's db dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("far_") || n.starts_with("loot"))
        .collect();
    assert!(planted_tables.is_empty(), "{planted_tables:?}");

    // The accounts, the server and other sessions are out of reach.
    for sql in [
        "SELECT * FROM mysql.global_priv",
        "UPDATE mysql.global_priv SET Priv = '{}' WHERE User = 'root'",
        "CREATE TABLE mysql.evil (a INT)",
        "DROP DATABASE mysql",
        "SET GLOBAL max_connections = 1",
        "SHUTDOWN",
        "CREATE USER 'x'@'%'",
        "GRANT ALL PRIVILEGES ON *.* TO 'app'@'%'",
        "PURGE BINARY LOGS BEFORE NOW()",
        "SHOW BINLOG EVENTS",
        "FLUSH PRIVILEGES",
    ] {
        let e = attacker.query_drop(sql).await.expect_err(sql);
        assert!(
            matches!(code(&e), 1044 | 1045 | 1142 | 1227 | 1370),
            "{sql}: {e}"
        );
    }
    let mut root = root_of(plane, &a).await;
    let root_id: u64 = root
        .query_first("SELECT CONNECTION_ID()")
        .await
        .expect("root id")
        .expect("row");
    let others: Vec<(u64, String)> = attacker
        .query("SELECT ID, USER FROM information_schema.PROCESSLIST")
        .await
        .expect("processlist");
    assert!(
        others.iter().all(|(_, user)| user == "app"),
        "a role sees other sessions: {others:?}"
    );
    let e = attacker
        .query_drop(format!("KILL {root_id}"))
        .await
        .expect_err("kill root");
    assert_eq!(code(&e), 1095, "{e}");

    // The grants are exactly the documented list.
    let grants: Vec<String> = attacker
        .query("SHOW GRANTS FOR CURRENT_USER")
        .await
        .expect("grants");
    let grants: Vec<String> = grants
        .into_iter()
        .map(|g| g.split(" IDENTIFIED BY").next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        grants,
        vec![
            "GRANT USAGE ON *.* TO `app`@`%`".to_owned(),
            "GRANT SHOW VIEW ON `mysql`.* TO `app`@`%`".to_owned(),
            "GRANT SHOW VIEW ON `sys`.* TO `app`@`%`".to_owned(),
            // DATABASE_PRIVILEGES is every database-level privilege, which MariaDB shows as
            // ALL PRIVILEGES (database-level ALL has no FILE, SUPER or GRANT OPTION).
            "GRANT ALL PRIVILEGES ON `%`.* TO `app`@`%`".to_owned(),
        ]
    );

    // What a database owner does still works.
    for sql in [
        "CREATE TABLE loot.owned (id INT PRIMARY KEY, v TEXT)",
        "INSERT INTO loot.owned VALUES (1, 'ok')",
        "CREATE VIEW loot.v AS SELECT v FROM loot.owned",
        "CREATE PROCEDURE loot.p() SELECT 1",
        "CREATE TRIGGER loot.tr BEFORE INSERT ON loot.owned FOR EACH ROW SET NEW.v = UPPER(NEW.v)",
        "CREATE TEMPORARY TABLE loot.tmp (a INT)",
        "LOCK TABLES loot.owned WRITE",
        "UNLOCK TABLES",
        "ALTER TABLE loot.owned ADD COLUMN w INT",
        "DROP DATABASE loot",
    ] {
        attacker.query_drop(sql).await.expect(sql);
    }
    let files: Option<String> = root
        .query_first("SELECT @@secure_file_priv")
        .await
        .expect("secure_file_priv");
    assert_eq!(
        files.map(|f| f.trim_end_matches('/').to_owned()),
        Some(
            project_dir_of(plane, &a)
                .join("files")
                .display()
                .to_string()
        )
    );
    let symlinks: Option<String> = root
        .query_first("SELECT @@have_symlink")
        .await
        .expect("symlinks");
    assert_eq!(symlinks.as_deref(), Some("DISABLED"));
    root.disconnect().await.ok();
    attacker.disconnect().await.ok();
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_doze_creates_is_private_and_parents_keep_their_modes() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let parent_mode = mode_of(env.dir.path());
    let (p, _) = env.project_with_compute("private", "app", "pw").await;
    plane.wake(&p).await.expect("wake");
    assert_eq!(mode_of(env.dir.path()), parent_mode, "a parent was changed");
    let root = nix::unistd::geteuid().is_root();
    let passable = if root { 0o711 } else { 0o700 };
    let data_dir = &plane.config().data_dir;
    let project = project_dir_of(plane, &p);
    for (path, mode) in [
        (data_dir.clone(), passable),
        (data_dir.join("projects"), passable),
        (project.clone(), passable),
        (project.join("admin.secret"), 0o600),
        (project.join("data"), 0o700),
        (project.join("tmp"), 0o700),
        (project.join("files"), 0o700),
        (env.dir.path().join("state.db"), 0o600),
    ] {
        assert_eq!(mode_of(&path), mode, "{}", path.display());
    }
    for suffix in ["-wal", "-shm"] {
        let f = env.dir.path().join(format!("state.db{suffix}"));
        if f.exists() {
            assert_eq!(mode_of(&f), 0o600, "{}", f.display());
        }
    }
    plane.shutdown().await;
}

/// As `nobody`, a local user with no business here: no login as root over the socket or TCP,
/// no read of the root password or the state. Needs root to become `nobody`; as another user
/// it runs the TCP half only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_user_gets_no_root_on_any_compute() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let (p, _) = env.project_with_compute("sealed", "app", "pw").await;
    let address = plane.wake(&p).await.expect("wake").address;
    for password in ["", "root", "password"] {
        let e = connect(&address, "root", password)
            .await
            .expect_err("root over TCP");
        assert_eq!(code(&e), 1045, "{e}");
    }
    let socket = datadir_of(plane, &p).join("mariadbd.sock");
    assert!(socket.exists());
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: the `nobody` half of this test needs root to switch users");
        plane.shutdown().await;
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("passwd")
        .expect("a nobody user");
    use std::os::unix::process::CommandExt;
    let as_nobody = |program: &str, args: Vec<String>| {
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .uid(nobody.uid.as_raw())
            .gid(nobody.gid.as_raw())
            .current_dir("/");
        cmd.output().expect("run as nobody")
    };
    let client = doze_control::mariadb::find_binary("mariadb").expect("client");
    let out = as_nobody(
        client.to_str().expect("path"),
        vec![
            "--no-defaults".into(),
            format!("--socket={}", socket.display()),
            "-uroot".into(),
            "-e".into(),
            "SELECT 1".into(),
        ],
    );
    assert!(
        !out.status.success(),
        "nobody logged in as root over the socket"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        // errno 13 is EACCES: the socket's directory is closed to other users.
        stderr.contains("(13)")
            || stderr.contains("Permission denied")
            || stderr.contains("Access denied"),
        "{stderr}"
    );
    for secret in [
        project_dir_of(plane, &p).join("admin.secret"),
        env.dir.path().join("state.db"),
        datadir_of(plane, &p).join("ib_logfile0"),
    ] {
        let out = as_nobody("cat", vec![secret.display().to_string()]);
        assert!(!out.status.success(), "nobody read {}", secret.display());
    }
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_options_are_an_allow_list_checked_at_create_time() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let p = plane
        .create_project("opts", serde_json::json!({}))
        .await
        .expect("project");
    for (key, value) in [
        ("skip_gr", "ON"),
        ("skip-grant-tables", "ON"),
        ("log_bin", "/tmp/doze-binlog"),
        ("datad", "/tmp"),
        ("tmpd", "/tmp"),
        ("log_err", "/tmp/x"),
        ("basedi", "/"),
        ("sock", "/tmp/s"),
        ("skip_net", "ON"),
        ("ssl_key", "/etc/shadow"),
        ("symbolic_links", "ON"),
        ("init_file", "/tmp/x.sql"),
        ("plugin_load_add", "ha_connect"),
        ("secure_file_priv", ""),
        ("max_connections", "1; --skip-grant-tables"),
    ] {
        let config = serde_json::json!({ "mariadb_options": { key: value } });
        let err = plane.create_compute(&p.id, config).await.expect_err(key);
        assert!(
            matches!(err, doze_control::ControlError::Invalid(_)),
            "{key}: {err}"
        );
    }
    // Every prefix of the option that would open the compute to anyone is refused too.
    let name = "skip_grant_tables";
    for end in 1..=name.len() {
        let config = serde_json::json!({ "mariadb_options": { &name[..end]: "ON" } });
        assert!(
            plane.create_compute(&p.id, config).await.is_err(),
            "{}",
            &name[..end]
        );
    }
    // Allowed options reach the server with their full names.
    let config = serde_json::json!({ "mariadb_options": {
        "max_connections": 77,
        "collation_server": "utf8mb4_unicode_ci",
        "sql_mode": "ANSI_QUOTES,STRICT_ALL_TABLES",
    }});
    plane.create_compute(&p.id, config).await.expect("valid");
    plane.create_role(&p.id, "app", "pw").await.expect("role");
    let address = plane.wake(&p.id).await.expect("wake").address;
    let mut conn = connect(&address, "app", "pw").await.expect("connect");
    let row: Option<(u64, String, String)> = conn
        .query_first("SELECT @@max_connections, @@collation_server, @@sql_mode")
        .await
        .expect("vars");
    assert_eq!(
        row,
        Some((
            77,
            "utf8mb4_unicode_ci".to_owned(),
            "ANSI_QUOTES,STRICT_ALL_TABLES".to_owned()
        ))
    );
    conn.disconnect().await.ok();
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_compute_is_noticed_within_one_check_interval() {
    let interval = Duration::from_millis(500);
    let env = sqlite_env(|c| c.check_interval = interval).await;
    let plane = &env.plane;
    let (p, cid) = env.project_with_compute("crashy", "app", "pw").await;
    let first = plane.wake(&p).await.expect("wake").address;
    let _scheduler = plane.spawn_scheduler();
    let pids = doze_control::testkit::mariadbd_pids_under(&datadir_of(plane, &p));
    assert_eq!(pids.len(), 1, "{pids:?}");
    let killed = Instant::now();
    doze_control::mariadb::signal_pid(pids[0], nix::sys::signal::Signal::SIGKILL);
    // One interval, plus the time the pass itself takes on a loaded machine.
    let deadline = killed + interval + Duration::from_secs(2);
    let compute = loop {
        let c = plane.compute(&cid).await.expect("compute");
        // (A lost compute passes through `suspending` on its way: the stop is fenced.)
        if c.state == ComputeState::Suspended || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(compute.state, ComputeState::Suspended, "{compute:?}");
    assert_eq!(compute.address, None);
    assert!(compute.last_error.is_some());
    let events = plane.compute_events(&cid).await.expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.reason == "lost" && e.to_state == "suspended"),
        "{events:?}"
    );
    // The next connection starts it again.
    let again = plane.wake(&p).await.expect("wake again");
    assert_eq!(select_one(&again.address, "app", "pw").await, 1);
    let _ = first;
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_sessions_on_a_compute_hold_off_the_idle_suspend() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let (p, cid) = env
        .project_with_config(
            "direct",
            serde_json::json!({"idle_timeout": 0.05, "suspend_mode": "stop"}),
        )
        .await;
    plane.create_role(&p, "app", "pw").await.expect("role");
    let address = plane.wake(&p).await.expect("wake").address;
    // A client that bypasses doze and talks to the compute's port itself.
    let mut direct = connect(&address, "app", "pw").await.expect("direct");
    direct.query_drop("SELECT 1").await.expect("query");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(plane.suspend_idle().await.expect("pass"), 0);
    assert_eq!(
        plane.compute(&cid).await.expect("c").state,
        ComputeState::Running
    );
    direct.query_drop("SELECT 2").await.expect("still served");
    direct.disconnect().await.expect("bye");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(plane.suspend_idle().await.expect("pass"), 1);
    assert_eq!(
        plane.compute(&cid).await.expect("c").state,
        ComputeState::Suspended
    );
    plane.shutdown().await;
}

#[tokio::test]
async fn the_tokenless_admin_api_refuses_browsers_and_other_host_names() {
    let env = sqlite_env(|_| {}).await;
    let router = doze_control::rest::router(std::sync::Arc::clone(&env.plane), None);
    let post = |host: &str, origin: Option<&str>| {
        let mut req = Request::builder()
            .method("POST")
            .uri("/api/v1/projects")
            .header("host", host)
            .header("content-type", "application/json");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.body(Body::from(r#"{"name": "rebound"}"#))
            .expect("request")
    };
    // DNS rebinding: the browser calls the attacker's name, which resolves to 127.0.0.1.
    let resp = raw(&router, post("evil.example:8080", None)).await;
    assert_error(&resp, StatusCode::FORBIDDEN, "forbidden_host");
    // A cross-origin form post from a page elsewhere.
    let resp = raw(
        &router,
        post("127.0.0.1:8080", Some("https://evil.example")),
    )
    .await;
    assert_error(&resp, StatusCode::FORBIDDEN, "forbidden_origin");
    let resp = raw(&router, post("127.0.0.1:8080", Some("null"))).await;
    assert_error(&resp, StatusCode::FORBIDDEN, "forbidden_origin");
    assert!(env.plane.list_projects().await.expect("list").is_empty());
    // curl, the CLI and a page served by doze's own loopback address are fine.
    let resp = raw(
        &router,
        post("localhost:8080", Some("http://localhost:8080")),
    )
    .await;
    assert_eq!(resp.0, StatusCode::CREATED, "{}", resp.1);
    let resp = raw(
        &router,
        Request::builder()
            .uri("/api/v1/projects")
            .header("host", "[::1]:8080")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(resp.0, StatusCode::OK, "{}", resp.1);
}

/// The uid a process runs as.
fn uid_of(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("Uid line")
}

/// As root, every compute runs as an OS account of its own, and one compute's account cannot
/// enter another's directories (what a flaw in MariaDB that let a compute run code would try).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_compute_runs_as_its_own_os_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: computes run as doze's own user, nothing to switch to");
        return;
    }
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let (a, _) = env.project_with_compute("uid-a", "app", "pw").await;
    let (b, _) = env.project_with_compute("uid-b", "app", "pw").await;
    plane.wake(&a).await.expect("wake a");
    plane.wake(&b).await.expect("wake b");
    let pid_of = |p: &str| {
        let pids = doze_control::testkit::mariadbd_pids_under(&datadir_of(plane, p));
        assert_eq!(pids.len(), 1, "{pids:?}");
        pids[0]
    };
    let (uid_a, uid_b) = (uid_of(pid_of(&a)), uid_of(pid_of(&b)));
    let mysql = nix::unistd::User::from_name("mysql")
        .expect("passwd")
        .map(|u| u.uid.as_raw());
    assert_ne!(uid_a, uid_b);
    assert!(doze_control::driver::local::COMPUTE_UIDS.contains(&uid_a));
    assert_ne!(Some(uid_a), mysql);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(datadir_of(plane, &a)).expect("a").uid(),
        uid_a
    );
    // A's account tries B's files.
    use std::os::unix::process::CommandExt;
    for target in [
        datadir_of(plane, &b).join("ib_logfile0"),
        project_dir_of(plane, &b).join("admin.secret"),
    ] {
        let out = std::process::Command::new("cat")
            .arg(&target)
            .uid(uid_a)
            .gid(uid_a)
            .current_dir("/")
            .output()
            .expect("cat");
        assert!(
            !out.status.success(),
            "A's account read {}",
            target.display()
        );
    }
    let out = std::process::Command::new("ls")
        .arg(datadir_of(plane, &b))
        .uid(uid_a)
        .gid(uid_a)
        .current_dir("/")
        .output()
        .expect("ls");
    assert!(!out.status.success(), "A's account listed B's datadir");
    plane.shutdown().await;
}

/// Storage made by an older doze (root without a password, files owned by `mysql`) is sealed at
/// its next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_of_an_older_doze_is_sealed_at_its_next_start() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let (p, _) = env.project_with_compute("legacy", "app", "pw").await;
    let datadir = datadir_of(plane, &p);
    std::fs::create_dir_all(&datadir).expect("datadir");
    let root = nix::unistd::geteuid().is_root();
    if root {
        let mysql = nix::unistd::User::from_name("mysql")
            .expect("passwd")
            .expect("mysql user");
        for dir in [
            plane.config().data_dir.clone(),
            plane.config().data_dir.join("projects"),
            project_dir_of(plane, &p),
        ] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        nix::unistd::chown(&datadir, Some(mysql.uid), Some(mysql.gid)).expect("chown");
    }
    // What the previous doze ran: root@localhost without a password.
    let install = doze_control::mariadb::find_binary("mariadb-install-db").expect("install-db");
    let mut cmd = std::process::Command::new(install);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .current_dir("/tmp");
    if root {
        cmd.arg("--user=mysql");
    }
    let out = cmd.output().expect("install-db");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!project_dir_of(plane, &p).join("admin.secret").exists());

    let address = plane.wake(&p).await.expect("wake");
    assert_eq!(select_one(&address.address, "app", "pw").await, 1);
    assert_eq!(
        mode_of(&project_dir_of(plane, &p).join("admin.secret")),
        0o600
    );
    let socket = datadir.join("mariadbd.sock");
    let no_password = mysql_async::OptsBuilder::default()
        .ip_or_hostname("localhost")
        .socket(Some(socket.to_string_lossy().into_owned()))
        .prefer_socket(true)
        .user(Some("root"));
    let e = mysql_async::Conn::new(no_password)
        .await
        .expect_err("root without a password");
    assert_eq!(code(&e), 1045, "{e}");
    let mut root_conn = root_of(plane, &p).await;
    let one: Option<i64> = root_conn.query_first("SELECT 1").await.expect("root");
    assert_eq!(one, Some(1));
    root_conn.disconnect().await.ok();
    assert_eq!(mode_of(&datadir), 0o700);
    plane.shutdown().await;
}
