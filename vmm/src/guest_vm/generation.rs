//! Running requests on a guest: send one, take its tokens and end, interrupt it. Every wait
//! is bounded by the request's [`RequestWatch`]: a guest that stops answering or floods
//! tokens fails the request and is stopped, never holding the caller forever.

use super::batch::Message;
use super::request_watch::Deadlines;
use super::{GuestError, GuestVm, Interrupt, POLL};
use virtio_llm::spec::feature;
use virtio_llm::wire::request::{GenerateRequest, RequestMsg};
use virtio_llm::wire::response::{EndOfStream, Tokens as TokensMsg};

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
        // The guest answers `KvWant` only between batches (a restore could not go into a
        // running batch): a request joining one recomputes its prompt.
        if self.in_flight() == 0 && self.wants_kv(req) {
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

    /// [`Self::await_request`], handing `on_tokens` each `Tokens` whole. `req` must be the
    /// only request in flight: the one-request case of `batch.rs`.
    pub(super) fn await_messages(
        &mut self,
        req: &GenerateRequest,
        on_tokens: &mut dyn FnMut(&TokensMsg),
        interrupt: &dyn Fn() -> Option<Interrupt>,
    ) -> Result<EndOfStream, GuestError> {
        let id = req.request_id;
        if self.in_flight() > 0 {
            return Err(GuestError::AlreadyRunning(id));
        }
        self.watch_request(req);
        let r = self.await_only(id, on_tokens, interrupt);
        // Gone already unless the wait failed before its end (an interrupt that could not
        // be sent): nothing more of it is taken.
        self.in_flight.remove(id);
        r
    }

    fn await_only(
        &mut self,
        id: u64,
        on_tokens: &mut dyn FnMut(&TokensMsg),
        interrupt: &dyn Fn() -> Option<Interrupt>,
    ) -> Result<EndOfStream, GuestError> {
        let mut interrupted = false;
        loop {
            if !interrupted && let Some(how) = interrupt() {
                self.interrupt_request(id, how)?;
                interrupted = true;
            }
            match self.next_message(POLL)? {
                None => {}
                Some(Message::Tokens(t)) => on_tokens(&t),
                Some(Message::End(e)) => return Ok(e),
                Some(Message::Failed { error, .. }) => return Err(error),
            }
        }
    }
}
