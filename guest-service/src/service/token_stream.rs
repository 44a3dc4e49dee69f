//! A generation's side of the link while the engine runs: every generated token goes
//! through [`TokenStream::on_token`], which streams the tokens out in slices (when the
//! [`TokenPacer`] says so; with their bytes when the guest owns text), applies a budget change at once (eviction waits for the end of
//! the request), and stops the generation on a cancel or a preempt for it; other requests
//! wait their turn.

use super::Environment;
use super::token_pacer::TokenPacer;
use crate::arriving::Appender;
use crate::memory::Relinquisher;
use crate::unsealing::Opener;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::vec::Vec;
use inference_guest::sampler::LogprobSink;
use inference_guest::tokenizer::Tokenizer;
use sealed_model::SealError;
use virtio_llm::Status;
use virtio_llm::driver::{DriverError, DriverMemory, LlmDriver, Transport};
use virtio_llm::spec::{
    MAX_LOGPROB_TOKENS_PER_RESPONSE, MAX_TOKEN_TEXT_BYTES, MAX_TOKENS_PER_RESPONSE, MIN_LOGPROB,
};
use virtio_llm::wire::control::{ControlCommand, ControlReply, msg_type as control_type};
use virtio_llm::wire::kv_evict::msg_type as kv_type;
use virtio_llm::wire::memory::BudgetChange;
use virtio_llm::wire::request::RequestMsg;
use virtio_llm::wire::response::{ResponseMsg, TokenLogprob, Tokens};
use virtio_llm::wire::sealed_session::msg_type as session_type;

use super::sealed_answer::SealedAnswer;

/// Room a sealed piece's framing and tag need in a `Tokens` message's text.
const SEALED_PIECE_OVERHEAD: usize = 64;

/// What the service lends a running generation.
pub(super) struct Link<'a, M: DriverMemory, T: Transport> {
    pub driver: &'a mut LlmDriver<M, T>,
    pub env: &'a dyn Environment,
    pub out: &'a mut Vec<u8>,
    pub scratch: &'a mut Vec<u8>,
    pub queued: &'a mut VecDeque<RequestMsg>,
    pub relinquisher: &'a mut Relinquisher,
}

/// One generation's stream of tokens.
pub(super) struct TokenStream<'a, M: DriverMemory, T: Transport> {
    link: Link<'a, M, T>,
    request_id: u64,
    pacer: TokenPacer,
    /// When the generation started and when its first token came (the VMM's clock).
    start: u64,
    first: Option<u64>,
    /// Tokens not sent yet, the bytes they stand for, and every token generated.
    batch: Vec<u32>,
    text: Vec<u8>,
    generated: Vec<u32>,
    /// The tokenizer that turns tokens into bytes, when the guest owns text.
    text_of: Option<&'a Tokenizer>,
    /// What stopped the stream other than the engine: the link broke.
    link_error: Option<DriverError>,
    /// A budget change applied to the pool mid-generation, whose eviction is still due.
    deferred_budget: Option<BudgetChange>,
    /// The device preempted the request (the engine reports that as a cancel).
    preempted: bool,
    /// A sealed request's answer: pieces are sealed, ids withheld, stop strings applied.
    sealed: Option<&'a mut SealedAnswer>,
    /// A sealed message that found no free transmit buffer: it goes first next time (its
    /// piece is numbered, so it cannot be sealed again).
    held: Option<Tokens>,
    /// A stop string of the sealed request matched.
    stop_hit: bool,
    /// Where the sampler leaves each token's logprobs, when the request asked for them,
    /// and those of the batch's tokens.
    logprob_sink: Option<LogprobSink>,
    logprobs: Vec<TokenLogprob>,
}

/// A sampler's logprobs as the wire carries them: at least `MIN_LOGPROB` (a banned token
/// has none at all, which JSON cannot say).
fn wire_logprob(l: inference_guest::sampler::TokenLogprobs) -> TokenLogprob {
    let clamp = |lp: f32| {
        if lp >= MIN_LOGPROB {
            lp.min(0.0)
        } else {
            MIN_LOGPROB
        }
    };
    TokenLogprob {
        logprob: clamp(l.logprob),
        top: l.top.into_iter().map(|(id, lp)| (id, clamp(lp))).collect(),
    }
}

/// Polls for the next chunk before [`TokenStream::feed`] sleeps (as the service's main loop
/// polls before it does).
const FEED_SPINS: u32 = 20_000;

/// Why [`TokenStream::feed`] could not feed the model.
#[derive(Debug)]
pub(super) enum FeedError {
    /// A chunk did not unseal: the load is over.
    Seal(SealError),
    /// The request was cancelled or preempted while it waited.
    Stopped,
    /// The link broke.
    Link(DriverError),
}

