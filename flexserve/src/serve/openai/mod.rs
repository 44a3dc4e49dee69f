//! OpenAI's request and response shapes.

mod request;
mod response;
pub mod sealed;
pub mod tools;

pub use request::{GenRequest, Input, parse_chat, parse_completion};
pub use response::{Answer, Endpoint, Usage, finish_reason, json_response};
