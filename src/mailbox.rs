//! The only code that touches message files and read state: atomic write, scan, read state.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use chrono::{DateTime, Local, TimeDelta};

use crate::error::{Error, Result};
use crate::message::{self, FrontMatter};

/// Files larger than this are not read as messages (a 64 KiB body plus a generous margin).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// A message read from `inbox/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The file name without `.md`: unique, never reused.
    pub id: String,
    pub front: FrontMatter,
    pub body: String,
}

/// What a sender asks to be written; the mailbox adds the id and the time.
#[derive(Debug, Clone)]
pub struct Draft<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub kind: &'a str,
    pub subject: &'a str,
    pub priority: &'a str,
    pub reply_to: Option<&'a str>,
    pub body: &'a str,
}

/// A file's identity for the parse cache: a changed file is read again.
type Stamp = (u64, Option<SystemTime>);

enum Cached {
    Good(Stamp, Arc<Message>),
    Bad(Stamp),
}

/// A mailbox root on disk.
pub struct Mailbox {
    root: PathBuf,
    inbox: PathBuf,
    archive: PathBuf,
    state: PathBuf,
    /// Parsed files by file name. Rebuilt from the files at any time; it only saves reading
    /// a file twice and warning about a bad file twice.
    cache: Mutex<HashMap<String, Cached>>,
}

