//! KV eviction to the host, sealed (`feature::KV_EVICT`), over the rig of `guest_service.rs`
//! (part of the `service_sealed` test binary): a kept KV cache handed over sealed and
//! brought back gives the same greedy answer as a guest that never evicted it, its tokens
//! counted as cached; a tampered, missing, reordered or stale block is refused by name and
//! the request recomputes with the same answer; and what the host stores holds neither the
//! cache's KV bytes nor the prompt's token ids (the same search finds both in a plaintext
//! dump).

use super::rig::*;
use inference_guest::model::Logits;
use inference_guest::parallel::SingleThread;
use virtio_llm::Status;
use virtio_llm::wire::control::{CloseSession, ControlCommand, ControlReply};
use virtio_llm::wire::kv_evict::{
    KvBlock, KvChoice, KvEvict, KvRestore, KvWant, KvWanted, want_flag,
};
use virtio_llm::wire::request::{Prompt, RequestMsg};
use virtio_llm::wire::response::ResponseMsg;

const CTX: u32 = 256;
const MAX_TOKENS: u32 = 12;

/// Hands the least recently used kept cache over: its handle and sealed blocks.
fn evict(rig: &Rig) -> (u32, Vec<Vec<u8>>) {
    let first = match rig.command(&ControlCommand::KvEvict(KvEvict {
        handle: 0,
        block: 0,
    })) {
        ControlReply::KvBlock(b) if b.status == Status::Ok => b,
        other => panic!("expected the first sealed block, got {other:?}"),
    };
    let (handle, n) = (first.handle, first.n_blocks);
    let mut blocks = vec![first.data];
    for block in 1..n {
        match rig.command(&ControlCommand::KvEvict(KvEvict { handle, block })) {
            ControlReply::KvBlock(KvBlock {
                status: Status::Ok,
                block: b,
                data,
                ..
            }) if b == block => blocks.push(data),
            other => panic!("expected block {block}, got {other:?}"),
        }
    }
    (handle, blocks)
}

/// Asks whether request `request_id` goes on from an evicted cache: `KvWant` first, then
/// the request it names (as a device sends them), then the answer.
fn want(rig: &Rig, request: &RequestMsg, request_id: u64, flags: u32) -> KvWanted {
    let q = ControlCommand::KvWant(KvWant { request_id, flags });
    rig.host.send_command(&q, T).expect("send KvWant");
    rig.request(request);
    match rig.host.recv_reply(T).expect("a reply") {
        ControlReply::KvWanted(w) => w,
        other => panic!("expected KvWanted, got {other:?}"),
    }
}

/// Sends `blocks` as `handle`'s, stopping at the first refusal; every status.
fn restore(rig: &Rig, handle: u32, blocks: &[(u32, Vec<u8>)]) -> Vec<Status> {
    let mut statuses = Vec::new();
    for (block, data) in blocks {
        let a = rig.ack(&ControlCommand::KvRestore(KvRestore {
            handle,
            block: *block,
            data,
        }));
        statuses.push(a.status);
        if a.status != Status::Ok {
            break;
        }
    }
    statuses
}

/// Blocks as sent back: (index, data).
type Blocks = Vec<(u32, Vec<u8>)>;
/// A way to spoil blocks, and the refusal it must bring.
type Spoil = (&'static str, fn(&mut Blocks));

fn numbered(blocks: &[Vec<u8>]) -> Blocks {
    blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (i as u32, b.clone()))
        .collect()
}

/// Runs `prompt` greedily on a new session whose request asks for an evicted cache with
/// `flags`; `send` gets the answer and sends (or not) the blocks. The tokens and cached
/// count.
fn ask(
    rig: &Rig,
    id: u64,
    prompt: &[u32],
    flags: u32,
    send: impl FnOnce(&KvWanted),
) -> (Vec<u32>, u32) {
    let session = id as u32;
    assert_eq!(rig.open(session, 1, CTX), Status::Ok);
    let request = greedy_request(id, session, Prompt::Tokens(prompt.to_vec()), MAX_TOKENS);
    send(&want(rig, &request, id, flags));
    let (tokens, end) = rig.collect(id).expect("an answer");
    let close = rig.ack(&ControlCommand::CloseSession(CloseSession {
        session_id: session,
    }));
    assert_eq!(close.status, Status::Ok);
    (tokens, end.cached_tokens)
}

