//! Database roles: name rules, password hashing and the SQL that puts a role into a compute.
//!
//! Only SHA1(SHA1(password)) is ever stored (MariaDB's `mysql_native_password` form, written
//! `*` + 40 upper-case hex digits); the password itself is neither stored, logged nor returned.

/// Account names MariaDB reserves for itself.
pub const RESERVED_ROLE_NAMES: &[&str] = &["root", "mysql", "mariadb.sys", "public"];

/// A role as a compute needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleDef {
    pub name: String,
    /// `*HEX`.
    pub stored_hash: String,
}

/// Checks a role name: 1-80 characters, no quotes, backslashes, control characters or NUL,
/// only characters MariaDB stores faithfully, not one of MariaDB's reserved accounts.
///
/// MariaDB keeps user names in utf8mb3, which has no room for characters outside the Basic
/// Multilingual Plane: every emoji would become the same `?` and distinct roles would collide
/// in the compute. Such names are refused rather than mangled.
pub fn validate_role_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 || chars > 80 {
        return Err(format!(
            "role name must be 1-80 characters long, got {chars}"
        ));
    }
    if name
        .chars()
        .any(|c| matches!(c, '\'' | '"' | '`' | '\\') || c.is_control())
    {
        return Err("role name must not contain quotes, backslashes or control characters".into());
    }
    if let Some(c) = name.chars().find(|c| u32::from(*c) > 0xFFFF) {
        return Err(format!(
            "role name must not contain {:?} (U+{:X}): MariaDB stores user names in utf8mb3, \
             which cannot hold characters outside the Basic Multilingual Plane (such as emoji)",
            c,
            u32::from(c)
        ));
    }
    if name.trim() != name {
        return Err("role name must not start or end with whitespace".into());
    }
    if RESERVED_ROLE_NAMES
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
    {
        return Err(format!("role name '{name}' is reserved by MariaDB"));
    }
    Ok(())
}

/// Checks a password: 1-1024 bytes (MariaDB accepts an empty one; doze does not).
pub fn validate_password(password: &str) -> Result<(), String> {
    if password.is_empty() || password.len() > 1024 {
        return Err("password must be 1-1024 bytes long".into());
    }
    Ok(())
}

/// SHA1(SHA1(password)) and its `*HEX` text form: the protocol crate's, the one definition.
pub use doze_protocol::native_password::{format_stored_hash, parse_stored_hash, stored_hash};

/// Schemas of the server itself. A role gets one harmless privilege on each (`SHOW VIEW`),
/// and nothing else there. (`performance_schema` needs no entry: MariaDB itself refuses
/// changes to it, and grants there are refused even to root.)
///
/// Why a privilege and not none: MariaDB matches a database against a user's database-level
/// grants most specific first and uses the first match only, so an exact grant on `mysql`
/// shadows the `%` wildcard grant below. Without it, `%` would also match `mysql`, and write
/// access to `mysql.global_priv` is root access to the compute.
pub const SYSTEM_SCHEMAS: &[&str] = &["mysql", "sys"];

/// What a role may do in every database of its own, present and future (granted on the `%`
/// wildcard): everything a database owner needs, and nothing that reaches beyond the
/// databases. The global privileges a role does **not** get, and why:
///
/// | privilege | why not |
/// |---|---|
/// | FILE | LOAD_FILE, LOAD DATA INFILE and SELECT ... INTO OUTFILE read and write the server's files, and every compute on a machine shares them |
/// | SUPER, SHUTDOWN, RELOAD, CONNECTION ADMIN, READ_ONLY ADMIN, ... | they change or stop the server that doze manages |
/// | PROCESS | other sessions' statements (a role still sees and kills its own threads) |
/// | BINLOG ADMIN, BINLOG MONITOR, REPLICATION ... | binary logs and replication belong to doze |
/// | CREATE USER, GRANT OPTION | doze owns the accounts; an account created in a compute could never log in through doze |
/// | any privilege on `*.*` | it would reach the `mysql` schema and with it every account |
pub const DATABASE_PRIVILEGES: &str = "SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, REFERENCES, \
     INDEX, ALTER, CREATE TEMPORARY TABLES, LOCK TABLES, EXECUTE, CREATE VIEW, SHOW VIEW, \
     CREATE ROUTINE, ALTER ROUTINE, EVENT, TRIGGER, DELETE HISTORY";

/// Statements creating (or replacing) a role with the privileges of a database owner
/// ([`DATABASE_PRIVILEGES`] on every database but the server's own). `CREATE OR REPLACE`
/// also drops whatever the role was granted before.
pub fn upsert_sql(role: &RoleDef) -> Vec<String> {
    let account = format!("'{}'@'%'", role.name);
    let mut sql = vec![format!(
        "CREATE OR REPLACE USER {account} IDENTIFIED BY PASSWORD '{}'",
        role.stored_hash
    )];
    for schema in SYSTEM_SCHEMAS {
        sql.push(format!("GRANT SHOW VIEW ON `{schema}`.* TO {account}"));
    }
    sql.push(format!("GRANT {DATABASE_PRIVILEGES} ON `%`.* TO {account}"));
    sql
}

/// Statement removing a role.
pub fn drop_sql(name: &str) -> String {
    format!("DROP USER IF EXISTS '{name}'@'%'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_hash() {
        // SELECT PASSWORD('password') in MariaDB.
        let h = stored_hash(b"password");
        assert_eq!(
            format_stored_hash(&h),
            "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
        );
        assert_eq!(parse_stored_hash(&format_stored_hash(&h)), Some(h));
        assert_eq!(parse_stored_hash("2470"), None);
        assert_eq!(parse_stored_hash("*zz"), None);
    }

    #[test]
    fn names() {
        assert!(validate_role_name("app").is_ok());
        assert!(validate_role_name("app user.1").is_ok());
        for bad in [
            "",
            "root",
            "ROOT",
            "mysql",
            "mariadb.sys",
            "PUBLIC",
            "a'b",
            "a\\b",
            "a\0b",
        ] {
            assert!(validate_role_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_role_name(&"x".repeat(81)).is_err());
        assert!(validate_role_name(&"x".repeat(80)).is_ok());
        assert!(validate_role_name(" app").is_err());
        assert!(validate_role_name("app ").is_err());
        assert!(validate_password("").is_err());
        assert!(validate_role_name("caf\u{e9}").is_ok());
        for outside_bmp in ["\u{1F600}", "a\u{1F680}", "\u{10000}"] {
            let err = validate_role_name(outside_bmp).expect_err(outside_bmp);
            assert!(err.contains("utf8mb3"), "{err}");
        }
    }

    #[test]
    fn roles_get_no_global_privilege() {
        let sql = upsert_sql(&RoleDef {
            name: "app".into(),
            stored_hash: "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19".into(),
        });
        assert!(sql[0].starts_with("CREATE OR REPLACE USER 'app'@'%'"));
        assert!(sql.iter().all(|s| !s.contains("*.*")), "{sql:?}");
        assert!(sql.iter().all(|s| !s.contains("ALL")), "{sql:?}");
        for denied in [
            "FILE",
            "SUPER",
            "SHUTDOWN",
            "PROCESS",
            "BINLOG",
            "GRANT OPTION",
        ] {
            assert!(!DATABASE_PRIVILEGES.contains(denied), "{denied}");
        }
    }
}
