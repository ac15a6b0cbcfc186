//! Discovery: `heartbeats.json` changed only under the exclusive lock on `heartbeats.lock`;
//! liveness is a pure function of an entry, the time and whether its pid runs.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Local, NaiveDateTime, TimeDelta, TimeZone};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::mailbox::{random_uid, sync_dir};
use crate::message::TIME_FORMAT;

/// Entries older than this are stale whatever their pid says.
pub const STALE_AFTER: TimeDelta = TimeDelta::hours(24);

/// One session's line in `heartbeats.json`. Unknown fields written by others are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub timestamp: String,
    #[serde(default)]
    pub status: String,
    pub pid: u32,
    #[serde(default)]
    pub working_on: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Entry {
    /// When this entry was last refreshed, if its timestamp parses.
    pub fn last_seen(&self) -> Option<DateTime<Local>> {
        let t = self.timestamp.trim();
        if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
            return Some(dt.with_timezone(&Local));
        }
        ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
            .and_then(|n| Local.from_local_datetime(&n).earliest())
    }
}

/// True while an entry counts as a live session: not signing off, refreshed within
/// [`STALE_AFTER`], and its process still runs.
pub fn is_alive(entry: &Entry, now: DateTime<Local>, pid_running: bool) -> bool {
    entry.status != "signing-off"
        && pid_running
        && entry
            .last_seen()
            .is_some_and(|seen| now.signed_duration_since(seen) < STALE_AFTER)
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

/// The heartbeats file of a mailbox root.
pub struct Heartbeats {
    path: PathBuf,
    lock_path: PathBuf,
}

pub type Table = BTreeMap<String, Entry>;

impl Heartbeats {
    pub fn new(root: &Path) -> Heartbeats {
        Heartbeats {
            path: root.join("heartbeats.json"),
            lock_path: root.join("heartbeats.lock"),
        }
    }

    /// Reads the table without the lock (writers replace the file by rename, so a reader
    /// sees a whole file). A missing or corrupt file reads as empty.
    pub fn read(&self) -> Table {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Table::new(),
            Err(err) => {
                tracing::warn!(file = %self.path.display(), %err, "cannot read heartbeats; treating as empty");
                return Table::new();
            }
        };
        parse_table(&text, &self.path)
    }

    /// The live entries, by name.
    pub fn live(&self, now: DateTime<Local>) -> Table {
        self.read()
            .into_iter()
            .filter(|(_, e)| is_alive(e, now, pid_running(e.pid)))
            .collect()
    }

    /// Runs `change` on the table under the exclusive lock, after dropping entries that are
    /// no longer alive, then writes the table back atomically.
    pub fn update<R>(
        &self,
        now: DateTime<Local>,
        change: impl FnOnce(&mut Table) -> R,
    ) -> Result<R> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(Error::io("opening", &self.lock_path))?;
        lock.lock().map_err(Error::io("locking", &self.lock_path))?;
        let mut table = self.read();
        table.retain(|name, e| {
            let keep = is_alive(e, now, pid_running(e.pid));
            if !keep {
                tracing::debug!(session = %name, pid = e.pid, "removed a stale heartbeat");
            }
            keep
        });
        let result = change(&mut table);
        let written = self.write(&table);
        // Closing the file releases the lock too; unlocking first makes the order plain.
        let _ = lock.unlock();
        written.map(|()| result)
    }

    fn write(&self, table: &Table) -> Result<()> {
        // Serialising plain strings, numbers and JSON values cannot fail.
        let mut text = serde_json::to_string_pretty(table).expect("heartbeats serialise");
        text.push('\n');
        let tmp = self
            .path
            .with_file_name(format!("heartbeats.json.tmp.{}", random_uid()));
        let result = File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .map_err(Error::io("writing", &tmp))
            .and_then(|()| fs::rename(&tmp, &self.path).map_err(Error::io("renaming", &tmp)));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

/// Parses `heartbeats.json`; entries that do not fit are dropped with a warning.
fn parse_table(text: &str, path: &Path) -> Table {
    if text.trim().is_empty() {
        return Table::new();
    }
    let raw: Map<String, Value> = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(err) => {
            tracing::warn!(file = %path.display(), %err, "heartbeats.json is corrupt; treating it as empty");
            return Table::new();
        }
    };
    raw.into_iter()
        .filter_map(|(name, value)| match serde_json::from_value::<Entry>(value) {
            Ok(entry) => Some((name, entry)),
            Err(err) => {
                tracing::warn!(session = %name, %err, "ignored a heartbeat entry that does not parse");
                None
            }
        })
        .collect()
}

/// Formats a time the way `heartbeats.json` and message files store it.
pub fn stamp(now: DateTime<Local>) -> String {
    now.format(TIME_FORMAT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(timestamp: &str, status: &str) -> Entry {
        Entry {
            timestamp: timestamp.into(),
            status: status.into(),
            pid: 1,
            working_on: String::new(),
            cwd: None,
            started: None,
            version: None,
            extra: Map::new(),
        }
    }

    #[test]
    fn liveness() {
        let now = Local.with_ymd_and_hms(2026, 4, 6, 15, 30, 0).unwrap();
        assert!(is_alive(&entry("2026-04-06 15:29:00", "active"), now, true));
        assert!(!is_alive(
            &entry("2026-04-06 15:29:00", "active"),
            now,
            false
        ));
        assert!(!is_alive(
            &entry("2026-04-06 15:29:00", "signing-off"),
            now,
            true
        ));
        assert!(!is_alive(
            &entry("2026-04-05 15:29:00", "active"),
            now,
            true
        ));
        assert!(is_alive(
            &entry("2026-04-06T15:29:00.123456", "active"),
            now,
            true
        ));
        assert!(!is_alive(&entry("yesterday", "active"), now, true));
    }

    #[test]
    fn corrupt_and_foreign_tables() {
        let p = Path::new("x");
        assert!(parse_table("{not json", p).is_empty());
        assert!(parse_table("", p).is_empty());
        let t = parse_table(
            r#"{"a": {"timestamp": "2026-04-06 15:30:00", "status": "active", "pid": 4242, "working_on": "", "host": "h"},
                "b": {"pid": "not a number"}}"#,
            p,
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t["a"].extra["host"], "h");
    }

    #[test]
    fn own_pid_runs() {
        assert!(pid_running(std::process::id()));
        assert!(!pid_running(0));
        assert!(!pid_running(u32::MAX));
    }
}
