//! One running session: its name, its heartbeat, and what it can do with the mailbox.
//! This file: the session, its name and heartbeat entry, and the state the async side
//! shares. The index of unread mail is in `index`, sending in `send`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Local};

use crate::channels::Push;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::heartbeat::{self, Entry, Heartbeats, Table};
use crate::id::IdSet;
use crate::mailbox::{Mailbox, Message};
use crate::message;

mod index;
mod send;
mod unseen;

pub use index::{Synced, Unread};
pub use send::{MAX_TTL, Outgoing, Sent, send_from};

/// The version written into heartbeat entries.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long start-up waits for `heartbeats.lock`: the client waits for the `initialize`
/// answer meanwhile. A session that cannot register yet starts anyway and registers at its
/// next heartbeat.
const START_LOCK_WAIT: Duration = Duration::from_millis(500);
/// How long start-up waits for its read state's lock: only its first line is at stake, and
/// that is written with the next append.
const START_STATE_WAIT: Duration = Duration::from_millis(50);
/// How long a heartbeat refresh or the removal at the end waits: both are retried (or left
/// to the next writer, who removes a dead pid's entry), and the end must be quick.
const QUICK_LOCK_WAIT: Duration = Duration::from_millis(500);

/// What a rename left behind: the old name's unread mail, which stays addressed to it.
#[derive(Debug, Clone, Default)]
pub struct Renamed {
    pub old: String,
    /// Unread messages of the old name, and how many of them were pushed as channel events.
    pub left: usize,
    pub left_pushed: usize,
    /// Their senders, first seen first.
    pub left_from: Vec<String>,
}

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

/// What the server's async code reads and changes: small, and never locked across I/O.
struct Shared {
    name: String,
    working_on: String,
    push: Push,
    /// Messages in an event being sent now: they count as pushed for what the model is told,
    /// and are recorded on disk once the event has left.
    in_flight: IdSet,
    /// Counts the changes to `push` and `in_flight`: what the model has seen changed.
    epoch: u64,
    /// Running `t9_ipc_wait` calls: a message one of them matches is handed to it, not
    /// pushed.
    waiters: BTreeMap<u64, WaitFor>,
    next_waiter: u64,
    /// The inbox folder's modification time when the index was last brought up to date
    /// (every file added, renamed or removed changes it); `None` while there is no index.
    synced_mtime: Option<SystemTime>,
    /// The index is built for `name`: changes that cannot concern it leave it current.
    index_built: bool,
    /// Counts the moments mail may have reached the model other than by a push (an unread
    /// page, a wait): a push planned before one must look again, or it could repeat what
    /// the model just read.
    handed: u64,
}

