//! Process facts from Linux `/proc` and resource limits.
//!
//! [`rss_kib`] reads `VmRSS` from `/proc/PID/status`: the memory bound
//! checks of the flow-window and concurrency tests use it. [`cpu_time`]
//! reads user + system CPU time from `/proc/PID/stat`. [`raise_nofile`]
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

/// User + system CPU time `pid` has used so far (`utime` + `stime` of
/// `/proc/PID/stat`), or `None` if the process is gone.
pub fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields from the last ')'. utime and stime are fields 14, 15.
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as u64 } else { 100 };
    Some(std::time::Duration::from_nanos(
        (utime + stime).saturating_mul(1_000_000_000) / ticks,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_facts() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1, "keep the loop");
        assert!(cpu_time(me).is_some());
        assert!(cpu_time(u32::MAX).is_none());
    }
}