/// Whether the service logged a line holding every one of `parts`.
fn logged(rig: &Rig, parts: &[&str]) -> bool {
    let lines = rig.console.lock().unwrap();
    lines.iter().any(|l| parts.iter().all(|p| l.contains(p)))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

fn le_bytes(tokens: &[u32]) -> Vec<u8> {
    tokens.iter().flat_map(|t| t.to_le_bytes()).collect()
}

#[test]
fn an_evicted_cache_comes_back_sealed_or_is_refused_and_recomputed() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    let first = engine.encode("The quick brown fox jumps over the lazy dog, and then it runs");
    let mut second = first.clone();
    second.extend(engine.encode(" far away into the hills where nobody"));
    let mut third = second.clone();
    third.extend(engine.encode(" ever finds it again"));
    let expect = |p: &[u32]| engine.greedy(p, CTX, MAX_TOKENS, true);

    // The first prompt's cache is kept, then handed over sealed.
    assert_eq!(
        ask(&rig, 10, &first, 0, |w| assert_eq!(
            w.choice,
            KvChoice::None
        ))
        .0,
        expect(&first)
    );
    let (handle, blocks) = evict(&rig);
    let blob: Vec<u8> = blocks.concat();
    assert_eq!(rig.stats().kv_caches_dropped, 0, "handed over, not dropped");

    // What the host stores holds neither the KV bytes nor the token ids; the same search
    // finds both in the plaintext the blocks would hold unsealed (layer 0 of the prompt,
    // computed by the host engine as the guest did).
    let plain = engine.with(|model, _| {
        let mut s = model.new_session(CTX as usize);
        s.eval(model, &first, Logits::Last, &SingleThread).unwrap();
        let mut out = Vec::new();
        s.export_kv_layer(0, first.len(), &mut out);
        out
    });
    let kv_run = &plain[plain.len() / 2..plain.len() / 2 + 32];
    let ids = le_bytes(&first);
    assert!(contains(&plain, kv_run) && contains(&[plain.clone(), ids.clone()].concat(), &ids));
    assert!(
        !contains(&blob, kv_run),
        "the stored blocks hold plaintext KV bytes"
    );
    assert!(
        !contains(&blob, &ids),
        "the stored blocks hold the prompt's token ids"
    );
    assert_eq!(
        blob.len(),
        plain.len() * engine.with(|m, _| m.cfg.n_layer) + 16 * blocks.len()
    );

    // Restored: the same answer as without eviction, the first prompt's tokens cached.
    let (tokens, cached) = ask(&rig, 11, &second, want_flag::FORCE_RESTORE, |w| {
        assert_eq!((w.choice, w.handle), (KvChoice::Restore, handle));
        assert_eq!(w.tokens as usize, first.len());
        assert_eq!(
            restore(&rig, handle, &numbered(&blocks)),
            vec![Status::Ok; blocks.len()]
        );
    });
    assert_eq!(tokens, expect(&second));
    assert_eq!(
        cached as usize,
        first.len(),
        "the restored tokens are counted"
    );
    assert!(logged(&rig, &["restored for request 11"]));

    // The stale copy of that eviction: its cache is back, so its handle is unknown.
    assert_eq!(
        restore(&rig, handle, &numbered(&blocks[..1])),
        vec![Status::SealRejected]
    );

    // Each way a block can be wrong is refused by name, and the answer is the same.
    let refusals: [Spoil; 4] = [
        ("does not authenticate", |b| b[1].1[7] ^= 0x01),
        ("is missing", |b| b[0].1.clear()),
        ("out of order", |b| b.swap(0, 1)),
        ("does not authenticate", |b| {
            let moved = b[1].1.clone();
            b[0].1 = moved;
        }),
    ];
    for (i, (why, spoil)) in refusals.into_iter().enumerate() {
        // The longest prompt so far left its cache kept; hand it over again.
        let (handle, blocks) = evict(&rig);
        let mut spoilt = numbered(&blocks);
        spoil(&mut spoilt);
        let id = 20 + i as u64;
        let (tokens, cached) = ask(&rig, id, &third, want_flag::FORCE_RESTORE, |w| {
            assert_eq!((w.choice, w.handle), (KvChoice::Restore, handle));
            let statuses = restore(&rig, handle, &spoilt);
            assert_eq!(statuses.last(), Some(&Status::SealRejected), "{why}");
        });
        let recomputes = format!("request {id} recomputes");
        assert!(logged(&rig, &[why, &recomputes]), "{why}: not logged");
        assert_eq!((tokens, cached), (expect(&third), 0), "{why}");
    }

    // Chosen recompute: the cache is forgotten and the answer is the same.
    evict(&rig);
    let (tokens, cached) = ask(&rig, 30, &third, want_flag::FORCE_RECOMPUTE, |w| {
        assert_eq!(w.choice, KvChoice::Recompute);
    });
    assert_eq!((tokens, cached), (expect(&third), 0));
    // Nothing kept left to evict once the last cache was handed over.
    evict(&rig);
    match rig.command(&ControlCommand::KvEvict(KvEvict {
        handle: 0,
        block: 0,
    })) {
        ControlReply::KvBlock(b) => assert_eq!(b.status, Status::NoSuchSession),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The budget has room but the pool's free memory is in pieces smaller than a KV cache's
/// keys or values (as after an eviction freed a cache between blocks still in use): opening
/// a session frees kept caches for it and, with nothing left to free, answers OutOfMemory
/// instead of allocating (a failed allocation ends the guest); the guest goes on serving.
#[test]
fn a_session_opens_only_where_its_cache_fits_in_one_piece() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(limits());
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    let prompt = engine.encode("The quick brown fox jumps over the lazy dog, and then it runs");
    ask(&rig, 10, &prompt, 0, |_| {});

    assert_eq!(rig.stats().kv_caches_dropped, 0, "dropped without pressure");
    rig.pool
        .largest_block
        .store(1024, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(rig.open(40, 1, CTX), Status::OutOfMemory);
    assert!(logged(&rig, &["no free extent large enough"]));
    // Counted, for the host to report (and to prove it evicted first where it could).
    assert_eq!(rig.stats().kv_caches_dropped, 1, "the drop was not counted");
    // The kept cache went to make room.
    match rig.command(&ControlCommand::KvEvict(KvEvict {
        handle: 0,
        block: 0,
    })) {
        ControlReply::KvBlock(b) => assert_eq!(b.status, Status::NoSuchSession),
        other => panic!("expected a refusal, got {other:?}"),
    }

    rig.pool
        .largest_block
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let (tokens, cached) = ask(&rig, 41, &prompt, 0, |_| {});
    assert_eq!(
        (tokens, cached),
        (engine.greedy(&prompt, CTX, MAX_TOKENS, true), 0)
    );
}

/// Evicted caches held on the host do not stop batching: with one evicted, a request asked
/// about by `KvWant` (no match) and a second sent while it runs decode together, each
/// with the tokens it gets alone.
#[test]
fn requests_batch_while_an_evicted_cache_is_held() {
    let Some((file, sha)) = model() else { return };
    let engine = HostEngine { file: file.clone() };
    let rig = Rig::start(vmm::devices::virtio_llm::LlmConfig {
        max_sessions: 9,
        batch: true,
        ..limits()
    });
    assert_eq!(rig.load(1, &file, sha), Status::Ok);
    let kept = engine.encode("The quick brown fox jumps over the lazy dog, and then it runs");
    ask(&rig, 10, &kept, 0, |_| {});
    evict(&rig);

    let (a, b) = (
        engine.encode("Once upon a time"),
        engine.encode("In a hole in the"),
    );
    assert_eq!(rig.open(20, 1, CTX), Status::Ok);
    assert_eq!(rig.open(21, 1, CTX), Status::Ok);
    let first = greedy_request(20, 20, Prompt::Tokens(a.clone()), 120);
    assert_eq!(want(&rig, &first, 20, 0).choice, KvChoice::None);
    let mut tokens = [rig.first_slice(20), Vec::new()];
    rig.request(&greedy_request(21, 21, Prompt::Tokens(b.clone()), 8));
    let mut b_ended_first = false;
    let mut ended = 0;
    while ended < 2 {
        match rig.host.recv_response(T).expect("response") {
            ResponseMsg::Tokens(t) => tokens[(t.request_id - 20) as usize].extend(t.token_ids),
            ResponseMsg::EndOfStream(e) => {
                b_ended_first |= ended == 0 && e.request_id == 21;
                ended += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        b_ended_first,
        "the second request waited for the first: no batch"
    );
    assert_eq!(tokens[0], engine.greedy(&a, CTX, 120, true));
    assert_eq!(tokens[1], engine.greedy(&b, CTX, 8, true));
}
