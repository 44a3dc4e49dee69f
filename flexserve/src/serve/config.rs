//! The daemon's configuration: a TOML file (`--config`, default
//! `/etc/flexserve/flexserve.toml`) with command-line flags on top. Unknown keys and bad
//! values are errors that name the key.

use super::config_access::{Access, AuthSection, HttpSection, ServerSection};
use super::conn_limits::ConnLimits;
use super::deadlines::DeadlineSettings;
use super::keep_alive::{KeepAlive, KeepAliveSetting};
use super::workflows::{WorkflowSection, Workflows};
use crate::size::parse_size;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmm::hypervisor::{IsolationLevel, UnknownIsolationLevel};

/// Where the daemon reads its configuration when `--config` is not given (a missing file
/// there means "all defaults").
pub const DEFAULT_CONFIG: &str = "/etc/flexserve/flexserve.toml";
/// The Unix socket clients connect to by default.
pub const DEFAULT_SOCKET: &str = "/run/flexserve/flexserve.sock";
/// Where the daemon looks for `*.gguf` files by default.
pub const DEFAULT_MODELS_DIR: &str = "/var/lib/flexserve/models";
/// The model booted at startup (a file name in the models directory, without `.gguf`).
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Bad { key: &'static str, message: String },
    #[error(
        "config key `listen.tcp`: {addr} is not a loopback address; set \
         `listen.allow_non_loopback = true` to expose the API beyond this machine"
    )]
    NotLoopback { addr: SocketAddr },
    #[error(
        "config key `listen.tcp`: {addr} is not a loopback address, and no `[[auth.keys]]` \
         are configured: beyond this machine every request needs an API key \
         (`flexserve api-key new --name NAME`)"
    )]
    NoKeys { addr: SocketAddr },
}

/// When the guest VM boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// At startup, with the default model (READY=1 waits for it).
    Startup,
    /// On the first request.
    Lazy,
}

/// How the guest chooses between restoring an evicted KV cache and evaluating its tokens
/// again (`guest.kv_restore`); the forced choices exist for tests and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvRestoreMode {
    /// Per request, by the guest's predictions for the cache's length from what it
    /// measured (`guest-service/src/service/kv_cost.rs`).
    Measured,
    Restore,
    Recompute,
}

impl KvRestoreMode {
    fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "measured" => Ok(Self::Measured),
            "restore" => Ok(Self::Restore),
            "recompute" => Ok(Self::Recompute),
            _ => Err(bad(
                "guest.kv_restore",
                format!("must be \"measured\", \"restore\" or \"recompute\", not {s:?}"),
            )),
        }
    }
}

