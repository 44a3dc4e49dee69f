//! Helpers shared by the virtio-llm fuzz targets: the round-trip check of the wire decoders,
//! header fix-ups, and builders that turn fuzz bytes into (mostly valid) messages so the
//! queue-level harnesses reach the decoders' success paths as well as their error paths.

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use std::fmt::Debug;
use virtio_llm::WireError;
use virtio_llm::spec::{self, HEADER_BYTES, PROTOCOL_VERSION};
use virtio_llm::wire::control::{self, ControlCommand, ControlReply};
use virtio_llm::wire::echo::{self, EchoReply, EchoRequest};
use virtio_llm::wire::embed::{EmbedRequest, Embedding};
use virtio_llm::wire::memory::{self, BudgetChange, MemRange, MemoryMsg, RelinquishReport};
use virtio_llm::wire::options::{CallStyle, GenerateOptions, Penalties, ToolChat, ToolDef, TurnCall};
use virtio_llm::wire::tool_chat::{GetToolStyle, ToolStyleReply};
use virtio_llm::wire::request::{
    self, CancelRequest, ChatRole, ChatTurn, GenerateRequest, PreemptRequest, Prompt, RequestMsg,
    SamplingParams,
};
use virtio_llm::wire::response::{
    self, EndOfStream, ErrorResponse, ResponseMsg, StopReason, Timings, Tokens,
};
use virtio_llm::wire::status::Status;

/// Decodes `buf` with `decode`; if that succeeds, re-encoding must give back exactly `buf`
/// (every field of every message is canonical: reserved bytes zero, lengths exact, floats
/// carried by their bits). Returns whether `buf` decoded.
pub fn check_round_trip<'a, T: Debug>(
    family: &str,
    buf: &'a [u8],
    decode: impl FnOnce(&'a [u8]) -> std::result::Result<T, WireError>,
    encode: impl FnOnce(&T, &mut Vec<u8>) -> std::result::Result<(), WireError>,
) -> bool {
    let Ok(msg) = decode(buf) else {
        return false;
    };
    let mut out = Vec::with_capacity(buf.len());
    if let Err(e) = encode(&msg, &mut out) {
        panic!("{family}: decoded {msg:?} but it does not re-encode: {e}");
    }
    assert!(
        out == buf,
        "{family}: {msg:?} re-encodes to {} bytes that differ from the {} decoded\n in:  {:02x?}\n out: {:02x?}",
        out.len(),
        buf.len(),
        &buf[..buf.len().min(256)],
        &out[..out.len().min(256)],
    );
    true
}

/// `ControlCommand` round trip (driver side).
pub fn rt_command(buf: &[u8]) -> bool {
    check_round_trip("ControlCommand", buf, ControlCommand::decode, |m, o| {
        m.encode(o)
    })
}

/// `RequestMsg` round trip (driver side).
pub fn rt_request(buf: &[u8]) -> bool {
    check_round_trip("RequestMsg", buf, RequestMsg::decode, |m, o| m.encode(o))
}

/// `ControlReply` round trip (device side).
pub fn rt_reply(buf: &[u8]) -> bool {
    check_round_trip("ControlReply", buf, ControlReply::decode, |m, o| {
        m.encode(o)
    })
}

/// `ResponseMsg` round trip (device side).
pub fn rt_response(buf: &[u8]) -> bool {
    check_round_trip("ResponseMsg", buf, ResponseMsg::decode, |m, o| m.encode(o))
}

/// `MemoryMsg` round trip (both memory queues).
pub fn rt_memory(buf: &[u8]) -> bool {
    check_round_trip("MemoryMsg", buf, MemoryMsg::decode, |m, o| m.encode(o))
}

