//! Listing the inbox: whole and filtered scans through the parse cache, a session's mail in
//! `inbox/` and `archive/` for search (kept folder listings, the same cache), the one-shot
//! reader of a name's unread mail, and the audit a person asks for.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, MutexGuard};
use std::time::SystemTime;

use chrono::{DateTime, Local};

use super::read::{Skip, read_checked, read_entry, stat_failed};
use super::{Mailbox, Message, ReadState, file_name, messages_in};
use crate::error::{Error, Result};
use crate::message::{self, MessageId, file_stem_part};

/// A file's identity for the parse cache: a changed file is read again.
type Stamp = (u64, Option<SystemTime>);

enum Cached {
    /// A message, and its text for search once [`Mailbox::mail_of`] asked for it.
    Good(Stamp, Arc<Message>, Option<Arc<str>>),
    Bad(Stamp),
}

/// A folder as `stat` saw it: which folder, and when its entries last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FolderStamp {
    dev: u64,
    ino: u64,
    modified: Option<SystemTime>,
}

/// The files of one folder that may be one name's mail, as [`Mailbox::mail_of`] listed them.
struct Listing {
    folder: FolderStamp,
    /// The folder's time was settled ([`crate::watch::settle_for`]) when it was listed: the listing holds while
    /// the folder stays as it was. Otherwise the next call lists it again.
    settled: bool,
    name: String,
    /// `*.md` regular files whose name allows them to be `name`'s mail.
    files: Arc<[String]>,
}

/// One message of a session's mail ([`Mailbox::mail_of`]).
#[derive(Debug, Clone)]
pub struct Filed {
    pub message: Arc<Message>,
    /// True when it is in `archive/`.
    pub archived: bool,
    /// `"<subject>\n<body>"` in lowercase, for a search that ignores case: made once per
    /// version of the file.
    pub text: Arc<str>,
}

/// What [`Mailbox`] remembers about the files in `inbox/` and `archive/`.
#[derive(Default)]
pub(super) struct Cache {
    /// Parsed files of `inbox/` by file name.
    files: HashMap<String, Cached>,
    /// Parsed files of `archive/` by file name, those [`Mailbox::mail_of`] read.
    archived: HashMap<String, Cached>,
    /// Names that are not UTF-8: warned about once, while they stay.
    odd_names: HashSet<OsString>,
    /// The last listing [`Mailbox::mail_of`] made of `inbox/` and of `archive/`.
    listings: [Option<Listing>; 2],
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

    /// Reads `inbox/<name>` unless the cache holds it at the same size and time
    /// ([`load_in`]).
    pub(super) fn load(
        &self,
        cache: &mut Cache,
        name: &str,
        meta: &fs::Metadata,
    ) -> Option<Arc<Message>> {
        load_in(&self.inbox, &mut cache.files, name, meta).map(|(msg, _)| msg.clone())
    }

    /// Every good message in `inbox/` and `archive/` that `name` may have sent or received, as
    /// its file name tells (the caller checks `from` and
    /// [`FrontMatter::is_for`](crate::message::FrontMatter::is_for)), in no order; a message
    /// in both folders is given once, from `inbox/`.
    ///
    /// Each call costs a `stat` of each folder. A folder that changed (or had changed just
    /// before its last listing, see [`crate::watch::settle_for`]) is listed again and each of these files
    /// looked at, read again only when it changed; a folder that did not change holds the
    /// files it held, and those read then are not looked at again: message files are never
    /// changed in place, only written whole under a name of their own and renamed into a
    /// folder, or moved out of it ([`crate::fsx::write_atomic`]), which changes the folder.
    pub fn mail_of(&self, name: &str) -> Result<Vec<Filed>> {
        let mut mail = self.mail_in(false, name, |_| false)?;
        let archived = {
            let inbox = std::cell::OnceCell::new();
            let in_inbox = |id: &str| {
                inbox
                    .get_or_init(|| {
                        mail.iter()
                            .map(|f| f.message.id.as_str())
                            .collect::<HashSet<_>>()
                    })
                    .contains(id)
            };
            self.mail_in(true, name, in_inbox)?
        };
        mail.extend(archived);
        Ok(mail)
    }