/// One running session.
///
/// # Locks
///
/// Two locks, always taken in this order, never the other way round:
///
/// 1. `index`: the index of this name's unread mail and its read state. Held across I/O
///    (inbox scans, read-state appends under `flock`); taken only by methods that do I/O,
///    which async callers run on a blocking thread (`spawn_blocking`).
/// 2. `shared`: the name, what it works on, push state, waiters and pushes in flight. Held
///    only for work in memory, never across I/O and never while waiting for `index`. The
///    methods that take only this lock and do no file I/O ([`Session::name`],
///    [`Session::push`], [`Session::set_push`], [`Session::pushing`],
///    [`Session::push_failed`], [`Session::wait_begin`], [`Session::wait_end`]) are safe on
///    the async thread; [`Session::is_current`] adds one `stat` of the inbox folder.
///
/// `heartbeats.json` is written with neither lock held, except by [`Session::set_name`],
/// which holds `index` so that the index and read state change with the name. Under the
/// `heartbeats.lock` flock, `shared` may be taken briefly (never the other way round).
pub struct Session {
    mailbox: Mailbox,
    heartbeats: Heartbeats,
    pid: u32,
    cwd: PathBuf,
    started: DateTime<Local>,
    index: Mutex<index::Index>,
    shared: Mutex<Shared>,
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
        let registered = heartbeats.update_within(now, START_LOCK_WAIT, |table| {
            let name = free_name(&base, table, pid);
            let entry = new_entry(pid, &config.cwd, now, "", Push::Unknown, now);
            table.insert(name.clone(), entry);
            name
        });
        let name = match registered {
            Ok(name) => name,
            Err(err @ Error::LockBusy { .. }) => {
                // Serve anyway: the next heartbeat registers the name, if still free.
                let name = free_name(&base, &heartbeats.live(now), pid);
                tracing::warn!(%err, session = %name, "not listed in heartbeats.json yet; the next heartbeat tries again");
                name
            }
            Err(err) => return Err(err),
        };
        if requested.is_some_and(|r| r != name) {
            tracing::warn!(requested = %base, taken = %name, "IPC_SESSION_ID is held by another live session");
        }
        let mut state = mailbox.read_state_within(&name, now, START_STATE_WAIT)?;
        if let Err(err) = state.note_folder(&config.cwd) {
            tracing::warn!(%err, "recording this name's working folder; tried again at the next rename");
        }
        state.set_lock_wait(crate::fsx::LOCK_WAIT);
        Ok(Session {
            mailbox,
            heartbeats,
            pid,
            cwd: config.cwd.clone(),
            started: now,
            index: Mutex::new(index::Index::new(name.clone(), state)),
            shared: Mutex::new(Shared {
                name,
                working_on: String::new(),
                push: Push::Unknown,
                in_flight: IdSet::default(),
                epoch: 0,
                waiters: BTreeMap::new(),
                next_waiter: 0,
                synced_mtime: None,
                index_built: false,
                handed: 0,
            }),
        })
    }

    /// The small state; see the lock order in [`Session`].
    fn shared(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The index and read state; see the lock order in [`Session`]. Never taken while
    /// `shared` is held.
    fn index(&self) -> MutexGuard<'_, index::Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> String {
        self.shared().name.clone()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    pub fn push(&self) -> Push {
        self.shared().push
    }

    /// Records whether events reach the model; written into the heartbeat entry (where a
    /// hook reads it) at the next refresh.
    pub fn set_push(&self, push: Push) {
        let mut shared = self.shared();
        shared.push = push;
        shared.epoch += 1;
    }

    fn entry(&self, shared: &Shared, now: DateTime<Local>) -> Entry {
        new_entry(
            self.pid,
            &self.cwd,
            self.started,
            &shared.working_on,
            shared.push,
            now,
        )
    }

    /// Writes this session's entry again with the current time (and puts it back if
    /// someone removed it). A name another live process took meanwhile is left to it.
    pub fn refresh(&self, now: DateTime<Local>) -> Result<()> {
        self.heartbeats.update_within(now, QUICK_LOCK_WAIT, |table| {
            // Read under the heartbeats lock: an entry read before it could undo a rename or
            // a `working_on` written meanwhile.
            let (name, entry) = {
                let shared = self.shared();
                (shared.name.clone(), self.entry(&shared, now))
            };
            match table.get(&name) {
                Some(other) if other.pid != self.pid => {
                    tracing::warn!(session = %name, pid = other.pid, "another live session took this name");
                }
                _ => {
                    table.insert(name, entry);
                }
            }
        })
    }

    /// Removes this session's entry: the session is over.
    pub fn end(&self, now: DateTime<Local>) -> Result<()> {
        let name = self.name();
        self.heartbeats
            .update_within(now, QUICK_LOCK_WAIT, |table| {
                if table.get(&name).is_some_and(|e| e.pid == self.pid) {
                    table.remove(&name);
                }
            })
    }

    /// The live sessions, this one included, by name. Folders and `working_on` come from a
    /// file anyone with access can write: they are made single-line and printable here.
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
                cwd: e.cwd.as_deref().map(heartbeat::display),
                working_on: heartbeat::display(&e.working_on),
            })
            .collect()
    }

    /// Renames this session (and sets what it works on, when given). Says what unread mail
    /// the old name keeps.
    ///
    /// A name is an identity: a name with unread mail waiting that was last used from
    /// another working folder (or from an unrecorded one) is refused unless `take_over`,
    /// so that a session cannot read an offline session's mail by taking its name.
    pub fn set_name(
        &self,
        new: &str,
        working_on: Option<&str>,
        take_over: bool,
        now: DateTime<Local>,
    ) -> Result<Renamed> {
        let working_on = working_on.map(message::one_line);
        // The index and read state follow the name: no scan runs for the old name meanwhile.
        let mut index = self.index();
        let old = self.name();
        self.may_take(new, take_over, now)?;
        let renamed = if new == old {
            Renamed::default()
        } else {
            self.left_behind(&mut index, now)?
        };
        let entry = {
            let mut shared = self.shared();
            if let Some(w) = working_on {
                shared.working_on = w;
            }
            self.entry(&shared, now)
        };
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
            let mut state = self.mailbox.read_state(new, now)?;
            if let Err(err) = state.note_folder(&self.cwd) {
                tracing::warn!(%err, session = %new, "recording this name's working folder");
            }
            // The index belongs to the old name; the next look builds the new one.
            *index = index::Index::new(new.to_owned(), state);
            let mut shared = self.shared();
            shared.name = new.to_owned();
            shared.synced_mtime = None;
            shared.index_built = false;
        }
        Ok(renamed)
    }

    /// The local checks of [`Session::set_name`], without taking the name: a valid name, held
    /// by no other live session here, and (unless `take_over`) not an offline session's
    /// identity. A caller that must ask elsewhere too (the hub) asks after these pass.
    pub fn may_take(&self, new: &str, take_over: bool, now: DateTime<Local>) -> Result<()> {
        message::check_name(new).map_err(Error::Refused)?;
        if let Some(holder) = self.heartbeats.live(now).remove(new)
            && holder.pid != self.pid
        {
            return Err(Error::NameTaken {
                name: new.to_owned(),
                pid: holder.pid,
                cwd: holder.cwd,
            });
        }
        if new != self.name() && !take_over {
            self.check_owner(new, now)?;
        }
        Ok(())
    }

    /// Refuses `name` when it has unread mail and was last used from another folder.
    fn check_owner(&self, name: &str, now: DateTime<Local>) -> Result<()> {
        let state = self.mailbox.peek_state(name, now)?;
        let here = self.cwd.to_str();
        if !state.on_disk() || (state.folder().is_some() && state.folder() == here) {
            return Ok(());
        }
        let mail: Vec<_> = self
            .mailbox
            .scan_for(name)?
            .into_iter()
            .filter(|m| state.is_unread(name, m, now))
            .collect();
        if mail.is_empty() {
            return Ok(());
        }
        let from = crate::mailbox::senders(&mail);
        let place = match state.folder() {
            Some(folder) => format!("was last used from another folder ({folder})"),
            None => "was last used from a folder that was not recorded".to_owned(),
        };
        Err(Error::Refused(format!(
            "the name {name:?} has {} waiting (from {}) and {place}, so it belongs to a \
             session that is offline now; taking it would read that session's mail. Choose \
             another name. Only if the user said this session is {name:?}, call \
             t9_ipc_set_name again with take_over: true",
            crate::text::plural(mail.len(), "unread message"),
            crate::text::some_names(&from, 10)
        )))
    }

    /// The old name's unread mail (it stays with that name), from a fresh look at the inbox:
    /// a message whose file event is still on its way counts too.
    fn left_behind(&self, index: &mut index::Index, now: DateTime<Local>) -> Result<Renamed> {
        self.ensure_indexed(index, now)?;
        self.rebuild(index, now)?;
        let shared = self.shared();
        let mut renamed = Renamed {
            old: shared.name.clone(),
            ..Renamed::default()
        };
        let left: Vec<&std::sync::Arc<Message>> = index.live_mail(now).collect();
        renamed.left = left.len();
        renamed.left_pushed = left
            .iter()
            .filter(|m| index.was_pushed(&shared, &m.id))
            .count();
        renamed.left_from = crate::mailbox::senders(left)
            .into_iter()
            .map(str::to_owned)
            .collect();
        Ok(renamed)
    }

    /// Registers a `t9_ipc_wait`; messages it matches are no longer pushed.
    pub fn wait_begin(&self, filter: WaitFor) -> u64 {
        let mut shared = self.shared();
        shared.handed += 1; // what it matches is no longer pushed
        shared.next_waiter += 1;
        let id = shared.next_waiter;
        shared.waiters.insert(id, filter);
        id
    }

    pub fn wait_end(&self, waiter: u64) {
        self.shared().waiters.remove(&waiter);
    }

    /// Notes messages about to be sent as channel events: from now on they count as
    /// pushed. Refused (false, nothing noted) when mail was handed to the model since the
    /// look that planned them ([`Session::pending_pushes`] gave `looked`): plan again.
    pub fn pushing(&self, ids: &[String], looked: u64) -> bool {
        let mut shared = self.shared();
        if shared.handed != looked {
            return false;
        }
        // A digest names messages and pushes none: nothing the model is told changes.
        if !ids.is_empty() {
            // The reminder's numbers lose these messages one by one when the index is free
            // (this side never waits for it) and they can; else they are worked out again.
            let mut index = self.index.try_lock().ok();
            let kept = index
                .as_mut()
                .is_some_and(|index| index.uncount(&shared, ids, Local::now()));
            shared.in_flight.extend(ids.iter().cloned());
            shared.epoch += 1;
            if let Some(memo) = index.as_mut().and_then(|index| index.unseen.as_mut())
                && kept
            {
                memo.epoch = shared.epoch;
            }
        }
        true
    }

    pub fn push_failed(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut shared = self.shared();
        shared.epoch += 1;
        for id in ids {
            shared.in_flight.remove(id);
        }
    }
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

    /// A session "alpha" on a fresh mailbox, push and limits off.
    fn alpha(dir: &Path) -> Session {
        let config = Config {
            data_dir: dir.join("data"),
            data_dir_source: crate::config::DataDirSource::Env,
            session_name: Some("alpha".into()),
            cwd: dir.to_path_buf(),
            push: None,
            account_without_channels: None,
            push_quiet: std::time::Duration::ZERO,
            push_rate: None,
            archive_after_days: 7,
            telegram: None,
            inside_claude_code: false,
            share_group: false,
            federation: Ok(None),
        };
        Session::start(&config, Local::now()).unwrap()
    }

    /// [`alpha`] with push on and one unread message from beta, whose id is returned.
    fn alpha_with_push_and_one_message(dir: &Path) -> (Session, String) {
        let s = alpha(dir);
        s.set_push(Push::On);
        let draft = crate::mailbox::Draft {
            from: "beta",
            to: "alpha",
            kind: "ipc",
            subject: "hi",
            priority: "normal",
            body: "b",
            ..Default::default()
        };
        let id = s.mailbox.write(&draft, Local::now()).unwrap();
        (s, id)
    }

    /// A push planned before an unread page that returned its mail is refused: the model
    /// would get it twice.
    #[test]
    fn a_push_planned_before_an_unread_page_is_planned_again() {
        let dir = tempfile::tempdir().unwrap();
        let (s, id) = alpha_with_push_and_one_message(dir.path());
        let (pending, looked) = s.pending_pushes(Local::now()).unwrap();
        assert_eq!(pending.len(), 1);
        let page = s.unread(10, 40_000, true, Local::now()).unwrap();
        assert_eq!(page.messages.len(), 1, "not in flight yet: returned");
        assert!(!s.pushing(std::slice::from_ref(&id), looked));
        let (pending, looked) = s.pending_pushes(Local::now()).unwrap();
        assert!(pending.is_empty());
        // With nothing read in between, a push goes.
        assert!(s.pushing(&[], looked));
    }

    /// Writes a message from `from` to alpha at `at`; its id.
    fn mail_to_alpha(
        s: &Session,
        from: &str,
        at: DateTime<Local>,
        expires: Option<DateTime<Local>>,
    ) -> String {
        let draft = crate::mailbox::Draft {
            from,
            to: "alpha",
            kind: "ipc",
            subject: "s",
            priority: "normal",
            body: "b",
            expires,
            ..Default::default()
        };
        s.mailbox.write(&draft, at).unwrap()
    }

    /// The reminder's numbers kept between tool calls agree with a count from scratch
    /// through arrivals (one older than the rest), a push, its record, an expiry, and more
    /// senders than are named, with arrivals that enter, move up among and stay out of them.
    #[test]
    fn the_reminders_kept_numbers_match_a_count_from_scratch() {
        use crate::watch::Changed;
        use chrono::TimeDelta;
        let dir = tempfile::tempdir().unwrap();
        let s = alpha(dir.path());
        s.set_push(Push::On);
        let now = Local::now();
        let write = |from: &str, at: DateTime<Local>, expires: Option<DateTime<Local>>| {
            mail_to_alpha(&s, from, at, expires)
        };
        let arrive = |ids: &[&String]| {
            let files = ids
                .iter()
                .map(|id| s.mailbox.inbox().join(format!("{id}.md")));
            let changed = Changed {
                files: files.collect(),
                ..Changed::default()
            };
            s.sync(changed, false, Local::now()).unwrap();
        };
        let from_scratch = |at: DateTime<Local>| {
            s.index().unseen = None;
            s.unseen(10, at).unwrap()
        };
        let kept_then_scratch = |at: DateTime<Local>| (s.unseen(10, at).unwrap(), from_scratch(at));

        let ago = |secs| now - TimeDelta::seconds(secs);
        let first = write("beta", ago(10), None);
        write("gamma", ago(9), None);
        assert_eq!(s.unseen(10, now).unwrap().0, 2, "the first look scans");
        let later = write("beta", ago(1), None);
        let older = write("delta", ago(20), None);
        let soon = write("omega", now, Some(now + TimeDelta::seconds(2)));
        arrive(&[&later, &older, &soon]);
        let (kept, scratch) = kept_then_scratch(now);
        assert_eq!(kept, scratch);
        assert_eq!(
            kept,
            (
                5,
                vec![
                    "delta".into(),
                    "beta".into(),
                    "gamma".into(),
                    "omega".into()
                ],
                0
            )
        );
        let handed = s.shared().handed;
        assert!(s.pushing(std::slice::from_ref(&first), handed));
        let (kept, scratch) = kept_then_scratch(now);
        assert_eq!((kept.0, &kept), (4, &scratch));
        s.mark_pushed(std::slice::from_ref(&first)).unwrap();
        let (kept, scratch) = kept_then_scratch(now);
        assert_eq!(kept, scratch);
        let then = now + TimeDelta::seconds(3);
        let (kept, scratch) = kept_then_scratch(then);
        assert_eq!((kept.0, &kept), (3, &scratch), "omega's message expired");

        // More senders than are named: the ten whose first message is oldest, kept as
        // messages arrive older than the last named (a new sender, one not named, one named).
        let many: Vec<String> = (0..12)
            .map(|i| write(&format!("sender{i:02}"), ago(30 + i), None))
            .collect();
        arrive(&many.iter().collect::<Vec<_>>());
        let (kept, scratch) = kept_then_scratch(then);
        assert_eq!(kept, scratch);
        let senders = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let oldest: Vec<String> = (2..12).rev().map(|i| format!("sender{i:02}")).collect();
        assert_eq!(kept, (15, oldest, 5));
        let gamma_old = write("gamma", ago(200), None);
        let sender05_old = write("sender05", ago(300), None);
        let zeta = write("zeta", ago(5), None);
        for id in [&gamma_old, &sender05_old, &zeta] {
            arrive(&[id]);
            let (kept, scratch) = kept_then_scratch(then);
            assert_eq!(kept, scratch, "after {id}");
        }
        let named = senders(&[
            "sender05", "gamma", "sender11", "sender10", "sender09", "sender08", "sender07",
            "sender06", "sender04", "sender03",
        ]);
        assert_eq!(s.unseen(10, then).unwrap(), (18, named, 6));
    }

    /// An event that pushes no message whole (a digest) keeps the reminder's numbers: under
    /// a flood, each digest made the next tool call count every unread message again.
    #[test]
    fn a_digest_keeps_the_reminders_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let (s, id) = alpha_with_push_and_one_message(dir.path());
        assert_eq!(s.unseen(10, Local::now()).unwrap().0, 1);
        let epoch = s.shared().epoch;
        let handed = s.shared().handed;
        assert!(s.pushing(&[], handed));
        s.mark_pushed(&[]).unwrap();
        s.push_failed(&[]);
        assert_eq!(s.shared().epoch, epoch);
        assert!(s.index().unseen.is_some(), "the numbers were dropped");
        // A message pushed whole changes them.
        assert!(s.pushing(std::slice::from_ref(&id), handed));
        s.mark_pushed(std::slice::from_ref(&id)).unwrap();
        assert_eq!(s.unseen(10, Local::now()).unwrap().0, 0);
    }

    /// Messages pushed whole leave the reminder's numbers one by one, without a count from
    /// scratch, while enough of the oldest senders are kept to name; a sender's first
    /// message pushed while it has others makes them counted again, and right.
    #[test]
    fn messages_pushed_whole_leave_the_reminders_numbers_without_a_recount() {
        use chrono::TimeDelta;
        let dir = tempfile::tempdir().unwrap();
        let s = alpha(dir.path());
        s.set_push(Push::On);
        let now = Local::now();
        let write =
            |from: &str, secs: i64| mail_to_alpha(&s, from, now - TimeDelta::seconds(secs), None);
        // 50 senders, oldest first; the oldest also sent a later message.
        let ids: Vec<String> = (0..50)
            .map(|i| write(&format!("s{i:02}"), 500 - i))
            .collect();
        let again = write("s00", 1);
        let kept = || s.index().unseen_kept(&s.shared());
        let from_scratch = || {
            s.index().unseen = None;
            s.unseen(10, Local::now()).unwrap()
        };
        let push = |pushed: &[String]| {
            let handed = s.shared().handed;
            assert!(s.pushing(pushed, handed));
            let after_pushing = kept();
            s.mark_pushed(pushed).unwrap();
            after_pushing && kept()
        };
        assert_eq!(s.unseen(10, now).unwrap().0, 51);
        // s01 to s29 (no other messages) taken out one by one, in events of 9, 9, 9 and 2;
        // the last event again (its messages pushed already) changes nothing.
        for pushed in ids[1..28].chunks(9).chain([&ids[28..30], &ids[28..30]]) {
            let pushed = pushed.to_vec();
            let many = pushed.len();
            assert!(push(&pushed), "counted again after pushing {many}");
            let numbers = s.unseen(10, Local::now()).unwrap();
            assert_eq!(numbers, from_scratch());
        }
        let named: Vec<String> = std::iter::once("s00".to_owned())
            .chain((30..39).map(|i| format!("s{i:02}")))
            .collect();
        assert_eq!(s.unseen(10, Local::now()).unwrap(), (22, named, 11));
        // s00's first message, while its later one waits: counted again.
        assert!(!push(std::slice::from_ref(&ids[0])));
        let numbers = s.unseen(10, Local::now()).unwrap();
        assert_eq!(numbers, from_scratch());
        assert_eq!(numbers.0, 21);
        assert_eq!(numbers.1[0], "s30", "s00's message left is its newest");
        assert!(push(std::slice::from_ref(&again)));
        assert_eq!(s.unseen(10, Local::now()).unwrap(), from_scratch());
    }

    /// The methods the async side calls answer while the index lock is held by I/O (a
    /// scan, a read-state append under flock): they never wait for it.
    #[test]
    fn the_async_side_never_waits_for_the_index_lock() {
        let dir = tempfile::tempdir().unwrap();
        let session = std::sync::Arc::new(alpha(dir.path()));
        let held = session.index();
        let (tx, rx) = std::sync::mpsc::channel();
        let s = session.clone();
        std::thread::spawn(move || {
            let name = s.name();
            s.set_push(Push::On);
            let waiter = s.wait_begin(WaitFor::default());
            assert!(s.pushing(&["x".to_owned()], 1));
            s.push_failed(&["x".to_owned()]);
            s.wait_end(waiter);
            let current = s.is_current();
            let _ = tx.send((name, s.push(), current));
        });
        let answer = rx.recv_timeout(std::time::Duration::from_secs(10));
        drop(held);
        assert_eq!(answer, Ok(("alpha".to_owned(), Push::On, false)));
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