/// Runs `checks` on `data` as it is and, if it is long enough to hold a header, on a copy
/// whose version, flags and body length are fixed up, so the body decoders are reached
/// without the fuzzer having to guess the length field. Message types are disjoint across
/// families, so at most one check may accept a buffer.
pub fn decode_raw_and_fixed(data: &[u8], checks: &[fn(&[u8]) -> bool]) {
    let accepted = checks.iter().filter(|c| c(data)).count();
    assert!(
        accepted <= 1,
        "{accepted} message families accepted one buffer"
    );
    if data.len() >= HEADER_BYTES {
        let mut fixed = data.to_vec();
        fix_header(&mut fixed);
        let accepted = checks.iter().filter(|c| c(&fixed)).count();
        assert!(
            accepted <= 1,
            "{accepted} message families accepted one buffer"
        );
    }
}

/// Sets version 1, flags 0 and the body length of the frame at the start of `frame`.
pub fn fix_header(frame: &mut [u8]) {
    if frame.len() >= HEADER_BYTES {
        frame[2] = PROTOCOL_VERSION;
        frame[3] = 0;
        let body = u32::try_from(frame.len() - HEADER_BYTES).unwrap_or(u32::MAX);
        frame[4..8].copy_from_slice(&body.to_le_bytes());
    }
}

/// A frame with a correct header of type `ty` around `body`.
pub fn framed(ty: u16, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER_BYTES + body.len());
    f.extend_from_slice(&ty.to_le_bytes());
    f.extend_from_slice(&[PROTOCOL_VERSION, 0]);
    f.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    f.extend_from_slice(body);
    f
}

/// Every message type of the protocol, so framed payloads name real types most of the time.
pub const ALL_TYPES: [u16; 18] = [
    control::msg_type::LOAD_MODEL_BEGIN,
    control::msg_type::LOAD_MODEL_CHUNK,
    control::msg_type::LOAD_MODEL_END,
    control::msg_type::UNLOAD_MODEL,
    control::msg_type::OPEN_SESSION,
    control::msg_type::CLOSE_SESSION,
    control::msg_type::STATS_REQUEST,
    control::msg_type::ACK,
    control::msg_type::STATS_REPLY,
    request::msg_type::GENERATE,
    request::msg_type::CANCEL,
    echo::msg_type::ECHO_REQUEST,
    response::msg_type::TOKENS,
    response::msg_type::ERROR,
    response::msg_type::END_OF_STREAM,
    echo::msg_type::ECHO_REPLY,
    memory::msg_type::BUDGET_CHANGE,
    memory::msg_type::RELINQUISH_REPORT,
];

/// A message type: usually one of the protocol's, sometimes any u16.
pub fn msg_type(u: &mut Unstructured<'_>) -> Result<u16> {
    if u.ratio(7, 8)? {
        Ok(*u.choose(&ALL_TYPES)?)
    } else {
        u.arbitrary()
    }
}

/// `n` in `lo..=hi` most of the time, any value otherwise (so limits are probed both sides).
fn near<T>(u: &mut Unstructured<'_>, lo: T, hi: T) -> Result<T>
where
    T: libfuzzer_sys::arbitrary::unstructured::Int
        + for<'a> libfuzzer_sys::arbitrary::Arbitrary<'a>,
{
    if u.ratio(7, 8)? {
        u.int_in_range(lo..=hi)
    } else {
        u.arbitrary()
    }
}

/// Up to `max` bytes taken from the input.
pub fn bytes<'a>(u: &mut Unstructured<'a>, max: usize) -> Result<&'a [u8]> {
    let n = u.arbitrary_len::<u8>()?.min(max);
    u.bytes(n)
}

/// Generation options, in and out of range (some encodings fail, as they should).
pub fn options(u: &mut Unstructured<'_>) -> Result<GenerateOptions> {
    let mut o = GenerateOptions::default();
    if u.arbitrary()? {
        o.penalties = Some(Penalties {
            presence: f32::from(u.int_in_range(-25i8..=25)?) / 10.0,
            frequency: f32::from(u.int_in_range(-25i8..=25)?) / 10.0,
            last_n: u.int_in_range(0..=256)?,
        });
    }
    let n = u.int_in_range(0..=8)?;
    let mut id = 0u32;
    for _ in 0..n {
        id += u.int_in_range(0..=1000)?;
        o.logit_bias
            .push((id, f32::from(u.int_in_range(-110i16..=110)?)));
    }
    if u.arbitrary()? {
        o.logprobs = Some(u.int_in_range(0..=24)?);
    }
    if u.arbitrary()? {
        o.tool_chat = Some(tool_chat(u)?);
    }
    Ok(o)
}

