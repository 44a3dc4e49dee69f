//! One request's outgoing tokens: they go out in slices (when the [`TokenPacer`] says so;
//! with their bytes when the guest owns text; sealed for a sealed request), with their
//! logprobs when asked for, and the times of the request's start and first token.
//!
//! It holds no part of the link: the link is lent at each token, so one request's stream
//! ([`super::token_stream::TokenStream`]) and every request of a batch (`batch.rs`) use
//! the same code over one driver.

use super::sealed_answer::SealedAnswer;
use super::token_pacer::TokenPacer;
use super::token_stream::{Link, Streamed};
use alloc::vec::Vec;
use inference_guest::sampler::LogprobSink;
use inference_guest::tokenizer::Tokenizer;
use virtio_llm::driver::{DriverError, DriverMemory, Transport};
use virtio_llm::spec::{
    MAX_LOGPROB_TOKENS_PER_RESPONSE, MAX_TOKEN_TEXT_BYTES, MAX_TOKENS_PER_RESPONSE, MIN_LOGPROB,
};
use virtio_llm::wire::memory::BudgetChange;
use virtio_llm::wire::response::{ResponseMsg, TokenLogprob, Tokens};

/// Room a sealed piece's framing and tag need in a `Tokens` message's text.
const SEALED_PIECE_OVERHEAD: usize = 64;

/// One request's tokens on their way out.
pub(super) struct Outbox<'a> {
    request_id: u64,
    pacer: TokenPacer,
    /// When the generation started and when its first token came (the VMM's clock).
    start: u64,
    first: Option<u64>,
    /// Tokens not sent yet, the bytes they stand for, and every token generated.
    batch: Vec<u32>,
    text: Vec<u8>,
    generated: Vec<u32>,
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

impl<'a> Outbox<'a> {
    /// The outbox of request `request_id`, which starts at `now_ns` (counter `ticks`).
    pub fn new(request_id: u64, now_ns: u64, ticks: u64) -> Self {
        Self {
            request_id,
            pacer: TokenPacer::new(now_ns, ticks),
            start: now_ns,
            first: None,
            batch: Vec::new(),
            text: Vec::new(),
            generated: Vec::new(),
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

    /// From now on the outbox carries `answer`'s sealed pieces.
    pub fn set_sealed(&mut self, answer: Option<&'a mut SealedAnswer>) {
        self.sealed = answer;
    }

    /// The request whose tokens these are.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// The tokens generated so far.
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// A stop string of the sealed request matched: the generation ends.
    pub fn stop_hit(&self) -> bool {
        self.stop_hit
    }

    /// The engine chose `token`: books it and sends what is due. It goes out with its bytes
    /// when `text_of` is given (the guest owns text).
    pub fn on_token<M: DriverMemory, T: Transport>(
        &mut self,
        link: &mut Link<'_, M, T>,
        token: u32,
        text_of: Option<&Tokenizer>,
    ) -> Result<(), DriverError> {
        let ticks = link.env.ticks();
        // The first token's time, and (until the counter's rate is known, while every token
        // is sent anyway) one clock read per token to learn it.
        if self.first.is_none() || !self.pacer.calibrated() {
            let now = link.env.now_ns();
            self.first.get_or_insert(now);
            self.pacer.calibrate(now, ticks);
        }
        self.generated.push(token);
        self.push(link, token, text_of)?;
        self.send_due(link, ticks)
    }

    /// Sends the tokens not sent yet now, if a transmit buffer is free, whatever the pacer
    /// says: a batch sends every request's tokens at the moment one of them is due, so the
    /// host takes them all on one notification (`service/batch.rs`).
    pub fn flush<M: DriverMemory, T: Transport>(
        &mut self,
        link: &mut Link<'_, M, T>,
    ) -> Result<(), DriverError> {
        self.send(link, false)
    }

    /// What is left to send once the generation ended at `end` (the VMM's clock).
    pub fn finish(
        self,
        end: u64,
        deferred_budget: Option<BudgetChange>,
        preempted: bool,
    ) -> Streamed {
        Streamed {
            batch: self.batch,
            text: self.text,
            held: self.held,
            stop_hit: self.stop_hit,
            logprobs: self.logprobs,
            start: self.start,
            first: self.first,
            end,
            deferred_budget,
            preempted,
        }
    }

    /// Adds `token` (and its bytes) to the batch; first sends the batch if the bytes would
    /// not fit one message. (A single piece longer than a message, which no real vocabulary
    /// has, is cut to fit.)
    fn push<M: DriverMemory, T: Transport>(
        &mut self,
        link: &mut Link<'_, M, T>,
        token: u32,
        text_of: Option<&Tokenizer>,
    ) -> Result<(), DriverError> {
        let piece = match text_of {
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
            self.send(link, true)?;
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
    fn send_due<M: DriverMemory, T: Transport>(
        &mut self,
        link: &mut Link<'_, M, T>,
        ticks: u64,
    ) -> Result<(), DriverError> {
        let most = if self.logprob_sink.is_some() {
            MAX_LOGPROB_TOKENS_PER_RESPONSE
        } else {
            MAX_TOKENS_PER_RESPONSE
        };
        let full = self.batch.len() >= most;
        if !full && !self.pacer.should_send(ticks) {
            return Ok(());
        }
        self.send(link, full)
    }

    /// Sends the batch: waiting for a transmit buffer if `wait`, else only if one is free.
    /// A sealed batch is sealed once: if it cannot go now it is held, and goes first.
    fn send<M: DriverMemory, T: Transport>(
        &mut self,
        link: &mut Link<'_, M, T>,
        wait: bool,
    ) -> Result<(), DriverError> {
        if let Some(held) = self.held.take()
            && !self.transmit(link, held, wait)?
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
        self.transmit(link, tokens, wait)?;
        Ok(())
    }

    /// Sends `tokens`, or keeps them for later: held if sealed, else back in the batch.
    fn transmit<M: DriverMemory, T: Transport>(
        &mut self,
        link: &mut Link<'_, M, T>,
        tokens: Tokens,
        wait: bool,
    ) -> Result<bool, DriverError> {
        let msg = ResponseMsg::Tokens(tokens);
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
}
