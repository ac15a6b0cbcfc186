//! Read state: what one session has read and been shown, in `state/<name>.log`.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Local};

use super::{Mailbox, Message, sent_at};
use crate::error::{Error, Result};
use crate::fsx;
use crate::id::IdSet;
use crate::message::MessageId;

impl Mailbox {
    /// Every name's `joined` time and read ids, read without writing anything.
    pub(super) fn all_read_states(&self) -> Result<HashMap<String, Seen>> {
        let mut out = HashMap::new();
        let entries = fs::read_dir(&self.state).map_err(Error::io("listing", &self.state))?;
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".log"))
            else {
                continue;
            };
            let text = String::from_utf8_lossy(&fs::read(&path).unwrap_or_default()).into_owned();
            let mut joined = None;
            let mut read = HashSet::new();
            for line in text.lines() {
                match parse_line(line) {
                    Line::Joined(t) => {
                        joined.get_or_insert(t);
                    }
                    Line::Mark(Mark::Read, id) => {
                        read.insert(id.to_owned());
                    }
                    _ => {}
                }
            }
            // No readable `joined`: the name counts every broadcast as its mail.
            let joined = joined.unwrap_or(DateTime::UNIX_EPOCH.with_timezone(&Local));
            out.insert(name.to_owned(), (joined, read));
        }
        Ok(out)
    }

    /// Loads (or starts) the read state of `session`.
    pub fn read_state(&self, session: &str, now: DateTime<Local>) -> Result<ReadState> {
        self.read_state_within(session, now, fsx::LOCK_WAIT)
    }

    /// [`Mailbox::read_state`], waiting at most `wait` for the file's lock when it writes.
    /// When another process holds it longer, the state still loads: its first line is
    /// written with the next append.
    pub fn read_state_within(
        &self,
        session: &str,
        now: DateTime<Local>,
        wait: Duration,
    ) -> Result<ReadState> {
        let path = self.state_path(session)?;
        ReadState::load(path, now, true, wait, || self.first_sent_by(session))
    }

    /// `state/<name>.log`, for a name that can only name a file directly in `state/`.
    pub(super) fn state_path(&self, session: &str) -> Result<PathBuf> {
        let safe = (1..=64).contains(&session.len())
            && session
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !safe {
            return Err(Error::Refused(format!(
                "{:?} is no session name (letters, digits, '_' and '-')",
                crate::heartbeat::display(session)
            )));
        }
        Ok(self.state.join(format!("{session}.log")))
    }

    /// The time of the oldest message in `inbox/` sent by `name`: proof that the name was
    /// running then. Reads file names only.
    fn first_sent_by(&self, name: &str) -> Option<DateTime<Local>> {
        self.ids()
            .ok()?
            .into_iter()
            .filter_map(|id| {
                MessageId::parse(&id)
                    .filter(|id| id.may_be_from(name))?
                    .time()
            })
            .min()
    }

    /// Loads the read state of `session` without writing anything: a name that never read
    /// mail gets an empty state that joined `now` (so only direct messages are its mail).
    /// Marking it read writes the file as [`Mailbox::read_state`] would.
    pub fn peek_state(&self, session: &str, now: DateTime<Local>) -> Result<ReadState> {
        let path = self.state_path(session)?;
        ReadState::load(path, now, false, fsx::LOCK_WAIT, || {
            self.first_sent_by(session)
        })
    }
}

/// When one message was pushed to a name and when it was read, from `state/<name>.times`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarkTimes {
    pub pushed: Option<DateTime<Local>>,
    pub read: Option<DateTime<Local>>,
}

impl Mailbox {
    /// Every `pushed` and `read` time of `session` by id (the first of each kept), from
    /// `state/<name>.times` (`<word> <id> <rfc3339>` a line); empty when there is none.
    /// Lines that do not read are skipped.
    pub fn mark_times(&self, session: &str) -> Result<HashMap<String, MarkTimes>> {
        let path = self.state_path(session)?.with_extension("times");
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(Error::io("reading", &path)(err)),
        };
        let mut out: HashMap<String, MarkTimes> = HashMap::new();
        for line in String::from_utf8_lossy(&bytes).lines() {
            let mut parts = line.split(' ');
            let (Some(word), Some(id), Some(at), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(at) = DateTime::parse_from_rfc3339(at) else {
                continue;
            };
            let times = out.entry(id.to_owned()).or_default();
            let slot = match word {
                "pushed" => &mut times.pushed,
                "read" => &mut times.read,
                _ => continue,
            };
            slot.get_or_insert(at.with_timezone(&Local));
        }
        Ok(out)
    }
}