/// Tools and earlier calls (`feature::GUEST_TOOLS`); turns and names may be out of bounds.
pub fn tool_chat(u: &mut Unstructured<'_>) -> Result<ToolChat> {
    let text = |u: &mut Unstructured<'_>, n| -> Result<String> {
        Ok(String::from_utf8_lossy(bytes(u, n)?).into_owned())
    };
    let mut c = ToolChat::default();
    for _ in 0..u.int_in_range(0u8..=3)? {
        c.tools.push(ToolDef {
            name: text(u, 8)?,
            json: text(u, 256)?,
            json_indented: text(u, 256)?,
        });
    }
    for _ in 0..u.int_in_range(0u8..=3)? {
        c.calls.push(TurnCall {
            turn: u.int_in_range(0..=4)?,
            name: text(u, 8)?,
            arguments: text(u, 64)?,
        });
    }
    Ok(c)
}

fn u32_list(u: &mut Unstructured<'_>, max: usize, below: u32) -> Result<Vec<u32>> {
    let n = u.arbitrary_len::<u32>()?.min(max);
    (0..n).map(|_| near(u, 0, below)).collect()
}

/// Up to one more owner key than a `LoadSealedBegin` may carry, taken from the input.
fn owner_keys<'a>(u: &mut Unstructured<'a>) -> Result<&'a [[u8; 32]]> {
    let n = u.int_in_range(0..=spec::MAX_ACCEPTED_OWNERS + 1)?;
    let want = n * 32;
    let raw = u.bytes(want.min(u.len() / 32 * 32))?;
    Ok(raw.as_chunks::<32>().0)
}

fn status(u: &mut Unstructured<'_>) -> Result<Status> {
    Ok(*u.choose(&Status::ALL)?)
}

fn f32_in(u: &mut Unstructured<'_>, lo: f32, hi: f32) -> Result<f32> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => f32::from_bits(u.arbitrary()?),
        1 => lo,
        2 => hi,
        3 => -0.0,
        _ => lo + (hi - lo) * (f32::from(u.arbitrary::<u16>()?) / f32::from(u16::MAX)),
    })
}

/// A control command (device → driver), borrowing chunk data from the input.
pub fn command<'a>(u: &mut Unstructured<'a>) -> Result<ControlCommand<'a>> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => ControlCommand::LoadModelBegin(control::LoadModelBegin {
            model_id: u.arbitrary()?,
            total_bytes: near(u, 0, spec::MAX_MODEL_BYTES + 1)?,
        }),
        1 => ControlCommand::LoadModelChunk(control::LoadModelChunk {
            model_id: u.arbitrary()?,
            offset: near(u, 0, spec::MAX_MODEL_BYTES)?,
            data: bytes(u, 4096)?,
        }),
        2 => ControlCommand::LoadModelEnd(control::LoadModelEnd {
            model_id: u.arbitrary()?,
            sha256: u.arbitrary()?,
        }),
        3 => ControlCommand::UnloadModel(control::UnloadModel {
            model_id: u.arbitrary()?,
            keep_layers: u.arbitrary()?,
        }),
        4 => ControlCommand::OpenSession(control::OpenSession {
            session_id: u.arbitrary()?,
            model_id: u.arbitrary()?,
            context_len: near(u, 0, spec::MAX_CONTEXT_LEN + 1)?,
        }),
        5 => ControlCommand::CloseSession(control::CloseSession {
            session_id: u.arbitrary()?,
        }),
        6 => ControlCommand::LoadSealedBegin(control::LoadSealedBegin {
            model_id: u.arbitrary()?,
            flags: near(u, 0, spec::sealed_flag::DEFINED + 1)?,
            accepted_owners: owner_keys(u)?,
            header: bytes(u, spec::MAX_SEALED_HEADER_BYTES + 1)?,
        }),
        7 => ControlCommand::LoadSealedChunk(control::LoadSealedChunk {
            model_id: u.arbitrary()?,
            index: u.arbitrary()?,
            data: bytes(u, 4096)?,
        }),
        8 => ControlCommand::GetToolStyle(GetToolStyle {
            model_id: u.arbitrary()?,
        }),
        _ => ControlCommand::Stats(control::StatsRequest),
    })
}

