//! Continuous batching (`feature::BATCH`): the requests the guest holds on different
//! sessions of one model run together. Each request's prompt is evaluated on its own
//! (`Session::eval`), which also samples and streams its first token; from then on one
//! forward pass per step (`Model::decode_batch`) gives the next token of every running
//! request, and each request takes its own decisions on its logits (its own sampler,
//! penalties, logit bias, logprobs: the engine's `Decoder`, as the single token loop).
//! `decode_batch`'s logits are those of each session's own one-token step to the bit, so a
//! request's tokens and its end are what it would get alone.
//!
//! Between steps the batch serves what the single path serves between tokens: a budget
//! change is applied at once and its eviction waits for the batch's end; a cancel or a
//! preempt ends its request (`Cancelled`, `Preempted`), and a cancel of a waiting request
//! ends it before it starts; requests are queued; control
//! commands are served or wait for the batch's end (`batch/commands.rs`). A new request
//! that can be batched (a plain or chat prompt, no seal, no grammar constraint, on a fully
//! loaded model, the batch's model, another session) joins after its prompt; any other
//! waits in the queue until the batch is empty, and once one waits (or an eviction does)
//! no request joins any more, so nothing waits for ever.
//!
//! A running request's KV cache is out of its session's slot: no eviction can take it
//! while it runs. It goes back, with the session's history, when the request ends, through
//! the single path's end of request (`record_turn`, `Service::end_of_run`).

mod commands;

use super::generation::{
    Failure, Prefill, Refusal, engine_refusal, generation, record_turn, refuse, sampler,
};
use super::outbox::Outbox;
use super::token_stream::Link;
use super::{Environment, Service};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use inference_guest::generate::{Decoder, Finish, StepContext};
use inference_guest::gguf::Gguf;
use inference_guest::model::{BatchBuffers, BatchError, DecodeStep, Logits, Model, Session};
use inference_guest::parallel::Parallel;
use inference_guest::sampler::Sampler;
use inference_guest::tokenizer::Tokenizer;
use virtio_llm::Status;
use virtio_llm::driver::{DriverError, DriverMemory, LlmDriver, Transport};
use virtio_llm::wire::memory::BudgetChange;
use virtio_llm::wire::request::{GenerateRequest, Prompt, RequestMsg};

/// A request of the batch, from its prompt's evaluation to its end.
struct Running {
    request_id: u64,
    session_id: u32,
    /// Its session's cache, out of the slot while the request runs.
    session: Session,
    /// The prompt tokens it evaluated (after those its cache held), for its history.
    prompt: Vec<u32>,
    prefill: Prefill,
    decoder: Decoder,
    sampler: Sampler,
    out: Outbox<'static>,
    /// The device preempted it (its end reads `Stopped` to the engine).
    preempted: bool,
    /// How it ended, once it has.
    end: Option<Result<Finish, Refusal>>,
}

/// The batch between steps.
struct Batch {
    model_id: u32,
    running: Vec<Running>,
    /// Requests that join at the next chance, in the order they came.
    joining: VecDeque<GenerateRequest>,
    /// Requests (other than cancels and preempts) that came during the last steps.
    arrived: Vec<RequestMsg>,
    /// Nothing joins any more: a request waits in the queue, or an eviction does.
    closed: bool,
    /// A budget change applied during the batch, whose eviction waits for its end.
    deferred_budget: Option<BudgetChange>,
    scratch: BatchBuffers,
    /// The most requests `scratch` was given room for (0: none).
    scratch_sessions: usize,
    /// The command taken during the last steps (its bytes in `command`), if any.
    taken: Option<commands::Taken>,
    command: Vec<u8>,
    /// A command that waits for the batch's end (nothing joins meanwhile), as it came.
    deferred_command: Option<Vec<u8>>,
}

impl Batch {
    fn holds(&self, session_id: u32) -> bool {
        self.running.iter().any(|r| r.session_id == session_id)
            || self.joining.iter().any(|g| g.session_id == session_id)
    }
}

/// Why a request ends whose model is gone.
fn unloaded() -> Refusal {
    refuse(Status::NoSuchModel, "the session's model was unloaded")
}

