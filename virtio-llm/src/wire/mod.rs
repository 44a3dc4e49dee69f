//! Wire messages: one module per message family, all framed by the common header in
//! [`codec`].
//!
//! Every message implements [`Message`]: `encode` validates before writing, so a sender never
//! emits what its peer would reject, and `decode` checks the header, every field and that no
//! byte is left over. Each family also has an enum that decodes whichever of its messages a
//! buffer holds, which is what a queue handler calls.

pub mod codec;
mod constraint;
pub mod control;
pub mod echo;
pub mod embed;
pub mod kv_evict;
pub mod memory;
pub mod options;
pub mod probe;
pub mod request;
pub mod response;
pub mod sealed;
pub mod sealed_session;
pub mod status;
pub mod tool_chat;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
pub(crate) mod testutil;

use alloc::vec::Vec;

use crate::error::WireError;
use codec::{Reader, Writer, decode_frame, encode_frame};

/// A message with a fixed type in the common header. `'a` is the lifetime of the buffer a
/// decoded message may borrow from (only bulk model data does).
pub trait Message<'a>: Sized {
    /// The header's type field for this message.
    const TYPE: u16;

    /// Writes the body (everything after the header).
    fn encode_body(&self, w: &mut Writer<'_>);

    /// Reads the body. Limits on variable-length parts are checked here, before reading them.
    fn decode_body(r: &mut Reader<'a>) -> Result<Self, WireError>;

    /// Checks value ranges shared by encoding and decoding.
    fn validate(&self) -> Result<(), WireError> {
        Ok(())
    }

    /// Appends the whole frame (header and body) to `out`; on error `out` is unchanged.
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.validate()?;
        encode_frame(out, Self::TYPE, |w| self.encode_body(w))
    }

    /// Decodes a buffer that holds exactly one frame of this message.
    fn decode(buf: &'a [u8]) -> Result<Self, WireError> {
        let (msg_type, r) = decode_frame(buf)?;
        if msg_type != Self::TYPE {
            return Err(WireError::UnknownType(msg_type));
        }
        decode_checked(r)
    }
}

/// Decodes a body, then insists it was consumed exactly and its values are in range.
pub(crate) fn decode_checked<'a, M: Message<'a>>(mut r: Reader<'a>) -> Result<M, WireError> {
    let msg = M::decode_body(&mut r)?;
    r.finish()?;
    msg.validate()?;
    Ok(msg)
}

/// Fails with `FieldOutOfRange` unless `ok`.
pub(crate) fn ensure(ok: bool, field: &'static str, value: u64) -> Result<(), WireError> {
    if ok {
        Ok(())
    } else {
        Err(WireError::FieldOutOfRange { field, value })
    }
}