/// A control reply (driver → device).
pub fn reply(u: &mut Unstructured<'_>) -> Result<ControlReply> {
    if u.ratio(1u8, 4)? {
        return Ok(ControlReply::ToolStyle(ToolStyleReply {
            model_id: u.arbitrary()?,
            status: status(u)?,
            style: match u.int_in_range(0u8..=4)? {
                0 => None,
                1 => Some(CallStyle::Hermes),
                2 => Some(CallStyle::Llama3Json),
                3 => Some(CallStyle::Mistral),
                _ => Some(CallStyle::Template),
            },
        }));
    }
    Ok(if u.arbitrary()? {
        ControlReply::Ack(control::Ack {
            command: near(
                u,
                control::msg_type::LOAD_MODEL_BEGIN,
                control::msg_type::STATS_REQUEST,
            )?,
            status: status(u)?,
            object_id: u.arbitrary()?,
        })
    } else {
        ControlReply::Stats(control::StatsReply {
            models_loaded: u.arbitrary()?,
            sessions_open: u.arbitrary()?,
            memory_used_bytes: u.arbitrary()?,
            memory_budget_bytes: u.arbitrary()?,
            requests_completed: u.arbitrary()?,
            tokens_generated: u.arbitrary()?,
            engine_kernels: u.arbitrary()?,
            cpu_features: u.arbitrary()?,
            kv_caches_dropped: u.arbitrary()?,
        })
    })
}

/// A request (device → driver).
pub fn request(u: &mut Unstructured<'_>) -> Result<RequestMsg> {
    Ok(match u.int_in_range(0u8..=4)? {
        0 => {
            let sampling = SamplingParams {
                temperature: f32_in(u, 0.0, spec::MAX_TEMPERATURE)?,
                top_k: near(u, 0, spec::MAX_TOKEN_ID + 1)?,
                top_p: f32_in(u, 0.0, 1.0)?,
                min_p: f32_in(u, 0.0, 1.0)?,
                repeat_penalty: f32_in(u, 0.0, spec::MAX_REPEAT_PENALTY)?,
                seed: u.arbitrary()?,
                max_tokens: near(u, 0, spec::MAX_GENERATED_TOKENS + 1)?,
                ignore_eog: u.arbitrary()?,
            };
            let prompt = match u.int_in_range(0u8..=2)? {
                0 => Prompt::Tokens(u32_list(u, 2048, spec::MAX_TOKEN_ID)?),
                1 => Prompt::Text(String::from_utf8_lossy(bytes(u, 4096)?).into_owned()),
                _ => {
                    let mut turns = Vec::new();
                    for _ in 0..u.int_in_range(0u8..=4)? {
                        turns.push(ChatTurn {
                            role: ChatRole::try_from(u.int_in_range(0u8..=3)?)
                                .unwrap_or(ChatRole::User),
                            content: String::from_utf8_lossy(bytes(u, 1024)?).into_owned(),
                        });
                    }
                    Prompt::Chat(turns)
                }
            };
            RequestMsg::Generate(GenerateRequest {
                options: options(u)?,
                request_id: u.arbitrary()?,
                session_id: u.arbitrary()?,
                sampling,
                prompt,
            })
        }
        1 => RequestMsg::Cancel(CancelRequest {
            request_id: u.arbitrary()?,
        }),
        2 => RequestMsg::Preempt(PreemptRequest {
            request_id: u.arbitrary()?,
        }),
        3 => RequestMsg::Embed(EmbedRequest {
            request_id: u.arbitrary()?,
            model_id: u.arbitrary()?,
            prompt: if u.arbitrary()? {
                Prompt::Tokens(u32_list(u, 2048, spec::MAX_TOKEN_ID)?)
            } else {
                Prompt::Text(String::from_utf8_lossy(bytes(u, 4096)?).into_owned())
            },
        }),
        _ => RequestMsg::Echo(EchoRequest {
            request_id: u.arbitrary()?,
            data: bytes(u, spec::MAX_ECHO_BYTES)?.to_vec(),
        }),
    })
}

