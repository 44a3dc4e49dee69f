//! The sealed-load pipeline in the guest's inference service on the host (the rig of
//! `guest_service.rs`: the engine image's code against the real VMM device in one process):
//! the host opens a session on a sealed model and sends its first request before the
//! chunks; the service computes each block as soon as it is unsealed, serving the chunks
//! in between, and the tokens equal the host engine's on the plaintext. A chunk that does
//! not unseal mid-request fails the request and the load, closes the session, and the
//! service keeps serving.

#[path = "service_rig.rs"]
#[allow(dead_code)]
mod rig;

use rig::*;
use virtio_llm::Status;
use virtio_llm::wire::control::{ControlCommand, LoadModelEnd, LoadSealedBegin, LoadSealedChunk};

/// Begins a sealed load of `parts` as model `id`, opens `session` on it and sends a greedy
/// request for `n` tokens of `prompt`, then the chunks (`tamper` may change one first): the
/// chunks' statuses.
fn pipelined(
    rig: &Rig,
    id: u32,
    parts: &SealedParts,
    prompt: &[u32],
    n: u32,
    tamper: Option<usize>,
) -> Vec<Status> {
    let begin = rig.ack(&ControlCommand::LoadSealedBegin(LoadSealedBegin {
        model_id: id,
        flags: 0,
        accepted_owners: &[],
        header: &parts.header,
    }));
    assert_eq!(begin.status, Status::Ok);
    assert_eq!(rig.open(id, id, 256), Status::Ok);
    rig.request(&endless_request(u64::from(id), id, prompt.to_vec(), n));
    let mut statuses = Vec::new();
    for (i, (index, data)) in parts.chunks.iter().enumerate() {
        let mut data = data.clone();
        if tamper == Some(i) {
            data[7] ^= 1;
        }
        let a = rig.ack(&ControlCommand::LoadSealedChunk(LoadSealedChunk {
            model_id: id,
            index: *index,
            data: &data,
        }));
        statuses.push(a.status);
        if a.status != Status::Ok {
            break;
        }
    }
    statuses
}

#[test]
fn the_first_request_computes_each_block_as_it_is_unsealed() {
    let Some((file, _)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    // Small chunks: each block spans several, so a block can be computed while the next
    // one's chunks are still on their way.
    let parts = seal_model(&file, SEALING_ROOT.measurement, 4096);
    let prompt = engine.encode("Once upon a time");
    let statuses = pipelined(&rig, 1, &parts, &prompt, 24, None);
    assert!(statuses.iter().all(|s| *s == Status::Ok), "{statuses:?}");
    // The load ends once the request is over (the guest serves commands between requests).
    let end = rig.ack(&ControlCommand::LoadModelEnd(LoadModelEnd {
        model_id: 1,
        sha256: [0; 32],
    }));
    assert_eq!(end.status, Status::Ok);
    let (got, eos) = rig.collect(1).expect("the first request");
    assert_eq!(got, engine.greedy(&prompt, 256, 24, false));
    assert_eq!(eos.prompt_tokens as usize, prompt.len());
    let console = rig.console.lock().unwrap().clone();
    let line = console
        .iter()
        .find(|l| l.contains("ran as sealed model 1 arrived"))
        .unwrap_or_else(|| panic!("no pipeline line in {console:?}"));
    // "... its first block computed with X of Y KiB in": X < Y.
    let numbers: Vec<u64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
    let (at, total) = (numbers[numbers.len() - 2], numbers[numbers.len() - 1]);
    assert!(at < total, "{line}");
    assert!(
        console
            .iter()
            .any(|l| l.contains("sealed model 1 (") && l.contains("pipelined"))
    );
    // The model is loaded as any other: a second session generates the same tokens.
    assert_eq!(rig.open(2, 1, 256), Status::Ok);
    rig.request(&endless_request(2, 2, prompt.clone(), 24));
    assert_eq!(rig.collect(2).expect("second request").0, got);
}

#[test]
fn a_chunk_that_does_not_unseal_mid_request_fails_both_and_the_service_goes_on() {
    let Some((file, _)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    let parts = seal_model(&file, SEALING_ROOT.measurement, 4096);
    let prompt = engine.encode("Once upon a time");
    let bad = parts.chunks.len() / 2;
    let statuses = pipelined(&rig, 1, &parts, &prompt, 8, Some(bad));
    assert_eq!(statuses.len(), bad + 1);
    assert_eq!(statuses.last(), Some(&Status::SealRejected));
    assert_eq!(rig.collect(1).map(|_| ()), Err(Status::SealRejected));
    let stats = rig.stats();
    assert_eq!((stats.models_loaded, stats.sessions_open), (0, 0));
    assert!(
        rig.last_line().contains("does not authenticate"),
        "{}",
        rig.last_line()
    );
    // The service goes on: the genuine file, pipelined, gives the host's tokens.
    let statuses = pipelined(&rig, 2, &parts, &prompt, 8, None);
    assert!(statuses.iter().all(|s| *s == Status::Ok), "{statuses:?}");
    let end = rig.ack(&ControlCommand::LoadModelEnd(LoadModelEnd {
        model_id: 2,
        sha256: [0; 32],
    }));
    assert_eq!(end.status, Status::Ok);
    assert_eq!(
        rig.collect(2).expect("generation").0,
        engine.greedy(&prompt, 256, 8, false)
    );
}
