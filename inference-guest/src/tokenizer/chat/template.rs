//! The chat template families llama.cpp renders without Jinja (`llm_chat_template` in its
//! `src/llama-chat.cpp`), and their names.

/// A chat template family: how a conversation becomes one prompt.
///
/// Each variant renders as llama.cpp's `llm_chat_apply_template` does for the family of the
/// same name (see [`ChatTemplate::name`]); [`ChatTemplate::Plain`] is this crate's fallback
/// for a model whose template no family matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatTemplate {
    /// `<|im_start|>role\n…<|im_end|>\n` (Qwen, SmolLM2, OpenHermes, …).
    ChatMl,
    /// `[INST] … [/INST]` without a system block: a system message is the first user
    /// message's first line.
    Llama2,
    /// Llama 2 with a `<<SYS>>` block.
    Llama2Sys,
    /// Llama 2 with a `<<SYS>>` block and `<s>` before every later `[INST]`.
    Llama2SysBos,
    /// Llama 2 with a `<<SYS>>` block and every message trimmed.
    Llama2SysStrip,
    /// Mistral's v1 template: ` [INST] … [/INST]`.
    MistralV1,
    /// Mistral's v3 template: `[INST] …[/INST]`, assistant messages trimmed.
    MistralV3,
    /// Mistral's v3 "tekken" template: no spaces around the markers.
    MistralV3Tekken,
    /// Mistral's v7 template: `[SYSTEM_PROMPT] …[/SYSTEM_PROMPT][INST] …[/INST]`.
    MistralV7,
    /// Mistral's v7 "tekken" template: v7 without the spaces after the markers.
    MistralV7Tekken,
    /// `<|role|>\n…<|end|>\n` (Phi-3).
    Phi3,
    /// `<|im_start|>role<|im_sep|>…<|im_end|>` (Phi-4).
    Phi4,
    /// `<|role|>\n…\n` (Falcon 3).
    Falcon3,
    /// `<|role|>\n…<|endoftext|>\n`.
    Zephyr,
    /// `role\n…</s>\n` with `<s>` before every later message (AlphaMonarch).
    Monarch,
    /// `<start_of_turn>role\n…<end_of_turn>\n`, system messages folded into the next user turn.
    Gemma,
    /// `Human: …\n\nAssistant: </s>` (Orion).
    Orion,
    /// `GPT4 Correct User: …<|end_of_turn|>` (OpenChat 3.5).
    OpenChat,
    /// `USER: …\nASSISTANT: …</s>\n`.
    Vicuna,
    /// Vicuna with a `SYSTEM: ` line.
    VicunaOrca,
    /// `### Instruction:\n…\n### Response:\n` (DeepSeek Coder).
    DeepSeek,
    /// `User: …\n\nAssistant: …<｜end▁of▁sentence｜>` (DeepSeek V2).
    DeepSeek2,
    /// `<｜User｜>…<｜Assistant｜>…` (DeepSeek V3).
    DeepSeek3,
    /// The contents only (DeepSeek OCR).
    DeepSeekOcr,
    /// `<|START_OF_TURN_TOKEN|><|USER_TOKEN|>…<|END_OF_TURN_TOKEN|>` (Command R).
    CommandR,
    /// `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>` (Llama 3).
    Llama3,
    /// `[gMASK]sop<|role|>\n …` (ChatGLM3).
    ChatGlm3,
    /// `[gMASK]<sop><|role|>\n…` (ChatGLM4).
    ChatGlm4,
    /// `<|role|>\n…` (GLM-Edge).
    GlmEdge,
    /// `<用户>…<AI>…` (MiniCPM).
    MiniCpm,
    /// `[|role|]…[|endofturn|]\n` (EXAONE 3).
    Exaone3,
    /// EXAONE 4: EXAONE 3 with a tool role.
    Exaone4,
    /// `<|role|>\n…<|endofturn|>\n` (EXAONE MoE).
    ExaoneMoe,
    /// `User: …\n\nAssistant:` (RWKV World).
    RwkvWorld,
    /// `<|start_of_role|>role<|end_of_role|>…<|end_of_text|>\n` (Granite 3.x).
    Granite3,
    /// Granite 4.0.
    Granite40,
    /// Granite 4.1.
    Granite41,
    /// `<s>…<|message_sep|>user<|role_sep|>…` (GigaChat).
    GigaChat,
    /// `<|role_start|>role<|role_end|>…<|turn_end|>` (Megrez).
    Megrez,
    /// ` Пользователь: …\n\n Ассистент:[SEP]` (YandexGPT).
    Yandex,
    /// `<role>HUMAN</role>…` (Ling).
    Bailing,
    /// Bailing with `<think>` after the generation prompt.
    BailingThink,
    /// `<role>HUMAN</role>…<|role_end|>` (Ling 2.0).
    Bailing2,
    /// `<|header_start|>role<|header_end|>\n\n…<|eot|>` (Llama 4).
    Llama4,
    /// `<|im_start|>User: …<end_of_utterance>\n` (SmolVLM).
    SmolVlm,
    /// `<|startoftext|>…<|extra_0|>` (Hunyuan A13B).
    HunyuanMoe,
    /// `<|start|>role<|message|>…<|end|>` (gpt-oss).
    GptOss,
    /// `<｜hy_User｜>…<｜hy_Assistant｜>` (Hunyuan 4B).
    HunyuanDense,
    /// `<｜hy_begin▁of▁sentence｜>…<｜hy_User｜>` (HunyuanOCR, HunyuanVL).
    HunyuanVl,
    /// `<|im_user|>user<|im_middle|>…<|im_end|>` (Kimi K2).
    KimiK2,
    /// `<seed:bos>role\n…<seed:eos>` (Seed-OSS).
    SeedOss,
    /// `Human: …<|separator|>\n\n` (Grok 2).
    Grok2,
    /// `[unused9]用户：…[unused10]` (openPangu Embedded).
    PanguEmbedded,
    /// `<|begin|>role<|content|>…<|end|>` (Solar Open).
    SolarOpen,
    /// `<|userprompt|>…<|endofuserprompt|>` (dots.llm1; llama.cpp detects it but has no
    /// name for it).
    Dots1,
    /// No recognised template: the contents one per line, all plain text.
    Plain,
}

