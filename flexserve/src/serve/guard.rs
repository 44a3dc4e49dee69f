//! The checks every request passes before a handler sees it (axum middleware), in order:
//! - `Host` (TCP only): loopback names, the listen address, or `http.allowed_hosts`. A web
//!   page that rebinds its own DNS name to 127.0.0.1 still sends its own name: refused (421).
//! - `Origin`: browsers send it on cross-origin requests; only origins in `http.cors_origins`
//!   pass (and get CORS headers, preflights included), any other is refused (403), so a
//!   web page cannot make the browser POST to the daemon (CSRF).
//! - who is asking: on TCP an API key when keys are configured (401 without a valid one),
//!   else loopback clients only; on the Unix socket the peer's user id (`auth.unix_uids`).
//!   `/health` needs no key, so that probes need no secret.
//! - `Content-Type: application/json` on every POST (415 otherwise): a form or `text/plain`
//!   body is what a page can send without a preflight.

use super::Shared;
use super::auth;
use super::config_access::normal_host;
use super::error::ApiError;
use super::scheduler::Principal;
use super::server::Peer;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;

/// Names every TCP listener answers to, with any port.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

pub async fn guard(State(s): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    // Requests always come through `server.rs`, which tags them; without a tag, the
    // strictest kind of peer: a TCP client from elsewhere.
    let peer = req
        .extensions()
        .get::<Peer>()
        .cloned()
        .unwrap_or(Peer::Tcp(SocketAddr::from(([0, 0, 0, 0], 0))));
    let origin = match check(&s, &peer, &req) {
        Ok(Checked::Pass { origin, principal }) => {
            if let Some(p) = principal {
                req.extensions_mut().insert(p);
            }
            origin
        }
        Ok(Checked::Preflight(origin)) => return preflight(origin),
        // Ollama's clients read Ollama's error shape.
        Err(e) if super::ollama::is_ollama_path(req.uri().path()) => {
            return super::ollama::error(e);
        }
        Err(e) => return e.into_response(),
    };
    let mut res = next.run(req).await;
    if let Some(o) = origin {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    res
}

enum Checked {
    /// On to the handler, with the allowed origin to answer with, and who is asking.
    Pass {
        origin: Option<HeaderValue>,
        principal: Option<Principal>,
    },
    /// An allowed origin's CORS preflight: answered here.
    Preflight(HeaderValue),
}

fn check(s: &Shared, peer: &Peer, req: &Request) -> Result<Checked, ApiError> {
    let headers = req.headers();
    if let Peer::Tcp(_) = peer {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !host_allowed(host, &s.config.access.allowed_hosts, &s.tcp_addrs) {
            return Err(ApiError::HostNotAllowed(host.to_string()));
        }
    }
    let origin = match headers.get(header::ORIGIN) {
        None => None,
        Some(o) => {
            let text = o.to_str().unwrap_or("").to_ascii_lowercase();
            if !s.config.access.cors_origins.contains(&text) {
                return Err(ApiError::OriginNotAllowed(text));
            }
            if req.method() == Method::OPTIONS
                && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
            {
                return Ok(Checked::Preflight(o.clone()));
            }
            Some(o.clone())
        }
    };
    let principal = if req.uri().path() == "/health" {
        None
    } else {
        Some(principal(s, peer, headers)?)
    };
    if req.method() == Method::POST {
        json_content(headers)?;
    }
    Ok(Checked::Pass { origin, principal })
}

/// Whether `host` (a `Host` header) names this daemon: a loopback name or a listen address
/// with any port, or an `allowed` entry (`name`: any port; `name:port`: that port).
pub fn host_allowed(host: &str, allowed: &[String], listen: &[SocketAddr]) -> bool {
    let host = normal_host(host);
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => &host,
        },
    };
    if name.is_empty() {
        return false;
    }
    let listen_name = |a: &SocketAddr| match a {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    LOOPBACK_NAMES.contains(&name)
        || listen.iter().any(|a| listen_name(a) == name)
        || allowed.iter().any(|a| *a == name || *a == host)
}

/// Who is asking (see the module's list), or why they may not.
fn principal(s: &Shared, peer: &Peer, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let access = &s.config.access;
    match *peer {
        Peer::Unix { uid } => {
            if !access.unix_uids.is_empty() && !uid.is_some_and(|u| access.unix_uids.contains(&u)) {
                let who = uid.map_or("unknown".to_string(), |u| u.to_string());
                return Err(ApiError::Forbidden(format!(
                    "user id {who} may not use this socket (auth.unix_uids)"
                )));
            }
            Ok(uid.map_or(Principal::Anonymous, Principal::Uid))
        }
        Peer::Tcp(addr) if access.keys.is_empty() => {
            if addr.ip().is_loopback() {
                Ok(Principal::Anonymous)
            } else {
                Err(ApiError::Forbidden(
                    "without API keys this server answers loopback clients only".into(),
                ))
            }
        }
        Peer::Tcp(_) => {
            let bearer = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, key) = v.trim().split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
                });
            let Some(key) = bearer else {
                return Err(ApiError::Unauthorized(
                    "this server needs an API key: send `Authorization: Bearer KEY`",
                ));
            };
            match auth::identify(&access.keys, key) {
                Some(name) => Ok(Principal::Key(name.to_string())),
                None => Err(ApiError::Unauthorized("the API key is not valid")),
            }
        }
    }
}

/// A POST's body must be declared JSON (parameters such as `charset` allowed).
fn json_content(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let is_json = ct.as_deref().is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if is_json {
        Ok(())
    } else {
        Err(ApiError::MediaType(ct.unwrap_or_else(|| "none".into())))
    }
}

/// The answer to an allowed origin's preflight: what it may send, for 10 minutes.
fn preflight(origin: HeaderValue) -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST"),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type"),
            ),
            (
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            ),
            (header::VARY, HeaderValue::from_static("Origin")),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_loopback_names_the_listen_address_or_allowed() {
        let listen: [SocketAddr; 2] = [
            "10.1.2.3:8080".parse().unwrap(),
            "[fe80::1]:80".parse().unwrap(),
        ];
        let allowed = ["box.example".to_string(), "other.example:9000".to_string()];
        let ok = |h: &str| host_allowed(h, &allowed, &listen);
        for h in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
            "127.0.0.1:1",
            "[::1]:8080",
            "10.1.2.3:8080",
            "[fe80::1]",
            "box.example:1234",
            "other.example:9000",
        ] {
            assert!(ok(h), "{h}");
        }
        for h in [
            "",
            "evil.example",
            "localhost.evil.example",
            "other.example:9001",
            "127.0.0.2",
            "[::1",
            "evil.example:localhost",
        ] {
            assert!(!ok(h), "{h}");
        }
    }

    #[test]
    fn only_json_bodies_pass() {
        let mut h = HeaderMap::new();
        assert!(json_content(&h).is_err());
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(json_content(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(json_content(&h).is_ok());
    }
}
