//! Generic Response Packets
//!
//! <https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_response_packets.html>

mod eof;
mod err;
mod ok;

pub use eof::{EOF_HEADER, EofPacket};
pub use err::{DEFAULT_SQL_STATE, ERR_HEADER, ErrPacket, PROGRESS_REPORT_CODE, is_progress_report};
pub use ok::{OK_HEADER, OkPacket};

/// Server status flags carried in OK and EOF packets.
///
/// <https://dev.mysql.com/doc/dev/mysql-server/latest/mysql__com_8h.html>
pub mod status {
    /// A transaction is open.
    pub const SERVER_STATUS_IN_TRANS: u16 = 0x0001;
    /// Autocommit is on.
    pub const SERVER_STATUS_AUTOCOMMIT: u16 = 0x0002;
    /// More result sets follow.
    pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
    /// The session state changed; the OK packet carries session-state information.
    pub const SERVER_SESSION_STATE_CHANGED: u16 = 0x4000;
}
