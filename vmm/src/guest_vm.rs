//! A running guest with the engine, driven over virtio-llm: boot it, stream a model into
//! it, open sessions, generate, shut it down. Its isolation is whatever the host offers
//! (see [`crate::hypervisor::Isolation`]); `flexserve run`, the daemon and the benchmarks
//! are built on it.

use crate::devices::virtio_llm::{HostError, LlmHost, SealingRoot};
use crate::guest_images::GuestImages;
use crate::guest_kernels::GuestKernels;
use crate::machine::{Machine, MachineConfig, StopHandle, VmError};
use crate::memory_broker::{BrokerStats, MemoryBroker, MemoryError};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use virtio_llm::Status;
use virtio_llm::spec::MAX_CHUNK_BYTES;
use virtio_llm::wire::control::{
    Ack, CloseSession, ControlCommand, ControlReply, LoadModelBegin, LoadModelChunk, LoadModelEnd,
    OpenSession, StatsReply, StatsRequest, UnloadModel,
};
use virtio_llm::wire::probe::{MemoryProbe, ProbeOp, ProbeReply};

/// How long the guest may take to bring its device up after boot: well under a second on
/// KVM; a pKVM protected VM under emulated arm64 (`make test-arm64`) took 5 to 9 s on a
/// loaded 2-core machine, and over 30 s once with the host at load 5 to 10. Only a guest
/// that never comes up waits this long.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Chunks in flight while a model streams in (the driver posts 8 command buffers).
const CHUNKS_IN_FLIGHT: usize = 6;
/// Longest wait for the next response of a running generation before the CLI checks for
/// Ctrl-C again.
const POLL: Duration = Duration::from_millis(50);

/// What went wrong with the protected guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(transparent)]
    Images(#[from] crate::guest_images::ImageError),
    #[error("cannot create the guest VM: {0}")]
    Create(VmError),
    #[error("the guest VM stopped unexpectedly: {0}")]
    Crashed(VmError),
    #[error("the guest VM stopped without an error report")]
    Vanished,
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the {0} thread panicked")]
    ThreadPanicked(&'static str),
    #[error("the guest engine stopped with exit code {code}: {last_words}")]
    Exited { code: u32, last_words: String },
    #[error("talking to the guest failed: {0}")]
    Link(#[from] HostError),
    #[error("the guest refused to {what}: {}", explain(*.status))]
    Refused { what: &'static str, status: Status },
    #[error("not a sealed model: {0}")]
    SealedFile(sealed_model::SealError),
    #[error("at most {max} accepted owners may be listed, {count} given")]
    TooManyOwners { count: usize, max: usize },
    #[error("the guest answered out of protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    CutOff(#[from] CutOff),
    #[error("request failed in the guest ({status:?}): {message}")]
    Request { status: Status, message: String },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("the guest has no private memory to manage (--memory 0)")]
    NoPrivateMemory,
    #[error(
        "the guest engine cannot preempt a request (it did not accept VIRTIO_LLM_F_PREEMPT); \
         rebuild the guest images with `make image`"
    )]
    NoPreemption,
    #[error(
        "the guest engine runs one request at a time (it did not accept \
         VIRTIO_LLM_F_BATCH): the next may be sent once the one before has ended"
    )]
    OneAtATime,
    #[error("request {0} is already running in the guest")]
    AlreadyRunning(u64),
    #[error(
        "the guest engine takes no generation options (it did not accept \
         VIRTIO_LLM_F_OPTIONS); rebuild the guest images with `make image`"
    )]
    NoOptions,
    #[error(
        "the guest engine computes no embeddings (it did not accept VIRTIO_LLM_F_EMBED); \
         rebuild the guest images with `make image`"
    )]
    NoEmbeddings,
}

/// How the host stops a running request early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// For good: the client is gone or gave up.
    Cancel,
    /// For now: another request gets a turn, and this one resumes later.
    Preempt,
}

mod batch;
mod embed;
mod generation;
mod kv_evict;
pub mod kv_store;
pub mod request_watch;
mod sealed_load;
mod statement;
mod tool_style;
pub use batch::Message;
pub use kv_evict::KvCounters;
pub use kv_store::{FileKvStore, KvStore, MemoryKvStore};
pub use request_watch::{CutOff, Deadlines};
pub use sealed_load::{BEGIN_SEALED, FirstRequest, SealedLoadOptions, SealedLoaded, SealedLoading};

