//! A parsed generation request on its way through the guest, whichever API it came in by
//! (OpenAI's `/v1/...` in `api.rs`, Ollama's `/api/...` in `ollama/`): the model found and
//! the prompt encoded off the async threads, the job queued, and its events turned into
//! answer text ([`Pending::next_piece`]), cut at stop sequences, until its end.

use super::Shared;
use super::error::ApiError;
use super::listen::ConnId;
use super::metrics::Outcome;
use super::models::ServedModel;
use super::openai::tools::Tools;
use super::openai::{Endpoint, GenRequest, Input, Logprobs, Usage, finish_reason};
use super::scheduler::{ClientKey, Lane, Principal, Rejected};
use super::tool_prompt;
use super::worker::{Event, Job};
use crate::text_stream::Utf8Stream;
use inference_guest::stop::StopScanner;
use inference_guest::tokenizer::ToolFormat;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;
use virtio_llm::spec::MAX_PROMPT_TOKENS;
use virtio_llm::wire::options::GenerateOptions;
use virtio_llm::wire::request::{Prompt, SealedPrompt};
use virtio_llm::wire::response::Timings;

/// Sets the job's cancel flag when the handler or its stream is dropped (the client went
/// away); the worker then skips the job or stops it between two tokens.
pub struct CancelOnDrop(pub Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A queued request: what its answer needs.
pub struct Pending {
    pub req: GenRequest,
    pub model: Arc<ServedModel>,
    /// Known here when the host tokenized the prompt; else the guest counts it.
    pub prompt_tokens: Option<u32>,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub cancel: CancelOnDrop,
    /// The seed the request runs with (the client's, or drawn here; returned with the answer).
    pub seed: u64,
    /// The answer's logprobs, collected as tokens arrive, when asked for.
    pub logprobs: Option<Logprobs>,
    /// How the model writes tool calls, when the answer's calls are to be read back.
    pub tool_format: Option<ToolFormat>,
    detok: Detok,
}

/// What the next events of a job make.
#[derive(Debug)]
pub enum Piece {
    /// Answer text (never empty).
    Text(String),
    /// The end: the last text (maybe empty), why it ended, counts and the guest's times.
    End(Ending),
    /// The request failed (after any text already given).
    Failed(ApiError),
}

/// How a generation ended.
#[derive(Debug)]
pub struct Ending {
    pub text: String,
    /// OpenAI's `finish_reason` (Ollama's `done_reason` uses the same words).
    pub finish: &'static str,
    pub usage: Usage,
    /// Zero when a stop sequence ended it before the guest's end arrived.
    pub timings: Timings,
}

impl Pending {
    /// The next text or the end. A stop sequence cancels the job and ends the answer
    /// before it.
    pub async fn next_piece(&mut self) -> Piece {
        loop {
            match self.events.recv().await {
                Some(Event::Tokens {
                    ids,
                    text: bytes,
                    logprobs,
                }) => {
                    if let Some(lp) = self.logprobs.as_mut() {
                        lp.push(&ids, &logprobs);
                    }
                    let (text, stopped) = self.detok.push(&ids, &bytes);
                    if stopped {
                        self.cancel.0.store(true, Ordering::Relaxed);
                        let (prompt, timings) = self.prompt_tokens_after_stop().await;
                        let usage = Usage {
                            prompt,
                            completion: self.detok.tokens,
                            cached: 0,
                        };
                        return Piece::End(Ending {
                            text,
                            finish: "stop",
                            usage,
                            timings,
                        });
                    }
                    if !text.is_empty() {
                        return Piece::Text(text);
                    }
                }
                Some(Event::Done(end)) => {
                    let usage = Usage {
                        prompt: end.prompt_tokens,
                        completion: end.generated_tokens,
                        cached: end.cached_tokens,
                    };
                    return Piece::End(Ending {
                        text: self.detok.finish(),
                        finish: finish_reason(end.reason),
                        usage,
                        timings: end.timings,
                    });
                }
                Some(Event::Failed(e)) => return Piece::Failed(e),
                Some(Event::ToolStyle(f)) => self.tool_format = Some(f),
                Some(Event::Booted) => {}
                None => return Piece::Failed(ApiError::ShuttingDown),
            }
        }
    }

    /// The prompt's token count once a stop sequence cancelled the request: known here, or
    /// (the guest tokenized it) from the end of the stream the cancel brings, with its times.
    async fn prompt_tokens_after_stop(&mut self) -> (u32, Timings) {
        if let Some(n) = self.prompt_tokens {
            return (n, Timings::default());
        }
        while let Some(event) = self.events.recv().await {
            match event {
                Event::Done(end) => return (end.prompt_tokens, end.timings),
                Event::Failed(_) => break,
                Event::Tokens { .. } | Event::ToolStyle(_) | Event::Booted => {}
            }
        }
        (0, Timings::default())
    }
}

/// The metrics outcome of a request refused before it was queued.
pub fn refused_outcome(e: &ApiError) -> Outcome {
    match e {
        ApiError::QueueFull { .. } | ApiError::ClientShare { .. } | ApiError::ShuttingDown => {
            Outcome::Rejected
        }
        ApiError::Model(_) | ApiError::Guest(_) => Outcome::Failed,
        _ => Outcome::Invalid,
    }
}

/// Finds the request's model, encodes its prompt and queues the job. `num_ctx` (Ollama's
/// option) narrows the context the prompt and the answer share; more than the model's
/// context is refused, since the guest's KV cache was sized for that.
pub async fn submit(
    s: &Arc<Shared>,
    (who, conn): (Principal, ConnId),
    endpoint: Endpoint,
    req: GenRequest,
    num_ctx: Option<u32>,
    arrived: Instant,
) -> Result<Pending, ApiError> {
    let limit = s.config.max_tokens;
    let name = req
        .model
        .clone()
        .unwrap_or_else(|| s.config.default_model.clone());
    // The first request for a model reads and checks its file, and tokenizing a long prompt
    // takes a while: off the async threads, and only `limits.blocking_tasks` at once, so a
    // burst of requests cannot pile up blocking threads (each held to the end).
    let (model, encoded, next_model) = {
        let (s2, input, tools) = (s.clone(), req.input.clone(), req.tools.clone());
        let (stream, named) = (req.stream, req.next_model.clone());
        super::blocking::bounded(&s.blocking, move || {
            encode(&s2, name, input, tools.as_ref(), stream, named.as_deref())
        })
        .await??
    };
    let tool_prompt::ToolPrompt {
        prompt,
        constraint: tool_constraint,
        format: tool_format,
        chat: tool_chat,
    } = encoded;
    let context = context_for(&model, num_ctx)?;
    // A prompt the guest tokenizes is checked there (an empty one is refused, one that does
    // not fit ends with the context full).
    let prompt_tokens = match &prompt {
        Prompt::Tokens(ids) => Some(ids.len()),
        Prompt::Text(_) | Prompt::Chat(_) | Prompt::Sealed(_) | Prompt::Continue => None,
    };
    if prompt_tokens == Some(0) {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    let used = prompt_tokens.unwrap_or(0);
    if used >= context as usize || used > MAX_PROMPT_TOKENS {
        return Err(ApiError::PromptTooLong {
            prompt: used,
            context: context.min(MAX_PROMPT_TOKENS as u32),
        });
    }
    let room = context - used as u32;
    // More than the context has room for is clamped: the answer ends with "length".
    let max_tokens = req.max_tokens.unwrap_or(limit).min(limit).min(room);
    sealed_fits(&req, max_tokens, room)?;
    let (seed, logprobs) = super::sampling::prepare(&req, &model, endpoint)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let lane = match &req.user {
        Some(u) => Lane::User(u.clone()),
        None => Lane::Connection(conn.0),
    };
    let client = ClientKey { who, lane };
    let job = Job {
        model: model.clone(),
        prompt,
        sampling: virtio_llm::wire::request::SamplingParams {
            max_tokens,
            seed,
            ..req.sampling
        },
        options: GenerateOptions {
            tools: tool_constraint,
            tool_chat,
            ..req.options.clone()
        },
        events: tx,
        cancel: cancel.clone(),
        arrived,
        boot_only: false,
        keep_alive: req.keep_alive,
        embed: None,
        next_model,
    };
    s.queue
        .submit(client, job)
        .map_err(|(why, _)| rejected(s, why))?;
    s.metrics
        .queue_depth
        .store(s.queue.len() as u64, Ordering::Relaxed);
    let detok = Detok::new(req.stop.clone());
    Ok(Pending {
        req,
        model,
        prompt_tokens: prompt_tokens.map(|n| n as u32),
        events: rx,
        cancel: CancelOnDrop(cancel),
        seed,
        logprobs,
        tool_format,
        detok,
    })
}

/// The request's model (read and checked on its first request) and its prompt for the guest:
/// a sealed request relayed as it is, a chat with tools rendered in the model's tool format
/// with the constraint on its calls, anything else encoded as `flexserve run` does; and the
/// model to prefetch after it (`named` by the request, else its workflow's).
fn encode(
    s: &Shared,
    name: String,
    input: Input,
    tools: Option<&Tools>,
    stream: bool,
    named: Option<&str>,
) -> Result<Encoded, ApiError> {
    let model = s.catalogue.get(&name)?;
    let next = super::workflows::next_model(&s.catalogue, &s.config.workflows, &model, named)?;
    // Refused before tokenizing when the text cannot fit however it tokenizes.
    model.fits_roughly(&input)?;
    let plain = |prompt| tool_prompt::ToolPrompt {
        prompt,
        constraint: None,
        format: None,
        chat: None,
    };
    let encoded = match input {
        // Relayed untouched, with the public fields the guest binds it to.
        Input::Sealed(request) => plain(Prompt::Sealed(SealedPrompt {
            model: name,
            stream,
            request,
        })),
        Input::Chat(m) if tool_prompt::uses_tools(&m, tools) => {
            tool_prompt::encode(&model, &m, tools)?
        }
        input => plain(model.encode(&input)?),
    };
    Ok((model, encoded, next))
}

/// A request's model, its prompt with any tools' constraint and call format, and the
/// model to prefetch after it.
type Encoded = (
    Arc<ServedModel>,
    tool_prompt::ToolPrompt,
    Option<Arc<ServedModel>>,
);

/// The context a request may use: the model's, or less with Ollama's `num_ctx`.
fn context_for(model: &ServedModel, num_ctx: Option<u32>) -> Result<u32, ApiError> {
    match num_ctx {
        Some(n) if n > model.context => Err(ApiError::invalid(
            "num_ctx",
            format!(
                "`options.num_ctx` {n} is more than the context model `{}` is served with \
                 ({} tokens, `models.context`)",
                model.id, model.context
            ),
        )),
        Some(n) => Ok(n),
        None => Ok(model.context),
    }
}

/// The answer to a job the queue did not take.
pub(super) fn rejected(s: &Shared, why: Rejected) -> ApiError {
    let retry_after = s.config.retry_after_secs;
    match why {
        Rejected::Full => ApiError::QueueFull { retry_after },
        Rejected::ClientShare => ApiError::ClientShare {
            share: s.config.client_share(),
            retry_after,
        },
        Rejected::ShuttingDown => ApiError::ShuttingDown,
    }
}

/// A sealed request's `max_tokens` is bound to its seal: refuse rather than change it.
fn sealed_fits(req: &GenRequest, max_tokens: u32, room: u32) -> Result<(), ApiError> {
    if matches!(req.input, Input::Sealed(_)) && req.max_tokens != Some(max_tokens) {
        return Err(ApiError::invalid(
            "max_tokens",
            format!("a sealed request's `max_tokens` must be at most the model's context ({room})"),
        ));
    }
    Ok(())
}

/// Turns the guest's streamed text into answer text: a character split over tokens waits
/// for its end, stop sequences cut the text. (End-of-generation tokens carry no text.)
struct Detok {
    utf8: Utf8Stream,
    stop: StopScanner,
    tokens: u32,
}

impl Detok {
    fn new(stops: Vec<String>) -> Self {
        Self {
            utf8: Utf8Stream::default(),
            stop: StopScanner::new(&stops),
            tokens: 0,
        }
    }

    /// Text that can be sent, and whether a stop sequence ended it. The scanner gets whole
    /// characters and cuts only where a stop sequence (whole characters too) starts, so what
    /// it releases is whole characters.
    fn push(&mut self, ids: &[u32], bytes: &[u8]) -> (String, bool) {
        self.tokens += ids.len() as u32;
        let (out, stopped) = self.stop.push(self.utf8.push(bytes).as_bytes());
        (String::from_utf8_lossy(&out).into_owned(), stopped)
    }

    fn finish(&mut self) -> String {
        let (out, stopped) = self.stop.push(self.utf8.finish().as_bytes());
        let mut text = String::from_utf8_lossy(&out).into_owned();
        if !stopped {
            text.push_str(&String::from_utf8_lossy(&self.stop.finish()));
        }
        text
    }
}
