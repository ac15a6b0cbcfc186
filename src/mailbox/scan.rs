//! Listing the inbox: whole and filtered scans through the parse cache, the one-shot
//! reader of a name's unread mail, and the audit a person asks for.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::sync::{Arc, MutexGuard};
use std::time::SystemTime;

use chrono::{DateTime, Local};

use super::read::{Skip, read_checked, read_entry, stat_failed};
use super::{Mailbox, Message, ReadState, file_name, messages_in};
use crate::error::{Error, Result};
use crate::message::{self, MessageId};

/// A file's identity for the parse cache: a changed file is read again.
type Stamp = (u64, Option<SystemTime>);

enum Cached {
    Good(Stamp, Arc<Message>),
    Bad(Stamp),
}

/// What [`Mailbox`] remembers about the files in `inbox/`.
#[derive(Default)]
pub(super) struct Cache {
    /// Parsed files by file name.
    files: HashMap<String, Cached>,
    /// Names that are not UTF-8: warned about once, while they stay.
    odd_names: HashSet<OsString>,
}

impl Mailbox {
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
        let name = file_name(id)?;
        let mut cache = self.cache();
        match fs::symlink_metadata(self.inbox.join(&name)) {
            Ok(meta) => self.load(&mut cache, &name, &meta),
            Err(_) => {
                cache.files.remove(&name);
                None
            }
        }
    }

    pub(super) fn cache(&self) -> MutexGuard<'_, Cache> {
        // The cache holds plain data; a panic elsewhere leaves it usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `inbox/<name>` unless the cache holds it at the same size and time. A bad file
    /// is warned about once; a file that is gone or still being written is left for later,
    /// quietly.
    pub(super) fn load(
        &self,
        cache: &mut Cache,
        name: &str,
        meta: &fs::Metadata,
    ) -> Option<Arc<Message>> {
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

    /// The good messages in `inbox/` whose file name stamp is `since` or later, oldest
    /// first. Only those files are read (through the same cache as [`Mailbox::scan`]), so
    /// the cost follows the recent mail, not the size of an old inbox.
    pub fn recent(&self, since: DateTime<Local>) -> Result<Vec<Arc<Message>>> {
        let entries = messages_in(&self.inbox)?;
        let mut cache = self.cache();
        let mut messages = Vec::new();
        for (entry, id) in entries {
            if message::stem_time(&id).is_none_or(|t| t < since) {
                continue;
            }
            let name = format!("{id}.md");
            match entry.metadata() {
                Ok(meta) => messages.extend(self.load(&mut cache, &name, &meta)),
                Err(err) => stat_failed(&name, &err),
            }
        }
        messages.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(messages)
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
        let mut unread = Vec::new();
        for (entry, id) in messages_in(&self.inbox)? {
            let id = id.as_str();
            if state.was_read(id) || (skip_pushed && state.was_pushed(id)) {
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
            match read_entry(&entry, id) {
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
            let Some(id) = name.strip_suffix(".md") else {
                if name.contains(".tmp.") {
                    let modified = entry.metadata().ok().and_then(|m| m.modified().ok());
                    audit.temporary.push((name, modified));
                } else {
                    audit.bad.push((name, "not a .md file".to_owned()));
                }
                continue;
            };
            match read_entry(&entry, id) {
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
/// [`MessageId::may_address`] does.
fn stem_recipient(id: &str, session: &str) -> Option<Recipient> {
    let id = MessageId::parse(id)?;
    Some(if id.may_address(session) {
        Recipient::Maybe
    } else if id.may_address_everyone() {
        Recipient::Everyone
    } else {
        Recipient::Other
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
