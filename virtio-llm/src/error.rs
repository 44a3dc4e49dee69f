//! The one error type of the wire layer: every malformed input maps to a named variant, so a
//! peer's bug or attack is reported precisely and never panics.

/// Why a buffer is not a valid virtio-llm message (or why a message cannot be encoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The input ended before a field: `needed` bytes were required, `available` were left.
    #[error("truncated: needed {needed} bytes, {available} available")]
    Truncated {
        /// Bytes the next field needed.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// The header's type is not a message of the family being decoded.
    #[error("unknown message type {0:#06x}")]
    UnknownType(u16),
    /// The header's protocol version is not one this crate speaks.
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    /// The header's body length does not match the buffer it came in.
    #[error("length field says {declared} body bytes, buffer holds {actual}")]
    LengthMismatch {
        /// Body length from the header.
        declared: usize,
        /// Body bytes actually present after the header.
        actual: usize,
    },
    /// A reserved field or flag that must be zero is not.
    #[error("reserved field {field} is not zero")]
    ReservedNotZero {
        /// Name of the field.
        field: &'static str,
    },
    /// A field holds a value outside its allowed range (floats are reported by their bits).
    #[error("field {field} out of range: {value:#x}")]
    FieldOutOfRange {
        /// Name of the field.
        field: &'static str,
        /// The offending value (`f32::to_bits` for floats).
        value: u64,
    },
    /// A variable-length part is longer than the protocol allows.
    #[error("{what} too long: {len} > {max}")]
    TooLong {
        /// What was too long.
        what: &'static str,
        /// Its length (elements or bytes, as the field counts).
        len: usize,
        /// The protocol's limit.
        max: usize,
    },
    /// The body has bytes left after its last field.
    #[error("{count} trailing bytes after the message body")]
    TrailingBytes {
        /// How many bytes were left over.
        count: usize,
    },
    /// A text field that must be UTF-8 is not.
    #[error("field {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Name of the field.
        field: &'static str,
    },
    /// An options trailer record whose type this protocol version does not define (or that
    /// is reserved for a later one).
    #[error("unknown option record type {0:#06x}")]
    UnknownOption(u16),
    /// A status code that this protocol version does not define.
    #[error("unknown status {0}")]
    UnknownStatus(u16),
}
