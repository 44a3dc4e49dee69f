//! What several of this crate's integration tests share.

use std::path::Path;

/// The bytes of `models/<name>` (from `make setup`, git-ignored): `None` with a message
/// when it is missing, or a failure under `FLEXSERVE_REQUIRE_MODELS=1` (`make test`).
pub fn model_bytes(name: &str) -> Option<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if std::env::var("FLEXSERVE_REQUIRE_MODELS").as_deref() == Ok("1") => {
            panic!("{}: {e}: run `make setup`", path.display())
        }
        Err(_) => {
            eprintln!("SKIPPED: {} missing, run `make setup`", path.display());
            None
        }
    }
}
