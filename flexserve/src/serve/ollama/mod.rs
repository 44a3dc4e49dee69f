//! Ollama's API beside OpenAI's, on the same guards, queue and guest: `/api/chat` and
//! `/api/generate` (streamed as newline-delimited JSON unless `"stream": false`),
//! `/api/tags`, `/api/ps`, `/api/show`, `/api/version`, and `/api/embed` /
//! `/api/embeddings` (the embeddings path of the OpenAI route). Errors are Ollama's
//! `{"error": "..."}`.
//!
//! `request.rs` the chat and generate bodies (and the fields refused until they are built),
//! `options.rs` the `options` object, `json.rs` field helpers, `tools.rs` tool calling
//! (OpenAI's tool code in Ollama's shapes), `response.rs` the answer and error shapes, `generate.rs` the generation routes, `embed.rs` the embedding routes, `models.rs` the others, `time.rs`
//! RFC 3339 timestamps.

mod embed;
mod generate;
mod json;
mod models;
mod options;
mod request;
mod response;
mod time;
mod tools;

use super::Shared;
use axum::Router;
use axum::routing::{get, post};
use std::sync::Arc;

pub use models::OLLAMA_API_VERSION;
pub use response::error;

/// Ollama's routes, to merge into the daemon's router (its guards and limits then apply
/// to them as to the others).
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/chat", post(generate::chat))
        .route("/api/generate", post(generate::generate))
        .route("/api/tags", get(models::tags))
        .route("/api/ps", get(models::ps))
        .route("/api/show", post(models::show))
        .route("/api/version", get(models::version))
        .route("/api/embed", post(embed::embed))
        .route("/api/embeddings", post(embed::embeddings))
}

/// Whether `path` is one of Ollama's, whose errors take Ollama's shape.
pub fn is_ollama_path(path: &str) -> bool {
    path.starts_with("/api/")
}
