//! `flexserve run`: one prompt, in a guest ([`guest`]) or on the host ([`host`]).

pub mod guest;
pub mod host;
