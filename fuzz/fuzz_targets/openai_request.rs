//! The daemon's OpenAI request parser against any body a client sends
//! (`/v1/chat/completions` and `/v1/completions`, `flexserve_sealed` included).
//!
//! Beyond "never panics": what it accepts is inside the limits the rest of the daemon
//! relies on: `max_tokens` in 1..=limit, `n` in 1..=8 (1 on a sealed request), at most 64
//! non-empty stop strings, sampling values in their documented ranges (finite), options
//! the wire takes, a non-empty prompt; and every refusal has a message to show.
#![no_main]

use flexserve::serve::openai::choices::MAX_CHOICES;
use flexserve::serve::openai::{GenRequest, Input, parse_chat, parse_completion};
use libfuzzer_sys::fuzz_target;

const LIMIT: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    for parse in [parse_chat, parse_completion] {
        match parse(data, LIMIT) {
            Ok(r) => check(&r),
            Err(e) => assert!(!e.to_string().is_empty(), "a refusal without a message"),
        }
    }
});

fn check(r: &GenRequest) {
    if let Some(n) = r.max_tokens {
        assert!((1..=LIMIT).contains(&n), "max_tokens {n}");
    }
    assert!((1..=u32::from(MAX_CHOICES)).contains(&r.n), "n {}", r.n);
    if matches!(r.input, Input::Sealed(_)) {
        assert_eq!(r.n, 1, "a sealed request with n {}", r.n);
    }
    assert!(r.stop.len() <= 64, "{} stop strings", r.stop.len());
    assert!(r.options.validate().is_ok(), "options {:?}", r.options);
    assert!(r.stop.iter().all(|s| !s.is_empty()), "an empty stop string");
    let s = &r.sampling;
    assert!(
        (0.0..=2.0).contains(&s.temperature),
        "temperature {}",
        s.temperature
    );
    assert!((0.0..=1.0).contains(&s.top_p), "top_p {}", s.top_p);
    assert!((0.0..=1.0).contains(&s.min_p), "min_p {}", s.min_p);
    assert!(
        (0.01..=100.0).contains(&s.repeat_penalty),
        "repeat_penalty {}",
        s.repeat_penalty
    );
    assert!(s.top_k <= 1 << 24, "top_k {}", s.top_k);
    match &r.input {
        Input::Chat(messages) => assert!(!messages.is_empty(), "a chat without messages"),
        Input::Text(t) => assert!(!t.is_empty(), "an empty prompt"),
        Input::Tokens(ids) => assert!(!ids.is_empty(), "an empty token prompt"),
        Input::Sealed(bytes) => assert!(!bytes.is_empty(), "an empty sealed request"),
    }
}
