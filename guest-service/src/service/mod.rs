//! The guest's inference service: control commands (load and unload models, open and close
//! sessions, stats) and generation requests from virtio-llm, served by the engine.
//!
//! It is generic over the driver's memory and transport and over the [`Environment`] (clock,
//! memory left, parking), so the very code that runs in the guest also runs on the host
//! against the real device in one process.
//!
//! A model's file stays in memory the host cannot reach (the private region, in the guest);
//! the parsed view of it (`Gguf`, `Model`) borrows the file and is rebuilt per request,
//! which costs well under a millisecond against a whole generation.
//!
//! Memory: the host sets a budget on the private pool. When it shrinks, the service frees
//! the least valuable data first (KV caches of idle sessions, least recently used first;
//! then tokenizers, which are rebuilt on demand; then whole models) and relinquishes the
//! freed memory. An evicted session keeps its token history (a few bytes per token) and
//! rebuilds its KV cache by evaluating that history again on its next request; a session
//! whose model was evicted is closed, and its next request fails with NoSuchSession.
//!
//! This file holds the state and the main loop's step; `control.rs` serves control
//! commands, `generation.rs` runs requests (with `token_stream.rs` between tokens, and
//! `outbox.rs` and `token_pacer.rs` deciding when tokens go out), `batch.rs` runs requests
//! of one model together (`feature::BATCH`), `embed.rs` serves embeddings, `budget.rs` lives within the memory
//! budget, `probe.rs` answers test-only memory probes.
#![forbid(unsafe_code)]

mod batch;
mod budget;
mod constraint;
mod control;
mod embed;
mod generation;
mod kv_cost;
mod kv_evict;
mod kv_restore;
mod layer_prefix;
mod outbox;
mod pipeline;
mod prefix_cache;
mod probe;
mod sealed;
mod sealed_answer;
mod text;
mod token_pacer;
mod token_stream;
mod tool_chat;

use crate::loader::Loading;
use crate::memory::{PrivateMemory, Relinquisher};
use crate::unsealing::Unsealing;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::ToString;
use alloc::vec::Vec;
use inference_guest::model::{LlamaConfig, Session};
use inference_guest::parallel::Parallel;
use inference_guest::quant::{CpuFeatures, Kernels};
use inference_guest::tokenizer::{ChatTemplate, Tokenizer};
use virtio_llm::Status;
use virtio_llm::driver::{DriverError, DriverMemory, LlmDriver, Transport};
use virtio_llm::spec::feature;
use virtio_llm::wire::control::{Ack, ControlReply};
use virtio_llm::wire::echo::EchoReply;
use virtio_llm::wire::request::RequestMsg;
use virtio_llm::wire::response::{ErrorResponse, ResponseMsg};

/// What the service needs from where it runs.
pub trait Environment {
    /// Monotonic nanoseconds (the VMM's clock: each read may be an exit).
    fn now_ns(&self) -> u64;
    /// A free-running CPU counter that reads without an exit (TSC, `CNTVCT_EL0`), of unknown
    /// rate: the token pacer calibrates it against [`now_ns`](Self::now_ns).
    fn ticks(&self) -> u64;
    /// The private pool.
    fn memory(&self) -> &dyn PrivateMemory;
    /// Sleeps until the device notifies (or a short timeout); the caller re-polls after.
    fn park(&self);
    /// 64 unpredictable bits (memory probes' canaries).
    fn random(&self) -> u64;
    /// Reads `[addr, addr + len)` of guest memory and counts the bytes that are not zero
    /// (memory probes only).
    fn count_nonzero(&self, addr: u64, len: u64) -> u64;
    /// Writes `bytes` to a spare spot of the shared window and returns its address (memory
    /// probes only).
    fn expose(&self, bytes: &[u8]) -> u64;
    /// Writes a line to the guest's console (the VMM's log).
    fn log(&self, line: &str);
    /// Has idle vCPUs first-touch `[addr, addr + len)` of private memory in the background
    /// (`len` 0 withdraws the range); a no-op where first touches are cheap.
    fn prefault(&self, addr: u64, len: u64);
}