/// The answer to a control command that cannot be served while a pipelined load feeds
/// its first request.
fn busy(cmd: &ControlCommand<'_>) -> ControlReply {
    let (command, object) = match cmd {
        ControlCommand::LoadModelBegin(c) => (control_type::LOAD_MODEL_BEGIN, c.model_id),
        ControlCommand::LoadModelChunk(c) => (control_type::LOAD_MODEL_CHUNK, c.model_id),
        ControlCommand::LoadModelEnd(c) => (control_type::LOAD_MODEL_END, c.model_id),
        ControlCommand::UnloadModel(c) => (control_type::UNLOAD_MODEL, c.model_id),
        ControlCommand::OpenSession(c) => (control_type::OPEN_SESSION, c.session_id),
        ControlCommand::CloseSession(c) => (control_type::CLOSE_SESSION, c.session_id),
        ControlCommand::LoadSealedBegin(c) => (control_type::LOAD_SEALED_BEGIN, c.model_id),
        ControlCommand::LoadSealedChunk(c) => (control_type::LOAD_SEALED_CHUNK, c.model_id),
        ControlCommand::Stats(_) => (control_type::STATS_REQUEST, 0),
        ControlCommand::Probe(_) => (virtio_llm::wire::probe::msg_type::MEMORY_PROBE, 0),
        ControlCommand::GetStatement(_) => (session_type::GET_STATEMENT, 0),
        ControlCommand::KvEvict(q) => {
            return ControlReply::KvBlock(virtio_llm::wire::kv_evict::KvBlock {
                status: Status::Busy,
                handle: q.handle,
                block: 0,
                n_blocks: 0,
                epoch: 0,
                data: Vec::new(),
            });
        }
        ControlCommand::KvWant(q) => {
            return ControlReply::KvWanted(virtio_llm::wire::kv_evict::KvWanted {
                request_id: q.request_id,
                handle: 0,
                choice: virtio_llm::wire::kv_evict::KvChoice::None,
                n_blocks: 0,
                tokens: 0,
                restore_us: 0,
                recompute_us: 0,
            });
        }
        ControlCommand::KvRestore(q) => (kv_type::KV_RESTORE, q.handle),
        ControlCommand::GetToolStyle(q) => {
            return ControlReply::ToolStyle(virtio_llm::wire::tool_chat::ToolStyleReply {
                model_id: q.model_id,
                status: Status::Busy,
                style: None,
            });
        }
    };
    super::ack(command, Status::Busy, object)
}

/// What a finished stream leaves to send and to do.
pub(super) struct Streamed {
    pub batch: Vec<u32>,
    pub text: Vec<u8>,
    /// A sealed message still to send, before `batch`.
    pub held: Option<Tokens>,
    /// A stop string of the sealed request ended the generation.
    pub stop_hit: bool,
    /// The logprobs of `batch`'s tokens, when the request asked for them.
    pub logprobs: Vec<TokenLogprob>,
    pub start: u64,
    pub first: Option<u64>,
    /// When the stream ended (the VMM's clock).
    pub end: u64,
    pub deferred_budget: Option<BudgetChange>,
    pub preempted: bool,
}

impl<'a, M: DriverMemory, T: Transport> TokenStream<'a, M, T> {
    /// A stream for request `request_id`, which starts now; its tokens go out with their
    /// bytes when `text_of` is given.
    pub fn new(link: Link<'a, M, T>, request_id: u64, text_of: Option<&'a Tokenizer>) -> Self {
        let start = link.env.now_ns();
        let pacer = TokenPacer::new(start, link.env.ticks());
        Self {
            link,
            request_id,
            pacer,
            start,
            first: None,
            batch: Vec::new(),
            text: Vec::new(),
            generated: Vec::new(),
            text_of,
            link_error: None,
            deferred_budget: None,
            preempted: false,
            sealed: None,
            held: None,
            stop_hit: false,
            logprob_sink: None,
            logprobs: Vec::new(),
        }
    }

    /// From now on every token goes out with the logprobs the sampler left in `sink`.
    pub fn set_logprobs(&mut self, sink: Option<LogprobSink>) {
        self.logprob_sink = sink;
    }

    /// From now on the stream carries `answer`'s sealed pieces.
    pub fn set_sealed(&mut self, answer: Option<&'a mut SealedAnswer>) {
        self.sealed = answer;
    }

