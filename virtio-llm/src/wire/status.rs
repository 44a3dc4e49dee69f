//! Status codes carried by control acknowledgements and error responses.

use crate::error::WireError;

/// Outcome of a command or request. Values are fixed by the spec; decoding rejects any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// The message was well formed but not valid in the current state (e.g. a chunk out of
    /// order, a request on a busy session).
    BadRequest = 1,
    /// No loaded model has this id.
    NoSuchModel = 2,
    /// No open session has this id.
    NoSuchSession = 3,
    /// The private memory budget cannot hold what was asked.
    OutOfMemory = 4,
    /// The session's context is full.
    ContextFull = 5,
    /// The request was cancelled.
    Cancelled = 6,
    /// The driver failed for a reason of its own.
    Internal = 7,
    /// The model file is not a valid GGUF model, or its SHA-256 differs from the announced one.
    BadModel = 8,
    /// The model or session id is already in use.
    AlreadyExists = 9,
    /// The message needs a feature that was not negotiated.
    Unsupported = 10,
    /// Too many models, sessions or requests at once; retry later.
    Busy = 11,
    /// A sealed model was refused: its header, owner, signature, key or any chunk failed
    /// the checks of docs/sealed-model.md (the driver's console says which).
    SealRejected = 12,
}

impl Status {
    /// Every status, in value order (for tests and tables).
    pub const ALL: [Status; 13] = [
        Status::Ok,
        Status::BadRequest,
        Status::NoSuchModel,
        Status::NoSuchSession,
        Status::OutOfMemory,
        Status::ContextFull,
        Status::Cancelled,
        Status::Internal,
        Status::BadModel,
        Status::AlreadyExists,
        Status::Unsupported,
        Status::Busy,
        Status::SealRejected,
    ];

    /// The wire value.
    pub fn to_u16(self) -> u16 {
        self as u16
    }
}

impl TryFrom<u16> for Status {
    type Error = WireError;

    fn try_from(v: u16) -> Result<Self, WireError> {
        Status::ALL
            .get(usize::from(v))
            .copied()
            .ok_or(WireError::UnknownStatus(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_unknown_is_rejected() {
        for s in Status::ALL {
            assert_eq!(Status::try_from(s.to_u16()), Ok(s));
        }
        assert_eq!(Status::try_from(13), Err(WireError::UnknownStatus(13)));
        assert_eq!(
            Status::try_from(u16::MAX),
            Err(WireError::UnknownStatus(u16::MAX))
        );
    }
}
