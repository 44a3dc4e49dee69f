//! Which family a model's `tokenizer.chat_template` belongs to, by llama.cpp's
//! `llm_chat_detect_template`: the same substring tests in the same order, so a template
//! llama.cpp would render as family X is rendered here as X too. The order matters: many
//! templates contain several families' markers, and the first test that matches wins.

use super::ChatTemplate;
use ChatTemplate as T;

impl ChatTemplate {
    /// The family of `template` (a model's `tokenizer.chat_template`, or one of llama.cpp's
    /// names such as `chatml`); [`ChatTemplate::Plain`] when there is none or no family
    /// matches.
    pub fn detect(template: Option<&str>) -> ChatTemplate {
        let Some(t) = template else {
            return T::Plain;
        };
        if let Some(named) = ChatTemplate::from_name(t) {
            return named;
        }
        let has = |s: &str| t.contains(s);
        if has("<|im_start|>") {
            return if has("<|im_sep|>") {
                T::Phi4
            } else if has("<end_of_utterance>") {
                // SmolVLM opens with `<|im_start|>` but is not ChatML.
                T::SmolVlm
            } else {
                T::ChatMl
            };
        }
        if t.starts_with("mistral") || has("[INST]") {
            return detect_inst(t);
        }
        detect_markers(t)
            .or_else(|| detect_phrases(t))
            .or_else(|| detect_recent(t))
            .unwrap_or(T::Plain)
    }
}

/// The `[INST]` families: Mistral's official templates, else Llama 2 and its variants.
fn detect_inst(t: &str) -> ChatTemplate {
    let has = |s: &str| t.contains(s);
    if has("[SYSTEM_PROMPT]") {
        T::MistralV7
    } else if has("' [INST] ' + system_message") || has("[AVAILABLE_TOOLS]") {
        if has(" [INST]") {
            T::MistralV1
        } else if has("\"[INST]\"") {
            T::MistralV3Tekken
        } else {
            T::MistralV3
        }
    } else if has("content.strip()") {
        T::Llama2SysStrip
    } else if has("bos_token + '[INST]") {
        T::Llama2SysBos
    } else if has("<<SYS>>") {
        T::Llama2Sys
    } else {
        T::Llama2
    }
}

/// llama.cpp's tests from Phi-3 to Command R, in its order.
fn detect_markers(t: &str) -> Option<ChatTemplate> {
    let has = |s: &str| t.contains(s);
    Some(if has("<|assistant|>") && has("<|end|>") {
        T::Phi3
    } else if has("[gMASK]<sop>") {
        T::ChatGlm4
    } else if has("<|assistant|>") && has("<|user|>") {
        if has("<|tool_declare|>") {
            T::ExaoneMoe
        } else if has("</s>") {
            T::Falcon3
        } else {
            T::GlmEdge
        }
    } else if has("<|{{ item['role'] }}|>") && has("<|begin_of_image|>") {
        T::GlmEdge
    } else if has("<|user|>") && has("<|endoftext|>") {
        T::Zephyr
    } else if has("bos_token + message['role']") {
        T::Monarch
    } else if has("<start_of_turn>") {
        T::Gemma
    } else if has("'\\n\\nAssistant: ' + eos_token") {
        T::Orion
    } else if has("GPT4 Correct ") {
        T::OpenChat
    } else if has("USER: ") && has("ASSISTANT: ") {
        if has("SYSTEM: ") {
            T::VicunaOrca
        } else {
            T::Vicuna
        }
    } else if has("### Instruction:") && has("<|EOT|>") {
        T::DeepSeek
    } else if has("<|START_OF_TURN_TOKEN|>") && has("<|USER_TOKEN|>") {
        T::CommandR
    } else {
        return None;
    })
}

/// llama.cpp's tests from Llama 3 to Granite, in its order.
fn detect_phrases(t: &str) -> Option<ChatTemplate> {
    let has = |s: &str| t.contains(s);
    Some(if has("<|start_header_id|>") && has("<|end_header_id|>") {
        T::Llama3
    } else if has("[gMASK]sop") {
        T::ChatGlm3
    } else if has("<用户>") {
        T::MiniCpm
    } else if has("'Assistant: ' + message['content'] + eos_token") {
        T::DeepSeek2
    } else if has("<｜Assistant｜>") && has("<｜User｜>") && has("<｜end▁of▁sentence｜>")
    {
        T::DeepSeek3
    } else if has("[|system|]") && has("[|assistant|]") && has("[|endofturn|]") {
        if has("[|tool|]") {
            T::Exaone4
        } else {
            T::Exaone3
        }
    } else if has("rwkv-world") || has("{{- 'User: ' + message['content']|trim + '\\n\\n' -}}") {
        T::RwkvWorld
    } else if has("<|start_of_role|>") {
        if !(has("<tool_call>") || has("<tools>")) {
            T::Granite3
        } else if has("g4_default_system_message") {
            T::Granite40
        } else {
            T::Granite41
        }
    } else {
        return None;
    })
}

