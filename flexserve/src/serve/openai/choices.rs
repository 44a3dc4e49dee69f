//! `n` choices in OpenAI's shapes: each choice is answered as a one-choice answer
//! (`Answer::full`, `Answer::chunk`, with its logprobs and tool calls) and then numbered
//! here; the whole answer gathers them, and `usage` counts the prompt once and the
//! completions of all choices, as OpenAI does.
//!
//! Choice `i` samples with `seed + i` (wrapping), so the whole set reproduces from the one
//! seed the answer returns, and choice `i` alone is the answer of `n: 1` with that seed.

use super::response::Usage;
use serde_json::Value;

/// The most choices one request may ask for. Each is held to the request's `max_tokens`,
/// so one request generates at most this many times what `n: 1` could.
pub const MAX_CHOICES: u8 = 8;

/// The seed choice `index` samples with, when the answer's seed is `seed`.
pub fn seed_of(seed: u64, index: u32) -> u64 {
    seed.wrapping_add(index.into())
}

/// The prefix of choice `index`'s tool call ids, unique in the answer (choice 0 keeps the
/// ids a one-choice answer has).
pub fn call_prefix(answer_id: &str, index: u32) -> String {
    match index {
        0 => format!("call_{answer_id}"),
        i => format!("call_{answer_id}-{i}"),
    }
}

/// `v` (a whole answer or a stream chunk with one choice) with that choice numbered `index`.
pub fn numbered(mut v: Value, index: u32) -> Value {
    if let Some(choice) = v["choices"].get_mut(0) {
        choice["index"] = index.into();
    }
    v
}

/// The choice of a one-choice whole answer `v`, numbered `index`.
pub fn choice_of(v: Value, index: u32) -> Value {
    let mut v = numbered(v, index);
    v["choices"][0].take()
}

/// A whole answer `v` with `choices` in place of its own, and `usage` for all of them.
pub fn gathered(mut v: Value, choices: Vec<Value>, usage: Usage) -> Value {
    v["choices"] = Value::Array(choices);
    v["usage"] = usage.json();
    v
}

/// The usage of the choices so far (`total`, `None` before the first) and one more: every
/// choice answers the same prompt, so it counts once (with the first choice's cached
/// tokens, those an earlier request left); completions add up.
pub fn add_usage(total: Option<Usage>, next: Usage) -> Usage {
    match total {
        None => next,
        Some(t) => Usage {
            completion: t.completion + next.completion,
            ..t
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::openai::{Answer, Endpoint};

    #[test]
    fn choice_seeds_follow_the_answer_seed_and_wrap() {
        assert_eq!(seed_of(7, 0), 7);
        assert_eq!(seed_of(7, 2), 9);
        assert_eq!(seed_of(u64::MAX, 1), 0);
    }

    #[test]
    fn call_ids_differ_between_choices() {
        assert_eq!(call_prefix("chatcmpl-3", 0), "call_chatcmpl-3");
        assert_eq!(call_prefix("chatcmpl-3", 2), "call_chatcmpl-3-2");
    }

    #[test]
    fn a_whole_answer_gathers_numbered_choices_and_counts_the_prompt_once() {
        let a = Answer::new(Endpoint::Chat, 1, "m");
        let u = |completion, cached| Usage {
            prompt: 10,
            completion,
            cached,
        };
        let mut total = None;
        let mut choices = Vec::new();
        for (i, (text, used)) in [("a", u(3, 0)), ("b", u(5, 8))].into_iter().enumerate() {
            total = Some(add_usage(total, used));
            choices.push(choice_of(a.full(text, "stop", used), i as u32));
        }
        let v = gathered(
            a.full("", "stop", Usage::default()),
            choices,
            total.unwrap(),
        );
        assert_eq!(v["choices"].as_array().unwrap().len(), 2);
        assert_eq!(v["choices"][1]["index"], 1);
        assert_eq!(v["choices"][1]["message"]["content"], "b");
        assert_eq!(v["usage"]["prompt_tokens"], 10);
        assert_eq!(v["usage"]["completion_tokens"], 8);
        assert_eq!(v["usage"]["total_tokens"], 18);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    }

    #[test]
    fn a_chunk_carries_its_choice_index() {
        let a = Answer::new(Endpoint::Completion, 1, "m");
        let c = numbered(a.chunk(Some("x"), false, None, None), 4);
        assert_eq!(c["choices"][0]["index"], 4);
        assert_eq!(c["choices"][0]["text"], "x");
    }
}