    /// [`Mailbox::mail_of`] in one folder, but for the ids `skip` names.
    fn mail_in(
        &self,
        archived: bool,
        name: &str,
        skip: impl Fn(&str) -> bool,
    ) -> Result<Vec<Filed>> {
        let dir = if archived { &self.archive } else { &self.inbox };
        let (files, kept) = self.listing(archived, name)?;
        let mut mail = Vec::with_capacity(files.len());
        let wanted = files
            .iter()
            .filter(|file| file.strip_suffix(".md").is_some_and(|id| !skip(id)));
        // Of a folder that did not change, the files read before are as they were.
        let mut unsure = Vec::new();
        if kept {
            let mut cache = self.cache();
            let known = cache.folder(archived);
            for file in wanted {
                match known.get_mut(file.as_str()) {
                    Some(Cached::Good(_, message, text)) => {
                        mail.push(filed(message, text, archived));
                    }
                    _ => unsure.push(file),
                }
            }
        } else {
            unsure.extend(wanted);
        }
        for file in unsure {
            let meta = match fs::symlink_metadata(dir.join(file)) {
                Ok(meta) => meta,
                Err(err) => {
                    stat_failed(file, &err);
                    continue;
                }
            };
            let mut cache = self.cache();
            if let Some((message, text)) = load_in(dir, cache.folder(archived), file, &meta) {
                mail.push(filed(message, text, archived));
            }
        }
        Ok(mail)
    }

    /// The `*.md` regular files of `inbox/` (or `archive/`) whose name allows them to be
    /// `name`'s mail: from the last listing while the folder is as it was then and that
    /// listing was settled ([`crate::watch::settle_for`]), else listed now. A new listing forgets the parsed files it
    /// no longer holds.
    fn listing(&self, archived: bool, name: &str) -> Result<(Arc<[String]>, bool)> {
        let dir = if archived { &self.archive } else { &self.inbox };
        // The folder's time is read before it is listed: a change after this shows.
        let meta = match fs::metadata(dir) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Arc::from([]), false));
            }
            Err(err) => return Err(Error::io("listing", dir)(err)),
        };
        let folder = FolderStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            modified: meta.modified().ok(),
        };
        let slot = usize::from(archived);
        if let Some(last) = &self.cache().listings[slot]
            && last.settled
            && last.folder == folder
            && last.name == name
        {
            return Ok((last.files.clone(), true));
        }
        // Kept only when, as it is listed, the folder's last change is old enough that a
        // change made in the same clock tick could not share its time (git's "racy" rule;
        // the same rule as the server's index, [`crate::watch::settle_for`]).
        let settled = folder
            .modified
            .is_some_and(|t| crate::watch::unsettled_for(t, SystemTime::now()).is_zero());
        let part = file_stem_part(name);
        let may_be_mine = |stem: &str| {
            !message::stem_is_shaped(stem)
                || stem.contains(part.as_str())
                || message::stem_may_address_everyone(stem)
        };
        let entries = fs::read_dir(dir).map_err(Error::io("listing", dir))?;
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let Ok(file) = entry.file_name().into_string() else {
                continue;
            };
            let wanted = file
                .strip_suffix(".md")
                .is_some_and(|stem| !stem.starts_with('.') && may_be_mine(stem));
            // DirEntry::file_type does not follow links.
            if wanted && entry.file_type().is_ok_and(|t| t.is_file()) {
                files.push(file);
            }
        }
        let listed: HashSet<&str> = files.iter().map(String::as_str).collect();
        let mut cache = self.cache();
        if archived {
            cache
                .archived
                .retain(|file, _| listed.contains(file.as_str()));
        } else {
            // Files read for other names are left to the scans that read them.
            cache.files.retain(|file, _| {
                listed.contains(file.as_str()) || !file.strip_suffix(".md").is_some_and(may_be_mine)
            });
        }
        drop(listed);
        let files: Arc<[String]> = files.into();
        cache.listings[slot] = Some(Listing {
            folder,
            settled,
            name: name.to_owned(),
            files: files.clone(),
        });
        Ok((files, false))
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