/// A response (driver → device).
pub fn response(u: &mut Unstructured<'_>) -> Result<ResponseMsg> {
    Ok(match u.int_in_range(0u8..=4)? {
        0 => ResponseMsg::Tokens(Tokens {
            logprobs: Default::default(),
            request_id: u.arbitrary()?,
            token_ids: u32_list(u, spec::MAX_TOKENS_PER_RESPONSE + 1, spec::MAX_TOKEN_ID)?,
            text: bytes(u, 4096)?.to_vec(),
        }),
        1 => ResponseMsg::Error(ErrorResponse {
            request_id: u.arbitrary()?,
            status: status(u)?,
            message: String::from_utf8_lossy(bytes(u, spec::MAX_ERROR_MESSAGE_BYTES + 1)?)
                .into_owned(),
        }),
        2 => ResponseMsg::EndOfStream(EndOfStream {
            request_id: u.arbitrary()?,
            reason: *u.choose(&[
                StopReason::MaxTokens,
                StopReason::EndOfGeneration,
                StopReason::Cancelled,
                StopReason::ContextFull,
                StopReason::Preempted,
            ])?,
            prompt_tokens: near(u, 0, spec::MAX_CONTEXT_LEN + 1)?,
            generated_tokens: near(u, 0, spec::MAX_GENERATED_TOKENS + 1)?,
            cached_tokens: 0,
            timings: Timings {
                prompt_ns: u.arbitrary()?,
                generation_ns: u.arbitrary()?,
            },
        }),
        3 => ResponseMsg::Embedding(Embedding {
            request_id: u.arbitrary()?,
            prompt_tokens: near(u, 0, spec::MAX_CONTEXT_LEN + 1)?,
            prompt_ns: u.arbitrary()?,
            values: (0..near(u, 0, spec::MAX_EMBEDDING_DIM as u32 + 1)?)
                .map(|_| u.arbitrary())
                .collect::<Result<Vec<f32>>>()?,
        }),
        _ => ResponseMsg::Echo(EchoReply {
            request_id: u.arbitrary()?,
            data: bytes(u, spec::MAX_ECHO_BYTES)?.to_vec(),
        }),
    })
}

/// A memory-queue message.
pub fn memory_msg(u: &mut Unstructured<'_>) -> Result<MemoryMsg> {
    const G: u64 = spec::MEMORY_GRANULE;
    Ok(if u.arbitrary()? {
        MemoryMsg::BudgetChange(BudgetChange {
            sequence: u.arbitrary()?,
            new_budget_bytes: u64::from(u.arbitrary::<u16>()?) * G + u64::from(u.ratio(1, 8)?),
        })
    } else {
        let n = u
            .arbitrary_len::<[u64; 2]>()?
            .min(spec::MAX_RELINQUISH_RANGES + 1);
        let mut at = spec::layout::PRIVATE_POOL_BASE;
        let mut ranges = Vec::with_capacity(n);
        for _ in 0..n {
            at += u64::from(u.arbitrary::<u8>()?) * G;
            let len = u64::from(near(u, 1u8, 8)?) * G;
            ranges.push(MemRange {
                guest_phys: at,
                len,
            });
            at += len;
        }
        MemoryMsg::Relinquish(RelinquishReport {
            sequence: u.arbitrary()?,
            ranges,
        })
    })
}

