//! The only code that touches message files and read state: atomic write, scan, read state.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
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
#[derive(Debug, Clone, Default)]
pub struct Draft<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub kind: &'a str,
    pub subject: &'a str,
    pub priority: &'a str,
    pub reply_to: Option<&'a str>,
    /// The first message of the thread, for replies.
    pub thread: Option<&'a str>,
    pub supersedes: Option<&'a str>,
    /// When the message stops mattering.
    pub expires: Option<DateTime<Local>>,
    /// Information only: the sender expects no answer.
    pub info_only: bool,
    pub body: &'a str,
}

/// A file's identity for the parse cache: a changed file is read again.
type Stamp = (u64, Option<SystemTime>);

enum Cached {
    Good(Stamp, Arc<Message>),
    Bad(Stamp),
}

/// What [`Mailbox`] remembers about the files in `inbox/`.
#[derive(Default)]
struct Cache {
    /// Parsed files by file name.
    files: HashMap<String, Cached>,
    /// Names that are not UTF-8: warned about once, while they stay.
    odd_names: HashSet<OsString>,
}

/// Why a file was not read as a message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Skip {
    /// It is no message; the reason is for a warning.
    Bad(String),
    /// It went away before it was read (archived or deleted meanwhile): nothing to say.
    Gone,
    /// A process has it open for writing: it is read when its writer closes it.
    Writing,
}

impl Skip {
    fn reason(&self) -> String {
        match self {
            Skip::Bad(reason) => reason.clone(),
            Skip::Gone => "it is gone".to_owned(),
            Skip::Writing => "it is still being written".to_owned(),
        }
    }
}

/// A mailbox root on disk.
pub struct Mailbox {
    root: PathBuf,
    inbox: PathBuf,
    archive: PathBuf,
    state: PathBuf,
    /// Parsed files by file name. Rebuilt from the files at any time; it only saves reading
    /// a file twice and warning about a bad file twice.
    cache: Mutex<Cache>,
}

