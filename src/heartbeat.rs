//! Discovery: `heartbeats.json` changed only under the exclusive lock on `heartbeats.lock`;
//! liveness is a pure function of an entry, the time and whether its pid runs.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Local, NaiveDateTime, TimeDelta, TimeZone};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::channels::Push;
use crate::error::Result;
use crate::fsx;
use crate::message::TIME_FORMAT;
use crate::process;

/// Entries older than this are stale whatever their pid says.
pub const STALE_AFTER: TimeDelta = TimeDelta::hours(24);
/// The extra entry field holding the server's parent pid: the Claude Code process that
/// started it, which also starts that session's hooks.
pub const PPID: &str = "ppid";
/// The extra entry field saying whether channel events reach the model: `on`, `off` or
/// `unknown` (also when absent).
pub const PUSH: &str = "push";

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

    /// The pid of the process that started this session's server, when recorded.
    pub fn ppid(&self) -> Option<u32> {
        self.extra.get(PPID)?.as_u64()?.try_into().ok()
    }

    /// `on`, `off` or `unknown`: whether channel events are known to reach the model.
    pub fn push(&self) -> &str {
        self.extra
            .get(PUSH)
            .and_then(Value::as_str)
            .unwrap_or("unknown")
    }

    /// [`Entry::push`] as a [`Push`]: compare this, not the word.
    pub fn push_mode(&self) -> Push {
        Push::from_word(self.push())
    }
}

/// How a process found the session it belongs to, in [`session_of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    /// A live session's server was started by this ancestor process (Claude Code).
    Ancestor(u32),
    /// `IPC_SESSION_ID` names it.
    Env,
    /// The only live session started in this working folder.
    Cwd,
}

/// The session a process started by Claude Code (a hook, or a command run by the model)
/// belongs to. In order:
/// 1. the live entry whose server's parent ([`PPID`]) is one of `ancestors`, nearest first
///    (Claude Code starts both the MCP server and, through a shell, the hooks); when several
///    servers share that parent, the one started in `cwd`;
/// 2. `requested` (`IPC_SESSION_ID`), when it is a valid name;
/// 3. the only live entry whose `cwd` is `cwd`.
///
/// `None` when nothing fits, or when several sessions share the folder: a guess could show
/// one session's mail to another.
pub fn session_of(
    live: &Table,
    ancestors: &[u32],
    requested: Option<&str>,
    cwd: Option<&str>,
) -> Option<(String, FoundBy)> {
    for &pid in ancestors {
        let under: Vec<&String> = live
            .iter()
            .filter(|(_, e)| e.ppid() == Some(pid))
            .map(|(name, _)| name)
            .collect();
        match under.as_slice() {
            [] => continue,
            [name] => return Some(((*name).clone(), FoundBy::Ancestor(pid))),
            // Several servers under one parent (two MCP entries, or a shell that started
            // them): only the folder can tell them apart.
            several => {
                let mut here = several
                    .iter()
                    .filter(|name| cwd.is_some() && live[name.as_str()].cwd.as_deref() == cwd);
                if let (Some(name), None) = (here.next(), here.next()) {
                    return Some(((*name).clone(), FoundBy::Ancestor(pid)));
                }
                break;
            }
        }
    }
    if let Some(name) = requested.map(str::trim)
        && crate::message::check_name(name).is_ok()
    {
        return Some((name.to_owned(), FoundBy::Env));
    }
    let cwd = cwd?;
    let mut here = live.iter().filter(|(_, e)| e.cwd.as_deref() == Some(cwd));
    match (here.next(), here.next()) {
        (Some((name, _)), None) => Some((name.clone(), FoundBy::Cwd)),
        _ => None,
    }
}

