//! Working together: file claims ([`claims`]), the shared board ([`board`]) and the search
//! over a session's mail with receipts ([`search`]). This module owns `<data>/claims/` and
//! `<data>/board/`; it reads, never writes, messages and read state.
//!
//! Shared rules, here once: folders are made 0700 and files 0600 whatever the umask; a file
//! is written whole or not at all (temporary file, fsync, rename, folder fsync); a folder's
//! lock is taken with a bounded wait ([`DirLock`]), never a blocking `flock`.

pub mod board;
pub mod claims;
pub mod search;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Local};

use crate::error::{Error, Result};
use crate::fsx::{self, sync_dir};

/// How long a writer waits for a folder's lock before it gives up with an error.
pub const LOCK_WAIT: Duration = fsx::LOCK_WAIT;

/// Makes `dir` (and missing parents) private ([`fsx::private_dir`]: 0700 whatever the umask).
pub fn private_dir(dir: &Path) -> Result<()> {
    fsx::private_dir(dir)
}

/// Writes `bytes` to `dir/name` with the one atomic, durable, private write ([`fsx::write_atomic`]).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    fsx::write_atomic(&dir.join(name), bytes)
}

/// Removes `path`; a file already gone is no error. The folder is fsync'ed after.
pub fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(Error::io("removing", path)(err)),
    }
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// An exclusive lock on `<dir>/.lock`, held until dropped: the shared bounded lock
/// ([`fsx::FileLock`]).
pub struct DirLock {
    _lock: fsx::FileLock,
}

impl DirLock {
    /// Takes the lock, trying again with a growing pause; after [`LOCK_WAIT`] gives up with
    /// an error naming the lock file. Never blocks on another process for longer.
    pub fn take(dir: &Path) -> Result<DirLock> {
        Self::take_within(dir, LOCK_WAIT)
    }

    pub fn take_within(dir: &Path, wait: Duration) -> Result<DirLock> {
        Ok(DirLock {
            _lock: fsx::FileLock::take(&dir.join(".lock"), wait)?,
        })
    }
}

/// The regular files `*.md` directly in `dir` (no links, no dot files), by name.
fn md_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(Error::io("listing", dir)(err)),
    };
    let mut out = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || !name.ends_with(".md") {
            continue;
        }
        // DirEntry::file_type does not follow links.
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads a small regular file without following a link or blocking on a FIFO; `None` (with a
/// warning) when it is not one, is larger than `max`, or is not UTF-8.
fn read_small(path: &Path, max: u64) -> Option<String> {
    read_small_with_meta(path, max).map(|(text, _)| text)
}

/// [`read_small`], with what `stat` said of the very file read.
fn read_small_with_meta(path: &Path, max: u64) -> Option<(String, fs::Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > max {
        tracing::warn!(file = %path.display(), "skipped: not a regular file, or too large");
        return None;
    }
    let mut text = String::new();
    use std::io::Read;
    match file.take(max).read_to_string(&mut text) {
        Ok(_) => Some((text, meta)),
        Err(err) => {
            tracing::warn!(file = %path.display(), %err, "skipped: unreadable");
            None
        }
    }
}

/// Splits `---\n<yaml>\n---\n<body>` into the YAML and the body (without its leading blank
/// line).
fn split_front(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix("---\n")?;
    let end = rest.find("\n---\n")?;
    let body = &rest[end + 5..];
    Some((&rest[..end + 1], body.strip_prefix('\n').unwrap_or(body)))
}

/// A time as the coordination files store it: RFC 3339 with the local offset, to the second.
fn stamp(t: DateTime<Local>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

fn parse_stamp(s: &str) -> Option<DateTime<Local>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Local))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    #[test]
    fn a_held_lock_gives_up_in_time_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::take(dir.path()).unwrap();
        let started = Instant::now();
        let err = DirLock::take_within(dir.path(), Duration::from_millis(100))
            .err()
            .expect("the lock is held");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(err.to_string().contains(".lock"), "{err}");
        drop(held);
        DirLock::take_within(dir.path(), Duration::from_millis(100)).unwrap();
    }

    #[test]
    fn files_and_folders_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        // SAFETY: umask only changes this process's mode mask; restored below.
        let old = unsafe { libc::umask(0o000) };
        let made = private_dir(&sub).and_then(|()| write_atomic(&sub, "x.md", b"hi"));
        unsafe { libc::umask(old) };
        made.unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&sub.join("x.md")), 0o600);
        assert_eq!(fs::read(sub.join("x.md")).unwrap(), b"hi");
    }
}
