//! Sealed sessions in the guest (`feature::SEALED_SESSION`, docs/sealed-session.md): a
//! request sealed to the guest's session key is opened here, its stop strings are applied
//! here, and its answer leaves as numbered sealed pieces with the token ids withheld, so
//! the user's text exists in the clear only in the client and in this guest.
//!
//! A sealed answer lives on its session across preemptions: the sealer's numbering, the
//! stop scanner's held-back bytes and the token to feed back when it goes on.

use super::generation::{Refusal, refuse};
use super::{Service, ack};
use alloc::format;
use alloc::vec::Vec;
use inference_guest::stop::StopScanner;
use sealed_session::{
    GuestStatement, Isolation, KeyRootKind, ResponseSealer, SealedRequest, SignedStatement,
    derive_attestation_key, derive_session_key, open_request,
};
use virtio_llm::Status;
use virtio_llm::driver::{DriverMemory, LlmDriver, Transport};
use virtio_llm::wire::control::ControlReply;
use virtio_llm::wire::request::{GenerateRequest, Prompt, SamplingParams};
use virtio_llm::wire::sealed_session::{
    GetStatement, SealedContent, StatementReply, binding, msg_type,
};

/// A sealed answer in progress.
pub(super) struct SealedAnswer {
    sealer: ResponseSealer,
    stop: StopScanner,
    /// The sampling the request was bound to.
    bound: SamplingParams,
    slices: u32,
    generated: u32,
    /// The last token of a preempted slice, not yet fed back.
    pending: Option<u32>,
}

impl SealedAnswer {
    /// Runs `bytes` through the stop strings: what may go out now, and whether one matched.
    pub fn scan(&mut self, bytes: &[u8]) -> (Vec<u8>, bool) {
        self.stop.push(bytes)
    }

    /// Seals the next piece of the answer; `last` ends it, with the bytes the stop scanner
    /// still held (unless a stop string matched).
    pub fn seal(&mut self, text: &[u8], last: bool) -> Vec<u8> {
        let mut text = text.to_vec();
        if last {
            text.extend(self.stop.finish());
        }
        // The sealer refuses only after its last piece, and nothing is sealed after that
        // (the answer is dropped from its session when it ends).
        self.sealer.seal(&text, last).unwrap_or_default()
    }

    /// Books a finished slice: `generated` tokens, the last of them `last`.
    pub fn slice_done(&mut self, generated: u32, last: Option<u32>) {
        self.slices += 1;
        self.generated = self.generated.saturating_add(generated);
        self.pending = last;
    }
}

impl Service {
    /// For a sealed prompt or a continuation, the request as the engine runs it (the opened
    /// prompt, or the token to feed back, with the bound sampling) and its answer; `None`
    /// for any other prompt.
    pub(super) fn open_sealed<M: DriverMemory, T: Transport>(
        &mut self,
        g: &GenerateRequest,
        driver: &LlmDriver<M, T>,
    ) -> Result<Option<(GenerateRequest, SealedAnswer)>, Refusal> {
        let (prompt, answer) = match &g.prompt {
            Prompt::Sealed(p) => {
                if !self.sealed_sessions || !self.guest_text {
                    return Err(refuse(
                        Status::Unsupported,
                        "sealed requests need the SEALED_SESSION and GUEST_TEXT features",
                    ));
                }
                let root = driver.key_root().ok_or_else(|| {
                    refuse(
                        Status::Unsupported,
                        "this guest has no key root to open sealed requests with",
                    )
                })?;
                let key = derive_session_key(&root.root, &root.measurement);
                let request = SealedRequest::from_bytes(&p.request)
                    .map_err(|e| refuse(Status::BadRequest, &format!("{e}")))?;
                let bound = binding(&p.model, p.stream, &g.sampling);
                let (content, sealer) = open_request(&key, &request, &bound)
                    .map_err(|e| refuse(Status::BadRequest, &format!("{e}")))?;
                let content = SealedContent::decode(&content).map_err(|e| {
                    refuse(
                        Status::BadRequest,
                        &format!("the sealed content is malformed: {e}"),
                    )
                })?;
                let answer = SealedAnswer {
                    sealer,
                    stop: StopScanner::new(&content.stop),
                    bound: g.sampling,
                    slices: 0,
                    generated: 0,
                    pending: None,
                };
                (content.prompt, answer)
            }
            Prompt::Continue => {
                let answer = self
                    .sessions
                    .get_mut(&g.session_id)
                    .and_then(|s| s.sealed.take())
                    .ok_or_else(|| {
                        refuse(
                            Status::BadRequest,
                            "no preempted sealed answer on this session",
                        )
                    })?;
                let unchanged = SamplingParams {
                    max_tokens: answer.bound.max_tokens,
                    ..g.sampling
                } == answer.bound;
                if !unchanged {
                    return Err(refuse(
                        Status::BadRequest,
                        "a continuation changed the sealed request's sampling",
                    ));
                }
                let token = answer.pending.ok_or_else(|| {
                    refuse(
                        Status::BadRequest,
                        "the sealed answer has no token to go on from",
                    )
                })?;
                (Prompt::Tokens(alloc::vec![token]), answer)
            }
            _ => return Ok(None),
        };
        let left = answer
            .bound
            .max_tokens
            .saturating_sub(answer.generated)
            .max(1);
        let sampling = SamplingParams {
            seed: answer.bound.seed.wrapping_add(u64::from(answer.slices)),
            max_tokens: g.sampling.max_tokens.min(left),
            ..answer.bound
        };
        let run = GenerateRequest {
            options: Default::default(),
            request_id: g.request_id,
            session_id: g.session_id,
            sampling,
            prompt,
        };
        Ok(Some((run, answer)))
    }

    /// Keeps a preempted answer on its session for the continuation; drops an ended one.
    pub(super) fn keep_sealed(&mut self, session_id: u32, answer: SealedAnswer, preempted: bool) {
        if preempted && let Some(slot) = self.sessions.get_mut(&session_id) {
            slot.sealed = Some(answer);
        }
    }

    /// The guest's signed statement, with the isolation and key-root kind the host reports.
    pub(super) fn statement<M: DriverMemory, T: Transport>(
        &self,
        req: &GetStatement,
        driver: &LlmDriver<M, T>,
    ) -> ControlReply {
        let refused = |status| ack(msg_type::GET_STATEMENT, status, 0);
        let Some(root) = driver.key_root().filter(|_| self.sealed_sessions) else {
            return refused(Status::Unsupported);
        };
        let isolation = match req.isolation {
            0 => Isolation::None,
            1 => Isolation::PrivateMemory,
            _ => Isolation::ProtectedVm,
        };
        let key_root = if req.key_root == 0 {
            KeyRootKind::Development
        } else {
            KeyRootKind::Production
        };
        let statement = GuestStatement {
            session_key: derive_session_key(&root.root, &root.measurement).public(),
            sealing_key: sealed_model::derive_guest_key(&root.root, &root.measurement).public(),
            measurement: root.measurement,
            isolation,
            key_root,
        };
        let signed = SignedStatement::sign(statement, &derive_attestation_key(&root.root));
        ControlReply::Statement(StatementReply {
            statement: signed.encode(),
        })
    }
}
