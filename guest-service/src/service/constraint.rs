//! Structured output and tool calls in the guest: a request's `RESPONSE_FORMAT` or `TOOLS`
//! option (virtio-llm `wire::constraint`) compiled into a grammar constraint on the token
//! loop (`inference_guest::constrain`). The guest compiles the schema itself: the host
//! forwards text, and for a model only the guest can read, only the guest could.
//!
//! A preempted answer keeps its constraint's state in its session, so the next slice goes
//! on from where the grammar stood rather than from its start.

use super::generation::{Refusal, refuse};
use super::tool_chat::grammar_style;
use super::{LoadedModel, Service};
use alloc::string::ToString;
use alloc::vec::Vec;
use inference_guest::constrain::{
    Constrained, Constraint, ConstraintState, Trigger, Vocab, compile_schema, grammar_vocab,
    json_object_grammar,
};
use inference_guest::generate::{GenerateOutcome, Generation, generate, generate_constrained};
use inference_guest::model::{Model, ModelError, Session};
use inference_guest::parallel::Parallel;
use inference_guest::sampler::Sampler;
use inference_guest::tokenizer::ChatTemplate;
use llm_grammar::{Json, ToolSchema, tool_calls_grammar};
use virtio_llm::Status;
use virtio_llm::wire::options::{GenerateOptions, ResponseFormat, ToolConstraint};

impl LoadedModel {
    /// The model's vocabulary as the grammar walks it, built on first use (memory pressure
    /// may drop it again, with the tokenizer).
    pub(super) fn grammar_vocab(&mut self) -> Result<&Vocab, ModelError> {
        if self.grammar_vocab.is_none() {
            let vocab = grammar_vocab(self.tokenizer()?);
            self.grammar_vocab = Some(vocab);
        }
        match &self.grammar_vocab {
            Some(v) => Ok(v),
            None => unreachable!("built just above"),
        }
    }
}

impl LoadedModel {
    /// `state` on this model's grammar vocabulary (built by [`Service::constraint_for`]).
    pub(super) fn constrained(&self, state: ConstraintState) -> Result<Constrained<'_>, Refusal> {
        match (&self.grammar_vocab, &self.tokenizer) {
            (Some(vocab), Some(tok)) => {
                Ok(Constrained::new(vocab, tok, state, self.end_ids.clone()))
            }
            _ => Err(refuse(
                Status::Internal,
                "the model's grammar vocabulary was dropped before its request ran",
            )),
        }
    }
}

impl Service {
    /// The constraint request `options` ask for on session `session_id` of model
    /// `model_id`: a preempted answer's saved state, or a new one compiled from the
    /// options; the model's grammar vocabulary and tokenizer are built for it.
    pub(super) fn constraint_for(
        &mut self,
        options: &GenerateOptions,
        session_id: u32,
        model_id: u32,
    ) -> Result<Option<ConstraintState>, Refusal> {
        let saved = self
            .sessions
            .get_mut(&session_id)
            .and_then(|s| s.constraint.take());
        if options.response_format.is_none() && options.tools.is_none() {
            return Ok(None);
        }
        let m = self
            .models
            .get_mut(&model_id)
            .ok_or_else(|| refuse(Status::NoSuchModel, "the session's model was unloaded"))?;
        m.grammar_vocab()
            .map_err(|e| refuse(Status::Internal, &e.to_string()))?;
        if saved.is_some() {
            return Ok(saved);
        }
        compile(options, m.template).map(Some)
    }
}

/// A new constraint for `options` (one of the two constraint records is set).
fn compile(options: &GenerateOptions, template: ChatTemplate) -> Result<ConstraintState, Refusal> {
    let bad = |e: &dyn core::fmt::Display| refuse(Status::BadRequest, &e.to_string());
    if let Some(format) = &options.response_format {
        let grammar = match format {
            ResponseFormat::JsonObject => json_object_grammar(),
            ResponseFormat::JsonSchema(text) => compile_schema(text).map_err(|e| bad(&e))?,
        };
        return Ok(ConstraintState::new(Constraint::new(grammar)));
    }
    let Some(t) = &options.tools else {
        return Err(refuse(Status::Internal, "no constraint was asked for"));
    };
    tools_state(t, template)
}

/// The constraint for tool calls: every call names one of the tools, with arguments valid
/// for its schema; from the first token, or (lazy) from where the answer starts a call.
fn tools_state(t: &ToolConstraint, template: ChatTemplate) -> Result<ConstraintState, Refusal> {
    let bad = |what: &str| refuse(Status::BadRequest, what);
    let Some(Json::Array(list)) = Json::parse(&t.tools) else {
        return Err(bad("the tools option is not a JSON array"));
    };
    let mut tools = Vec::with_capacity(list.len());
    for item in &list {
        let name = item.get("name").and_then(Json::as_str);
        let params = item.get("parameters");
        let (Some(name), Some(parameters)) = (name, params) else {
            return Err(bad("each tool needs a `name` and `parameters`"));
        };
        tools.push(ToolSchema { name, parameters });
    }
    let style = grammar_style(t.style, template)?;
    let grammar = tool_calls_grammar(style, &tools, t.parallel)
        .map_err(|e| refuse(Status::BadRequest, &e.to_string()))?;
    let constraint = Constraint::new(grammar);
    Ok(match t.lazy {
        true => ConstraintState::lazy(
            constraint,
            Trigger {
                text: style.trigger().as_bytes().to_vec(),
                at_start: style.trigger_at_start(),
            },
        ),
        false => ConstraintState::new(constraint),
    })
}

/// The token loop, constrained when `constrained` is given.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_engine(
    model: &Model<'_>,
    session: &mut Session,
    sampler: &mut Sampler,
    par: &dyn Parallel,
    req: &Generation<'_>,
    end_ids: &[u32],
    constrained: Option<&mut Constrained<'_>>,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<GenerateOutcome, ModelError> {
    let is_eog = |t: u32| end_ids.binary_search(&t).is_ok();
    match constrained {
        Some(c) => generate_constrained(model, session, sampler, par, req, &is_eog, c, on_token),
        None => generate(model, session, sampler, par, req, &is_eog, on_token),
    }
}
