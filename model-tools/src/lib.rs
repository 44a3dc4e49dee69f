//! The parts of `flexserve-model` other crates use: [`relayout`], which puts a GGUF's layers
//! in forward order for sealing (the end-to-end tests seal models with it, as the tool does).

pub mod relayout;
