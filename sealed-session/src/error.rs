//! The one error type of sealed sessions: each variant says what was refused and why.

/// Why a statement, a request or a response piece was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A statement is not `STATEMENT_BYTES` (plus key and signature) long.
    #[error("guest statement is {got} bytes, expected {expected}")]
    StatementLength { got: u64, expected: u64 },
    /// A statement does not start with the magic `FLEXGST1`.
    #[error("not a FlexServe guest statement: it does not start with FLEXGST1")]
    StatementMagic,
    /// A statement field holds a value this build does not know.
    #[error("guest statement field `{field}` has unknown value {value}")]
    StatementField { field: &'static str, value: u64 },
    /// The statement's signature does not verify under its attestation key.
    #[error("the guest statement's signature does not verify: it was altered or forged")]
    StatementSignature,
    /// HPKE could not set up or open the request: it was sealed to another guest's key, its
    /// public fields changed on the way, or its bytes were altered.
    #[error(
        "the sealed request does not open: sealed to another guest key, its public fields \
         (model, sampling, max_tokens, stream) changed, or its bytes altered"
    )]
    RequestOpen,
    /// A sealed request is too short to hold an encapsulated key and a tag.
    #[error("sealed request is {got} bytes, shorter than the {min} of key and tag")]
    RequestShort { got: u64, min: u64 },
    /// The client could not seal (the guest key is not a usable X25519 point).
    #[error("cannot seal to this guest key: {why}")]
    Seal { why: &'static str },
    /// A response piece is shorter than its header and tag.
    #[error("response piece is {got} bytes, shorter than the {min} of header and tag")]
    PieceShort { got: u64, min: u64 },
    /// A response piece's flags byte is not 0 or 1.
    #[error("response piece {seq} has unknown flags {flags:#04x}")]
    PieceFlags { seq: u64, flags: u8 },
    /// A piece arrived out of turn: one was dropped, reordered or replayed.
    #[error(
        "response piece {got} arrived where piece {expected} belongs: pieces were dropped, reordered or replayed"
    )]
    PieceOrder { expected: u64, got: u64 },
    /// A piece does not authenticate.
    #[error("response piece {seq} does not authenticate: it was altered or forged")]
    PieceForged { seq: u64 },
    /// A piece arrived after the last one.
    #[error("a response piece arrived after the end of the answer")]
    PieceAfterEnd,
    /// The answer ended without its authenticated last piece: it was cut off.
    #[error("the answer was cut off: {pieces} pieces arrived but not the authenticated end")]
    MissingEnd { pieces: u64 },
    /// The guest tried to seal a piece after the last one.
    #[error("the answer has ended; no piece can follow its last")]
    ResponseEnded,
}
