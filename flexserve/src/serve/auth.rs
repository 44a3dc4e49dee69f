//! API keys: `flexserve api-key new` makes a random key and prints it once with the line
//! for the config, which holds only its SHA-256 digest (a stolen config file gives no key).
//! A presented key is hashed and compared in constant time with every configured digest,
//! so the time taken says nothing about how close a guess was, nor which key matched.

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every key starts with this, so a leaked one is recognisable in logs and scanners.
pub const KEY_PREFIX: &str = "fsk-";

/// A configured key: the client's name and the key's digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// The client identity its requests get (their share of the queue is per name).
    pub name: String,
    pub sha256: [u8; 32],
}

/// A config entry that is not a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("`sha256` must be 64 hex digits (the digest `flexserve api-key new` prints)")]
    Digest,
    #[error("`name` must be 1 to 64 letters, digits, `-`, `_` or `.`, not {0:?}")]
    Name(String),
    #[error("two keys are named {0:?}; each client needs its own name")]
    Duplicate(String),
    #[error("cannot get random bytes for a key: {0}")]
    Random(String),
}

impl ApiKey {
    pub fn parse(name: &str, sha256_hex: &str) -> Result<Self, KeyError> {
        let ok = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if name.is_empty() || name.len() > 64 || !name.chars().all(ok) {
            return Err(KeyError::Name(name.to_string()));
        }
        let hex = sha256_hex.trim();
        let mut sha256 = [0u8; 32];
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(KeyError::Digest);
        }
        for (i, b) in sha256.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| KeyError::Digest)?;
        }
        Ok(Self {
            name: name.to_string(),
            sha256,
        })
    }
}

/// The digest of a key, as the config stores it.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name of the key `presented` is, if any. Every digest is compared, in constant time.
pub fn identify<'k>(keys: &'k [ApiKey], presented: &str) -> Option<&'k str> {
    let d = digest(presented);
    let mut found = None;
    for k in keys {
        if bool::from(k.sha256.ct_eq(&d)) {
            found = Some(k.name.as_str());
        }
    }
    found
}

/// A new random key (256 bits from the OS).
pub fn new_key() -> Result<String, KeyError> {
    use sealed_session::TryRngCore;
    let mut bytes = [0u8; 32];
    sealed_session::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// `flexserve api-key new --name NAME`: the key, once, and the config lines with its digest.
pub fn print_new(name: &str) -> Result<(), KeyError> {
    let key = new_key()?;
    let entry = ApiKey::parse(name, &hex(&digest(&key)))?;
    println!("{key}");
    eprintln!(
        "[flexserve] the key above is shown only now: give it to the client `{name}` \
         (header `Authorization: Bearer KEY`, or the OpenAI SDK's api_key); add to the \
         daemon's config:\n\n[[auth.keys]]\nname = \"{}\"\nsha256 = \"{}\"\n",
        entry.name,
        hex(&entry.sha256)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_known_by_its_digest_only() {
        let key = new_key().unwrap();
        assert!(key.starts_with(KEY_PREFIX) && key.len() > 40);
        assert_ne!(key, new_key().unwrap());
        let keys = vec![
            ApiKey::parse("alice", &hex(&digest("other"))).unwrap(),
            ApiKey::parse("bob", &hex(&digest(&key))).unwrap(),
        ];
        assert_eq!(identify(&keys, &key), Some("bob"));
        assert_eq!(identify(&keys, "other"), Some("alice"));
        assert_eq!(identify(&keys, &key[..key.len() - 1]), None);
        assert_eq!(identify(&[], &key), None);
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(matches!(ApiKey::parse("a", "12"), Err(KeyError::Digest)));
        assert!(matches!(
            ApiKey::parse("a", &"zz".repeat(32)),
            Err(KeyError::Digest)
        ));
        assert!(matches!(
            ApiKey::parse("a b", &"00".repeat(32)),
            Err(KeyError::Name(_))
        ));
    }
}