    /// The engine chose `token`: whether to go on.
    pub fn on_token(&mut self, token: u32) -> bool {
        let ticks = self.link.env.ticks();
        // The first token's time, and (until the counter's rate is known, while every token
        // is sent anyway) one clock read per token to learn it.
        if self.first.is_none() || !self.pacer.calibrated() {
            let now = self.link.env.now_ns();
            self.first.get_or_insert(now);
            self.pacer.calibrate(now, ticks);
        }
        self.generated.push(token);
        let go_on = self
            .push(token)
            .and_then(|()| self.send_due(ticks))
            .and_then(|()| self.take_budget_change())
            .and_then(|()| self.poll_requests());
        match go_on {
            Ok(go_on) => go_on && !self.stop_hit,
            Err(e) => {
                self.link_error = Some(e);
                false
            }
        }
    }

    /// Ends the stream: what is left, or the link's error.
    pub fn finish(self) -> Result<Streamed, DriverError> {
        if let Some(e) = self.link_error {
            return Err(e);
        }
        Ok(Streamed {
            batch: self.batch,
            text: self.text,
            held: self.held,
            stop_hit: self.stop_hit,
            logprobs: self.logprobs,
            start: self.start,
            first: self.first,
            end: self.link.env.now_ns(),
            deferred_budget: self.deferred_budget,
            preempted: self.preempted,
        })
    }

    /// From now on tokens go out with their bytes (the pipeline builds the tokenizer once
    /// the model's header arrived, after the stream began).
    pub fn set_text_of(&mut self, text_of: Option<&'a Tokenizer>) {
        self.text_of = text_of;
    }

    /// Serves the load while the request waits for its model's bytes (the pipeline): takes
    /// the next `LoadSealedChunk` of model `model_id` into `to` through `opener`, and
    /// answers it. Other control commands are answered `Busy` (the device sends none while
    /// a pipelined load runs); a cancel or preempt of the request ends the wait.
    pub fn feed(
        &mut self,
        model_id: u32,
        opener: &mut Opener,
        to: &mut Appender<'_>,
    ) -> Result<(), FeedError> {
        let mut idle = 0u32;
        loop {
            if !self.poll_requests().map_err(FeedError::Link)? {
                return Err(FeedError::Stopped);
            }
            self.take_budget_change().map_err(FeedError::Link)?;
            let link = &mut self.link;
            let env = link.env;
            let (reply, opened) = match link.driver.poll_command(link.scratch) {
                Ok(Some(ControlCommand::LoadSealedChunk(c))) if c.model_id == model_id => {
                    let opened = opener.open(to, c.index, c.data, &|| env.now_ns());
                    let status = match &opened {
                        Ok(()) => Status::Ok,
                        Err(e) => {
                            env.log(&format!("engine: sealed model {model_id} refused: {e}"));
                            Status::SealRejected
                        }
                    };
                    (
                        super::ack(control_type::LOAD_SEALED_CHUNK, status, model_id),
                        Some(opened),
                    )
                }
                Ok(Some(other)) => (busy(&other), None),
                // As the service's main loop waits: spin a while (the next chunk is usually
                // on its way), then ask for a notification and sleep.
                Ok(None) if idle < FEED_SPINS => {
                    idle += 1;
                    core::hint::spin_loop();
                    continue;
                }
                Ok(None) => {
                    idle = 0;
                    if !link.driver.arm().map_err(FeedError::Link)? {
                        env.park();
                    }
                    continue;
                }
                Err(DriverError::Malformed { .. }) => (super::ack(0, Status::BadRequest, 0), None),
                Err(e) => return Err(FeedError::Link(e)),
            };
            while !link
                .driver
                .send_reply(&reply, link.out)
                .map_err(FeedError::Link)?
            {
                if !link.driver.arm().map_err(FeedError::Link)? {
                    env.park();
                }
            }
            match opened {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => return Err(FeedError::Seal(e)),
                None => {}
            }
        }
    }

    /// The tokens generated so far, whether the stream goes on or not.
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// Adds `token` (and its bytes) to the batch; first sends the batch if the bytes would
    /// not fit one message. (A single piece longer than a message, which no real vocabulary
    /// has, is cut to fit.)
    fn push(&mut self, token: u32) -> Result<(), DriverError> {
        let piece = match self.text_of {
            Some(t) if !t.is_end_of_generation(token) => t.token_bytes(token),
            _ => &[],
        };
        let limit = MAX_TOKEN_TEXT_BYTES - SEALED_PIECE_OVERHEAD;
        let piece = &piece[..piece.len().min(limit)];
        let scanned;
        let piece = match self.sealed.as_deref_mut() {
            Some(answer) => {
                let (out, hit) = answer.scan(piece);
                self.stop_hit |= hit;
                scanned = out;
                &scanned[..]
            }
            None => piece,
        };
        if self.text.len() + piece.len() > limit {
            self.send(true)?;
        }
        self.batch.push(token);
        self.text.extend_from_slice(piece);
        if let Some(sink) = &self.logprob_sink {
            // The sampler left one for every token it chose; a missing one (never) would
            // break the one-per-id rule, so it reads as no probability.
            let l = sink.borrow_mut().take().map_or(
                TokenLogprob {
                    logprob: MIN_LOGPROB,
                    top: Vec::new(),
                },
                wire_logprob,
            );
            self.logprobs.push(l);
        }
        Ok(())
    }

