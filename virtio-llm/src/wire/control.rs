//! Control queue messages: commands (device to driver, queue 0) and their replies (driver
//! to device, queue 1). Every command gets exactly one reply, in command order.

use crate::error::WireError;
use crate::spec::{MAX_CHUNK_BYTES, MAX_CONTEXT_LEN, MAX_MODEL_BYTES};
use crate::wire::codec::{Reader, Writer, check_len, decode_frame, len_u32};
use crate::wire::kv_evict::{KvBlock, KvEvict, KvRestore, KvWant, KvWanted, msg_type as kv_type};
use crate::wire::probe::{MemoryProbe, ProbeReply, msg_type as probe_type};
pub use crate::wire::sealed::{LoadSealedBegin, LoadSealedChunk};
use crate::wire::sealed_session::{GetStatement, StatementReply, msg_type as session_type};
use crate::wire::status::Status;
use crate::wire::tool_chat::{GetToolStyle, ToolStyleReply, msg_type as tool_type};
use crate::wire::{Message, decode_checked, ensure};

/// Message types of the control queues.
pub mod msg_type {
    /// [`super::LoadModelBegin`].
    pub const LOAD_MODEL_BEGIN: u16 = 0x0101;
    /// [`super::LoadModelChunk`].
    pub const LOAD_MODEL_CHUNK: u16 = 0x0102;
    /// [`super::LoadModelEnd`].
    pub const LOAD_MODEL_END: u16 = 0x0103;
    /// [`super::UnloadModel`].
    pub const UNLOAD_MODEL: u16 = 0x0104;
    /// [`super::OpenSession`].
    pub const OPEN_SESSION: u16 = 0x0105;
    /// [`super::CloseSession`].
    pub const CLOSE_SESSION: u16 = 0x0106;
    /// [`super::StatsRequest`].
    pub const STATS_REQUEST: u16 = 0x0107;
    /// [`super::LoadSealedBegin`] (`feature::SEALED`).
    pub const LOAD_SEALED_BEGIN: u16 = 0x0109;
    /// [`super::LoadSealedChunk`] (`feature::SEALED`).
    pub const LOAD_SEALED_CHUNK: u16 = 0x010A;
    /// [`super::Ack`].
    pub const ACK: u16 = 0x0201;
    /// [`super::StatsReply`].
    pub const STATS_REPLY: u16 = 0x0202;
}

/// Starts loading a model: the GGUF file follows in `LoadModelChunk`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadModelBegin {
    /// Id the device chooses for the model.
    pub model_id: u32,
    /// Size of the whole file, 1..=`MAX_MODEL_BYTES`; the driver reserves it up front.
    pub total_bytes: u64,
}

impl Message<'_> for LoadModelBegin {
    const TYPE: u16 = msg_type::LOAD_MODEL_BEGIN;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u32(self.model_id);
        w.zeros(4);
        w.u64(self.total_bytes);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let model_id = r.u32()?;
        r.reserved(4, "load_model_begin.reserved")?;
        Ok(Self {
            model_id,
            total_bytes: r.u64()?,
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        let t = self.total_bytes;
        ensure((1..=MAX_MODEL_BYTES).contains(&t), "total_bytes", t)
    }
}

/// One piece of the model file, borrowed from the buffer it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadModelChunk<'a> {
    /// The model being loaded.
    pub model_id: u32,
    /// Offset of `data` in the file; chunks arrive in order without gaps.
    pub offset: u64,
    /// 1..=`MAX_CHUNK_BYTES` bytes of the file.
    pub data: &'a [u8],
}

