//! Running requests on a guest: send one, take its tokens and end, interrupt it. Every wait
//! is bounded by the request's [`RequestWatch`]: a guest that stops answering or floods
//! tokens fails the request and is stopped, never holding the caller forever.

use super::request_watch::{Deadlines, RequestWatch, Tokens};
use super::{GuestError, GuestVm, Interrupt, POLL};
use crate::devices::virtio_llm::HostError;
use std::time::Instant;
use virtio_llm::spec::feature;
use virtio_llm::wire::request::{CancelRequest, GenerateRequest, PreemptRequest, RequestMsg};
use virtio_llm::wire::response::{EndOfStream, ResponseMsg, Tokens as TokensMsg};

impl GuestVm {
    /// Whether the guest owns text (`feature::GUEST_TEXT`): it takes chat prompts and sends
    /// the bytes of the tokens it generates, so the host needs no tokenizer.
    pub fn owns_text(&self) -> bool {
        self.llm.negotiated(feature::GUEST_TEXT)
    }

    /// The deadlines every request is held to.
    pub fn deadlines(&self) -> Deadlines {
        self.deadlines
    }

    /// Sets the deadlines every later request is held to (the default is
    /// [`Deadlines::GENEROUS`]).
    pub fn set_deadlines(&mut self, deadlines: Deadlines) {
        self.deadlines = deadlines;
    }

    /// Runs `req`, calling `on_tokens` with each batch of generated ids and (when the guest
    /// [owns text](Self::owns_text)) the bytes they stand for, as it arrives.
    /// `cancelled()` is checked while waiting; once it returns true the request is
    /// cancelled (it still ends with its `EndOfStream`, reason cancelled).
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        on_tokens: &mut dyn FnMut(&[u32], &[u8]),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<EndOfStream, GuestError> {
        self.generate_until(req, on_tokens, &|| cancelled().then_some(Interrupt::Cancel))
    }

    /// [`Self::generate`], stopped early when `interrupt()` says how: cancelled for good
    /// (reason cancelled), or preempted so another request can run (reason preempted; the
    /// session resumes from the last token with its next request).
    pub fn generate_until(
        &mut self,
        req: &GenerateRequest,
        on_tokens: &mut dyn FnMut(&[u32], &[u8]),
        interrupt: &dyn Fn() -> Option<Interrupt>,
    ) -> Result<EndOfStream, GuestError> {
        self.generate_messages(req, &mut |t| on_tokens(&t.token_ids, &t.text), interrupt)
    }

    /// [`Self::generate_until`], handing `on_tokens` each `Tokens` whole: with its
    /// logprobs, when the request asked for them (`req.options`).
    pub fn generate_messages(
        &mut self,
        req: &GenerateRequest,
        on_tokens: &mut dyn FnMut(&TokensMsg),
        interrupt: &dyn Fn() -> Option<Interrupt>,
    ) -> Result<EndOfStream, GuestError> {
        self.start_request(req)?;
        self.await_messages(req, on_tokens, interrupt)
    }

    /// Whether the guest takes generation options (`feature::OPTIONS`: penalties, logit
    /// bias, logprobs).
    pub fn takes_options(&self) -> bool {
        self.llm.negotiated(feature::OPTIONS)
    }

    /// Sends `req` without waiting for it: its tokens and end come with
    /// [`Self::await_request`] (the sealed-load pipeline sends the first request before the
    /// model's chunks, so the guest can compute each layer as it arrives).
    pub fn start_request(&mut self, req: &GenerateRequest) -> Result<(), GuestError> {
        if !req.options.is_empty() && !self.takes_options() {
            return Err(GuestError::NoOptions);
        }
        let send = |vm: &mut Self| {
            vm.llm
                .send_request(&RequestMsg::Generate(req.clone()), vm.deadlines.command)
                .map_err(|e| vm.failure(e))
        };
        if self.wants_kv(req) {
            self.with_kv_want(req, send)
        } else {
            send(self)
        }
    }

    /// Waits for the end of `req` (sent with [`Self::start_request`]), as
    /// [`Self::generate_until`] does. The request's deadlines start now. Tokens that come
    /// after a cancel are dropped, not handed to `on_tokens`.
    pub fn await_request(
        &mut self,
        req: &GenerateRequest,
        on_tokens: &mut dyn FnMut(&[u32], &[u8]),
        interrupt: &dyn Fn() -> Option<Interrupt>,
    ) -> Result<EndOfStream, GuestError> {
        self.await_messages(req, &mut |t| on_tokens(&t.token_ids, &t.text), interrupt)
    }

    /// [`Self::await_request`], handing `on_tokens` each `Tokens` whole.
    pub(super) fn await_messages(
        &mut self,
        req: &GenerateRequest,
        on_tokens: &mut dyn FnMut(&TokensMsg),
        interrupt: &dyn Fn() -> Option<Interrupt>,
    ) -> Result<EndOfStream, GuestError> {
        let id = req.request_id;
        let mut watch = RequestWatch::new(self.deadlines, req.sampling.max_tokens, Instant::now());
        let mut interrupted = false;
        loop {
            if !interrupted && let Some(how) = interrupt() {
                self.interrupt(id, how)?;
                watch.interrupted(how);
                interrupted = true;
            }
            let left = watch
                .time_left(Instant::now())
                .map_err(|e| self.cut_off(e))?;
            let resp = match self.llm.recv_response(left.min(POLL)) {
                Ok(r) => r,
                Err(HostError::Timeout(_)) => continue,
                Err(e) => return Err(self.failure(e)),
            };
            match resp {
                ResponseMsg::Tokens(t) if t.request_id == id => {
                    match watch.tokens(t.token_ids.len(), Instant::now()) {
                        Ok(Tokens::Deliver) => on_tokens(&t),
                        Ok(Tokens::Discard) => {}
                        Err(e) => return Err(self.cut_off(e)),
                    }
                }
                ResponseMsg::EndOfStream(e) if e.request_id == id => return Ok(e),
                ResponseMsg::Error(e) if e.request_id == id => {
                    // Guest text: escaped before it reaches a log or a client.
                    return Err(GuestError::Request {
                        status: e.status,
                        message: crate::devices::escape(e.message.as_bytes()),
                    });
                }
                other => {
                    return Err(GuestError::Protocol(format!(
                        "unexpected response while running request {id}: {other:?}"
                    )));
                }
            }
        }
    }

    /// Tells the guest to stop request `id` the way `how` says.
    fn interrupt(&mut self, id: u64, how: Interrupt) -> Result<(), GuestError> {
        let msg = match how {
            Interrupt::Cancel => RequestMsg::Cancel(CancelRequest { request_id: id }),
            Interrupt::Preempt if self.llm.negotiated(feature::PREEMPT) => {
                RequestMsg::Preempt(PreemptRequest { request_id: id })
            }
            Interrupt::Preempt => return Err(GuestError::NoPreemption),
        };
        self.llm
            .send_request(&msg, self.deadlines.command)
            .map_err(|e| self.failure(e))
    }

    /// Stops a guest that missed a deadline or broke the request's limits: it is not
    /// trusted with another request, and a spinning one would keep costing the host CPU.
    fn cut_off(&mut self, why: super::request_watch::CutOff) -> GuestError {
        self.stop.stop();
        GuestError::CutOff(why)
    }
}
