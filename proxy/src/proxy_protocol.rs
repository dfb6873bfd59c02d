//! PROXY protocol v2 header for the backend leg, so MariaDB (with doze's address in
//! `proxy_protocol_networks`) logs and matches `user@host` with the real client address.
//!
//! Spec: <https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>, section 2.2.

use std::net::SocketAddr;

const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
const TCP_V4: u8 = 0x11;
const TCP_V6: u8 = 0x21;

/// The header announcing a TCP connection from `client` to `local`.
pub fn v2_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_PROXY);
    match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V4(l)) => {
            out.push(TCP_V4);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&c.ip().octets());
            out.extend_from_slice(&l.ip().octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&l.port().to_be_bytes());
        }
        (c, l) => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
                SocketAddr::V6(v6) => *v6.ip(),
            };
            out.push(TCP_V6);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(c).octets());
            out.extend_from_slice(&v6(l).octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&l.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_layout() {
        let client: SocketAddr = "10.1.2.3:40000".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:6033".parse().expect("addr");
        let h = v2_header(client, local);
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[10, 1, 2, 3]);
        assert_eq!(&h[20..24], &[127, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 40000);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 6033);
        assert_eq!(h.len(), 28);
    }

    #[test]
    fn mixed_families_use_ipv6() {
        let client: SocketAddr = "[::1]:1".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let h = v2_header(client, local);
        assert_eq!(h[13], 0x21);
        assert_eq!(h.len(), 16 + 36);
    }
}
