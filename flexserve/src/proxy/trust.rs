//! Which guest the client seals to: `GET /v1/flexserve/guest`, its signed statement
//! verified, the daemon's convenience fields checked against it, and the session key pinned
//! (`--guest-key`) or trusted on first use.
//!
//! Only the statement counts: the daemon relays it, and could put anything in the other
//! fields, so a field that disagrees with the statement is a refusal, not a choice.

use super::upstream::{Upstream, UpstreamError};
use sealed_session::{KeyRootKind, SessionError, SessionPublicKey, SignedStatement};
use serde_json::Value;

/// The daemon's path for the guest's statement.
pub const GUEST_PATH: &str = "/v1/flexserve/guest";

/// Why the guest is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(
        "the daemon answered {status} to GET {GUEST_PATH}: {body} (a daemon without sealed \
         sessions cannot serve sealed requests; use `--plain` where that is acceptable)"
    )]
    Status { status: u16, body: String },
    #[error("the daemon's guest description is not what {GUEST_PATH} returns: {0}")]
    Shape(String),
    #[error("the guest statement was refused: {0}")]
    Statement(#[from] SessionError),
    #[error(
        "the daemon's `{field}` ({said}) differs from the guest's signed statement \
         ({signed}): refusing a daemon that misreports its guest"
    )]
    Mismatch {
        field: &'static str,
        said: String,
        signed: String,
    },
    #[error(
        "the guest's session key is {got}, but --guest-key pins {pinned}: this is not the \
         guest you pinned (another host, new guest images or a new key root). Check why \
         before pinning the new key"
    )]
    PinMismatch {
        pinned: SessionPublicKey,
        got: SessionPublicKey,
    },
}

/// A model the daemon serves and its context in tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    pub id: String,
    pub context: u32,
}

/// The trusted guest, and what the daemon says about its defaults.
#[derive(Clone, Debug)]
pub struct GuestInfo {
    /// Verified; the only source of keys.
    pub signed: SignedStatement,
    pub default_model: String,
    /// The daemon's cap on `max_tokens`.
    pub max_tokens: u32,
    pub models: Vec<ModelInfo>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn text<'a>(v: &'a Value, key: &'static str) -> Result<&'a str, TrustError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| TrustError::Shape(format!("`{key}` is missing or not a string")))
}

fn number(v: &Value, key: &'static str) -> Result<u32, TrustError> {
    v.get(key)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| TrustError::Shape(format!("`{key}` is missing or not a u32")))
}

impl GuestInfo {
    /// Parses the daemon's answer, verifies the statement's signature and checks every
    /// convenience field against it.
    pub fn from_json(v: &Value) -> Result<Self, TrustError> {
        let raw = unhex(text(v, "statement")?)
            .ok_or_else(|| TrustError::Shape("`statement` is not hex".into()))?;
        let signed = SignedStatement::decode(&raw)?;
        let s = &signed.statement;
        let expected = [
            ("session_key", hex(&s.session_key.0)),
            ("sealing_key", hex(&s.sealing_key.0)),
            ("measurement", hex(&s.measurement)),
            ("attestation_key", hex(&signed.attestation_key.0)),
            ("isolation", s.isolation.name().to_string()),
            ("key_root", s.key_root.name().to_string()),
        ];
        for (field, signed) in expected {
            let said = text(v, field)?;
            if !said.eq_ignore_ascii_case(&signed) {
                return Err(TrustError::Mismatch {
                    field,
                    said: said.to_string(),
                    signed,
                });
            }
        }
        let models = v
            .get("models")
            .and_then(Value::as_array)
            .ok_or_else(|| TrustError::Shape("`models` is missing or not an array".into()))?
            .iter()
            .map(|m| {
                Ok(ModelInfo {
                    id: text(m, "id")?.to_string(),
                    context: number(m, "context")?,
                })
            })
            .collect::<Result<_, TrustError>>()?;
        Ok(Self {
            signed,
            default_model: text(v, "default_model")?.to_string(),
            max_tokens: number(v, "max_tokens")?,
            models,
        })
    }

    pub fn session_key(&self) -> SessionPublicKey {
        self.signed.statement.session_key
    }