/// A name's `joined` time and the ids it read.
pub(super) type Seen = (DateTime<Local>, HashSet<String>);

/// What one session has read and what it has been shown, in `state/<name>.log`.
///
/// The file is append-only, one fact a line, so a crash loses at most the line being
/// written: `joined <time>` first, then `read <id>`, `pushed <id>` (sent as a channel event),
/// `listed <id>` (named in a digest event, body not sent) and `folder <absolute path>` (the
/// working folder the name was used from; the last one counts). Appends take the file's lock
/// with a bounded wait ([`fsx::lock_within`]),
/// so several processes (a server, a hook, the CLI) can write one name's state; each picks up
/// the others' lines with [`ReadState::refresh`]. A line it cannot read is skipped: a damaged
/// file can make mail unread again, never lose it.
#[derive(Debug)]
pub struct ReadState {
    path: PathBuf,
    /// When this name first read mail: broadcasts older than this are not its mail.
    pub joined: DateTime<Local>,
    read: IdSet,
    pushed: IdSet,
    listed: IdSet,
    /// How far the file has been read.
    offset: u64,
    /// Counts the refreshes that took in lines of other processes.
    generation: u64,
    has_joined: bool,
    /// The working folder this name was last used from, when recorded.
    folder: Option<String>,
    /// How long an append waits for the file's lock.
    lock_wait: Duration,
    /// Lines not written yet because the lock was busy: written first at the next append.
    unwritten: String,
}

impl ReadState {
    /// Reads the state at `path`. When it is missing, starts one (written to disk only
    /// when `create`) that joined when `first_seen` says the name first sent mail, or `now`.
    fn load(
        path: PathBuf,
        now: DateTime<Local>,
        create: bool,
        lock_wait: Duration,
        first_seen: impl FnOnce() -> Option<DateTime<Local>>,
    ) -> Result<ReadState> {
        let mut state = ReadState {
            path,
            joined: now,
            read: IdSet::default(),
            pushed: IdSet::default(),
            listed: IdSet::default(),
            offset: 0,
            generation: 0,
            has_joined: false,
            folder: None,
            lock_wait,
            unwritten: String::new(),
        };
        state.refresh()?;
        if !state.has_joined {
            let joined = if state.offset > 0 {
                // Damaged: every broadcast counts as this name's mail again. Repeats are
                // better than losses.
                tracing::warn!(file = %state.path.display(), "read state has no readable `joined` line; every broadcast counts as unread");
                DateTime::UNIX_EPOCH.with_timezone(&Local)
            } else {
                // A new name, or a lost state file. If the name sent mail before, it was
                // running then: count its broadcasts from there.
                first_seen().map_or(now, |t| t.min(now))
            };
            state.joined = joined;
            state.has_joined = true;
            if create {
                let line = format!("joined {}\n", joined.to_rfc3339());
                match state.append(&line) {
                    Err(Error::LockBusy { .. }) => {
                        tracing::warn!(file = %state.path.display(), "read state is locked by another process; its first line is written later");
                        state.unwritten.push_str(&line);
                    }
                    other => other?,
                }
            }
        }
        Ok(state)
    }

