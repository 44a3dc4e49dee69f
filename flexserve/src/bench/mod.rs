//! The benchmark commands: `bench-engine` (kernels on this host), `bench-e2e` (one engine's
//! end-to-end figures on one model) and `bench-sealed` (cold starts of a model plain,
//! sealed and as the strawman).

pub mod e2e;
mod e2e_batch;
pub mod engine;
pub mod roofline;
pub mod sealed;