impl Mailbox {
    /// Opens the mailbox at `root`, creating its folders if they are missing.
    pub fn open(root: &Path) -> Result<Mailbox> {
        let mailbox = Mailbox {
            root: root.to_path_buf(),
            inbox: root.join("inbox"),
            archive: root.join("archive"),
            state: root.join("state"),
            cache: Mutex::new(Cache::default()),
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
            thread: draft.thread.map(str::to_owned),
            supersedes: draft.supersedes.map(str::to_owned),
            expires: draft
                .expires
                .map(|t| t.format(message::TIME_FORMAT).to_string()),
            expects_reply: draft.info_only.then(|| "false".to_owned()),
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
        self.scan_where(|_| true)
    }

    /// The messages in `inbox/` that may be for `name` (addressed to it or to everyone),
    /// oldest first. Only files whose name allows it are read, so the cost follows the mail
    /// of this name, not the size of the inbox. The caller still checks
    /// [`FrontMatter::is_for`](crate::message::FrontMatter::is_for).
    pub fn scan_for(&self, name: &str) -> Result<Vec<Arc<Message>>> {
        self.scan_where(|stem| message::stem_may_be_for(stem, name))
    }

    /// The ids (file stems) of every `*.md` file in `inbox/`, unsorted; nothing is read.
    pub fn ids(&self) -> Result<Vec<String>> {
        let entries = fs::read_dir(&self.inbox).map_err(Error::io("listing", &self.inbox))?;
        Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| n.strip_suffix(".md").map(str::to_owned))
            .collect())
    }

    fn scan_where(&self, wanted: impl Fn(&str) -> bool) -> Result<Vec<Arc<Message>>> {
        let entries = fs::read_dir(&self.inbox).map_err(Error::io("listing", &self.inbox))?;
        let mut cache = self.cache();
        let mut present = HashSet::new();
        let mut odd_names = HashSet::new();
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
                let name = entry.file_name();
                if !cache.odd_names.contains(&name) {
                    tracing::warn!(file = ?name, "skipped: the file name is not UTF-8");
                }
                odd_names.insert(name);
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
                    cache.files.entry(name).or_insert_with_key(|name| {
                        tracing::warn!(file = %name, "skipped: not a .md file");
                        Cached::Bad((0, None))
                    });
                }
                continue;
            };
            present.insert(name.clone());
            if !wanted(id) {
                continue;
            }
            // DirEntry::metadata does not follow symbolic links.
            match entry.metadata() {
                Ok(meta) => {
                    if let Some(msg) = self.load(&mut cache, &name, &meta) {
                        messages.push(msg);
                    }
                }
                Err(err) => stat_failed(&name, &err),
            }
        }
        cache.files.retain(|name, _| present.contains(name));
        cache.odd_names = odd_names;
        messages.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(messages)
    }

    /// The message with this id, read again only if its file changed; `None` when it is gone
    /// or not a good message (warned about once).
    pub fn get(&self, id: &str) -> Option<Arc<Message>> {
        if id.contains(['/', '\\']) || id.starts_with('.') {
            return None;
        }
        let name = format!("{id}.md");
        let mut cache = self.cache();
        match fs::symlink_metadata(self.inbox.join(&name)) {
            Ok(meta) => self.load(&mut cache, &name, &meta),
            Err(_) => {
                cache.files.remove(&name);
                None
            }
        }
    }

    /// A message from `archive/` (not cached: archived mail is looked up rarely).
    pub fn get_archived(&self, id: &str) -> Option<Arc<Message>> {
        if id.contains(['/', '\\']) || id.starts_with('.') {
            return None;
        }
        let path = self.archive.join(format!("{id}.md"));
        let meta = fs::symlink_metadata(&path).ok()?;
        read_checked(&path, &meta, id).ok().map(Arc::new)
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // The cache holds plain data; a panic elsewhere leaves it usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `inbox/<name>` unless the cache holds it at the same size and time. A bad file
    /// is warned about once; a file that is gone or still being written is left for later,
    /// quietly.
    fn load(&self, cache: &mut Cache, name: &str, meta: &fs::Metadata) -> Option<Arc<Message>> {
        let stamp: Stamp = (meta.len(), meta.modified().ok());
        match cache.files.get(name) {
            Some(Cached::Good(s, msg)) if *s == stamp => return Some(msg.clone()),
            Some(Cached::Bad(s)) if *s == stamp => return None,
            _ => {}
        }
        let id = name.strip_suffix(".md")?;
        let path = self.inbox.join(name);
        match read_checked(&path, meta, id) {
            Ok(msg) => {
                let msg = Arc::new(msg);
                cache
                    .files
                    .insert(name.to_owned(), Cached::Good(stamp, msg.clone()));
                Some(msg)
            }
            Err(Skip::Bad(reason)) => {
                tracing::warn!(file = %path.display(), %reason, "skipped a file in the inbox");
                cache.files.insert(name.to_owned(), Cached::Bad(stamp));
                None
            }
            Err(skip) => {
                tracing::debug!(file = %path.display(), reason = %skip.reason(), "not read now");
                cache.files.remove(name);
                None
            }
        }
    }

    /// True (and the time noted in `archive/.last-run`) when no archive pass was started in
    /// the last `every`: many sessions starting at once archive once.
    pub fn archive_due(&self, every: std::time::Duration) -> bool {
        let marker = self.archive.join(".last-run");
        let recent = fs::metadata(&marker)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < every);
        if recent {
            return false;
        }
        // Written again each pass, so its time is the last pass.
        let _ = fs::remove_file(&marker);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
        {
            Ok(_) => true,
            // Another server just claimed this pass.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => false,
            Err(err) => {
                tracing::warn!(file = %marker.display(), %err, "noting the archive pass");
                true
            }
        }
    }

    /// Every name's `joined` time and read ids, read without writing anything.
    fn all_read_states(&self) -> Result<HashMap<String, Seen>> {
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
                match line.split_once(' ') {
                    Some(("joined", t)) if joined.is_none() => {
                        joined = DateTime::parse_from_rfc3339(t)
                            .ok()
                            .map(|t| t.with_timezone(&Local));
                    }
                    Some(("read", id)) => {
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

    /// The good messages in `inbox/` whose file name stamp is `since` or later, oldest
    /// first. Only those files are read (through the same cache as [`Mailbox::scan`]), so
    /// the cost follows the recent mail, not the size of an old inbox.
    pub fn recent(&self, since: DateTime<Local>) -> Result<Vec<Arc<Message>>> {
        let entries = fs::read_dir(&self.inbox).map_err(Error::io("listing", &self.inbox))?;
        let mut cache = self.cache();
        let mut messages = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some(id) = name.strip_suffix(".md") else {
                continue;
            };
            if name.starts_with('.') || message::stem_time(id).is_none_or(|t| t < since) {
                continue;
            }
            match entry.metadata() {
                Ok(meta) => messages.extend(self.load(&mut cache, &name, &meta)),
                Err(err) => stat_failed(&name, &err),
            }
        }
        messages.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(messages)
    }

    /// Loads (or starts) the read state of `session`.
    pub fn read_state(&self, session: &str, now: DateTime<Local>) -> Result<ReadState> {
        let path = self.state.join(format!("{session}.log"));
        ReadState::load(path, now, true, || self.first_sent_by(session))
    }

    /// The time of the oldest message in `inbox/` sent by `name`: proof that the name was
    /// running then. Reads file names only.
    fn first_sent_by(&self, name: &str) -> Option<DateTime<Local>> {
        let part = format!("-{}-", message::file_stem_part(name));
        self.ids()
            .ok()?
            .into_iter()
            // Bytes: a foreign name may have a character across byte 30.
            .filter(|id| id.len() > 31 && id.as_bytes()[30..].starts_with(part.as_bytes()))
            .filter_map(|id| message::stem_time(&id))
            .min()
    }

    /// Loads the read state of `session` without writing anything: a name that never read
    /// mail gets an empty state that joined `now` (so only direct messages are its mail).
    /// Marking it read writes the file as [`Mailbox::read_state`] would.
    pub fn peek_state(&self, session: &str, now: DateTime<Local>) -> Result<ReadState> {
        let path = self.state.join(format!("{session}.log"));
        ReadState::load(path, now, false, || self.first_sent_by(session))
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
        now: DateTime<Local>,
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
                .map_err(stat_skip)
                .and_then(|meta| read_checked(&entry.path(), &meta, id));
            match read {
                Ok(msg) if state.is_unread(session, &msg, now) => unread.push(msg),
                Ok(_) => {}
                Err(skip) => {
                    tracing::debug!(file = %id, reason = %skip.reason(), "skipped a file in the inbox")
                }
            }
        }
        unread.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(unread)
    }

    /// The message with this id, from `inbox/` or else `archive/`, with the folder's name.
    /// `Ok(None)` when neither holds it; a refusal when the file is no readable message.
    pub fn find(&self, id: &str) -> Result<Option<(Message, &'static str)>> {
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
            return match read_checked(&path, &meta, id) {
                Ok(msg) => Ok(Some((msg, place))),
                Err(Skip::Gone) => continue,
                Err(Skip::Writing) => Err(Error::Refused(format!(
                    "{} is still being written; try again when its writer has finished",
                    path.display()
                ))),
                Err(Skip::Bad(reason)) => Err(Error::Refused(format!(
                    "{} is no readable message: {reason}",
                    path.display()
                ))),
            };
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
                .map_err(stat_skip)
                .and_then(|meta| read_checked(&entry.path(), &meta, id));
            match read {
                Ok(msg) => audit.messages.push(msg),
                Err(Skip::Gone) => {}
                Err(skip) => audit.bad.push((name, skip.reason())),
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

    /// Moves finished mail from `inbox/` to `archive/` (or only lists it when
    /// `plan.dry_run`), oldest first, under the same file names. A message is finished when
    /// it is older than `plan.older_than` (by the stamp in its id, else `created`) and it
    /// has expired, or a later message of its sender replaced it, or it is a direct message
    /// its recipient has read, or a broadcast that every name that joined before it has read.
    /// Unread mail, mail of unknown age and bad files stay; nothing is overwritten in
    /// `archive/`, and nothing is deleted.
    pub fn archive(&self, plan: &ArchivePlan, now: DateTime<Local>) -> Result<Vec<Moved>> {
        let states = self.all_read_states()?;
        // Only files old enough by the stamp in their name are read (and not cached): the
        // cost follows the old mail, not the inbox. A later message that replaces one is
        // seen once it is old enough itself.
        let mut messages = Vec::new();
        for id in self.ids()? {
            if message::stem_time(&id)
                .is_some_and(|t| now.signed_duration_since(t) < plan.older_than)
            {
                continue;
            }
            let path = self.inbox.join(format!("{id}.md"));
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if let Ok(msg) = read_checked(&path, &meta, &id) {
                messages.push(msg);
            }
        }
        messages.sort_by(|a, b| a.id.cmp(&b.id));
        let replaced: HashMap<&str, &str> = messages
            .iter()
            .filter_map(|m| Some((m.front.supersedes.as_deref()?, m.front.from.as_str())))
            .collect();
        let read_by = |name: &str, id: &str| states.get(name).is_some_and(|(_, r)| r.contains(id));
        let mut moved = Vec::new();
        for msg in &messages {
            let Some(sent) = sent_at(msg) else { continue };
            if now.signed_duration_since(sent) < plan.older_than {
                continue;
            }
            let why = if msg.front.is_expired(now) {
                "expired".to_owned()
            } else if replaced.get(msg.id.as_str()) == Some(&msg.front.from.as_str()) {
                "replaced by a later message".to_owned()
            } else if msg.front.is_broadcast() {
                let everyone = states
                    .iter()
                    .filter(|(name, (joined, _))| **name != msg.front.from && *joined <= sent)
                    .all(|(name, _)| read_by(name, &msg.id));
                if !everyone {
                    continue;
                }
                "a broadcast read by everyone".to_owned()
            } else if read_by(&msg.front.to, &msg.id) {
                format!("read by {}", msg.front.to)
            } else {
                continue;
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
                .map_err(stat_skip)
                .and_then(|meta| read_checked(&path, &meta, &id));
            match read {
                Ok(msg) => {
                    if sent_at(&msg)
                        .is_some_and(|sent| now.signed_duration_since(sent) >= older_than)
                    {
                        old.push((id, path));
                    }
                }
                Err(Skip::Gone) => {}
                Err(skip) => {
                    tracing::warn!(file = %path.display(), reason = %skip.reason(), "not a message; left in the archive")
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
/// `session`; `None` when the id is not named that way. Errs towards `Maybe`, as
/// [`message::stem_may_address`] does.
fn stem_recipient(id: &str, session: &str) -> Option<Recipient> {
    if !message::stem_is_shaped(id) {
        None
    } else if message::stem_may_address(id, session) {
        Some(Recipient::Maybe)
    } else if message::stem_may_address_everyone(id) {
        Some(Recipient::Everyone)
    } else {
        Some(Recipient::Other)
    }
}

/// When a message was sent: the stamp in its id (microseconds), else `created`.
pub fn sent_at(msg: &Message) -> Option<DateTime<Local>> {
    message::stem_time(&msg.id).or_else(|| msg.front.created_at())
}

/// Reads a message file after checking what kind of file it is; `Err` says why it is no
/// message. `meta` must not follow symbolic links.
fn read_checked(path: &Path, meta: &fs::Metadata, id: &str) -> std::result::Result<Message, Skip> {
    if meta.file_type().is_symlink() {
        Err(Skip::Bad("a symbolic link".to_owned()))
    } else if !meta.is_file() {
        Err(Skip::Bad("not a regular file".to_owned()))
    } else if meta.len() > MAX_FILE_BYTES {
        Err(Skip::Bad(format!("larger than {MAX_FILE_BYTES} bytes")))
    } else {
        read_message(path, id)
    }
}

/// A `stat` that failed: quiet when the file is gone (archived or deleted after the listing).
fn stat_failed(name: &str, err: &io::Error) {
    if err.kind() == io::ErrorKind::NotFound {
        tracing::debug!(file = %name, "not read now: it is gone");
    } else {
        tracing::warn!(file = %name, %err, "skipped: cannot stat");
    }
}

fn stat_skip(err: io::Error) -> Skip {
    if err.kind() == io::ErrorKind::NotFound {
        Skip::Gone
    } else {
        Skip::Bad(format!("cannot stat: {err}"))
    }
}

/// Reads one message file. What the caller checked may have changed since (the file was
/// replaced, grew, or is being written), so the open file is checked again: the open never
/// blocks (a FIFO) nor follows a link, only a regular file is read, never more than
/// [`MAX_FILE_BYTES`], and not while a process has it open for writing.
fn read_message(path: &Path, id: &str) -> std::result::Result<Message, Skip> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => Skip::Gone,
            Some(libc::ELOOP) => Skip::Bad("a symbolic link".to_owned()),
            _ => Skip::Bad(format!("cannot read: {e}")),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| Skip::Bad(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(Skip::Bad("not a regular file".to_owned()));
    }
    let too_large = || Skip::Bad(format!("larger than {MAX_FILE_BYTES} bytes"));
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    if open_for_writing(&file) {
        return Err(Skip::Writing);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Skip::Bad(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let text = String::from_utf8(bytes).map_err(|_| Skip::Bad("not UTF-8 text".to_owned()))?;
    let (front, body) = message::parse(&text).map_err(|e| Skip::Bad(e.to_string()))?;
    Ok(Message {
        id: id.to_owned(),
        front,
        body,
    })
}

/// True when some process has `file` open for writing: a writer that writes a message in
/// place has not finished it yet. Linux tells by refusing a read lease (`F_SETLEASE`) then;
/// the lease, when granted, is dropped at once. Where leases are unsupported or not allowed
/// (a file of another user, NFS), and on other systems, the answer is false: the file is read.
#[cfg(target_os = "linux")]
fn open_for_writing(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    /// `F_SETSIG` from `<fcntl.h>` (the same on every Linux architecture); libc lacks it.
    const F_SETSIG: libc::c_int = 10;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a file descriptor this function borrows open; no memory is passed.
    unsafe {
        // A writer opening the file while the lease is held breaks it with a signal to this
        // process: SIGURG, ignored by default, not SIGIO, whose default ends the process.
        if libc::fcntl(fd, F_SETSIG, libc::SIGURG) == -1 {
            return false;
        }
        if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0 {
            libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
            return false;
        }
    }
    io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
}

#[cfg(not(target_os = "linux"))]
fn open_for_writing(_file: &File) -> bool {
    false
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

/// A name's `joined` time and the ids it read.
type Seen = (DateTime<Local>, HashSet<String>);

/// What one session has read and what it has been shown, in `state/<name>.log`.
///
/// The file is append-only, one fact a line, so a crash loses at most the line being
/// written: `joined <time>` first, then `read <id>`, `pushed <id>` (sent as a channel event)
/// and `listed <id>` (named in a digest event, body not sent). Appends take the file's lock,
/// so several processes (a server, a hook, the CLI) can write one name's state; each picks up
/// the others' lines with [`ReadState::refresh`]. A line it cannot read is skipped: a damaged
/// file can make mail unread again, never lose it.
#[derive(Debug)]
pub struct ReadState {
    path: PathBuf,
    /// When this name first read mail: broadcasts older than this are not its mail.
    pub joined: DateTime<Local>,
    read: HashSet<String>,
    pushed: HashSet<String>,
    listed: HashSet<String>,
    /// How far the file has been read.
    offset: u64,
    /// Counts the refreshes that took in lines of other processes.
    generation: u64,
    has_joined: bool,
}

impl ReadState {
    /// Reads the state at `path`. When it is missing, starts one (written to disk only
    /// when `create`) that joined when `first_seen` says the name first sent mail, or `now`.
    fn load(
        path: PathBuf,
        now: DateTime<Local>,
        create: bool,
        first_seen: impl FnOnce() -> Option<DateTime<Local>>,
    ) -> Result<ReadState> {
        let mut state = ReadState {
            path,
            joined: now,
            read: HashSet::new(),
            pushed: HashSet::new(),
            listed: HashSet::new(),
            offset: 0,
            generation: 0,
            has_joined: false,
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
                state.append(&format!("joined {}\n", joined.to_rfc3339()))?;
            }
        }
        Ok(state)
    }

    /// Reads the lines other processes appended since the last look. Cheap when nothing
    /// changed (one `stat`).
    /// A number that changes whenever [`ReadState::refresh`] took in other processes' lines.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn refresh(&mut self) -> Result<()> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                if self.offset > 0 {
                    tracing::warn!(file = %self.path.display(), "read state file vanished; starting it again");
                    self.offset = 0;
                    let line = format!("joined {}\n", self.joined.to_rfc3339());
                    self.append(&line)?;
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
            match line.split_once(' ') {
                Some(("joined", t)) => match DateTime::parse_from_rfc3339(t) {
                    Ok(t) if !self.has_joined => {
                        self.joined = t.with_timezone(&Local);
                        self.has_joined = true;
                    }
                    Ok(_) => {}
                    Err(_) => bad += 1,
                },
                Some(("read", id)) => {
                    self.read.insert(id.to_owned());
                }
                Some(("pushed", id)) => {
                    self.pushed.insert(id.to_owned());
                }
                Some(("listed", id)) => {
                    self.listed.insert(id.to_owned());
                }
                _ if line.is_empty() => {}
                _ => bad += 1,
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
            let sent = message::stem_time(&msg.id).or_else(|| msg.front.created_at());
            return sent.is_none_or(|sent| sent >= self.joined);
        }
        true
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
        let word = match what {
            Mark::Read => "read",
            Mark::Pushed => "pushed",
            Mark::Listed => "listed",
        };
        let known = self.set_of(what);
        let mut new = HashSet::new();
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
        // Read only once it is on disk: when the write fails (a full disk) the caller fails
        // and the model got nothing, so the mail stays unread rather than hidden until the
        // next start. A pushed or listed event did leave: not again from this process.
        if written.is_ok() || !matches!(what, Mark::Read) {
            self.set_of(what).extend(new.into_iter().map(str::to_owned));
        }
        written
    }

    fn set_of(&mut self, what: Mark) -> &mut HashSet<String> {
        match what {
            Mark::Read => &mut self.read,
            Mark::Pushed => &mut self.pushed,
            Mark::Listed => &mut self.listed,
        }
    }

    /// Appends whole lines under the file's lock, in one write, so that concurrent writers
    /// never interleave.
    fn append(&mut self, lines: &str) -> Result<()> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(Error::io("opening", &self.path))?;
        file.lock().map_err(Error::io("locking", &self.path))?;
        // Others' lines first, so ours are not counted as unread bytes next time.
        let before = file
            .metadata()
            .map_err(Error::io("reading", &self.path))?
            .len();
        if let Err(err) = file.write_all(lines.as_bytes()) {
            // Half a line (a full disk) would spoil the next line written: take it back.
            let _ = file.set_len(before);
            return Err(Error::io("appending to", &self.path)(err));
        }
        if before == self.offset {
            self.offset += lines.len() as u64;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Mark {
    Read,
    Pushed,
    Listed,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "---\nfrom: alpha\nto: beta\nsubject: s\n---\n\nbody\n";

    /// `read_message` on `path` in a thread: it must answer within the time, never hang.
    fn read_in_time(path: &Path) -> std::result::Result<Message, Skip> {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(read_message(&path, "x"));
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("read_message returned in time")
    }

    // The callers look at the file first (lstat); these show what happens when the file
    // changed after that look.

    #[test]
    fn a_fifo_is_never_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.md");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; mkfifo reads it only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(
            read_in_time(&fifo),
            Err(Skip::Bad("not a regular file".to_owned()))
        );
    }

    #[test]
    fn links_are_not_followed_not_even_in_a_loop() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, good) = (
            dir.path().join("a.md"),
            dir.path().join("b.md"),
            dir.path().join("good.md"),
        );
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        fs::write(&good, GOOD).unwrap();
        let c = dir.path().join("c.md");
        std::os::unix::fs::symlink(&good, &c).unwrap();
        for link in [a, c] {
            assert_eq!(
                read_in_time(&link),
                Err(Skip::Bad("a symbolic link".to_owned()))
            );
        }
    }

    #[test]
    fn a_file_gone_or_grown_or_being_written_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.md");
        assert_eq!(read_in_time(&path), Err(Skip::Gone));
        let mut big = GOOD.as_bytes().to_vec();
        big.resize(MAX_FILE_BYTES as usize + 1, b'x');
        fs::write(&path, &big).unwrap();
        assert!(matches!(read_in_time(&path), Err(Skip::Bad(r)) if r.starts_with("larger")));
        let mut writer = File::create(&path).unwrap();
        writer.write_all(GOOD.as_bytes()).unwrap();
        // Another process could hold it; this one does here. A lease is refused either way.
        let expected = if cfg!(target_os = "linux") {
            Err(Skip::Writing)
        } else {
            read_message(&path, "x")
        };
        assert_eq!(read_in_time(&path), expected);
        drop(writer);
        assert_eq!(read_in_time(&path).unwrap().body, "body");
    }

    proptest::proptest! {
        #[test]
        fn ids_of_this_mailbox_name_their_recipient(
            from in "[A-Za-z0-9_-]{3,64}",
            to in "[A-Za-z0-9_-]{3,64}",
            subject in "\\PC{0,60}",
        ) {
            let now = DateTime::UNIX_EPOCH.with_timezone(&Local);
            let id = message::file_stem(now, "0a1b2c3d", &from, &to, &subject);
            proptest::prop_assert_eq!(stem_recipient(&id, &to), Some(Recipient::Maybe), "{}", id);
        }
    }

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
