//! Writes a small seed corpus: one valid frame of every message type, in the corpus
//! directory of the target whose raw decoders read it.
//!
//! `cargo run --example gen_seeds` (from `fuzz/`) fills `corpus/device_decode` and
//! `corpus/driver_decode` (git-ignored). The frames also seed the queue-level part of each
//! target, which reads the same bytes as a script of hostile operations. `corpus/sealed_model`
//! gets a small model sealed to the target's guest, so that mutations of its body reach the
//! chunk checks behind the signature; `corpus/gguf_model` a whole tiny model (a one-layer
//! llama with a byte-fallback SentencePiece vocabulary and a ChatML template), so that
//! mutations reach the tokenizer, the weights and a forward pass; `corpus/openai_request`
//! request bodies that use every field the parser reads.

use std::fs;
use std::path::Path;
use virtio_llm::Message;
use virtio_llm::spec::MEMORY_GRANULE;
use virtio_llm::spec::layout::PRIVATE_POOL_BASE;
use virtio_llm::wire::control::{
    Ack, CloseSession, LoadModelBegin, LoadModelChunk, LoadModelEnd, LoadSealedBegin,
    LoadSealedChunk, OpenSession, StatsReply, StatsRequest, UnloadModel, msg_type,
};
use virtio_llm::wire::echo::{EchoReply, EchoRequest};
use virtio_llm::wire::memory::{BudgetChange, MemRange, MemoryMsg, RelinquishReport};
use virtio_llm::wire::request::{
    CancelRequest, ChatRole, ChatTurn, GenerateRequest, PreemptRequest, Prompt, SamplingParams,
};
use virtio_llm::wire::response::{EndOfStream, ErrorResponse, StopReason, Timings, Tokens};
use virtio_llm::wire::status::Status;

fn write(dir: &Path, name: &str, frame: Vec<u8>) {
    fs::write(dir.join(name), frame).expect("writing a seed");
}

fn enc(f: impl FnOnce(&mut Vec<u8>) -> Result<(), virtio_llm::WireError>) -> Vec<u8> {
    let mut out = Vec::new();
    f(&mut out).expect("seed messages are valid");
    out
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let dev = root.join("device_decode");
    let drv = root.join("driver_decode");
    fs::create_dir_all(&dev).unwrap();
    fs::create_dir_all(&drv).unwrap();

    // Driver → device: replies, responses, relinquish reports.
    write(
        &dev,
        "ack",
        enc(|o| {
            Ack {
                command: msg_type::OPEN_SESSION,
                status: Status::OutOfMemory,
                object_id: 3,
            }
            .encode(o)
        }),
    );
    write(
        &dev,
        "stats_reply",
        enc(|o| {
            StatsReply {
                models_loaded: 1,
                sessions_open: 2,
                memory_used_bytes: 3 << 30,
                memory_budget_bytes: 4 << 30,
                requests_completed: 99,
                tokens_generated: 12345,
                engine_kernels: 2,
                cpu_features: 0x3ff,
                kv_caches_dropped: 2,
            }
            .encode(o)
        }),
    );
    write(
        &dev,
        "tokens",
        enc(|o| {
            Tokens {
                logprobs: Default::default(),
                request_id: 1,
                token_ids: vec![1, 2, 3],
                text: b"Hello, w\xc3".to_vec(),
            }
            .encode(o)
        }),
    );
    write(
        &dev,
        "error",
        enc(|o| {
            ErrorResponse {
                request_id: 2,
                status: Status::ContextFull,
                message: "full".into(),
            }
            .encode(o)
        }),
    );
    write(
        &dev,
        "end_of_stream",
        enc(|o| {
            EndOfStream {
                request_id: 3,
                reason: StopReason::MaxTokens,
                prompt_tokens: 5,
                generated_tokens: 6,
                cached_tokens: 0,
                timings: Timings {
                    prompt_ns: 7,
                    generation_ns: 8,
                },
            }
            .encode(o)
        }),
    );
    write(
        &dev,
        "echo_reply",
        enc(|o| {
            EchoReply {
                request_id: 4,
                data: vec![0x5a; 32],
            }
            .encode(o)
        }),
    );
    write(
        &dev,
        "budget_change",
        enc(|o| {
            MemoryMsg::BudgetChange(BudgetChange {
                sequence: 1,
                new_budget_bytes: 64 * MEMORY_GRANULE,
            })
            .encode(o)
        }),
    );
    write(
        &dev,
        "relinquish",
        enc(|o| {
            MemoryMsg::Relinquish(RelinquishReport {
                sequence: 1,
                ranges: vec![MemRange {
                    guest_phys: PRIVATE_POOL_BASE,
                    len: 2 * MEMORY_GRANULE,
                }],
            })
            .encode(o)
        }),
    );

    // Device → driver: commands and requests.
    write(
        &drv,
        "load_begin",
        enc(|o| {
            LoadModelBegin {
                model_id: 7,
                total_bytes: 1 << 20,
            }
            .encode(o)
        }),
    );
    write(
        &drv,
        "load_chunk",
        enc(|o| {
            LoadModelChunk {
                model_id: 7,
                offset: 0,
                data: b"GGUF\x03\0\0\0",
            }
            .encode(o)
        }),
    );
    write(
        &drv,
        "load_end",
        enc(|o| {
            LoadModelEnd {
                model_id: 7,
                sha256: [0xab; 32],
            }
            .encode(o)
        }),
    );
    write(
        &drv,
        "load_sealed_begin",
        enc(|o| {
            LoadSealedBegin {
                model_id: 7,
                flags: 0,
                accepted_owners: &[[0x42; 32]],
                header: b"FLEXSEAL\x01\0\0\0\xe0\0\0\0",
            }
            .encode(o)
        }),
    );
    write(
        &drv,
        "load_sealed_chunk",
        enc(|o| {
            LoadSealedChunk {
                model_id: 7,
                index: 0,
                data: &[0x5a; 48],
            }
            .encode(o)
        }),
    );
    write(
        &drv,
        "unload",
        enc(|o| UnloadModel {
            model_id: 7,
            keep_layers: 0,
        }.encode(o)),
    );
    write(
        &drv,
        "open_session",
        enc(|o| {
            OpenSession {
                session_id: 3,
                model_id: 7,
                context_len: 4096,
            }
            .encode(o)
        }),
    );
    write(
        &drv,
        "close_session",
        enc(|o| CloseSession { session_id: 3 }.encode(o)),
    );
    write(&drv, "stats_request", enc(|o| StatsRequest.encode(o)));
    write(
        &drv,
        "generate_tokens",
        enc(|o| {
            GenerateRequest {
                options: Default::default(),
                request_id: 1,
                session_id: 3,
                sampling: SamplingParams::greedy(16),
                prompt: Prompt::Tokens(vec![1, 2, 3]),
            }
            .encode(o)
        }),
    );
    write(
        &drv,
        "generate_text",
        enc(|o| {
            GenerateRequest {
                options: Default::default(),
                request_id: 2,
                session_id: 3,
                sampling: SamplingParams {
                    temperature: 0.7,
                    top_k: 40,
                    top_p: 0.9,
                    min_p: 0.05,
                    repeat_penalty: 1.1,
                    seed: 42,
                    ..SamplingParams::greedy(64)
                },
                prompt: Prompt::Text("Hello".into()),
            }
            .encode(o)
        }),
    );
    write(
        &drv,
        "generate_chat",
        enc(|o| {
            GenerateRequest {
                options: Default::default(),
                request_id: 3,
                session_id: 3,
                sampling: SamplingParams::greedy(16),
                prompt: Prompt::Chat(vec![
                    ChatTurn {
                        role: ChatRole::System,
                        content: "Be brief.".into(),
                    },
                    ChatTurn {
                        role: ChatRole::User,
                        content: "Hello".into(),
                    },
                ]),
            }
            .encode(o)
        }),
    );
    write(
        &drv,
        "cancel",
        enc(|o| CancelRequest { request_id: 1 }.encode(o)),
    );
    write(
        &drv,
        "preempt",
        enc(|o| PreemptRequest { request_id: 1 }.encode(o)),
    );
    write(
        &drv,
        "echo_request",
        enc(|o| {
            EchoRequest {
                request_id: 4,
                data: vec![0xa5; 32],
            }
            .encode(o)
        }),
    );
    println!("seeds written to {}", root.display());
    write_sealed_seed(&root.join("sealed_model"));
    write_gguf_seed(&root.join("gguf_model"));
    write_openai_seeds(&root.join("openai_request"));
}

