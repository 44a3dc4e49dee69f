//! Sealed sessions in a real guest under KVM (docs/sealed-session.md): a client seals a
//! chat request to the guest's session key, the guest opens it, applies its stop strings,
//! and answers with numbered sealed pieces and withheld token ids; the client's text equals
//! a plain request's. A request sealed to another guest or with a changed public field is
//! refused and the guest keeps serving; a preempted sealed answer goes on from the guest's
//! own last token.

#[path = "sealing.rs"]
#[allow(dead_code)] // `seal` is for the sealed-model tests
mod sealing;

use flexserve_e2e::{model_path, protected_images as images};
use sealed_session::{
    OsRng, ResponseOpener, SessionPublicKey, SignedStatement, TryRngCore, derive_session_key,
    seal_request,
};
use sealing::{ROOT, sealing_guest};
use std::cell::Cell;
use virtio_llm::Status;
use virtio_llm::wire::request::{
    ChatRole, ChatTurn, GenerateRequest, Prompt, SamplingParams, SealedPrompt,
};
use virtio_llm::wire::response::StopReason;
use virtio_llm::wire::sealed_session::{SealedContent, binding};
use vmm::guest_vm::{GuestError, GuestVm, Interrupt};

const MODEL: &str = "tiny.Q8_0";
/// Long enough that a preempt sent after the first few tokens always lands before the end.
const TOKENS: u32 = 256;
/// The answer of the plain-vs-sealed comparison: long enough for a stop string in its second
/// half, short enough to be cheap under emulation (the arm64 tier runs that test in both
/// kinds of VM, where 256 tokens made it the slowest check).
const ANSWER_TOKENS: u32 = 64;

fn chat() -> Vec<ChatTurn> {
    vec![ChatTurn {
        role: ChatRole::User,
        content: "Tell me about the violet heron of Lake Quill.".into(),
    }]
}

fn sampling() -> SamplingParams {
    sampling_of(TOKENS)
}

fn sampling_of(tokens: u32) -> SamplingParams {
    SamplingParams {
        ignore_eog: true,
        ..SamplingParams::greedy(tokens)
    }
}

fn request(session_id: u32, sampling: SamplingParams, prompt: Prompt) -> GenerateRequest {
    GenerateRequest {
        options: Default::default(),
        request_id: u64::from(session_id) * 100,
        session_id,
        sampling,
        prompt,
    }
}

/// A booted guest with the plain model loaded, and its session key from its statement.
fn guest() -> Option<(GuestVm, SessionPublicKey)> {
    let (images, path) = (images()?, model_path(&format!("{MODEL}.gguf"))?);
    let file = std::fs::read(path).unwrap();
    let mut vm = sealing_guest(&images, file.len());
    vm.load_model(1, &file, None, &mut |_| {}).expect("load");
    assert!(
        vm.seals_sessions(),
        "a guest with a key root serves sealed requests"
    );
    let statement = SignedStatement::decode(&vm.statement(false).expect("statement"))
        .expect("the statement verifies");
    let expected = derive_session_key(&ROOT, &images.measurement()).public();
    assert_eq!(statement.statement.session_key, expected);
    assert_eq!(statement.statement.measurement, images.measurement());
    Some((vm, expected))
}

fn sealed(
    key: &SessionPublicKey,
    s: &SamplingParams,
    stop: Vec<String>,
) -> (Prompt, ResponseOpener) {
    let content = SealedContent {
        prompt: Prompt::Chat(chat()),
        stop,
    };
    let bound = binding(MODEL, false, s);
    let (req, opener) = seal_request(
        key,
        &bound,
        &content.encode().unwrap(),
        &mut OsRng.unwrap_err(),
    )
    .expect("seal");
    let prompt = Prompt::Sealed(SealedPrompt {
        model: MODEL.into(),
        stream: false,
        request: req.to_bytes(),
    });
    (prompt, opener)
}

/// Runs `req` on a fresh session; the raw pieces (token ids must all be 0) and the end.
fn run(
    vm: &mut GuestVm,
    req: &GenerateRequest,
    interrupt: &dyn Fn(u32) -> Option<Interrupt>,
) -> (Vec<Vec<u8>>, Result<StopReason, GuestError>) {
    let mut pieces = Vec::new();
    let count = Cell::new(0u32);
    let end = vm.generate_until(
        req,
        &mut |ids, text| {
            assert!(
                ids.iter().all(|&t| t == 0),
                "a sealed answer withholds token ids"
            );
            count.set(count.get() + ids.len() as u32);
            pieces.push(text.to_vec());
        },
        &|| interrupt(count.get()),
    );
    (pieces, end.map(|e| e.reason))
}

/// The answer's bytes (a random-weight model's answer need not be UTF-8).
fn open_all(opener: &mut ResponseOpener, pieces: &[Vec<u8>]) -> Vec<u8> {
    pieces
        .iter()
        .flat_map(|p| opener.open(p).expect("piece opens").text)
        .collect()
}

fn plain_text(vm: &mut GuestVm, session: u32, sampling: SamplingParams) -> Vec<u8> {
    vm.open_session(session, 1, 512).unwrap();
    let mut text = Vec::new();
    vm.generate(
        &request(session, sampling, Prompt::Chat(chat())),
        &mut |_, t| text.extend_from_slice(t),
        &|| false,
    )
    .unwrap();
    vm.close_session(session).unwrap();
    text
}

