//! The index of one session's unread mail, kept current by file events, and what reads it:
//! unread pages, reminders, pushes, waits. Every method here does I/O under the `index`
//! lock (see [`Session`]); async callers run them on a blocking thread.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Local};

use super::{Session, Shared};
use crate::channels::Push;
use crate::error::{Error, Result};
use crate::id::{IdMap, IdSet};
use crate::mailbox::{Message, ReadState};
use crate::message;
use crate::watch::{Changed, FolderTime};

use super::unseen::UnseenMemo;

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
    /// Unread messages beyond the page (left unread), in the order a next call returns them.
    pub rest: Vec<Arc<Message>>,
}

/// What a [`Session::sync`] found.
#[derive(Debug, Default)]
pub struct Synced {
    /// The messages that newly appeared, for anyone (only this name's, unless asked for all).
    pub arrived: Vec<Arc<Message>>,
    /// This name's unread mail may have changed: worth looking for pushes.
    pub mine_changed: bool,
    /// The inbox changed a moment ago, too recently for its time to vouch that the index
    /// is current ([`FolderTime::Young`]): sync again after this long, even with no
    /// event, so that [`Session::is_current`] can say yes.
    pub young: Option<std::time::Duration>,
}

impl Shared {
    /// True for a message file (by its stem) that cannot be this name's mail, once the
    /// index is built: [`Session::pass_over`] takes it in without reading it.
    fn passes_over(&self, stem: &str) -> bool {
        self.index_built && !message::stem_may_be_for(stem, &self.name)
    }
}

/// What the `index` lock guards.
pub(super) struct Index {
    /// The name this index and read state belong to: the session's, changed with it.
    name: String,
    state: ReadState,
    /// Unread mail of this name by id: built by a whole scan, kept current by file events.
    mine: BTreeMap<String, Arc<Message>>,
    /// Ids that a later message replaces, with the sender of the later one: a message is
    /// hidden only when its own sender replaced it.
    superseded: IdMap<String>,
    indexed: bool,
    /// The reminder's numbers ([`Session::unseen`]) as last worked out, kept up to date by
    /// arrivals and by messages pushed whole; any other change drops it. Under a flood of
    /// 20,000 unread messages working them out again at each tool call was the largest cost
    /// of `t9_ipc_who`.
    pub(super) unseen: Option<UnseenMemo>,
}

impl Index {
    /// An index not built yet: the next look scans the inbox.
    pub(super) fn new(name: String, state: ReadState) -> Index {
        Index {
            name,
            state,
            mine: BTreeMap::new(),
            superseded: IdMap::default(),
            indexed: false,
            unseen: None,
        }
    }

