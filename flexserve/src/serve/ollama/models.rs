//! `/api/tags`, `/api/ps`, `/api/show`, `/api/version`. The models' metadata is the
//! catalogue's, as `/v1/models` shows it; which are resident is the worker's.

use super::json::{obj, string};
use super::request::catalogue_name;
use super::response::{self, json_response};
use super::time::{rfc3339, rfc3339_secs};
use crate::serve::Shared;
use crate::serve::api::read_body;
use crate::serve::error::ApiError;
use crate::serve::models::Listed;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// The Ollama release whose API these routes follow. Clients gate features on it, so it
/// is Ollama's version, not FlexServe's.
pub const OLLAMA_API_VERSION: &str = "0.12.0";

/// What `expires_at` says of a model kept for ever (Go's zero-free "never" is a date far
/// ahead too).
const NEVER: Duration = Duration::from_secs(253_402_300_799); // 9999-12-31T23:59:59Z

pub async fn version() -> Response {
    json_response(StatusCode::OK, &json!({"version": OLLAMA_API_VERSION}))
}

/// Every model of the directory that can be read (a file that cannot is left out here;
/// `/v1/models` lists it with why).
pub async fn tags(State(s): State<Arc<Shared>>) -> Response {
    let s2 = s.clone();
    match crate::serve::blocking::bounded(&s.blocking, move || s2.catalogue.describe_all()).await {
        Ok(all) => {
            let models: Vec<Value> = all.iter().filter_map(entry).collect();
            json_response(StatusCode::OK, &json!({"models": models}))
        }
        Err(e) => response::error(e),
    }
}

/// The models resident in the guest. `size` is each one's share of the guest's private
/// memory (weights, KV caches, buffers); nothing is on a GPU.
pub async fn ps(State(s): State<Arc<Shared>>) -> Response {
    let resident = s.metrics.resident();
    let s2 = s.clone();
    let described = crate::serve::blocking::bounded(&s.blocking, move || {
        resident
            .into_iter()
            .map(|r| (s2.catalogue.describe(&r.name).ok(), r))
            .collect::<Vec<_>>()
    })
    .await;
    let described = match described {
        Ok(d) => d,
        Err(e) => return response::error(e),
    };
    let models: Vec<Value> = described
        .into_iter()
        .map(|(listed, r)| {
            let mut v = listed
                .as_ref()
                .and_then(entry)
                .unwrap_or_else(|| json!({"name": r.name, "model": r.name, "details": {}}));
            v["size"] = r.bytes.into();
            v["size_vram"] = 0.into();
            v["expires_at"] = rfc3339(r.expires.unwrap_or(UNIX_EPOCH + NEVER)).into();
            if let Some(l) = &listed {
                v["context_length"] = l.context.into();
            }
            v.as_object_mut().map(|o| o.remove("modified_at"));
            v
        })
        .collect();
    json_response(StatusCode::OK, &json!({"models": models}))
}

/// One model's details: `{"model": NAME}` (or the older `{"name": NAME}`).
pub async fn show(State(s): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>) -> Response {
    let name = match read_body(body).and_then(|b| show_name(&b)) {
        Ok(n) => n,
        Err(e) => return response::error(e),
    };
    let s2 = s.clone();
    let listed = crate::serve::blocking::bounded(&s.blocking, move || {
        s2.catalogue.describe(catalogue_name(&name))
    })
    .await;
    match listed {
        Ok(Ok(l)) => match show_body(&l) {
            Some(v) => json_response(StatusCode::OK, &v),
            None => response::error(ApiError::Model(format!(
                "model `{}`: {}",
                l.id,
                l.info.err().unwrap_or_default()
            ))),
        },
        Ok(Err(e)) | Err(e) => response::error(e),
    }
}

fn show_name(body: &[u8]) -> Result<String, ApiError> {
    let m = obj(body)?;
    match string(&m, "model")?.or(string(&m, "name")?) {
        Some(n) if !n.is_empty() => Ok(n),
        _ => Err(ApiError::invalid("model", "`model` is required")),
    }
}

