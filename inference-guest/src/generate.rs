//! The token loop: prefill a prompt, then sample and feed back one token at a time.

use crate::constrain::Constrained;
use crate::model::{FileArrival, Logits, Model, ModelError, Session, StreamingModel};
use crate::parallel::Parallel;
use crate::sampler::Sampler;
use alloc::vec::Vec;

/// Why the token loop finished. (The protocol's `StopReason` adds what the loop cannot
/// know: whether a stop was a cancel or a preempt.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context window is full.
    ContextFull,
    /// The caller's `on_token` asked to stop (a cancel, a preempt, Ctrl-C).
    Stopped,
}

/// What to generate: the loop's input besides the model and sampler.
pub struct Generation<'p> {
    pub prompt: &'p [u32],
    pub max_tokens: usize,
    /// Stop at an end-of-generation token (`false` to always produce `max_tokens`).
    pub stop_at_eog: bool,
}

/// Counts for the caller's summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenerateOutcome {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub finish: Finish,
}

/// Runs `req.prompt` through `session` and samples up to `req.max_tokens` tokens.
///
/// `on_token(id)` sees every generated token as soon as it is chosen (the first call marks
/// the time to first token) and returns `false` to stop. `is_eog` tells which ids end
/// generation. The session keeps the prompt and every generated token but the last.
pub fn generate(
    model: &Model<'_>,
    session: &mut Session,
    sampler: &mut Sampler,
    par: &dyn Parallel,
    req: &Generation<'_>,
    is_eog: &dyn Fn(u32) -> bool,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<GenerateOutcome, ModelError> {
    generate_constrained(model, session, sampler, par, req, is_eog, None, on_token)
}

/// [`generate`] with structured output when `constraint` is given: each step's logits are
/// masked by it (tokens that would leave its grammar get −∞) before sampling, and it
/// advances on the chosen token. Generation ends at an end-of-generation token, which the
/// mask allows only once the output is complete, or when no token is allowed any more.
#[allow(clippy::too_many_arguments)]
pub fn generate_constrained(
    model: &Model<'_>,
    session: &mut Session,
    sampler: &mut Sampler,
    par: &dyn Parallel,
    req: &Generation<'_>,
    is_eog: &dyn Fn(u32) -> bool,
    constraint: Option<&mut Constrained<'_>>,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<GenerateOutcome, ModelError> {
    token_loop(
        &mut |s, tokens| s.eval(model, tokens, Logits::Last, par),
        session,
        sampler,
        req,
        is_eog,
        on_token,
        constraint,
    )
}

/// [`generate`] on a model whose file is still arriving: the prompt's first batch computes
/// layer by layer as the layers arrive ([`Session::eval_arriving`]); everything after runs
/// on the loaded model's own code. `arrival` must be the one `model` was made from.
#[allow(clippy::too_many_arguments)]
pub fn generate_arriving<'a>(
    model: &mut StreamingModel<'a>,
    arrival: &mut dyn FileArrival<'a>,
    session: &mut Session,
    sampler: &mut Sampler,
    par: &dyn Parallel,
    req: &Generation<'_>,
    is_eog: &dyn Fn(u32) -> bool,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<GenerateOutcome, ModelError> {
    token_loop(
        &mut |s, tokens| s.eval_arriving(model, tokens, Logits::Last, par, arrival),
        session,
        sampler,
        req,
        is_eog,
        on_token,
        None,
    )
}

/// Evaluates `tokens` after those `session` has seen; the last position's logits.
type Eval<'e> =
    dyn for<'s> FnMut(&'s mut Session, &[u32]) -> Result<&'s mut [f32], ModelError> + 'e;

/// [`generate`]'s loop, with `eval` running the model and an optional grammar constraint.
fn token_loop(
    eval: &mut Eval<'_>,
    session: &mut Session,
    sampler: &mut Sampler,
    req: &Generation<'_>,
    is_eog: &dyn Fn(u32) -> bool,
    on_token: &mut dyn FnMut(u32) -> bool,
    mut constraint: Option<&mut Constrained<'_>>,
) -> Result<GenerateOutcome, ModelError> {
    let mut decoder = Decoder::new(req);
    let finish = loop {
        // Whether the context is full once `input` is in (the logits borrow the session).
        let full = session.n_past() + decoder.input().len() >= session.n_ctx();
        let logits = eval(session, decoder.input())?;
        let ctx = StepContext {
            context_full: full,
            is_eog,
            constraint: constraint.as_deref_mut(),
        };
        if let Some(finish) = decoder.after_logits(logits, sampler, ctx, on_token) {
            break finish;
        }
    };
    Ok(decoder.outcome(finish))
}

