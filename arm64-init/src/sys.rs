//! The few raw system calls of PID 1: mounts, the memlock limit, power-off.

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
