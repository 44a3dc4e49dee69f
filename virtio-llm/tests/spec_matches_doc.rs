//! `docs/virtio-llm.md` is the spec other implementations follow: its tables of message
//! types, feature bits and status values, and the body sizes of fixed-size messages, must say
//! what the code does. Each check reads the table from the document and compares both ways,
//! so a constant added, renumbered or resized without the spec (or the reverse) fails here.

use std::collections::BTreeMap;
use virtio_llm::Message;
use virtio_llm::Status;
use virtio_llm::spec::feature;
use virtio_llm::wire::control::{self, Ack, StatsReply};
use virtio_llm::wire::request::{self, CancelRequest, PreemptRequest};
use virtio_llm::wire::response::{self, EndOfStream, StopReason, Timings};
use virtio_llm::wire::{echo, embed, kv_evict, memory, probe, sealed_session, tool_chat};

const SPEC: &str = include_str!("../../docs/virtio-llm.md");

/// The cells of every table row in the spec whose first cell satisfies `first`.
fn rows(first: impl Fn(&str) -> bool) -> Vec<Vec<String>> {
    SPEC.lines()
        .filter_map(|l| l.trim().strip_prefix('|')?.strip_suffix('|'))
        .map(|l| {
            l.split('|')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|cells| first(&cells[0]))
        .collect()
}

fn code_names<T: Ord + Copy + std::fmt::Debug>(
    pairs: &[(&'static str, T)],
) -> BTreeMap<&'static str, T> {
    let map: BTreeMap<_, _> = pairs.iter().copied().collect();
    assert_eq!(map.len(), pairs.len(), "a name is listed twice: {pairs:?}");
    map
}

#[test]
fn message_types_match_the_spec_table() {
    let code = code_names(&[
        ("LoadModelBegin", control::msg_type::LOAD_MODEL_BEGIN),
        ("LoadModelChunk", control::msg_type::LOAD_MODEL_CHUNK),
        ("LoadModelEnd", control::msg_type::LOAD_MODEL_END),
        ("UnloadModel", control::msg_type::UNLOAD_MODEL),
        ("OpenSession", control::msg_type::OPEN_SESSION),
        ("CloseSession", control::msg_type::CLOSE_SESSION),
        ("StatsRequest", control::msg_type::STATS_REQUEST),
        ("MemoryProbe", probe::msg_type::MEMORY_PROBE),
        ("LoadSealedBegin", control::msg_type::LOAD_SEALED_BEGIN),
        ("LoadSealedChunk", control::msg_type::LOAD_SEALED_CHUNK),
        ("Ack", control::msg_type::ACK),
        ("StatsReply", control::msg_type::STATS_REPLY),
        ("ProbeReply", probe::msg_type::PROBE_REPLY),
        ("GetStatement", sealed_session::msg_type::GET_STATEMENT),
        ("StatementReply", sealed_session::msg_type::STATEMENT_REPLY),
        ("GetToolStyle", tool_chat::msg_type::GET_TOOL_STYLE),
        ("ToolStyleReply", tool_chat::msg_type::TOOL_STYLE_REPLY),
        ("KvEvict", kv_evict::msg_type::KV_EVICT),
        ("KvWant", kv_evict::msg_type::KV_WANT),
        ("KvRestore", kv_evict::msg_type::KV_RESTORE),
        ("KvBlock", kv_evict::msg_type::KV_BLOCK),
        ("KvWanted", kv_evict::msg_type::KV_WANTED),
        ("GenerateRequest", request::msg_type::GENERATE),
        ("CancelRequest", request::msg_type::CANCEL),
        ("PreemptRequest", request::msg_type::PREEMPT),
        ("EchoRequest", echo::msg_type::ECHO_REQUEST),
        ("EmbedRequest", embed::msg_type::EMBED),
        ("Embedding", embed::msg_type::EMBEDDING),
        ("Tokens", response::msg_type::TOKENS),
        ("Error", response::msg_type::ERROR),
        ("EndOfStream", response::msg_type::END_OF_STREAM),
        ("EchoReply", echo::msg_type::ECHO_REPLY),
        ("BudgetChange", memory::msg_type::BUDGET_CHANGE),
        ("RelinquishReport", memory::msg_type::RELINQUISH_REPORT),
    ]);
    let code: BTreeMap<_, _> = code.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(
        hex_rows(false),
        code,
        "docs/virtio-llm.md message types vs the wire constants"
    );
}

/// The spec's rows with a hex first cell: message types (plain names) or, with `records`,
/// the options trailer's record types (names in backticks, as the table writes them).
fn hex_rows(records: bool) -> BTreeMap<String, u16> {
    rows(|c| c.starts_with("0x"))
        .into_iter()
        .filter(|r| r[1].starts_with('`') == records)
        .map(|r| {
            let value = u16::from_str_radix(&r[0][2..], 16).expect("a hex type");
            (r[1].trim_matches('`').to_string(), value)
        })
        .collect()
}

#[test]
fn option_record_types_match_the_spec_table() {
    use virtio_llm::wire::options::record;
    let code = code_names(&[
        ("PENALTIES", record::PENALTIES),
        ("LOGIT_BIAS", record::LOGIT_BIAS),
        ("LOGPROBS", record::LOGPROBS),
        ("RESPONSE_FORMAT", record::RESPONSE_FORMAT),
        ("TOOLS", record::TOOLS),
        ("TOOL_CHAT", record::TOOL_CHAT),
    ]);
    let code: BTreeMap<_, _> = code.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(
        hex_rows(true),
        code,
        "docs/virtio-llm.md option records vs the wire constants"
    );
}

#[test]
fn feature_bits_match_the_spec_table() {
    let code = code_names(&[
        ("VIRTIO_LLM_F_TEXT_PROMPT", feature::TEXT_PROMPT),
        ("VIRTIO_LLM_F_MEMORY", feature::MEMORY),
        ("VIRTIO_LLM_F_DIAGNOSTICS", feature::DIAGNOSTICS),
        ("VIRTIO_LLM_F_PREEMPT", feature::PREEMPT),
        ("VIRTIO_LLM_F_SEALED", feature::SEALED),
        ("VIRTIO_LLM_F_GUEST_TEXT", feature::GUEST_TEXT),
        ("VIRTIO_LLM_F_SEALED_SESSION", feature::SEALED_SESSION),
        ("VIRTIO_LLM_F_KV_REUSE", feature::KV_REUSE),
        ("VIRTIO_LLM_F_OPTIONS", feature::OPTIONS),
        ("VIRTIO_LLM_F_EMBED", feature::EMBED),
        ("VIRTIO_LLM_F_GUEST_TOOLS", feature::GUEST_TOOLS),
        ("VIRTIO_LLM_F_KV_EVICT", feature::KV_EVICT),
        ("VIRTIO_LLM_F_BATCH", feature::BATCH),
        ("VIRTIO_F_VERSION_1", feature::VERSION_1),
        ("VIRTIO_F_ACCESS_PLATFORM", feature::ACCESS_PLATFORM),
    ]);
    let spec: BTreeMap<_, _> = rows(|c| c.parse::<u32>().is_ok())
        .into_iter()
        .filter(|r| r[1].starts_with("`VIRTIO_"))
        .map(|r| {
            (
                r[1].trim_matches('`').to_string(),
                r[0].parse::<u32>().unwrap(),
            )
        })
        // Standard virtio bits the device offers but this crate takes from virtio-bindings.
        .filter(|(name, _)| name != "VIRTIO_F_EVENT_IDX")
        .collect();
    let code: BTreeMap<_, _> = code.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    assert_eq!(
        spec, code,
        "docs/virtio-llm.md feature bits vs spec::feature"
    );
}

#[test]
fn status_values_match_the_spec_table() {
    let spec: Vec<(u16, String)> = rows(|c| c.parse::<u16>().is_ok())
        .into_iter()
        .filter(|r| r.len() == 3 && Status::ALL.iter().any(|s| format!("{s:?}") == r[1]))
        .map(|r| (r[0].parse().unwrap(), r[1].clone()))
        .collect();
    let code: Vec<(u16, String)> = Status::ALL
        .iter()
        .map(|s| (s.to_u16(), format!("{s:?}")))
        .collect();
    assert_eq!(spec, code, "docs/virtio-llm.md status values vs Status");
}

/// The size the spec gives `name`'s body, from its heading `**Name** (body N...`.
fn spec_body_bytes(name: &str) -> usize {
    let heading = format!("**{name}** (body ");
    let at = SPEC
        .find(&heading)
        .unwrap_or_else(|| panic!("no {heading:?} in the spec"));
    let digits: String = SPEC[at + heading.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("a body size")
}

fn body_bytes<'a>(m: &impl Message<'a>) -> usize {
    let mut out = Vec::new();
    m.encode(&mut out).expect("encodes");
    out.len() - 8
}

#[test]
fn fixed_size_bodies_match_the_spec() {
    let cases = [
        (
            "Ack",
            body_bytes(&Ack {
                command: control::msg_type::OPEN_SESSION,
                status: Status::Ok,
                object_id: 1,
            }),
        ),
        ("StatsReply", body_bytes(&StatsReply::default())),
        (
            "GetToolStyle",
            body_bytes(&tool_chat::GetToolStyle { model_id: 1 }),
        ),
        (
            "ToolStyleReply",
            body_bytes(&tool_chat::ToolStyleReply {
                model_id: 1,
                status: Status::Ok,
                style: None,
            }),
        ),
        (
            "KvEvict",
            body_bytes(&kv_evict::KvEvict {
                handle: 0,
                block: 0,
            }),
        ),
        (
            "KvWant",
            body_bytes(&kv_evict::KvWant {
                request_id: 1,
                flags: 0,
            }),
        ),
        (
            "KvRestore",
            body_bytes(&kv_evict::KvRestore {
                handle: 1,
                block: 0,
                data: &[],
            }),
        ),
        (
            "KvBlock",
            body_bytes(&kv_evict::KvBlock {
                status: Status::NoSuchSession,
                handle: 0,
                block: 0,
                n_blocks: 0,
                epoch: 0,
                data: Vec::new(),
            }),
        ),
        (
            "KvWanted",
            body_bytes(&kv_evict::KvWanted {
                request_id: 1,
                handle: 0,
                choice: kv_evict::KvChoice::None,
                n_blocks: 0,
                tokens: 0,
                restore_us: 0,
                recompute_us: 0,
            }),
        ),
        (
            "CancelRequest",
            body_bytes(&CancelRequest { request_id: 1 }),
        ),
        (
            "PreemptRequest",
            body_bytes(&PreemptRequest { request_id: 1 }),
        ),
        (
            "EndOfStream",
            body_bytes(&EndOfStream {
                request_id: 1,
                reason: StopReason::MaxTokens,
                prompt_tokens: 1,
                generated_tokens: 1,
                cached_tokens: 0,
                timings: Timings {
                    prompt_ns: 1,
                    generation_ns: 1,
                },
            }),
        ),
    ];
    for (name, encoded) in cases {
        assert_eq!(
            spec_body_bytes(name),
            encoded,
            "{name}: docs/virtio-llm.md body size vs its encoding"
        );
    }
}

#[test]
fn load_sealed_begin_matches_the_spec() {
    // The fixed part before the owner keys and the header.
    let header = [1u8];
    let begin = control::LoadSealedBegin {
        model_id: 1,
        flags: 0,
        accepted_owners: &[],
        header: &header,
    };
    assert_eq!(spec_body_bytes("LoadSealedBegin"), body_bytes(&begin) - 1);
    let owners = [[2u8; 32]; virtio_llm::spec::MAX_ACCEPTED_OWNERS];
    let full = control::LoadSealedBegin {
        accepted_owners: &owners,
        ..begin
    };
    assert_eq!(body_bytes(&full), body_bytes(&begin) + 32 * owners.len());
    assert!(SPEC.contains(&format!(
        "`n_owners` k, 0..={}",
        virtio_llm::spec::MAX_ACCEPTED_OWNERS
    )));
    // The flags table: bit 0 is the strawman, bit 1 resume, the rest reserved.
    let flags: Vec<_> = rows(|c| c == "0" || c == "1" || c == "2..31")
        .into_iter()
        .filter(|r| r[1] == "strawman" || r[1] == "resume" || r[1] == "—")
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(flags, ["0", "1", "2..31"]);
    assert_eq!(virtio_llm::spec::sealed_flag::STRAWMAN, 1 << 0);
    assert_eq!(virtio_llm::spec::sealed_flag::RESUME, 1 << 1);
    assert_eq!(virtio_llm::spec::sealed_flag::DEFINED, 0b11);
}