/// Everything the daemon runs with, checked.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Unix socket to create (ignored under socket activation).
    pub socket: PathBuf,
    /// Its permission bits.
    pub socket_mode: u32,
    /// An optional TCP listener (loopback unless `allow_non_loopback`).
    pub tcp: Option<SocketAddr>,
    /// Whether a TCP listener may be beyond loopback (then API keys are required too).
    pub allow_non_loopback: bool,
    pub vcpus: u8,
    /// The most private memory one guest may have, bytes.
    pub memory_max: u64,
    /// Guest image directory (default: as `flexserve run`).
    pub images: Option<PathBuf>,
    pub start: StartMode,
    /// Refuse to serve from a guest isolated less than this (fails closed by default).
    pub min_isolation: IsolationLevel,
    /// Let the guest keep closed sessions' KV caches for prompts that start the same way.
    pub kv_reuse: bool,
    /// The layer-prefix cache (`[guest.layer_prefix]`).
    pub layer_prefix: super::layer_prefix::LayerPrefixConfig,
    /// How the guest chooses between restoring an evicted KV cache and recomputing it.
    pub kv_restore: KvRestoreMode,
    /// The development key root's file (default: `$FLEXSERVE_KEY_ROOT`, else under the
    /// XDG data directory), from which guests derive the keys that unseal `.fsm` models.
    pub key_root: Option<PathBuf>,
    pub models_dir: PathBuf,
    pub default_model: String,
    /// Owner keys whose signed sealed models the guest accepts; empty: any owner whose
    /// signature verifies.
    pub accepted_owners: Vec<sealed_model::OwnerPublicKey>,
    /// Context window of each request, tokens (capped at the model's training context).
    pub context: u32,
    /// How long a model stays resident after its last request (a request's `keep_alive`
    /// overrides it); with no model resident the guest stops.
    pub keep_alive: KeepAlive,
    /// Requests waiting for the guest, all clients together; one more is answered 429.
    pub queue_depth: usize,
    /// The largest `max_tokens` a request may ask for.
    pub max_tokens: u32,
    /// `Retry-After` of a 429, seconds.
    pub retry_after_secs: u32,
    /// Requests holding a session in the guest at once (each with its own KV cache),
    /// interleaved slice by slice.
    pub max_active: usize,
    /// Tokens a request generates before it yields the guest to another waiting one.
    pub slice_tokens: u32,
    /// Run the active requests that can be batched together, when the guest batches
    /// (`feature::BATCH`): one forward pass per step for all of them.
    pub batch: bool,
    /// Requests one client may have waiting (default: half the queue), so that no client
    /// can fill the queue alone.
    pub queue_per_client: Option<usize>,
    /// Model checks and tokenizations running at once on blocking threads; more wait.
    pub blocking_tasks: usize,
    /// How long the daemon waits for its guest before it stops and restarts it.
    pub deadlines: DeadlineSettings,
    /// Connection limits and deadlines.
    pub server: ConnLimits,
    /// Host and Origin allow-lists, API keys, Unix-socket users.
    pub access: Access,
    /// Which model an agent asks after which (`[[workflows]]`), for prefetching.
    pub workflows: Workflows,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            socket_mode: 0o660,
            tcp: None,
            allow_non_loopback: false,
            vcpus: 2,
            memory_max: 4 << 30,
            images: None,
            start: StartMode::Startup,
            min_isolation: IsolationLevel::PrivateMemory,
            kv_reuse: true,
            layer_prefix: Default::default(),
            kv_restore: KvRestoreMode::Measured,
            key_root: None,
            accepted_owners: Vec::new(),
            models_dir: DEFAULT_MODELS_DIR.into(),
            default_model: DEFAULT_MODEL.into(),
            context: 2048,
            keep_alive: KeepAlive::default(),
            queue_depth: 64,
            max_tokens: 4096,
            retry_after_secs: 1,
            max_active: 4,
            slice_tokens: 16,
            batch: true,
            queue_per_client: None,
            blocking_tasks: 2,
            deadlines: DeadlineSettings::default(),
            server: ConnLimits::default(),
            access: Access::default(),
            workflows: Workflows::default(),
        }
    }
}

impl Config {
    /// How many requests one client may have waiting.
    pub fn client_share(&self) -> usize {
        self.queue_per_client
            .unwrap_or(self.queue_depth / 2)
            .clamp(1, self.queue_depth)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    listen: ListenSection,
    #[serde(default)]
    guest: GuestSection,
    #[serde(default)]
    models: ModelsSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default)]
    workflows: Vec<WorkflowSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenSection {
    socket: Option<PathBuf>,
    socket_mode: Option<String>,
    tcp: Option<String>,
    allow_non_loopback: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuestSection {
    vcpus: Option<i64>,
    memory_max: Option<String>,
    images: Option<PathBuf>,
    start: Option<String>,
    min_isolation: Option<String>,
    key_root: Option<PathBuf>,
    kv_reuse: Option<bool>,
    layer_prefix: Option<super::layer_prefix::LayerPrefixSection>,
    kv_restore: Option<String>,
    first_token_timeout_seconds: Option<i64>,
    token_timeout_seconds: Option<i64>,
    per_token_timeout_seconds: Option<i64>,
    command_timeout_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsSection {
    accepted_owners: Option<Vec<String>>,
    dir: Option<PathBuf>,
    default: Option<String>,
    context: Option<i64>,
    keep_alive: Option<KeepAliveSetting>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    queue_depth: Option<i64>,
    max_tokens: Option<i64>,
    retry_after_seconds: Option<i64>,
    max_active: Option<i64>,
    slice_tokens: Option<i64>,
    batch: Option<bool>,
    queue_per_client: Option<i64>,
    blocking_tasks: Option<i64>,
}

/// Values given on the command line; each overrides its key in the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub tcp: Option<String>,
    pub vcpus: Option<i64>,
    pub memory_max: Option<String>,
    pub images: Option<PathBuf>,
    pub start: Option<String>,
    pub min_isolation: Option<String>,
    pub models_dir: Option<PathBuf>,
    pub default_model: Option<String>,
    pub context: Option<i64>,
    pub queue_depth: Option<i64>,
}

fn bad(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Bad {
        key,
        message: message.into(),
    }
}

/// `models.default`: a file name in `models.dir`, with or without its extension.
fn model_name(m: &str) -> Result<String, ConfigError> {
    let m = [".gguf", ".fsm"]
        .iter()
        .find_map(|ext| m.strip_suffix(ext))
        .unwrap_or(m);
    if m.is_empty() || m.contains('/') {
        return Err(bad(
            "models.default",
            format!("{m:?} is not a model name (a file name in models.dir, without .gguf or .fsm)"),
        ));
    }
    Ok(m.to_string())
}

fn in_range(key: &'static str, v: i64, lo: i64, hi: i64) -> Result<i64, ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(bad(key, format!("must be between {lo} and {hi}, not {v}")))
    }
}

