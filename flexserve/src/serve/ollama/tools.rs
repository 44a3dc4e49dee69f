//! Ollama's tool calling in `/api/chat`: `tools` (OpenAI's shape), assistant `tool_calls`
//! and `tool` results in the history, and `message.tool_calls` in the answer. The model
//! sees and writes its own tool format exactly as on the OpenAI route (`openai::tools`,
//! `tool_prompt`); only the request and answer shapes are Ollama's. Ollama has no
//! `tool_choice`: the model chooses between prose and calls (`auto`).

use crate::serve::error::ApiError;
use crate::serve::openai::tools::{Tools, answer_calls, parse_tools};
use inference_guest::tokenizer::ToolFormat;
use serde_json::{Map, Value, json};

/// The request's `tools`, parsed as OpenAI's with `tool_choice` `auto` (`None` when it
/// declares none).
pub fn request_tools(m: &Map<String, Value>) -> Result<Option<Tools>, ApiError> {
    let only: Map<String, Value> = m
        .get("tools")
        .map(|t| (String::from("tools"), t.clone()))
        .into_iter()
        .collect();
    parse_tools(&only)
}

/// OpenAI `tool_calls` entries as Ollama's: `{"function": {"name", "arguments": {…}}}`,
/// the arguments an object rather than JSON text.
fn ollama_calls(calls: Vec<Value>) -> Value {
    calls
        .into_iter()
        .map(|c| {
            let f = &c["function"];
            let args = f["arguments"]
                .as_str()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .unwrap_or_else(|| json!({}));
            json!({"function": {"name": f["name"], "arguments": args}})
        })
        .collect()
}

/// The whole answer `text` split into its prose and its calls (`None` when it made none).
pub fn split_answer(format: ToolFormat, tools: &Tools, text: &str) -> Option<(String, Value)> {
    let a = answer_calls(format, tools, text, "call")?;
    Some((a.content.unwrap_or_default(), ollama_calls(a.calls)))
}

/// A streamed answer's calls at its end, as Ollama's `tool_calls` (empty: none).
pub fn stream_calls(calls: Vec<Value>) -> Option<Value> {
    (!calls.is_empty()).then(|| ollama_calls(calls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_parse_as_openais_and_calls_come_back_in_ollamas_shape() {
        let m: Map<String, Value> = serde_json::from_str(
            r#"{"tools":[{"type":"function","function":{"name":"get_weather",
                "parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]}"#,
        )
        .unwrap();
        let tools = request_tools(&m).unwrap().unwrap();
        let (content, calls) = split_answer(
            ToolFormat::Hermes,
            &tools,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
        )
        .unwrap();
        assert_eq!(content, "");
        assert_eq!(
            calls,
            json!([{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}])
        );
        assert_eq!(split_answer(ToolFormat::Hermes, &tools, "Sunny."), None);
        assert_eq!(request_tools(&Map::new()).unwrap(), None);
        let bad: Map<String, Value> = serde_json::from_str(r#"{"tools":{}}"#).unwrap();
        assert!(request_tools(&bad).is_err());
    }
}
