//! Walks the packet headers of the client-to-backend stream without copying or parsing
//! payloads, to find the start of the commands the proxy handles itself: COM_CHANGE_USER (the
//! client signs it with the proxy's scramble, the backend expects its own), COM_QUIT (the
//! backend session may go back to the pool), and KILL (COM_PROCESS_KILL, or a short COM_QUERY
//! whose text starts with `KILL`: the ids it names are doze's).
//!
//! A packet starts a command when its sequence id is 0, unless it continues the previous one:
//! after a 0xFFFFFF-byte fragment, or in a LOAD DATA LOCAL INFILE stream whose sequence ids wrap
//! from 255 to 0 (the previous packet then had seq 255 and was not the empty end-of-file packet).

use doze_protocol::{
    COM_CHANGE_USER, COM_PROCESS_KILL, COM_QUERY, COM_QUIT, COM_SET_OPTION, MAX_FRAGMENT,
};

/// Longest COM_QUERY payload looked at for a KILL statement (`KILL HARD CONNECTION
/// 4294967295` and some spaces fit). Longer queries pass without a look.
pub const MAX_KILL_QUERY: usize = 96;

/// A command the proxy handles itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    ChangeUser,
    Quit,
    /// COM_PROCESS_KILL, or a COM_QUERY starting with `KILL`.
    Kill,
}

/// What a scan found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// The first `n` bytes may be forwarded. Bytes after them are the start of a packet that
    /// must be held back until it is known whether the proxy handles it (a header, or a short
    /// query that may be a KILL).
    Forward(usize),
    /// The first `at` bytes may be forwarded; a command the proxy handles starts at `at`.
    Intercept { at: usize, command: Command },
}

/// Header-walking state carried across reads.
#[derive(Clone, Debug, Default)]
pub struct CommandWalker {
    /// Payload bytes of the current packet still to pass.
    remaining: usize,
    prev_seq: u8,
    prev_len: usize,
    /// A COM_SET_OPTION passed (it is relayed, not handled).
    set_option: bool,
}

impl CommandWalker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans `data`, the bytes that follow everything scanned before.
    pub fn scan(&mut self, data: &[u8]) -> Scan {
        let mut pos = 0;
        loop {
            let skip = self.remaining.min(data.len() - pos);
            self.remaining -= skip;
            pos += skip;
            let rest = &data[pos..];
            if rest.len() < 4 {
                return Scan::Forward(pos);
            }
            let (len, seq) = doze_protocol::parse_header([rest[0], rest[1], rest[2], rest[3]]);
            if self.starts_command(seq) && len > 0 {
                let command = match rest.get(4) {
                    None => return Scan::Forward(pos),
                    Some(&COM_CHANGE_USER) => Some(Command::ChangeUser),
                    Some(&COM_QUIT) => Some(Command::Quit),
                    Some(&COM_PROCESS_KILL) => Some(Command::Kill),
                    Some(&COM_SET_OPTION) => {
                        self.set_option = true;
                        None
                    }
                    Some(&COM_QUERY) if len <= MAX_KILL_QUERY => {
                        // Held until whole: short, and only its first word is read.
                        let Some(payload) = rest.get(4..4 + len) else {
                            return Scan::Forward(pos);
                        };
                        is_kill_statement(&payload[1..]).then_some(Command::Kill)
                    }
                    Some(_) => None,
                };
                if let Some(command) = command {
                    return Scan::Intercept { at: pos, command };
                }
            }
            self.prev_seq = seq;
            self.prev_len = len;
            self.remaining = len;
            pos += 4;
        }
    }

    fn starts_command(&self, seq: u8) -> bool {
        let continues_fragment = self.prev_len == MAX_FRAGMENT;
        let continues_wrapped_stream = self.prev_seq == 255 && self.prev_len > 0;
        seq == 0 && !continues_fragment && !continues_wrapped_stream
    }

    /// The proxy consumed a whole intercepted packet: the next one starts a command.
    pub fn after_intercept(&mut self) {
        *self = Self {
            set_option: self.set_option,
            ..Self::default()
        };
    }

    /// Whether the client sent COM_SET_OPTION. It switches the session's multi-statements
    /// flag, which COM_RESET_CONNECTION keeps (MariaDB resets session variables, not the
    /// client's capability flags), so such a session must never serve another client.
    pub fn saw_set_option(&self) -> bool {
        self.set_option
    }

    /// Whether everything scanned so far ends at a command boundary that is not inside a
    /// LOAD DATA LOCAL INFILE upload: the client's last packet was a whole command.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.prev_seq == 0 && self.prev_len < MAX_FRAGMENT
    }
}

