//! OpenAI's request and response shapes.

pub mod choices;
mod fields;
mod logprobs;
mod messages;
pub mod next_model;
mod request;
mod response;
pub mod sealed;
pub mod structured;
pub mod tools;

pub use logprobs::{Logprobs, with_logprobs};
pub use request::{GenRequest, Input, parse_chat, parse_completion};
pub use response::{Answer, Endpoint, SEED_HEADER, Usage, finish_reason, json_response};