impl Mailbox {
    /// Opens the mailbox at `root`, creating its folders if they are missing.
    pub fn open(root: &Path) -> Result<Mailbox> {
        let mailbox = Mailbox {
            root: root.to_path_buf(),
            inbox: root.join("inbox"),
            archive: root.join("archive"),
            state: root.join("state"),
            cache: Mutex::new(HashMap::new()),
        };
        for dir in [&mailbox.inbox, &mailbox.archive, &mailbox.state] {
            fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        }
        Ok(mailbox)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn inbox(&self) -> &Path {
        &self.inbox
    }

    /// Writes a message durably and atomically: a temporary file in `inbox/`, flushed to
    /// disk, renamed to its final `.md` name, then the folder flushed. Returns its id.
    pub fn write(&self, draft: &Draft<'_>, now: DateTime<Local>) -> Result<String> {
        let front = FrontMatter {
            from: draft.from.to_owned(),
            to: draft.to.to_owned(),
            kind: draft.kind.to_owned(),
            subject: draft.subject.to_owned(),
            priority: draft.priority.to_owned(),
            created: now.format(message::TIME_FORMAT).to_string(),
            reply_to: draft.reply_to.map(str::to_owned),
            extra: Default::default(),
        };
        let text = message::render(&front, draft.body);
        for _ in 0..8 {
            let uid = random_uid();
            let id = message::file_stem(now, &uid, draft.from, draft.to, draft.subject);
            let path = self.inbox.join(format!("{id}.md"));
            if path.exists() {
                continue;
            }
            let tmp = self.inbox.join(format!("{id}.tmp.{uid}"));
            let written = write_synced(&tmp, text.as_bytes())
                .and_then(|()| fs::rename(&tmp, &path).map_err(Error::io("renaming", &tmp)));
            if let Err(err) = written {
                let _ = fs::remove_file(&tmp);
                return Err(err);
            }
            sync_dir(&self.inbox)?;
            return Ok(id);
        }
        Err(Error::Refused(
            "could not find an unused message id after 8 tries; try again".to_owned(),
        ))
    }

    /// True when a message with this id exists in `inbox/` or `archive/`.
    pub fn exists(&self, id: &str) -> bool {
        if id.contains(['/', '\\']) || id.starts_with('.') {
            return false;
        }
        let name = format!("{id}.md");
        self.inbox.join(&name).is_file() || self.archive.join(&name).is_file()
    }

    /// Every good message in `inbox/`, oldest first. Bad files are skipped with one warning
    /// each (again only when they change) and are never touched.
    pub fn scan(&self) -> Result<Vec<Arc<Message>>> {
        let entries = fs::read_dir(&self.inbox).map_err(Error::io("listing", &self.inbox))?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = HashSet::new();
        let mut messages = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => {
                    tracing::warn!(dir = %self.inbox.display(), %err, "listing the inbox");
                    continue;
                }
            };
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                tracing::warn!(file = ?entry.file_name(), "skipped: the file name is not UTF-8");
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let Some(id) = name.strip_suffix(".md") else {
                if name.contains(".tmp.") {
                    tracing::debug!(file = %name, "skipped: a temporary file");
                } else {
                    present.insert(name.clone());
                    cache.entry(name).or_insert_with_key(|name| {
                        tracing::warn!(file = %name, "skipped: not a .md file");
                        Cached::Bad((0, None))
                    });
                }
                continue;
            };
            present.insert(name.clone());
            // DirEntry::metadata does not follow symbolic links.
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(err) => {
                    tracing::warn!(file = %name, %err, "skipped: cannot stat");
                    continue;
                }
            };
            let stamp: Stamp = (meta.len(), meta.modified().ok());
            match cache.get(&name) {
                Some(Cached::Good(s, msg)) if *s == stamp => {
                    messages.push(msg.clone());
                    continue;
                }
                Some(Cached::Bad(s)) if *s == stamp => continue,
                _ => {}
            }
            let path = entry.path();
            let read = read_checked(&path, &meta, id);
            match read {
                Ok(msg) => {
                    let msg = Arc::new(msg);
                    messages.push(msg.clone());
                    cache.insert(name, Cached::Good(stamp, msg));
                }
                Err(reason) => {
                    tracing::warn!(file = %path.display(), %reason, "skipped a file in the inbox");
                    cache.insert(name, Cached::Bad(stamp));
                }
            }
        }
        cache.retain(|name, _| present.contains(name));
        messages.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(messages)
    }

    /// Loads (or starts) the read state of `session`.
    pub fn read_state(&self, session: &str, now: DateTime<Local>) -> Result<ReadState> {
        ReadState::load(self.state.join(format!("{session}.log")), now, true)
    }

    /// Loads the read state of `session` without writing anything: a name that never read
    /// mail gets an empty state that joined `now` (so only direct messages are its mail).
    /// Marking it read writes the file as [`Mailbox::read_state`] would.
    pub fn peek_state(&self, session: &str, now: DateTime<Local>) -> Result<ReadState> {
        ReadState::load(self.state.join(format!("{session}.log")), now, false)
    }

    /// The unread mail of `session` per `state`, oldest first, without `pushed` ones when
    /// `skip_pushed`. For one-shot processes (the hook): no cache, and only files that can
    /// be unread mail of `session` are opened. Skipped by their name alone: files its state
    /// marks read, and files named as the mailbox names them
    /// (`<stamp>-<uid>-<from>-<to>-<subject>`) whose `<to>` is neither `session` nor
    /// everyone, or is everyone but stamped before `state.joined`. Bad files are skipped
    /// quietly (`doctor` reports them).
    pub fn unread_for(
        &self,
        session: &str,
        state: &ReadState,
        skip_pushed: bool,
    ) -> Result<Vec<Message>> {
        let entries = fs::read_dir(&self.inbox).map_err(Error::io("listing", &self.inbox))?;
        let mut unread = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".md")) else {
                continue;
            };
            if id.starts_with('.')
                || state.read.contains(id)
                || (skip_pushed && state.pushed.contains(id))
            {
                continue;
            }
            let skip = match stem_recipient(id, session) {
                Some(Recipient::Other) => true,
                Some(Recipient::Everyone) => {
                    message::stem_time(id).is_some_and(|sent| sent < state.joined)
                }
                Some(Recipient::Maybe) | None => false,
            };
            if skip {
                continue;
            }
            let read = entry
                .metadata()
                .map_err(|e| format!("cannot stat: {e}"))
                .and_then(|meta| read_checked(&entry.path(), &meta, id));
            match read {
                Ok(msg) if state.is_unread(session, &msg) => unread.push(msg),
                Ok(_) => {}
                Err(reason) => tracing::debug!(file = %id, %reason, "skipped a file in the inbox"),
            }
        }
        unread.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(unread)
    }

    /// The message with this id, from `inbox/` or else `archive/`, with the folder's name.
    /// `Ok(None)` when neither holds it; a refusal when the file is no readable message.
    pub fn get(&self, id: &str) -> Result<Option<(Message, &'static str)>> {
        let id = id.strip_suffix(".md").unwrap_or(id);
        if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') {
            return Ok(None);
        }
        for (dir, place) in [(&self.inbox, "inbox"), (&self.archive, "archive")] {
            let path = dir.join(format!("{id}.md"));
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(Error::io("reading", &path)(err)),
            };
            return read_checked(&path, &meta, id)
                .map(|msg| Some((msg, place)))
                .map_err(|reason| {
                    Error::Refused(format!(
                        "{} is no readable message: {reason}",
                        path.display()
                    ))
                });
        }
        Ok(None)
    }

    /// The ids in `inbox/` and `archive/` that start with `prefix`, sorted, without repeats.
    pub fn ids_starting_with(&self, prefix: &str) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for dir in [&self.inbox, &self.archive] {
            for entry in fs::read_dir(dir)
                .map_err(Error::io("listing", dir))?
                .flatten()
            {
                if let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".md"))
                    && id.starts_with(prefix)
                    && !id.starts_with('.')
                {
                    ids.push(id.to_owned());
                }
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Every file in `inbox/` sorted into messages, bad files (with the reason) and
    /// temporary files, plus the number of messages in `archive/`. Reads everything, caches
    /// nothing, changes nothing: for a person checking the mailbox.
    pub fn audit(&self) -> Result<Audit> {
        let mut audit = Audit::default();
        let entries = fs::read_dir(&self.inbox).map_err(Error::io("listing", &self.inbox))?;
        for entry in entries {
            let entry = entry.map_err(Error::io("listing", &self.inbox))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                let shown = entry.file_name().to_string_lossy().into_owned();
                audit
                    .bad
                    .push((shown, "the file name is not UTF-8".to_owned()));
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let meta = entry.metadata();
            let Some(id) = name.strip_suffix(".md") else {
                if name.contains(".tmp.") {
                    let modified = meta.ok().and_then(|m| m.modified().ok());
                    audit.temporary.push((name, modified));
                } else {
                    audit.bad.push((name, "not a .md file".to_owned()));
                }
                continue;
            };
            let read = meta
                .map_err(|e| format!("cannot stat: {e}"))
                .and_then(|meta| read_checked(&entry.path(), &meta, id));
            match read {
                Ok(msg) => audit.messages.push(msg),
                Err(reason) => audit.bad.push((name, reason)),
            }
        }
        audit.messages.sort_by(|a, b| a.id.cmp(&b.id));
        audit.bad.sort();
        audit.archived = fs::read_dir(&self.archive)
            .map_err(Error::io("listing", &self.archive))?
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".md")))
            .count();
        Ok(audit)
    }

    /// Moves the messages that are done with from `inbox/` to `archive/` (or only lists them
    /// when `plan.dry_run`), oldest first. A message is done with when it is older than
    /// `plan.older_than` (by the stamp in its id, else `created`) and is either a broadcast,
    /// or a direct message its recipient has read (a `read` line in `state/<to>.log`).
    /// Unread direct messages, messages of unknown age and bad files stay; nothing is
    /// overwritten in `archive/`.
    pub fn archive(&self, plan: &ArchivePlan, now: DateTime<Local>) -> Result<Vec<Moved>> {
        let mut states: HashMap<String, Option<ReadState>> = HashMap::new();
        let mut moved = Vec::new();
        for msg in self.scan()? {
            let Some(sent) = sent_at(&msg) else { continue };
            if now.signed_duration_since(sent) < plan.older_than {
                continue;
            }
            let why = if msg.front.is_broadcast() {
                "a broadcast".to_owned()
            } else {
                let to = msg.front.to.clone();
                let state = states
                    .entry(to.clone())
                    .or_insert_with(|| self.existing_state(&to, now));
                match state {
                    Some(state) if state.read.contains(&msg.id) => format!("read by {to}"),
                    _ => continue,
                }
            };
            if !plan.dry_run {
                let name = format!("{}.md", msg.id);
                let (from, to) = (self.inbox.join(&name), self.archive.join(&name));
                if to.exists() {
                    tracing::warn!(file = %to.display(), "already in the archive; left in the inbox");
                    continue;
                }
                fs::rename(&from, &to).map_err(Error::io("moving", &from))?;
            }
            moved.push(Moved {
                id: msg.id.clone(),
                why,
            });
        }
        if !plan.dry_run && !moved.is_empty() {
            sync_dir(&self.inbox)?;
            sync_dir(&self.archive)?;
        }
        Ok(moved)
    }

    /// Deletes the messages in `archive/` older than `older_than` (or only lists them when
    /// `dry_run`), oldest first. Only files that read as messages are deleted; `inbox/` is
    /// never touched.
    pub fn prune(
        &self,
        older_than: TimeDelta,
        dry_run: bool,
        now: DateTime<Local>,
    ) -> Result<Vec<String>> {
        let entries = fs::read_dir(&self.archive).map_err(Error::io("listing", &self.archive))?;
        let mut old = Vec::new();
        for entry in entries.flatten() {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".md"))
                .map(str::to_owned)
            else {
                continue;
            };
            let path = entry.path();
            let read = entry
                .metadata()
                .map_err(|e| format!("cannot stat: {e}"))
                .and_then(|meta| read_checked(&path, &meta, &id));
            match read {
                Ok(msg) => {
                    if sent_at(&msg)
                        .is_some_and(|sent| now.signed_duration_since(sent) >= older_than)
                    {
                        old.push((id, path));
                    }
                }
                Err(reason) => {
                    tracing::warn!(file = %path.display(), %reason, "not a message; left in the archive")
                }
            }
        }
        old.sort();
        if !dry_run {
            for (_, path) in &old {
                fs::remove_file(path).map_err(Error::io("deleting", path))?;
            }
            if !old.is_empty() {
                sync_dir(&self.archive)?;
            }
        }
        Ok(old.into_iter().map(|(id, _)| id).collect())
    }

    /// The read state of `session` if it has one on disk; `None` for a name that never read
    /// mail, or one that cannot be a session name.
    fn existing_state(&self, session: &str, now: DateTime<Local>) -> Option<ReadState> {
        message::check_name(session).ok()?;
        let path = self.state.join(format!("{session}.log"));
        if !path.is_file() {
            return None;
        }
        ReadState::load(path, now, false)
            .map_err(|err| tracing::warn!(session, err = %format!("{err:#}"), "reading read state"))
            .ok()
    }
}

