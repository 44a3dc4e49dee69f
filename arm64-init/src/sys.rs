//! The few raw system calls of PID 1: mounts, the memlock limit, the loopback interface,
//! power-off.

use crate::error::Error;
use std::ffi::CString;

/// Mounts `fstype` on `target` (created if missing); an already mounted target is fine.
pub fn mount(fstype: &str, target: &str) -> Result<(), Error> {
    std::fs::create_dir_all(target).map_err(|source| Error::Sys {
        what: format!("mkdir {target}"),
        source,
    })?;
    let (src, tgt, fs) = (cstr(fstype)?, cstr(target)?, cstr(fstype)?);
    // SAFETY: the three pointers are NUL-terminated strings that outlive the call; a null
    // `data` is allowed and the flags are plain bits.
    let r = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EBUSY) {
        return Err(Error::last_os(format!("mount {fstype} on {target}")));
    }
    Ok(())
}

/// RLIMIT_MEMLOCK to infinity: pKVM pins (and charges) all of a protected VM's memory.
pub fn unlimit_memlock() -> Result<(), Error> {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `lim` is a valid rlimit that the kernel only reads during the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        return Err(Error::last_os("setrlimit(RLIMIT_MEMLOCK, infinity)"));
    }
    Ok(())
}

/// Brings `lo` up: nothing else configures networking in the initramfs, and the daemon's
/// tests talk to it (and `flexserve proxy` to them) over 127.0.0.1.
pub fn loopback_up() -> Result<(), Error> {
    // SAFETY: socket takes no pointers; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::last_os("socket(AF_INET) to configure lo"));
    }
    // SAFETY: ifreq is plain data, valid all zero.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: `req` is a NUL-terminated interface name and flags, read by the kernel during
    // the call; `fd` is the socket just opened.
    let r = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req) };
    let err = (r != 0).then(|| Error::last_os("SIOCSIFFLAGS lo up"));
    // SAFETY: `fd` is ours and not used after.
    unsafe { libc::close(fd) };
    err.map_or(Ok(()), Err)
}

/// Flushes the file systems and powers the machine off (QEMU then exits). Returns only if
/// the kernel refused.
pub fn power_off() -> Error {
    // SAFETY: sync and reboot take no pointers; RB_POWER_OFF needs CAP_SYS_BOOT, which PID 1
    // holds; on success the call does not return.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    Error::last_os("reboot(RB_POWER_OFF)")
}

/// Reaps every exited child without waiting, when this process is PID 1 (which inherits the
/// orphans of the checks); elsewhere it could steal the status of a child someone waits for.
pub fn reap_orphans() {
    if std::process::id() != 1 {
        return;
    }
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer for the call; WNOHANG never blocks.
    while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
}

/// Sends SIGKILL to the process group `pgid` (a timed-out check and its children).
pub fn kill_group(pgid: u32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    // SAFETY: kill takes no pointers; a negative pid names a process group, and a group
    // that is already gone only yields ESRCH.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

fn cstr(s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Sys {
        what: format!("{s:?} contains a NUL byte"),
        source: std::io::ErrorKind::InvalidInput.into(),
    })
}
