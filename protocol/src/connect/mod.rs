//! Connection Phase
//!
//! <https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase.html>

mod attributes;
mod auth_switch;
mod handshake;
mod handshake_response;
mod ssl_request;

pub use attributes::MAX_CONNECT_ATTRS;
pub(crate) use attributes::{put_attributes, read_attributes};
pub use auth_switch::{AUTH_MORE_DATA_HEADER, AUTH_SWITCH_HEADER, AuthMoreData, AuthSwitchRequest};
pub use handshake::Handshake;
pub use handshake_response::HandshakeResponse;
pub use ssl_request::{SSL_REQUEST_LEN, SslRequest, is_ssl_request};

#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) use super::handshake::tests::arb_caps;
}