/// What a hostile peer puts in a buffer: raw bytes, a body under a correct header, or (half
/// the time) a message of the right family built by `valid`, valid most of the time.
pub fn payload(
    u: &mut Unstructured<'_>,
    max: usize,
    valid: impl FnOnce(&mut Unstructured<'_>, &mut Vec<u8>) -> Result<()>,
) -> Result<Vec<u8>> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => bytes(u, max)?.to_vec(),
        1 => {
            let ty = msg_type(u)?;
            framed(ty, bytes(u, max)?)
        }
        _ => {
            let mut out = Vec::new();
            valid(u, &mut out)?;
            if out.is_empty() {
                // The message did not validate; send its fields anyway.
                let ty = msg_type(u)?;
                out = framed(ty, bytes(u, max)?);
            }
            out
        }
    })
}

/// A one-layer llama (F32, 32 wide, context 64) with a SentencePiece vocabulary of byte
/// tokens, a few pieces and ChatML markers: small enough for many executions a second,
/// whole enough that the engine loads it and generates. Seeds `gguf_model`; loaded by
/// `service_commands`.
pub fn tiny_llama() -> Vec<u8> {
    use inference_guest::ggml_type::GgmlType;
    use inference_guest::gguf::writer::GgufWriter;
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut types = vec![2, 3, 3, 3, 3];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    types.extend([6; 256]);
    for piece in [
        "\u{2581}",
        "\u{2581}Hello",
        "\u{2581}world",
        "user",
        "e",
        "l",
        "o",
        "1",
    ] {
        tokens.push(piece.into());
        types.push(1);
    }
    let scores: Vec<f32> = (0..tokens.len()).map(|i| -(i as f32)).collect();
    let (embd, ff, kv, vocab) = (32u64, 32u64, 16u64, tokens.len() as u64);
    let mut w = GgufWriter::new();
    let names: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let ok = |r: Result<(), _>| r.expect("the seed model is valid");
    ok(w.add_str("general.architecture", "llama"));
    ok(w.add_u32("llama.embedding_length", embd as u32));
    ok(w.add_u32("llama.block_count", 1));
    ok(w.add_u32("llama.attention.head_count", 2));
    ok(w.add_u32("llama.attention.head_count_kv", 1));
    ok(w.add_u32("llama.feed_forward_length", ff as u32));
    ok(w.add_u32("llama.context_length", 64));
    ok(w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5));
    ok(w.add_str("tokenizer.ggml.model", "llama"));
    ok(w.add_str_array("tokenizer.ggml.tokens", &names));
    ok(w.add_f32_array("tokenizer.ggml.scores", &scores));
    ok(w.add_i32_array("tokenizer.ggml.token_type", &types));
    ok(w.add_u32("tokenizer.ggml.bos_token_id", 1));
    ok(w.add_u32("tokenizer.ggml.eos_token_id", 2));
    ok(w.add_u32("tokenizer.ggml.unknown_token_id", 0));
    ok(w.add_str(
        "tokenizer.chat_template",
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
    ));
    let mut n = 0u32;
    let mut tensor = |w: &mut GgufWriter, name: &str, dims: &[u64]| {
        let len = dims.iter().product::<u64>() as usize;
        let data = (0..len)
            .flat_map(|_| {
                n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (((n >> 16) % 200) as f32 / 1000.0 - 0.1).to_le_bytes()
            })
            .collect();
        w.add_tensor(name, GgmlType::F32, dims, data)
            .expect("the seed tensor is valid");
    };
    tensor(&mut w, "token_embd.weight", &[embd, vocab]);
    tensor(&mut w, "output_norm.weight", &[embd]);
    tensor(&mut w, "blk.0.attn_norm.weight", &[embd]);
    tensor(&mut w, "blk.0.attn_q.weight", &[embd, embd]);
    tensor(&mut w, "blk.0.attn_k.weight", &[embd, kv]);
    tensor(&mut w, "blk.0.attn_v.weight", &[embd, kv]);
    tensor(&mut w, "blk.0.attn_output.weight", &[embd, embd]);
    tensor(&mut w, "blk.0.ffn_norm.weight", &[embd]);
    tensor(&mut w, "blk.0.ffn_gate.weight", &[embd, ff]);
    tensor(&mut w, "blk.0.ffn_up.weight", &[embd, ff]);
    tensor(&mut w, "blk.0.ffn_down.weight", &[ff, embd]);
    w.to_bytes().expect("the seed model encodes")
}
