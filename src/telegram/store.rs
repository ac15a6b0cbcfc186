//! The bookkeeping under `<data>/telegram/`: claims (who forwards which escalation, and how
//! far it got), `replies.log`, the `getUpdates` offset and the records of given-up forwards.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsx;

/// What claiming a message found.
pub(super) enum Claimed {
    /// This server forwards it; the claim file stays locked until the outcome is written.
    Mine(Claim),
    /// Forwarded (or given up) already.
    Settled,
    /// Another live server is forwarding it now.
    Busy,
}

/// A held claim: the locked claim file, and the parts a previous owner sent already.
pub(super) struct Claim {
    file: File,
    /// `(part, parts, telegram message id)` from `part i/n id` lines.
    pub(super) parts: Vec<(usize, usize, i64)>,
}

impl Claim {
    pub(super) fn part_sent(&self, i: usize, n: usize) -> bool {
        self.parts.iter().any(|&(pi, pn, _)| pi == i && pn == n)
    }

    pub(super) fn record_part(&mut self, i: usize, n: usize, telegram_id: i64) -> io::Result<()> {
        self.parts.push((i, n, telegram_id));
        self.file
            .write_all(format!("part {}/{n} {telegram_id}\n", i + 1).as_bytes())
    }

    /// Writes the outcome; dropping the claim then releases the lock.
    pub(super) fn finish(mut self, outcome: &str) -> io::Result<()> {
        self.file
            .write_all(format!("done {outcome}\n").as_bytes())?;
        self.file.sync_data()
    }
}

/// Where a forwarded part came from: what a reply to it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Forwarded {
    pub(super) chat: i64,
    pub(super) message_id: i64,
    pub(super) msg_id: String,
    pub(super) from: String,
    pub(super) subject: String,
}

pub(super) struct Store {
    claims: PathBuf,
    failed: PathBuf,
    replies: PathBuf,
    offset: PathBuf,
    pub(super) poll_lock: PathBuf,
    /// `sending/<msg_id>`: a part of this escalation is on its way to Telegram and not yet
    /// in `replies.log`; a reply that finds nothing waits for these.
    sending: PathBuf,
    /// `delivered.log`: the updates taken since the offset was last saved
    /// (`<update_id> taking <time>`, then `<update_id> delivered <msg_id>`).
    delivered: PathBuf,
    /// Taken while `replies.log` is appended to or rewritten.
    replies_lock: PathBuf,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    Error::io(op, path)
}

