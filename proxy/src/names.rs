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
