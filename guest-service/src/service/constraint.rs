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
use inference_guest::generate::{GenerateOutcome, Generation, generate_constrained};
use inference_guest::model::{Model, ModelError, Session};
use inference_guest::parallel::Parallel;
use inference_guest::sampler::Sampler;
use inference_guest::tokenizer::ChatTemplate;
use llm_grammar::{
    Json, NoCallAnswer, ToolSchema, tool_calls_grammar, tool_calls_or_answer_grammar,
};
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

/// A new constraint for `options` (one or both of the two constraint records is set). With
/// both, an answer that must call gets the calls' grammar; one that may call (lazy tools)
/// is a call or the response format, constrained from its first token.
fn compile(options: &GenerateOptions, template: ChatTemplate) -> Result<ConstraintState, Refusal> {
    let bad = |e: &dyn core::fmt::Display| refuse(Status::BadRequest, &e.to_string());
    match (&options.response_format, &options.tools) {
        (Some(format), None) => {
            let grammar = match format {
                ResponseFormat::JsonObject => json_object_grammar(),
                ResponseFormat::JsonSchema(text) => compile_schema(text).map_err(|e| bad(&e))?,
            };
            Ok(ConstraintState::new(Constraint::new(grammar)))
        }
        (Some(format), Some(t)) if t.lazy => {
            let schema = match format {
                ResponseFormat::JsonObject => None,
                ResponseFormat::JsonSchema(text) => Some(
                    Json::parse(text)
                        .ok_or_else(|| bad(&"the response_format schema is not JSON"))?,
                ),
            };
            let answer = match &schema {
                Some(s) => NoCallAnswer::Schema(s),
                None => NoCallAnswer::JsonObject,
            };
            let list = tool_list(t)?;
            let grammar = tool_calls_or_answer_grammar(
                grammar_style(t.style, template)?,
                &tools(&list)?,
                t.parallel,
                answer,
            )
            .map_err(|e| bad(&e))?;
            Ok(ConstraintState::new(Constraint::new(grammar)))
        }
        (_, Some(t)) => tools_state(t, template),
        (None, None) => Err(refuse(Status::Internal, "no constraint was asked for")),
    }
}

/// The tools option's JSON array.
fn tool_list(t: &ToolConstraint) -> Result<Vec<Json>, Refusal> {
    match Json::parse(&t.tools) {
        Some(Json::Array(list)) => Ok(list),
        _ => Err(refuse(
            Status::BadRequest,
            "the tools option is not a JSON array",
        )),
    }
}

/// Each tool's name and parameters' schema.
fn tools(list: &[Json]) -> Result<Vec<ToolSchema<'_>>, Refusal> {
    list.iter()
        .map(|item| {
            let name = item.get("name").and_then(Json::as_str);
            match (name, item.get("parameters")) {
                (Some(name), Some(parameters)) => Ok(ToolSchema { name, parameters }),
                _ => Err(refuse(
                    Status::BadRequest,
                    "each tool needs a `name` and `parameters`",
                )),
            }
        })
        .collect()
}

/// The constraint for tool calls: every call names one of the tools, with arguments valid
/// for its schema; from the first token, or (lazy) from where the answer starts a call.
fn tools_state(t: &ToolConstraint, template: ChatTemplate) -> Result<ConstraintState, Refusal> {
    let list = tool_list(t)?;
    let style = grammar_style(t.style, template)?;
    let grammar = tool_calls_grammar(style, &tools(&list)?, t.parallel)
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
    generate_constrained(
        model,
        session,
        sampler,
        par,
        req,
        &is_eog,
        constrained,
        on_token,
    )
}