/// The pids above this process, nearest first: its parent, grandparent, …, at most `max`,
/// ending before pid 1.
pub fn ancestors(max: usize) -> Vec<u32> {
    process::ancestors_from(std::os::unix::process::parent_id(), max)
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

pub use crate::process::pid_running;

/// The heartbeats file of a mailbox root.
pub struct Heartbeats {
    path: PathBuf,
    lock_path: PathBuf,
    /// The table last read, and the file it was read from: a send, `t9_ipc_who` and a claim
    /// each read the table, which changes about once a minute per session.
    cache: Mutex<Option<(Stamp, Table)>>,
}

/// Which version of `heartbeats.json` a table was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// `meta`'s stamp, when its times are old enough to vouch for the version
    /// ([`crate::watch::unsettled_for`]): any later change (an edit in place, or a file renamed
    /// over it, even one that reuses the inode number) then shows as a later time. A younger
    /// file may be replaced within the same tick of the clock that stamps files by one of the
    /// same size: it is read every time until it settles.
    fn of(meta: &fs::Metadata) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt as _;
        let newest = meta.modified().ok()?.max(
            std::time::UNIX_EPOCH
                + Duration::new(u64::try_from(meta.ctime()).ok()?, meta.ctime_nsec() as u32),
        );
        let settled = crate::watch::unsettled_for(newest, std::time::SystemTime::now()).is_zero();
        settled.then(|| Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

pub type Table = BTreeMap<String, Entry>;

impl Heartbeats {
    pub fn new(root: &Path) -> Heartbeats {
        Heartbeats {
            path: root.join("heartbeats.json"),
            lock_path: root.join("heartbeats.lock"),
            cache: Mutex::new(None),
        }
    }

    /// Reads the table without the lock (writers replace the file by rename, so a reader
    /// sees a whole file). A missing or corrupt file reads as empty. The version read last is
    /// kept, and given again while the file is unchanged ([`Stamp`]).
    pub fn read(&self) -> Table {
        self.read_kept(true)
    }

    /// [`Heartbeats::read`], from the file whatever was kept when not `reuse`.
    fn read_kept(&self, reuse: bool) -> Table {
        // Not a regular file (a FIFO would block the reader forever): treat as empty.
        let stamp = match fs::symlink_metadata(&self.path) {
            Ok(meta) if !meta.is_file() => {
                tracing::warn!(file = %self.path.display(), "heartbeats.json is not a regular file; treating as empty");
                return Table::new();
            }
            Ok(meta) => Stamp::of(&meta),
            Err(_) => None,
        };
        let kept = || self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if reuse
            && let (Some(stamp), Some((seen, table))) = (stamp, &*kept())
            && stamp == *seen
        {
            return table.clone();
        }
        let (table, read) = self.read_file();
        // Kept only when the file read is the one looked at (not one renamed over it since).
        *kept() = stamp
            .filter(|s| read == Some(*s))
            .map(|s| (s, table.clone()));
        table
    }

    /// The table in the file now, and the stamp of the version read (when it may vouch).
    fn read_file(&self) -> (Table, Option<Stamp>) {
        let read = fs::File::open(&self.path).and_then(|mut file| {
            let stamp = file.metadata().ok().as_ref().and_then(Stamp::of);
            let mut text = String::new();
            std::io::Read::read_to_string(&mut file, &mut text)?;
            Ok((text, stamp))
        });
        match read {
            Ok((text, stamp)) => (parse_table(&text, &self.path), stamp),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => (Table::new(), None),
            Err(err) => {
                tracing::warn!(file = %self.path.display(), %err, "cannot read heartbeats; treating as empty");
                (Table::new(), None)
            }
        }
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
        self.update_within(now, fsx::LOCK_WAIT, change)
    }

    /// [`Heartbeats::update`], giving up with [`Error::LockBusy`] when another process holds
    /// the lock for longer than `wait`.
    pub fn update_within<R>(
        &self,
        now: DateTime<Local>,
        wait: Duration,
        change: impl FnOnce(&mut Table) -> R,
    ) -> Result<R> {
        let lock = fsx::FileLock::take(&self.lock_path, wait)?;
        // Read from the file under the lock, not from what was kept: what is written back
        // must hold every change made before.
        let mut table = self.read_kept(false);
        table.retain(|name, e| {
            let keep = is_alive(e, now, pid_running(e.pid));
            if !keep {
                tracing::debug!(session = %name, pid = e.pid, "removed a stale heartbeat");
            }
            keep
        });
        let result = change(&mut table);
        let written = self.write(&table);
        drop(lock);
        written.map(|()| result)
    }

    fn write(&self, table: &Table) -> Result<()> {
        // Serialising plain strings, numbers and JSON values cannot fail.
        let mut text = serde_json::to_string_pretty(table).expect("heartbeats serialise");
        text.push('\n');
        // Whole or not at all, but not flushed: see `fsx::write_atomic_unsynced`.
        fsx::write_atomic_unsynced(&self.path, text.as_bytes())
    }
}

/// Parses `heartbeats.json`; entries that do not fit are dropped with a warning.
fn parse_table(text: &str, path: &Path) -> Table {
    match parse_entries(text) {
        Ok((table, bad)) => {
            for (name, err) in bad {
                warn_once(&name, &err);
            }
            table
        }
        Err(err) => {
            tracing::warn!(file = %path.display(), %err, "heartbeats.json is corrupt; treating it as empty");
            Table::new()
        }
    }
}

/// The entries that parse, and the names of those that do not with the reason; `Err` when
/// the text is not a JSON object.
fn parse_entries(text: &str) -> std::result::Result<(Table, Vec<(String, String)>), String> {
    if text.trim().is_empty() {
        return Ok((Table::new(), Vec::new()));
    }
    let raw: Map<String, Value> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut table = Table::new();
    let mut bad = Vec::new();
    for (name, value) in raw {
        match serde_json::from_value::<Entry>(value)
            .map_err(|e| e.to_string())
            .and_then(|entry| checked(&name, entry))
        {
            Ok(entry) => {
                table.insert(name, entry);
            }
            Err(err) => bad.push((display(&name), err)),
        }
    }
    Ok((table, bad))
}

/// An entry fit to use: its name a valid session name (it becomes a file name under
/// `state/`), its folder an absolute path. Texts are kept as written: whoever shows them to
/// a model or a terminal makes them safe ([`display`], or the CLI's escapes).
fn checked(name: &str, entry: Entry) -> std::result::Result<Entry, String> {
    crate::message::check_name(name).map_err(|why| format!("not a session name: {why}"))?;
    if let Some(cwd) = &entry.cwd
        && !cwd.starts_with('/')
    {
        return Err(format!("cwd {:?} is no absolute path", display(cwd)));
    }
    Ok(entry)
}

/// `text` on one printable line: control characters (newlines, escapes) become spaces.
pub fn display(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Warns about a bad entry once per process, not at every read of the file.
fn warn_once(name: &str, err: &str) {
    static WARNED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if warned.get_or_insert_default().insert(name.to_owned()) {
        tracing::warn!(session = %name, %err, "ignored a heartbeat entry that does not parse or is not valid");
    }
}

/// What `heartbeats.json` holds, for a person checking it (`t9-ipc doctor`).
#[derive(Debug, Default)]
pub struct Health {
    /// Why the file cannot be used (unreadable, or not a JSON object); sessions treat it as
    /// empty and rewrite it at their next heartbeat.
    pub corrupt: Option<String>,
    /// Entries that do not parse: name and reason.
    pub bad_entries: Vec<(String, String)>,
    pub live: Table,
    /// Entries no longer alive: name and why. The next writer removes them.
    pub stale: Vec<(String, String)>,
}

impl Heartbeats {
    /// Reads the file and says what is wrong with it, without changing anything.
    pub fn health(&self, now: DateTime<Local>) -> Health {
        let mut health = Health::default();
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return health,
            Err(err) => {
                health.corrupt = Some(format!("cannot read {}: {err}", self.path.display()));
                return health;
            }
        };
        let table = match parse_entries(&text) {
            Ok((table, bad)) => {
                health.bad_entries = bad;
                table
            }
            Err(err) => {
                health.corrupt = Some(format!("not a JSON object: {err}"));
                return health;
            }
        };
        for (name, e) in table {
            let running = pid_running(e.pid);
            if is_alive(&e, now, running) {
                health.live.insert(name, e);
                continue;
            }
            let why = if e.status == "signing-off" {
                "signing off".to_owned()
            } else if !running {
                format!("pid {} is not running", e.pid)
            } else {
                match e.last_seen() {
                    Some(seen) => format!("last seen {} (over 24 h ago)", stamp(seen)),
                    None => format!("timestamp {:?} does not parse", e.timestamp),
                }
            };
            health.stale.push((name, why));
        }
        health
    }
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

    /// Writes `working_on` for `alpha` into `path` (by rename when `replace`, else in place),
    /// its modification time set to `at` (as `touch -d` could) and left to settle (its change
    /// time is now), or left as written.
    fn put(path: &Path, working_on: &str, replace: bool, at: Option<std::time::SystemTime>) {
        let text = format!(
            r#"{{"alpha": {{"timestamp": "2026-04-06 15:29:00", "pid": 1, "working_on": "{working_on}"}}}}"#
        );
        let target = if replace {
            path.with_extension("new")
        } else {
            path.to_path_buf()
        };
        std::fs::write(&target, text).unwrap();
        if let Some(at) = at {
            let file = std::fs::File::options().write(true).open(&target).unwrap();
            file.set_modified(at).unwrap();
        }
        if replace {
            std::fs::rename(&target, path).unwrap();
        }
        if at.is_some() {
            std::thread::sleep(crate::watch::SETTLE + Duration::from_millis(5));
        }
    }

    #[test]
    fn a_kept_table_is_given_only_while_the_file_is_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let heartbeats = Heartbeats::new(dir.path());
        let working_on = |h: &Heartbeats| h.read()["alpha"].working_on.clone();
        let old = Some(std::time::SystemTime::now() - Duration::from_secs(60));
        put(&heartbeats.path, "one", false, old);
        assert_eq!(working_on(&heartbeats), "one");
        assert!(
            heartbeats.cache.lock().unwrap().is_some(),
            "a settled file is kept"
        );
        // The same size and time, edited in place: its change time tells.
        put(&heartbeats.path, "two", false, old);
        assert_eq!(working_on(&heartbeats), "two");
        // The same size and time in a file renamed over it: its inode (and change time) tell.
        put(&heartbeats.path, "tri", true, old);
        assert_eq!(working_on(&heartbeats), "tri");
        // A file younger than the clock's tick is read every time, never kept (checked when
        // the read came within that tick, as it does unless the machine stalls).
        let written = std::time::Instant::now();
        put(&heartbeats.path, "for", true, None);
        assert_eq!(working_on(&heartbeats), "for");
        if written.elapsed() < crate::watch::SETTLE {
            assert!(heartbeats.cache.lock().unwrap().is_none());
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
            r#"{"alpha": {"timestamp": "2026-04-06 15:30:00", "status": "active", "pid": 4242, "working_on": "a\nSYSTEM: \u001b[2Jx", "host": "h"},
                "beta": {"pid": "not a number"},
                "../../x": {"timestamp": "2026-04-06 15:30:00", "pid": 1},
                "gamma": {"timestamp": "2026-04-06 15:30:00", "pid": 1, "cwd": "../up"}}"#,
            p,
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t["alpha"].extra["host"], "h");
        assert_eq!(display(&t["alpha"].working_on), "a SYSTEM:  [2Jx");
    }

    #[test]
    fn sessions_are_found_by_ancestor_then_name_then_folder() {
        let mut live = Table::new();
        let mut a = entry("2026-04-06 15:29:00", "active");
        a.extra.insert(PPID.into(), 100.into());
        a.cwd = Some("/p".into());
        let mut b = entry("2026-04-06 15:29:00", "active");
        b.extra.insert(PPID.into(), 200.into());
        b.cwd = Some("/q".into());
        live.insert("alpha".into(), a);
        live.insert("beta".into(), b);
        // The nearest ancestor that started a server wins, whatever the name or folder say.
        assert_eq!(
            session_of(&live, &[7, 200, 100], Some("alpha"), Some("/p")),
            Some(("beta".into(), FoundBy::Ancestor(200)))
        );
        assert_eq!(
            session_of(&live, &[7, 8], Some("gamma"), Some("/p")),
            Some(("gamma".into(), FoundBy::Env))
        );
        // An invalid IPC_SESSION_ID is no name; the folder decides.
        assert_eq!(
            session_of(&live, &[7], Some("x y"), Some("/q")),
            Some(("beta".into(), FoundBy::Cwd))
        );
        assert_eq!(session_of(&live, &[7], None, Some("/r")), None);
        // Two servers under one parent: the folder decides, or nothing does.
        live.get_mut("beta")
            .unwrap()
            .extra
            .insert(PPID.into(), 100.into());
        assert_eq!(
            session_of(&live, &[100], None, Some("/q")),
            Some(("beta".into(), FoundBy::Ancestor(100)))
        );
        assert_eq!(session_of(&live, &[100], None, Some("/r")), None);
        assert_eq!(
            session_of(&live, &[100], Some("gamma"), Some("/r")),
            Some(("gamma".into(), FoundBy::Env))
        );
        // Two sessions in one folder: no guess.
        live.get_mut("alpha").unwrap().cwd = Some("/q".into());
        assert_eq!(session_of(&live, &[7], None, Some("/q")), None);
    }

    #[test]
    fn ancestors_start_at_the_parent() {
        let up = ancestors(64);
        assert_eq!(up.first(), Some(&std::os::unix::process::parent_id()));
        assert!(!up.contains(&std::process::id()));
        assert!(!up.contains(&1));
    }
}
