//! `flexserve proxy`: the client's end of sealed sessions (docs/sealed-session.md). It
//! runs where the user is, serves the OpenAI API on loopback, seals each request's content
//! to the guest's session key, relays it through the daemon (which cannot read it), and
//! opens the guest's numbered answer pieces, so that the daemon's host sees neither prompt
//! nor answer. `flexserve chat` uses the same client.
//!
//! `upstream.rs` the HTTP link to the daemon, `trust.rs` the guest's statement and key
//! pinning, `seal.rs` requests, `unseal.rs` answers (whole and streamed), `client.rs` the
//! three together.

pub mod client;
pub mod seal;
pub mod trust;
pub mod unseal;
pub mod upstream;