    /// Unread, current, not replaced: the mail the model should get, urgent first, then
    /// oldest first.
    pub(super) fn live_mail(
        &self,
        now: DateTime<Local>,
    ) -> impl Iterator<Item = &Arc<Message>> + '_ {
        self.mine.values().filter(move |m| self.is_live(m, now))
    }

    /// Unread, current, not replaced by its sender.
    fn is_live(&self, m: &Message, now: DateTime<Local>) -> bool {
        self.state.is_unread(&self.name, m, now)
            && self.superseded.get(&m.id) != Some(&m.front.from)
    }

    /// Neither pushed, named in an event, nor waited for by a `t9_ipc_wait`.
    fn may_push(&self, shared: &Shared, m: &Message) -> bool {
        !self.was_pushed(shared, &m.id)
            && !self.state.was_listed(&m.id)
            && !shared.waiters.values().any(|w| w.matches(m))
    }

    /// Pushed, or in an event being sent right now.
    pub(super) fn was_pushed(&self, shared: &Shared, id: &str) -> bool {
        self.state.was_pushed(id) || shared.in_flight.contains(id)
    }

    /// Marks messages read and drops them from the index.
    fn mark_read<'a>(&mut self, ids: impl IntoIterator<Item = &'a str> + Clone) -> Result<()> {
        self.unseen = None;
        self.state.mark_read(ids.clone())?;
        for id in ids {
            self.mine.remove(id);
        }
        Ok(())
    }

    /// Takes in a file named by a file event: whether it is this name's unread mail, and the
    /// message when the index did not hold it yet (it newly arrived).
    fn take_in(&mut self, msg: Arc<Message>, now: DateTime<Local>) -> (bool, Option<Arc<Message>>) {
        let new = !self.mine.contains_key(&msg.id);
        let unread = self.state.is_unread(&self.name, &msg, now);
        if unread {
            if !new || msg.front.supersedes.is_some() {
                // Not a plain arrival: the reminder's numbers are worked out again.
                self.unseen = None;
            }
            note_supersedes(&mut self.superseded, &self.name, &msg);
            self.mine.insert(msg.id.clone(), msg.clone());
        }
        (unread, new.then_some(msg))
    }

    /// Takes messages about to be pushed whole (not in flight yet) out of the reminder's
    /// numbers, when they are kept. False when they must be worked out again.
    pub(super) fn uncount(
        &mut self,
        shared: &Shared,
        ids: &[String],
        now: DateTime<Local>,
    ) -> bool {
        let Some(mut memo) = self.unseen.take() else {
            return false;
        };
        if !memo.holds(self.state.generation(), shared.epoch, now) {
            return false;
        }
        if shared.push == Push::On {
            let mut done = IdSet::default();
            for id in ids {
                let Some(m) = self.mine.get(id) else {
                    continue; // not this name's unread mail: never counted
                };
                let counted = self.is_live(m, now) && !self.was_pushed(shared, id);
                if counted && done.insert(id.clone()) && !memo.remove(m) {
                    return false;
                }
            }
        } // else pushed messages count all the same
        self.unseen = Some(memo);
        true
    }

    /// Whether the reminder's numbers are kept and hold now (for tests).
    #[cfg(test)]
    pub(super) fn unseen_kept(&self, shared: &Shared) -> bool {
        self.unseen
            .as_ref()
            .is_some_and(|m| m.holds(self.state.generation(), shared.epoch, Local::now()))
    }

    /// Counts a message that just arrived in the reminder's numbers, when they are kept.
    fn count_arrival(&mut self, shared: &Shared, msg: &Arc<Message>, now: DateTime<Local>) {
        let push_on = shared.push == Push::On;
        let Some(memo) = &self.unseen else {
            return;
        };
        if !memo.holds(self.state.generation(), shared.epoch, now) {
            self.unseen = None;
            return;
        }
        let counts = self.is_live(msg, now) && !(push_on && self.was_pushed(shared, &msg.id));
        if counts && let Some(memo) = &mut self.unseen {
            memo.add(msg);
        }
    }
}

impl Session {
    /// Brings the index of this name's unread mail up to date: a whole scan the first time
    /// or when `changed` asks for one, otherwise only the files named. Also reads the state
    /// lines other processes appended.
    ///
    /// Only files whose name allows them to be this name's mail are read, unless `everyone`
    /// (Telegram looks at every new message).
    ///
    /// The files are listed and read before the `index` lock is taken, so that the tools
    /// that read the index keep answering while a flood is read.
    pub fn sync(&self, changed: Changed, everyone: bool, now: DateTime<Local>) -> Result<Synced> {
        let name = self.name();
        if changed.rescan || !self.index().indexed {
            // Before the listing: a file renamed in meanwhile makes the index look stale,
            // never current without it.
            let time = FolderTime::of(self.mailbox.inbox());
            let all = self.mailbox.scan_for(&name)?;
            let mut index = self.index();
            index.state.refresh()?;
            if index.name == name {
                self.rebuilt(&mut index, all, now, time);
            } // else renamed meanwhile: the next look builds the new name's index
            return Ok(Synced {
                arrived: Vec::new(),
                mine_changed: true,
                young: time.young(),
            });
        }
        let read: Vec<(&str, Option<Arc<Message>>)> = changed
            .files
            .iter()
            .filter_map(|path| path.file_stem().and_then(|s| s.to_str()))
            .filter(|id| everyone || message::stem_may_be_for(id, &name))
            .map(|id| (id, self.mailbox.get(id)))
            .collect();
        let mut index = self.index();
        let generation = index.state.generation();
        index.state.refresh()?;
        let mut mine_changed = false;
        let mut arrived = Vec::new();
        for (id, msg) in read {
            match msg {
                Some(msg) => {
                    let (mine, new) = index.take_in(msg, now);
                    mine_changed |= mine;
                    if mine && let Some(msg) = &new {
                        let shared = self.shared();
                        index.count_arrival(&shared, msg, now);
                    }
                    arrived.extend(new);
                }
                None => {
                    if index.mine.remove(id).is_some() {
                        index.unseen = None;
                    }
                }
            }
        }
        if index.state.generation() != generation {
            // Another process marked mail read: drop it from the index. (Otherwise the
            // index only grows by the files named, and expiry is checked when reading it.)
            let Index {
                mine, state, name, ..
            } = &mut *index;
            mine.retain(|_, m| state.is_unread(name, m, now));
            index.unseen = None;
            mine_changed = true;
        }
        self.shared().synced_mtime = changed.time.settled();
        Ok(Synced {
            arrived,
            mine_changed,
            young: changed.time.young(),
        })
    }

