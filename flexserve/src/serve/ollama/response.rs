//! Ollama's answer shapes: the lines of `/api/chat` and `/api/generate` (each a whole
//! answer when not streamed), and its error object `{"error": "..."}`.

use super::time::rfc3339;
use crate::serve::error::ApiError;
use crate::serve::generation::Ending;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::time::{Instant, SystemTime};

/// Which route's shape: chat answers carry a `message`, generate a `response`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Chat,
    Generate,
}

/// What every line of one answer shares.
#[derive(Clone, Debug)]
pub struct Answer {
    pub route: Route,
    /// As the client named it.
    pub model: String,
    pub arrived: Instant,
}

impl Answer {
    /// A line with `text` that is not the last.
    pub fn part(&self, text: &str) -> Value {
        let mut v = self.head(text);
        v["done"] = false.into();
        v
    }

    /// The last line (the whole answer when not streamed): `text`, why it ended and where
    /// the time went, in nanoseconds. `load_duration` is the time before the prompt's
    /// evaluation began: queueing, and booting the guest or loading the model if needed.
    pub fn last(&self, text: &str, end: &Ending) -> Value {
        let total = u64::try_from(self.arrived.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let t = end.timings;
        let mut v = self.head(text);
        v["done"] = true.into();
        v["done_reason"] = end.finish.into();
        v["total_duration"] = total.into();
        v["load_duration"] = total
            .saturating_sub(t.prompt_ns)
            .saturating_sub(t.generation_ns)
            .into();
        v["prompt_eval_count"] = end.usage.prompt.into();
        v["prompt_eval_duration"] = t.prompt_ns.into();
        v["eval_count"] = end.usage.completion.into();
        v["eval_duration"] = t.generation_ns.into();
        v
    }

    fn head(&self, text: &str) -> Value {
        let mut v = json!({
            "model": self.model,
            "created_at": rfc3339(SystemTime::now()),
        });
        match self.route {
            Route::Chat => v["message"] = json!({"role": "assistant", "content": text}),
            Route::Generate => v["response"] = text.into(),
        }
        v
    }
}

/// A JSON body with its content type.
pub fn json_response(status: StatusCode, v: &Value) -> Response {
    crate::serve::openai::json_response(status, v)
}

/// An error as Ollama answers it: `{"error": "..."}` with the same status as on the OpenAI
/// routes.
pub fn error(e: ApiError) -> Response {
    let mut r = json_response(e.status(), &json!({"error": e.to_string()}));
    // Keep what the OpenAI answer's headers say (`Retry-After`, `WWW-Authenticate`).
    let openai = e.into_response();
    for name in [header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = openai.headers().get(&name) {
            r.headers_mut().insert(name, v.clone());
        }
    }
    r
}

/// An error as one line of a stream (it ends the stream; the Ollama clients raise it).
pub fn error_line(e: &ApiError) -> String {
    format!("{}\n", json!({"error": e.to_string()}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::openai::Usage;
    use virtio_llm::wire::response::Timings;

    #[test]
    fn lines_have_ollamas_shapes() {
        let a = Answer {
            route: Route::Chat,
            model: "m:latest".into(),
            arrived: Instant::now(),
        };
        let p = a.part("Hi");
        assert_eq!(p["message"], json!({"role": "assistant", "content": "Hi"}));
        assert_eq!(
            (p["done"].clone(), p["model"].clone()),
            (json!(false), json!("m:latest"))
        );
        assert!(p["created_at"].as_str().unwrap().ends_with('Z'));
        let end = Ending {
            text: String::new(),
            finish: "length",
            usage: Usage {
                prompt: 5,
                completion: 3,
                cached: 0,
            },
            timings: Timings {
                prompt_ns: 7,
                generation_ns: 11,
            },
        };
        let g = Answer {
            route: Route::Generate,
            ..a
        };
        let l = g.last("x", &end);
        assert_eq!(
            (l["response"].clone(), l["done"].clone()),
            (json!("x"), json!(true))
        );
        assert_eq!(l["done_reason"], "length");
        assert_eq!(
            (l["prompt_eval_count"].clone(), l["eval_count"].clone()),
            (json!(5), json!(3))
        );
        assert_eq!(
            (
                l["prompt_eval_duration"].clone(),
                l["eval_duration"].clone()
            ),
            (json!(7), json!(11))
        );
        let total = l["total_duration"].as_u64().unwrap();
        assert_eq!(
            l["load_duration"].as_u64().unwrap(),
            total.saturating_sub(18)
        );
    }

    #[test]
    fn errors_are_one_string() {
        let r = error(ApiError::QueueFull { retry_after: 3 });
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        assert_eq!(
            error_line(&ApiError::ShuttingDown),
            "{\"error\":\"the server is shutting down\"}\n"
        );
    }
}
