//! The client side's HTTP link to the daemon: one HTTP/1.1 connection per request, over TCP
//! (`http://host:port`) or the daemon's Unix socket (`unix:/path/api.sock`). One connection
//! per request keeps it simple and lets a dropped answer close its connection, which is how
//! the daemon learns that a client went away (it then cancels the generation).

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::str::FromStr;
use tokio::io::{AsyncRead, AsyncWrite};

/// Largest whole answer read from the daemon (a whole answer of the largest context, as
/// sealed base64 pieces, fits many times over).
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Why the daemon could not be reached or its answer read.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(
        "upstream `{0}` is not an address: give http://HOST:PORT or unix:/path/to/flexserve.sock"
    )]
    BadUrl(String),
    #[error(
        "upstream `{0}`: https is not supported; the daemon listens on a Unix socket or \
         loopback TCP (use unix:/path or http://127.0.0.1:PORT)"
    )]
    Https(String),
    #[error("cannot connect to the daemon at {what}: {source} (is `flexserve serve` running?)")]
    Connect {
        what: String,
        source: std::io::Error,
    },
    #[error("the HTTP exchange with the daemon at {what} failed: {source}")]
    Http { what: String, source: hyper::Error },
    #[error("cannot build the request to the daemon: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("the daemon's answer could not be read: {0}")]
    Body(String),
}

/// Where the daemon listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// `host:port`.
    Tcp(String),
    /// The daemon's Unix socket.
    Unix(PathBuf),
}

impl FromStr for Upstream {
    type Err = UpstreamError;

    /// `unix:/path`, `http://host:port`, with an optional trailing `/` or `/v1` (what an
    /// OpenAI client's `base_url` looks like, so either form works).
    fn from_str(url: &str) -> Result<Self, UpstreamError> {
        let bad = || UpstreamError::BadUrl(url.to_string());
        if let Some(path) = url.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            return if path.is_empty() {
                Err(bad())
            } else {
                Ok(Self::Unix(PathBuf::from(path)))
            };
        }
        if url.starts_with("https://") {
            return Err(UpstreamError::Https(url.to_string()));
        }
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        let rest = rest.strip_suffix("/v1").unwrap_or(rest);
        match rest.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty() && !rest.contains('/') && port.parse::<u16>().is_ok() =>
            {
                Ok(Self::Tcp(rest.to_string()))
            }
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "http://{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The environment variable with the API key sent to the daemon, if any.
pub const API_KEY_VAR: &str = "FLEXSERVE_API_KEY";

impl Upstream {
    /// Sends one request (`body` as JSON when given) and returns the answer's head; its
    /// body streams from the connection as it is read.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let host = match self {
            Self::Tcp(a) => a.as_str(),
            // Any name: a Unix socket has no host, but HTTP/1.1 requires the header.
            Self::Unix(_) => "flexserve",
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, host);
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        // A daemon with API keys wants one on TCP (`flexserve api-key new`).
        if let Ok(key) = std::env::var(API_KEY_VAR) {
            req = req.header(AUTHORIZATION, format!("Bearer {}", key.trim()));
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let connect = |source| UpstreamError::Connect {
            what: self.to_string(),
            source,
        };
        match self {
            Self::Tcp(addr) => {
                let io = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(connect)?;
                // Tokens stream in small writes; Nagle would hold them back.
                let _ = io.set_nodelay(true);
                self.exchange(io, req).await
            }
            Self::Unix(path) => {
                let io = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect)?;
                self.exchange(io, req).await
            }
        }
    }

    async fn exchange<S>(
        &self,
        io: S,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, UpstreamError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http = |source| UpstreamError::Http {
            what: self.to_string(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http)?;
        // The connection is driven until the answer's body is read or dropped; its own
        // errors surface as errors of that body.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender.send_request(req).await.map_err(http)
    }

    /// `GET path` read whole: the status and the body.
    pub async fn get(&self, path: &str) -> Result<(hyper::StatusCode, Bytes), UpstreamError> {
        let r = self.send(Method::GET, path, None).await?;
        let status = r.status();
        Ok((status, read_body(r.into_body()).await?))
    }
}

/// A whole answer body, at most [`MAX_ANSWER_BYTES`].
pub async fn read_body(body: Incoming) -> Result<Bytes, UpstreamError> {
    Limited::new(body, MAX_ANSWER_BYTES)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| UpstreamError::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_addresses_parse() {
        let p = |s: &str| s.parse::<Upstream>();
        assert_eq!(
            p("http://127.0.0.1:8080").unwrap(),
            Upstream::Tcp("127.0.0.1:8080".into())
        );
        assert_eq!(
            p("http://localhost:8080/v1/").unwrap(),
            Upstream::Tcp("localhost:8080".into())
        );
        assert_eq!(
            p("unix:/run/flexserve/flexserve.sock").unwrap(),
            Upstream::Unix("/run/flexserve/flexserve.sock".into())
        );
        assert!(matches!(p("https://a:1"), Err(UpstreamError::Https(_))));
        for bad in [
            "127.0.0.1:8080",
            "http://host",
            "http://h:99999",
            "unix:",
            "http://h:1/x",
        ] {
            assert!(matches!(p(bad), Err(UpstreamError::BadUrl(_))), "{bad}");
        }
    }
}
