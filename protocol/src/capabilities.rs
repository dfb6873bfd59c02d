//! Capability flags negotiated in the connection phase.
//!
//! <https://dev.mysql.com/doc/dev/mysql-server/latest/group__group__cs__capabilities__flags.html>
//! <https://mariadb.com/kb/en/connection/#capabilities>
//!
//! MySQL uses 32 bits. MariaDB reuses 4 bytes that MySQL leaves as filler for its extended
//! capabilities (only when the client/server clear `CLIENT_MYSQL`). Both are kept in one `u64`
//! so a single value describes a leg: MySQL bits at 0..32, MariaDB bits shifted to 32..64.

bitflags::bitflags! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Capabilities: u64 {
        /// Bit 0. MariaDB: set by MySQL-only peers; when clear, the extended MariaDB
        /// capabilities in the filler bytes are valid.
        const CLIENT_MYSQL = 1;
        /// Bit 0, MySQL's name: new, more secure passwords (always set by MySQL).
        const LONG_PASSWORD = 1;
        /// Report found rows instead of affected rows for UPDATE.
        const FOUND_ROWS = 2;
        /// Get all column flags.
        const LONG_FLAG = 4;
        /// A database name may be given in the HandshakeResponse.
        const CONNECT_WITH_DB = 8;
        /// Disallow `db.table.column`.
        const NO_SCHEMA = 16;
        /// Compressed protocol (changes framing after login).
        const COMPRESS = 32;
        /// Legacy ODBC behaviour; unused.
        const ODBC = 64;
        /// LOAD DATA LOCAL INFILE is allowed.
        const LOCAL_FILES = 128;
        /// Parser ignores spaces before `(`.
        const IGNORE_SPACE = 256;
        /// The 4.1 protocol: OK/ERR layout with status, warnings and SQL state.
        const PROTOCOL_41 = 512;
        /// `wait_timeout` becomes `interactive_timeout`.
        const INTERACTIVE = 1024;
        /// Switch to TLS after the SSLRequest.
        const SSL = 2048;
        /// Do not raise SIGPIPE (client-side only).
        const IGNORE_SIGPIPE = 4096;
        /// OK/EOF carry the status flags.
        const TRANSACTIONS = 8192;
        /// Unused (was the old 4.1 protocol flag).
        const RESERVED = 16384;
        /// 4.1 authentication: 1-byte length before the auth response.
        const SECURE_CONNECTION = 32768;
        /// Several statements per COM_QUERY.
        const MULTI_STATEMENTS = 1 << 16;
        /// Multiple result sets for COM_QUERY.
        const MULTI_RESULTS = 1 << 17;
        /// Multiple result sets for COM_STMT_EXECUTE.
        const PS_MULTI_RESULTS = 1 << 18;
        /// Authentication plugins: plugin names in handshake packets, auth switch.
        const PLUGIN_AUTH = 1 << 19;
        /// Connection attributes in the HandshakeResponse.
        const CONNECT_ATTRS = 1 << 20;
        /// Length-encoded auth response (longer than 255 bytes).
        const PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21;
        /// The client can handle the expired-password sandbox mode.
        const CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22;
        /// OK packets carry session-state change information.
        const SESSION_TRACK = 1 << 23;
        /// OK packets replace EOF packets after result sets.
        const DEPRECATE_EOF = 1 << 24;
        /// MySQL 8: result set metadata may be omitted.
        const OPTIONAL_RESULTSET_METADATA = 1 << 25;
        /// MySQL 8: zstd compression.
        const ZSTD_COMPRESSION = 1 << 26;
        /// MySQL 8: query attributes (changes the COM_QUERY layout).
        const QUERY_ATTRIBUTES = 1 << 27;
        /// MySQL 8: multi-factor authentication.
        const MULTI_FACTOR_AUTH = 1 << 28;
        /// Reserved for extending the 32-bit flags.
        const CAPABILITY_EXTENSION = 1 << 29;
        /// Client verifies the server certificate (client-side only).
        const SSL_VERIFY_SERVER_CERT = 1 << 30;
        /// Keep options after a failed connect (client-side only).
        const REMEMBER_OPTIONS = 1 << 31;

        /// MariaDB: client understands progress reports (ERR packets with code 0xFFFF).
        const MARIADB_CLIENT_PROGRESS = 1 << 32;
        /// MariaDB: COM_MULTI.
        const MARIADB_CLIENT_COM_MULTI = 1 << 33;
        /// MariaDB: bulk operations in COM_STMT_BULK_EXECUTE.
        const MARIADB_CLIENT_STMT_BULK_OPERATIONS = 1 << 34;
        /// MariaDB: extended type information in column definitions.
        const MARIADB_CLIENT_EXTENDED_METADATA = 1 << 35;
        /// MariaDB: the server may skip resending cached prepared-statement metadata.
        const MARIADB_CLIENT_CACHE_METADATA = 1 << 36;
        /// MariaDB: per-unit results for bulk operations.
        const MARIADB_CLIENT_BULK_UNIT_RESULTS = 1 << 37;
    }
}

impl Capabilities {
    /// MariaDB extended capabilities as they appear on the wire (bits 32..64 as `u32`).
    pub fn mariadb_ext(self) -> u32 {
        (self.bits() >> 32) as u32
    }

    /// The MySQL 32-bit capability word.
    pub fn low(self) -> u32 {
        self.bits() as u32
    }

    /// Joins the MySQL word and the MariaDB extended word; unknown bits are dropped.
    pub fn from_parts(low: u32, ext: u32) -> Self {
        Self::from_bits_truncate(u64::from(low) | (u64::from(ext) << 32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let c = Capabilities::from_parts(0x81FF_F7FE, 0x1D);
        assert_eq!(c.low(), 0x81FF_F7FE);
        assert_eq!(c.mariadb_ext(), 0x1D);
        assert!(c.contains(Capabilities::MARIADB_CLIENT_PROGRESS));
        assert!(!c.contains(Capabilities::CLIENT_MYSQL));
        assert_eq!(Capabilities::LONG_PASSWORD, Capabilities::CLIENT_MYSQL);
    }

    #[test]
    fn unknown_ext_bits_are_dropped() {
        let c = Capabilities::from_parts(u32::MAX, u32::MAX);
        assert_eq!(c.low(), u32::MAX);
        assert_eq!(c.mariadb_ext(), 0x3F);
    }
}