    /// A number that changes whenever [`ReadState::refresh`] took in other processes' lines.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Reads the lines other processes appended since the last look. Cheap when nothing
    /// changed (one `stat`).
    pub fn refresh(&mut self) -> Result<()> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                if self.offset > 0 {
                    tracing::warn!(file = %self.path.display(), "read state file vanished; starting it again");
                    let line = format!("joined {}\n", self.joined.to_rfc3339());
                    let offset = std::mem::replace(&mut self.offset, 0);
                    if let Err(err) = self.append(&line) {
                        self.offset = offset; // tried again at the next look
                        return Err(err);
                    }
                }
                return Ok(());
            }
            Err(err) => return Err(Error::io("opening", &self.path)(err)),
        };
        let len = file
            .metadata()
            .map_err(Error::io("reading", &self.path))?
            .len();
        if len == self.offset {
            return Ok(());
        }
        if len < self.offset {
            // Replaced or cut by someone: read it again from the start (sets only grow).
            self.offset = 0;
        }
        file.seek(SeekFrom::Start(self.offset))
            .map_err(Error::io("reading", &self.path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(Error::io("reading", &self.path))?;
        // Only whole lines: a line being appended right now is read next time.
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let mut bad = 0usize;
        for line in String::from_utf8_lossy(&bytes[..whole]).lines() {
            match parse_line(line) {
                Line::Joined(t) => {
                    if !self.has_joined {
                        self.joined = t;
                        self.has_joined = true;
                    }
                }
                Line::Mark(what, id) => {
                    self.set_of(what).insert(id.to_owned());
                }
                Line::Folder(folder) => self.folder = Some(folder.to_owned()),
                Line::Empty => {}
                Line::Bad => bad += 1,
            }
        }
        if bad > 0 {
            tracing::warn!(file = %self.path.display(), lines = bad, "skipped unreadable lines in the read state");
        }
        if whole > 0 {
            self.generation += 1;
        }
        self.offset += whole as u64;
        Ok(())
    }

    /// True when `msg` is for `session`, still current (not expired) and not read.
    /// Broadcasts sent before this name first joined are history, not mail.
    pub fn is_unread(&self, session: &str, msg: &Message, now: DateTime<Local>) -> bool {
        if !msg.front.is_for(session) || self.read.contains(&msg.id) || msg.front.is_expired(now) {
            return false;
        }
        if msg.front.is_broadcast() {
            // The id's stamp has microseconds; `created` only seconds.
            let sent = sent_at(msg);
            return sent.is_none_or(|sent| sent >= self.joined);
        }
        true
    }

    /// The working folder this name was last used from; `None` when no process recorded one
    /// (a name from before folders were recorded, or one never used).
    pub fn folder(&self) -> Option<&str> {
        self.folder.as_deref()
    }

    /// True when the state file holds anything: the name was used before.
    pub fn on_disk(&self) -> bool {
        self.offset > 0
    }

    /// Records that this name is used from `folder` now (nothing when it is the last one
    /// recorded). A folder whose path holds a control character is not recorded.
    pub fn note_folder(&mut self, folder: &Path) -> Result<()> {
        let Some(folder) = folder.to_str().filter(|f| !f.chars().any(char::is_control)) else {
            return Ok(());
        };
        if self.folder.as_deref() == Some(folder) {
            return Ok(());
        }
        let line = format!("folder {folder}\n");
        match self.append(&line) {
            // Written with the next append instead.
            Err(Error::LockBusy { .. }) => self.unwritten.push_str(&line),
            other => other?,
        }
        self.folder = Some(folder.to_owned());
        Ok(())
    }

    /// How long later appends wait for the file's lock (start-up loads with a short wait).
    pub fn set_lock_wait(&mut self, wait: Duration) {
        self.lock_wait = wait;
    }

    pub fn was_read(&self, id: &str) -> bool {
        self.read.contains(id)
    }

    /// True when `msg` was already pushed to this session as a channel event.
    pub fn was_pushed(&self, id: &str) -> bool {
        self.pushed.contains(id)
    }

    /// True when `msg` was named in a digest event (its body was not sent).
    pub fn was_listed(&self, id: &str) -> bool {
        self.listed.contains(id)
    }

    pub fn mark_read<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
        self.mark(Mark::Read, ids)
    }

    pub fn mark_pushed<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
        self.mark(Mark::Pushed, ids)
    }

    pub fn mark_listed<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
        self.mark(Mark::Listed, ids)
    }

    fn mark<'a>(&mut self, what: Mark, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let word = what.word();
        let known = self.set_of(what);
        let mut new = foldhash::HashSet::default();
        let mut lines = String::new();
        for id in ids {
            if !known.contains(id) && new.insert(id) {
                lines.push_str(word);
                lines.push(' ');
                lines.push_str(id);
                lines.push('\n');
            }
        }
        if lines.is_empty() {
            return Ok(());
        }
        let written = self.append(&lines);
        // Receipts show when mail was pushed or read; nothing reads a listed time.
        if written.is_ok() && !matches!(what, Mark::Listed) {
            self.note_times(&lines);
        }
        // Read only once it is on disk: when the write fails (a full disk) the caller fails
        // and the model got nothing, so the mail stays unread rather than hidden until the
        // next start. A pushed or listed event did leave: not again from this process.
        if written.is_ok() || !matches!(what, Mark::Read) {
            self.set_of(what).extend(new.into_iter().map(str::to_owned));
        }
        written
    }

    /// Appends `lines` (`<word> <id>`), each with the time now, to `state/<name>.times`: when
    /// a message was pushed or read, for receipts. A file of its own, so that readers of the
    /// log (older versions too) read the log unchanged. Only informs: a failure is a warning.
    fn note_times(&self, lines: &str) {
        let now = Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        let timed: String = lines.lines().map(|l| format!("{l} {now}\n")).collect();
        let written =
            super::carry::append_private(&self.path.with_extension("times"), timed.as_bytes());
        if let Err(err) = written {
            tracing::warn!(%err, "the times of read and pushed marks were not recorded");
        }
    }

    fn set_of(&mut self, what: Mark) -> &mut IdSet {
        match what {
            Mark::Read => &mut self.read,
            Mark::Pushed => &mut self.pushed,
            Mark::Listed => &mut self.listed,
        }
    }

    /// Appends whole lines under the file's lock (waited for at most `lock_wait`), in one
    /// write, so that concurrent writers never interleave. The file is created private.
    fn append(&mut self, lines: &str) -> Result<()> {
        let open = || {
            fsx::private_options()
                .create(true)
                .append(true)
                .open(&self.path)
        };
        let mut file = match open() {
            // Its folder went with the mailbox, deleted and made again while this ran: made
            // again inside the mailbox (a missing mailbox is not made).
            Err(err) if err.kind() == io::ErrorKind::NotFound => match self.path.parent() {
                Some(folder) => fsx::private_subdir(folder)
                    .and_then(|()| open().map_err(Error::io("opening", &self.path)))?,
                None => return Err(Error::io("opening", &self.path)(err)),
            },
            opened => opened.map_err(Error::io("opening", &self.path))?,
        };
        fsx::fix_mode(&file, &self.path)?;
        fsx::lock_within(&file, &self.path, self.lock_wait)?;
        let pending = std::mem::take(&mut self.unwritten);
        let lines = &(pending.clone() + lines);
        // Others' lines first, so ours are not counted as unread bytes next time.
        let before = file
            .metadata()
            .map_err(Error::io("reading", &self.path))?
            .len();
        if let Err(err) = file.write_all(lines.as_bytes()) {
            // Half a line (a full disk) would spoil the next line written: take it back.
            let _ = file.set_len(before);
            self.unwritten = pending;
            return Err(Error::io("appending to", &self.path)(err));
        }
        if before == self.offset {
            self.offset += lines.len() as u64;
        }
        Ok(())
    }
}

