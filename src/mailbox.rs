//! The only code that touches message files and read state: atomic write, scan, read state.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use chrono::{DateTime, Local};

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
            messages.extend(load(&mut cache, &name, id, &entry));
        }
        cache.retain(|name, _| present.contains(name));
        messages.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(messages)
    }

    /// The good messages in `inbox/` whose file name stamp is `since` or later, oldest
    /// first. Only those files are read (through the same cache as [`Mailbox::scan`]), so
    /// the cost follows the recent mail, not the size of an old inbox.
    pub fn recent(&self, since: DateTime<Local>) -> Result<Vec<Arc<Message>>> {
        let entries = fs::read_dir(&self.inbox).map_err(Error::io("listing", &self.inbox))?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
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
            messages.extend(load(&mut cache, &name, id, &entry));
        }
        messages.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(messages)
    }

    /// Reads the message `id` from `inbox/`.
    pub fn read(&self, id: &str) -> Result<Message> {
        if id.contains(['/', '\\']) || id.starts_with('.') {
            return Err(Error::Refused(format!("{id:?} is not a message id")));
        }
        let path = self.inbox.join(format!("{id}.md"));
        read_message(&path, id)
            .map_err(|reason| Error::Refused(format!("{}: {reason}", path.display())))
    }

    /// Loads (or starts) the read state of `session`.
    pub fn read_state(&self, session: &str, now: DateTime<Local>) -> Result<ReadState> {
        ReadState::load(self.state.join(format!("{session}.log")), now)
    }
}

/// Reads the `.md` file `entry` (named `name`, id `id`) through the parse cache: a file
/// with the size and time it had when it was parsed is not read again, and a bad one is
/// warned about once (again only when it changes).
fn load(
    cache: &mut HashMap<String, Cached>,
    name: &str,
    id: &str,
    entry: &fs::DirEntry,
) -> Option<Arc<Message>> {
    // DirEntry::metadata does not follow symbolic links.
    let meta = match entry.metadata() {
        Ok(meta) => meta,
        Err(err) => {
            tracing::warn!(file = %name, %err, "skipped: cannot stat");
            return None;
        }
    };
    let stamp: Stamp = (meta.len(), meta.modified().ok());
    match cache.get(name) {
        Some(Cached::Good(s, msg)) if *s == stamp => return Some(msg.clone()),
        Some(Cached::Bad(s)) if *s == stamp => return None,
        _ => {}
    }
    let path = entry.path();
    let read = if meta.file_type().is_symlink() {
        Err("a symbolic link".to_owned())
    } else if !meta.is_file() {
        Err("not a regular file".to_owned())
    } else if meta.len() > MAX_FILE_BYTES {
        Err(format!("larger than {MAX_FILE_BYTES} bytes"))
    } else {
        read_message(&path, id)
    };
    match read {
        Ok(msg) => {
            let msg = Arc::new(msg);
            cache.insert(name.to_owned(), Cached::Good(stamp, msg.clone()));
            Some(msg)
        }
        Err(reason) => {
            tracing::warn!(file = %path.display(), %reason, "skipped a file in the inbox");
            cache.insert(name.to_owned(), Cached::Bad(stamp));
            None
        }
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
    fn load(path: PathBuf, now: DateTime<Local>) -> Result<ReadState> {
        let mut state = ReadState {
            path,
            joined: now,
            read: HashSet::new(),
            pushed: HashSet::new(),
        };
        let text = match fs::read_to_string(&state.path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let line = format!("joined {}\n", now.to_rfc3339());
                state.append(&line)?;
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
                state.append(&format!("joined {}\n", now.to_rfc3339()))?;
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