/// llama.cpp's names (`LLM_CHAT_TEMPLATES`): a template string that is exactly one of them
/// selects that family, as in llama.cpp.
const NAMES: &[(&str, ChatTemplate)] = &[
    ("chatml", ChatTemplate::ChatMl),
    ("llama2", ChatTemplate::Llama2),
    ("llama2-sys", ChatTemplate::Llama2Sys),
    ("llama2-sys-bos", ChatTemplate::Llama2SysBos),
    ("llama2-sys-strip", ChatTemplate::Llama2SysStrip),
    ("mistral-v1", ChatTemplate::MistralV1),
    ("mistral-v3", ChatTemplate::MistralV3),
    ("mistral-v3-tekken", ChatTemplate::MistralV3Tekken),
    ("mistral-v7", ChatTemplate::MistralV7),
    ("mistral-v7-tekken", ChatTemplate::MistralV7Tekken),
    ("phi3", ChatTemplate::Phi3),
    ("phi4", ChatTemplate::Phi4),
    ("falcon3", ChatTemplate::Falcon3),
    ("zephyr", ChatTemplate::Zephyr),
    ("monarch", ChatTemplate::Monarch),
    ("gemma", ChatTemplate::Gemma),
    ("orion", ChatTemplate::Orion),
    ("openchat", ChatTemplate::OpenChat),
    ("vicuna", ChatTemplate::Vicuna),
    ("vicuna-orca", ChatTemplate::VicunaOrca),
    ("deepseek", ChatTemplate::DeepSeek),
    ("deepseek2", ChatTemplate::DeepSeek2),
    ("deepseek3", ChatTemplate::DeepSeek3),
    ("deepseek-ocr", ChatTemplate::DeepSeekOcr),
    ("command-r", ChatTemplate::CommandR),
    ("llama3", ChatTemplate::Llama3),
    ("chatglm3", ChatTemplate::ChatGlm3),
    ("chatglm4", ChatTemplate::ChatGlm4),
    ("glmedge", ChatTemplate::GlmEdge),
    ("minicpm", ChatTemplate::MiniCpm),
    ("exaone3", ChatTemplate::Exaone3),
    ("exaone4", ChatTemplate::Exaone4),
    ("exaone-moe", ChatTemplate::ExaoneMoe),
    ("rwkv-world", ChatTemplate::RwkvWorld),
    ("granite", ChatTemplate::Granite3),
    ("granite-4.0", ChatTemplate::Granite40),
    ("granite-4.1", ChatTemplate::Granite41),
    ("gigachat", ChatTemplate::GigaChat),
    ("megrez", ChatTemplate::Megrez),
    ("yandex", ChatTemplate::Yandex),
    ("bailing", ChatTemplate::Bailing),
    ("bailing-think", ChatTemplate::BailingThink),
    ("bailing2", ChatTemplate::Bailing2),
    ("llama4", ChatTemplate::Llama4),
    ("smolvlm", ChatTemplate::SmolVlm),
    ("hunyuan-moe", ChatTemplate::HunyuanMoe),
    ("gpt-oss", ChatTemplate::GptOss),
    ("hunyuan-dense", ChatTemplate::HunyuanDense),
    ("hunyuan-vl", ChatTemplate::HunyuanVl),
    ("kimi-k2", ChatTemplate::KimiK2),
    ("seed_oss", ChatTemplate::SeedOss),
    ("grok-2", ChatTemplate::Grok2),
    ("pangu-embedded", ChatTemplate::PanguEmbedded),
    ("solar-open", ChatTemplate::SolarOpen),
];

impl ChatTemplate {
    /// Every family llama.cpp names, in its table's order.
    pub fn named() -> impl Iterator<Item = ChatTemplate> {
        NAMES.iter().map(|&(_, t)| t)
    }

    /// The family llama.cpp calls `name` (`llama_chat_apply_template`'s built-in names).
    pub fn from_name(name: &str) -> Option<ChatTemplate> {
        NAMES.iter().find(|&&(n, _)| n == name).map(|&(_, t)| t)
    }

    /// llama.cpp's name for the family; `dots1` and `plain` for the two it has no name for.
    pub fn name(self) -> &'static str {
        match self {
            ChatTemplate::Dots1 => "dots1",
            ChatTemplate::Plain => "plain",
            t => NAMES
                .iter()
                .find(|&&(_, n)| n == t)
                .map_or("plain", |&(name, _)| name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for t in ChatTemplate::named() {
            assert_eq!(ChatTemplate::from_name(t.name()), Some(t));
        }
        let mut names: alloc::vec::Vec<_> = NAMES.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), NAMES.len());
        assert_eq!(ChatTemplate::from_name("plain"), None);
        assert_eq!(ChatTemplate::from_name("dots1"), None);
        assert_eq!(ChatTemplate::Dots1.name(), "dots1");
    }
}
