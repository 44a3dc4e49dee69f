//! A generation's side of the link while the engine runs: every generated token goes
//! through [`TokenStream::on_token`], which streams the tokens out in slices (its
//! [`Outbox`]), applies a budget change at once (eviction waits for the end of the
//! request), and stops the generation on a cancel or a preempt for it; other requests
//! wait their turn.

use super::Environment;
use super::outbox::Outbox;
use crate::arriving::Appender;
use crate::memory::Relinquisher;
use crate::unsealing::Opener;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::vec::Vec;
use inference_guest::sampler::LogprobSink;
use inference_guest::tokenizer::Tokenizer;
use sealed_model::{Join, SealError};
use virtio_llm::Status;
use virtio_llm::driver::{DriverError, DriverMemory, LlmDriver, Transport};
use virtio_llm::wire::control::{ControlCommand, ControlReply, msg_type as control_type};
use virtio_llm::wire::kv_evict::msg_type as kv_type;
use virtio_llm::wire::memory::BudgetChange;
use virtio_llm::wire::request::RequestMsg;
use virtio_llm::wire::response::{
    EndOfStream, ResponseMsg, StopReason, Timings, TokenLogprob, Tokens,
};
use virtio_llm::wire::sealed_session::msg_type as session_type;

use super::sealed_answer::SealedAnswer;

/// What the service lends a running generation.
pub(super) struct Link<'a, M: DriverMemory, T: Transport> {
    pub driver: &'a mut LlmDriver<M, T>,
    pub env: &'a dyn Environment,
    pub out: &'a mut Vec<u8>,
    pub scratch: &'a mut Vec<u8>,
    pub queued: &'a mut VecDeque<RequestMsg>,
    pub relinquisher: &'a mut Relinquisher,
}

/// The end of a request cancelled before it started: no prompt evaluated, no token.
fn cancelled_before_start(request_id: u64) -> ResponseMsg {
    ResponseMsg::EndOfStream(EndOfStream {
        request_id,
        reason: StopReason::Cancelled,
        prompt_tokens: 0,
        generated_tokens: 0,
        cached_tokens: 0,
        timings: Timings::default(),
    })
}

impl<M: DriverMemory, T: Transport> Link<'_, M, T> {
    /// A cancel for request `id`, which is not running: if it waits in `placing` (a batch's
    /// requests not placed yet) or in the queue, it leaves and ends at once, cancelled,
    /// rather than run to its end for nobody.
    pub fn cancel_waiting(
        &mut self,
        id: u64,
        placing: &mut Vec<RequestMsg>,
    ) -> Result<(), DriverError> {
        let waiting = |r: &RequestMsg| matches!(r, RequestMsg::Generate(g) if g.request_id == id);
        if let Some(at) = placing.iter().position(waiting) {
            placing.remove(at);
        } else if let Some(at) = self.queued.iter().position(waiting) {
            self.queued.remove(at);
        } else {
            return Ok(());
        }
        super::send_blocking(self.driver, self.env, &cancelled_before_start(id), self.out)
    }

    /// A lower budget cannot wait for the end of a long generation: free memory goes back
    /// at once (answering the change); the caller evicts when its requests end. The change
    /// applied, if one came.
    pub fn take_budget_change(&mut self) -> Result<Option<BudgetChange>, DriverError> {
        let link = self;
        // Memory the host released goes back to the pool at once: until then it counts
        // against the budget, and small blocks may need a new chunk at any token.
        link.relinquisher.collect(link.driver, link.env.memory())?;
        let change = match link.driver.poll_budget(link.scratch) {
            Ok(Some(change)) => change,
            Ok(None) | Err(DriverError::Malformed { .. }) => return Ok(None),
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
        Ok(Some(change))
    }
}

/// One generation's stream of tokens.
pub(super) struct TokenStream<'a, M: DriverMemory, T: Transport> {
    link: Link<'a, M, T>,
    out: Outbox<'a>,
    /// The tokenizer that turns tokens into bytes, when the guest owns text.
    text_of: Option<&'a Tokenizer>,
    /// What stopped the stream other than the engine: the link broke.
    link_error: Option<DriverError>,
    /// A budget change applied to the pool mid-generation, whose eviction is still due.
    deferred_budget: Option<BudgetChange>,
    /// The device preempted the request (the engine reports that as a cancel).
    preempted: bool,
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
        let out = Outbox::new(request_id, link.env.now_ns(), link.env.ticks());
        Self {
            link,
            out,
            text_of,
            link_error: None,
            deferred_budget: None,
            preempted: false,
        }
    }

    /// From now on every token goes out with the logprobs the sampler left in `sink`.
    pub fn set_logprobs(&mut self, sink: Option<LogprobSink>) {
        self.out.set_logprobs(sink);
    }

    /// From now on the stream carries `answer`'s sealed pieces.
    pub fn set_sealed(&mut self, answer: Option<&'a mut SealedAnswer>) {
        self.out.set_sealed(answer);
    }

    /// The engine chose `token`: whether to go on.
    pub fn on_token(&mut self, token: u32) -> bool {
        let go_on = self
            .out
            .on_token(&mut self.link, token, self.text_of)
            .and_then(|()| self.take_budget_change())
            .and_then(|()| self.poll_requests());
        match go_on {
            Ok(go_on) => go_on && !self.out.stop_hit(),
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
        let end = self.link.env.now_ns();
        Ok(self.out.finish(end, self.deferred_budget, self.preempted))
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
        join: &dyn Join,
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
                    let opened = opener.open(to, c.index, c.data, &|| env.now_ns(), join);
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
        self.out.generated()
    }

    /// Applies a budget change that arrived ([`Link::take_budget_change`]); its eviction
    /// waits for the end of the request.
    fn take_budget_change(&mut self) -> Result<(), DriverError> {
        if let Some(change) = self.link.take_budget_change()? {
            self.deferred_budget = Some(change);
        }
        Ok(())
    }

    /// A cancel or a preempt for this request stops it; anything else waits its turn.
    fn poll_requests(&mut self) -> Result<bool, DriverError> {
        let id = self.out.request_id();
        let link = &mut self.link;
        match link.driver.poll_request(link.scratch) {
            Ok(Some(RequestMsg::Cancel(c))) if c.request_id == id => Ok(false),
            Ok(Some(RequestMsg::Preempt(p))) if p.request_id == id => {
                self.preempted = true;
                Ok(false)
            }
            Ok(Some(RequestMsg::Cancel(c))) => {
                link.cancel_waiting(c.request_id, &mut Vec::new())?;
                Ok(true)
            }
            Ok(Some(RequestMsg::Preempt(_))) | Ok(None) => Ok(true),
            Ok(Some(other)) => {
                link.queued.push_back(other);
                Ok(true)
            }
            Err(DriverError::Malformed { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }
}
