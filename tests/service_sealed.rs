//! Sealed models in the guest's inference service on the host (the rig of
//! `guest_service.rs`: the very code of the engine image against the real VMM device in one
//! process): a sealed model unseals and generates as the plaintext; every tampering is
//! refused with `SealRejected` and the service goes on; only the owners the host lists are
//! accepted (any whose signature verifies when it lists none); undefined flags are a bad
//! request; a strawman load (store everything, decrypt at the end) gives the same model and
//! refuses a tampered chunk at `LoadModelEnd`.

// The rig is shared with `guest_service.rs`, which uses the parts this file does not.
#[path = "service_rig.rs"]
#[allow(dead_code)]
mod rig;
// KV caches sealed and handed to the host: the same rig, the same binary.
#[path = "service_kv_evict.rs"]
mod kv_evict;

use rig::*;
use sealed_model::OwnerPublicKey;
use virtio_llm::Status;
use virtio_llm::spec::sealed_flag::{RESUME, STRAWMAN};
use virtio_llm::wire::control::{
    CloseSession, ControlCommand, LoadModelEnd, LoadSealedBegin, LoadSealedChunk, UnloadModel,
    msg_type,
};
use vmm::devices::virtio_llm::LlmConfig;

/// Greedy tokens of model `id` (loaded) against the host engine's on the plaintext model;
/// then the model is unloaded.
fn generates_as_the_host(rig: &Rig, engine: &HostEngine, id: u32) {
    let session = 100 + id;
    assert_eq!(rig.open(session, id, 256), Status::Ok);
    let prompt = engine.encode("Once upon a time");
    rig.request(&endless_request(
        u64::from(session),
        session,
        prompt.clone(),
        32,
    ));
    let (got, _) = rig.collect(u64::from(session)).expect("generation");
    assert_eq!(
        got,
        engine.greedy(&prompt, 256, 32, false),
        "sealed model {id}"
    );
    let close = CloseSession {
        session_id: session,
    };
    assert_eq!(
        rig.ack(&ControlCommand::CloseSession(close)).status,
        Status::Ok
    );
    let unload = UnloadModel {
        model_id: id,
        keep_layers: 0,
    };
    assert_eq!(
        rig.ack(&ControlCommand::UnloadModel(unload)).status,
        Status::Ok
    );
}

/// Loads `parts` sealed as model `id` (any owner), then checks greedy tokens.
fn sealed_generates_as_the_host(rig: &Rig, engine: &HostEngine, id: u32, parts: &SealedParts) {
    assert_eq!(
        rig.load_sealed(id, &parts.header, &parts.chunks),
        Status::Ok
    );
    let line = rig.last_line();
    assert!(line.contains(&format!("sealed model {id}")) && line.contains("owner"));
    generates_as_the_host(rig, engine, id);
}

fn fingerprint(seed: [u8; 32]) -> String {
    OwnerPublicKey(owner_public(seed)).fingerprint().to_string()
}

#[test]
fn a_sealed_model_unseals_in_the_service_and_generates_as_the_plaintext() {
    let Some((file, _)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    let whole = seal_model(&file, SEALING_ROOT.measurement, 1 << 20);
    sealed_generates_as_the_host(&rig, &engine, 1, &whole);
    let small = seal_model(&file, SEALING_ROOT.measurement, 4096);
    assert!(small.chunks.len() > 100, "{} chunks", small.chunks.len());
    sealed_generates_as_the_host(&rig, &engine, 2, &small);

    // Without a key root the guest cannot unseal, and says so.
    let keyless = Rig::start(LlmConfig {
        key_root: None,
        ..limits()
    });
    assert_eq!(
        keyless.load_sealed(1, &whole.header, &whole.chunks),
        Status::Unsupported
    );
}

#[test]
fn every_tampered_sealed_model_is_refused_and_the_service_keeps_serving() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    let good = seal_model(&file, SEALING_ROOT.measurement, 4096);
    let n = good.chunks.len();
    let mut cases: Vec<(&str, SealedParts, &str)> = Vec::new();
    let mut flipped = SealedParts {
        header: good.header.clone(),
        chunks: good.chunks.clone(),
    };
    flipped.chunks[5].1[100] ^= 0x10;
    cases.push(("a flipped bit", flipped, "chunk 5 (layer"));
    let mut dropped = SealedParts {
        header: good.header.clone(),
        chunks: good.chunks.clone(),
    };
    dropped.chunks.remove(3);
    cases.push((
        "a dropped chunk",
        dropped,
        "chunk 4 offered, chunk 3 is next",
    ));
    // Swapped in place: the host relabels them, so each is opened as the other's index.
    let mut swapped = SealedParts {
        header: good.header.clone(),
        chunks: good.chunks.clone(),
    };
    let (a, b) = (swapped.chunks[1].1.clone(), swapped.chunks[2].1.clone());
    (swapped.chunks[1].1, swapped.chunks[2].1) = (b, a);
    cases.push(("two chunks swapped", swapped, "chunk 1 (layer"));
    let mut truncated = SealedParts {
        header: good.header.clone(),
        chunks: good.chunks.clone(),
    };
    truncated.chunks.truncate(n - 2);
    let cut = format!("truncated: {} of {n} chunks", n - 2);
    cases.push(("a truncated body", truncated, &cut));
    let mut edited = SealedParts {
        header: good.header.clone(),
        chunks: good.chunks.clone(),
    };
    edited.header[28] ^= 1; // context_len
    cases.push(("an edited header", edited, "signature"));
    let other = seal_model(&file, [8; 32], 4096);
    cases.push(("sealed to another guest", other, "not sealed to this guest"));

    for (what, parts, why) in &cases {
        let status = rig.load_sealed(1, &parts.header, &parts.chunks);
        assert_eq!(status, Status::SealRejected, "{what}");
        let line = rig.last_line();
        assert!(
            line.starts_with("engine: sealed model 1 refused: ") && line.contains(why),
            "{what}: {line:?}"
        );
        assert_eq!(
            rig.stats().models_loaded,
            0,
            "{what}: the partial model stays"
        );
    }
    // The service still serves: the plaintext model loads and generates.
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    assert_eq!(rig.open(1, 1, 256), Status::Ok);
    let prompt = engine.encode("Once upon a time");
    rig.request(&endless_request(1, 1, prompt.clone(), 16));
    assert_eq!(
        rig.collect(1).expect("generation").0,
        engine.greedy(&prompt, 256, 16, false)
    );
}

