//! What the daemon's end-to-end tests share: finding the guest images, models, the
//! `openai` client's Python and the `flexserve` binary (or saying why a test is skipped), a
//! daemon's configuration, and a minimal HTTP/1.1 client.

use crate::{kvm_required, target_dir};
use flexserve::serve::config::{Config, StartMode};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use vmm::hypervisor::IsolationLevel;

pub const DEFAULT: &str = "SmolLM2-135M-Instruct.Q4_1";
pub const TINY: &str = "tiny.Q8_0";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Says why a test cannot run here and skips it, or fails it when KVM tests are required.
pub fn skip(why: &str) {
    assert!(!kvm_required(), "{why}");
    eprintln!("SKIPPED: {why}");
}

/// The guest images the daemon runs: `$FLEXSERVE_IMAGES` (the arm64 tier's initramfs
/// sets it), else the source tree's `images/out`.
pub fn images() -> PathBuf {
    std::env::var_os("FLEXSERVE_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("images/out"))
}

/// The least isolation the daemon's guest may have: `$FLEXSERVE_MIN_ISOLATION` (the arm64
/// tier sets `protected-vm` on its pKVM host, so a normal VM there fails the test instead
/// of standing in for a protected one), else none.
pub fn min_isolation() -> IsolationLevel {
    match std::env::var("FLEXSERVE_MIN_ISOLATION") {
        Ok(level) => level
            .parse()
            .unwrap_or_else(|e| panic!("FLEXSERVE_MIN_ISOLATION: {e}")),
        Err(_) => IsolationLevel::None,
    }
}

/// Waits (at most 20 s) until `done` holds; fails naming `what` if it never does.
pub fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Whether guests, models and the guest image are here.
pub fn guests_can_run(models: &[&str]) -> bool {
    if !Path::new("/dev/kvm").exists() || !images().join("manifest.json").exists() {
        skip("/dev/kvm or the guest images are missing (run `make image`)");
        return false;
    }
    for m in models {
        if !repo().join(format!("models/{m}.gguf")).exists() {
            skip(&format!("models/{m}.gguf is missing (run `make setup`)"));
            return false;
        }
    }
    true
}

/// The `openai` client's Python (`make test-venv`).
pub fn python() -> Option<PathBuf> {
    let p = repo().join("build/test-venv/bin/python");
    if p.exists() {
        return Some(p);
    }
    skip("build/test-venv is missing (run `make test-venv`)");
    None
}

/// The `flexserve` binary: `$FLEXSERVE_BIN` (`make test` sets it to the binary it built;
/// the arm64 tier's is `/bin/flexserve`), else the release build.
pub fn flexserve_bin() -> Option<PathBuf> {
    let p = std::env::var_os("FLEXSERVE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release/flexserve"));
    if p.exists() {
        return Some(p);
    }
    skip(&format!(
        "{} is missing (run `make flexserve-bin`)",
        p.display()
    ));
    None
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flexserve-serve-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `limits.batch` for the tests' daemons: on, unless `$FLEXSERVE_TEST_BATCH` is `0` (the
/// scheduling tests then check the one-at-a-time path on a guest that batches).
pub fn batch_by_default() -> bool {
    std::env::var("FLEXSERVE_TEST_BATCH").map_or(true, |v| v != "0")
}

pub fn config(dir: &Path, model: &str, context: u32, queue_depth: usize) -> Config {
    Config {
        socket: dir.join("flexserve.sock"),
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        images: Some(images()),
        start: StartMode::Startup,
        // The tests run on hosts without guest_memfd too; the level is checked elsewhere.
        min_isolation: min_isolation(),
        models_dir: repo().join("models"),
        default_model: model.into(),
        context,
        queue_depth,
        batch: batch_by_default(),
        ..Config::default()
    }
}

/// An HTTP answer read to the end (the request asked to close the connection).
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

pub fn request(stream: &mut impl Write, method: &str, path: &str, body: &str) {
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
}

pub fn read_reply(mut stream: impl Read) -> Reply {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

impl Reply {
    /// The body without chunked transfer encoding's framing, if the answer used it.
    pub fn unchunked(&self) -> String {
        if !self.head.contains("transfer-encoding: chunked") {
            return self.body.clone();
        }
        let (mut rest, mut out) = (self.body.as_str(), String::new());
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16)
                .unwrap_or_else(|e| panic!("bad chunk size {size:?}: {e}"));
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..]
                .strip_prefix("\r\n")
                .expect("a chunk ends in CRLF");
        }
        out
    }

    /// A chat completion's text, whole (`stream` false) or joined from its streamed
    /// deltas; panics on an error status or an error event.
    pub fn chat_text(&self, stream: bool) -> String {
        assert_eq!(self.status, 200, "{}", self.body);
        if !stream {
            let v = self.json();
            return v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_else(|| panic!("no content: {v}"))
                .to_string();
        }
        let body = self.unchunked();
        assert!(
            body.contains("data: [DONE]"),
            "the stream did not end: {body}"
        );
        let mut text = String::new();
        for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if data == "[DONE]" {
                break;
            }
            let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
            assert!(v["error"].is_null(), "an error event: {v}");
            text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
        text
    }
}

