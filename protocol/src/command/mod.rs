//! Command Phase
//!
//! <https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_command_phase.html>
//! <https://mariadb.com/kb/en/2-text-protocol/>
//!
//! The first payload byte of every client packet in the command phase names the command.
//! The proxy interprets only a few (quit, change user); the rest pass through, so only their
//! command bytes are defined here.

mod change_user;

pub use change_user::ChangeUser;

/// Close the connection.
pub const COM_QUIT: u8 = 0x01;
/// Change the default database.
pub const COM_INIT_DB: u8 = 0x02;
/// Text-protocol query.
pub const COM_QUERY: u8 = 0x03;
/// List the columns of a table (deprecated).
pub const COM_FIELD_LIST: u8 = 0x04;
/// Get server statistics.
pub const COM_STATISTICS: u8 = 0x09;
/// List threads (deprecated).
pub const COM_PROCESS_INFO: u8 = 0x0a;
/// Kill a connection or query (deprecated; `KILL` via COM_QUERY instead).
pub const COM_PROCESS_KILL: u8 = 0x0c;
/// Dump debug info to the server log.
pub const COM_DEBUG: u8 = 0x0d;
/// Liveness check.
pub const COM_PING: u8 = 0x0e;
/// Re-authenticate on an open connection.
pub const COM_CHANGE_USER: u8 = 0x11;
/// Binlog dump (replication).
pub const COM_BINLOG_DUMP: u8 = 0x12;
/// Register a replica.
pub const COM_REGISTER_SLAVE: u8 = 0x15;
/// Prepare a statement.
pub const COM_STMT_PREPARE: u8 = 0x16;
/// Execute a prepared statement.
pub const COM_STMT_EXECUTE: u8 = 0x17;
/// Send long data for a prepared statement parameter.
pub const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
/// Deallocate a prepared statement (no response).
pub const COM_STMT_CLOSE: u8 = 0x19;
/// Reset a prepared statement's data.
pub const COM_STMT_RESET: u8 = 0x1a;
/// Set a connection option (e.g. multi-statements).
pub const COM_SET_OPTION: u8 = 0x1b;
/// Fetch rows from a cursor.
pub const COM_STMT_FETCH: u8 = 0x1c;
/// Reset session state without re-authenticating.
pub const COM_RESET_CONNECTION: u8 = 0x1f;
/// MariaDB: bulk execute of a prepared statement.
pub const COM_STMT_BULK_EXECUTE: u8 = 0xfa;
/// MariaDB: several commands in one packet.
pub const COM_MULTI: u8 = 0xfe;
