//! Constants of the virtio-llm device, as specified in `docs/virtio-llm.md`.

/// Virtio device ID. The virtio specification allocates IDs upwards (below 50 today) and
/// does not reserve an experimental range; by convention non-standard devices count down
/// from 63 (crosvm uses 63, 62, 61, ...). 56 sits between the two so neither an OASIS
/// allocation nor crosvm's private IDs collide with it soon; it must be replaced if
/// virtio-llm is ever standardised.
pub const DEVICE_ID: u32 = 56;

/// Version of the message format in every header and in the config space.
pub const PROTOCOL_VERSION: u8 = 1;

/// Feature bits (device-specific bits 0..=23, as in virtio 1.2 section 2.2).
pub mod feature {
    /// The device may send prompts as UTF-8 text; the driver accepts it only if its engine
    /// has a tokenizer for every model it loads.
    pub const TEXT_PROMPT: u32 = 0;
    /// The memory queues (4 and 5) are live: the device sets the private memory budget with
    /// `BudgetChange`s and the driver gives memory back with `RelinquishReport`s.
    pub const MEMORY: u32 = 1;
    // Bit 2 is reserved: it was TOKEN_TEXT (text bytes in `Tokens`), which no driver filled
    // and no device read; dropped rather than kept as a promise nobody keeps.
    /// The driver answers `MemoryProbe` commands (test-only: a production device never offers
    /// it; without it the driver answers them `Unsupported`).
    pub const DIAGNOSTICS: u32 = 3;
    /// The device may preempt a running request (`PreemptRequest`): it ends with reason
    /// `Preempted`, and the session resumes from its last token with the next request.
    pub const PREEMPT: u32 = 4;
    /// The device may load sealed models (`LoadSealedBegin`, `LoadSealedChunk`), and the
    /// configuration space carries the guest's key root and image measurement.
    pub const SEALED: u32 = 5;
    /// The driver owns text (needs `TEXT_PROMPT`): prompts may be chat messages it renders
    /// with the model's own template, and every `Tokens` carries the bytes its tokens stand
    /// for, so a device with no tokenizer (a sealed model's host) can serve text.
    pub const GUEST_TEXT: u32 = 6;
    /// Sealed sessions (needs `GUEST_TEXT`): prompts may be requests sealed to the guest's
    /// session key, answered with sealed pieces and token ids withheld; the control queue
    /// answers `GetStatement` (docs/sealed-session.md).
    pub const SEALED_SESSION: u32 = 7;
    /// KV reuse: the driver keeps closed sessions' KV caches and a later request whose
    /// prompt starts with the same tokens goes on from one; `EndOfStream` says how many
    /// prompt tokens came from a cache (`cached_tokens`).
    pub const KV_REUSE: u32 = 8;
    /// Generation options: a `GenerateRequest` may carry an options trailer after its
    /// prompt (penalties, logit bias, logprobs; `wire::options`), and a `Tokens` may carry
    /// each token's logprob and the most likely alternatives when the request asked.
    pub const OPTIONS: u32 = 9;
    /// Embeddings: the device may send `EmbedRequest`s, answered with the pooled,
    /// L2-normalised final hidden state of the prompt (`Embedding`), on a KV cache the
    /// driver frees afterwards (`wire::embed`).
    pub const EMBED: u32 = 10;
    /// Tool conversations rendered by the driver (needs `GUEST_TEXT` and `OPTIONS`): chat
    /// prompts may hold `tool` turns and an options trailer's `TOOL_CHAT` record (the tools
    /// declared, the calls earlier turns made); a `TOOLS` record may leave the call style to
    /// the model's template; the control queue answers `GetToolStyle`
    /// (`wire::tool_chat`).
    pub const GUEST_TOOLS: u32 = 11;
    /// KV eviction to the host (needs `KV_REUSE` and `SEALED`'s key root): a kept KV cache
    /// sealed in the guest is handed over block by block (`KvEvict`), and a later request
    /// that shares its prefix brings it back (`KvWant`, `KvRestore`), every block
    /// authenticated (`wire::kv_evict`).
    pub const KV_EVICT: u32 = 12;
    /// Batched decode: the driver runs the requests it holds on sessions of one model
    /// together, computing the next token of all of them in one forward pass per step;
    /// requests join after their prompt and leave at their end. Without it the device sends
    /// a request only once the one before has ended.
    pub const BATCH: u32 = 13;
    /// Standard virtio 1.x device (VIRTIO_F_VERSION_1); required.
    pub const VERSION_1: u32 = 32;
    /// The device reaches only the shared window (VIRTIO_F_ACCESS_PLATFORM); required, so the
    /// driver bounces every buffer through the shared window.
    pub const ACCESS_PLATFORM: u32 = 33;
}