/// What [`Decoder::after_logits`] needs besides the logits and the sampler.
pub struct StepContext<'a, 'c> {
    /// The session's context is full after the step that gave the logits.
    pub context_full: bool,
    /// Which ids end generation.
    pub is_eog: &'a dyn Fn(u32) -> bool,
    /// The request's grammar constraint, if it has one.
    pub constraint: Option<&'a mut Constrained<'c>>,
}

/// One request's decisions between forward passes: which tokens to evaluate next, and
/// after each evaluation the token it samples and whether it ends there. The token loop
/// and a batched decode (`Model::decode_batch`, one step for many requests) share it, so a
/// request ends on the same token and for the same reason either way.
pub struct Decoder {
    prompt_tokens: usize,
    max_tokens: usize,
    stop_at_eog: bool,
    /// The prompt and every token generated (the sampler's penalty window).
    history: Vec<u32>,
    generated: usize,
    /// The last generated token, which the next step evaluates; `None` before the prompt.
    fed_back: Option<u32>,
}

impl Decoder {
    /// A request that has not evaluated its prompt yet.
    pub fn new(req: &Generation<'_>) -> Self {
        Self {
            prompt_tokens: req.prompt.len(),
            max_tokens: req.max_tokens,
            stop_at_eog: req.stop_at_eog,
            history: req.prompt.to_vec(),
            generated: 0,
            fed_back: None,
        }
    }

    /// The tokens the next step evaluates: the prompt first, then each sampled token on its
    /// own.
    pub fn input(&self) -> &[u32] {
        match &self.fed_back {
            Some(token) => core::slice::from_ref(token),
            None => &self.history,
        }
    }

    /// The token a batched step evaluates (the last one sampled); `None` while the prompt
    /// has not been evaluated.
    pub fn fed_back(&self) -> Option<u32> {
        self.fed_back
    }

    /// How many tokens were generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// The step after [`input`](Self::input) was evaluated to `logits`: samples the next
    /// token, hands it to `on_token` (which returns `false` to stop), and says why the
    /// request ends there, if it does.
    pub fn after_logits(
        &mut self,
        logits: &mut [f32],
        sampler: &mut Sampler,
        ctx: StepContext<'_, '_>,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Option<Finish> {
        let StepContext {
            context_full,
            is_eog,
            mut constraint,
        } = ctx;
        if self.generated >= self.max_tokens {
            return Some(Finish::MaxTokens);
        }
        // A constrained output with nothing left to allow is finished (complete with no
        // end-of-generation id to give, or stuck); it ends as if the model had ended it.
        if let Some(c) = constraint.as_deref_mut()
            && !c.mask(logits)
        {
            return Some(Finish::EndOfGeneration);
        }
        let token = sampler.sample(logits, &self.history);
        // The mask allowed `token`, so this only fails if every logit was −∞ or NaN.
        if let Some(c) = constraint.as_deref_mut()
            && c.advance(token).is_err()
        {
            return Some(Finish::EndOfGeneration);
        }
        self.generated += 1;
        self.history.push(token);
        // A request that ends on this token anyway reports why, even if `on_token` asked to
        // stop: a preempted request must not be resumed past its end.
        let go_on = on_token(token);
        if (self.stop_at_eog || constraint.is_some()) && is_eog(token) {
            return Some(Finish::EndOfGeneration);
        }
        if self.generated >= self.max_tokens {
            return Some(Finish::MaxTokens);
        }
        if context_full {
            return Some(Finish::ContextFull);
        }
        if !go_on {
            return Some(Finish::Stopped);
        }
        self.fed_back = Some(token);
        None
    }

    /// The counts of a request that ended with `finish`.
    pub fn outcome(&self, finish: Finish) -> GenerateOutcome {
        GenerateOutcome {
            prompt_tokens: self.prompt_tokens,
            generated_tokens: self.generated,
            finish,
        }
    }
}
