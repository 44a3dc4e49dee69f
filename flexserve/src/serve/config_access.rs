//! The config sections that decide who may talk to the daemon and how much room a
//! connection takes: `[server]` (connection limits), `[http]` (Host and Origin allow-lists)
//! and `[auth]` (API keys, Unix-socket user ids). Parsed here, checked like the rest of the
//! config (errors name the key).

use super::auth::ApiKey;
use super::config::ConfigError;
use super::conn_limits::ConnLimits;
use serde::Deserialize;
use std::time::Duration;

/// Who may send requests, and from where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// `Host` names (or `name:port`) accepted on TCP besides loopback's and the listen
    /// address's: what stops DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`scheme://host[:port]`) allowed cross-origin requests; empty: none.
    pub cors_origins: Vec<String>,
    /// API keys; when any, every TCP request needs one.
    pub keys: Vec<ApiKey>,
    /// Unix-socket users allowed; empty: whoever can open the socket.
    pub unix_uids: Vec<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerSection {
    max_connections: Option<i64>,
    header_timeout_seconds: Option<i64>,
    idle_timeout_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HttpSection {
    allowed_hosts: Option<Vec<String>>,
    cors_origins: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthSection {
    keys: Option<Vec<KeyEntry>>,
    unix_uids: Option<Vec<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    sha256: String,
}

fn bad(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Bad {
        key,
        message: message.into(),
    }
}

fn seconds(key: &'static str, v: i64) -> Result<Duration, ConfigError> {
    if (1..=3600).contains(&v) {
        Ok(Duration::from_secs(v as u64))
    } else {
        Err(bad(
            key,
            format!("must be between 1 and 3600 seconds, not {v}"),
        ))
    }
}

impl ServerSection {
    pub(super) fn apply(self, to: &mut ConnLimits) -> Result<(), ConfigError> {
        if let Some(v) = self.max_connections {
            if !(1..=65_536).contains(&v) {
                return Err(bad(
                    "server.max_connections",
                    format!("must be between 1 and 65536, not {v}"),
                ));
            }
            to.max_connections = v as usize;
        }
        if let Some(v) = self.header_timeout_seconds {
            to.header_timeout = seconds("server.header_timeout_seconds", v)?;
        }
        if let Some(v) = self.idle_timeout_seconds {
            to.idle_timeout = seconds("server.idle_timeout_seconds", v)?;
        }
        Ok(())
    }
}

/// A host name as the `Host` check compares it: lower case, no trailing dot.
pub fn normal_host(h: &str) -> String {
    h.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl HttpSection {
    pub(super) fn apply(self, to: &mut Access) -> Result<(), ConfigError> {
        for h in self.allowed_hosts.unwrap_or_default() {
            if h.is_empty() || h.contains(['/', ' ', '@']) {
                return Err(bad(
                    "http.allowed_hosts",
                    format!("{h:?} is not a host name or host:port"),
                ));
            }
            to.allowed_hosts.push(normal_host(&h));
        }
        for o in self.cors_origins.unwrap_or_default() {
            let o = o.trim_end_matches('/').to_ascii_lowercase();
            let scheme_ok = o.starts_with("http://") || o.starts_with("https://");
            if !scheme_ok || o.splitn(4, '/').nth(3).is_some() {
                return Err(bad(
                    "http.cors_origins",
                    format!("{o:?} is not an origin like \"https://app.example\""),
                ));
            }
            to.cors_origins.push(o);
        }
        Ok(())
    }
}

impl AuthSection {
    pub(super) fn apply(self, to: &mut Access) -> Result<(), ConfigError> {
        for k in self.keys.unwrap_or_default() {
            let key =
                ApiKey::parse(&k.name, &k.sha256).map_err(|e| bad("auth.keys", e.to_string()))?;
            if to.keys.iter().any(|other| other.name == key.name) {
                let e = super::auth::KeyError::Duplicate(key.name);
                return Err(bad("auth.keys", e.to_string()));
            }
            to.keys.push(key);
        }
        for uid in self.unix_uids.unwrap_or_default() {
            let uid = u32::try_from(uid)
                .map_err(|_| bad("auth.unix_uids", format!("{uid} is not a user id")))?;
            to.unix_uids.push(uid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::Config;

    #[test]
    fn access_and_server_sections_parse() {
        let digest = "ab".repeat(32);
        let c = Config::from_toml(&format!(
            "[server]\nmax_connections = 10\nheader_timeout_seconds = 2\nidle_timeout_seconds = 3\n\
             [http]\nallowed_hosts = [\"Box.Example.\", \"10.0.0.2:8080\"]\n\
             cors_origins = [\"https://app.example/\"]\n\
             [auth]\nunix_uids = [1000]\n[[auth.keys]]\nname = \"alice\"\nsha256 = \"{digest}\"\n"
        ))
        .unwrap();
        assert_eq!(c.server.max_connections, 10);
        assert_eq!(c.server.header_timeout.as_secs(), 2);
        assert_eq!(c.server.idle_timeout.as_secs(), 3);
        assert_eq!(c.access.allowed_hosts, ["box.example", "10.0.0.2:8080"]);
        assert_eq!(c.access.cors_origins, ["https://app.example"]);
        assert_eq!(c.access.keys[0].name, "alice");
        assert_eq!(c.access.unix_uids, [1000]);
    }

    #[test]
    fn bad_access_values_name_their_key() {
        let err = |t: &str| Config::from_toml(t).unwrap_err().to_string();
        assert!(err("[server]\nmax_connections = 0").contains("server.max_connections"));
        assert!(err("[server]\nheader_timeout_seconds = 0").contains("header_timeout"));
        assert!(err("[http]\ncors_origins = [\"*\"]").contains("http.cors_origins"));
        assert!(err("[http]\nallowed_hosts = [\"a/b\"]").contains("http.allowed_hosts"));
        let e = err("[[auth.keys]]\nname = \"a\"\nsha256 = \"00\"");
        assert!(e.contains("auth.keys") && e.contains("64 hex"), "{e}");
        assert!(err("[auth]\nunix_uids = [-1]").contains("auth.unix_uids"));
    }

    #[test]
    fn the_packaged_config_says_the_defaults() {
        let c = Config::from_toml(include_str!("../../../packaging/flexserve.toml")).unwrap();
        let d = Config::default();
        assert_eq!(c.server, d.server);
        assert_eq!(c.access, d.access);
        assert_eq!(c.blocking_tasks, d.blocking_tasks);
        assert_eq!(c.keep_alive, d.keep_alive);
        assert_eq!(c.client_share(), d.client_share());
        let deadlines = vmm::guest_vm::Deadlines::GENEROUS;
        assert_eq!(c.deadlines.apply(deadlines), deadlines);
    }
}