/// The parsed model of `file`: the same bytes parsed when the model was loaded.
fn parse_model(
    file: &[u8],
    kernels: inference_guest::quant::Kernels,
) -> Result<Model<'_>, Refusal> {
    Gguf::parse(file)
        .map_err(|e| engine_refusal(e.into()))
        .and_then(|g| Model::from_gguf(&g, kernels).map_err(engine_refusal))
}

impl Service {
    /// Whether `g` may run in a batch (on `model_id`'s, when given): a plain or chat prompt
    /// without a grammar constraint, on a session of a fully loaded model. Evicted caches
    /// held on the host do not stop it: the device asks `KvWant` only with nothing in
    /// flight, and that command is served, with any restore it begins, before the request
    /// leaves the queue (a restored cache is then a kept one, which a batch reuses as the
    /// single path does); a request that joins a running batch evaluates its prompt.
    pub(super) fn batchable(&self, g: &GenerateRequest, model_id: Option<u32>) -> bool {
        let plain = matches!(
            g.prompt,
            Prompt::Tokens(_) | Prompt::Text(_) | Prompt::Chat(_)
        );
        let constrained = g.options.response_format.is_some() || g.options.tools.is_some();
        let Some(slot) = self.sessions.get(&g.session_id) else {
            return false;
        };
        self.batching
            && plain
            && !constrained
            && model_id.is_none_or(|m| m == slot.model_id)
            && self.models.contains_key(&slot.model_id)
    }

    /// Runs `first` and every request that joins it until none is left; then applies a
    /// budget change that came meanwhile.
    pub(super) fn run_batch<M: DriverMemory, T: Transport>(
        &mut self,
        first: GenerateRequest,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        let model_id = self
            .sessions
            .get(&first.session_id)
            .map_or(0, |s| s.model_id);
        let mut batch = Batch {
            model_id,
            running: Vec::new(),
            joining: VecDeque::from([first]),
            arrived: Vec::new(),
            closed: false,
            deferred_budget: None,
            scratch: BatchBuffers::default(),
            scratch_sessions: 0,
            taken: None,
            command: Vec::new(),
            deferred_command: None,
        };
        // Requests queued before the batch began join in their order, up to the first that
        // cannot.
        while let Some(RequestMsg::Generate(g)) = self.queued.front() {
            if batch.holds(g.session_id) || !self.batchable(g, Some(model_id)) {
                break;
            }
            if let Some(RequestMsg::Generate(g)) = self.queued.pop_front() {
                batch.joining.push_back(g);
            }
        }
        batch.closed = !self.queued.is_empty();
        let ran = self.drive(&mut batch, driver, par, env);
        if let Some(change) = batch.deferred_budget.take() {
            self.apply_budget(change, driver, env)?;
        }
        ran?;
        match batch.deferred_command.take() {
            Some(bytes) => self.deferred_command(bytes, driver, par, env),
            None => Ok(()),
        }
    }

    /// The batch's life: joins, steps and ends, until no request is left.
    fn drive<M: DriverMemory, T: Transport>(
        &mut self,
        batch: &mut Batch,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        loop {
            for msg in core::mem::take(&mut batch.arrived) {
                match msg {
                    RequestMsg::Generate(g)
                        if !batch.closed
                            && !batch.holds(g.session_id)
                            && self.batchable(&g, Some(batch.model_id)) =>
                    {
                        batch.joining.push_back(g);
                    }
                    other => {
                        self.queued.push_back(other);
                        batch.closed = true;
                    }
                }
            }
            if let Some(taken) = batch.taken.take() {
                self.batch_command(batch, taken, driver, par, env)?;
            }
            while let Some(g) = batch.joining.pop_front() {
                self.join(batch, g, driver, par, env)?;
            }
            self.end_finished(batch, driver, env)?;
            if batch.running.is_empty() {
                return Ok(());
            }
            self.steps(batch, driver, par, env)?;
        }
    }

