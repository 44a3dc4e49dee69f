//! Embedding requests (`feature::EMBED`): the pooled, normalised final hidden state of a
//! prompt on a loaded model ([`inference_guest::model::Model::embedding`]).
//!
//! The request names a model, not a session: the engine evaluates it on a KV cache of its
//! own and frees it before the answer goes out, so no session's cache, history or KV-reuse
//! entry changes, and a later generation can never go on from an embedding's state.

use super::{Environment, GENERATION_SCRATCH_BYTES, Service, error_response};
use alloc::string::{String, ToString};
use inference_guest::gguf::Gguf;
use inference_guest::model::{Model, ModelError};
use inference_guest::parallel::Parallel;
use virtio_llm::Status;
use virtio_llm::driver::{DriverError, DriverMemory, LlmDriver, Transport};
use virtio_llm::spec::{MAX_CONTEXT_LEN, MAX_EMBEDDING_DIM};
use virtio_llm::wire::embed::{EmbedRequest, Embedding};
use virtio_llm::wire::response::ResponseMsg;

/// Why an embedding is answered with an error: its status and message. (Its own pair, so
/// this path shares nothing with the generation path's internals.)
struct Refusal {
    status: Status,
    message: String,
}

fn refuse(status: Status, message: &str) -> Refusal {
    Refusal {
        status,
        message: message.to_string(),
    }
}

impl Service {
    /// Serves an embedding request: its `Embedding`, or the `Error` saying why not.
    pub(super) fn embed<M: DriverMemory, T: Transport>(
        &mut self,
        req: EmbedRequest,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        let msg = match self.embedding(&req, driver, par, env) {
            Ok(e) => ResponseMsg::Embedding(e),
            Err(r) => error_response(req.request_id, r.status, &r.message),
        };
        self.send_response(driver, env, &msg)
    }

    fn embedding<M: DriverMemory, T: Transport>(
        &mut self,
        req: &EmbedRequest,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<Embedding, Refusal> {
        if !self.embeddings {
            return Err(refuse(
                Status::Unsupported,
                "embeddings need VIRTIO_LLM_F_EMBED",
            ));
        }
        let no_model = || refuse(Status::NoSuchModel, "no loaded model has this id");
        let m = self.models.get_mut(&req.model_id).ok_or_else(no_model)?;
        let tokens = m
            .prompt_tokens(&req.prompt)
            .map_err(|e| refuse(Status::BadModel, &e.to_string()))?;
        if tokens.is_empty() {
            return Err(refuse(
                Status::BadRequest,
                "the prompt is empty once tokenized",
            ));
        }
        let cfg = &m.cfg;
        if tokens.len() > cfg.n_ctx_train || tokens.len() > MAX_CONTEXT_LEN as usize {
            return Err(refuse(
                Status::ContextFull,
                "the prompt is longer than the model's context",
            ));
        }
        if cfg.n_embd > MAX_EMBEDDING_DIM {
            return Err(refuse(
                Status::Unsupported,
                "the model's embedding width is beyond the protocol's limit",
            ));
        }
        // The cache, the batch's buffers and the parsed model's views, before anything is
        // allocated (a failed allocation ends the guest).
        let needed = cfg.kv_cache_bytes(tokens.len()) + cfg.batch_bytes(tokens.len());
        self.make_room(needed as u64 + GENERATION_SCRATCH_BYTES, None, driver, env)
            .map_err(|status| {
                refuse(
                    status,
                    "not enough private memory for the embedding within the budget",
                )
            })?;
        self.clock += 1;
        let m = self.models.get_mut(&req.model_id).ok_or_else(no_model)?;
        m.last_used = self.clock;
        let start = env.now_ns();
        let gguf = Gguf::parse(&m.file).map_err(|e| refuse(Status::Internal, &e.to_string()))?;
        let model = Model::from_gguf(&gguf, self.kernels)
            .map_err(|e| refuse(Status::Internal, &e.to_string()))?;
        let values = model.embedding(&tokens, par).map_err(|e| match e {
            ModelError::ContextFull { .. } => refuse(Status::ContextFull, &e.to_string()),
            ModelError::BadToken { .. } => refuse(Status::BadRequest, &e.to_string()),
            e => refuse(Status::Internal, &e.to_string()),
        })?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(refuse(
                Status::Internal,
                "the model's hidden state is not finite",
            ));
        }
        self.requests_completed += 1;
        Ok(Embedding {
            request_id: req.request_id,
            prompt_tokens: tokens.len() as u32,
            prompt_ns: env.now_ns().saturating_sub(start),
            values,
        })
    }
}
