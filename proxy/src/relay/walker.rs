//! Walks the packet headers of the client-to-backend stream without copying or parsing
//! payloads, to find the start of a COM_CHANGE_USER, the one command the proxy must rewrite
//! (the client signs it with the proxy's scramble, the backend expects its own).
//!
//! A packet starts a command when its sequence id is 0, unless it continues the previous one:
//! after a 0xFFFFFF-byte fragment, or in a LOAD DATA LOCAL INFILE stream whose sequence ids wrap
//! from 255 to 0 (the previous packet then had seq 255 and was not the empty end-of-file packet).

use doze_protocol::{COM_CHANGE_USER, MAX_FRAGMENT};

/// What a scan found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// The first `n` bytes may be forwarded. Bytes after them (fewer than 5) are the start of a
    /// packet header that must be held back until the command byte is known.
    Forward(usize),
    /// The first `at` bytes may be forwarded; a COM_CHANGE_USER packet starts at `at`.
    ChangeUser { at: usize },
}

/// Header-walking state carried across reads.
#[derive(Clone, Debug, Default)]
pub struct CommandWalker {
    /// Payload bytes of the current packet still to pass.
    remaining: usize,
    prev_seq: u8,
    prev_len: usize,
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
                match rest.get(4) {
                    None => return Scan::Forward(pos),
                    Some(&COM_CHANGE_USER) => return Scan::ChangeUser { at: pos },
                    Some(_) => {}
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
        *self = Self::default();
    }
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
        assert_eq!(w.scan(&stream), Scan::ChangeUser { at });
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
        assert_eq!(w.scan(&second), Scan::ChangeUser { at: 0 });
    }

    #[test]
    fn payload_split_across_reads() {
        let p = packet(0, &[0x03; 100]);
        let mut w = CommandWalker::new();
        assert_eq!(w.scan(&p[..50]), Scan::Forward(50));
        assert_eq!(w.scan(&p[50..]), Scan::Forward(p.len() - 50));
        assert_eq!(w.scan(&packet(0, b"\x11x")), Scan::ChangeUser { at: 0 });
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
        assert_eq!(w.scan(&packet(0, b"\x11u")), Scan::ChangeUser { at: 0 });
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
