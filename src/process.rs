//! Other processes on this machine: whether a pid runs, and the chain of parents above one.

/// The pids from `pid` up, nearest first: `pid`, its parent, grandparent, …, at most `max`,
/// ending before pid 1. A loop in what the system reports (a pid seen twice) ends the walk.
pub fn ancestors_from(pid: u32, max: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let mut pid = pid;
    while pid > 1 && out.len() < max && !out.contains(&pid) {
        out.push(pid);
        match parent_of(pid) {
            Some(parent) => pid = parent,
            None => break,
        }
    }
    out
}

/// The parent of `pid`, from `/proc/<pid>/stat`.
#[cfg(target_os = "linux")]
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may hold spaces and parentheses, so split at the last ')'.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    fields.next()?; // state
    fields.next()?.parse().ok()
}

/// The parent of `pid`, from `ps` (no /proc here).
#[cfg(not(target_os = "linux"))]
fn parent_of(pid: u32) -> Option<u32> {
    let out = std::process::Command::new("ps")
        .args(["-o", "ppid=", "-p", &pid.to_string()])
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// True when a process with this pid exists on this machine.
pub fn pid_running(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only asks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_starts_at_the_pid_and_stops_before_init() {
        let me = std::process::id();
        let up = ancestors_from(me, 64);
        assert_eq!(up.first(), Some(&me));
        assert_eq!(up.get(1), Some(&std::os::unix::process::parent_id()));
        assert!(!up.contains(&1));
        assert_eq!(ancestors_from(me, 1), vec![me]);
        assert!(ancestors_from(1, 8).is_empty());
    }

    #[test]
    fn own_pid_runs() {
        assert!(pid_running(std::process::id()));
        assert!(!pid_running(0));
        assert!(!pid_running(u32::MAX));
    }
}