/// The engine ended on its own: its last console line says why (a panic message, say).
fn exited(code: u32, console: &[String]) -> GuestError {
    let last_words = console
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or_else(|| "no message".to_string(), |l| l.trim().to_string());
    GuestError::Exited { code, last_words }
}

fn explain(status: Status) -> &'static str {
    match status {
        Status::OutOfMemory => "not enough guest memory; raise --memory",
        Status::BadModel => {
            "the model file is not a valid GGUF model (or was corrupted in transit)"
        }
        Status::Unsupported => "the model's architecture or tensor types are not supported",
        Status::NoSuchModel => "no such model is loaded",
        Status::NoSuchSession => "no such session is open",
        Status::AlreadyExists => "the id is already in use",
        Status::Busy => "too many models or sessions",
        Status::ContextFull => "the context window is full",
        Status::BadRequest => "the request was invalid in the guest's state",
        Status::SealRejected => {
            "the sealed model did not unseal (the guest's console line above says why; \
             `flexserve guest-key` prints the key this guest unseals with)"
        }
        _ => "internal error in the guest",
    }
}

/// A booted guest with the engine program.
pub struct GuestVm {
    #[cfg(feature = "test-hooks")]
    mem: crate::parked_writer::ParkedWriter,
    /// Where the private pool is mapped in this process.
    #[cfg(feature = "test-hooks")]
    private_range: Option<std::ops::Range<u64>>,
    llm: Arc<LlmHost>,
    stop: Arc<StopHandle>,
    broker: Option<Arc<MemoryBroker>>,
    vm: Option<JoinHandle<VmEnd>>,
    isolation: crate::hypervisor::Isolation,
    kernels: GuestKernels,
    /// What every request is held to ([`Self::set_deadlines`]).
    deadlines: Deadlines,
    /// Evicted KV caches' store and counters (`feature::KV_EVICT`).
    kv: kv_evict::KvHost,
    /// The requests sent and not yet ended, each with its watch (`batch.rs`).
    in_flight: batch::InFlight,
}

/// How the VM thread ended: the run's result and the guest's console lines.
type VmEnd = (Result<u32, VmError>, Vec<String>);

/// Sizes of a guest.
#[derive(Clone, Copy, Debug)]
pub struct GuestConfig {
    pub vcpus: u8,
    /// Bytes of private memory (weights, KV caches, scratch), a multiple of 2 MiB: the
    /// most the guest may ever hold; its budget starts there.
    pub private_bytes: usize,
    /// Let the guest answer memory probes (tests only).
    pub diagnostics: bool,
    /// What kind of VM to ask for (the strongest the host has, by default).
    pub isolation: crate::hypervisor::IsolationRequest,
    /// Refuse to start below this isolation level.
    pub min_isolation: crate::hypervisor::IsolationLevel,
    /// The key root and measurement the guest derives its sealing key from; without them
    /// it refuses sealed models (`Unsupported`).
    pub key_root: Option<SealingRoot>,
    /// Offer KV reuse across requests (`VIRTIO_LLM_F_KV_REUSE`): closed sessions' caches
    /// are kept for later prompts that start the same way.
    pub kv_reuse: bool,
}

/// The guest's private memory as the host sees it.
#[derive(Clone, Copy, Debug)]
pub struct MemoryStatus {
    /// The region's size (the maximum budget).
    pub max_bytes: u64,
    /// The budget in force.
    pub budget_bytes: u64,
    /// Bytes the guest holds now, measured by the host.
    pub resident_bytes: u64,
    /// What the broker did so far.
    pub broker: BrokerStats,
}

