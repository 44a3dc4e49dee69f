//! The daemon under systemd: `make install-units` output passes `systemd-analyze verify`,
//! and the daemon serves on a socket systemd passes it (socket activation, here through
//! `systemd-socket-activate`). Both tools come with Debian's `systemd` package (`make
//! setup`); without them the tests skip, unless `FLEXSERVE_REQUIRE_KVM=1` (CI) makes them
//! fail.

use flexserve_e2e::serve_rig::{flexserve_bin, guests_can_run, repo, skip, temp_dir};
use flexserve_e2e::target_dir;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn tool(name: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/bin", "/usr/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists());
    if found.is_none() {
        skip(&format!(
            "{name} is missing (Debian package systemd; make setup installs it)"
        ));
    }
    found
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let dest = temp_dir("units");
    // ExecStart must name an executable that exists: the one this tree builds (or, before
    // it is built, any binary; the units are what is checked).
    let release = target_dir().join("release");
    let bindir = if release.join("flexserve").exists() {
        release
    } else {
        std::fs::write(dest.join("flexserve"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dest.join("flexserve"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        dest.clone()
    };
    let out = Command::new("make")
        .current_dir(repo())
        .args(["-s", "install-units", "PREFIX=/usr"])
        .arg(format!("DESTDIR={}", dest.display()))
        .arg(format!("BINDIR={}", bindir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let units = dest.join("usr/lib/systemd/system");
    let service = std::fs::read_to_string(units.join("flexserve.service")).unwrap();
    for placeholder in ["@BINDIR@", "@IMAGEDIR@", "@SYSCONFDIR@"] {
        assert!(
            !service.contains(placeholder),
            "{placeholder} left:\n{service}"
        );
    }
    for directive in [
        "Type=notify",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "DeviceAllow=/dev/kvm rw",
    ] {
        assert!(service.contains(directive), "{directive} missing");
    }
    let out = Command::new(analyze)
        .arg("verify")
        .arg(units.join("flexserve.service"))
        .arg(units.join("flexserve.socket"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Complaints about the host's own units are not ours; any about ours fail the test.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("flexserve")).collect();
    assert!(out.status.success() && ours.is_empty(), "{stderr}");
}

#[test]
fn the_daemon_serves_on_a_socket_systemd_passes() {
    let Some(activate) = tool("systemd-socket-activate") else {
        return;
    };
    let Some(bin) = flexserve_bin() else {
        return;
    };
    if !guests_can_run(&["tiny.Q8_0"]) {
        return;
    }
    let dir = temp_dir("activate");
    let socket = dir.join("api.sock");
    let mut child = Command::new(activate)
        .arg("-l")
        .arg(&socket)
        .arg(&bin)
        .args([
            "serve",
            "--start",
            "lazy",
            "--model",
            "tiny.Q8_0",
            "--ctx",
            "256",
            "--min-isolation",
            "none",
        ])
        .arg("--models-dir")
        .arg(repo().join("models"))
        .arg("--images")
        .arg(repo().join("images/out"))
        // The daemon must not create a socket of its own.
        .arg("--socket")
        .arg(dir.join("not-used.sock"))
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !socket.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let body = r#"{"model":"tiny.Q8_0","prompt":"Hi","max_tokens":3,"temperature":0}"#;
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"completion_tokens\":3"), "{reply}");
    assert!(!dir.join("not-used.sock").exists());
    assert!(status.success(), "{status}");
}

#[test]
fn a_socket_systemd_passes_beyond_loopback_is_refused_without_keys() {
    let Some(activate) = tool("systemd-socket-activate") else {
        return;
    };
    let Some(bin) = flexserve_bin() else {
        return;
    };
    if !guests_can_run(&["tiny.Q8_0"]) {
        return;
    }
    // A free port on every address, as a unit with `ListenStream=8080` would pass.
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = temp_dir("activate-open");
    let mut child = Command::new(activate)
        .arg("-l")
        .arg(format!("0.0.0.0:{port}"))
        .arg(&bin)
        .args(["serve", "--start", "lazy", "--min-isolation", "none"])
        .arg("--models-dir")
        .arg(repo().join("models"))
        .arg("--images")
        .arg(repo().join("images/out"))
        .arg("--socket")
        .arg(dir.join("not-used.sock"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // systemd-socket-activate starts the daemon on the first connection.
    let start = Instant::now();
    let _conn = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(10), "{e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("0.0.0.0") && stderr.contains("not a loopback address"),
        "{stderr}"
    );
}
