//! Embeddings (`VIRTIO_LLM_F_EMBED`) in the guest's inference service on the host (the rig
//! of `guest_service.rs`: the very code of the engine image against the real VMM device in
//! one process): the vector is the host engine's `Model::embedding`, for a text prompt the
//! service tokenizes as for a token prompt; it leaves nothing behind (a session generates
//! the same tokens before and after it); and an unknown model, an oversized prompt and a
//! bad token are refused with their documented statuses. A sealed model embeds as its
//! plaintext does.

// The rig is shared with `guest_service.rs`, which uses the parts this file does not.
#[path = "service_rig.rs"]
#[allow(dead_code)]
mod rig;

use inference_guest::parallel::SingleThread;
use rig::*;
use virtio_llm::Status;
use virtio_llm::wire::embed::{EmbedRequest, Embedding};
use virtio_llm::wire::request::{Prompt, RequestMsg};
use virtio_llm::wire::response::ResponseMsg;

fn embed(rig: &Rig, request_id: u64, model_id: u32, prompt: Prompt) -> Result<Embedding, Status> {
    rig.request(&RequestMsg::Embed(EmbedRequest {
        request_id,
        model_id,
        prompt,
    }));
    match rig
        .host
        .recv_response(std::time::Duration::from_secs(60))
        .expect("response")
    {
        ResponseMsg::Embedding(e) => {
            assert_eq!(e.request_id, request_id);
            Ok(e)
        }
        ResponseMsg::Error(e) => {
            assert_eq!(e.request_id, request_id);
            Err(e.status)
        }
        other => panic!("unexpected response {other:?}"),
    }
}

#[test]
fn embeddings_are_the_host_engines_and_leave_no_state() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(10, 1, 256), Status::Ok);

    let text = "The capital of France is";
    let ids = engine.encode(text);
    let want = engine.with(|m, _| m.embedding(&ids, &SingleThread).expect("host embedding"));
    let before = engine.greedy(&ids, 256, 16, false);

    let by_text = embed(&rig, 1, 1, Prompt::Text(text.into())).expect("text embedding");
    assert_eq!(by_text.values, want, "guest service and host engine differ");
    assert_eq!(by_text.prompt_tokens as usize, ids.len());
    let norm: f32 = by_text.values.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "not unit length: {norm}");
    let by_ids = embed(&rig, 2, 1, Prompt::Tokens(ids.clone())).expect("token embedding");
    assert_eq!(by_ids.values, want);
    let other = embed(&rig, 3, 1, Prompt::Text("Once upon a time".into())).expect("another");
    assert_ne!(other.values, want);

    // A session's generation is what the host engine gives, after embeddings as before.
    rig.request(&endless_request(4, 10, ids.clone(), 16));
    let (got, _) = rig.collect(4).expect("generation");
    assert_eq!(got, before, "an embedding changed a later generation");
    let s = rig.stats();
    assert_eq!(s.sessions_open, 1, "an embedding opened a session");
}

#[test]
fn embedding_refusals_have_their_statuses() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    let n_ctx = engine.with(|m, _| m.cfg.n_ctx_train);
    let n_vocab = engine.with(|m, _| m.cfg.n_vocab) as u32;
    assert_eq!(
        embed(&rig, 1, 9, Prompt::Tokens(vec![1, 2])).err(),
        Some(Status::NoSuchModel)
    );
    if n_ctx < virtio_llm::spec::MAX_PROMPT_TOKENS {
        let long = vec![1; n_ctx + 1];
        assert_eq!(
            embed(&rig, 2, 1, Prompt::Tokens(long)).err(),
            Some(Status::ContextFull)
        );
    }
    assert_eq!(
        embed(&rig, 3, 1, Prompt::Tokens(vec![1, n_vocab])).err(),
        Some(Status::BadRequest)
    );
    // The service goes on.
    assert!(embed(&rig, 4, 1, Prompt::Tokens(vec![1, 2, 3])).is_ok());
}

/// A sealed model embeds in its guest as the plaintext does: the host sends text (it has
/// no tokenizer for a sealed model), the guest tokenizes it.
#[test]
fn a_sealed_model_embeds_as_the_plaintext() {
    let Some((file, _)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    let parts = seal_model(&file, SEALING_ROOT.measurement, 1 << 20);
    assert_eq!(rig.load_sealed(1, &parts.header, &parts.chunks), Status::Ok);
    let text = "Once upon a time";
    let ids = engine.encode(text);
    let want = engine.with(|m, _| m.embedding(&ids, &SingleThread).expect("host embedding"));
    let got = embed(&rig, 1, 1, Prompt::Text(text.into())).expect("sealed embedding");
    assert_eq!(got.values, want, "sealed and plaintext embeddings differ");
    assert_eq!(got.prompt_tokens as usize, ids.len());
}