impl<'a> Message<'a> for LoadModelChunk<'a> {
    const TYPE: u16 = msg_type::LOAD_MODEL_CHUNK;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u32(self.model_id);
        w.u32(len_u32(self.data.len()));
        w.u64(self.offset);
        w.bytes(self.data);
    }
    fn decode_body(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let model_id = r.u32()?;
        let len = r.u32()? as usize;
        check_len("chunk data", len, MAX_CHUNK_BYTES)?;
        let offset = r.u64()?;
        Ok(Self {
            model_id,
            offset,
            data: r.bytes(len)?,
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        check_len("chunk data", self.data.len(), MAX_CHUNK_BYTES)?;
        ensure(!self.data.is_empty(), "chunk data_len", 0)?;
        let end = self.offset.checked_add(self.data.len() as u64);
        ensure(
            end.is_some_and(|e| e <= MAX_MODEL_BYTES),
            "chunk offset",
            self.offset,
        )
    }
}

/// Declares a message whose body is one u32 id and four reserved zero bytes.
macro_rules! id_message {
    ($(#[$doc:meta])* $name:ident, $field:ident, $ty:expr, $reserved:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name {
            /// The model or session this command is about.
            pub $field: u32,
        }

        impl Message<'_> for $name {
            const TYPE: u16 = $ty;
            fn encode_body(&self, w: &mut Writer<'_>) {
                w.u32(self.$field);
                w.zeros(4);
            }
            fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
                let $field = r.u32()?;
                r.reserved(4, $reserved)?;
                Ok(Self { $field })
            }
        }
    };
}

/// The whole file has been sent: check its size and hash, then parse and keep it. The hash
/// comes last so that both sides hash while the file streams instead of before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadModelEnd {
    /// The model being loaded.
    pub model_id: u32,
    /// SHA-256 of the whole file; the driver compares it with what it received.
    pub sha256: [u8; 32],
}

impl Message<'_> for LoadModelEnd {
    const TYPE: u16 = msg_type::LOAD_MODEL_END;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u32(self.model_id);
        w.zeros(4);
        w.bytes(&self.sha256);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let model_id = r.u32()?;
        r.reserved(4, "load_model_end.reserved")?;
        Ok(Self {
            model_id,
            sha256: r.array()?,
        })
    }
}
/// Drop a model and free its memory (its sessions close with it). With `keep_layers`, a
/// sealed model's first layers may stay as a *layer prefix* (the layer-prefix cache): the
/// driver keeps at most that many of the header's layers (fewer if memory is short, none
/// for a plaintext model) and answers with the count it kept in the `Ack`'s `object_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnloadModel {
    /// The model to drop.
    pub model_id: u32,
    /// Sealed-header layers to keep as a prefix; 0 frees everything (and the `Ack` carries
    /// `model_id`).
    pub keep_layers: u32,
}

impl Message<'_> for UnloadModel {
    const TYPE: u16 = msg_type::UNLOAD_MODEL;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u32(self.model_id);
        w.u32(self.keep_layers);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            model_id: r.u32()?,
            keep_layers: r.u32()?,
        })
    }
}
id_message!(
    /// Close a session, cancelling its request if one is running.
    CloseSession, session_id, msg_type::CLOSE_SESSION, "close_session.reserved"
);

/// Open a session (a KV cache of `context_len` tokens) on a loaded model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSession {
    /// Id the device chooses for the session.
    pub session_id: u32,
    /// The model to run.
    pub model_id: u32,
    /// Tokens of context, 1..=`MAX_CONTEXT_LEN` (the driver may refuse less for memory).
    pub context_len: u32,
}

impl Message<'_> for OpenSession {
    const TYPE: u16 = msg_type::OPEN_SESSION;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u32(self.session_id);
        w.u32(self.model_id);
        w.u32(self.context_len);
        w.zeros(4);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let msg = Self {
            session_id: r.u32()?,
            model_id: r.u32()?,
            context_len: r.u32()?,
        };
        r.reserved(4, "open_session.reserved")?;
        Ok(msg)
    }
    fn validate(&self) -> Result<(), WireError> {
        let c = self.context_len;
        ensure((1..=MAX_CONTEXT_LEN).contains(&c), "context_len", c.into())
    }
}

/// Ask for a [`StatsReply`]. Empty body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsRequest;

impl Message<'_> for StatsRequest {
    const TYPE: u16 = msg_type::STATS_REQUEST;
    fn encode_body(&self, _: &mut Writer<'_>) {}
    fn decode_body(_: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self)
    }
}

/// The reply to every command except `StatsRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Type of the command answered (lets the device catch a reply out of order).
    pub command: u16,
    /// Outcome.
    pub status: Status,
    /// The command's model or session id (0 for none).
    pub object_id: u32,
}

