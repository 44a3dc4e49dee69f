//! `flexserve chat`: a multi-turn conversation with the daemon's model from a terminal (or
//! a pipe), sealed to the guest by default with the proxy's client, so the daemon's host
//! reads neither the questions nor the answers. The answer streams to stdout as it comes;
//! the history is kept and sent whole with each message (the daemon keeps no state).

use crate::cli::ChatArgs;
use crate::proxy::client::{Client, ClientError, Reply};
use crate::proxy::trust::TrustError;
use crate::proxy::unseal::StreamItem;
use crate::proxy::upstream::Upstream;
use crate::serve::openai::Endpoint;
use serde_json::{Value, json};
use std::io::{BufRead, IsTerminal, Write};

/// Why the chat could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("cannot start the chat's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot read the next message: {0}")]
    Read(std::io::Error),
    #[error("cannot write the answer: {0}")]
    Write(std::io::Error),
}

/// What one line of input asks for.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    Quit,
    Reset,
    Model(&'a str),
    Empty,
    Message(&'a str),
    Unknown(&'a str),
}

fn classify(line: &str) -> Line<'_> {
    let line = line.trim_end_matches(['\n', '\r']);
    match line.trim() {
        "" => Line::Empty,
        "/quit" | "/exit" => Line::Quit,
        "/reset" => Line::Reset,
        cmd if cmd.starts_with("/model ") => Line::Model(cmd["/model ".len()..].trim()),
        cmd if cmd.starts_with('/') && !cmd.starts_with("//") => Line::Unknown(cmd),
        // `//text` sends `/text`.
        _ => Line::Message(
            line.strip_prefix('/')
                .filter(|l| l.starts_with('/'))
                .unwrap_or(line),
        ),
    }
}

/// The conversation so far and the options each request carries.
struct Conversation {
    model: Option<String>,
    system: Option<String>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    history: Vec<Value>,
}

impl Conversation {
    fn body(&self) -> Vec<u8> {
        let mut messages = Vec::new();
        if let Some(s) = &self.system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.extend(self.history.iter().cloned());
        let mut body = json!({"messages": messages, "stream": true});
        if let Some(m) = &self.model {
            body["model"] = m.clone().into();
        }
        if let Some(t) = self.temperature {
            body["temperature"] = t.into();
        }
        if let Some(n) = self.max_tokens {
            body["max_tokens"] = n.into();
        }
        body.to_string().into_bytes()
    }
}

/// The error message of an OpenAI error object.
fn error_message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .map_or_else(|| v.to_string(), str::to_string)
}

