//! Errors of the HTTP API, answered as OpenAI-style error objects:
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A request the API answers with an error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<&'static str>,
    },
    #[error("the request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("the model `{0}` does not exist; GET /v1/models lists the models served here")]
    UnknownModel(String),
    #[error(
        "this model's context is {context} tokens, but the prompt has {prompt} tokens; \
         shorten the prompt"
    )]
    PromptTooLong { prompt: usize, context: u32 },
    #[error("{0} is not supported by this server")]
    Unsupported(&'static str),
    /// A field the API does not know (OpenAI's wording).
    #[error("Unrecognized request argument supplied: {0}")]
    Unrecognized(String),
    #[error("too many requests are waiting for the guest; retry in {retry_after} s")]
    QueueFull { retry_after: u32 },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Model(String),
    #[error("{0}")]
    Guest(String),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("the request body cannot be read: {0}")]
    Body(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error(
        "you have {share} requests waiting already, this client's share of the queue; \
         retry in {retry_after} s"
    )]
    ClientShare { share: usize, retry_after: u32 },
    #[error("Host {0:?} is not served here (see http.allowed_hosts in the daemon's config)")]
    HostNotAllowed(String),
    #[error(
        "cross-origin requests from {0:?} are not allowed (see http.cors_origins in the \
         daemon's config)"
    )]
    OriginNotAllowed(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("the request body must be JSON with `Content-Type: application/json`, not {0:?}")]
    MediaType(String),
}

impl ApiError {
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            message: message.into(),
            param: Some(param),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. }
            | ApiError::BadJson(_)
            | ApiError::PromptTooLong { .. }
            | ApiError::Unsupported(_)
            | ApiError::Unrecognized(_)
            | ApiError::Body(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnknownModel(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::QueueFull { .. } | ApiError::ClientShare { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::HostNotAllowed(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::OriginNotAllowed(_) | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::MediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Model(_) | ApiError::Guest(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            ApiError::Invalid { .. }
            | ApiError::BadJson(_)
            | ApiError::Unsupported(_)
            | ApiError::Unrecognized(_)
            | ApiError::Body(_) => ("invalid_request_error", None),
            ApiError::TooLarge(_) => ("invalid_request_error", Some("request_too_large")),
            ApiError::UnknownModel(_) => ("invalid_request_error", Some("model_not_found")),
            ApiError::PromptTooLong { .. } => {
                ("invalid_request_error", Some("context_length_exceeded"))
            }
            ApiError::NotFound(_) => ("invalid_request_error", Some("not_found")),
            ApiError::QueueFull { .. } | ApiError::ClientShare { .. } => {
                ("requests", Some("rate_limit_exceeded"))
            }
            ApiError::HostNotAllowed(_) => ("invalid_request_error", Some("host_not_allowed")),
            ApiError::OriginNotAllowed(_) => ("invalid_request_error", Some("origin_not_allowed")),
            ApiError::Unauthorized(_) => ("invalid_request_error", Some("invalid_api_key")),
            ApiError::Forbidden(_) => ("invalid_request_error", Some("forbidden")),
            ApiError::MediaType(_) => ("invalid_request_error", Some("unsupported_media_type")),
            ApiError::ShuttingDown => ("server_error", Some("shutting_down")),
            ApiError::Model(_) => ("server_error", Some("model_error")),
            ApiError::Guest(_) => ("server_error", Some("guest_error")),
        }
    }

    /// The JSON error object.
    pub fn body(&self) -> serde_json::Value {
        let (kind, code) = self.kind();
        let param = match self {
            ApiError::Invalid { param, .. } => *param,
            ApiError::UnknownModel(_) => Some("model"),
            ApiError::PromptTooLong { .. } => Some("messages"),
            ApiError::Unrecognized(name) => Some(name.as_str()),
            _ => None,
        };
        serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": kind,
                "param": param,
                "code": code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = super::openai::json_response(self.status(), &self.body());
        match self {
            ApiError::QueueFull { retry_after } | ApiError::ClientShare { retry_after, .. } => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            ApiError::Unauthorized(_) => {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_full_is_429_with_retry_after() {
        let r = ApiError::QueueFull { retry_after: 2 }.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn bodies_are_openai_error_objects() {
        let b = ApiError::invalid("temperature", "temperature must be between 0 and 2").body();
        assert_eq!(b["error"]["param"], "temperature");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        let b = ApiError::UnknownModel("gpt-9".into()).body();
        assert_eq!(b["error"]["code"], "model_not_found");
    }
}
