//! Sans-I/O MySQL/MariaDB wire protocol for the doze proxy.
//!
//! This crate turns bytes into packets and packets into bytes; it never touches a socket.
//! Framing is [`parse_header`] and [`write_packet`]: the proxy reads connection-phase packets
//! with exact-length reads on top of them (a TLS ClientHello may follow an SSLRequest in the
//! same segment and must stay in the socket) and walks headers in place in the relay.
//! [`PacketCodec`], a `tokio_util::codec` over the same functions, frames whole streams for the
//! benchmarks and the fuzz targets.
//!
//! Layout, one packet type per file, grouped by protocol phase:
//!
//! - [`codec`]: framing (4-byte headers, 16 MiB fragment split/join, size limit).
//! - [`buf`]: checked [`Reader`] and writer helpers for the protocol's primitive types.
//! - [`capabilities`]: MySQL and MariaDB capability flags in one `u64`.
//! - [`connect`]: connection phase: [`Handshake`], [`SslRequest`], [`HandshakeResponse`],
//!   [`AuthSwitchRequest`], [`AuthMoreData`].
//! - [`command`]: command bytes and [`ChangeUser`].
//! - [`response`]: [`OkPacket`], [`ErrPacket`], [`EofPacket`].
//! - [`auth::native_password`]: `mysql_native_password` hashing, verification and re-signing.
//!
//! Decoders take a payload (no frame header) and never panic: every malformed, truncated or
//! hostile input yields a [`ProtocolError`]. Encoders append a payload to a `BytesMut`;
//! [`write_packet`] or the codec adds the header. Packets whose layout depends on negotiated
//! flags take [`Capabilities`] as a parameter.

pub mod auth;
pub mod buf;
pub mod capabilities;
pub mod codec;
pub mod command;
pub mod connect;
pub mod error;
pub mod response;

pub use auth::native_password;
pub use buf::{BytesMutExt, Reader, put_lenenc_bytes, put_lenenc_int, put_nul_str};
pub use capabilities::Capabilities;
pub use codec::{MAX_FRAGMENT, Packet, PacketCodec, parse_header, write_packet};
pub use command::*;
pub use connect::{
    AuthMoreData, AuthSwitchRequest, Handshake, HandshakeResponse, MAX_CONNECT_ATTRS,
    SSL_REQUEST_LEN, SslRequest, is_ssl_request,
};
pub use error::{ProtocolError, Result};
pub use response::{EofPacket, ErrPacket, OkPacket, is_progress_report, status};
