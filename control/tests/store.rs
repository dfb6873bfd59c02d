//! The state store on both backends: migrations, constraints, transitions, tombstones.

use doze_control::store::{
    Compute, ComputeState, Project, Role, Store, Tenant, Transition, is_unique_violation,
};
use doze_control::testkit::Postgres;
use serde_json::json;

async fn exercise(dsn: &str) {
    let store = Store::open(dsn).await.expect("open");
    // Opening again re-runs nothing and fails nothing.
    let store2 = Store::open(dsn).await.expect("reopen");
    let p = Project {
        id: "p-1".into(),
        name: "one".into(),
        config: json!({"idle_timeout": 300, "nested": {"a": [1, 2]}}),
        created_at: 1_000,
        tenant_id: doze_control::store::DEFAULT_TENANT_ID.into(),
    };
    store.insert_project(&p).await.expect("insert");
    let dup = Project {
        id: "p-2".into(),
        ..p.clone()
    };
    let err = store2
        .insert_project(&dup)
        .await
        .expect_err("duplicate name");
    assert!(is_unique_violation(&err), "{err}");
    assert_eq!(
        store.project_by_key("one").await.expect("by name"),
        Some(p.clone())
    );
    assert_eq!(
        store.project_by_key("p-1").await.expect("by id"),
        Some(p.clone())
    );
    assert_eq!(store.project_by_key("two").await.expect("none"), None);

    let c = Compute {
        id: "c-1".into(),
        project_id: p.id.clone(),
        state: ComputeState::Suspended,
        address: None,
        handle: None,
        config: json!({"image": "mariadb:latest"}),
        created_at: 2_000,
        updated_at: 2_000,
        last_error: None,
        roles_dirty: true,
        epoch: 0,
    };
    store.insert_compute(&c).await.expect("compute");
    let second = Compute {
        id: "c-2".into(),
        ..c.clone()
    };
    let err = store
        .insert_compute(&second)
        .await
        .expect_err("one compute per project");
    assert!(is_unique_violation(&err));

    let t = |to, address, handle, reason| Transition {
        to,
        address,
        handle,
        last_error: None,
        reason,
        lease: None,
    };
    let c1 = store
        .transition(&c, &t(ComputeState::Starting, None, None, "wake"))
        .await
        .expect("t1");
    let c2 = store
        .transition(
            &c1,
            &t(
                ComputeState::Running,
                Some("127.0.0.1:1"),
                Some("42"),
                "wake",
            ),
        )
        .await
        .expect("t2");
    let failed = store
        .transition(
            &c2,
            &Transition {
                to: ComputeState::Failed,
                address: None,
                handle: None,
                last_error: Some(Some("boom")),
                reason: "start failed",
                lease: None,
            },
        )
        .await
        .expect("t3");
    // A write from a stale read (another replica changed the compute since) is refused.
    let stale = store
        .transition(&c1, &t(ComputeState::Suspended, None, None, "stale"))
        .await
        .expect_err("fenced by the epoch");
    assert!(
        stale
            .downcast_ref::<doze_control::store::Fenced>()
            .is_some(),
        "{stale:#}"
    );
    assert_eq!(failed.epoch, 3);
    let read = store.compute("c-1").await.expect("read").expect("exists");
    assert_eq!(read, failed);
    assert_eq!(read.last_error.as_deref(), Some("boom"));
    let events = store.events("c-1").await.expect("events");
    let path: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.from_state.as_str(), e.to_state.as_str()))
        .collect();
    assert_eq!(
        path,
        [
            ("suspended", "starting"),
            ("starting", "running"),
            ("running", "failed")
        ],
        "events keep their order within a millisecond"
    );

    let role = Role {
        project_id: p.id.clone(),
        name: "app".into(),
        stored_hash: "*0000000000000000000000000000000000000000".into(),
        created_at: 3_000,
    };
    store.insert_role(&role).await.expect("role");
    assert!(is_unique_violation(
        &store.insert_role(&role).await.expect_err("dup role")
    ));
    assert!(store.delete_role(&p.id, "app").await.expect("delete"));
    assert!(!store.delete_role(&p.id, "app").await.expect("again"));
    assert_eq!(store.role_tombstones(&p.id).await.expect("t"), ["app"]);
    store.insert_role(&role).await.expect("recreate");
    assert!(
        store.role_tombstones(&p.id).await.expect("t").is_empty(),
        "recreating clears it"
    );
    store.set_roles_dirty(&p.id, false).await.expect("dirty");
    assert!(
        !store
            .compute_for_project(&p.id)
            .await
            .expect("c")
            .expect("c")
            .roles_dirty
    );

    store.delete_project(&p.id).await.expect("delete project");
    assert!(store.list_projects().await.expect("list").is_empty());
    assert!(store.list_computes().await.expect("list").is_empty());
    assert!(store.events("c-1").await.expect("events").is_empty());
    assert!(store.list_roles(&p.id).await.expect("roles").is_empty());
    store.ping().await.expect("ping");
}

#[tokio::test]
async fn store_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The parent directory does not exist yet: it is created.
    exercise(&format!(
        "sqlite://{}/nested/state.db",
        dir.path().display()
    ))
    .await;
    assert!(dir.path().join("nested/state.db").is_file());
}

/// Writers racing on one SQLite file queue on the busy timeout; none fails with
/// `SQLITE_BUSY_SNAPSHOT` ("database is locked", code 517), which a deferred transaction that
/// reads before it writes gets when another connection wrote in between. schemathesis found
/// it as a 500 from `DELETE /api/v1/tenants/:id` under concurrent requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writers_racing_do_not_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&format!("sqlite://{}/state.db", dir.path().display()))
        .await
        .expect("open");
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let t = Tenant {
                    id: format!("t-{w}-{i}"),
                    name: format!("tenant-{w}-{i}"),
                    quotas: json!({}),
                    created_at: 1,
                };
                store.insert_tenant(&t).await.map_err(|e| e.to_string())?;
                // Reads (counts the tenant's projects), then writes.
                let deleted = store
                    .delete_tenant(&t.id)
                    .await
                    .map_err(|e| e.to_string())?;
                if !deleted {
                    return Err(format!("{} not deleted", t.id));
                }
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("no writer fails");
    }
    assert!(
        store
            .list_tenants()
            .await
            .expect("list")
            .iter()
            .all(|t| !t.id.starts_with("t-")),
        "every racing tenant was deleted"
    );
}

#[tokio::test]
async fn store_on_postgres() {
    let pg = Postgres::start().await.expect("postgres");
    exercise(&pg.dsn()).await;
}

#[tokio::test]
async fn store_rejects_unknown_dsns() {
    let err = Store::open("mysql://localhost/x")
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("sqlite://"), "{err}");
}
