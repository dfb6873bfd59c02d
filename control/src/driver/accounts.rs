//! doze's administrative work inside a running compute, over a root connection, whatever
//! the driver: role changes and the count of client sessions.

use std::time::Duration;

use anyhow::Context;
use mysql_async::prelude::Queryable;

use super::RoleOp;
use crate::roles::{self, RESERVED_ROLE_NAMES};

/// Sessions of clients in the server's own process list: not this query's connection, not
/// the server's background threads, not doze's administrative root sessions.
const CLIENT_SESSIONS_SQL: &str = "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
     WHERE ID <> CONNECTION_ID() AND COMMAND NOT IN ('Daemon', 'Killed') \
     AND USER NOT IN ('system user', 'event_scheduler', 'unauthenticated user', 'root')";

/// Applies role changes on `conn` within `timeout`, then closes it.
pub async fn apply(
    mut conn: mysql_async::Conn,
    ops: &[RoleOp],
    timeout: Duration,
) -> anyhow::Result<()> {
    let result = tokio::time::timeout(timeout, apply_ops(&mut conn, ops))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("role changes took over {timeout:?}")));
    let _ = conn.disconnect().await;
    result
}

/// The compute's client sessions (see [`super::ComputeDriver::client_sessions`]), then
/// closes `conn`.
pub async fn client_sessions(
    mut conn: mysql_async::Conn,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let count = tokio::time::timeout(timeout, conn.query_first::<u64, _>(CLIENT_SESSIONS_SQL))
        .await
        .context("the compute did not answer its process list in time")??;
    let _ = conn.disconnect().await;
    Ok(count.unwrap_or(0))
}

async fn apply_ops(conn: &mut mysql_async::Conn, ops: &[RoleOp]) -> anyhow::Result<()> {
    for op in ops {
        match op {
            RoleOp::Upsert(role) => {
                for sql in roles::upsert_sql(role) {
                    conn.query_drop(sql).await?;
                }
            }
            RoleOp::Drop(name) => conn.query_drop(roles::drop_sql(name)).await?,
            RoleOp::Sync(sync) => {
                for name in &sync.drop {
                    let reserved = RESERVED_ROLE_NAMES
                        .iter()
                        .any(|r| r.eq_ignore_ascii_case(name));
                    if !reserved && !sync.upsert.iter().any(|w| &w.name == name) {
                        conn.query_drop(roles::drop_sql(name)).await?;
                    }
                }
                for role in &sync.upsert {
                    for sql in roles::upsert_sql(role) {
                        conn.query_drop(sql).await?;
                    }
                }
            }
        }
    }
    Ok(())
}