/// An `/api/tags` entry; `None` for a file that cannot be read.
fn entry(l: &Listed) -> Option<Value> {
    let info = l.info.as_ref().ok()?;
    // Ollama's fields are strings, never null (typed clients read them so): what is not
    // known, like a sealed model's family, is "".
    let family = info.architecture.clone().unwrap_or_default();
    Some(json!({
        "name": l.id,
        "model": l.id,
        "modified_at": rfc3339_secs(l.modified),
        "size": info.size,
        "digest": l.digest.clone().unwrap_or_default(),
        "details": {
            "parent_model": "",
            "format": if info.sealed { "sealed" } else { "gguf" },
            "families": if family.is_empty() { vec![] } else { vec![family.clone()] },
            "family": family,
            "parameter_size": info.parameter_size().unwrap_or_default(),
            "quantization_level": info.quantization.unwrap_or_default(),
        },
    }))
}

/// `/api/show`'s answer: the details of `/api/tags` and `model_info` with what the file
/// says (for a sealed model, what its header says: no architecture, no parameter count).
fn show_body(l: &Listed) -> Option<Value> {
    let e = entry(l)?;
    let info = l.info.as_ref().ok()?;
    let mut model_info = Map::new();
    let arch = info.architecture.as_deref().unwrap_or("sealed");
    let mut put = |k: String, v: Value| {
        if !v.is_null() {
            model_info.insert(k, v);
        }
    };
    put(
        "general.architecture".into(),
        info.architecture.clone().into(),
    );
    put(
        "general.parameter_count".into(),
        info.parameter_count.into(),
    );
    put("general.quantization".into(), info.quantization.into());
    put(format!("{arch}.context_length"), info.context_length.into());
    put(format!("{arch}.block_count"), info.block_count.into());
    put("flexserve.context_length".into(), l.context.into());
    put("flexserve.sealed".into(), info.sealed.into());
    put("flexserve.owner".into(), info.owner.clone().into());
    put("flexserve.size".into(), info.size.into());
    Some(json!({
        "modelfile": "",
        "parameters": "",
        "template": "",
        "license": "",
        "details": e["details"],
        "model_info": model_info,
        "capabilities": ["completion"],
        "modified_at": e["modified_at"],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::info::ModelInfo;

    fn listed(sealed: bool) -> Listed {
        Listed {
            id: "m".into(),
            path: "m.gguf".into(),
            modified: 0,
            info: Ok(Arc::new(ModelInfo {
                size: 100,
                sealed,
                context_length: 2048,
                architecture: (!sealed).then(|| "llama".into()),
                parameter_count: (!sealed).then_some(135_000_000),
                quantization: (!sealed).then_some("Q4_1"),
                block_count: Some(30),
                owner: if sealed {
                    "00aa".into()
                } else {
                    "flexserve".into()
                },
            })),
            digest: None,
            context: 512,
        }
    }

    #[test]
    fn tags_and_show_have_ollamas_shapes() {
        let e = entry(&listed(false)).unwrap();
        assert_eq!(e["details"]["family"], "llama");
        assert_eq!(e["details"]["parameter_size"], "135M");
        assert_eq!(e["details"]["quantization_level"], "Q4_1");
        assert_eq!(e["modified_at"], "1970-01-01T00:00:00.000000000Z");
        let s = show_body(&listed(false)).unwrap();
        assert_eq!(s["model_info"]["llama.context_length"], 2048);
        assert_eq!(s["model_info"]["general.parameter_count"], 135_000_000);
        let sealed = show_body(&listed(true)).unwrap();
        assert_eq!(sealed["details"]["format"], "sealed");
        assert_eq!(sealed["details"]["family"], "");
        assert_eq!(sealed["details"]["families"], json!([]));
        assert_eq!(sealed["model_info"]["flexserve.owner"], "00aa");
        assert!(sealed["model_info"].get("general.architecture").is_none());
        let mut broken = listed(false);
        broken.info = Err("bad".into());
        assert!(entry(&broken).is_none());
    }

    #[test]
    fn show_takes_model_or_name() {
        assert_eq!(show_name(br#"{"model":"a"}"#).unwrap(), "a");
        assert_eq!(show_name(br#"{"name":"b"}"#).unwrap(), "b");
        assert!(show_name(br#"{"model":3}"#).is_err());
        assert!(show_name(br#"{}"#).is_err());
        assert!(show_name(b"nope").is_err());
    }
}
