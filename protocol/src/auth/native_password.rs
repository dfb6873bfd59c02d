// https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_authentication_methods_native_password_authentication.html
// https://mariadb.com/kb/en/connection/#mysql_native_password-plugin

//! `mysql_native_password` math, as pure functions.
//!
//! ```text
//! H1 = SHA1(password)            what the client derives
//! H2 = SHA1(H1)                  what the server stores ("*" + hex in mysql.user)
//! token = H1 XOR SHA1(scramble || H2)
//! check: SHA1(token XOR SHA1(scramble || H2)) == H2
//! ```
//!
//! Holding only H2 (never the password), a proxy can verify a client's token, which recovers
//! H1, and then sign any other scramble with H1: that is how it logs in to the backend with
//! the backend's scramble on the client's behalf.
//!
//! An empty password is special: clients send an empty token, not `scramble_response(b"", ..)`,
//! and servers accept an empty token only for accounts without a password. Callers handle
//! that case before using these functions.

use sha1::{Digest, Sha1};

/// Length of a SHA-1 digest, the token and both hashes.
pub const HASH_LEN: usize = 20;

fn sha1(parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn xor(a: &[u8; HASH_LEN], b: &[u8; HASH_LEN]) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

/// The scramble MySQL hashes: the first 20 bytes of the auth data, which also drops the NUL
/// of a 21-byte `scramble + NUL`.
fn effective_scramble(scramble: &[u8]) -> &[u8] {
    scramble.get(..HASH_LEN).unwrap_or(scramble)
}

/// Constant-time equality, so verification time does not leak how much of a guess matched
/// (`subtle`, whose barriers keep the compiler from turning it back into an early exit).
/// Also what the admin API compares token digests with.
pub fn ct_eq(a: &[u8; HASH_LEN], b: &[u8; HASH_LEN]) -> bool {
    subtle::ConstantTimeEq::ct_eq(&a[..], &b[..]).into()
}

/// H2 = SHA1(SHA1(password)), the value stored by the server.
pub fn stored_hash(password: &[u8]) -> [u8; 20] {
    sha1(&[&sha1(&[password])])
}

/// The client's token: SHA1(pw) XOR SHA1(scramble || SHA1(SHA1(pw))).
/// For an empty password callers send an empty token instead (see module docs).
pub fn scramble_response(password: &[u8], scramble: &[u8]) -> [u8; 20] {
    let h1 = sha1(&[password]);
    sign_with_hash1(&h1, scramble, &sha1(&[&h1]))
}

/// Verifies a client token against the stored hash and returns H1 = SHA1(pw) on success.
/// The token must be exactly 20 bytes.
pub fn verify_and_recover(token: &[u8], scramble: &[u8], stored: &[u8; 20]) -> Option<[u8; 20]> {
    let token: &[u8; HASH_LEN] = token.try_into().ok()?;
    let h1 = xor(token, &sha1(&[effective_scramble(scramble), stored]));
    ct_eq(&sha1(&[&h1]), stored).then_some(h1)
}

/// Signs `scramble` with a recovered H1: H1 XOR SHA1(scramble || H2).
pub fn sign_with_hash1(hash1: &[u8; 20], scramble: &[u8], stored: &[u8; 20]) -> [u8; 20] {
    xor(hash1, &sha1(&[effective_scramble(scramble), stored]))
}

/// Parses `*` + 40 hex digits (either case), the form of `PASSWORD()` and `mysql.user`.
pub fn parse_stored_hash(text: &str) -> Option<[u8; 20]> {
    let hex = text.strip_prefix('*')?.as_bytes();
    if hex.len() != 2 * HASH_LEN {
        return None;
    }
    let mut out = [0u8; HASH_LEN];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        let (hi, lo) = match pair {
            [hi, lo] => (digit(*hi)?, digit(*lo)?),
            _ => return None,
        };
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Formats a stored hash as `*` + 40 uppercase hex digits, like MariaDB's `PASSWORD()`.
pub fn format_stored_hash(hash: &[u8; 20]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(1 + 2 * HASH_LEN);
    s.push('*');
    for b in hash {
        let _ = write!(s, "{b:02X}");
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stored_hash_matches_mariadb_password_function() {
        // `SELECT PASSWORD('secret'), PASSWORD('pw')` on MariaDB 10.11.19.
        assert_eq!(
            format_stored_hash(&stored_hash(b"secret")),
            "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"
        );
        assert_eq!(
            format_stored_hash(&stored_hash(b"pw")),
            "*D821809F681A40A6E379B50D0463EFAE20BDD122"
        );
    }

    #[test]
    fn real_client_token_verifies() {
        // libmariadb logging in as u/pw against the captured greeting (scramble
        // "'mpkGb6%Vbjon\_I1U9["); the server accepted this token.
        let scramble = b"'mpkGb6%Vbjon\\_I1U9[";
        let token = hex::decode("068e35edcade8eb8eabb6682d45444f5e5ec3986").unwrap();
        assert_eq!(scramble_response(b"pw", scramble).to_vec(), token);
        let stored = parse_stored_hash("*D821809F681A40A6E379B50D0463EFAE20BDD122").unwrap();
        let h1 = verify_and_recover(&token, scramble, &stored).unwrap();
        assert_eq!(h1, sha1(&[b"pw"]));
        // The NUL-terminated 21-byte form is treated the same.
        let mut with_nul = scramble.to_vec();
        with_nul.push(0);
        assert_eq!(verify_and_recover(&token, &with_nul, &stored), Some(h1));
        // Wrong password, wrong length.
        let bad = scramble_response(b"pW", scramble);
        assert_eq!(verify_and_recover(&bad, scramble, &stored), None);
        assert_eq!(verify_and_recover(&token[..19], scramble, &stored), None);
        assert_eq!(verify_and_recover(&[], scramble, &stored), None);
    }

    #[test]
    fn real_connector_python_token_verifies() {
        // mysql-connector-python's login token for u/pw against scramble
        // "`MA?WvnFSK`$,Q3Lb+Ju" (captured from MariaDB 10.11).
        let scramble = b"`MA?WvnFSK`$,Q3Lb+Ju";
        let token = hex::decode("7ead6b0154fadfb989eddd21c3f837886945567a").unwrap();
        let h1 = verify_and_recover(&token, scramble, &stored_hash(b"pw")).unwrap();
        assert_eq!(
            sign_with_hash1(&h1, scramble, &stored_hash(b"pw")).to_vec(),
            token
        );
    }

    #[test]
    fn re_signing_a_new_scramble() {
        let stored = stored_hash(b"secret");
        let s1 = b"abcdefghijklmnopqrst";
        let s2 = b"ZYXWVUTSRQPONMLKJIHG";
        let h1 = verify_and_recover(&scramble_response(b"secret", s1), s1, &stored).unwrap();
        assert_eq!(
            sign_with_hash1(&h1, s2, &stored),
            scramble_response(b"secret", s2)
        );
    }

    #[test]
    fn parse_and_format() {
        let text = "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7";
        let h = parse_stored_hash(text).unwrap();
        assert_eq!(format_stored_hash(&h), text);
        assert_eq!(parse_stored_hash(&text.to_lowercase()), Some(h));
        assert_eq!(parse_stored_hash(&text[1..]), None);
        assert_eq!(parse_stored_hash(&text[..40]), None);
        assert_eq!(
            parse_stored_hash("*14E65567ABDB5135D0CFD9A70B3032C179A49EG7"),
            None
        );
        assert_eq!(
            parse_stored_hash("*+4E65567ABDB5135D0CFD9A70B3032C179A49EE7"),
            None
        );
        assert_eq!(
            parse_stored_hash("*é4E65567ABDB5135D0CFD9A70B3032C179A49E"),
            None
        );
        assert_eq!(parse_stored_hash(""), None);
    }

    proptest! {
        #[test]
        fn token_round_trip(pw in proptest::collection::vec(any::<u8>(), 1..40),
                            scramble in proptest::collection::vec(any::<u8>(), 20)) {
            let stored = stored_hash(&pw);
            let token = scramble_response(&pw, &scramble);
            prop_assert_eq!(verify_and_recover(&token, &scramble, &stored), Some(sha1(&[&pw])));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,45}") {
            let _ = parse_stored_hash(&s);
        }
    }
}