/// Virtqueue indices. The host (device) is the client and the guest (driver) the server, so
/// every "from host" queue is filled with device-writable buffers posted by the driver.
pub mod queue {
    /// Control commands, device to driver.
    pub const CONTROL_CMD: u16 = 0;
    /// Control replies, driver to device, one per command in order.
    pub const CONTROL_REPLY: u16 = 1;
    /// Generation requests and cancels, device to driver.
    pub const REQUEST: u16 = 2;
    /// Streamed responses, driver to device.
    pub const RESPONSE: u16 = 3;
    /// Memory events (budget changes), device to driver; live with `feature::MEMORY`.
    pub const MEMORY_EVENT: u16 = 4;
    /// Memory reports (relinquished ranges), driver to device; live with `feature::MEMORY`.
    /// The device returns a report's buffer only after it released the ranges.
    pub const MEMORY_REPORT: u16 = 5;
    /// Number of queues.
    pub const COUNT: u16 = 6;
    /// Largest queue size either side accepts.
    pub const MAX_SIZE: u16 = 256;
}

/// Device configuration layout (read-only to the driver, little-endian).
pub mod config {
    /// u8: `PROTOCOL_VERSION` of the device.
    pub const PROTOCOL_VERSION: usize = 0;
    /// u8 + u16: reserved, zero.
    pub const RESERVED0: usize = 1;
    /// u32: largest message the device sends or accepts, header included.
    pub const MAX_MESSAGE_BYTES: usize = 4;
    /// u32: largest `LoadModelChunk` data the device sends.
    pub const MAX_CHUNK_BYTES: usize = 8;
    /// u32: models the driver is asked to hold at once.
    pub const MAX_MODELS: usize = 12;
    /// u32: sessions the device opens at most at once.
    pub const MAX_SESSIONS: usize = 16;
    /// u32: largest `context_len` the device asks for.
    pub const MAX_CONTEXT_LEN: usize = 20;
    /// u64: private memory budget at boot, bytes (multiple of `MEMORY_GRANULE`).
    pub const MEMORY_BUDGET: usize = 24;
    /// [u8; 32]: the guest's key root (`feature::SEALED` only; the development root, which
    /// the host knows anyway: a production root never passes through the host).
    pub const KEY_ROOT: usize = 32;
    /// [u8; 32]: the measurement of the images the guest runs (`feature::SEALED` only).
    pub const MEASUREMENT: usize = 64;
    /// Size of the configuration space.
    pub const SIZE: usize = 96;
}

/// Bytes of the common message header.
pub const HEADER_BYTES: usize = 8;
/// Largest `LoadModelChunk` payload.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;
/// Largest `LoadSealedBegin` header: the largest `.fsm` header (16 + 72,800) and its
/// 64-byte signature (docs/sealed-model.md).
pub const MAX_SEALED_HEADER_BYTES: usize = 16 + 72_800 + 64;
/// The AES-GCM tag after each sealed chunk's ciphertext.
pub const SEAL_TAG_BYTES: usize = 16;
/// Most owner keys a `LoadSealedBegin` may list as accepted.
pub const MAX_ACCEPTED_OWNERS: usize = 16;