impl Cache {
    /// The parsed files of `archive/`, or of `inbox/`.
    fn folder(&mut self, archived: bool) -> &mut HashMap<String, Cached> {
        if archived {
            &mut self.archived
        } else {
            &mut self.files
        }
    }
}

/// A message for [`Mailbox::mail_of`], its search text made on first use.
fn filed(message: &Arc<Message>, text: &mut Option<Arc<str>>, archived: bool) -> Filed {
    let text = text.get_or_insert_with(|| {
        let text = format!("{}\n{}", message.front.subject, message.body);
        text.to_lowercase().into()
    });
    Filed {
        message: message.clone(),
        archived,
        text: text.clone(),
    }
}

/// Reads `<dir>/<name>` unless `files` holds it at the same size and time; the message and
/// the slot of its search text. A bad file is warned about once; a file that is gone or
/// still being written is left for later, quietly.
fn load_in<'c>(
    dir: &Path,
    files: &'c mut HashMap<String, Cached>,
    name: &str,
    meta: &fs::Metadata,
) -> Option<(&'c Arc<Message>, &'c mut Option<Arc<str>>)> {
    let stamp: Stamp = (meta.len(), meta.modified().ok());
    let known = match files.get(name) {
        Some(Cached::Good(s, ..)) => *s == stamp,
        Some(Cached::Bad(s)) if *s == stamp => return None,
        _ => false,
    };
    if !known {
        let id = name.strip_suffix(".md")?;
        let path = dir.join(name);
        match read_checked(&path, meta, id) {
            Ok(msg) => {
                files.insert(name.to_owned(), Cached::Good(stamp, Arc::new(msg), None));
            }
            Err(skip) => {
                skip.log(&path);
                // A file that is no message is not read again until it changes.
                match skip {
                    Skip::Bad(_) => files.insert(name.to_owned(), Cached::Bad(stamp)),
                    _ => files.remove(name),
                };
                return None;
            }
        }
    }
    match files.get_mut(name) {
        Some(Cached::Good(_, msg, text)) => Some((msg, text)),
        _ => None,
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

    #[test]
    fn a_listing_is_kept_only_while_its_folder_stays_as_it_was_and_had_settled() {
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().unwrap();
        let mb = Mailbox::open(dir.path()).unwrap();
        let send = |subject: &str| {
            let draft = super::super::Draft {
                from: "alpha",
                to: "beta",
                kind: "ipc",
                subject,
                priority: "normal",
                body: "b",
                ..Default::default()
            };
            mb.write(&draft, Local::now()).unwrap()
        };
        let ids = || {
            let mut ids: Vec<String> = mb
                .mail_of("beta")
                .unwrap()
                .iter()
                .map(|f| f.message.id.clone())
                .collect();
            ids.sort();
            ids
        };
        let inbox = fs::File::open(mb.inbox()).unwrap();
        // A folder time not yet settled in the past (here ahead of this clock): a change in
        // the same tick, which leaves the time as it was, is still seen.
        let recent = SystemTime::now() + Duration::from_secs(60);
        let one = send("one");
        inbox.set_modified(recent).unwrap();
        assert_eq!(ids(), std::slice::from_ref(&one));
        let two = send("two");
        inbox.set_modified(recent).unwrap();
        assert_eq!(ids(), [one.clone(), two.clone()]);
        // Quiet for an hour: the listing is kept while the folder's time stays...
        let quiet = SystemTime::now() - Duration::from_secs(3600);
        inbox.set_modified(quiet).unwrap();
        assert_eq!(ids(), [one.clone(), two.clone()]);
        let three = send("three");
        inbox.set_modified(quiet).unwrap();
        assert_eq!(ids(), [one.clone(), two.clone()], "the kept listing");
        // ... and a change that shows is seen.
        let four = send("four");
        assert_eq!(ids(), [one, two, three, four]);
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
