//! Embeddings on a guest (`feature::EMBED`): one request, one vector back, held to the
//! first-token deadline (the guest evaluates the prompt, as for a generation's first token).

use super::request_watch::CutOff;
use super::{GuestError, GuestVm, POLL};
use crate::devices::virtio_llm::HostError;
use std::time::Instant;
use virtio_llm::spec::feature;
use virtio_llm::wire::embed::{EmbedRequest, Embedding};
use virtio_llm::wire::request::RequestMsg;
use virtio_llm::wire::response::ResponseMsg;

impl GuestVm {
    /// Whether the guest computes embeddings (`feature::EMBED`).
    pub fn embeds(&self) -> bool {
        self.llm.negotiated(feature::EMBED)
    }

    /// The unit-length mean-pooled embedding of `req.prompt` on model `req.model_id`
    /// (docs/virtio-llm.md, *Embeddings*). No session is involved: the guest computes it on
    /// a KV cache of its own and frees it. A guest that does not answer within the
    /// first-token deadline is stopped ([`GuestError::CutOff`]).
    pub fn embed(&mut self, req: &EmbedRequest) -> Result<Embedding, GuestError> {
        if !self.embeds() {
            return Err(GuestError::NoEmbeddings);
        }
        let id = req.request_id;
        self.llm
            .send_request(&RequestMsg::Embed(req.clone()), self.deadlines.command)
            .map_err(|e| self.failure(e))?;
        let limit = self.deadlines.first_token;
        let start = Instant::now();
        loop {
            let Some(left) = limit.checked_sub(start.elapsed()) else {
                self.stop.stop();
                return Err(GuestError::CutOff(CutOff::Unresponsive {
                    what: "embedding",
                    waited: limit,
                }));
            };
            let resp = match self.llm.recv_response(left.min(POLL)) {
                Ok(r) => r,
                Err(HostError::Timeout(_)) => continue,
                Err(e) => return Err(self.failure(e)),
            };
            return match resp {
                ResponseMsg::Embedding(e) if e.request_id == id => Ok(e),
                ResponseMsg::Error(e) if e.request_id == id => Err(GuestError::Request {
                    status: e.status,
                    // Guest text: escaped before it reaches a log or a client.
                    message: crate::devices::escape(e.message.as_bytes()),
                }),
                other => Err(GuestError::Protocol(format!(
                    "unexpected response while computing embedding {id}: {other:?}"
                ))),
            };
        }
    }
}
