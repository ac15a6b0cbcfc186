//! One running session: its name, its heartbeat, and what it can do with the mailbox.
//!
//! Every method here blocks (file locks, folder scans); async callers run them on a
//! blocking thread.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use chrono::{DateTime, Local, TimeDelta};

use crate::channels::Push;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::heartbeat::{self, Entry, Heartbeats, Table};
use crate::mailbox::{Draft, Mailbox, Message, ReadState};
use crate::message::{self, BROADCAST, HUMAN, Priority};
use crate::watch::Changed;

/// The longest time to live a sender may set: 30 days.
pub const MAX_TTL: TimeDelta = TimeDelta::days(30);

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
#[derive(Debug, Clone, Default)]
pub struct Outgoing<'a> {
    /// A session name, `all` for everyone, or `human` for the person (an escalation).
    pub to: &'a str,
    pub subject: &'a str,
    pub body: &'a str,
    pub priority: Priority,
    pub reply_to: Option<&'a str>,
    /// An earlier message of this sender to the same recipient that this one replaces.
    pub supersedes: Option<&'a str>,
    /// How long the message matters; after that it is neither pushed nor unread.
    pub ttl: Option<TimeDelta>,
    /// Information only: no answer expected.
    pub info_only: bool,
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
    /// True when this send answered a message that reached this session only as a channel
    /// event: proof that events reach the model.
    pub saw_push: bool,
}

/// A page of unread mail, urgent first, then oldest first.
#[derive(Debug, Clone)]
pub struct Unread {
    /// Messages whose bodies the model has not seen.
    pub messages: Vec<Arc<Message>>,
    /// For each message: whether it was pushed as a channel event (that may not have
    /// reached the model).
    pub pushed: Vec<bool>,
    /// Unread messages already pushed while push is on: named, not repeated.
    pub seen: Vec<Arc<Message>>,
    /// Unread messages beyond the page.
    pub remaining: usize,
}

/// What a [`Session::sync`] found.
#[derive(Debug, Default)]
pub struct Synced {
    /// The messages that newly appeared, for anyone (only this name's, unless asked for all).
    pub arrived: Vec<Arc<Message>>,
    /// This name's unread mail may have changed: worth looking for pushes.
    pub mine_changed: bool,
}

/// What `t9_ipc_wait` waits for.
#[derive(Debug, Clone, Default)]
pub struct WaitFor {
    pub from: Option<String>,
    pub reply_to: Option<String>,
}

impl WaitFor {
    fn matches(&self, msg: &Message) -> bool {
        self.from.as_deref().is_none_or(|f| msg.front.from == f)
            && self
                .reply_to
                .as_deref()
                .is_none_or(|r| msg.front.reply_to.as_deref() == Some(r))
    }
}

struct Inner {
    name: String,
    working_on: String,
    state: ReadState,
    push: Push,
    /// Unread mail of this name by id: built by a whole scan, kept current by file events.
    mine: BTreeMap<String, Arc<Message>>,
    /// Ids that a later message replaces, with the sender of the later one: a message is
    /// hidden only when its own sender replaced it.
    superseded: HashMap<String, String>,
    indexed: bool,
    /// Messages in an event being sent now: they count as pushed for what the model is told,
    /// and are recorded on disk once the event has left.
    in_flight: HashSet<String>,
    /// The inbox folder's modification time when the index was last brought up to date:
    /// every file added, renamed or removed changes it.
    synced_mtime: Option<SystemTime>,
    /// Running `t9_ipc_wait` calls: a message one of them matches is handed to it, not
    /// pushed.
    waiters: BTreeMap<u64, WaitFor>,
    next_waiter: u64,
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
            let entry = new_entry(pid, &config.cwd, now, "", Push::Unknown, now);
            table.insert(name.clone(), entry);
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
                push: Push::Unknown,
                mine: BTreeMap::new(),
                superseded: HashMap::new(),
                indexed: false,
                in_flight: HashSet::new(),
                synced_mtime: None,
                waiters: BTreeMap::new(),
                next_waiter: 0,
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

