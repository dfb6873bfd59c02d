//! Names a client sent (user, database, project, SNI) as doze shows them in logs and ERR
//! packets: escaped, so a newline or a terminal escape cannot forge a log line, and cut short,
//! so a 60 KB user name costs a few bytes, not a 120 KB log line.

/// Characters of a client-supplied name that are shown.
pub const SHOWN_CHARS: usize = 64;

/// For logs: the name quoted and escaped as Rust's `{:?}` does (`"a\nb"`), cut after
/// [`SHOWN_CHARS`] characters with `…` and the full length in bytes.
pub fn for_log(name: &str) -> String {
    let (head, cut) = head(name);
    if cut {
        format!("{head:?}…({} bytes)", name.len())
    } else {
        format!("{head:?}")
    }
}

/// For messages sent to the client (inside MariaDB's own quotes): escaped like
/// [`for_log`] but without the surrounding quotes, cut with `…`.
pub fn for_message(name: &str) -> String {
    let (head, cut) = head(name);
    let escaped: String = head.escape_debug().collect();
    if cut {
        format!("{escaped}…")
    } else {
        escaped
    }
}

/// Longest user name a role can have (doze's role names are 1-80 characters).
pub const MAX_USER_CHARS: usize = 80;
/// Longest database name MariaDB accepts.
pub const MAX_DATABASE_CHARS: usize = 64;

/// Refuses a routed user or database name that no compute could hold: too long, or with
/// control characters. Checked before any lookup, so junk names cost no cache entry.
pub fn check_login_names(user: &str, database: Option<&str>) -> Result<(), &'static str> {
    if user.chars().count() > MAX_USER_CHARS || user.chars().any(char::is_control) {
        return Err("the user name is longer than 80 characters or has control characters");
    }
    if let Some(db) = database
        && (db.chars().count() > MAX_DATABASE_CHARS || db.chars().any(char::is_control))
    {
        return Err("the database name is longer than 64 characters or has control characters");
    }
    Ok(())
}

fn head(name: &str) -> (&str, bool) {
    match name.char_indices().nth(SHOWN_CHARS) {
        Some((at, _)) => (&name[..at], true),
        None => (name, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_and_escapes_stay_inside_one_line() {
        let forged = "app\n2026-01-01T00:00:00Z INFO session started user=root\u{1b}[2J";
        for shown in [for_log(forged), for_message(forged)] {
            assert!(!shown.contains('\n'), "{shown}");
            assert!(!shown.contains('\u{1b}'), "{shown}");
            assert!(shown.contains("\\n"), "{shown}");
        }
        assert_eq!(for_log("shop.app"), "\"shop.app\"");
        assert_eq!(for_message("app"), "app");
    }

    #[test]
    fn login_names_are_bounded() {
        assert!(check_login_names("app", Some("shop")).is_ok());
        assert!(check_login_names(&"x".repeat(80), None).is_ok());
        assert!(check_login_names(&"x".repeat(81), None).is_err());
        assert!(check_login_names("a\nb", None).is_err());
        assert!(check_login_names("app", Some(&"d".repeat(65))).is_err());
        assert!(check_login_names("app", Some("x\n--forged")).is_err());
    }

    #[test]
    fn long_names_are_cut() {
        let long = "x".repeat(60_000);
        let shown = for_log(&long);
        assert!(shown.len() < 120, "{}", shown.len());
        assert!(shown.ends_with("…(60000 bytes)"), "{shown}");
        assert!(for_message(&long).len() <= SHOWN_CHARS + 3);
        let multibyte = "é".repeat(100);
        assert_eq!(for_message(&multibyte).chars().count(), SHOWN_CHARS + 1);
    }
}
