//! The benchmark commands: `bench-engine` (kernels on this host) and `bench-e2e` (one
//! engine's end-to-end figures on one model).

pub mod e2e;
pub mod engine;
