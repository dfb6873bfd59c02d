//! Database roles: name rules, password hashing and the SQL that puts a role into a compute.
//!
//! Only SHA1(SHA1(password)) is ever stored (MariaDB's `mysql_native_password` form, written
//! `*` + 40 upper-case hex digits); the password itself is neither stored, logged nor returned.

use sha1::{Digest, Sha1};

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
/// not one of MariaDB's reserved accounts.
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

/// SHA1(SHA1(password)), what `mysql_native_password` stores.
pub fn stored_hash(password: &[u8]) -> [u8; 20] {
    let first = Sha1::digest(password);
    Sha1::digest(first).into()
}

/// `*` + 40 upper-case hex digits.
pub fn format_stored_hash(hash: &[u8; 20]) -> String {
    format!("*{}", hex::encode_upper(hash))
}

/// The 20 bytes of a `*HEX` hash.
pub fn parse_stored_hash(text: &str) -> Option<[u8; 20]> {
    let hex_part = text.strip_prefix('*')?;
    let bytes = hex::decode(hex_part).ok()?;
    bytes.try_into().ok()
}

/// Statements creating (or replacing) a role with every privilege.
pub fn upsert_sql(role: &RoleDef) -> [String; 2] {
    [
        format!(
            "CREATE OR REPLACE USER '{}'@'%' IDENTIFIED BY PASSWORD '{}'",
            role.name, role.stored_hash
        ),
        format!("GRANT ALL PRIVILEGES ON *.* TO '{}'@'%'", role.name),
    ]
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
    }
}