/// `LoadSealedBegin` flags. Undefined bits are reserved: the driver answers `BadRequest`
/// to a load that sets any.
pub mod sealed_flag {
    /// Strawman load (benchmarks only): the driver keeps each chunk's ciphertext as it
    /// arrives and decrypts the whole body at `LoadModelEnd`, instead of decrypting each
    /// chunk as it arrives.
    pub const STRAWMAN: u32 = 1 << 0;
    /// The driver may start the load from a layer prefix it kept of a model with the same
    /// content digest (`UnloadModel::keep_layers`): its `Ack`'s `object_id` is then the
    /// first layer the device must send (0: the whole body), and chunks start at that
    /// layer's first. Not with `STRAWMAN`.
    pub const RESUME: u32 = 1 << 1;
    /// Every defined flag.
    pub const DEFINED: u32 = STRAWMAN | RESUME;
}
/// Largest message, header included: a full chunk plus its fixed fields, rounded up.
pub const MAX_MESSAGE_BYTES: usize = MAX_CHUNK_BYTES + 4096;
/// Longest descriptor chain either side walks (a message may be scattered, but not finely).
pub const MAX_CHAIN_DESCRIPTORS: usize = 16;
/// Longest prompt given as token ids.
pub const MAX_PROMPT_TOKENS: usize = 32 * 1024;
/// Longest prompt given as text, in bytes.
pub const MAX_PROMPT_TEXT_BYTES: usize = 256 * 1024;
/// Largest `max_tokens` of one request.
pub const MAX_GENERATED_TOKENS: u32 = 128 * 1024;
/// Largest context a session may ask for.
pub const MAX_CONTEXT_LEN: u32 = 128 * 1024;
/// Largest model file the device may announce (64 GiB).
pub const MAX_MODEL_BYTES: u64 = 64 << 30;
/// Longest model name a sealed prompt binds.
pub const MAX_MODEL_NAME_BYTES: usize = 256;
/// Largest sealed request: a full text prompt, its stop strings and framing, key and tag.
pub const MAX_SEALED_REQUEST_BYTES: usize = MAX_PROMPT_TEXT_BYTES + 64 * 1024;
/// Bytes of the guest's signed statement (`sealed_session::SignedStatement::BYTES`).
pub const SIGNED_STATEMENT_BYTES: usize = 204;
/// Stop strings in a sealed request, and the bytes of each.
pub const MAX_STOP_STRINGS: usize = 64;
pub const MAX_STOP_BYTES: usize = 256;
/// Records in one options trailer (`feature::OPTIONS`): one of each type at most.
pub const MAX_OPTION_RECORDS: usize = 8;
/// Bytes of one option record's value. Sized for a JSON schema or tool list (the
/// `RESPONSE_FORMAT` and `TOOLS` records) as well as the largest logit bias.
pub const MAX_OPTION_RECORD_BYTES: usize = 64 * 1024;
/// Tools one `TOOL_CHAT` record declares (OpenAI allows 128 functions).
pub const MAX_TOOL_DEFS: usize = 128;
/// Earlier calls one `TOOL_CHAT` record carries.
pub const MAX_TOOL_CALLS: usize = 1024;
/// Bytes of a tool's name (OpenAI allows 64 characters).
pub const MAX_TOOL_NAME_BYTES: usize = 256;
/// Tokens a logit bias names (OpenAI allows 300).
pub const MAX_LOGIT_BIAS: usize = 300;
/// Largest logit bias either way; -100 bans a token.
pub const MAX_LOGIT_BIAS_VALUE: f32 = 100.0;
/// Largest presence and frequency penalty either way (OpenAI's range).
pub const MAX_OPENAI_PENALTY: f32 = 2.0;
/// Most alternatives a logprobs request may ask for per token (OpenAI's `top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Token ids in one `Tokens` response that carries logprobs: small enough that the
/// logprobs (4 + 8 × 20 bytes a token) and the most text fit one 68 KiB response buffer.
pub const MAX_LOGPROB_TOKENS_PER_RESPONSE: usize = 16;
/// The lowest logprob on the wire; a smaller one (a banned token) is sent as this, as
/// OpenAI reports -9999 for tokens it rounds to no probability.
pub const MIN_LOGPROB: f32 = -9999.0;
/// Token ids in one `Tokens` response.
pub const MAX_TOKENS_PER_RESPONSE: usize = 256;
/// Text bytes in one `Tokens` response (`feature::GUEST_TEXT`).
pub const MAX_TOKEN_TEXT_BYTES: usize = 64 * 1024;
/// Messages in a chat prompt (`feature::GUEST_TEXT`).
pub const MAX_CHAT_MESSAGES: usize = 1024;
/// Bytes of an `Error` message text.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;
/// Token ids are below this (no vocabulary in use comes close; bounds the sampler's top-k).
pub const MAX_TOKEN_ID: u32 = 1 << 24;
/// Largest sampling temperature.
pub const MAX_TEMPERATURE: f32 = 100.0;
/// Largest repeat penalty.
pub const MAX_REPEAT_PENALTY: f32 = 100.0;
/// Values in one `Embedding`: the widest model's embedding width with room to spare
/// (Llama 3 70B is 8192), and small enough that the largest answer fits one 68 KiB
/// response buffer.
pub const MAX_EMBEDDING_DIM: usize = 16 * 1024;
/// Bytes of one sealed KV block (ciphertext and its 16-byte tag) in `KvBlock` and
/// `KvRestore`: a control reply buffer holds one with its fixed fields.
pub const MAX_KV_BLOCK_BYTES: usize = 64 * 1024;
/// Bytes of one `EchoRequest`/`EchoReply` (a diagnostic round trip).
pub const MAX_ECHO_BYTES: usize = 64 * 1024;
/// Ranges in one `RelinquishReport`.
pub const MAX_RELINQUISH_RANGES: usize = 512;
/// The smallest private memory budget: the driver's own message buffers (a copied-in
/// command holds up to `MAX_MESSAGE_BYTES`) live in private memory too, so below this the
/// guest could not even take the next command. Taking everything back is a tear-down.
pub const MIN_MEMORY_BUDGET: u64 = 8 << 20;
/// Granule of private memory budgets and relinquished ranges: one 2 MiB huge page, the unit
/// the guest kernel maps.
pub const MEMORY_GRANULE: u64 = 2 << 20;

/// Guest-physical layout both sides rely on (from the design): only the shared window is
/// visible to the device.
pub mod layout {
    /// Start of the shared window (virtqueues and bounce buffers).
    pub const SHARED_WINDOW_BASE: u64 = guest_abi::layout::SHARED_BASE;
    /// Size of the shared window.
    pub const SHARED_WINDOW_SIZE: u64 = guest_abi::layout::SHARED_SIZE;
    /// Start of the private pool.
    pub const PRIVATE_POOL_BASE: u64 = guest_abi::layout::PRIVATE_BASE;
}