    /// True when no file was added to or removed from the inbox since the index was last
    /// brought up to date: the inbox still has the settled time its last listing or file
    /// events were taken with ([`FolderTime`]). When false, a file event is on its way (or
    /// was lost), or mail came a moment ago: wait for the next sync, or call
    /// [`Session::sync`] with a rescan. Takes no I/O lock; does one `stat` of the inbox.
    pub fn is_current(&self) -> bool {
        let synced = self.shared().synced_mtime;
        synced.is_some() && synced == FolderTime::of(self.mailbox.inbox()).settled()
    }

    pub(super) fn rebuild(&self, index: &mut Index, now: DateTime<Local>) -> Result<()> {
        // Before the listing: a change during it makes the index look stale, not current.
        let time = FolderTime::of(self.mailbox.inbox());
        let all = self.mailbox.scan_for(&index.name)?;
        self.rebuilt(index, all, now, time);
        Ok(())
    }

    /// Replaces the index with `all` (a whole scan begun when the inbox had `time`).
    fn rebuilt(
        &self,
        index: &mut Index,
        all: Vec<Arc<Message>>,
        now: DateTime<Local>,
        time: FolderTime,
    ) {
        tracing::debug!(messages = all.len(), "rescanned the inbox");
        index.mine.clear();
        index.superseded.clear();
        index.unseen = None;
        for msg in all {
            if msg.front.is_for(&index.name) {
                note_supersedes(&mut index.superseded, &index.name, &msg);
            }
            if index.state.is_unread(&index.name, &msg, now) {
                index.mine.insert(msg.id.clone(), msg);
            }
        }
        index.indexed = true;
        let mut shared = self.shared();
        shared.synced_mtime = time.settled();
        shared.index_built = true;
    }

    /// Takes in changes that name no file that can be this name's mail, without I/O: the
    /// index stays as it is and only the inbox time it is current for moves on. False when
    /// they need a [`Session::sync`]: a rescan, a file that may be this name's mail, or no
    /// index built yet. (A subscriber that reads every new file needs the sync anyway.)
    ///
    /// In a shared inbox most files are someone else's: each server sees every send, and
    /// this spares it a trip to a blocking thread for each.
    pub fn pass_over(&self, changed: &Changed) -> bool {
        if changed.rescan {
            return false;
        }
        let mut shared = self.shared();
        let passed = shared.index_built
            && changed
                .files
                .iter()
                .filter_map(|path| path.file_stem().and_then(|s| s.to_str()))
                .all(|id| shared.passes_over(id));
        if !passed {
            return false;
        }
        // A settled time vouches for every change up to it: they were in these changes or
        // in earlier ones, all taken in.
        shared.synced_mtime = changed.time.settled();
        true
    }

    /// True for a message file (by its stem) that [`Session::pass_over`] would pass over:
    /// not this name's mail, with the index built. The file watcher lets such files wait
    /// ([`crate::watch::CanWait`]) so that a burst of others' mail wakes this server once.
    pub fn can_wait(&self, stem: &str) -> bool {
        self.shared().passes_over(stem)
    }