    pub fn push(&self) -> Push {
        self.inner().push
    }

    /// Records whether events reach the model; written into the heartbeat entry (where a
    /// hook reads it) at the next refresh.
    pub fn set_push(&self, push: Push) {
        self.inner().push = push;
    }

    fn entry(&self, inner: &Inner, now: DateTime<Local>) -> Entry {
        new_entry(
            self.pid,
            &self.cwd,
            self.started,
            &inner.working_on,
            inner.push,
            now,
        )
    }

    /// Writes this session's entry again with the current time (and puts it back if
    /// someone removed it). A name another live process took meanwhile is left to it.
    pub fn refresh(&self, now: DateTime<Local>) -> Result<()> {
        let (name, entry) = {
            let inner = self.inner();
            (inner.name.clone(), self.entry(&inner, now))
        };
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
        if let Some(w) = working_on {
            inner.working_on = w;
        }
        let old = inner.name.clone();
        let entry = self.entry(&inner, now);
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
            // The index belongs to the old name; the next look builds the new one.
            inner.indexed = false;
            inner.mine.clear();
            inner.superseded.clear();
        }
        Ok(())
    }

    /// Writes one message (to `all` for a broadcast) after checking every field; see
    /// [`send_from`]. Answering a message marks it read.
    pub fn send(&self, out: &Outgoing<'_>, now: DateTime<Local>) -> Result<Sent> {
        let from = self.name();
        let sent = send_from(&self.mailbox, &self.heartbeats, &from, out, now)?;
        let mut saw_push = false;
        if let Some(answered) = &sent.reply_to {
            let mut inner = self.inner();
            let state = &mut inner.state;
            // Only a channel event could have told the model this id.
            saw_push = state.was_pushed(answered) && !state.was_read(answered);
            // Answering a message shows it was read. The answer is written already: a
            // failure here (a full disk) must not report the send as failed.
            match state.mark_read([answered.as_str()]) {
                Ok(()) => {
                    inner.mine.remove(answered);
                }
                Err(err) => {
                    tracing::warn!(err = %format!("{err:#}"), msg_id = %answered, "marking an answered message read")
                }
            }
            if saw_push && inner.push != Push::On {
                tracing::info!(msg_id = %answered, "a reply to a pushed message: channel events reach the model");
                inner.push = Push::On;
            }
        }
        if saw_push && let Err(err) = self.refresh(now) {
            tracing::warn!(%err, "writing the heartbeat");
        }
        Ok(Sent { saw_push, ..sent })
    }

    /// Brings the index of this name's unread mail up to date: a whole scan the first time
    /// or when `changed` asks for one, otherwise only the files named. Also reads the state
    /// lines other processes appended.
    ///
    /// Only files whose name allows them to be this name's mail are read, unless `everyone`
    /// (Telegram looks at every new message).
    pub fn sync(&self, changed: Changed, everyone: bool, now: DateTime<Local>) -> Result<Synced> {
        let mut inner = self.inner();
        let generation = inner.state.generation();
        inner.state.refresh()?;
        if changed.rescan || !inner.indexed {
            self.rebuild(&mut inner, now)?;
            return Ok(Synced {
                arrived: Vec::new(),
                mine_changed: true,
            });
        }
        let mut mine_changed = false;
        let mut arrived = Vec::new();
        let name = inner.name.clone();
        for path in &changed.files {
            let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if !everyone && !message::stem_may_be_for(id, &name) {
                continue;
            }
            match self.mailbox.get(id) {
                Some(msg) => {
                    if inner.state.is_unread(&name, &msg, now) {
                        note_supersedes(&mut inner.superseded, &name, &msg);
                        if !inner.mine.contains_key(id) {
                            arrived.push(msg.clone());
                        }
                        inner.mine.insert(msg.id.clone(), msg);
                        mine_changed = true;
                    } else if !inner.mine.contains_key(id) {
                        arrived.push(msg);
                    }
                }
                None => {
                    inner.mine.remove(id);
                }
            }
        }
        if inner.state.generation() != generation {
            // Another process marked mail read: drop it from the index. (Otherwise the
            // index only grows by the files named, and expiry is checked when reading it.)
            let Inner { mine, state, .. } = &mut *inner;
            mine.retain(|_, m| state.is_unread(&name, m, now));
            mine_changed = true;
        }
        inner.synced_mtime = self.inbox_mtime();
        Ok(Synced {
            arrived,
            mine_changed,
        })
    }

    fn inbox_mtime(&self) -> Option<SystemTime> {
        fs::metadata(self.mailbox.inbox())
            .and_then(|m| m.modified())
            .ok()
    }

    /// True when no file was added to or removed from the inbox since the index was last
    /// brought up to date. When false, a file event is on its way (or was lost): wait for
    /// the next sync, or call [`Session::sync`] with a rescan.
    pub fn is_current(&self) -> bool {
        let inner = self.inner();
        inner.indexed && inner.synced_mtime.is_some() && inner.synced_mtime == self.inbox_mtime()
    }

    fn rebuild(&self, inner: &mut Inner, now: DateTime<Local>) -> Result<()> {
        // Before the listing: a change during it makes the index look stale, not current.
        inner.synced_mtime = self.inbox_mtime();
        let name = inner.name.clone();
        let all = self.mailbox.scan_for(&name)?;
        tracing::debug!(messages = all.len(), "rescanned the inbox");
        inner.mine.clear();
        inner.superseded.clear();
        for msg in all {
            if msg.front.is_for(&name) {
                note_supersedes(&mut inner.superseded, &name, &msg);
            }
            if inner.state.is_unread(&name, &msg, now) {
                inner.mine.insert(msg.id.clone(), msg);
            }
        }
        inner.indexed = true;
        Ok(())
    }

    /// Builds the index if no event did yet (a tool called before the first scan).
    fn ensure_indexed(&self, inner: &mut Inner, now: DateTime<Local>) -> Result<()> {
        inner.state.refresh()?;
        if !inner.indexed {
            self.rebuild(inner, now)?;
        }
        Ok(())
    }

    /// Unread, current, not replaced: the mail the model should get, urgent first, then
    /// oldest first.
    fn live_mail<'a>(
        inner: &'a Inner,
        now: DateTime<Local>,
    ) -> impl Iterator<Item = &'a Arc<Message>> + 'a {
        inner.mine.values().filter(move |m| {
            inner.state.is_unread(&inner.name, m, now)
                && inner.superseded.get(&m.id) != Some(&m.front.from)
        })
    }

    /// This session's unread mail, at most `limit` bodies; marks the page read when
    /// `mark_read`. With push on, messages already pushed are named, not repeated.
    pub fn unread(&self, limit: usize, mark_read: bool, now: DateTime<Local>) -> Result<Unread> {
        let mut inner = self.inner();
        self.ensure_indexed(&mut inner, now)?;
        let push_on = inner.push == Push::On;
        let (mut fresh, seen): (Vec<_>, Vec<_>) = Self::live_mail(&inner, now)
            .cloned()
            .partition(|m| !(push_on && was_pushed(&inner, &m.id)));
        fresh.sort_by(|a, b| (a.front.urgency(), &a.id).cmp(&(b.front.urgency(), &b.id)));
        let remaining = fresh.len().saturating_sub(limit);
        fresh.truncate(limit);
        let pushed = fresh.iter().map(|m| was_pushed(&inner, &m.id)).collect();
        if mark_read {
            let ids: Vec<&str> = fresh.iter().chain(&seen).map(|m| m.id.as_str()).collect();
            inner.state.mark_read(ids.iter().copied())?;
            for id in ids {
                inner.mine.remove(id);
            }
        }
        Ok(Unread {
            messages: fresh,
            pushed,
            seen,
            remaining,
        })
    }

    /// How many unread messages the model has not seen, and from whom: the reminder added
    /// to tool results. With push on, pushed messages count as seen.
    pub fn unseen(&self, now: DateTime<Local>) -> Result<(usize, Vec<String>)> {
        let mut inner = self.inner();
        self.ensure_indexed(&mut inner, now)?;
        let push_on = inner.push == Push::On;
        let mut senders = Vec::new();
        let mut n = 0;
        for m in Self::live_mail(&inner, now) {
            if push_on && was_pushed(&inner, &m.id) {
                continue;
            }
            n += 1;
            if !senders.contains(&m.front.from) {
                senders.push(m.front.from.clone());
            }
        }
        Ok((n, senders))
    }

    /// Unread messages not yet pushed nor named in a digest, oldest first, leaving out those
    /// a running `t9_ipc_wait` is waiting for.
    pub fn pending_pushes(&self, now: DateTime<Local>) -> Result<Vec<Arc<Message>>> {
        let mut inner = self.inner();
        self.ensure_indexed(&mut inner, now)?;
        let inner = &*inner;
        Ok(Self::live_mail(inner, now)
            .filter(|m| !was_pushed(inner, &m.id) && !inner.state.was_listed(&m.id))
            .filter(|m| !inner.waiters.values().any(|w| w.matches(m)))
            .cloned()
            .collect())
    }

    /// Notes messages about to be sent as channel events: from now on they count as
    /// pushed. Follow with [`Session::mark_pushed`] once sent, or [`Session::push_failed`].
    pub fn pushing(&self, ids: &[String]) {
        self.inner().in_flight.extend(ids.iter().cloned());
    }

    pub fn push_failed(&self, ids: &[String]) {
        let mut inner = self.inner();
        for id in ids {
            inner.in_flight.remove(id);
        }
    }

    /// Records messages sent as channel events (bodies included).
    pub fn mark_pushed(&self, ids: &[String]) -> Result<()> {
        let mut inner = self.inner();
        for id in ids {
            inner.in_flight.remove(id);
        }
        inner.state.mark_pushed(ids.iter().map(String::as_str))
    }

    /// Records messages named in a digest event (bodies not sent).
    pub fn mark_listed(&self, ids: &[String]) -> Result<()> {
        self.inner()
            .state
            .mark_listed(ids.iter().map(String::as_str))
    }

    /// Registers a `t9_ipc_wait`; messages it matches are no longer pushed.
    pub fn wait_begin(&self, filter: WaitFor) -> u64 {
        let mut inner = self.inner();
        inner.next_waiter += 1;
        let id = inner.next_waiter;
        inner.waiters.insert(id, filter);
        id
    }

    pub fn wait_end(&self, waiter: u64) {
        self.inner().waiters.remove(&waiter);
    }

    /// The oldest unread message the waiter matches, marked read; `None` when there is none
    /// yet. Two waiters never get the same message.
    pub fn wait_take(&self, waiter: u64, now: DateTime<Local>) -> Result<Option<Arc<Message>>> {
        let mut inner = self.inner();
        self.ensure_indexed(&mut inner, now)?;
        let Some(filter) = inner.waiters.get(&waiter).cloned() else {
            return Ok(None);
        };
        let found = Self::live_mail(&inner, now)
            .find(|m| filter.matches(m))
            .cloned();
        if let Some(msg) = &found {
            inner.state.mark_read([msg.id.as_str()])?;
            inner.mine.remove(&msg.id);
        }
        Ok(found)
    }
}