/// What [`Mailbox::archive`] moves.
#[derive(Debug, Clone)]
pub struct ArchivePlan {
    /// Only messages older than this.
    pub older_than: TimeDelta,
    /// List, move nothing.
    pub dry_run: bool,
}

/// A message [`Mailbox::archive`] moved (or would move), and why it was done with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub id: String,
    pub why: String,
}

/// What [`Mailbox::audit`] found.
#[derive(Debug, Default)]
pub struct Audit {
    /// Good messages in `inbox/`, oldest first.
    pub messages: Vec<Message>,
    /// Files in `inbox/` that are no message: file name and reason.
    pub bad: Vec<(String, String)>,
    /// Temporary files of writes in progress (or interrupted): name and last change.
    pub temporary: Vec<(String, Option<SystemTime>)>,
    /// Messages in `archive/`.
    pub archived: usize,
}

/// Whom a message id's `<to>` part can name, as far as the id tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recipient {
    /// Possibly the session asked about.
    Maybe,
    /// Everyone (`all`, or `broadcast` of older writers), and not the session asked about.
    Everyone,
    /// Neither.
    Other,
}

/// Reads the `<to>` part of an id named `<stamp>-<uid>-<from>-<to>-<subject>` for
/// `session`; `None` when the id is not named that way. Errs towards `Maybe`: `<from>` may
/// hold `-`, so every split is tried, and a long name may be cut to its first 16 characters
/// (or, by another writer, not cut at all).
fn stem_recipient(id: &str, session: &str) -> Option<Recipient> {
    const STAMP: usize = 21; // YYYYMMDDTHHMMSSffffff
    const HEAD: usize = STAMP + 1 + 8 + 1; // the stamp, `-`, the uid, `-`
    let b = id.as_bytes();
    let named = b.len() > HEAD
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..STAMP].iter().all(u8::is_ascii_digit)
        && b[STAMP] == b'-'
        && b[STAMP + 1..HEAD - 1].iter().all(u8::is_ascii_hexdigit)
        && b[HEAD - 1] == b'-';
    if !named {
        return None;
    }
    let rest = &b[HEAD..];
    // `<to>` follows the first `-` after a `<from>` of up to 64 bytes (names are that long
    // at most; this mailbox cuts them to 16).
    let starts = || {
        (0..rest.len().min(65))
            .filter(|&k| rest[k] == b'-')
            .map(|k| &rest[k + 1..])
    };
    let is = |to: &[u8], name: &[u8]| -> bool {
        if name.len() <= 16 {
            to.strip_prefix(name)
                .is_some_and(|r| r.first() == Some(&b'-'))
        } else {
            to.starts_with(&name[..16])
        }
    };
    let session = session.as_bytes();
    if starts().any(|to| is(to, session)) {
        return Some(Recipient::Maybe);
    }
    if starts().any(|to| is(to, b"all") || is(to, b"broadcast")) {
        return Some(Recipient::Everyone);
    }
    Some(Recipient::Other)
}

