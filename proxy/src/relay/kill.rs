//! KILL in a relayed session. Clients name sessions by the id in doze's greeting (the mariadb
//! command line's Ctrl+C sends `KILL QUERY <that id>` over a second connection; Connector/J and
//! mysql2 time queries out the same way), or by a backend thread id `CONNECTION_ID()` showed
//! them. doze's ids are from a range MariaDB's thread ids never reach (see
//! [`crate::accept::FIRST_CONNECTION_ID`]), so a number says which kind it is.
//!
//! The statement forms doze carries out itself: COM_PROCESS_KILL, and
//! `KILL [HARD | SOFT] [CONNECTION | QUERY] <id>`. Other KILL statements (`KILL QUERY ID`,
//! `KILL USER`) go to the compute unchanged, which applies its own rules to its own ids.

use doze_protocol::{COM_PROCESS_KILL, ErrPacket};

/// What a client asked to kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KillRequest {
    pub id: u64,
    /// KILL QUERY: the statement only, the session stays.
    pub query_only: bool,
}

/// The request in a COM_PROCESS_KILL or COM_QUERY payload, or `None` for the forms the
/// compute handles itself.
pub fn parse(payload: &[u8]) -> Option<KillRequest> {
    match payload.split_first()? {
        (&COM_PROCESS_KILL, id) => {
            let id: [u8; 4] = id.get(..4)?.try_into().ok()?;
            Some(KillRequest {
                id: u64::from(u32::from_le_bytes(id)),
                query_only: false,
            })
        }
        (_, text) => parse_statement(std::str::from_utf8(text).ok()?),
    }
}

fn parse_statement(text: &str) -> Option<KillRequest> {
    let text = text.trim().trim_end_matches(';').trim_end();
    let mut words = text.split_ascii_whitespace().peekable();
    if !words.next()?.eq_ignore_ascii_case("kill") {
        return None;
    }
    if words
        .peek()
        .is_some_and(|w| w.eq_ignore_ascii_case("hard") || w.eq_ignore_ascii_case("soft"))
    {
        words.next();
    }
    let mut query_only = false;
    match words.peek() {
        Some(w) if w.eq_ignore_ascii_case("query") => {
            query_only = true;
            words.next();
        }
        Some(w) if w.eq_ignore_ascii_case("connection") => {
            words.next();
        }
        _ => {}
    }
    // Some drivers read the connection id as a signed 32-bit number (doze's ids are above
    // 2^31), and send it back negative.
    let word = words.next()?;
    let id = match word.parse::<u64>() {
        Ok(id) => id,
        Err(_) => u64::from(word.parse::<i32>().ok().filter(|v| *v < 0)?.cast_unsigned()),
    };
    if words.next().is_some() {
        return None;
    }
    Some(KillRequest { id, query_only })
}

/// MariaDB's answer to a KILL of a session the user may not see.
pub fn unknown_thread(id: u64) -> ErrPacket {
    ErrPacket::new(1094, "HY000", format!("Unknown thread id: {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Option<KillRequest> {
        let mut p = vec![doze_protocol::COM_QUERY];
        p.extend_from_slice(text.as_bytes());
        parse(&p)
    }

    #[test]
    fn statement_forms() {
        let k = |id, query_only| Some(KillRequest { id, query_only });
        assert_eq!(q("KILL 12"), k(12, false));
        assert_eq!(q("kill query 2147483649;"), k(2147483649, true));
        assert_eq!(q(" KILL HARD CONNECTION 7 "), k(7, false));
        assert_eq!(q("KILL SOFT QUERY 7"), k(7, true));
        assert_eq!(q("KILL QUERY ID 7"), None);
        assert_eq!(q("KILL USER app"), None);
        assert_eq!(q("KILL"), None);
        assert_eq!(q("KILL 7 8"), None);
        assert_eq!(q("KILL -2147483647"), k(0x8000_0001, false));
        assert_eq!(q("KILL 1.5"), None);
    }

    #[test]
    fn com_process_kill() {
        assert_eq!(
            parse(&[COM_PROCESS_KILL, 1, 0, 0, 0x80]),
            Some(KillRequest {
                id: 0x8000_0001,
                query_only: false
            })
        );
        assert_eq!(parse(&[COM_PROCESS_KILL, 1]), None);
        assert_eq!(parse(&[]), None);
    }
}