impl GuestVm {
    /// Boots the guest and waits until its engine brought the device up.
    pub fn start(images: &GuestImages, config: GuestConfig) -> Result<Self, GuestError> {
        let mut machine = Machine::new(MachineConfig {
            private_size: config.private_bytes,
            // The guest runs until the host stops it.
            deadline: Duration::from_secs(u32::MAX as u64),
            diagnostics: config.diagnostics,
            isolation: config.isolation,
            min_isolation: config.min_isolation,
            key_root: config.key_root,
            kv_reuse: config.kv_reuse,
            ..MachineConfig::default()
        })
        .map_err(GuestError::Create)?;
        let isolation = machine.isolation().clone();
        let (llm, stop) = (machine.llm(), machine.stop_handle());
        let broker = match machine.private_memory() {
            Some(private) => Some(Arc::new(
                MemoryBroker::start(llm.clone(), private, stop.clone()).map_err(|source| {
                    GuestError::Thread {
                        what: "memory broker",
                        source,
                    }
                })?,
            )),
            None => None,
        };
        #[cfg(feature = "test-hooks")]
        let (mem, private_range) = (
            machine.parked_writer_for_tests(config.vcpus),
            machine.private_memory().map(|p| p.host_range()),
        );
        let (kernel, engine) = (images.kernel.clone(), images.engine.clone());
        let vm = std::thread::Builder::new()
            .name("flexserve-vm".into())
            .spawn(move || {
                let r = machine.boot(&kernel, &engine, config.vcpus);
                (r, machine.console().lines())
            })
            .map_err(|source| GuestError::Thread { what: "VM", source })?;
        let mut me = Self {
            #[cfg(feature = "test-hooks")]
            mem,
            #[cfg(feature = "test-hooks")]
            private_range,
            isolation,
            llm,
            stop,
            broker,
            vm: Some(vm),
            kernels: GuestKernels::from_stats(&StatsReply::default()),
            deadlines: Deadlines::default(),
            kv: Default::default(),
            in_flight: Default::default(),
        };
        if let Err(e) = me.llm.wait_ready(READY_TIMEOUT) {
            return Err(me.failure(e));
        }
        me.kernels = GuestKernels::from_stats(&me.stats()?);
        if let Some(warning) = me.kernels.weaker_than_host() {
            eprintln!("[vmm] warning: {warning}");
        }
        Ok(me)
    }

    /// The isolation the guest got (its level, what backs its private pool, why not
    /// stronger).
    pub fn isolation(&self) -> &crate::hypervisor::Isolation {
        &self.isolation
    }

    /// The guest engine's kernels beside the host engine's.
    pub fn kernels(&self) -> GuestKernels {
        self.kernels
    }

    /// Turns a link error into the reason the VM died, when it did. A guest that let a
    /// wait time out is stopped: it is stuck, and not trusted with the next command.
    fn failure(&mut self, e: HostError) -> GuestError {
        if let HostError::Timeout(waited) = e {
            self.stop.stop();
            return GuestError::CutOff(CutOff::Unresponsive {
                what: "answer",
                waited,
            });
        }
        if matches!(e, HostError::VmStopped) {
            return match self.vm.take().map(JoinHandle::join) {
                Some(Ok((Err(vm), _))) => GuestError::Crashed(vm),
                Some(Ok((Ok(code), console))) => exited(code, &console),
                _ => GuestError::Vanished,
            };
        }
        GuestError::Link(e)
    }

    fn command(&mut self, cmd: &ControlCommand<'_>) -> Result<(), GuestError> {
        self.llm
            .send_command(cmd, self.deadlines.command)
            .map_err(|e| self.failure(e))
    }

    fn ack(&mut self, what: &'static str, command: u16) -> Result<Ack, GuestError> {
        match self.llm.recv_reply(self.deadlines.command) {
            Ok(ControlReply::Ack(a)) if a.command == command => {
                if a.status == Status::Ok {
                    Ok(a)
                } else {
                    Err(GuestError::Refused {
                        what,
                        status: a.status,
                    })
                }
            }
            Ok(other) => Err(GuestError::Protocol(format!(
                "expected an ack of {what}, got {other:?}"
            ))),
            Err(e) => Err(self.failure(e)),
        }
    }

