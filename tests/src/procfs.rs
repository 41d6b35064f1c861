//! Process facts from Linux `/proc` and resource limits.
//!
//! [`rss_kib`] reads `VmRSS` from `/proc/PID/status`: the memory bound
//! checks of the flow-window and concurrency tests use it. [`raise_nofile`]
//! lifts this process's open-file soft limit (children inherit it) before a
//! test opens thousands of sockets.

/// Resident set size of `pid` in KiB (`VmRSS`), or `None` if the process
/// is gone or the field is missing.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field_kib(pid, "VmRSS:")
}

/// Peak resident set size of `pid` in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_field_kib(pid, "VmHWM:")
}

/// Number of threads of `pid`.
pub fn threads(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("Threads:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn status_field_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Raises the soft RLIMIT_NOFILE to at least `want` (capped by the hard
/// limit). Returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < want {
            let new = libc::rlimit {
                rlim_cur: want.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 {
                lim = new;
            }
        }
    }
    lim.rlim_cur
}

/// Sends signal `sig` to `pid`. Errors (e.g. no such process) are returned.
pub fn signal(pid: u32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) with a PID we started.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