/// llama.cpp's tests from GigaChat on, in its order.
fn detect_recent(t: &str) -> Option<ChatTemplate> {
    let has = |s: &str| t.contains(s);
    let ling = has("<role>ASSISTANT</role>");
    Some(
        if has(
            "message['role'] + additional_special_tokens[0] + message['content'] + additional_special_tokens[1]",
        ) {
            T::GigaChat
        } else if has("<|role_start|>") {
            T::Megrez
        } else if has(" Ассистент:") {
            T::Yandex
        } else if ling && has("'HUMAN'") {
            T::Bailing
        } else if ling && has("\"HUMAN\"") && has("<think>") {
            T::BailingThink
        } else if ling && has("<role>HUMAN</role>") && has("<|role_end|>") {
            T::Bailing2
        } else if has("<|header_start|>") && has("<|header_end|>") {
            T::Llama4
        } else if has("<|endofuserprompt|>") {
            T::Dots1
        } else if has("<|extra_0|>") && has("<|extra_4|>") {
            T::HunyuanMoe
        } else if has("<|start|>") && has("<|channel|>") {
            T::GptOss
        } else if has("<｜hy_Assistant｜>") && has("<｜hy_begin▁of▁sentence｜>") {
            T::HunyuanVl
        } else if has("<｜hy_Assistant｜>") && has("<｜hy_place▁holder▁no▁3｜>") {
            T::HunyuanDense
        } else if has("<|im_assistant|>assistant<|im_middle|>") {
            T::KimiK2
        } else if has("<seed:bos>") {
            T::SeedOss
        } else if has("'Assistant: '  + message['content'] + '<|separator|>") {
            T::Grok2
        } else if has("[unused9]系统：[unused10]") {
            T::PanguEmbedded
        } else if has("<|begin|>") && has("<|end|>") && has("<|content|>") {
            T::SolarOpen
        } else {
            return None;
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(t: &str) -> ChatTemplate {
        ChatTemplate::detect(Some(t))
    }

    #[test]
    fn no_template_or_an_unknown_one_is_plain() {
        assert_eq!(ChatTemplate::detect(None), T::Plain);
        assert_eq!(d(""), T::Plain);
        assert_eq!(d("{{ messages[0]['content'] }}"), T::Plain);
    }

    #[test]
    fn a_name_selects_its_family_before_any_substring_test() {
        for t in ChatTemplate::named() {
            assert_eq!(d(t.name()), t);
        }
        // Starts with "mistral" but is a name.
        assert_eq!(d("mistral-v7-tekken"), T::MistralV7Tekken);
        // Not a name: the prefix rule.
        assert_eq!(d("mistral-something"), T::Llama2);
    }

    #[test]
    fn im_start_wins_over_everything_after_it() {
        assert_eq!(
            d("<|im_start|>[INST]<|start_header_id|><|end_header_id|>"),
            T::ChatMl
        );
        assert_eq!(d("<|im_start|><|im_sep|>"), T::Phi4);
        assert_eq!(d("<|im_start|><end_of_utterance>"), T::SmolVlm);
        assert_eq!(d("<|im_start|><|im_sep|><end_of_utterance>"), T::Phi4);
    }

    #[test]
    fn inst_variants_in_llama_cpp_order() {
        assert_eq!(
            d("[INST][SYSTEM_PROMPT]' [INST] ' + system_message"),
            T::MistralV7
        );
        assert_eq!(d("' [INST] ' + system_message"), T::MistralV1);
        assert_eq!(d("[INST][AVAILABLE_TOOLS]\"[INST]\""), T::MistralV3Tekken);
        assert_eq!(d("[INST][AVAILABLE_TOOLS]"), T::MistralV3);
        assert_eq!(
            d("[INST]content.strip()bos_token + '[INST]<<SYS>>"),
            T::Llama2SysStrip
        );
        assert_eq!(d("bos_token + '[INST]<<SYS>>"), T::Llama2SysBos);
        assert_eq!(d("[INST]<<SYS>>"), T::Llama2Sys);
        assert_eq!(d("[INST]"), T::Llama2);
        // `[INST]` comes before the Llama 3 and Gemma tests.
        assert_eq!(
            d("[INST]<start_of_turn><|start_header_id|><|end_header_id|>"),
            T::Llama2
        );
    }

    #[test]
    fn marker_families_in_llama_cpp_order() {
        assert_eq!(d("<|assistant|><|end|><|user|>"), T::Phi3);
        assert_eq!(d("[gMASK]<sop><|assistant|><|user|>"), T::ChatGlm4);
        assert_eq!(d("<|assistant|><|user|><|tool_declare|></s>"), T::ExaoneMoe);
        assert_eq!(d("<|assistant|><|user|></s>"), T::Falcon3);
        assert_eq!(d("<|assistant|><|user|><|endoftext|>"), T::GlmEdge);
        assert_eq!(d("<|{{ item['role'] }}|><|begin_of_image|>"), T::GlmEdge);
        assert_eq!(d("<|user|><|endoftext|>"), T::Zephyr);
        assert_eq!(d("bos_token + message['role']<start_of_turn>"), T::Monarch);
        assert_eq!(
            d("<start_of_turn><|start_header_id|><|end_header_id|>"),
            T::Gemma
        );
        assert_eq!(d("'\\n\\nAssistant: ' + eos_token"), T::Orion);
        assert_eq!(d("GPT4 Correct USER: ASSISTANT: "), T::OpenChat);
        assert_eq!(d("SYSTEM: USER: ASSISTANT: "), T::VicunaOrca);
        assert_eq!(d("USER: ASSISTANT: "), T::Vicuna);
        assert_eq!(d("### Instruction:<|EOT|>"), T::DeepSeek);
        assert_eq!(d("<|START_OF_TURN_TOKEN|><|USER_TOKEN|>"), T::CommandR);
    }

    #[test]
    fn later_families_in_llama_cpp_order() {
        assert_eq!(
            d("<|start_header_id|><|end_header_id|>[gMASK]sop"),
            T::Llama3
        );
        assert_eq!(d("[gMASK]sop"), T::ChatGlm3);
        assert_eq!(d("<用户><AI>"), T::MiniCpm);
        assert_eq!(
            d("'Assistant: ' + message['content'] + eos_token"),
            T::DeepSeek2
        );
        assert_eq!(
            d("<｜Assistant｜><｜User｜><｜end▁of▁sentence｜>"),
            T::DeepSeek3
        );
        assert_eq!(
            d("[|system|][|assistant|][|endofturn|][|tool|]"),
            T::Exaone4
        );
        assert_eq!(d("[|system|][|assistant|][|endofturn|]"), T::Exaone3);
        assert_eq!(d("rwkv-world"), T::RwkvWorld);
        assert_eq!(d("<|start_of_role|>"), T::Granite3);
        assert_eq!(
            d("<|start_of_role|><tools>g4_default_system_message"),
            T::Granite40
        );
        assert_eq!(d("<|start_of_role|><tool_call>"), T::Granite41);
        assert_eq!(d("<|role_start|>"), T::Megrez);
        assert_eq!(d(" Ассистент:"), T::Yandex);
        assert_eq!(
            d("<role>ASSISTANT</role>'HUMAN'\"HUMAN\"<think>"),
            T::Bailing
        );
        assert_eq!(d("<role>ASSISTANT</role>\"HUMAN\"<think>"), T::BailingThink);
        assert_eq!(
            d("<role>ASSISTANT</role><role>HUMAN</role><|role_end|>"),
            T::Bailing2
        );
        assert_eq!(d("<|header_start|><|header_end|>"), T::Llama4);
        assert_eq!(d("<|endofuserprompt|>"), T::Dots1);
        assert_eq!(d("<|extra_0|><|extra_4|>"), T::HunyuanMoe);
        assert_eq!(d("<|start|><|channel|>"), T::GptOss);
        assert_eq!(
            d("<｜hy_Assistant｜><｜hy_begin▁of▁sentence｜>"),
            T::HunyuanVl
        );
        assert_eq!(
            d("<｜hy_Assistant｜><｜hy_place▁holder▁no▁3｜>"),
            T::HunyuanDense
        );
        assert_eq!(d("<|im_assistant|>assistant<|im_middle|>"), T::KimiK2);
        assert_eq!(d("<seed:bos>"), T::SeedOss);
        assert_eq!(
            d("'Assistant: '  + message['content'] + '<|separator|>"),
            T::Grok2
        );
        assert_eq!(d("[unused9]系统：[unused10]"), T::PanguEmbedded);
        assert_eq!(d("<|begin|><|end|><|content|>"), T::SolarOpen);
        // Phi-3's test (`<|assistant|>` and `<|end|>`) comes first.
        assert_eq!(d("<|begin|><|end|><|content|><|assistant|>"), T::Phi3);
    }
}