#[test]
fn only_accepted_owners_load_and_a_refused_owner_leaves_the_service_serving() {
    let Some((file, _)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    let ours = owner_public(OWNER_SEED);
    let stranger_seed = [2; 32];
    let stranger = owner_public(stranger_seed);
    let parts = seal_model(&file, SEALING_ROOT.measurement, 1 << 20);

    // Signed by an owner the host did not list: refused at the header, with its key named.
    let status = rig.load_sealed_with(1, &parts.header, &parts.chunks, 0, &[stranger]);
    assert_eq!(status, Status::SealRejected);
    let line = rig.last_line();
    let unknown = format!(
        "engine: sealed model 1 refused: owner {} is not one of the accepted owners",
        OwnerPublicKey(ours)
    );
    assert_eq!(line, unknown);
    assert_eq!(rig.stats().models_loaded, 0);
    // A model the stranger signed, where only ours is accepted.
    let theirs = seal_model_by(&file, SEALING_ROOT.measurement, 1 << 20, stranger_seed);
    let status = rig.load_sealed_with(1, &theirs.header, &theirs.chunks, 0, &[ours]);
    assert_eq!(status, Status::SealRejected);
    assert!(
        rig.last_line()
            .contains(&OwnerPublicKey(stranger).to_string())
    );

    // Listed (second of two): loads, the console names the owner, and it generates.
    let status = rig.load_sealed_with(1, &parts.header, &parts.chunks, 0, &[stranger, ours]);
    assert_eq!(status, Status::Ok);
    let line = rig.last_line();
    let named = format!("owner {}, one of 2 accepted", fingerprint(OWNER_SEED));
    assert!(line.contains(&named), "{line}");
    generates_as_the_host(&rig, &engine, 1);
}

#[test]
fn no_listed_owner_accepts_any_signature_that_verifies_and_no_other() {
    let Some((file, _)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    let theirs = seal_model_by(&file, SEALING_ROOT.measurement, 1 << 20, [3; 32]);
    // A broken signature is refused with no owner listed too.
    let mut forged = theirs.header.clone();
    let n = forged.len();
    forged[n - 10] ^= 4;
    let status = rig.load_sealed_with(1, &forged, &theirs.chunks, 0, &[]);
    assert_eq!(status, Status::SealRejected);
    assert!(
        rig.last_line()
            .ends_with("signature does not verify over the header")
    );

    let status = rig.load_sealed_with(1, &theirs.header, &theirs.chunks, 0, &[]);
    assert_eq!(status, Status::Ok);
    let line = rig.last_line();
    let named = format!("owner {}, any owner accepted", fingerprint([3; 32]));
    assert!(line.contains(&named), "{line}");
    generates_as_the_host(&rig, &engine, 1);
}

#[test]
fn undefined_flags_are_a_bad_request_and_the_service_goes_on() {
    let Some((file, _)) = model() else { return };
    let rig = Rig::start(limits());
    let parts = seal_model(&file, SEALING_ROOT.measurement, 1 << 20);
    // A resumable begin's ack names the first layer to send (none here) instead of the id;
    // a strawman load cannot resume.
    for (flags, id) in [
        (4, 1),
        (1 << 31, 1),
        (STRAWMAN | 4, 1),
        (STRAWMAN | RESUME, 0),
    ] {
        let a = rig.ack(&ControlCommand::LoadSealedBegin(LoadSealedBegin {
            model_id: 1,
            flags,
            accepted_owners: &[],
            header: &parts.header,
        }));
        assert_eq!(
            (a.command, a.status, a.object_id),
            (msg_type::LOAD_SEALED_BEGIN, Status::BadRequest, id),
            "flags {flags:#x}"
        );
    }
    // Nothing was begun: the chunks of a load that never started are bad requests too.
    let c = &parts.chunks[0];
    let a = rig.ack(&ControlCommand::LoadSealedChunk(LoadSealedChunk {
        model_id: 1,
        index: c.0,
        data: &c.1,
    }));
    assert_eq!(a.status, Status::BadRequest);
    let status = rig.load_sealed_with(1, &parts.header, &parts.chunks, STRAWMAN, &[]);
    assert_eq!(status, Status::Ok);
}

/// A sealed load with every ack's status: the begin's, each chunk's, the end's.
fn sealed_acks(rig: &Rig, parts: &SealedParts, flags: u32) -> Vec<Status> {
    let mut acks = vec![
        rig.ack(&ControlCommand::LoadSealedBegin(LoadSealedBegin {
            model_id: 1,
            flags,
            accepted_owners: &[],
            header: &parts.header,
        }))
        .status,
    ];
    for (index, data) in &parts.chunks {
        let chunk = LoadSealedChunk {
            model_id: 1,
            index: *index,
            data,
        };
        acks.push(rig.ack(&ControlCommand::LoadSealedChunk(chunk)).status);
        if acks.last() != Some(&Status::Ok) {
            return acks;
        }
    }
    let end = LoadModelEnd {
        model_id: 1,
        sha256: [0; 32],
    };
    acks.push(rig.ack(&ControlCommand::LoadModelEnd(end)).status);
    acks
}

#[test]
fn a_strawman_load_gives_the_same_model_and_refuses_a_tampered_chunk_at_the_end() {
    let Some((file, _)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    let parts = seal_model(&file, SEALING_ROOT.measurement, 4096);
    let n = parts.chunks.len();

    // Pipelined, then strawman: both say how long they copied and decrypted, and both give
    // the plaintext model's greedy tokens.
    for (flags, mode) in [(0, "pipelined"), (STRAWMAN, "strawman")] {
        let acks = sealed_acks(&rig, &parts, flags);
        assert!(acks.iter().all(|s| *s == Status::Ok), "{mode}: {acks:?}");
        let line = rig.last_line();
        assert!(
            line.contains(&format!("({} MiB, {mode}, owner ", file.len() >> 20))
                && line.contains(" ms to check; ")
                && line.contains(" ms copying, ")
                && line.ends_with(" ms decrypting"),
            "{line}"
        );
        generates_as_the_host(&rig, &engine, 1);
    }

    // A flipped bit: a strawman load takes every chunk, then refuses the body at the end,
    // naming the chunk.
    let mut flipped = SealedParts {
        header: parts.header.clone(),
        chunks: parts.chunks.clone(),
    };
    flipped.chunks[5].1[100] ^= 0x10;
    let acks = sealed_acks(&rig, &flipped, STRAWMAN);
    assert_eq!(acks.len(), n + 2);
    assert!(acks[..=n].iter().all(|s| *s == Status::Ok), "{acks:?}");
    assert_eq!(acks[n + 1], Status::SealRejected);
    let line = rig.last_line();
    assert!(
        line.starts_with("engine: sealed model 1 refused: chunk 5 (layer"),
        "{line}"
    );
    // Order and lengths are still checked as chunks arrive.
    let mut dropped = SealedParts {
        header: parts.header.clone(),
        chunks: parts.chunks.clone(),
    };
    dropped.chunks.remove(3);
    let acks = sealed_acks(&rig, &dropped, STRAWMAN);
    assert_eq!(acks.last(), Some(&Status::SealRejected));
    assert_eq!(acks.len(), 1 + 4, "refused at the fourth chunk sent");
    assert!(
        rig.last_line()
            .ends_with("chunk 4 offered, chunk 3 is next")
    );
    let mut truncated = SealedParts {
        header: parts.header.clone(),
        chunks: parts.chunks.clone(),
    };
    truncated.chunks.truncate(n - 1);
    assert_eq!(
        sealed_acks(&rig, &truncated, STRAWMAN).last(),
        Some(&Status::SealRejected)
    );
    let cut = format!("truncated: {} of {n} chunks opened", n - 1);
    assert!(rig.last_line().ends_with(&cut), "{}", rig.last_line());
    assert_eq!(rig.stats().models_loaded, 0);

    // And the service goes on.
    assert_eq!(
        rig.load_sealed_with(1, &parts.header, &parts.chunks, STRAWMAN, &[]),
        Status::Ok
    );
}