/// Pushed, or in an event being sent right now.
fn was_pushed(inner: &Inner, id: &str) -> bool {
    inner.state.was_pushed(id) || inner.in_flight.contains(id)
}

/// Notes that `msg` replaces an earlier message of its sender to `name`.
fn note_supersedes(superseded: &mut HashMap<String, String>, name: &str, msg: &Message) {
    if let Some(old) = &msg.front.supersedes
        && msg.front.is_for(name)
    {
        superseded.insert(old.clone(), msg.front.from.clone());
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
    // `human` is the person at a terminal (the command line's default sender): answering it
    // reaches them the way any escalation does.
    if !message::is_human(from) {
        message::check_name(from)
            .map_err(|why| Error::Refused(format!("the sender is not a valid name: {why}")))?;
    }
    let broadcast = out.to == BROADCAST || out.to == "broadcast";
    // `human` (or `telegram`, answering the person) is an escalation: it goes to the
    // person, on Telegram when configured.
    let human = message::is_human(out.to.trim());
    let to = if broadcast {
        BROADCAST
    } else if human {
        HUMAN
    } else {
        out.to.trim()
    };
    if !broadcast && !human {
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
    let expires = match out.ttl {
        Some(ttl) if ttl <= TimeDelta::zero() || ttl > MAX_TTL => {
            return Err(Error::Refused(
                "ttl_s must be between 1 second and 30 days (2592000), or left out for a \
                 message that never expires"
                    .to_owned(),
            ));
        }
        Some(ttl) => Some(now + ttl),
        None => None,
    };
    let reply_to = out.reply_to.map(str::trim).filter(|r| !r.is_empty());
    let answered = match reply_to {
        Some(id) => Some(
            mailbox
                .get(id)
                .or_else(|| mailbox.get_archived(id))
                .ok_or_else(|| {
                    Error::Refused(format!(
                        "reply_to {id:?} is no message in the inbox or archive. Pass the msg_id \
                 of the message you answer exactly as given, or leave reply_to out"
                    ))
                })?,
        ),
        None => None,
    };
    let supersedes = out.supersedes.map(str::trim).filter(|r| !r.is_empty());
    if let Some(id) = supersedes {
        match mailbox.get(id) {
            Some(old) if old.front.from == from && old.front.to == to => {}
            Some(old) => {
                return Err(Error::Refused(format!(
                    "supersedes {id:?} is a message from {:?} to {:?}; a message can only \
                     replace an earlier one of this session to the same recipient",
                    old.front.from, old.front.to
                )));
            }
            None => {
                return Err(Error::Refused(format!(
                    "supersedes {id:?} is no message in the inbox. Pass the msg_id your \
                     earlier send returned, or leave supersedes out"
                )));
            }
        }
    }
    let thread = answered
        .as_ref()
        .map(|m| m.front.thread.clone().unwrap_or_else(|| m.id.clone()));
    let id = mailbox.write(
        &Draft {
            from,
            to,
            kind: if broadcast {
                "broadcast"
            } else if human {
                "escalation"
            } else {
                "ipc"
            },
            subject: &subject,
            priority: out.priority.as_str(),
            reply_to,
            thread: thread.as_deref(),
            supersedes,
            expires,
            info_only: out.info_only,
            body: out.body,
        },
        now,
    )?;
    let mut live: Table = heartbeats.live(now);
    live.remove(from);
    let recipient = if broadcast || human {
        None
    } else {
        live.get(to).cloned()
    };
    Ok(Sent {
        id,
        to: to.to_owned(),
        reply_to: answered.map(|m| m.id.clone()),
        recipient,
        others: live.into_keys().collect(),
        saw_push: false,
    })
}

fn new_entry(
    pid: u32,
    cwd: &Path,
    started: DateTime<Local>,
    working_on: &str,
    push: Push,
    now: DateTime<Local>,
) -> Entry {
    let mut extra = serde_json::Map::new();
    extra.insert(heartbeat::PUSH.to_owned(), push.as_str().into());
    // The parent process (Claude Code) lets a hook find its session's name; see
    // `heartbeat::session_of`.
    extra.insert(
        heartbeat::PPID.to_owned(),
        std::os::unix::process::parent_id().into(),
    );
    Entry {
        timestamp: heartbeat::stamp(now),
        status: "active".to_owned(),
        pid,
        working_on: working_on.to_owned(),
        cwd: Some(cwd.display().to_string()),
        started: Some(heartbeat::stamp(started)),
        version: Some(VERSION.to_owned()),
        extra,
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
