//! One running session: its name, its heartbeat, and what it can do with the mailbox.
//!
//! Every method here blocks (file locks, folder scans); async callers run them on a
//! blocking thread.

use std::path::{Path, PathBuf};
use std::process;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Local};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::heartbeat::{self, Entry, Heartbeats, Table};
use crate::mailbox::{Draft, Mailbox, Message, ReadState};
use crate::message::{self, BROADCAST, Priority};

/// The version written into heartbeat entries.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A live session as `who` shows it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub name: String,
    pub pid: u32,
    pub cwd: Option<String>,
    pub last_seen: Option<DateTime<Local>>,
    pub working_on: String,
    /// True for the session asking.
    pub you: bool,
}

/// What a sender asks for.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// A session name, or `all` for everyone.
    pub to: &'a str,
    pub subject: &'a str,
    pub body: &'a str,
    pub priority: Priority,
    pub reply_to: Option<&'a str>,
}

/// What a send did.
#[derive(Debug, Clone)]
pub struct Sent {
    pub id: String,
    pub to: String,
    /// The message this one answers, as written.
    pub reply_to: Option<String>,
    /// The recipient's live entry, for a direct message to a live session.
    pub recipient: Option<Entry>,
    /// Every other live session's name (whom a broadcast reaches, or whom the sender may
    /// have meant).
    pub others: Vec<String>,
}

/// A page of unread mail.
#[derive(Debug, Clone)]
pub struct Unread {
    pub messages: Vec<Arc<Message>>,
    /// For each message: whether it was already pushed as a channel event.
    pub pushed: Vec<bool>,
    /// Unread messages beyond the page.
    pub remaining: usize,
}

struct Inner {
    name: String,
    working_on: String,
    state: ReadState,
}

pub struct Session {
    mailbox: Mailbox,
    heartbeats: Heartbeats,
    pid: u32,
    cwd: PathBuf,
    started: DateTime<Local>,
    inner: Mutex<Inner>,
}

