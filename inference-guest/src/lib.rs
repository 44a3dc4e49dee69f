//! FlexServe's inference engine.
//!
//! `no_std` + `alloc` so the very same code runs in the protected guest's user mode; the `std`
//! feature adds what only a host has (a thread pool, file access in tests).
//!
//! Map:
//! - [`gguf`]: the GGUF v2/v3 reader (borrowed tensor views, every field validated).
//! - [`ggml_type`]: the tensor types and their block geometry.
//! - [`quant`]: block formats, scalar reference kernels and their AVX2/NEON versions.
//! - [`parallel`]: the work-split trait the forward pass runs on (host threads or guest vCPUs).
//! - [`model`]: llama-family hyper-parameters, weights and the forward pass.
//! - [`tokenizer`]: GPT-2 byte-level BPE and SentencePiece tokenizers, special tokens, chat templates.
//! - [`sampler`]: greedy, temperature, top-k, top-p, min-p, repetition penalty.
//! - [`constrain`]: structured output: a grammar constraint on the token loop (`llm-grammar`).
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod constrain;
pub mod generate;
pub mod ggml_type;
pub mod gguf;
pub mod math;
pub mod model;
pub mod parallel;
pub mod quant;
pub mod sampler;
pub mod sincosf;
pub mod stop;
pub mod tokenizer;