impl Store {
    pub(super) fn open(data_dir: &Path) -> Result<Store> {
        let dir = data_dir.join("telegram");
        let store = Store {
            claims: dir.join("claims"),
            failed: dir.join("failed"),
            replies: dir.join("replies.log"),
            offset: dir.join("offset"),
            poll_lock: dir.join("poll.lock"),
            sending: dir.join("sending"),
            delivered: dir.join("delivered.log"),
            replies_lock: dir.join("replies.lock"),
        };
        for d in [&dir, &store.claims, &store.failed, &store.sending] {
            fsx::private_dir(d)?;
        }
        // Made here with the mailbox's file mode (a shared mailbox's group must open it too).
        let poll = private()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&store.poll_lock)
            .map_err(io_err("creating", &store.poll_lock))?;
        fsx::fix_mode(&poll, &store.poll_lock)?;
        Ok(store)
    }

    /// Claims `id` for this server. The claim file appears already locked (it is made and
    /// locked under a temporary name, then hard-linked into place, which fails if the name
    /// exists), so a claim file that is unlocked and has no `done` line belongs to a server
    /// that died: whoever locks it next takes it over.
    pub(super) fn claim(&self, id: &str) -> Result<Claimed> {
        let path = self.claims.join(id);
        match self.create_claim(id, &path)? {
            Some(file) => Ok(Claimed::Mine(Claim {
                file,
                parts: Vec::new(),
            })),
            None => take_over(&path),
        }
    }

    /// Makes the claim file at `path`, locked and with its first line; `None` when it
    /// exists already.
    fn create_claim(&self, id: &str, path: &Path) -> Result<Option<File>> {
        let tmp = self.claims.join(format!(
            ".{id}.{}.{}.tmp",
            std::process::id(),
            fsx::random_uid()
        ));
        let file = new_claim_file(&tmp)?
            .ok_or_else(|| Error::io("creating", &tmp)(io::ErrorKind::AlreadyExists.into()))?;
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(Some(file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(None),
            Err(err) => {
                // A file system without hard links: fall back to a plain exclusive create
                // (a dying server's claim can then be taken over by two at once, rarely).
                tracing::debug!(%err, "hard link refused; claiming with create_new");
                drop(file);
                new_claim_file(path)
            }
        }
    }

    /// Remembers a sent part, so a reply to it finds the escalation.
    pub(super) fn remember(&self, forwarded: &Forwarded) -> Result<()> {
        // One short write in append mode: lines of concurrent writers do not mix.
        let mut line = serde_json::to_string(forwarded).expect("plain strings and numbers");
        line.push('\n');
        let _lock = fsx::FileLock::take(&self.replies_lock, fsx::LOCK_WAIT)?;
        let mut file = private()
            .create(true)
            .append(true)
            .open(&self.replies)
            .map_err(io_err("opening", &self.replies))?;
        fsx::fix_mode(&file, &self.replies)?;
        file.write_all(line.as_bytes())
            .map_err(io_err("appending to", &self.replies))
    }

    /// The escalation that Telegram message `message_id` in `chat` was a part of.
    pub(super) fn lookup(&self, chat: i64, message_id: i64) -> Result<Option<Forwarded>> {
        let text = match fs::read_to_string(&self.replies) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(Error::io("reading", &self.replies)(err)),
        };
        Ok(text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Forwarded>(l).ok())
            .find(|f| f.chat == chat && f.message_id == message_id))
    }

    /// Marks a part of `id` as on its way (before the call) or arrived in `replies.log`.
    pub(super) fn sending(&self, id: &str, on: bool) {
        let path = self.sending.join(id);
        let done = if on {
            private()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map(|_| ())
        } else {
            fs::remove_file(&path)
        };
        if let Err(err) = done
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::debug!(%err, "marking a part on its way");
        }
    }

    /// True when a part is on its way now (a mark younger than a request's timeout).
    fn parts_on_the_way(&self) -> bool {
        let fresh = super::api::REQUEST_TIMEOUT + std::time::Duration::from_secs(5);
        fs::read_dir(&self.sending)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age < fresh)
            })
    }

    /// [`Store::lookup`], and when nothing is found while a part is on its way (sent, its
    /// Telegram id not yet written), looks again until it is written or a request's timeout:
    /// a reply may come faster than the bookkeeping of what it answers.
    pub(super) fn lookup_waiting(&self, chat: i64, message_id: i64) -> Result<Option<Forwarded>> {
        let until = std::time::Instant::now() + super::api::REQUEST_TIMEOUT;
        loop {
            if let Some(found) = self.lookup(chat, message_id)? {
                return Ok(Some(found));
            }
            if !self.parts_on_the_way() || std::time::Instant::now() > until {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// What `delivered.log` says about the updates taken since the offset was saved:
    /// update id → `(taking time, delivered msg_id)`.
    pub(super) fn delivered(&self) -> std::collections::HashMap<i64, (String, Option<String>)> {
        let mut out = std::collections::HashMap::new();
        let text = fs::read_to_string(&self.delivered).unwrap_or_default();
        for line in text.lines() {
            let mut words = line.splitn(3, ' ');
            let (Some(id), Some(what), Some(rest)) = (words.next(), words.next(), words.next())
            else {
                continue;
            };
            let Ok(id) = id.parse::<i64>() else { continue };
            let entry = out.entry(id).or_insert_with(|| (String::new(), None));
            match what {
                "taking" => entry.0 = rest.to_owned(),
                "delivered" => entry.1 = Some(rest.to_owned()),
                _ => {}
            }
        }
        out
    }

    /// Appends one line to `delivered.log`, flushed: it must be on disk before what follows.
    pub(super) fn note_delivery(&self, line: &str) -> Result<()> {
        let mut file = private()
            .create(true)
            .append(true)
            .open(&self.delivered)
            .map_err(io_err("appending to", &self.delivered))?;
        file.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(io_err("appending to", &self.delivered))
    }

    /// Drops `delivered.log` once the offset past its updates is saved.
    fn clear_deliveries(&self) {
        if let Err(err) = fs::remove_file(&self.delivered)
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(%err, "clearing delivered.log");
        }
    }

    /// Removes the bookkeeping of escalations done with: claims with an outcome older than
    /// `older_than`, and the `replies.log` lines of escalations that are older and no longer
    /// in the inbox (`in_inbox`). Returns how many claims and lines went.
    pub(super) fn prune(
        &self,
        older_than: std::time::Duration,
        in_inbox: impl Fn(&str) -> bool,
    ) -> Result<(usize, usize)> {
        let now = std::time::SystemTime::now();
        let old = |path: &Path| {
            fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= older_than)
        };
        let mut claims = 0;
        for entry in fs::read_dir(&self.claims).into_iter().flatten().flatten() {
            let path = entry.path();
            let done = fs::read_to_string(&path)
                .map(|t| t.lines().any(|l| l.starts_with("done ")))
                .unwrap_or(false);
            if done && old(&path) && fs::remove_file(&path).is_ok() {
                claims += 1;
            }
        }
        let _lock = fsx::FileLock::take(&self.replies_lock, fsx::LOCK_WAIT)?;
        let text = match fs::read_to_string(&self.replies) {
            Ok(t) => t,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok((claims, 0)),
            Err(err) => return Err(Error::io("reading", &self.replies)(err)),
        };
        let cutoff = Local::now()
            - chrono::TimeDelta::from_std(older_than).unwrap_or(chrono::TimeDelta::MAX);
        let mut kept = String::new();
        let mut dropped = 0;
        for line in text.lines() {
            let stale = serde_json::from_str::<Forwarded>(line).is_ok_and(|f| {
                crate::message::stem_time(&f.msg_id).is_some_and(|t| t < cutoff)
                    && !in_inbox(&f.msg_id)
            });
            if stale {
                dropped += 1;
            } else {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        if dropped > 0 {
            fsx::write_atomic(&self.replies, kept.as_bytes())?;
        }
        Ok((claims, dropped))
    }

    /// Writes `failed/<id>.txt`, replacing it durably.
    pub(super) fn record_failure(&self, id: &str, text: &str) -> Result<PathBuf> {
        let path = self.failed.join(format!("{id}.txt"));
        fsx::write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    pub(super) fn load_offset(&self) -> Option<i64> {
        fs::read_to_string(&self.offset).ok()?.trim().parse().ok()
    }

    /// Saves the offset durably, then forgets the deliveries it covers.
    pub(super) fn save_offset(&self, offset: i64) -> Result<()> {
        fsx::write_atomic(&self.offset, format!("{offset}\n").as_bytes())?;
        self.clear_deliveries();
        Ok(())
    }
}

/// Creates the claim file `path` (never an existing one), locks it and writes who
/// claimed it; `None` when the file exists already.
fn new_claim_file(path: &Path) -> Result<Option<File>> {
    let opened = private()
        .read(true)
        .append(true)
        .create_new(true)
        .open(path);
    let mut file = match opened {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        Err(err) => return Err(Error::io("creating", path)(err)),
    };
    fsx::fix_mode(&file, path)?;
    // A file made just now under a private name: nobody else can hold it, but no lock
    // is ever waited for without a bound.
    fsx::lock_within(&file, path, fsx::LOCK_WAIT)?;
    file.write_all(stamped("claimed").as_bytes())
        .map_err(io_err("writing", path))?;
    Ok(Some(file))
}

/// Takes over the existing claim file `path` when no live server holds its lock and no
/// outcome is written in it.
fn take_over(path: &Path) -> Result<Claimed> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(io_err("opening", path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(Claimed::Busy),
        Err(TryLockError::Error(err)) => return Err(Error::io("locking", path)(err)),
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(io_err("reading", path))?;
    // Only whole lines count: a line cut by a crash is not an outcome.
    let lines: Vec<&str> = text
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .collect();
    if lines.iter().any(|l| l.starts_with("done ")) {
        return Ok(Claimed::Settled);
    }
    let parts = lines.iter().filter_map(|l| part_line(l)).collect();
    if !text.is_empty() && !text.ends_with('\n') {
        // End the cut line so the next one starts clean.
        file.write_all(b"\n").map_err(io_err("writing", path))?;
    }
    file.write_all(stamped("taken over").as_bytes())
        .map_err(io_err("writing", path))?;
    Ok(Claimed::Mine(Claim { file, parts }))
}

/// A claim file's line saying who did `what` (`claimed`, `taken over`) and when.
fn stamped(what: &str) -> String {
    format!(
        "{what} by pid {} at {}\n",
        std::process::id(),
        Local::now().to_rfc3339()
    )
}

/// `(part, parts, telegram message id)` from a `part i/n id` line; `part` counts from 0.
fn part_line(line: &str) -> Option<(usize, usize, i64)> {
    let rest = line.strip_prefix("part ")?;
    let (frac, tid) = rest.split_once(' ')?;
    let (i, n) = frac.split_once('/')?;
    let i: usize = i.parse().ok()?;
    Some((i.checked_sub(1)?, n.parse().ok()?, tid.parse().ok()?))
}

/// Options that create files readable and writable by their owner only (0600).
pub(super) fn private() -> OpenOptions {
    fsx::private_options()
}

/// A forward that was given up, as `<data>/telegram/failed/<msg_id>.txt` records it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub msg_id: String,
    pub path: PathBuf,
    /// When the record was written (its modification time).
    pub when: Option<DateTime<Local>>,
    /// The record's `last error:` line.
    pub error: String,
}

/// The forwards given up at `since` or later, newest first; for `who` and doctor output.
/// Works whether or not Telegram is configured in this process.
pub fn failures(data_dir: &Path, since: SystemTime) -> Vec<Failure> {
    let dir = data_dir.join("telegram").join("failed");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut found: Vec<Failure> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            let msg_id = name.strip_suffix(".txt")?.to_owned();
            let modified = entry.metadata().ok()?.modified().ok()?;
            if modified < since {
                return None;
            }
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            let error = text
                .lines()
                .find_map(|l| l.strip_prefix("last error: "))
                .unwrap_or("unknown")
                .to_owned();
            Some(Failure {
                msg_id,
                path: entry.path(),
                when: Some(DateTime::<Local>::from(modified)),
                error,
            })
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.when));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_exclusive_and_a_dead_claim_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let Claimed::Mine(mut first) = store.claim("m1").unwrap() else {
            panic!("the first claim is mine")
        };
        assert!(matches!(store.claim("m1").unwrap(), Claimed::Busy));
        first.record_part(0, 2, 41).unwrap();
        // The holder dies (its lock goes with its file) before it is done.
        drop(first);
        let Claimed::Mine(second) = store.claim("m1").unwrap() else {
            panic!("an abandoned claim is taken over")
        };
        assert!(second.part_sent(0, 2));
        assert!(!second.part_sent(1, 2));
        second.finish("sent").unwrap();
        assert!(matches!(store.claim("m1").unwrap(), Claimed::Settled));
        let names: Vec<_> = fs::read_dir(&store.claims)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["m1"], "no temporary files are left");
    }

    #[test]
    fn replies_find_their_escalation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.lookup(5, 77).unwrap(), None);
        let f = Forwarded {
            chat: 5,
            message_id: 77,
            msg_id: "ID".into(),
            from: "alpha".into(),
            subject: "disk full".into(),
        };
        store.remember(&f).unwrap();
        store
            .remember(&Forwarded {
                chat: 6,
                ..f.clone()
            })
            .unwrap();
        assert_eq!(store.lookup(5, 77).unwrap(), Some(f));
        assert_eq!(store.lookup(5, 78).unwrap(), None);
        assert_eq!(store.load_offset(), None);
        store.save_offset(12).unwrap();
        assert_eq!(store.load_offset(), Some(12));
    }

    #[test]
    fn state_files_are_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save_offset(1).unwrap();
        store.save_offset(2).unwrap();
        let failed = store.record_failure("m1", "last error: x\n").unwrap();
        for path in [&store.offset, &failed] {
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        assert_eq!(store.load_offset(), Some(2));
        let left: Vec<_> = fs::read_dir(dir.path().join("telegram"))
            .unwrap()
            .chain(fs::read_dir(&store.failed).unwrap())
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
}