impl Session {
    /// Opens the mailbox and claims a name: `IPC_SESSION_ID` when set and valid, otherwise
    /// the default of [`default_name`]. If another live session holds it, the first free
    /// `<name>-2`, `<name>-3`, … is taken.
    pub fn start(config: &Config, now: DateTime<Local>) -> Result<Session> {
        let mailbox = Mailbox::open(&config.data_dir)?;
        let heartbeats = Heartbeats::new(&config.data_dir);
        let requested = config.session_name.as_deref().and_then(|name| {
            message::check_name(name)
                .map_err(
                    |why| tracing::warn!(%why, "IPC_SESSION_ID ignored; using the default name"),
                )
                .ok()
                .map(|()| name.to_owned())
        });
        let base = requested
            .clone()
            .unwrap_or_else(|| default_name(&config.cwd));
        let pid = process::id();
        let name = heartbeats.update(now, |table| {
            let name = free_name(&base, table, pid);
            table.insert(name.clone(), new_entry(pid, &config.cwd, now, "", now));
            name
        })?;
        if requested.is_some_and(|r| r != name) {
            tracing::warn!(requested = %base, taken = %name, "IPC_SESSION_ID is held by another live session");
        }
        let state = mailbox.read_state(&name, now)?;
        Ok(Session {
            mailbox,
            heartbeats,
            pid,
            cwd: config.cwd.clone(),
            started: now,
            inner: Mutex::new(Inner {
                name,
                working_on: String::new(),
                state,
            }),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> String {
        self.inner().name.clone()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    fn entry(&self, working_on: &str, now: DateTime<Local>) -> Entry {
        new_entry(self.pid, &self.cwd, self.started, working_on, now)
    }

    /// Writes this session's entry again with the current time (and puts it back if
    /// someone removed it). A name another live process took meanwhile is left to it.
    pub fn refresh(&self, now: DateTime<Local>) -> Result<()> {
        let (name, working_on) = {
            let inner = self.inner();
            (inner.name.clone(), inner.working_on.clone())
        };
        let entry = self.entry(&working_on, now);
        self.heartbeats.update(now, |table| match table.get(&name) {
            Some(other) if other.pid != self.pid => {
                tracing::warn!(session = %name, pid = other.pid, "another live session took this name");
            }
            _ => {
                table.insert(name.clone(), entry);
            }
        })
    }

    /// Removes this session's entry: the session is over.
    pub fn end(&self, now: DateTime<Local>) -> Result<()> {
        let name = self.name();
        self.heartbeats.update(now, |table| {
            if table.get(&name).is_some_and(|e| e.pid == self.pid) {
                table.remove(&name);
            }
        })
    }

    /// The live sessions, this one included, by name.
    pub fn who(&self, now: DateTime<Local>) -> Vec<Peer> {
        let name = self.name();
        self.heartbeats
            .live(now)
            .into_iter()
            .map(|(n, e)| Peer {
                you: n == name && e.pid == self.pid,
                name: n,
                pid: e.pid,
                last_seen: e.last_seen(),
                cwd: e.cwd,
                working_on: e.working_on,
            })
            .collect()
    }

    /// Renames this session (and sets what it works on, when given).
    pub fn set_name(
        &self,
        new: &str,
        working_on: Option<&str>,
        now: DateTime<Local>,
    ) -> Result<()> {
        message::check_name(new).map_err(Error::Refused)?;
        let working_on = working_on.map(message::one_line);
        let mut inner = self.inner();
        let working_on = working_on.unwrap_or_else(|| inner.working_on.clone());
        let old = inner.name.clone();
        let entry = self.entry(&working_on, now);
        self.heartbeats.update(now, |table| {
            if let Some(holder) = table.get(new).filter(|e| e.pid != self.pid) {
                return Err(Error::NameTaken {
                    name: new.to_owned(),
                    pid: holder.pid,
                    cwd: holder.cwd.clone(),
                });
            }
            if table.get(&old).is_some_and(|e| e.pid == self.pid) {
                table.remove(&old);
            }
            table.insert(new.to_owned(), entry);
            Ok(())
        })??;
        if new != old {
            inner.state = self.mailbox.read_state(new, now)?;
            inner.name = new.to_owned();
        }
        inner.working_on = working_on;
        Ok(())
    }

    /// Writes one message (to `all` for a broadcast) after checking every field; see
    /// [`send_from`]. Answering a message marks it read.
    pub fn send(&self, out: &Outgoing<'_>, now: DateTime<Local>) -> Result<Sent> {
        let from = self.name();
        let sent = send_from(&self.mailbox, &self.heartbeats, &from, out, now)?;
        if let Some(answered) = &sent.reply_to {
            // Answering a message shows it was read.
            self.inner().state.mark_read([answered.as_str()])?;
        }
        Ok(sent)
    }

    /// This session's unread mail, oldest first, at most `limit`; marks the page read when
    /// `mark_read`.
    pub fn unread(&self, limit: usize, mark_read: bool) -> Result<Unread> {
        let all = self.mailbox.scan()?;
        let mut inner = self.inner();
        let name = inner.name.clone();
        let mut unread: Vec<_> = all
            .into_iter()
            .filter(|m| inner.state.is_unread(&name, m))
            .collect();
        let remaining = unread.len().saturating_sub(limit);
        unread.truncate(limit);
        let pushed = unread
            .iter()
            .map(|m| inner.state.was_pushed(&m.id))
            .collect();
        if mark_read {
            inner
                .state
                .mark_read(unread.iter().map(|m| m.id.as_str()))?;
        }
        Ok(Unread {
            messages: unread,
            pushed,
            remaining,
        })
    }

    /// Unread messages not yet pushed to this session, oldest first; they are recorded as
    /// pushed before they are returned, so no message is pushed twice.
    pub fn take_pushes(&self) -> Result<Vec<Arc<Message>>> {
        let all = self.mailbox.scan()?;
        let mut inner = self.inner();
        let name = inner.name.clone();
        let new: Vec<_> = all
            .into_iter()
            .filter(|m| inner.state.is_unread(&name, m) && !inner.state.was_pushed(&m.id))
            .collect();
        inner.state.mark_pushed(new.iter().map(|m| m.id.as_str()))?;
        Ok(new)
    }
}

/// Writes one message from `from` (to `all` for a broadcast) after checking every field:
/// the recipient's name, the subject and body limits, and that `reply_to` names a message.
/// Shared by [`Session::send`] and senders that are no live session (the command line),
/// which register no heartbeat.
pub fn send_from(
    mailbox: &Mailbox,
    heartbeats: &Heartbeats,
    from: &str,
    out: &Outgoing<'_>,
    now: DateTime<Local>,
) -> Result<Sent> {
    message::check_name(from)
        .map_err(|why| Error::Refused(format!("the sender is not a valid name: {why}")))?;
    let broadcast = out.to == BROADCAST || out.to == "broadcast";
    let to = if broadcast { BROADCAST } else { out.to.trim() };
    if !broadcast {
        message::check_name(to).map_err(|why| {
            Error::Refused(format!(
                "`to` is not a session name: {why}. Use a name from t9_ipc_who, or \"all\""
            ))
        })?;
        if to == from {
            return Err(Error::Refused(format!(
                "\"{to}\" is the sender; a message to yourself is never delivered. \
                 Use a name from t9_ipc_who"
            )));
        }
    }
    let subject = message::check_subject(out.subject).map_err(Error::Refused)?;
    message::check_body(out.body).map_err(Error::Refused)?;
    let reply_to = out.reply_to.map(str::trim).filter(|r| !r.is_empty());
    if let Some(id) = reply_to
        && !mailbox.exists(id)
    {
        return Err(Error::Refused(format!(
            "reply_to {id:?} is no message in the inbox or archive. Pass the msg_id of \
             the message you answer exactly as given, or leave reply_to out"
        )));
    }
    let id = mailbox.write(
        &Draft {
            from,
            to,
            kind: if broadcast { "broadcast" } else { "ipc" },
            subject: &subject,
            priority: out.priority.as_str(),
            reply_to,
            body: out.body,
        },
        now,
    )?;
    let mut live: Table = heartbeats.live(now);
    live.remove(from);
    let recipient = if broadcast {
        None
    } else {
        live.get(to).cloned()
    };
    Ok(Sent {
        id,
        to: to.to_owned(),
        reply_to: reply_to.map(str::to_owned),
        recipient,
        others: live.into_keys().collect(),
    })
}

fn new_entry(
    pid: u32,
    cwd: &Path,
    started: DateTime<Local>,
    working_on: &str,
    now: DateTime<Local>,
) -> Entry {
    Entry {
        timestamp: heartbeat::stamp(now),
        status: "active".to_owned(),
        pid,
        working_on: working_on.to_owned(),
        cwd: Some(cwd.display().to_string()),
        started: Some(heartbeat::stamp(started)),
        version: Some(VERSION.to_owned()),
        // The parent process (Claude Code) lets a hook find its session's name; see
        // `heartbeat::session_of`.
        extra: [(
            heartbeat::PPID.to_owned(),
            serde_json::Value::from(std::os::unix::process::parent_id()),
        )]
        .into_iter()
        .collect(),
    }
}

/// The default session name: the working folder's name, made a valid name.
///
/// It is stable (a restarted session in the same project gets it back, so mail sent to it
/// while it was away reaches it) and readable. Uniqueness among live sessions is added by
/// [`Session::start`] with a `-2`, `-3`, … suffix.
pub fn default_name(cwd: &Path) -> String {
    let folder = cwd
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name = String::new();
    for c in folder.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '-'
        };
        if !(c == '-' && (name.is_empty() || name.ends_with('-'))) {
            name.push(c);
        }
    }
    let mut name: String = name.trim_end_matches('-').chars().take(48).collect();
    if name.len() < 3 || message::check_name(&name).is_err() {
        name = if name.is_empty() {
            "session".to_owned()
        } else {
            format!("{name}-session")
        };
    }
    name
}

/// `base`, or the first `base-N` that no other live process holds.
fn free_name(base: &str, table: &Table, pid: u32) -> String {
    let free = |name: &str| table.get(name).is_none_or(|e| e.pid == pid);
    if free(base) {
        return base.to_owned();
    }
    let stem: String = base.chars().take(58).collect();
    (2..)
        .map(|n| format!("{stem}-{n}"))
        .find(|name| free(name))
        .expect("an unbounded range always has a free name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names() {
        assert_eq!(default_name(Path::new("/home/u/t9-ipc")), "t9-ipc");
        assert_eq!(
            default_name(Path::new("/home/u/My Project (old)")),
            "My-Project-old"
        );
        assert_eq!(default_name(Path::new("/home/u/ab")), "ab-session");
        assert_eq!(default_name(Path::new("/")), "session");
        assert_eq!(default_name(Path::new("/srv/all")), "all-session");
        assert_eq!(default_name(Path::new("/srv/한글")), "session");
        assert_eq!(
            default_name(Path::new(&format!("/x/{}", "a".repeat(80)))).len(),
            48
        );
    }

    #[test]
    fn free_names() {
        let entry = |pid| Entry {
            timestamp: String::new(),
            status: String::new(),
            pid,
            working_on: String::new(),
            cwd: None,
            started: None,
            version: None,
            extra: Default::default(),
        };
        let mut table = Table::new();
        assert_eq!(free_name("api", &table, 7), "api");
        table.insert("api".into(), entry(8));
        assert_eq!(free_name("api", &table, 7), "api-2");
        table.insert("api-2".into(), entry(9));
        assert_eq!(free_name("api", &table, 7), "api-3");
        table.insert("api-3".into(), entry(7));
        assert_eq!(free_name("api", &table, 7), "api-3");
    }
}
