//! The FlexServe host binary's pieces, built on the `vmm` library: `run` in a guest or on
//! the host, the OpenAI-compatible daemon, the benchmarks, and the host-side model they
//! share.

pub mod bench;
pub mod chat;
pub mod cli;
pub mod guest_root;
pub mod model;
pub mod models_cli;
pub mod models_pull;
pub mod proxy;
pub mod run;
pub mod serve;
pub mod size;
pub mod text_stream;