/// Everything left on the connection, as text.
pub fn read_rest(mut stream: impl Read) -> String {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    request(&mut s, method, path, body);
    read_reply(s)
}

pub fn chat_body(model: &str, prompt: &str, max_tokens: u32, extra: &str) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"{prompt}"}}],"temperature":0,"max_tokens":{max_tokens}{extra}}}"#
    )
}

/// The content of a greedy 8-token chat answer from `model` to "Hello there" (`extra`: more
/// request fields, each with its leading comma); a status other than 200 fails the test.
pub fn chat_answer(addr: SocketAddr, model: &str, extra: &str) -> String {
    let r = http(
        addr,
        "POST",
        "/v1/chat/completions",
        &chat_body(model, "Hello there", 8, extra),
    );
    assert_eq!(r.status, 200, "{model} {extra}: {}", r.body);
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .expect("an answer")
        .to_string()
}

/// Reads a streamed answer until its first content chunk has arrived.
pub fn read_until_first_token(s: &mut impl Read) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"content\":\"")
        || String::from_utf8_lossy(&seen).matches("data: ").count() < 2
    {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// `flexserve run`'s text for a greedy request (stdout less the final newline).
pub fn flexserve_run(bin: &Path, model: &str, prompt: &str, n: u32, raw: bool) -> String {
    let mut cmd = Command::new(bin);
    cmd.current_dir(repo())
        .args(["run", "-m", &format!("models/{model}.gguf")]);
    cmd.args(["--temperature", "0", "--ctx", "512", "-n", &n.to_string()]);
    if raw {
        cmd.arg("--raw");
    }
    let out = cmd.arg(prompt).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `flexserve proxy` process, killed when dropped (also when a test fails).
pub struct ProxyProcess {
    pub port: u16,
    child: Child,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bin proxy` on a free loopback port in front of `upstream` (`unix:…` or
/// `http://…`) and waits until it listens (it fetches the guest's key first).
pub fn start_proxy(bin: &Path, upstream: &str) -> ProxyProcess {
    let port = free_port();
    let child = Command::new(bin)
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", upstream])
        .spawn()
        .expect("start flexserve proxy");
    let mut p = ProxyProcess { port, child };
    for _ in 0..1200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return p;
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("flexserve proxy exited before it listened: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("flexserve proxy did not listen on port {port} within a minute");
}

pub fn run_client(python: &Path, args: &[&str]) -> Value {
    let out = Command::new(python)
        .arg(repo().join("tests/serve_client.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "serve_client.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

/// The ids of `model`'s vocabulary whose bytes are `bytes`.
pub fn ids_with_bytes(model: &str, bytes: &[u8]) -> Vec<u32> {
    use inference_guest::gguf::Gguf;
    use inference_guest::tokenizer::Tokenizer;
    let file = std::fs::read(repo().join(format!("models/{model}.gguf"))).unwrap();
    let t = Tokenizer::from_gguf(&Gguf::parse(&file).unwrap()).unwrap();
    (0..t.n_vocab() as u32)
        .filter(|&id| t.token_bytes(id) == bytes)
        .collect()
}

/// A models directory with the shared models (linked) and, beside them, `name`: a copy of
/// the shared model `from` whose `tokenizer.chat_template` is `template` (a family name,
/// such as `mistral-v3`), for a template family no shared model has.
pub fn models_with_template(dir: &Path, from: &str, name: &str, template: &str) -> PathBuf {
    use inference_guest::gguf::Gguf;
    use inference_guest::gguf::writer::GgufWriter;
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    for entry in std::fs::read_dir(repo().join("models")).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), models.join(entry.file_name())).unwrap();
    }
    let bytes = std::fs::read(repo().join(format!("models/{from}.gguf"))).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let mut w = match g.get("general.alignment") {
        Some(_) => GgufWriter::with_alignment(g.alignment() as u32).unwrap(),
        None => GgufWriter::new(),
    };
    for (key, value) in g.metadata() {
        if !matches!(*key, "general.alignment" | "tokenizer.chat_template") {
            w.add(key, value).unwrap();
        }
    }
    w.add_str("tokenizer.chat_template", template).unwrap();
    for t in g.tensors() {
        w.add_tensor(t.name, t.ty, &t.dims, t.data.to_vec())
            .unwrap();
    }
    let file = std::fs::File::create(models.join(format!("{name}.gguf"))).unwrap();
    w.write_to(std::io::BufWriter::new(file)).unwrap();
    models
}