/// Three layers, 13 chunks of up to 4096 bytes, sealed to the fuzz target's guest key.
fn write_sealed_seed(dir: &Path) {
    use sealed_model::{OsRng, OwnerKey, SealRequest, TryRngCore, derive_guest_key, seal};
    fs::create_dir_all(dir).unwrap();
    let plaintext: Vec<u8> = (0..50_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let layers = [0..20_000, 20_000..20_001, 20_001..50_000];
    let guest = derive_guest_key(&[7; 32], &[1; 32]).public();
    let request = SealRequest {
        plaintext: &plaintext,
        layers: &layers,
        chunk_bytes: 4096,
        context_len: 512,
        kv_bytes_per_token: 2048,
        recipients: &[guest],
    };
    let owner = OwnerKey::from_seed(&[3; 32]);
    let file = seal(&request, &owner, &mut OsRng.unwrap_err()).expect("the seed seals");
    write(dir, "small_model", file);
}

/// The tiny model the `service_commands` target loads, as a whole file.
fn write_gguf_seed(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    write(dir, "tiny_llama", virtio_llm_fuzz::tiny_llama());
}

/// Chat, completion (text and token ids) and sealed bodies using every field the parser
/// reads, so that mutations start inside each branch.
fn write_openai_seeds(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let bodies = [
        (
            "chat",
            r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]},{"role":"assistant","content":null},{"role":"developer","content":"x"}],"max_tokens":16,"max_completion_tokens":8,"n":1,"temperature":0.7,"top_p":0.9,"top_k":40,"min_p":0.05,"repeat_penalty":1.1,"seed":-3,"stream":true,"stream_options":{"include_usage":true},"stop":["\n","END"],"user":"u","ignore_eos":false,"frequency_penalty":0,"presence_penalty":0,"logprobs":false}"#,
        ),
        (
            "completion_text",
            r#"{"prompt":["Once upon a time"],"max_tokens":4,"stop":"."}"#,
        ),
        (
            "completion_ids",
            r#"{"prompt":[1,2,3,4294967295],"temperature":0}"#,
        ),
        (
            "sealed",
            r#"{"model":"m","flexserve_sealed":"AAECAwQFBgcICQoLDA0ODw==","stream":false,"max_tokens":2}"#,
        ),
    ];
    for (name, body) in bodies {
        write(dir, name, body.as_bytes().to_vec());
    }
}