/// When a message was sent: the stamp in its id (microseconds), else `created`.
pub fn sent_at(msg: &Message) -> Option<DateTime<Local>> {
    message::stem_time(&msg.id).or_else(|| msg.front.created_at())
}

/// Reads a message file after checking what kind of file it is; `Err` says why it is no
/// message. `meta` must not follow symbolic links.
fn read_checked(
    path: &Path,
    meta: &fs::Metadata,
    id: &str,
) -> std::result::Result<Message, String> {
    if meta.file_type().is_symlink() {
        Err("a symbolic link".to_owned())
    } else if !meta.is_file() {
        Err("not a regular file".to_owned())
    } else if meta.len() > MAX_FILE_BYTES {
        Err(format!("larger than {MAX_FILE_BYTES} bytes"))
    } else {
        read_message(path, id)
    }
}

fn read_message(path: &Path, id: &str) -> std::result::Result<Message, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
    let (front, body) = message::parse(&text).map_err(|e| e.to_string())?;
    Ok(Message {
        id: id.to_owned(),
        front,
        body,
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(Error::io("creating", path))?;
    file.write_all(bytes).map_err(Error::io("writing", path))?;
    file.sync_all().map_err(Error::io("flushing", path))
}

/// Flushes a folder so that a rename in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("flushing", dir))
}

