//! The parts of `flexserve-model` other crates use: [`relayout`], which puts a GGUF's layers
//! in forward order for sealing, [`sealing`], the owner's keys and sealing (the end-to-end
//! tests seal models with them, as the tool does), and [`convert`], which re-types weights
//! (`flexserve models pull --seal/--convert` run the same code as the tool).

pub mod codec;
pub mod convert;
pub mod relayout;
pub mod sealing;