/// Private memory a session needs beyond its KV cache: the forward pass's buffers and
/// logits, each rounded up to the pool's 2 MiB granule.
const SESSION_SCRATCH_BYTES: u64 = 32 << 20;
/// Private memory a generation allocates and frees as it runs, beyond its session: the
/// parsed model's views (the vocabulary alone is a few MiB), the sampler, logits.
const GENERATION_SCRATCH_BYTES: u64 = 16 << 20;
/// How long making room may wait for the host to release relinquished memory.
const RELEASE_WAIT_NS: u64 = 2_000_000_000;

/// A loaded model: its file, the ids that end generation, its chat template's family, and
/// (built when text first goes in or out) its tokenizer.
struct LoadedModel {
    file: Vec<u8>,
    /// Its shapes, read once when it was kept (sizing sessions and batches parses nothing).
    cfg: LlamaConfig,
    end_ids: Vec<u32>,
    template: ChatTemplate,
    tokenizer: Option<Tokenizer>,
    /// The vocabulary as structured output's grammar walks it (built on first use).
    grammar_vocab: Option<inference_guest::constrain::Vocab>,
    last_used: u64,
    /// A sealed model's layers, from which an unload may keep a prefix.
    sealed_layers: Option<crate::unsealing::SealedLayers>,
}

/// An open session. Its KV cache (`session`) may be evicted; `history` (the tokens the
/// cache held) rebuilds it.
struct SessionSlot {
    model_id: u32,
    context_len: u32,
    session: Option<Session>,
    history: Vec<u32>,
    last_used: u64,
    /// A preempted sealed answer waiting for its continuation.
    sealed: Option<sealed_answer::SealedAnswer>,
    /// A preempted constrained answer's grammar state, for its next slice.
    constraint: Option<inference_guest::constrain::ConstraintState>,
    /// Every prompt it ran was plain: its cache may be kept when it closes.
    shareable: bool,
    /// Positions `0..prefilled` of its cache were evaluated in batches of two tokens or
    /// more: what a kept cache offers (a one-token step sums attention in another order,
    /// as llama.cpp does, so a generated token's keys and values differ in the last bits
    /// from what a prompt evaluation of the same tokens computes).
    prefilled: usize,
}

/// What one [`Service::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Idle,
    Worked,
}

/// The service's state.
pub struct Service {
    kernels: Kernels,
    /// What `kernels` were chosen from (reported in `StatsReply`).
    cpu_features: CpuFeatures,
    max_models: usize,
    max_sessions: usize,
    models: BTreeMap<u32, LoadedModel>,
    loading: Option<Loading>,
    /// A sealed model being received (`feature::SEALED`).
    unsealing: Option<Unsealing>,
    sessions: BTreeMap<u32, SessionSlot>,
    /// Closed sessions' KV caches, for requests whose prompts start the same way
    /// (`feature::KV_REUSE`; capacity 0 without it).
    prefix_cache: prefix_cache::PrefixCache<Session>,
    /// Unloaded sealed models' first layers, for their next load (`layer_prefix.rs`).
    layer_prefixes: layer_prefix::LayerPrefixes,
    /// Kept caches sealed and handed to the host, and brought back (`feature::KV_EVICT`).
    kv_evict: kv_evict::KvEviction,
    /// Requests that arrived while a generation was running.
    queued: VecDeque<RequestMsg>,
    requests_completed: u64,
    tokens_generated: u64,
    /// KV caches dropped to make room since boot, kept or of idle sessions (`StatsReply`).
    kv_caches_dropped: u64,
    scratch: Vec<u8>,
    out: Vec<u8>,
    relinquisher: Relinquisher,
    /// Ticks on every use of a model or session (least recently used goes first).
    clock: u64,
    /// Whether the device negotiated memory probes, and the probe's canary block.
    diagnostics: bool,
    #[cfg(feature = "probes")]
    canary: Option<Vec<u8>>,
    canary_block: (u64, u64),
    /// When the model being loaded began, and the time spent in its chunks (logged).
    load_ns: (u64, u64),
    /// The device negotiated `feature::GUEST_TEXT`: generated tokens go out with their bytes.
    guest_text: bool,
    /// The device negotiated `feature::SEALED_SESSION`.
    sealed_sessions: bool,
    /// The device negotiated `feature::OPTIONS` (requests may carry an options trailer).
    options: bool,
    /// The device negotiated `feature::EMBED` (`EmbedRequest`s).
    embeddings: bool,
    /// The device negotiated `feature::GUEST_TOOLS` (tool conversations rendered here).
    guest_tools: bool,
    /// The device negotiated `feature::BATCH`: requests on sessions of one model run
    /// together (`batch.rs`).
    batching: bool,
}