    /// Sends the batch when the pacer says so (the first token at once, then every ~20 ms)
    /// and a transmit buffer is free; batches while the host is slower than generation. A
    /// full batch waits for a buffer.
    fn send_due(&mut self, ticks: u64) -> Result<(), DriverError> {
        let most = if self.logprob_sink.is_some() {
            MAX_LOGPROB_TOKENS_PER_RESPONSE
        } else {
            MAX_TOKENS_PER_RESPONSE
        };
        let full = self.batch.len() >= most;
        if !full && !self.pacer.should_send(ticks) {
            return Ok(());
        }
        self.send(full)
    }

    /// Sends the batch: waiting for a transmit buffer if `wait`, else only if one is free.
    /// A sealed batch is sealed once: if it cannot go now it is held, and goes first.
    fn send(&mut self, wait: bool) -> Result<(), DriverError> {
        if let Some(held) = self.held.take()
            && !self.transmit(held, wait)?
        {
            return Ok(());
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let ids = core::mem::take(&mut self.batch);
        let text = core::mem::take(&mut self.text);
        let logprobs = core::mem::take(&mut self.logprobs);
        let tokens = match self.sealed.as_deref_mut() {
            Some(answer) => Tokens {
                request_id: self.request_id,
                token_ids: alloc::vec![0; ids.len()],
                text: answer.seal(&text, false),
                logprobs: Vec::new(),
            },
            None => Tokens {
                request_id: self.request_id,
                token_ids: ids,
                text,
                logprobs,
            },
        };
        self.transmit(tokens, wait)?;
        Ok(())
    }

    /// Sends `tokens`, or keeps them for later: held if sealed, else back in the batch.
    fn transmit(&mut self, tokens: Tokens, wait: bool) -> Result<bool, DriverError> {
        let msg = ResponseMsg::Tokens(tokens);
        let link = &mut self.link;
        let sent = if wait {
            super::send_blocking(link.driver, link.env, &msg, link.out).map(|()| true)?
        } else {
            link.driver.send_response(&msg, link.out)?
        };
        if sent {
            self.pacer.sent();
        } else if let ResponseMsg::Tokens(t) = msg {
            if self.sealed.is_some() {
                self.held = Some(t);
            } else {
                self.batch = t.token_ids;
                self.text = t.text;
                self.logprobs = t.logprobs;
            }
        }
        Ok(sent)
    }

    /// A lower budget cannot wait for the end of a long generation: free memory goes back
    /// at once (answering the change), eviction follows when the request ends.
    fn take_budget_change(&mut self) -> Result<(), DriverError> {
        let link = &mut self.link;
        // Memory the host released goes back to the pool at once: until then it counts
        // against the budget, and small blocks may need a new chunk at any token.
        link.relinquisher.collect(link.driver, link.env.memory())?;
        let change = match link.driver.poll_budget(link.scratch) {
            Ok(Some(change)) => change,
            Ok(None) | Err(DriverError::Malformed { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mem = link.env.memory();
        mem.set_budget(change.new_budget_bytes);
        let env = link.env;
        let park = || env.park();
        link.relinquisher.trim_and_report(
            link.driver,
            mem,
            change.new_budget_bytes,
            change.sequence,
            &park,
        )?;
        self.deferred_budget = Some(change);
        Ok(())
    }

    /// A cancel or a preempt for this request stops it; anything else waits its turn.
    fn poll_requests(&mut self) -> Result<bool, DriverError> {
        let link = &mut self.link;
        match link.driver.poll_request(link.scratch) {
            Ok(Some(RequestMsg::Cancel(c))) if c.request_id == self.request_id => Ok(false),
            Ok(Some(RequestMsg::Preempt(p))) if p.request_id == self.request_id => {
                self.preempted = true;
                Ok(false)
            }
            Ok(Some(RequestMsg::Cancel(_) | RequestMsg::Preempt(_))) | Ok(None) => Ok(true),
            Ok(Some(other)) => {
                link.queued.push_back(other);
                Ok(true)
            }
            Err(DriverError::Malformed { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }
}