/// `guest.*_timeout_seconds`: 1 s to a day each.
fn guest_deadlines(g: &GuestSection) -> Result<DeadlineSettings, ConfigError> {
    let secs = |key, v: Option<i64>| -> Result<Option<Duration>, ConfigError> {
        v.map(|v| in_range(key, v, 1, 24 * 3600).map(|v| Duration::from_secs(v as u64)))
            .transpose()
    };
    Ok(DeadlineSettings {
        first_token: secs(
            "guest.first_token_timeout_seconds",
            g.first_token_timeout_seconds,
        )?,
        between_tokens: secs("guest.token_timeout_seconds", g.token_timeout_seconds)?,
        per_token: secs(
            "guest.per_token_timeout_seconds",
            g.per_token_timeout_seconds,
        )?,
        command: secs("guest.command_timeout_seconds", g.command_timeout_seconds)?,
    })
}

impl Config {
    /// Reads `path` (or the default file when it exists) and applies `flags`.
    pub fn load(path: Option<&Path>, flags: &Overrides) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => Some((
                p.to_path_buf(),
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?,
            )),
            None => std::fs::read_to_string(DEFAULT_CONFIG)
                .ok()
                .map(|t| (PathBuf::from(DEFAULT_CONFIG), t)),
        };
        let file = match text {
            Some((path, text)) => {
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path,
                    message: e.to_string().trim_end().to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        Self::from_parts(file, flags)
    }

    /// Parses a configuration from TOML text (no file, no flags).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file = toml::from_str::<FileConfig>(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string().trim_end().to_string(),
        })?;
        Self::from_parts(file, &Overrides::default())
    }

    fn from_parts(f: FileConfig, o: &Overrides) -> Result<Self, ConfigError> {
        let mut c = Config::default();
        if let Some(s) = o.socket.clone().or(f.listen.socket) {
            if s.as_os_str().is_empty() {
                return Err(bad("listen.socket", "must not be empty"));
            }
            c.socket = s;
        }
        if let Some(m) = f.listen.socket_mode {
            c.socket_mode = u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    bad(
                        "listen.socket_mode",
                        format!("{m:?} is not an octal mode like \"0660\""),
                    )
                })?;
        }
        c.allow_non_loopback = f.listen.allow_non_loopback.unwrap_or(false);
        f.server.apply(&mut c.server)?;
        f.http.apply(&mut c.access)?;
        f.auth.apply(&mut c.access)?;
        if let Some(t) = o.tcp.clone().or(f.listen.tcp) {
            let addr: SocketAddr = t.parse().map_err(|_| {
                bad(
                    "listen.tcp",
                    format!("{t:?} is not an address like \"127.0.0.1:8080\""),
                )
            })?;
            c.check_tcp(addr)?;
            c.tcp = Some(addr);
        }
        c.deadlines = guest_deadlines(&f.guest)?;
        c.kv_reuse = f.guest.kv_reuse.unwrap_or(c.kv_reuse);
        c.layer_prefix = f.guest.layer_prefix.unwrap_or_default().into();
        if let Some(m) = &f.guest.kv_restore {
            c.kv_restore = KvRestoreMode::parse(m)?;
        }
        if let Some(v) = o.vcpus.or(f.guest.vcpus) {
            c.vcpus = in_range("guest.vcpus", v, 1, 8)? as u8;
        }
        if let Some(m) = o.memory_max.clone().or(f.guest.memory_max) {
            c.memory_max = parse_size(&m).filter(|b| *b >= 16 << 20).ok_or_else(|| {
                bad(
                    "guest.memory_max",
                    format!("{m:?} is not a size of at least 16M, like \"2G\" or \"1536M\""),
                )
            })?;
        }
        c.images = o.images.clone().or(f.guest.images);
        c.key_root = f.guest.key_root;
        if let Some(s) = o.start.clone().or(f.guest.start) {
            c.start = match s.as_str() {
                "startup" => StartMode::Startup,
                "lazy" => StartMode::Lazy,
                _ => {
                    return Err(bad(
                        "guest.start",
                        format!("must be \"startup\" or \"lazy\", not {s:?}"),
                    ));
                }
            };
        }
        if let Some(l) = o.min_isolation.clone().or(f.guest.min_isolation) {
            c.min_isolation = l
                .parse()
                .map_err(|e: UnknownIsolationLevel| bad("guest.min_isolation", e.to_string()))?;
        }
        if let Some(d) = o.models_dir.clone().or(f.models.dir) {
            c.models_dir = d;
        }
        if let Some(m) = o.default_model.clone().or(f.models.default) {
            c.default_model = model_name(&m)?;
        }
        for key in f.models.accepted_owners.unwrap_or_default() {
            let owner = key.parse().map_err(|e| {
                bad(
                    "models.accepted_owners",
                    format!("{key:?} is not an owner key (64 hex digits): {e}"),
                )
            })?;
            c.accepted_owners.push(owner);
        }
        if let Some(v) = o.context.or(f.models.context) {
            c.context = in_range("models.context", v, 16, 128 * 1024)? as u32;
        }
        if let Some(k) = f.models.keep_alive {
            c.keep_alive = k.parse().map_err(|e| bad("models.keep_alive", e))?;
        }
        if let Some(v) = o.queue_depth.or(f.limits.queue_depth) {
            c.queue_depth = in_range("limits.queue_depth", v, 1, 100_000)? as usize;
        }
        c.apply_limits(f.limits)?;
        c.workflows = Workflows::from_sections(f.workflows)?;
        Ok(c)
    }

    /// A TCP address to listen on: beyond loopback only with consent and API keys (a
    /// socket systemd passes is checked the same way).
    pub fn check_tcp(&self, addr: SocketAddr) -> Result<(), ConfigError> {
        if addr.ip().is_loopback() {
            Ok(())
        } else if !self.allow_non_loopback {
            Err(ConfigError::NotLoopback { addr })
        } else if self.access.keys.is_empty() {
            Err(ConfigError::NoKeys { addr })
        } else {
            Ok(())
        }
    }

    fn apply_limits(&mut self, l: LimitsSection) -> Result<(), ConfigError> {
        let c = self;
        if let Some(v) = l.queue_per_client {
            c.queue_per_client =
                Some(in_range("limits.queue_per_client", v, 1, c.queue_depth as i64)? as usize);
        }
        if let Some(v) = l.blocking_tasks {
            c.blocking_tasks = in_range("limits.blocking_tasks", v, 1, 64)? as usize;
        }
        if let Some(v) = l.max_tokens {
            c.max_tokens = in_range("limits.max_tokens", v, 1, 128 * 1024)? as u32;
        }
        if let Some(v) = l.retry_after_seconds {
            c.retry_after_secs = in_range("limits.retry_after_seconds", v, 1, 3600)? as u32;
        }
        if let Some(v) = l.max_active {
            c.max_active = in_range("limits.max_active", v, 1, 16)? as usize;
        }
        if let Some(v) = l.slice_tokens {
            c.slice_tokens = in_range("limits.slice_tokens", v, 1, 128 * 1024)? as u32;
        }
        if let Some(b) = l.batch {
            c.batch = b;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