/// Sends the conversation; streams the answer to `out`. Returns the answer's text, or the
/// error to show (the turn is then dropped from the history).
async fn turn(
    client: &Client,
    conv: &Conversation,
    out: &mut impl Write,
) -> Result<Result<String, String>, ChatError> {
    let (reply, _) = match client.generate(Endpoint::Chat, &conv.body()).await {
        Ok(r) => r,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let mut stream = match reply {
        Reply::Stream(s) => s,
        Reply::Whole { text, .. } => {
            writeln!(out, "{text}").map_err(ChatError::Write)?;
            return Ok(Ok(text));
        }
        Reply::Refused { status, body } => {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Ok(Err(format!(
                "the daemon answered {status}: {}",
                error_message(&v)
            )));
        }
    };
    let mut text = String::new();
    let outcome = loop {
        match stream.next().await {
            Some(Ok(StreamItem::Chunk(_, t))) => {
                write!(out, "{t}")
                    .and_then(|()| out.flush())
                    .map_err(ChatError::Write)?;
                text.push_str(&t);
            }
            Some(Ok(StreamItem::Done)) => break Ok(text),
            Some(Ok(StreamItem::Error(v))) => break Err(error_message(&v)),
            Some(Err(e)) => break Err(ClientError::to_string(&e)),
            None => break Err("the answer ended without its end".into()),
        }
    };
    writeln!(out).map_err(ChatError::Write)?;
    Ok(outcome)
}

/// Runs the conversation: lines from `input`, answers to `out`, notes and errors to
/// `notes`. Ends at `/quit` or the end of the input.
pub async fn converse(
    client: &Client,
    conv: &mut ConversationOptions,
    input: &mut impl BufRead,
    out: &mut impl Write,
    notes: &mut impl Write,
    prompt: bool,
) -> Result<(), ChatError> {
    let mut conv = Conversation {
        model: conv.model.take(),
        system: conv.system.take(),
        temperature: conv.temperature,
        max_tokens: conv.max_tokens,
        history: Vec::new(),
    };
    let mut line = String::new();
    loop {
        if prompt {
            let _ = write!(notes, "> ").and_then(|()| notes.flush());
        }
        line.clear();
        if input.read_line(&mut line).map_err(ChatError::Read)? == 0 {
            return Ok(());
        }
        let note = |notes: &mut dyn Write, text: &str| {
            let _ = writeln!(notes, "{text}");
        };
        match classify(&line) {
            Line::Quit => return Ok(()),
            Line::Empty => {}
            Line::Reset => {
                conv.history.clear();
                note(notes, "(history cleared)");
            }
            Line::Model(name) => {
                conv.model = Some(name.to_string());
                note(notes, &format!("(model: {name})"));
            }
            Line::Unknown(cmd) => note(
                notes,
                &format!("unknown command {cmd}: /reset, /model NAME, /quit (//text sends /text)"),
            ),
            Line::Message(text) => {
                conv.history.push(json!({"role": "user", "content": text}));
                match turn(client, &conv, out).await? {
                    Ok(answer) => conv
                        .history
                        .push(json!({"role": "assistant", "content": answer})),
                    Err(e) => {
                        conv.history.pop();
                        note(notes, &format!("flexserve: error: {e}"));
                    }
                }
            }
        }
    }
}

/// The per-request options of a conversation.
#[derive(Clone, Debug, Default)]
pub struct ConversationOptions {
    pub model: Option<String>,
    pub system: Option<String>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
}

/// `flexserve chat`.
pub fn run(args: &ChatArgs) -> Result<(), ChatError> {
    let upstream = args
        .url
        .clone()
        .unwrap_or_else(|| Upstream::Unix(args.socket.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ChatError::Runtime)?;
    let client = runtime.block_on(Client::connect(upstream, !args.plain, args.guest_key))?;
    match &client.guest {
        Some(g) => {
            for line in g.notes(args.guest_key.is_some()) {
                eprintln!("[flexserve] {line}");
            }
        }
        None => eprintln!("[flexserve] warning: --plain: the daemon's host can read this chat"),
    }
    let mut options = ConversationOptions {
        model: args.model.clone(),
        system: args.system.clone(),
        temperature: args.temperature,
        max_tokens: args.max_tokens,
    };
    let stdin = std::io::stdin();
    let prompt = stdin.is_terminal();
    runtime.block_on(converse(
        &client,
        &mut options,
        &mut stdin.lock(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
        prompt,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_commands_or_messages() {
        assert_eq!(classify("/quit\n"), Line::Quit);
        assert_eq!(classify("/reset"), Line::Reset);
        assert_eq!(classify("/model tiny.Q8_0\n"), Line::Model("tiny.Q8_0"));
        assert_eq!(classify("  \n"), Line::Empty);
        assert_eq!(classify("hello\n"), Line::Message("hello"));
        assert_eq!(classify("//etc/hosts"), Line::Message("/etc/hosts"));
        assert_eq!(classify("/nope"), Line::Unknown("/nope"));
    }

    #[test]
    fn the_body_carries_system_history_and_options() {
        let conv = Conversation {
            model: Some("m".into()),
            system: Some("Be brief.".into()),
            temperature: Some(0.0),
            max_tokens: Some(8),
            history: vec![json!({"role": "user", "content": "hi"})],
        };
        let v: Value = serde_json::from_slice(&conv.body()).unwrap();
        assert_eq!(v["messages"][0]["role"], "system");
        assert_eq!(v["messages"][1]["content"], "hi");
        assert_eq!(
            (v["model"].as_str(), v["max_tokens"].as_u64()),
            (Some("m"), Some(8))
        );
        assert_eq!(v["stream"], true);
    }
}