/// What a `read`, `pushed` or `listed` line records.
#[derive(Clone, Copy)]
pub(super) enum Mark {
    Read,
    Pushed,
    Listed,
}

impl Mark {
    pub(super) fn word(self) -> &'static str {
        match self {
            Mark::Read => "read",
            Mark::Pushed => "pushed",
            Mark::Listed => "listed",
        }
    }
}

/// One line of a state log, as [`parse_line`] reads it.
pub(super) enum Line<'a> {
    Joined(DateTime<Local>),
    Mark(Mark, &'a str),
    Folder(&'a str),
    Empty,
    Bad,
}

/// The one reader of state log lines: `joined <rfc3339>`, `read|pushed|listed <id>`,
/// `folder <path>`.
pub(super) fn parse_line(line: &str) -> Line<'_> {
    if line.is_empty() {
        return Line::Empty;
    }
    let Some((word, rest)) = line.split_once(' ') else {
        return Line::Bad;
    };
    match word {
        "joined" => DateTime::parse_from_rfc3339(rest)
            .map_or(Line::Bad, |t| Line::Joined(t.with_timezone(&Local))),
        "read" => Line::Mark(Mark::Read, rest),
        "pushed" => Line::Mark(Mark::Pushed, rest),
        "listed" => Line::Mark(Mark::Listed, rest),
        "folder" => Line::Folder(rest),
        _ => Line::Bad,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_read_state_whose_folder_went_makes_it_again_but_never_a_mailbox() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ipc");
        let mb = Mailbox::open(&root).unwrap();
        let mut state = mb.read_state("beta", Local::now()).unwrap();
        state.mark_read(["a"]).unwrap();
        // The mailbox deleted and made again, without its `state/`.
        fs::remove_dir_all(&root).unwrap();
        fs::create_dir(&root).unwrap();
        state.refresh().unwrap();
        state.mark_read(["b"]).unwrap();
        let folder = fs::metadata(root.join("state")).unwrap();
        assert_eq!(folder.permissions().mode() & 0o777, fsx::dir_mode());
        let again = mb.peek_state("beta", Local::now()).unwrap();
        assert_eq!(
            again.joined, state.joined,
            "its joined line is written again"
        );
        assert!(again.was_read("b"));
        // The whole mailbox gone: a mark fails, and makes no mailbox.
        fs::remove_dir_all(&root).unwrap();
        assert!(state.mark_read(["c"]).is_err());
        assert!(!root.exists());
    }
}
