//! The only code that touches message files and read state. This file: the mailbox's
//! folders, the message types, writing one message and finding one by id. Listing the inbox
//! is in `scan`, reading one file in `read`, read state in `state`, archiving in `archive`,
//! message files as bytes (for other machines) in `bytes`, read marks carried to and from
//! other machines in `carry`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Local};

use crate::error::{Error, Result};
use crate::fsx;
use crate::message::{self, FrontMatter, MessageId};

mod archive;
mod bytes;
mod carry;
mod private;
mod read;
mod scan;
mod state;

pub use private::{Loose, loose_paths, tighten};

pub use archive::{ArchivePlan, Moved};
pub use bytes::{Arrival, ORIGIN_ATTR, arrived_from, read_bytes, write_arrivals};
pub use carry::{CarriedMark, StateTail};
pub use scan::{Audit, Filed};
pub use state::{MarkTimes, ReadState};

pub(crate) use crate::fsx::random_uid;
use read::{Skip, read_checked};

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

/// The senders of `msgs`, each once, in the order they first appear. Linear: a flood has as
/// many senders as messages.
pub fn senders<'a, M: std::borrow::Borrow<Message> + 'a>(
    msgs: impl IntoIterator<Item = &'a M>,
) -> Vec<&'a str> {
    let mut seen = std::collections::HashSet::new();
    msgs.into_iter()
        .map(|m| m.borrow().front.from.as_str())
        .filter(|from| seen.insert(*from))
        .collect()
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

/// A mailbox root on disk.
pub struct Mailbox {
    root: PathBuf,
    inbox: PathBuf,
    archive: PathBuf,
    state: PathBuf,
    /// Parsed files by file name. Rebuilt from the files at any time; it only saves reading
    /// a file twice and warning about a bad file twice.
    cache: Mutex<scan::Cache>,
    /// Seals what [`Mailbox::write`] writes; checks the seal of reserved senders.
    sealer: crate::seal::Sealer,
}

impl Mailbox {
    /// Opens the mailbox at `root`, creating it and its folders private (0700 whatever the
    /// umask; [`fsx::private_dir`]) if they are missing.
    pub fn open(root: &Path) -> Result<Mailbox> {
        let mailbox = Mailbox {
            root: root.to_path_buf(),
            inbox: root.join("inbox"),
            archive: root.join("archive"),
            state: root.join("state"),
            cache: Mutex::new(scan::Cache::default()),
            sealer: crate::seal::Sealer::new(root),
        };
        for dir in [root, &mailbox.inbox, &mailbox.archive, &mailbox.state] {
            fsx::private_dir(dir)?;
        }
        Ok(mailbox)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn inbox(&self) -> &Path {
        &self.inbox
    }

    /// Writes a message durably and atomically ([`fsx::write_atomic`]: a temporary file in
    /// `inbox/`, flushed to disk, renamed to its final `.md` name, then the folder flushed),
    /// sealed ([`crate::seal`]) when its sender is a reserved name. Returns its id.
    pub fn write(&self, draft: &Draft<'_>, now: DateTime<Local>) -> Result<String> {
        let mut front = FrontMatter {
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
        // A reader checks the seal of a reserved sender only (anyone may use a session
        // name, so a session's seal would prove nothing): no other message is sealed. The
        // seal covers the values as a reader parses them back.
        let plain = if message::is_reserved(draft.from) {
            let text = message::render(&front, draft.body);
            Some(
                message::parse(&text)
                    .map_err(|e| Error::Refused(format!("the message cannot be written: {e}")))?,
            )
        } else {
            None
        };
        for _ in 0..8 {
            let id = message::file_stem(now, &random_uid(), draft.from, draft.to, draft.subject);
            let path = self.inbox.join(format!("{id}.md"));
            if path.exists() {
                continue;
            }
            if let Some((plain, body)) = &plain {
                match self.sealer.seal(&id, plain, body) {
                    Some(seal) => front.extra.insert(crate::seal::SEAL_KEY.to_owned(), seal),
                    None => front.extra.remove(crate::seal::SEAL_KEY),
                };
            }
            let text = message::render(&front, draft.body);
            fsx::write_atomic(&path, text.as_bytes())?;
            return Ok(id);
        }
        Err(Error::Refused(
            "could not find an unused message id after 8 tries; try again".to_owned(),
        ))
    }

    /// What can be said about a message's sender: a session name, or a reserved sender
    /// whose seal shows that t9-ipc's own code wrote it, or one whose seal does not.
    pub fn sender(&self, msg: &Message) -> crate::seal::Sender {
        self.sealer.sender(&msg.id, &msg.front, &msg.body)
    }

    /// True when a message with this id exists in `inbox/` or `archive/`.
    pub fn exists(&self, id: &str) -> bool {
        let Some(name) = file_name(id) else {
            return false;
        };
        self.inbox.join(&name).is_file() || self.archive.join(&name).is_file()
    }

    /// The ids (file stems) of every `*.md` file in `inbox/`, unsorted; nothing is read.
    pub fn ids(&self) -> Result<Vec<String>> {
        Ok(messages_in(&self.inbox)?.map(|(_, id)| id).collect())
    }

    /// A message from `archive/` (not cached: archived mail is looked up rarely).
    pub fn get_archived(&self, id: &str) -> Option<Arc<Message>> {
        let path = self.archive.join(file_name(id)?);
        let meta = fs::symlink_metadata(&path).ok()?;
        read_checked(&path, &meta, id).ok().map(Arc::new)
    }

    /// The message with this id, from `inbox/` or else `archive/`, with the folder's name.
    /// `Ok(None)` when neither holds it; a refusal when the file is no readable message.
    pub fn find(&self, id: &str) -> Result<Option<(Message, &'static str)>> {
        let id = id.strip_suffix(".md").unwrap_or(id);
        let Some(name) = file_name(id) else {
            return Ok(None);
        };
        for (dir, place) in [(&self.inbox, "inbox"), (&self.archive, "archive")] {
            let path = dir.join(&name);
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
            ids.extend(
                messages_in(dir)?
                    .map(|(_, id)| id)
                    .filter(|id| id.starts_with(prefix)),
            );
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

/// The entries of `dir` named `<id>.md` (not hidden, UTF-8), with their id; entries that
/// cannot be listed are passed over.
fn messages_in(dir: &Path) -> Result<impl Iterator<Item = (fs::DirEntry, String)>> {
    let entries = fs::read_dir(dir).map_err(Error::io("listing", dir))?;
    Ok(entries.flatten().filter_map(|entry| {
        let name = entry.file_name().into_string().ok()?;
        let id = name.strip_suffix(".md").filter(|id| !id.starts_with('.'))?;
        let id = id.to_owned();
        Some((entry, id))
    }))
}

/// `<id>.md`, for an id that can only name a file directly in a mailbox folder (not empty,
/// no path separator, not hidden); `None` for any other.
fn file_name(id: &str) -> Option<String> {
    MessageId::is_file_stem(id).then(|| format!("{id}.md"))
}

/// When a message was sent: the stamp in its id (microseconds), else `created`.
pub fn sent_at(msg: &Message) -> Option<DateTime<Local>> {
    message::stem_time(&msg.id).or_else(|| msg.front.created_at())
}
