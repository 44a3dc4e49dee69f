//! The parts of `flexserve-model` other crates use: [`relayout`], which puts a GGUF's layers
//! in forward order for sealing, and [`sealing`], the owner's keys and sealing (the
//! end-to-end tests seal models with them, as the tool does).

pub mod relayout;
pub mod sealing;