/// Whether a query text starts with the word KILL (after spaces), in any case.
pub fn is_kill_statement(text: &[u8]) -> bool {
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let rest = &text[start..];
    rest.len() > 4 && rest[..4].eq_ignore_ascii_case(b"kill") && rest[4].is_ascii_whitespace()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn finds_change_user_after_queries() {
        let mut stream = packet(0, b"\x03SELECT 1");
        let at = stream.len();
        stream.extend(packet(0, b"\x11user\0"));
        let mut w = CommandWalker::new();
        assert_eq!(
            w.scan(&stream),
            Scan::Intercept {
                at,
                command: Command::ChangeUser
            }
        );
    }

    #[test]
    fn set_option_is_relayed_and_remembered() {
        let mut stream = packet(0, b"\x03SELECT 1");
        stream.extend(packet(0, b"\x1b\x00\x00"));
        stream.extend(packet(0, b"\x03SELECT 2"));
        let mut w = CommandWalker::new();
        assert_eq!(w.scan(&stream), Scan::Forward(stream.len()));
        assert!(w.saw_set_option());
        // Remembered across an intercepted command.
        w.after_intercept();
        assert!(w.saw_set_option());
        // The option byte inside another command's payload is not one.
        let mut other = CommandWalker::new();
        let inside = packet(0, b"\x03\x1b\x1b");
        assert_eq!(other.scan(&inside), Scan::Forward(inside.len()));
        assert!(!other.saw_set_option());
    }

    #[test]
    fn change_user_byte_inside_payload_is_ignored() {
        let stream = packet(0, b"\x03\x11\x11\x11");
        let mut w = CommandWalker::new();
        assert_eq!(w.scan(&stream), Scan::Forward(stream.len()));
    }

    #[test]
    fn split_header_is_held_back() {
        let first = packet(0, b"\x03SELECT 1");
        let second = packet(0, b"\x11u\0");
        let mut stream = first.clone();
        stream.extend_from_slice(&second[..4]);
        let mut w = CommandWalker::new();
        assert_eq!(w.scan(&stream), Scan::Forward(first.len()));
        // The held header comes again with the rest.
        assert_eq!(
            w.scan(&second),
            Scan::Intercept {
                at: 0,
                command: Command::ChangeUser
            }
        );
    }

    #[test]
    fn payload_split_across_reads() {
        let p = packet(0, &[0x03; 100]);
        let mut w = CommandWalker::new();
        assert_eq!(w.scan(&p[..50]), Scan::Forward(50));
        assert_eq!(w.scan(&p[50..]), Scan::Forward(p.len() - 50));
        assert_eq!(
            w.scan(&packet(0, b"\x11x")),
            Scan::Intercept {
                at: 0,
                command: Command::ChangeUser
            }
        );
    }

    #[test]
    fn load_data_wrapping_to_seq_zero_is_not_a_command() {
        let mut w = CommandWalker::new();
        let mut stream = packet(0, b"\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t");
        for seq in 2..=255u8 {
            stream.extend(packet(seq, b"row\n"));
        }
        // Seq wraps: a data packet at seq 0 that happens to begin with 0x11.
        stream.extend(packet(0, b"\x11data"));
        stream.extend(packet(1, b""));
        assert_eq!(w.scan(&stream), Scan::Forward(stream.len()));
        // After the empty end-of-file packet, seq 0 is a command again.
        assert_eq!(
            w.scan(&packet(0, b"\x11u")),
            Scan::Intercept {
                at: 0,
                command: Command::ChangeUser
            }
        );
    }

    #[test]
    fn quit_and_kill_are_found_and_other_queries_pass() {
        let mut w = CommandWalker::new();
        let select = packet(0, b"\x03SELECT 1");
        assert_eq!(w.scan(&select), Scan::Forward(select.len()));
        assert_eq!(
            w.scan(&packet(0, b"\x03  kill QUERY 2147483649")),
            Scan::Intercept {
                at: 0,
                command: Command::Kill
            }
        );
        let mut w = CommandWalker::new();
        assert_eq!(
            w.scan(&packet(0, b"\x0c\x01\x00\x00\x80")),
            Scan::Intercept {
                at: 0,
                command: Command::Kill
            }
        );
        let mut w = CommandWalker::new();
        assert_eq!(
            w.scan(&packet(0, b"\x01")),
            Scan::Intercept {
                at: 0,
                command: Command::Quit
            }
        );
        // A word that merely starts with "kill", and a long query, are not KILL statements.
        let mut w = CommandWalker::new();
        let killer = packet(0, b"\x03KILLER");
        assert_eq!(w.scan(&killer), Scan::Forward(killer.len()));
        let mut long = b"\x03KILL ".to_vec();
        long.extend(std::iter::repeat_n(b' ', MAX_KILL_QUERY));
        let long = packet(0, &long);
        assert_eq!(w.scan(&long), Scan::Forward(long.len()));
    }

    #[test]
    fn a_short_query_is_held_until_whole() {
        let mut w = CommandWalker::new();
        let kill = packet(0, b"\x03KILL 7");
        assert_eq!(w.scan(&kill[..7]), Scan::Forward(0));
        assert_eq!(
            w.scan(&kill),
            Scan::Intercept {
                at: 0,
                command: Command::Kill
            }
        );
    }

    #[test]
    fn boundary_is_not_inside_load_data() {
        let mut w = CommandWalker::new();
        w.scan(&packet(0, b"\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t"));
        assert!(w.at_boundary());
        w.scan(&packet(2, b"row\n"));
        assert!(!w.at_boundary());
    }

    #[test]
    fn continuation_fragment_at_seq_zero_is_not_a_command() {
        let mut w = CommandWalker::new();
        // A fragment of exactly MAX_FRAGMENT bytes, header only, with seq 255.
        let header = [0xff, 0xff, 0xff, 255];
        assert_eq!(w.scan(&header), Scan::Forward(4));
        let mut rest = vec![0x03; MAX_FRAGMENT];
        rest.extend(packet(0, b"\x11tail"));
        assert_eq!(w.scan(&rest), Scan::Forward(rest.len()));
    }
}