impl Service {
    /// A service that computes with `kernels` (chosen from `cpu_features`) and holds at most
    /// `max_models` models and `max_sessions` sessions, for a device that negotiated
    /// `features`.
    pub fn new(
        kernels: Kernels,
        cpu_features: CpuFeatures,
        max_models: u32,
        max_sessions: u32,
        features: u64,
    ) -> Self {
        Self {
            cpu_features,
            relinquisher: Relinquisher::default(),
            clock: 0,
            diagnostics: cfg!(feature = "probes") && features & (1 << feature::DIAGNOSTICS) != 0,
            guest_text: features & (1 << feature::GUEST_TEXT) != 0,
            sealed_sessions: features & (1 << feature::SEALED_SESSION) != 0,
            options: features & (1 << feature::OPTIONS) != 0,
            embeddings: features & (1 << feature::EMBED) != 0,
            guest_tools: features & (1 << feature::GUEST_TOOLS) != 0,
            batching: features & (1 << feature::BATCH) != 0,
            #[cfg(feature = "probes")]
            canary: None,
            canary_block: (0, 0),
            load_ns: (0, 0),
            kernels,
            max_models: max_models.max(1) as usize,
            max_sessions: max_sessions.max(1) as usize,
            models: BTreeMap::new(),
            loading: None,
            unsealing: None,
            sessions: BTreeMap::new(),
            prefix_cache: prefix_cache::PrefixCache::new(
                if features & (1 << feature::KV_REUSE) != 0 {
                    max_sessions.max(1) as usize
                } else {
                    0
                },
            ),
            kv_evict: kv_evict::KvEviction::new(
                features & (1 << feature::KV_EVICT) != 0
                    && features & (1 << feature::KV_REUSE) != 0,
            ),
            layer_prefixes: layer_prefix::LayerPrefixes::default(),
            queued: VecDeque::new(),
            requests_completed: 0,
            tokens_generated: 0,
            kv_caches_dropped: 0,
            scratch: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Serves at most one command and one request.
    pub fn step<M: DriverMemory, T: Transport>(
        &mut self,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<Step, DriverError> {
        let was_giving_back = self.relinquisher.busy();
        self.relinquisher.collect(driver, env.memory())?;
        if was_giving_back && !self.relinquisher.busy() {
            self.trim_to_budget(driver, env)?;
        }
        let mut worked = self.take_budget_changes(driver, env)?;
        let mut scratch = core::mem::take(&mut self.scratch);
        let reply = match driver.poll_command(&mut scratch) {
            Ok(Some(cmd)) => {
                self.take_budget_changes(driver, env)?;
                Some(self.command(cmd, driver, par, env))
            }
            Ok(None) => None,
            // A malformed command was refused by the driver; answer it so the host's
            // command/reply pairing holds.
            Err(DriverError::Malformed { .. }) => Some(ack(0, Status::BadRequest, 0)),
            Err(e) => return Err(e),
        };
        self.scratch = scratch;
        if let Some(r) = reply {
            worked = true;
            self.send_reply(driver, env, &r)?;
        }
        // A request waits while an evicted cache comes back (it may be the one it needs).
        let request = if self.kv_evict.restoring() {
            None
        } else {
            match self.queued.pop_front() {
                Some(r) => Some(r),
                None => match driver.poll_request(&mut self.scratch) {
                    Ok(r) => r,
                    // Refused and its buffer reposted; nothing identifies it to answer.
                    Err(DriverError::Malformed { .. }) => return Ok(Step::Worked),
                    Err(e) => return Err(e),
                },
            }
        };
        if let Some(r) = request {
            worked = true;
            self.take_budget_changes(driver, env)?;
            let Some(r) = self.take_kv_wants(r, driver, par, env)? else {
                return Ok(Step::Worked);
            };
            self.request(r, driver, par, env)?;
        }
        Ok(if worked { Step::Worked } else { Step::Idle })
    }

    /// Applies every budget change that has arrived; `true` if there was one.
    ///
    /// Called again once a command or request is in hand: budget changes come on their own
    /// queue, so a host that raises the budget and then sends a request can have the request
    /// picked up after this step's first look found no change. The host publishes the change
    /// first, so once its request is visible the change is too, and the request is served
    /// under the budget the host meant.
    fn take_budget_changes<M: DriverMemory, T: Transport>(
        &mut self,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<bool, DriverError> {
        let mut any = false;
        while let Some(change) = driver.poll_budget(&mut self.scratch)? {
            any = true;
            self.apply_budget(change, driver, env)?;
        }
        Ok(any)
    }

    fn request<M: DriverMemory, T: Transport>(
        &mut self,
        req: RequestMsg,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        match req {
            RequestMsg::Generate(g) if self.batchable(&g, None) => {
                self.run_batch(g, driver, par, env)
            }
            RequestMsg::Generate(g) => self.generate(g, driver, par, env),
            RequestMsg::Embed(e) => self.embed(e, driver, par, env),
            // Nothing is running now: a cancel or preempt for an unknown or finished request
            // is a no-op.
            RequestMsg::Cancel(_) | RequestMsg::Preempt(_) => Ok(()),
            RequestMsg::Echo(e) => {
                let reply = ResponseMsg::Echo(EchoReply {
                    request_id: e.request_id,
                    data: e.data,
                });
                self.send_response(driver, env, &reply)
            }
        }
    }

    fn send_reply<M: DriverMemory, T: Transport>(
        &mut self,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
        reply: &ControlReply,
    ) -> Result<(), DriverError> {
        while !driver.send_reply(reply, &mut self.out)? {
            if !driver.arm()? {
                env.park();
            }
        }
        Ok(())
    }

    fn send_response<M: DriverMemory, T: Transport>(
        &mut self,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
        msg: &ResponseMsg,
    ) -> Result<(), DriverError> {
        send_blocking(driver, env, msg, &mut self.out)
    }
}

fn error_response(request_id: u64, status: Status, message: &str) -> ResponseMsg {
    ResponseMsg::Error(ErrorResponse {
        request_id,
        status,
        message: message.to_string(),
    })
}

fn ack(command: u16, status: Status, object_id: u32) -> ControlReply {
    ControlReply::Ack(Ack {
        command,
        status,
        object_id,
    })
}

/// Sends a response, parking while every transmit buffer is with the device.
fn send_blocking<M: DriverMemory, T: Transport>(
    driver: &mut LlmDriver<M, T>,
    env: &dyn Environment,
    msg: &ResponseMsg,
    out: &mut Vec<u8>,
) -> Result<(), DriverError> {
    while !driver.send_response(msg, out)? {
        if !driver.arm()? {
            env.park();
        }
    }
    Ok(())
}
