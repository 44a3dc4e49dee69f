//! Embeddings, whichever API asks (OpenAI's `/v1/embeddings` in `openai.rs`, Ollama's
//! `/api/embed` and `/api/embeddings` in `../ollama/embed.rs`): the inputs encoded off the
//! async threads and checked against the context, then one job through the same fair queue
//! and worker as a generation (model residency and keep-alive included), answered with one
//! unit-length vector per input.
//!
//! No embedding model family is served: a model's embedding is its own mean-pooled final
//! hidden state (after the last RMSNorm, before the output projection), L2-normalised, as
//! llama.cpp's `--embeddings --pooling mean` gives for a chat model
//! (docs/virtio-llm.md, *Embeddings*).

pub mod openai;

use super::Shared;
use super::error::ApiError;
use super::generation::{CancelOnDrop, refused_outcome, rejected};
use super::keep_alive::KeepAlive;
use super::listen::ConnId;
use super::models::ServedModel;
use super::openai::Input;
use super::scheduler::{ClientKey, Lane, Principal};
use super::worker::{EmbedWork, Embedded, Job};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use virtio_llm::spec::MAX_PROMPT_TOKENS;
use virtio_llm::wire::options::GenerateOptions;
use virtio_llm::wire::request::{Prompt, SamplingParams};

/// Most inputs one request may embed: each is a forward pass the other clients wait for.
pub const MAX_INPUTS: usize = 64;

/// One input: text, or token ids of the model's vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// An embedding request, whichever API it came by.
#[derive(Debug)]
pub struct EmbedCall {
    /// `None`: the default model.
    pub model: Option<String>,
    /// 1..=`MAX_INPUTS` inputs.
    pub inputs: Vec<EmbedInput>,
    /// The client's `user`: its lane in the fair queue.
    pub user: Option<String>,
    pub keep_alive: Option<KeepAlive>,
    /// The width the client asked for (`dimensions`): a 400 unless it is the model's.
    pub dimensions: Option<u64>,
}

/// Embeds every input of `call` and returns the model and the vectors, in input order.
pub async fn run(
    s: &Arc<Shared>,
    (who, conn): (Principal, ConnId),
    call: EmbedCall,
    arrived: Instant,
) -> Result<(Arc<ServedModel>, Embedded), ApiError> {
    let dimensions = call.dimensions;
    let result = submit(s, who, conn, call, arrived).await;
    if let Err(e) = &result {
        s.metrics.request(refused_outcome(e));
    }
    let (model, answer, _events, _cancel) = result?;
    // A dropped handler (the client went away) drops `_cancel`: the worker stops between
    // two inputs.
    let embedded = answer.await.map_err(|_| ApiError::ShuttingDown)??;
    // A sealed model's width is known once its guest answers.
    let width = embedded.vectors.first().map_or(0, Vec::len);
    check_dimensions(dimensions, width as u64)?;
    Ok((model, embedded))
}

type Queued = (
    Arc<ServedModel>,
    oneshot::Receiver<Result<Embedded, ApiError>>,
    mpsc::UnboundedReceiver<super::worker::Event>,
    CancelOnDrop,
);

async fn submit(
    s: &Arc<Shared>,
    who: Principal,
    conn: ConnId,
    call: EmbedCall,
    arrived: Instant,
) -> Result<Queued, ApiError> {
    let name = call
        .model
        .clone()
        .unwrap_or_else(|| s.config.default_model.clone());
    let (inputs, dimensions) = (call.inputs, call.dimensions);
    let s2 = s.clone();
    // Reading a model's file the first time and tokenizing are blocking work.
    let (model, prompts) = super::blocking::bounded(&s.blocking, move || {
        let model = s2.catalogue.get(&name)?;
        // A plain model's width is known here: refused before any work is queued.
        if let Ok(shape) = model.file.shape() {
            check_dimensions(dimensions, shape.n_embd as u64)?;
        }
        let prompts = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| encode(&model, i, input))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, ApiError>((model, prompts))
    })
    .await??;
    let (tx, answer) = oneshot::channel();
    let (events_tx, events) = mpsc::unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let lane = match call.user {
        Some(u) => Lane::User(u),
        None => Lane::Connection(conn.0),
    };
    let job = Job {
        model: model.clone(),
        // An embedding job runs its own prompts (`embed`): these are never used.
        prompt: Prompt::Tokens(Vec::new()),
        sampling: SamplingParams::greedy(1),
        options: GenerateOptions::default(),
        events: events_tx,
        cancel: cancel.clone(),
        arrived,
        boot_only: false,
        keep_alive: call.keep_alive,
        embed: Some(EmbedWork {
            prompts,
            answer: tx,
        }),
        next_model: None,
    };
    s.queue
        .submit(ClientKey { who, lane }, job)
        .map_err(|(why, _)| rejected(s, why))?;
    s.metrics
        .queue_depth
        .store(s.queue.len() as u64, Ordering::Relaxed);
    Ok((model, answer, events, CancelOnDrop(cancel)))
}

/// Input `i` as the guest takes it: token ids of a plain model (tokenized here, as for a
/// completion), or a sealed model's text (its guest tokenizes it and checks its length).
fn encode(model: &ServedModel, i: usize, input: &EmbedInput) -> Result<Prompt, ApiError> {
    let input = match input {
        EmbedInput::Text(t) if t.is_empty() => {
            return Err(ApiError::invalid("input", format!("input {i} is empty")));
        }
        EmbedInput::Tokens(ids) if ids.is_empty() => {
            return Err(ApiError::invalid(
                "input",
                format!("input {i} has no tokens"),
            ));
        }
        EmbedInput::Text(t) => Input::Text(t.clone()),
        EmbedInput::Tokens(ids) => Input::Tokens(ids.clone()),
    };
    model
        .fits_roughly(&input)
        .map_err(|_| too_long(model, i, None))?;
    let prompt = model.encode(&input).map_err(|e| match e {
        ApiError::Invalid { message, .. } => {
            ApiError::invalid("input", format!("input {i}: {message}"))
        }
        e => e,
    })?;
    if let Prompt::Tokens(ids) = &prompt {
        if ids.is_empty() {
            return Err(ApiError::invalid(
                "input",
                format!("input {i} has no tokens"),
            ));
        }
        if ids.len() > model.context as usize || ids.len() > MAX_PROMPT_TOKENS {
            return Err(too_long(model, i, Some(ids.len())));
        }
    }
    Ok(prompt)
}

/// `dimensions` must be the model's `width`: vectors are not shortened.
fn check_dimensions(dimensions: Option<u64>, width: u64) -> Result<(), ApiError> {
    match dimensions {
        Some(d) if d != width => Err(ApiError::invalid(
            "dimensions",
            format!(
                "`dimensions` {d} is not this model's embedding width ({width}); vectors are \
                 not shortened here, leave `dimensions` out"
            ),
        )),
        _ => Ok(()),
    }
}

fn too_long(model: &ServedModel, i: usize, tokens: Option<usize>) -> ApiError {
    let has = tokens.map_or_else(|| "far more".to_string(), |n| n.to_string());
    ApiError::invalid(
        "input",
        format!(
            "input {i} has {has} tokens, more than model `{}`'s context ({} tokens); \
             shorten it",
            model.id, model.context
        ),
    )
}