/// Eight random lowercase hex digits.
pub(crate) fn random_uid() -> String {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        // No system randomness: the time's nanoseconds and the pid still make a fresh uid,
        // and `write` checks that the name is unused.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        bytes = (nanos ^ std::process::id().rotate_left(16)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What one session has read and what it has been shown, in `state/<name>.log`.
///
/// The file is append-only, one line a fact, so a crash loses at most the line being
/// written: `joined <time>` first, then `read <id>` and `pushed <id>` lines.
#[derive(Debug)]
pub struct ReadState {
    path: PathBuf,
    /// When this name first read mail: broadcasts older than this are not its mail.
    pub joined: DateTime<Local>,
    read: HashSet<String>,
    pushed: HashSet<String>,
}

impl ReadState {
    /// Reads the state at `path`; when it is missing, starts one that joined `now`, written
    /// to disk only when `create`.
    fn load(path: PathBuf, now: DateTime<Local>, create: bool) -> Result<ReadState> {
        let mut state = ReadState {
            path,
            joined: now,
            read: HashSet::new(),
            pushed: HashSet::new(),
        };
        let text = match fs::read_to_string(&state.path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                if create {
                    let line = format!("joined {}\n", now.to_rfc3339());
                    state.append(&line)?;
                }
                return Ok(state);
            }
            Err(err) => return Err(Error::io("reading", &state.path)(err)),
        };
        let mut joined = None;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("joined", t)) => {
                    joined = joined.or_else(|| DateTime::parse_from_rfc3339(t).ok());
                }
                Some(("read", id)) => {
                    state.read.insert(id.to_owned());
                }
                Some(("pushed", id)) => {
                    state.pushed.insert(id.to_owned());
                }
                _ => {}
            }
        }
        match joined {
            Some(t) => state.joined = t.with_timezone(&Local),
            None => {
                tracing::warn!(file = %state.path.display(), "read state has no `joined` line; counting from now");
                if create {
                    state.append(&format!("joined {}\n", now.to_rfc3339()))?;
                }
            }
        }
        Ok(state)
    }

    /// True when `msg` is for `session` and it has not read it. Broadcasts sent before this
    /// name first joined are history, not mail.
    pub fn is_unread(&self, session: &str, msg: &Message) -> bool {
        if !msg.front.is_for(session) || self.read.contains(&msg.id) {
            return false;
        }
        if msg.front.is_broadcast() {
            // The id's stamp has microseconds; `created` only seconds.
            let sent = message::stem_time(&msg.id).or_else(|| msg.front.created_at());
            return sent.is_none_or(|sent| sent >= self.joined);
        }
        true
    }

    /// True when `msg` was already pushed to this session as a channel event.
    pub fn was_pushed(&self, id: &str) -> bool {
        self.pushed.contains(id)
    }

    pub fn mark_read<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
        self.mark("read", ids)
    }

    pub fn mark_pushed<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
        self.mark("pushed", ids)
    }

    fn mark<'a>(&mut self, what: &str, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let set = if what == "read" {
            &mut self.read
        } else {
            &mut self.pushed
        };
        let mut lines = String::new();
        for id in ids {
            if set.insert(id.to_owned()) {
                lines.push_str(&format!("{what} {id}\n"));
            }
        }
        if lines.is_empty() {
            return Ok(());
        }
        self.append(&lines)
    }

    fn append(&self, lines: &str) -> Result<()> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(Error::io("opening", &self.path))?;
        file.write_all(lines.as_bytes())
            .map_err(Error::io("appending to", &self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_read_from_ids() {
        use Recipient::*;
        let id = |from: &str, to: &str| {
            format!("20260406T153000123456-0a1b2c3d-{from}-{to}-a_subject-with-dashes")
        };
        assert_eq!(stem_recipient(&id("alpha", "beta"), "beta"), Some(Maybe));
        assert_eq!(stem_recipient(&id("beta", "gamma"), "beta"), Some(Other));
        assert_eq!(stem_recipient(&id("alpha", "beta2"), "beta"), Some(Other));
        assert_eq!(stem_recipient(&id("al-pha-x", "beta"), "beta"), Some(Maybe));
        assert_eq!(stem_recipient(&id("alpha", "all"), "beta"), Some(Everyone));
        assert_eq!(
            stem_recipient(&id("alpha", "broadcast"), "beta"),
            Some(Everyone)
        );
        assert_eq!(stem_recipient(&id("", "beta"), "beta"), Some(Maybe));
        // A long name is cut to 16 characters in ids; another writer may not cut it.
        let long = "a-very-long-session-name";
        assert_eq!(
            stem_recipient(&id("x1y", "a-very-long-sess"), long),
            Some(Maybe)
        );
        assert_eq!(stem_recipient(&id("x1y", long), long), Some(Maybe));
        // Not named the usual way: no answer, the file is read.
        assert_eq!(stem_recipient("notes", "beta"), None);
        assert_eq!(
            stem_recipient("20260406T1530-xx-alpha-gamma-s", "beta"),
            None
        );
    }
}