    /// Readies `g` as the single path does, evaluates its prompt, and streams its first
    /// token; a request refused before its prompt is answered at once.
    fn join<M: DriverMemory, T: Transport>(
        &mut self,
        batch: &mut Batch,
        g: GenerateRequest,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        let mut r = match self.admit(&g, driver, par, env) {
            Ok(r) => r,
            Err(f) => return self.answer(g.request_id, Err(f), driver, env),
        };
        let (model_entry, kernels, guest_text, mut link) =
            self.model_and_link(batch.model_id, driver, env);
        // Admitted on a loaded model, which only a command the batch defers can unload.
        let Some(m) = model_entry else {
            r.end = Some(Err(unloaded()));
            batch.running.push(r);
            return Ok(());
        };
        let text_of = m.tokenizer.as_ref().filter(|_| guest_text);
        let is_eog = |t: u32| m.end_ids.binary_search(&t).is_ok();
        let model = match parse_model(&m.file, kernels) {
            Ok(model) => model,
            Err(refusal) => {
                r.end = Some(Err(refusal));
                batch.running.push(r);
                return Ok(());
            }
        };
        let full = r.session.n_past() + r.decoder.input().len() >= r.session.n_ctx();
        let mut link_error = None;
        match r.session.eval(&model, r.decoder.input(), Logits::Last, par) {
            Err(e) => r.end = Some(Err(engine_refusal(e))),
            Ok(logits) => {
                let ctx = StepContext {
                    context_full: full,
                    is_eog: &is_eog,
                    constraint: None,
                };
                let out = &mut r.out;
                let finish = r
                    .decoder
                    .after_logits(logits, &mut r.sampler, ctx, &mut |t| {
                        link_error = out.on_token(&mut link, t, text_of).err();
                        link_error.is_none()
                    });
                r.end = finish.map(Ok);
            }
        }
        // From here on the batch's buffers serve its steps: the prompt's go back now (tens
        // of MiB after a long prompt to a large model, each running request's own).
        r.session.release_scratch();
        if r.end.is_none()
            && let Err(status) = self.make_room_to_step(batch, r.session_id, driver, env)
        {
            r.end = Some(Err(refuse(
                status,
                "not enough private memory for one more request in the batch",
            )));
        }
        batch.running.push(r);
        link_error.map_or(Ok(()), Err)
    }

    /// Room for the batch's buffers to step one more request (they grow to the largest
    /// batch and stay), evicting idle sessions' caches (never `session`'s) if need be: an
    /// allocation that fails during a step would end the guest.
    fn make_room_to_step<M: DriverMemory, T: Transport>(
        &mut self,
        batch: &mut Batch,
        session: u32,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<(), Status> {
        let sessions = batch.running.len() + 1;
        let Some(m) = self.models.get(&batch.model_id) else {
            return Ok(());
        };
        let bytes = |n| BatchBuffers::bytes_for(&m.cfg, n) as u64;
        let grow = bytes(sessions).saturating_sub(bytes(batch.scratch_sessions));
        if grow > 0 {
            self.make_room(grow, Some(session), driver, env)?;
            batch.scratch_sessions = sessions;
        }
        Ok(())
    }

    /// The batch's model (`None` once unloaded), the kernels, whether the guest owns text,
    /// and a link to the device: borrowed from disjoint fields, so all live at once.
    fn model_and_link<'s, M: DriverMemory, T: Transport>(
        &'s mut self,
        model_id: u32,
        driver: &'s mut LlmDriver<M, T>,
        env: &'s dyn Environment,
    ) -> (
        Option<&'s super::LoadedModel>,
        inference_guest::quant::Kernels,
        bool,
        Link<'s, M, T>,
    ) {
        let link = Link {
            driver,
            env,
            out: &mut self.out,
            scratch: &mut self.scratch,
            queued: &mut self.queued,
            relinquisher: &mut self.relinquisher,
        };
        (
            self.models.get(&model_id),
            self.kernels,
            self.guest_text,
            link,
        )
    }

