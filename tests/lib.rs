//! End-to-end tests live in this crate's test targets (`boot.rs`); the library is empty.
