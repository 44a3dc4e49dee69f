//! `flexserve run --unprotected`: the engine straight on the host, outside any VM. It is the
//! baseline every protected figure is compared with, and the quickest way to try a model.

use crate::cli::{RunArgs, SamplingArgs};
use crate::model::huge_buffer::Pages;
use crate::model::{Access, HostModel, HostModelError};
use crate::text_stream::Utf8Stream;
use inference_guest::generate::{Finish, Generation, generate};
use inference_guest::parallel::ThreadPool;
use inference_guest::quant::Kernels;
use inference_guest::sampler::{Sampler, SamplerConfig, SamplerError};
use std::io::Write;
use std::time::Instant;

/// A failed `run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Model(#[from] HostModelError),
    #[error("generation failed: {0}")]
    Generate(#[from] inference_guest::model::ModelError),
    #[error("batched decode failed: {0}")]
    Batch(#[from] inference_guest::model::BatchError),
    #[error("bad sampling options: {0}")]
    Sampling(#[from] SamplerError),
    #[error("cannot start {threads} worker threads: {source}")]
    Threads {
        threads: usize,
        source: std::io::Error,
    },
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    #[error("the prompt is empty; give one as an argument or on stdin")]
    EmptyPrompt,
    #[error("this CPU cannot run the {wanted:?} kernels; it runs {available}")]
    KernelsUnavailable {
        wanted: inference_guest::quant::Isa,
        available: String,
    },
}

/// Maps the CLI's options onto the sampler's.
pub fn sampler_config(s: &SamplingArgs) -> SamplerConfig {
    SamplerConfig {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        seed: s.seed,
        ..SamplerConfig::default()
    }
}

/// Generates from `prompt` and streams the text to stdout; the summary goes to stderr.
pub fn run(args: &RunArgs, prompt: &str) -> Result<(), RunError> {
    if prompt.trim().is_empty() {
        return Err(RunError::EmptyPrompt);
    }
    let start = Instant::now();
    let file = HostModel::open(&args.model, Access::Read(Pages::Huge))?;
    let model = file.engine(Kernels::detect())?;
    let tokenizer = file.tokenizer()?;
    let cfg = sampler_config(&args.sampling);
    cfg.validate()?;
    let mut sampler = Sampler::new(cfg, model.cfg.n_vocab);
    let pool = ThreadPool::new(args.vcpus).map_err(|source| RunError::Threads {
        threads: args.vcpus,
        source,
    })?;
    let (ids, chat) = file.prompt_tokens(prompt, args.raw)?;
    let mut session = model.new_session(args.ctx);
    let loaded = Instant::now();

    let mut out = std::io::stdout().lock();
    let mut stream = Utf8Stream::default();
    let mut first_token = None;
    let mut write_err = None;
    let req = Generation {
        prompt: &ids,
        max_tokens: args.sampling.max_tokens,
        stop_at_eog: true,
    };
    let outcome = generate(
        &model,
        &mut session,
        &mut sampler,
        &pool,
        &req,
        &|id| tokenizer.is_end_of_generation(id),
        &mut |id| {
            first_token.get_or_insert_with(Instant::now);
            if tokenizer.is_end_of_generation(id) {
                return true;
            }
            let piece = stream.push(tokenizer.token_bytes(id));
            if let Err(e) = out.write_all(piece.as_bytes()).and_then(|()| out.flush()) {
                write_err = Some(e);
                return false;
            }
            true
        },
    )?;
    let tail = stream.finish();
    writeln!(out, "{tail}").map_err(RunError::Output)?;
    if let Some(e) = write_err {
        return Err(RunError::Output(e));
    }
    let done = Instant::now();
    let first = first_token.unwrap_or(done);
    let prefill_s = (first - loaded).as_secs_f64();
    let decode_s = (done - first).as_secs_f64();
    let decoded = outcome.generated_tokens.saturating_sub(1);
    eprintln!(
        "[flexserve] unprotected host engine ({:?}, {} threads{}): load {:.0} ms, TTFT {:.0} ms, \
         prefill {} tok at {:.1} tok/s, decode {} tok at {:.1} tok/s, stop: {}",
        model.kernels().isa(),
        args.vcpus,
        if chat { ", chat template" } else { "" },
        (loaded - start).as_secs_f64() * 1e3,
        (first - start).as_secs_f64() * 1e3,
        outcome.prompt_tokens,
        outcome.prompt_tokens as f64 / prefill_s.max(1e-9),
        decoded,
        decoded as f64 / decode_s.max(1e-9),
        match outcome.finish {
            Finish::EndOfGeneration => "end of generation",
            Finish::MaxTokens => "max tokens",
            Finish::ContextFull => "context full",
            Finish::Stopped => "cancelled",
        }
    );
    Ok(())
}
