//! Archiving: moving finished mail from `inbox/` to `archive/`, and pruning the archive.

use std::collections::HashMap;
use std::fs;
use std::io;

use chrono::{DateTime, Local, TimeDelta};

use super::read::{Skip, read_checked, read_entry};
use super::{Mailbox, messages_in, sent_at};
use crate::error::{Error, Result};
use crate::fsx::sync_dir;
use crate::message;

impl Mailbox {
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
        match crate::fsx::private_options()
            .write(true)
            .create_new(true)
            .open(&marker)
        {
            Ok(file) => {
                // Only the group bits of a shared mailbox are at stake: not worth failing.
                let _ = crate::fsx::fix_mode(&file, &marker);
                true
            }
            // Another server just claimed this pass.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => false,
            Err(err) => {
                tracing::warn!(file = %marker.display(), %err, "noting the archive pass");
                true
            }
        }
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
        let mut old = Vec::new();
        for (entry, id) in messages_in(&self.archive)? {
            let path = entry.path();
            match read_entry(&entry, &id) {
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
