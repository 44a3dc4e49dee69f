//! The one error type: each variant names the rule broken and where (field, layer, chunk).

use crate::keys::{GuestPublicKey, OwnerPublicKey};

/// Why a sealed model (or a key) was refused. Each message is the variant's doc.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    // ---- header framing ----
    /// The data does not start with the magic `FLEXSEAL`.
    #[error("not a sealed model: it does not start with FLEXSEAL")]
    BadMagic,
    /// The header's `version` is not 1.
    #[error("sealed-model format version {version} is not supported (this build reads 1)")]
    UnsupportedVersion { version: u32 },
    /// `header_len` is outside what any valid header can have.
    #[error("header_len {header_len} is outside {min}..={max}")]
    HeaderLen { header_len: u32, min: u32, max: u32 },
    /// The data ends before the header and its signature do.
    #[error("sealed model is cut short: header and signature need {needed} bytes, {got} given")]
    Short { needed: u64, got: u64 },
    /// A header field runs past the end given by `header_len`.
    #[error("header field `{field}` runs past header_len")]
    FieldTruncated { field: &'static str },
    /// `header_len` counts more bytes than the fields use.
    #[error("header_len is {header_len} but the fields end after {used} bytes")]
    HeaderTrailing { header_len: u32, used: u32 },
    /// Bytes follow the signature where none may (a lone header, see `Unsealer::new`).
    #[error("{extra} bytes follow the header's signature")]
    TrailingBytes { extra: u64 },
    /// The body's length is not what the header's chunk plan gives.
    #[error("sealed body is {got} bytes, the header's chunk plan gives {expected}")]
    BodyLength { expected: u64, got: u64 },

    // ---- header fields ----
    /// `chunk_bytes` is outside 4096..=1 MiB.
    #[error("chunk_bytes {chunk_bytes} is outside 4096..=1048576")]
    ChunkBytes { chunk_bytes: u32 },
    /// `body_bytes` is zero or above the format's limit.
    #[error("body_bytes {body_bytes} is outside 1..=2^48")]
    BodyBytes { body_bytes: u64 },
    /// `n_layers` is outside 1..=4096.
    #[error("n_layers {count} is outside 1..=4096")]
    LayerCount { count: u32 },
    /// A layer does not start where the previous one ended (or at 0).
    #[error("layer {layer} starts at {offset}, expected {expected} (layers are contiguous from 0)")]
    LayerOffset {
        layer: u32,
        offset: u64,
        expected: u64,
    },
    /// A layer has length 0.
    #[error("layer {layer} is empty")]
    EmptyLayer { layer: u32 },
    /// A layer ends past `body_bytes`.
    #[error("layer {layer} ends at {end}, past body_bytes {body_bytes}")]
    LayerPastBody {
        layer: u32,
        end: u64,
        body_bytes: u64,
    },
    /// The layers end before `body_bytes` (or, when sealing, before the plaintext does).
    #[error("the layers cover {covered} bytes, body_bytes is {body_bytes}")]
    LayerSum { covered: u64, body_bytes: u64 },
    /// `n_recipients` is outside 1..=64.
    #[error("n_recipients {count} is outside 1..=64")]
    RecipientCount { count: u32 },
    /// Two recipient entries name the same guest key.
    #[error("recipient {index} repeats recipient {first}'s public key")]
    DuplicateRecipient { index: u32, first: u32 },

    // ---- owner, recipients, keys ----
    /// `owner_key` is not a valid Ed25519 public key.
    #[error("owner_key is not a valid Ed25519 public key")]
    BadOwnerKey,
    /// The header is signed by an owner the guest was not told to accept.
    #[error("owner {owner} is not one of the accepted owners")]
    UnknownOwner { owner: OwnerPublicKey },
    /// The owner's signature does not verify over the header.
    #[error("the owner's signature does not verify over the header")]
    BadSignature,
    /// No recipient entry carries this guest's sealing public key.
    #[error("the model is not sealed to this guest (sealing key {guest})")]
    NotARecipient { guest: GuestPublicKey },
    /// The recipient entry for this guest does not open with its key.
    #[error("recipient {recipient}'s wrapped content key does not open")]
    KeyUnwrap { recipient: u32 },
    /// HPKE refused to wrap the content key to a recipient (e.g. a low-order public key).
    #[error("cannot wrap the content key to recipient {recipient}")]
    KeyWrap { recipient: u32 },

    // ---- the chunk stream ----
    /// A chunk was offered out of order.
    #[error("chunk {got} offered, chunk {expected} is next")]
    ChunkOutOfOrder { expected: u64, got: u64 },
    /// A chunk was offered after the body's last chunk.
    #[error("chunk {index} offered, but the body has only {count} chunks")]
    NoSuchChunk { index: u64, count: u64 },
    /// A chunk's buffer is not its plaintext length (plus the tag where it travels with it).
    #[error("chunk {index}: buffer is {got} bytes, expected {expected}")]
    ChunkLength { index: u64, expected: u64, got: u64 },
    /// A chunk does not authenticate: altered, moved, from another model, or another header.
    #[error("chunk {index} (layer {layer}) does not authenticate")]
    ChunkAuth { index: u64, layer: u32 },
    /// The stream already failed at this chunk; start again with a new `Unsealer`.
    #[error("the stream failed at chunk {index}; no further chunk is opened")]
    StreamFailed { index: u64 },
    /// The stream ended before its last chunk.
    #[error("sealed body truncated: {opened} of {count} chunks opened")]
    Truncated { opened: u64, count: u64 },
    /// A chunk opened overlapped (`Unsealer::open_chunk_overlapped`) was not hashed next, or
    /// with other bytes than its plaintext's length: the caller's error; the stream ends.
    #[error("chunk {index}'s plaintext was not hashed in order")]
    UnhashedChunk { index: u64 },
    /// Every chunk authenticated but the plaintext's SHA-256 is not `content_digest`.
    #[error("the plaintext's SHA-256 does not match the header's content_digest")]
    ContentDigest,
    /// A kept layer prefix cannot start this load: it began another body (content digest),
    /// covers no layer or every layer, or chunks were already opened.
    #[error(
        "the kept layer prefix does not fit this load (another model, or no layer left to stream)"
    )]
    PrefixMismatch,

    // ---- key text ----
    /// A hex key is not 64 hex digits.
    #[error("a key is 64 hex digits, got {got} characters")]
    HexLength { got: u64 },
    /// A hex key has a non-hex character.
    #[error("key character {position} is not a hex digit")]
    HexDigit { position: u64 },
    /// An owner secret key file does not have the documented form.
    #[error("not an owner secret key file (expected `flexserve-owner-secret-v1 <64 hex digits>`)")]
    SecretKeyText,
}
