use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::spec::MAX_OPTION_RECORD_BYTES;
use crate::wire::control::{ControlCommand, ControlReply};
use crate::wire::options::GenerateOptions;
use crate::wire::request::{GenerateRequest, Prompt, RequestMsg, SamplingParams};
use crate::wire::testutil::{assert_every_truncation_fails, with_trailing_byte};

fn turn(role: ChatRole, content: &str) -> ChatTurn {
    ChatTurn {
        role,
        content: content.into(),
    }
}

fn chat() -> ToolChat {
    ToolChat {
        tools: vec![ToolDef {
            name: "get_weather".into(),
            json: r#"{"type": "function", "function": {"name": "get_weather"}}"#.into(),
            json_indented: "{\n    \"type\": \"function\"\n}".into(),
        }],
        calls: vec![
            TurnCall {
                turn: 1,
                name: "get_weather".into(),
                arguments: r#"{"city": "Paris"}"#.into(),
            },
            TurnCall {
                turn: 1,
                name: "get_weather".into(),
                arguments: r#"{"city": "Oslo"}"#.into(),
            },
        ],
    }
}

fn request(tool_chat: ToolChat) -> GenerateRequest {
    GenerateRequest {
        request_id: 7,
        session_id: 1,
        sampling: SamplingParams::greedy(16),
        prompt: Prompt::Chat(vec![
            turn(ChatRole::User, "Weather in Paris and Oslo?"),
            turn(ChatRole::Assistant, ""),
            turn(ChatRole::Tool, "sunny"),
            turn(ChatRole::Tool, "rain"),
        ]),
        options: GenerateOptions {
            tool_chat: Some(tool_chat),
            ..GenerateOptions::default()
        },
    }
}

fn encode(req: &GenerateRequest) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    RequestMsg::Generate(req.clone())
        .encode(&mut out)
        .map(|()| out)
}

#[test]
fn tool_chat_round_trips_and_truncations_fail() {
    let req = request(chat());
    let buf = encode(&req).unwrap();
    assert_eq!(RequestMsg::decode(&buf).unwrap(), RequestMsg::Generate(req));
    assert_every_truncation_fails(&buf, |b| RequestMsg::decode(b).is_err());
    assert!(RequestMsg::decode(&with_trailing_byte(&buf)).is_err());
    // Definitions alone (no history yet) and calls alone (tools dropped later) both go.
    for c in [
        ToolChat {
            calls: vec![],
            ..chat()
        },
        ToolChat {
            tools: vec![],
            ..chat()
        },
    ] {
        let req = request(c);
        let buf = encode(&req).unwrap();
        assert_eq!(RequestMsg::decode(&buf).unwrap(), RequestMsg::Generate(req));
    }
}

#[test]
fn malformed_tool_chats_are_refused() {
    let name = |n: usize| String::from_utf8(vec![b'f'; n]).unwrap();
    let mut bad: Vec<GenerateRequest> = Vec::new();
    bad.push(request(ToolChat::default()));
    let mut c = chat();
    c.tools[0].name = String::new();
    bad.push(request(c));
    let mut c = chat();
    c.calls[0].name = name(MAX_TOOL_NAME_BYTES + 1);
    bad.push(request(c));
    // Out of turn order, on a user turn, past the last turn.
    for (first, second) in [(1, 0), (0, 0), (9, 9)] {
        let mut c = chat();
        c.calls[0].turn = first;
        c.calls[1].turn = second;
        bad.push(request(c));
    }
    let mut c = chat();
    c.tools = (0..=MAX_TOOL_DEFS).map(|_| c.tools[0].clone()).collect();
    bad.push(request(c));
    let mut c = chat();
    c.tools[0].json = name(MAX_OPTION_RECORD_BYTES);
    bad.push(request(c));
    // Tools belong to a chat prompt.
    let mut r = request(chat());
    r.prompt = Prompt::Text("hi".into());
    bad.push(r);
    for r in bad {
        assert!(encode(&r).is_err(), "{:?}", r.options.tool_chat);
    }
}

#[test]
fn forged_lengths_and_bytes_are_refused_on_decode() {
    let buf = encode(&request(chat())).unwrap();
    let record = buf.len() - chat().wire_len();
    // A tool count beyond what follows, then one beyond the limit.
    for count in [2u16, MAX_TOOL_DEFS as u16 + 1] {
        let mut b = buf.clone();
        b[record..record + 2].copy_from_slice(&count.to_le_bytes());
        assert!(RequestMsg::decode(&b).is_err(), "{count}");
    }
    // A non-zero reserved field, and a name that is not UTF-8.
    let mut b = buf.clone();
    b[record + 6] = 1;
    assert!(RequestMsg::decode(&b).is_err());
    let mut b = buf.clone();
    b[record + 4 + 12] = 0xff;
    assert!(matches!(
        RequestMsg::decode(&b),
        Err(WireError::InvalidUtf8 { field: "tool name" })
    ));
}

#[test]
fn tool_role_round_trips_and_unknown_roles_fail() {
    let req = request(chat());
    let buf = encode(&req).unwrap();
    let decoded = RequestMsg::decode(&buf).unwrap();
    let RequestMsg::Generate(GenerateRequest {
        prompt: Prompt::Chat(turns),
        ..
    }) = decoded
    else {
        panic!("not a chat");
    };
    assert_eq!(turns[2].role.as_str(), "tool");
    assert!(ChatRole::try_from(4).is_err());
}

#[test]
fn tool_style_messages_round_trip() {
    let cmd = ControlCommand::GetToolStyle(GetToolStyle { model_id: 3 });
    let mut buf = Vec::new();
    cmd.encode(&mut buf).unwrap();
    assert_eq!(ControlCommand::decode(&buf).unwrap(), cmd);
    for (status, style) in [
        (Status::Ok, Some(CallStyle::Hermes)),
        (Status::Ok, Some(CallStyle::Llama3Json)),
        (Status::Ok, None),
        (Status::NoSuchModel, None),
    ] {
        let reply = ControlReply::ToolStyle(ToolStyleReply {
            model_id: 3,
            status,
            style,
        });
        let mut buf = Vec::new();
        reply.encode(&mut buf).unwrap();
        assert_eq!(ControlReply::decode(&buf).unwrap(), reply);
        assert_every_truncation_fails(&buf, |b| ControlReply::decode(b).is_err());
    }
    // A reply never leaves the style to the template, nor names one with an error.
    for (status, style) in [
        (Status::Ok, Some(CallStyle::Template)),
        (Status::NoSuchModel, Some(CallStyle::Hermes)),
    ] {
        let reply = ControlReply::ToolStyle(ToolStyleReply {
            model_id: 3,
            status,
            style,
        });
        assert!(reply.encode(&mut Vec::new()).is_err(), "{reply:?}");
    }
}
