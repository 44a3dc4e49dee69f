//! Where the daemon listens: the Unix socket it creates (mode from the config), an
//! optional TCP address, or the sockets systemd passes (socket activation, `LISTEN_FDS`).
//! Each accepted connection gets a number (`server.rs`), which the scheduler uses to take
//! turns.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A listener that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot create the socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotSocket { path: PathBuf },
    #[error("cannot listen on {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
}

/// The number of an accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnId(pub u64);

/// The listening sockets, still std (tokio takes them inside the runtime).
pub enum Socket {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

/// The addresses of the TCP sockets among `sockets`.
pub fn tcp_addrs(sockets: &[Socket]) -> Vec<std::net::SocketAddr> {
    sockets
        .iter()
        .filter_map(|s| match s {
            Socket::Tcp(l) => l.local_addr().ok(),
            Socket::Unix(_) => None,
        })
        .collect()
}

/// The sockets systemd passed, when `LISTEN_PID` is this process.
pub fn activated() -> Vec<Socket> {
    let pid = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok());
    let n = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok());
    let (Some(pid), Some(n)) = (pid, n) else {
        return Vec::new();
    };
    if pid != std::process::id() {
        return Vec::new();
    }
    (0..n.clamp(0, 16))
        .map(|i| {
            // SAFETY: systemd passes the listening sockets as fds 3..3+LISTEN_FDS to the
            // process named by LISTEN_PID (checked above: this one); nothing else in the
            // process opened or owns them, and each is taken exactly once here.
            let fd = unsafe { OwnedFd::from_raw_fd(3 + i) };
            let tcp = std::net::TcpListener::from(fd);
            // A Unix socket has no IP address: it is the other kind.
            if tcp.local_addr().is_ok() {
                Socket::Tcp(tcp)
            } else {
                Socket::Unix(std::os::unix::net::UnixListener::from(OwnedFd::from(tcp)))
            }
        })
        .collect()
}

/// Creates the Unix socket at `path` with permission bits `mode` (a stale socket from an
/// earlier run is replaced).
pub fn unix(path: &Path, mode: u32) -> Result<std::os::unix::net::UnixListener, ListenError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ListenError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ListenError::NotSocket {
                path: path.to_path_buf(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| ListenError::Bind {
        what: path.display().to_string(),
        source,
    };
    let l = std::os::unix::net::UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    Ok(l)
}

/// Listens on `addr`.
pub fn tcp(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, ListenError> {
    std::net::TcpListener::bind(addr).map_err(|source| ListenError::Bind {
        what: addr.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_gets_its_mode_and_replaces_a_stale_one() {
        let dir = std::env::temp_dir().join(format!("flexserve-listen-{}", std::process::id()));
        let path = dir.join("sub/s.sock");
        let l = unix(&path, 0o600).unwrap();
        drop(l);
        let l = unix(&path, 0o660).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(l);
        std::fs::write(dir.join("file"), b"x").unwrap();
        assert!(matches!(
            unix(&dir.join("file"), 0o660),
            Err(ListenError::NotSocket { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
