//! A guest taking a hostile plain model: the host controls every byte of the GGUF file
//! (docs/threat-model.md, "Inputs are hostile both ways"). The input goes the way a model
//! goes in the guest: parsed (`Gguf::parse`), its tokenizer built and used on text with
//! special markers, the chat template it names detected and rendered, its weights taken
//! (`Model::from_gguf`) and, when they load, a few tokens generated.
//!
//! Beyond "never panics": every id the tokenizer produces is inside its vocabulary, and a
//! generation never yields an id outside the model's.
#![no_main]

use inference_guest::generate::{Generation, generate};
use inference_guest::gguf::Gguf;
use inference_guest::model::Model;
use inference_guest::parallel::SingleThread;
use inference_guest::quant::Kernels;
use inference_guest::sampler::{Sampler, SamplerConfig};
use inference_guest::tokenizer::{ChatMessage, ChatTemplate, Tokenizer, ToolCall, ToolSpec};
use libfuzzer_sys::fuzz_target;

/// Text with what tokenizers treat specially: markers, multi-byte UTF-8, digits, spaces.
const TEXT: &str = "Hello,  world!\n<|im_start|>user <s>[INST] 1+1=2 ✓ naïve 日本 \u{0}";

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data) else {
        return;
    };
    if let Ok(t) = Tokenizer::from_gguf(&g) {
        tokenize(&g, &t);
    }
    let Ok(model) = Model::from_gguf(&g, Kernels::scalar()) else {
        return;
    };
    let n_vocab = model.cfg.n_vocab;
    let mut session = model.new_session(8);
    let mut sampler = Sampler::new(SamplerConfig::greedy(), n_vocab);
    let prompt = [0, 1];
    let req = Generation {
        prompt: &prompt,
        max_tokens: 2,
        stop_at_eog: false,
    };
    let mut on_token = |id: u32| {
        assert!((id as usize) < n_vocab, "generated id {id} of {n_vocab}");
        true
    };
    let _ = generate(
        &model,
        &mut session,
        &mut sampler,
        &SingleThread,
        &req,
        &|_| false,
        &mut on_token,
    );
});

fn tokenize(g: &Gguf<'_>, t: &Tokenizer) {
    let in_vocab = |ids: &[u32]| ids.iter().all(|&id| (id as usize) < t.n_vocab());
    for parse_special in [false, true] {
        let ids = t.encode(TEXT, true, parse_special);
        assert!(in_vocab(&ids), "an id outside the vocabulary");
        let _ = t.decode(&ids);
    }
    let template = ChatTemplate::detect(g.get_str("tokenizer.chat_template").ok().flatten());
    let mut messages = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", TEXT),
    ];
    let ids = t.encode_chat(&messages, template);
    assert!(in_vocab(&ids), "a chat id outside the vocabulary");
    // The same conversation with a tool and an earlier call, in families with a tool format.
    messages[0].tool_calls = vec![ToolCall {
        name: "f".into(),
        arguments: TEXT.into(),
    }];
    let tool = ToolSpec {
        name: "f".into(),
        json: TEXT.into(),
        json_indented: TEXT.into(),
    };
    if let Ok(ids) = t.encode_chat_with_tools(&messages, &[tool], template) {
        assert!(in_vocab(&ids), "a tool chat id outside the vocabulary");
    }
}
