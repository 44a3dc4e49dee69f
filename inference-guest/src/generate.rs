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
    let mut history: Vec<u32> = req.prompt.to_vec();
    let mut generated = 0;
    // The prompt first, then each sampled token on its own.
    let mut fed_back: Option<u32> = None;
    let finish = loop {
        let input = fed_back.as_slice();
        let input = if input.is_empty() { req.prompt } else { input };
        let logits = eval(session, input)?;
        if generated >= req.max_tokens {
            break Finish::MaxTokens;
        }
        // A constrained output with nothing left to allow is finished (complete with no
        // end-of-generation id to give, or stuck); it ends as if the model had ended it.
        if let Some(c) = constraint.as_deref_mut()
            && !c.mask(logits)
        {
            break Finish::EndOfGeneration;
        }
        let token = sampler.sample(logits, &history);
        // The mask allowed `token`, so this only fails if every logit was −∞ or NaN.
        if let Some(c) = constraint.as_deref_mut()
            && c.advance(token).is_err()
        {
            break Finish::EndOfGeneration;
        }
        generated += 1;
        history.push(token);
        // A request that ends on this token anyway reports why, even if `on_token` asked to
        // stop: a preempted request must not be resumed past its end.
        let go_on = on_token(token);
        if (req.stop_at_eog || constraint.is_some()) && is_eog(token) {
            break Finish::EndOfGeneration;
        }
        if generated >= req.max_tokens {
            break Finish::MaxTokens;
        }
        if session.n_past() >= session.n_ctx() {
            break Finish::ContextFull;
        }
        if !go_on {
            break Finish::Stopped;
        }
        fed_back = Some(token);
    };
    Ok(GenerateOutcome {
        prompt_tokens: req.prompt.len(),
        generated_tokens: generated,
        finish,
    })
}