impl Message<'_> for Ack {
    const TYPE: u16 = msg_type::ACK;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u16(self.command);
        w.u16(self.status.to_u16());
        w.u32(self.object_id);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            command: r.u16()?,
            status: Status::try_from(r.u16()?)?,
            object_id: r.u32()?,
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        let c = self.command;
        // 0 answers a command whose header could not be read.
        let range = msg_type::LOAD_MODEL_BEGIN..=msg_type::CLOSE_SESSION;
        let sealed = msg_type::LOAD_SEALED_BEGIN..=msg_type::LOAD_SEALED_CHUNK;
        let kv = kv_type::KV_EVICT..=kv_type::KV_RESTORE;
        let ok = c == 0 || range.contains(&c) || sealed.contains(&c) || kv.contains(&c);
        ensure(ok, "ack.command", c.into())
    }
}

/// Counters of the driver, answering `StatsRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsReply {
    /// Models loaded.
    pub models_loaded: u32,
    /// Sessions open.
    pub sessions_open: u32,
    /// Private memory in use, bytes.
    pub memory_used_bytes: u64,
    /// Private memory budget, bytes.
    pub memory_budget_bytes: u64,
    /// Requests finished since boot.
    pub requests_completed: u64,
    /// Tokens generated since boot.
    pub tokens_generated: u64,
    /// The engine's kernels, as `inference_guest::quant::Isa::code` numbers them.
    pub engine_kernels: u32,
    /// The CPU features the engine chose them from (`inference_guest::quant::CpuFeatures`
    /// bits), so the host can say why they are weaker than its own.
    pub cpu_features: u32,
    /// KV caches (kept ones, or idle open sessions') dropped to make room rather than
    /// handed to the host sealed, since boot: their next request evaluates its prompt again. The host keeps this at 0 by taking
    /// caches sealed before the guest runs short (`KvEvict`).
    pub kv_caches_dropped: u64,
}

impl Message<'_> for StatsReply {
    const TYPE: u16 = msg_type::STATS_REPLY;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u32(self.models_loaded);
        w.u32(self.sessions_open);
        w.u64(self.memory_used_bytes);
        w.u64(self.memory_budget_bytes);
        w.u64(self.requests_completed);
        w.u64(self.tokens_generated);
        w.u32(self.engine_kernels);
        w.u32(self.cpu_features);
        w.u64(self.kv_caches_dropped);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            models_loaded: r.u32()?,
            sessions_open: r.u32()?,
            memory_used_bytes: r.u64()?,
            memory_budget_bytes: r.u64()?,
            requests_completed: r.u64()?,
            tokens_generated: r.u64()?,
            engine_kernels: r.u32()?,
            cpu_features: r.u32()?,
            kv_caches_dropped: r.u64()?,
        })
    }
}