    /// `max_tokens` for a request that gives none: as much as the daemon allows and the
    /// model's context holds (the daemon may not fill it in: it is bound to the seal).
    pub fn default_max_tokens(&self, model: &str) -> u32 {
        let context = self
            .models
            .iter()
            .find(|m| m.id == model)
            .map_or(u32::MAX, |m| m.context);
        self.max_tokens.min(context).max(1)
    }

    /// Refuses a guest whose session key is not the pinned one.
    pub fn check_pin(&self, pinned: Option<SessionPublicKey>) -> Result<(), TrustError> {
        match pinned {
            Some(p) if p != self.session_key() => Err(TrustError::PinMismatch {
                pinned: p,
                got: self.session_key(),
            }),
            _ => Ok(()),
        }
    }

    /// The lines to tell the user: trust on first use (how to pin) and a development key
    /// root (as `flexserve isolation` says it).
    pub fn notes(&self, pinned: bool) -> Vec<String> {
        let mut out = Vec::new();
        if !pinned {
            out.push(format!(
                "warning: trusting guest session key {} on first use; pin it with \
                 --guest-key {}",
                self.session_key(),
                self.session_key()
            ));
        }
        if self.signed.statement.key_root == KeyRootKind::Development {
            out.push(
                "guest key root: development (no protection against a compromised host)".into(),
            );
        }
        out
    }
}

/// Fetches and checks the guest's statement. The guest boots on the daemon's first request,
/// so this may take seconds.
pub async fn fetch(
    upstream: &Upstream,
    pinned: Option<SessionPublicKey>,
) -> Result<GuestInfo, TrustError> {
    let (status, body) = upstream.get(GUEST_PATH).await?;
    if !status.is_success() {
        return Err(TrustError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).chars().take(500).collect(),
        });
    }
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| TrustError::Shape(format!("not JSON: {e}")))?;
    let info = GuestInfo::from_json(&v)?;
    info.check_pin(pinned)?;
    Ok(info)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sealed_session::{GuestStatement, Isolation, SessionKey};

    /// A guest's keys and the daemon's description of it, as a guest and daemon make them.
    pub(crate) fn guest() -> (SessionKey, Value) {
        let root = [7u8; 32];
        let measurement = [9u8; 32];
        let session = sealed_session::derive_session_key(&root, &measurement);
        let attest = sealed_session::derive_attestation_key(&root);
        let statement = GuestStatement {
            session_key: session.public(),
            sealing_key: sealed_model::derive_guest_key(&root, &measurement).public(),
            measurement,
            isolation: Isolation::None,
            key_root: KeyRootKind::Development,
        };
        let signed = SignedStatement::sign(statement, &attest);
        let v = serde_json::json!({
            "statement": hex(&signed.encode()),
            "session_key": hex(&statement.session_key.0),
            "sealing_key": hex(&statement.sealing_key.0),
            "measurement": hex(&measurement),
            "attestation_key": hex(&signed.attestation_key.0),
            "isolation": "none",
            "key_root": "development",
            "default_model": "m",
            "max_tokens": 4096,
            "models": [{"id": "m", "context": 512}],
        });
        (session, v)
    }

    #[test]
    fn a_statement_is_verified_and_the_fields_must_agree() {
        let (key, v) = guest();
        let info = GuestInfo::from_json(&v).unwrap();
        assert_eq!(info.session_key(), key.public());
        assert_eq!(info.default_max_tokens("m"), 512);
        assert_eq!(info.default_max_tokens("other"), 4096);
        assert!(info.check_pin(Some(key.public())).is_ok());
        let wrong = SessionPublicKey([1; 32]);
        let e = info.check_pin(Some(wrong)).unwrap_err().to_string();
        assert!(e.contains(&wrong.to_string()) && e.contains(&key.public().to_string()));
        assert_eq!(info.notes(true).len(), 1);

        let mut lie = v.clone();
        lie["isolation"] = "protected-vm".into();
        assert!(matches!(
            GuestInfo::from_json(&lie),
            Err(TrustError::Mismatch {
                field: "isolation",
                ..
            })
        ));
        let mut forged = v.clone();
        let mut raw = unhex(v["statement"].as_str().unwrap()).unwrap();
        raw[104] = 2; // claim protected-vm
        forged["statement"] = hex(&raw).into();
        assert!(matches!(
            GuestInfo::from_json(&forged),
            Err(TrustError::Statement(SessionError::StatementSignature))
        ));
    }
}