    /// `g`'s session readied (room made, its cache rebuilt or reused, its model marked
    /// used), its sampler and its stream: a request ready for its prompt's evaluation.
    fn admit<M: DriverMemory, T: Transport>(
        &mut self,
        g: &GenerateRequest,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<Running, Failure> {
        self.check_options(g)?;
        let (prompt, reused) = self.ready_session(g, false, driver, par, env)?;
        let model_id = self.sessions.get(&g.session_id).map_or(0, |s| s.model_id);
        // No constraint (not batchable otherwise); a preempted constrained answer's state
        // is dropped, as the single path drops it for an unconstrained request.
        self.constraint_for(&g.options, g.session_id, model_id)?;
        let slot = self
            .sessions
            .get_mut(&g.session_id)
            .ok_or_else(|| refuse(Status::NoSuchSession, "no open session has this id"))?;
        let m = self
            .models
            .get(&model_id)
            .ok_or_else(|| refuse(Status::NoSuchModel, "the session's model was unloaded"))?;
        let (mut sampler, logprobs) = sampler(g, m.cfg.n_vocab)?;
        sampler.set_prior_tokens(&slot.history);
        let session = slot
            .session
            .take()
            .ok_or_else(|| refuse(Status::Internal, "the session's KV cache is missing"))?;
        let prompt = prompt[reused..].to_vec();
        let decoder = Decoder::new(&generation(g, &prompt));
        let mut out = Outbox::new(g.request_id, env.now_ns(), env.ticks());
        out.set_logprobs(logprobs);
        Ok(Running {
            request_id: g.request_id,
            session_id: g.session_id,
            prefill: Prefill::new(model_id, &m.cfg, session.n_past(), reused),
            session,
            prompt,
            decoder,
            sampler,
            out,
            preempted: false,
            end: None,
        })
    }

    /// Decode steps of every running request until one ends or a request comes (a cancel
    /// or preempt ends its request there).
    fn steps<M: DriverMemory, T: Transport>(
        &mut self,
        batch: &mut Batch,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        let (model_entry, kernels, guest_text, mut link) =
            self.model_and_link(batch.model_id, driver, env);
        // Only a command the batch defers can unload its model.
        let Some(m) = model_entry else {
            for r in &mut batch.running {
                r.end = Some(Err(unloaded()));
            }
            return Ok(());
        };
        let text_of = m.tokenizer.as_ref().filter(|_| guest_text);
        let is_eog = |t: u32| m.end_ids.binary_search(&t).is_ok();
        let model = match parse_model(&m.file, kernels) {
            Ok(model) => model,
            Err(refusal) => {
                for r in &mut batch.running {
                    r.end = Some(Err(Refusal {
                        status: refusal.status,
                        message: refusal.message.clone(),
                    }));
                }
                return Ok(());
            }
        };
        loop {
            if !decode_step(&model, batch, par) {
                return Ok(());
            }
            let ended = decide_all(batch, &mut link, text_of, &is_eog)?;
            if let Some(change) = link.take_budget_change()? {
                batch.deferred_budget = Some(change);
                batch.closed = true;
            }
            if poll(&mut link, batch)? || ended {
                return Ok(());
            }
            if batch.deferred_command.is_none() {
                batch.taken = match link.driver.poll_command(&mut batch.command) {
                    Ok(None) => None,
                    Ok(Some(_)) => Some(commands::Taken::Command),
                    Err(DriverError::Malformed { .. }) => Some(commands::Taken::Malformed),
                    Err(e) => return Err(e),
                };
                if batch.taken.is_some() {
                    // As the main loop does once a command is in hand: a budget change the
                    // host sent before it is applied before it is served.
                    if let Some(change) = link.take_budget_change()? {
                        batch.deferred_budget = Some(change);
                        batch.closed = true;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Ends every request of the batch that has ended, as the single path ends one: its
    /// cache and history back on its session, its last tokens and its end of stream.
    fn end_finished<M: DriverMemory, T: Transport>(
        &mut self,
        batch: &mut Batch,
        driver: &mut LlmDriver<M, T>,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        let mut i = 0;
        while i < batch.running.len() {
            if batch.running[i].end.is_none() {
                i += 1;
                continue;
            }
            let r = batch.running.remove(i);
            if let Some(slot) = self.sessions.get_mut(&r.session_id) {
                record_turn(
                    (&mut slot.history, &mut slot.prefilled),
                    &r.prompt,
                    r.out.generated(),
                    r.session.n_past(),
                );
                slot.session = Some(r.session);
            }
            let streamed = r.out.finish(env.now_ns(), None, r.preempted);
            let result = match r.end {
                Some(Ok(finish)) => Ok(r.decoder.outcome(finish)),
                Some(Err(refusal)) => Err(refusal),
                // Only ended requests are taken.
                None => Ok(r.decoder.outcome(Finish::Stopped)),
            };
            let end = self.end_of_run(r.request_id, r.prefill, result, streamed, None, driver, env);
            self.answer(r.request_id, end, driver, env)?;
        }
        Ok(())
    }
}

/// One `decode_batch` step of every running request; `false` if none stepped (a refused
/// session's request has ended: it ends as its own step would have).
fn decode_step(model: &Model<'_>, batch: &mut Batch, par: &dyn Parallel) -> bool {
    let mut steps = Vec::with_capacity(batch.running.len());
    for r in &mut batch.running {
        if let Some(token) = r.decoder.fed_back() {
            steps.push(DecodeStep {
                session: &mut r.session,
                token,
            });
        }
    }
    match model.decode_batch(&mut steps, &mut batch.scratch, par) {
        Ok(()) => true,
        Err(BatchError::Session { index, source }) => {
            drop(steps);
            if let Some(r) = batch
                .running
                .iter_mut()
                .filter(|r| r.decoder.fed_back().is_some())
                .nth(index)
            {
                r.end = Some(Err(engine_refusal(source)));
            }
            false
        }
        Err(BatchError::Empty) => false,
    }
}

/// Each running request's decision on its logits of the step just taken (its token
/// streamed); `true` if one ended. When one request's tokens went out, every other's go
/// with them: each send is a notification, a VM exit and a VMM wake-up, and requests
/// paced apart would cost one each (`bench-e2e --mode batch`, 4 sessions: 0.64x the host
/// engine's batched decode with paced-apart sends, against 0.89x for one session), while
/// messages written back to back are taken on the first one's notification.
fn decide_all<M: DriverMemory, T: Transport>(
    batch: &mut Batch,
    link: &mut Link<'_, M, T>,
    text_of: Option<&Tokenizer>,
    is_eog: &dyn Fn(u32) -> bool,
) -> Result<bool, DriverError> {
    let mut ended = false;
    let sent_before = link.driver.stats().sent;
    for r in &mut batch.running {
        let full = r.session.n_past() >= r.session.n_ctx();
        let ctx = StepContext {
            context_full: full,
            is_eog,
            constraint: None,
        };
        let (out, mut link_error) = (&mut r.out, None);
        let finish =
            r.decoder
                .after_logits(r.session.last_logits(), &mut r.sampler, ctx, &mut |t| {
                    link_error = out.on_token(link, t, text_of).err();
                    link_error.is_none()
                });
        if let Some(e) = link_error {
            return Err(e);
        }
        if let Some(finish) = finish {
            r.end = Some(Ok(finish));
            ended = true;
        }
    }
    if link.driver.stats().sent != sent_before {
        for r in &mut batch.running {
            r.out.flush(link)?;
        }
    }
    Ok(ended)
}

/// Takes the requests that came: a cancel or a preempt ends its running request, others
/// are kept for the batch to place. `true` if the batch has something to do before the
/// next step.
fn poll<M: DriverMemory, T: Transport>(
    link: &mut Link<'_, M, T>,
    batch: &mut Batch,
) -> Result<bool, DriverError> {
    let mut event = false;
    loop {
        let (id, preempt) = match link.driver.poll_request(link.scratch) {
            Ok(None) => return Ok(event),
            Ok(Some(RequestMsg::Cancel(c))) => (c.request_id, false),
            Ok(Some(RequestMsg::Preempt(p))) => (p.request_id, true),
            Ok(Some(other)) => {
                batch.arrived.push(other);
                event = true;
                continue;
            }
            Err(DriverError::Malformed { .. }) => continue,
            Err(e) => return Err(e),
        };
        if let Some(r) = batch
            .running
            .iter_mut()
            .find(|r| r.request_id == id && r.end.is_none())
        {
            r.preempted = preempt;
            r.end = Some(Ok(Finish::Stopped));
            event = true;
        } else if !preempt {
            // A cancel of a waiting request ends it now (of none, or a preempt: a no-op).
            link.cancel_waiting(id, &mut batch.arrived)?;
        }
    }
}