/// Any message of the control command queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlCommand<'a> {
    /// See [`LoadModelBegin`].
    LoadModelBegin(LoadModelBegin),
    /// See [`LoadModelChunk`].
    LoadModelChunk(LoadModelChunk<'a>),
    /// See [`LoadModelEnd`].
    LoadModelEnd(LoadModelEnd),
    /// See [`UnloadModel`].
    UnloadModel(UnloadModel),
    /// See [`OpenSession`].
    OpenSession(OpenSession),
    /// See [`CloseSession`].
    CloseSession(CloseSession),
    /// See [`StatsRequest`].
    Stats(StatsRequest),
    /// See [`MemoryProbe`] (test-only, `feature::DIAGNOSTICS`).
    Probe(MemoryProbe),
    /// See [`LoadSealedBegin`] (`feature::SEALED`).
    LoadSealedBegin(LoadSealedBegin<'a>),
    /// See [`LoadSealedChunk`] (`feature::SEALED`).
    LoadSealedChunk(LoadSealedChunk<'a>),
    /// See [`GetStatement`] (`feature::SEALED_SESSION`).
    GetStatement(GetStatement),
    /// See [`GetToolStyle`] (`feature::GUEST_TOOLS`).
    GetToolStyle(GetToolStyle),
    /// See [`KvEvict`] (`feature::KV_EVICT`).
    KvEvict(KvEvict),
    /// See [`KvWant`] (`feature::KV_EVICT`).
    KvWant(KvWant),
    /// See [`KvRestore`] (`feature::KV_EVICT`).
    KvRestore(KvRestore<'a>),
}

impl<'a> ControlCommand<'a> {
    /// Decodes whichever command `buf` holds.
    pub fn decode(buf: &'a [u8]) -> Result<Self, WireError> {
        let (t, r) = decode_frame(buf)?;
        Ok(match t {
            msg_type::LOAD_MODEL_BEGIN => Self::LoadModelBegin(decode_checked(r)?),
            msg_type::LOAD_MODEL_CHUNK => Self::LoadModelChunk(decode_checked(r)?),
            msg_type::LOAD_MODEL_END => Self::LoadModelEnd(decode_checked(r)?),
            msg_type::UNLOAD_MODEL => Self::UnloadModel(decode_checked(r)?),
            msg_type::OPEN_SESSION => Self::OpenSession(decode_checked(r)?),
            msg_type::CLOSE_SESSION => Self::CloseSession(decode_checked(r)?),
            msg_type::STATS_REQUEST => Self::Stats(decode_checked(r)?),
            probe_type::MEMORY_PROBE => Self::Probe(decode_checked(r)?),
            msg_type::LOAD_SEALED_BEGIN => Self::LoadSealedBegin(decode_checked(r)?),
            msg_type::LOAD_SEALED_CHUNK => Self::LoadSealedChunk(decode_checked(r)?),
            session_type::GET_STATEMENT => Self::GetStatement(decode_checked(r)?),
            tool_type::GET_TOOL_STYLE => Self::GetToolStyle(decode_checked(r)?),
            kv_type::KV_EVICT => Self::KvEvict(decode_checked(r)?),
            kv_type::KV_WANT => Self::KvWant(decode_checked(r)?),
            kv_type::KV_RESTORE => Self::KvRestore(decode_checked(r)?),
            other => return Err(WireError::UnknownType(other)),
        })
    }

    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut alloc::vec::Vec<u8>) -> Result<(), WireError> {
        match self {
            Self::LoadSealedBegin(m) => m.encode(out),
            Self::LoadSealedChunk(m) => m.encode(out),
            Self::LoadModelBegin(m) => m.encode(out),
            Self::LoadModelChunk(m) => m.encode(out),
            Self::LoadModelEnd(m) => m.encode(out),
            Self::UnloadModel(m) => m.encode(out),
            Self::OpenSession(m) => m.encode(out),
            Self::CloseSession(m) => m.encode(out),
            Self::Stats(m) => m.encode(out),
            Self::Probe(m) => m.encode(out),
            Self::GetStatement(m) => m.encode(out),
            Self::GetToolStyle(m) => m.encode(out),
            Self::KvEvict(m) => m.encode(out),
            Self::KvWant(m) => m.encode(out),
            Self::KvRestore(m) => m.encode(out),
        }
    }
}

/// Any message of the control reply queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlReply {
    /// See [`Ack`].
    Ack(Ack),
    /// See [`StatsReply`].
    Stats(StatsReply),
    /// See [`ProbeReply`].
    Probe(ProbeReply),
    /// See [`StatementReply`].
    Statement(StatementReply),
    /// See [`ToolStyleReply`].
    ToolStyle(ToolStyleReply),
    /// See [`KvBlock`].
    KvBlock(KvBlock),
    /// See [`KvWanted`].
    KvWanted(KvWanted),
}

impl ControlReply {
    /// Decodes whichever reply `buf` holds.
    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let (t, r) = decode_frame(buf)?;
        Ok(match t {
            msg_type::ACK => Self::Ack(decode_checked(r)?),
            msg_type::STATS_REPLY => Self::Stats(decode_checked(r)?),
            probe_type::PROBE_REPLY => Self::Probe(decode_checked(r)?),
            session_type::STATEMENT_REPLY => Self::Statement(decode_checked(r)?),
            tool_type::TOOL_STYLE_REPLY => Self::ToolStyle(decode_checked(r)?),
            kv_type::KV_BLOCK => Self::KvBlock(decode_checked(r)?),
            kv_type::KV_WANTED => Self::KvWanted(decode_checked(r)?),
            other => return Err(WireError::UnknownType(other)),
        })
    }

    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut alloc::vec::Vec<u8>) -> Result<(), WireError> {
        match self {
            Self::Ack(m) => m.encode(out),
            Self::Stats(m) => m.encode(out),
            Self::Probe(m) => m.encode(out),
            Self::Statement(m) => m.encode(out),
            Self::ToolStyle(m) => m.encode(out),
            Self::KvBlock(m) => m.encode(out),
            Self::KvWanted(m) => m.encode(out),
        }
    }
}

#[cfg(test)]
#[path = "control_tests.rs"]
pub(crate) mod tests;
