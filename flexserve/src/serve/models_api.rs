//! `/v1/models` and `/v1/models/{id}`: OpenAI's model objects (`id`, `object`, `created`,
//! `owned_by`) with what the daemon knows of each model beside them: the context a request
//! gets and the model's own, its quantisation, size, whether it is sealed, its owner (a
//! sealed model's owner key fingerprint), architecture and parameter count where the file
//! says them (a sealed model's header says neither).

use super::Shared;
use super::models::Listed;
use super::openai::json_response;
use crate::model::info::DEFAULT_OWNER;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

pub async fn models(State(s): State<Arc<Shared>>) -> Response {
    let s2 = s.clone();
    match super::blocking::bounded(&s.blocking, move || s2.catalogue.describe_all()).await {
        Ok(all) => {
            let data: Vec<Value> = all.iter().map(object).collect();
            json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
        }
        Err(e) => e.into_response(),
    }
}

pub async fn model(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let s2 = s.clone();
    match super::blocking::bounded(&s.blocking, move || s2.catalogue.describe(&id)).await {
        Ok(Ok(m)) => json_response(StatusCode::OK, &object(&m)),
        Ok(Err(e)) | Err(e) => e.into_response(),
    }
}

/// One model object.
pub fn object(m: &Listed) -> Value {
    let mut v = json!({
        "id": m.id,
        "object": "model",
        "created": m.modified,
        "owned_by": DEFAULT_OWNER,
        "context_length": m.context,
        "digest": m.digest,
    });
    match &m.info {
        Ok(i) => {
            v["owned_by"] = i.owner.clone().into();
            v["model_context_length"] = i.context_length.into();
            v["size"] = i.size.into();
            v["sealed"] = i.sealed.into();
            v["format"] = if i.sealed { "sealed" } else { "gguf" }.into();
            v["quantization"] = i.quantization.into();
            v["architecture"] = i.architecture.clone().into();
            v["parameter_count"] = i.parameter_count.into();
            v["block_count"] = i.block_count.into();
        }
        Err(e) => v["error"] = e.clone().into(),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::info::ModelInfo;

    #[test]
    fn a_sealed_model_shows_its_owner_and_nothing_it_hides() {
        let info = ModelInfo {
            size: 10,
            sealed: true,
            context_length: 2048,
            architecture: None,
            parameter_count: None,
            quantization: None,
            block_count: Some(30),
            owner: "0011223344556677".into(),
        };
        let v = object(&Listed {
            id: "m".into(),
            path: "m.gguf".into(),
            modified: 5,
            info: Ok(Arc::new(info)),
            digest: None,
            context: 512,
        });
        assert_eq!(v["owned_by"], "0011223344556677");
        assert_eq!(
            (v["sealed"].clone(), v["format"].clone()),
            (json!(true), json!("sealed"))
        );
        assert_eq!(
            (
                v["context_length"].clone(),
                v["model_context_length"].clone()
            ),
            (json!(512), json!(2048))
        );
        assert!(v["architecture"].is_null() && v["quantization"].is_null());
        let broken = object(&Listed {
            id: "b".into(),
            path: "b.gguf".into(),
            modified: 0,
            info: Err("not a model".into()),
            digest: None,
            context: 512,
        });
        assert_eq!(broken["error"], "not a model");
        assert_eq!(broken["owned_by"], DEFAULT_OWNER);
    }
}