    /// Streams `file` into the guest as model `model_id`; `progress(bytes_sent)` after each
    /// chunk is acknowledged. `known_sha256` spares hashing the file here (the guest hashes
    /// what it receives regardless). Returns the file's SHA-256.
    pub fn load_model(
        &mut self,
        model_id: u32,
        file: &[u8],
        known_sha256: Option<[u8; 32]>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<[u8; 32], GuestError> {
        use virtio_llm::wire::control::msg_type::{LOAD_MODEL_BEGIN, LOAD_MODEL_END};
        // Hash on another thread while the guest reserves memory and the file streams (the
        // guest hashes its own copy as it arrives).
        std::thread::scope(|s| {
            let hasher = s.spawn(move || -> [u8; 32] {
                known_sha256.unwrap_or_else(|| Sha256::digest(file).into())
            });
            let streamed = self
                .command(&ControlCommand::LoadModelBegin(LoadModelBegin {
                    model_id,
                    total_bytes: file.len() as u64,
                }))
                .and_then(|()| self.ack("start loading the model", LOAD_MODEL_BEGIN))
                .and_then(|_| self.stream_chunks(model_id, file, progress));
            let sha256 = hasher
                .join()
                .map_err(|_| GuestError::ThreadPanicked("model hashing"))?;
            streamed?;
            self.command(&ControlCommand::LoadModelEnd(LoadModelEnd {
                model_id,
                sha256,
            }))?;
            self.ack("accept the model", LOAD_MODEL_END)?;
            Ok(sha256)
        })
    }

    /// Sends the file's chunks, a few in flight, and takes their acks.
    fn stream_chunks(
        &mut self,
        model_id: u32,
        file: &[u8],
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), GuestError> {
        use virtio_llm::wire::control::msg_type::LOAD_MODEL_CHUNK;
        let chunks: Vec<&[u8]> = file.chunks(MAX_CHUNK_BYTES).collect();
        let (mut sent, mut acked) = (0usize, 0usize);
        while acked < chunks.len() {
            while sent < chunks.len() && sent - acked < CHUNKS_IN_FLIGHT {
                self.command(&ControlCommand::LoadModelChunk(LoadModelChunk {
                    model_id,
                    offset: (sent * MAX_CHUNK_BYTES) as u64,
                    data: chunks[sent],
                }))?;
                sent += 1;
            }
            self.ack("take a model chunk", LOAD_MODEL_CHUNK)?;
            acked += 1;
            progress(((acked * MAX_CHUNK_BYTES).min(file.len())) as u64);
        }
        Ok(())
    }

    /// Opens session `session_id` of `context_len` tokens on a loaded model.
    pub fn open_session(
        &mut self,
        session_id: u32,
        model_id: u32,
        context_len: u32,
    ) -> Result<(), GuestError> {
        self.command(&ControlCommand::OpenSession(OpenSession {
            session_id,
            model_id,
            context_len,
        }))?;
        self.ack(
            "open a session",
            virtio_llm::wire::control::msg_type::OPEN_SESSION,
        )?;
        Ok(())
    }

    /// Closes a session.
    pub fn close_session(&mut self, session_id: u32) -> Result<(), GuestError> {
        self.command(&ControlCommand::CloseSession(CloseSession { session_id }))?;
        self.ack(
            "close a session",
            virtio_llm::wire::control::msg_type::CLOSE_SESSION,
        )?;
        Ok(())
    }

    /// Unloads model `model_id` with its sessions; its memory is free for the next model.
    pub fn unload_model(&mut self, model_id: u32) -> Result<(), GuestError> {
        self.unload_model_keeping(model_id, 0).map(|_| ())
    }

    /// Unloads a model, asking the guest to keep at most `keep_layers` of a sealed model's
    /// first layers (the layer-prefix cache; 0: none); how many it kept. A later
    /// [`SealedLoadOptions::resume`] load of the same body streams only the layers after.
    pub fn unload_model_keeping(
        &mut self,
        model_id: u32,
        keep_layers: u32,
    ) -> Result<u32, GuestError> {
        self.command(&ControlCommand::UnloadModel(UnloadModel {
            model_id,
            keep_layers,
        }))?;
        let ack = self.ack(
            "unload a model",
            virtio_llm::wire::control::msg_type::UNLOAD_MODEL,
        )?;
        Ok(if keep_layers > 0 { ack.object_id } else { 0 })
    }

    /// The guest's counters.
    pub fn stats(&mut self) -> Result<StatsReply, GuestError> {
        self.command(&ControlCommand::Stats(StatsRequest))?;
        match self.llm.recv_reply(self.deadlines.command) {
            Ok(ControlReply::Stats(s)) => Ok(s),
            Ok(other) => Err(GuestError::Protocol(format!(
                "expected stats, got {other:?}"
            ))),
            Err(e) => Err(self.failure(e)),
        }
    }

    fn broker(&self) -> Result<&MemoryBroker, GuestError> {
        self.broker.as_deref().ok_or(GuestError::NoPrivateMemory)
    }

    /// The guest's memory broker, to change its budget from another thread (while a
    /// generation runs here, say); `None` without private memory.
    pub fn memory_broker(&self) -> Option<Arc<MemoryBroker>> {
        self.broker.clone()
    }

    /// Sets the guest's private memory budget. Lowering it waits until the guest holds at
    /// most `bytes` (it evicts and relinquishes); a guest that has not within `deadline` is
    /// stopped and its memory freed ([`MemoryError::ShrinkIgnored`]). Returns how long the
    /// change took.
    pub fn set_budget(&mut self, bytes: u64, deadline: Duration) -> Result<Duration, GuestError> {
        Ok(self.broker()?.set_budget(bytes, deadline)?)
    }

    /// The private memory's size, budget and what the guest holds.
    pub fn memory(&self) -> Result<MemoryStatus, GuestError> {
        let broker = self.broker()?;
        let stats = broker.stats();
        Ok(MemoryStatus {
            max_bytes: broker.max_bytes(),
            budget_bytes: stats.budget,
            resident_bytes: broker.resident_bytes()?,
            broker: stats,
        })
    }

    /// Whether the guest accepted memory probes (`feature::DIAGNOSTICS`): only the test build
    /// of the engine does, and only when started with `diagnostics`.
    pub fn answers_probes(&self) -> bool {
        self.llm.negotiated(virtio_llm::spec::feature::DIAGNOSTICS)
    }

    /// Runs a memory probe (the guest must have been started with `diagnostics`).
    pub fn probe(&mut self, op: ProbeOp) -> Result<ProbeReply, GuestError> {
        self.command(&ControlCommand::Probe(MemoryProbe { op }))?;
        match self.llm.recv_reply(self.deadlines.command) {
            Ok(ControlReply::Probe(p)) if p.status == Status::Ok => Ok(p),
            Ok(ControlReply::Probe(p)) => Err(GuestError::Refused {
                what: "run a memory probe",
                status: p.status,
            }),
            Ok(other) => Err(GuestError::Protocol(format!(
                "expected a probe reply, got {other:?}"
            ))),
            Err(e) => Err(self.failure(e)),
        }
    }

    /// Guest memory (tests simulate a guest crash by overwriting its code).
    #[cfg(feature = "test-hooks")]
    pub fn memory_for_tests(&self) -> vm_memory::GuestMemoryMmap {
        self.mem.memory().clone()
    }

    /// A writer into guest memory that waits until every vCPU is parked (tests rewrite the
    /// guest's code with it).
    #[cfg(feature = "test-hooks")]
    pub fn parked_writer_for_tests(&self) -> crate::parked_writer::ParkedWriter {
        self.mem.clone()
    }

    /// The host addresses the private pool is mapped at (scans tell the pool from the rest
    /// of this process); `None` without private memory.
    #[cfg(feature = "test-hooks")]
    pub fn private_range_for_tests(&self) -> Option<std::ops::Range<u64>> {
        self.private_range.clone()
    }

    /// Stops the guest. Errors if it had already died on its own.
    pub fn shutdown(mut self) -> Result<Vec<String>, GuestError> {
        self.stop.stop();
        match self.vm.take().map(JoinHandle::join) {
            Some(Ok((Err(VmError::StoppedByHost), console))) => Ok(console),
            Some(Ok((Ok(code), console))) => Err(exited(code, &console)),
            Some(Ok((Err(e), _))) => Err(GuestError::Crashed(e)),
            _ => Err(GuestError::Vanished),
        }
    }
}

impl Drop for GuestVm {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(vm) = self.vm.take() {
            let _ = vm.join();
        }
    }
}