    /// Builds the index if no event did yet (a tool called before the first scan).
    pub(super) fn ensure_indexed(&self, index: &mut Index, now: DateTime<Local>) -> Result<()> {
        index.state.refresh()?;
        if !index.indexed {
            self.rebuild(index, now)?;
        }
        Ok(())
    }

    /// This session's unread mail: at most `limit` bodies, and no more than `max_bytes` of
    /// body and subject in all, except that the first message is returned whatever its size
    /// (no message is cut, and every call makes progress). Marks only the page read when
    /// `mark_read` (and the pushed messages it names). With push on, messages already pushed
    /// are named, not repeated.
    ///
    /// Fails when the inbox folder is gone (deleted): no answer may say "nothing unread"
    /// about a mailbox that is not there.
    pub fn unread(
        &self,
        limit: usize,
        max_bytes: usize,
        mark_read: bool,
        now: DateTime<Local>,
    ) -> Result<Unread> {
        let inbox = self.mailbox.inbox();
        if !inbox.is_dir() {
            return Err(Error::Io {
                op: "reading",
                path: inbox.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the inbox folder is gone (deleted?); new mail arrives again once it is \
                     made again (a server starting on this mailbox makes it)",
                ),
            });
        }
        let mut index = self.index();
        self.ensure_indexed(&mut index, now)?;
        let (fresh, pushed, seen, rest) = {
            let mut shared = self.shared();
            // In the same hold of the lock as the look at pushes in flight: a push planned
            // before this page either is in flight now (and named here as seen) or is
            // planned again without what this page returns.
            if mark_read {
                shared.handed += 1;
            }
            let push_on = shared.push == Push::On;
            let (mut fresh, seen): (Vec<_>, Vec<_>) = index
                .live_mail(now)
                .cloned()
                .partition(|m| !(push_on && index.was_pushed(&shared, &m.id)));
            fresh.sort_by(|a, b| (a.front.urgency(), &a.id).cmp(&(b.front.urgency(), &b.id)));
            let mut used = 0;
            let fit = fresh
                .iter()
                .take(limit)
                .enumerate()
                .take_while(|(k, m)| {
                    used += m.body.len() + m.front.subject.len();
                    *k == 0 || used <= max_bytes
                })
                .count();
            let rest = fresh.split_off(fit);
            let pushed = fresh
                .iter()
                .map(|m| index.was_pushed(&shared, &m.id))
                .collect();
            (fresh, pushed, seen, rest)
        };
        if mark_read {
            index.mark_read(fresh.iter().chain(&seen).map(|m| m.id.as_str()))?;
        }
        Ok(Unread {
            messages: fresh,
            pushed,
            seen,
            rest,
        })
    }

    /// How many unread messages the model has not seen, the first `named` of their senders
    /// (each once) and how many other senders there are: the reminder added to tool
    /// results. With push on, pushed messages count as seen. Costs no allocation for each
    /// message: it runs on every tool call, under a flood too.
    pub fn unseen(
        &self,
        named: usize,
        now: DateTime<Local>,
    ) -> Result<(usize, Vec<String>, usize)> {
        let mut index = self.index();
        self.ensure_indexed(&mut index, now)?;
        let shared = self.shared();
        let generation = index.state.generation();
        if let Some(memo) = &index.unseen
            && memo.holds(generation, shared.epoch, now)
        {
            return Ok(memo.numbers(named));
        }
        let push_on = shared.push == Push::On;
        let mut memo = UnseenMemo::new(generation, shared.epoch);
        for m in index
            .live_mail(now)
            .filter(|m| !(push_on && index.was_pushed(&shared, &m.id)))
        {
            memo.add(m);
        }
        let numbers = memo.numbers(named);
        drop(shared);
        index.unseen = Some(memo);
        Ok(numbers)
    }

    /// Unread messages not yet pushed nor named in a digest, oldest first, leaving out those
    /// a running `t9_ipc_wait` is waiting for.
    /// With the count of hand-overs at this look, for [`Session::pushing`].
    pub fn pending_pushes(&self, now: DateTime<Local>) -> Result<(Vec<Arc<Message>>, u64)> {
        let mut index = self.index();
        self.ensure_indexed(&mut index, now)?;
        let shared = self.shared();
        let pending = index
            .live_mail(now)
            .filter(|m| index.may_push(&shared, m))
            .cloned()
            .collect();
        Ok((pending, shared.handed))
    }

    /// [`Session::pending_pushes`] among `candidates` only (say, the mail that just
    /// arrived), in their order: a look that costs what they are, not what waits.
    pub fn pending_among(
        &self,
        candidates: &[Arc<Message>],
        now: DateTime<Local>,
    ) -> Result<(Vec<Arc<Message>>, u64)> {
        let mut index = self.index();
        self.ensure_indexed(&mut index, now)?;
        let shared = self.shared();
        let pending = candidates
            .iter()
            .filter(|m| {
                index
                    .mine
                    .get(&m.id)
                    .is_some_and(|m| index.is_live(m, now) && index.may_push(&shared, m))
            })
            .cloned()
            .collect();
        Ok((pending, shared.handed))
    }

    /// Records messages sent as channel events (bodies included).
    pub fn mark_pushed(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            // A digest's event: the reminder's numbers stay (under a flood of 20,000 unread
            // messages, working them out again took 13 ms of the next tool call).
            return Ok(());
        }
        // On disk first, then out of flight: they count as pushed all along, and the
        // reminder's numbers, which left them out when they went in flight, stay.
        let (written, kept) = {
            let mut index = self.index();
            let in_flight = {
                let shared = self.shared();
                ids.iter().all(|id| shared.in_flight.contains(id))
            };
            let written = index.state.mark_pushed(ids.iter().map(String::as_str));
            // Not written (a full disk): out of flight they count as unseen again.
            let kept = in_flight && written.is_ok();
            if !kept {
                index.unseen = None;
            }
            (written, kept)
        };
        let mut shared = self.shared();
        if !kept {
            shared.epoch += 1;
        }
        for id in ids {
            shared.in_flight.remove(id);
        }
        written
    }

    /// Records messages named in a digest event (bodies not sent).
    pub fn mark_listed(&self, ids: &[String]) -> Result<()> {
        self.index()
            .state
            .mark_listed(ids.iter().map(String::as_str))
    }

    /// The oldest unread message the waiter matches, marked read; `None` when there is none
    /// yet. Two waiters never get the same message.
    pub fn wait_take(&self, waiter: u64, now: DateTime<Local>) -> Result<Option<Arc<Message>>> {
        let mut index = self.index();
        self.ensure_indexed(&mut index, now)?;
        let Some(filter) = self.shared().waiters.get(&waiter).cloned() else {
            return Ok(None);
        };
        // (Its waiter was counted as a hand-over when it began: no push takes its mail.)
        let found = index.live_mail(now).find(|m| filter.matches(m)).cloned();
        if let Some(msg) = &found {
            index.mark_read([msg.id.as_str()])?;
        }
        Ok(found)
    }

    /// Notes that this session answered message `id`: it is read now. Returns whether only
    /// a channel event could have told the model this id (it was pushed, not read): proof
    /// that events reach the model, which turns push on; and whether push was turned on
    /// just now (the heartbeat then says so).
    pub(super) fn answered(&self, id: &str) -> (bool, bool) {
        let mut index = self.index();
        let saw_push = index.state.was_pushed(id) && !index.state.was_read(id);
        // The answer is written already: a failure here (a full disk) must not report the
        // send as failed.
        if let Err(err) = index.mark_read([id]) {
            tracing::warn!(err = %format!("{err:#}"), msg_id = %id, "marking an answered message read");
        }
        let mut shared = self.shared();
        let switched = saw_push && shared.push != Push::On;
        if switched {
            shared.epoch += 1;
            tracing::info!(msg_id = %id, "a reply to a pushed message: channel events reach the model");
            shared.push = Push::On;
        }
        (saw_push, switched)
    }
}

/// Notes that `msg` replaces an earlier message of its sender to `name`.
fn note_supersedes(superseded: &mut IdMap<String>, name: &str, msg: &Message) {
    if let Some(old) = &msg.front.supersedes
        && msg.front.is_for(name)
    {
        superseded.insert(old.clone(), msg.front.from.clone());
    }
}
