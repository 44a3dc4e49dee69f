//! What a request's sampling needs once its model is known: a seed when the client gave
//! none, and the host's side of logprobs and logit bias (the model's vocabulary).

use super::error::ApiError;
use super::models::ServedModel;
use super::openai::{Endpoint, GenRequest, Input, Logprobs};

/// The seed the request runs with and the collector of its logprobs ([`seed_for`],
/// [`logprobs_for`]).
pub fn prepare(
    req: &GenRequest,
    model: &ServedModel,
    endpoint: Endpoint,
) -> Result<(u64, Option<Logprobs>), ApiError> {
    let logprobs = logprobs_for(req, model, endpoint)?;
    Ok((seed_for(req)?, logprobs))
}

/// The seed a request runs with: the client's, or 64 bits from the OS, so that two
/// requests without one differ ("regenerate" gives another answer) and either can be
/// reproduced with the seed the answer returns. A sealed request always has its own: the
/// seed is bound to the seal.
pub fn seed_for(req: &GenRequest) -> Result<u64, ApiError> {
    if let Some(seed) = req.seed {
        return Ok(seed);
    }
    use sealed_session::TryRngCore;
    sealed_session::OsRng
        .try_next_u64()
        .map_err(|e| ApiError::Guest(format!("cannot draw a random seed from the OS: {e}")))
}

/// The collector of the answer's logprobs, if the request asked for them; refused when
/// the host cannot name the model's tokens (a sealed model's file) or a sealed request
/// (its answer is the guest's to show). Checks the logit bias against the vocabulary too.
pub fn logprobs_for(
    req: &GenRequest,
    model: &ServedModel,
    endpoint: Endpoint,
) -> Result<Option<Logprobs>, ApiError> {
    let options = &req.options;
    if let Ok(shape) = model.file.shape()
        && let Some(&(id, _)) = options
            .logit_bias
            .iter()
            .find(|&&(id, _)| id as usize >= shape.n_vocab)
    {
        return Err(ApiError::invalid(
            "logit_bias",
            format!(
                "token id {id} is outside the vocabulary ({} tokens)",
                shape.n_vocab
            ),
        ));
    }
    if options.logprobs.is_none() {
        return Ok(None);
    }
    if matches!(req.input, Input::Sealed(_)) || model.file.is_sealed() {
        return Err(ApiError::invalid(
            "logprobs",
            "`logprobs` are not available for a sealed model or request: the host cannot \
             name its tokens",
        ));
    }
    let tokenizer = model
        .file
        .tokenizer()
        .map_err(|e| ApiError::Model(e.to_string()))?;
    Ok(Some(Logprobs::new(tokenizer, endpoint)))
}