/// Three ASCII letters from the second half of `text`, as a stop string, and the text
/// before their first occurrence.
fn stop_inside(text: &[u8]) -> (String, &[u8]) {
    let at = (text.len() / 2..text.len() - 3)
        .find(|&i| text[i..i + 3].iter().all(u8::is_ascii_alphabetic))
        .expect("the answer has three letters in a row");
    let stop = &text[at..at + 3];
    let first = text.windows(3).position(|w| w == stop).unwrap();
    (String::from_utf8(stop.to_vec()).unwrap(), &text[..first])
}

#[test]
fn a_sealed_chat_gives_the_plain_answer_sealed() {
    let Some((mut vm, key)) = guest() else { return };
    let s = sampling_of(ANSWER_TOKENS);
    let plain = plain_text(&mut vm, 1, s);
    assert!(!plain.is_empty());

    vm.open_session(2, 1, 512).unwrap();
    let (prompt, mut opener) = sealed(&key, &s, vec![]);
    let (pieces, end) = run(&mut vm, &request(2, s, prompt), &|_| None);
    assert_eq!(end.unwrap(), StopReason::MaxTokens);
    assert_eq!(open_all(&mut opener, &pieces), plain);
    opener.finish().expect("the last piece arrived");
    assert!(
        !pieces
            .iter()
            .any(|p| p.windows(8).any(|w| plain.windows(8).any(|x| x == w))),
        "no piece carries the answer in the clear"
    );

    // A stop string inside the answer cuts it there, in the guest.
    let (stop, expected) = stop_inside(&plain);
    vm.open_session(3, 1, 512).unwrap();
    let (prompt, mut opener) = sealed(&key, &s, vec![stop]);
    let (pieces, end) = run(&mut vm, &request(3, s, prompt), &|_| None);
    assert_eq!(end.unwrap(), StopReason::EndOfGeneration);
    assert_eq!(open_all(&mut opener, &pieces), expected);
    opener.finish().expect("ended");
}

#[test]
fn a_preempted_sealed_answer_goes_on_from_the_guests_own_token() {
    let Some((mut vm, key)) = guest() else { return };
    let plain = plain_text(&mut vm, 1, sampling());
    vm.open_session(2, 1, 512).unwrap();
    let (prompt, mut opener) = sealed(&key, &sampling(), vec![]);
    let (mut pieces, end) = run(&mut vm, &request(2, sampling(), prompt), &|n| {
        (n >= 5).then_some(Interrupt::Preempt)
    });
    assert_eq!(end.unwrap(), StopReason::Preempted);
    assert!(opener.finish().is_err(), "a preempted answer has not ended");
    let (rest, end) = run(&mut vm, &request(2, sampling(), Prompt::Continue), &|_| {
        None
    });
    assert_eq!(end.unwrap(), StopReason::MaxTokens);
    pieces.extend(rest);
    assert_eq!(open_all(&mut opener, &pieces), plain);
    opener.finish().unwrap();

    // A continuation that changes a bound field is refused.
    vm.open_session(3, 1, 512).unwrap();
    let (prompt, _) = sealed(&key, &sampling(), vec![]);
    let (_, end) = run(&mut vm, &request(3, sampling(), prompt), &|n| {
        (n >= 2).then_some(Interrupt::Preempt)
    });
    assert_eq!(end.unwrap(), StopReason::Preempted);
    let hotter = SamplingParams {
        temperature: 0.9,
        ..sampling()
    };
    let (_, end) = run(&mut vm, &request(3, hotter, Prompt::Continue), &|_| None);
    assert!(
        matches!(
            end,
            Err(GuestError::Request {
                status: Status::BadRequest,
                ..
            })
        ),
        "{end:?}"
    );
}

#[test]
fn a_changed_field_or_another_guests_key_is_refused_and_the_guest_serves_on() {
    let Some((mut vm, key)) = guest() else { return };
    vm.open_session(2, 1, 512).unwrap();
    let (prompt, _) = sealed(&key, &sampling(), vec![]);
    let longer = SamplingParams {
        max_tokens: TOKENS + 1,
        ..sampling()
    };
    let (_, end) = run(&mut vm, &request(2, longer, prompt), &|_| None);
    match end {
        Err(GuestError::Request {
            status: Status::BadRequest,
            message,
        }) => {
            assert!(message.contains("does not open"), "{message}")
        }
        other => panic!("a changed max_tokens must be refused: {other:?}"),
    }
    let other_guest = derive_session_key(&ROOT, &[0x11; 32]).public();
    let (prompt, _) = sealed(&other_guest, &sampling(), vec![]);
    let (_, end) = run(&mut vm, &request(2, sampling(), prompt), &|_| None);
    assert!(
        matches!(
            end,
            Err(GuestError::Request {
                status: Status::BadRequest,
                ..
            })
        ),
        "{end:?}"
    );
    // Positive control: the same guest opens a request sealed to its own key.
    let (prompt, mut opener) = sealed(&key, &sampling(), vec![]);
    let (pieces, end) = run(&mut vm, &request(2, sampling(), prompt), &|_| None);
    assert_eq!(end.unwrap(), StopReason::MaxTokens);
    assert!(!open_all(&mut opener, &pieces).is_empty());
}
