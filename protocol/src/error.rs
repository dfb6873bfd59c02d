//! The one error type every decoder in this crate returns.

/// Why a packet could not be decoded (or framed).
///
/// Decoders never panic: every way input can be wrong maps to one of these variants, and the
/// `&'static str` names the field that was being read so logs point at the culprit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The payload ended before a required field was complete.
    #[error("packet truncated while reading {0}")]
    Truncated(&'static str),
    /// The bytes are all there but cannot be what the protocol allows.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// A logical packet is larger than the configured limit; raised from the frame headers,
    /// before the payload is buffered, so a peer cannot make us allocate it.
    #[error("packet of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    /// A field that must be text (user name, database, plugin name) is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// Only produced through the tokio-util codec, whose traits require `From<io::Error>`.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Result alias defaulting to [`ProtocolError`].
pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;
