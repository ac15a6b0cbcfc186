//! The reminder's numbers ([`super::Session::unseen`]): how many unread messages the model
//! has not seen and from whom, kept between tool calls and brought up to date by arrivals
//! and by messages pushed whole.

use std::sync::Arc;

use chrono::{DateTime, Local};

use crate::mailbox::Message;
use crate::message;

/// [`super::Session::unseen`]'s numbers, with what they hold for.
pub(super) struct UnseenMemo {
    /// The read state's generation and [`super::Shared::epoch`] they were worked out at.
    generation: u64,
    pub(super) epoch: u64,
    /// Good until then: the soonest expiry among the messages counted.
    until: Option<DateTime<Local>>,
    count: usize,
    /// Every sender counted, by one of its messages, with how many of its messages count.
    senders: foldhash::HashMap<BySender, usize>,
    /// The first message (the smallest id) of the senders whose first message is the
    /// oldest, oldest first: every sender when `complete`, else the oldest few (at least
    /// [`NAMED`] while the numbers hold). Kept without the other senders' first messages:
    /// a message older than the last one here makes its sender one of these, whoever it is.
    first: Vec<Arc<Message>>,
    /// `first` holds every sender.
    complete: bool,
}

/// The most senders [`UnseenMemo::numbers`] names.
const NAMED: usize = 10;

/// How many senders' first messages [`UnseenMemo::first`] keeps: more than are named, so
/// that messages pushed whole can be taken out one by one ([`UnseenMemo::remove`]) while
/// enough senders are left to name.
const KEPT: usize = 4 * NAMED;

/// A message standing for its sender in a set of senders.
struct BySender(Arc<Message>);

impl PartialEq for BySender {
    fn eq(&self, other: &Self) -> bool {
        self.0.front.from == other.0.front.from
    }
}

impl Eq for BySender {}

impl std::hash::Hash for BySender {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.front.from.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for BySender {
    fn borrow(&self) -> &str {
        &self.0.front.from
    }
}

impl UnseenMemo {
    pub(super) fn new(generation: u64, epoch: u64) -> UnseenMemo {
        UnseenMemo {
            generation,
            epoch,
            until: None,
            count: 0,
            senders: foldhash::HashMap::default(),
            first: Vec::with_capacity(KEPT + 1),
            complete: true,
        }
    }

    /// Counts one more unseen message. Allocates nothing for a sender already counted: under
    /// a flood of 20,000 messages the numbers are worked out again after each read mark.
    pub(super) fn add(&mut self, m: &Arc<Message>) {
        self.count += 1;
        if let Some(t) = m.front.expires.as_deref().and_then(message::parse_time) {
            self.until = Some(self.until.map_or(t, |u| u.min(t)));
        }
        match self.senders.get_mut(m.front.from.as_str()) {
            Some(n) => *n += 1,
            None => {
                self.senders.insert(BySender(m.clone()), 1);
            }
        }
        // Only a message older than the last one kept can change `first`, unless it holds
        // every sender: under a flood, messages arrive (and are counted) oldest first.
        if !self.complete && self.first.last().is_none_or(|l| m.id > l.id) {
            return;
        }
        let by_id = |a: &Arc<Message>, b: &Arc<Message>| a.id.cmp(&b.id);
        if let Some(i) = self.first.iter().position(|f| f.front.from == m.front.from) {
            if m.id < self.first[i].id {
                self.first[i] = m.clone();
                self.first.sort_by(by_id);
            }
            return;
        }
        self.first.push(m.clone());
        self.first.sort_by(by_id);
        if !self.complete {
            self.first.pop(); // as many as before: the oldest of them
        } else if self.first.len() > KEPT {
            self.first.truncate(KEPT);
            self.complete = false;
        }
    }

    /// Takes out a message counted (it is being pushed whole). False when the numbers can
    /// no longer be told without counting again: the sender's first message among those
    /// kept went and the sender has others, or fewer than [`NAMED`] are left of the oldest.
    pub(super) fn remove(&mut self, m: &Message) -> bool {
        let from = m.front.from.as_str();
        let Some(n) = self.senders.get_mut(from) else {
            return false;
        };
        self.count = self.count.saturating_sub(1);
        *n -= 1;
        let kept = self.first.iter().position(|f| f.front.from == from);
        if *n > 0 {
            // Its first message, when it is kept, must not be the one that went.
            return kept.is_none_or(|i| self.first[i].id != m.id);
        }
        self.senders.remove(from);
        if let Some(i) = kept {
            self.first.remove(i);
        }
        self.complete || self.first.len() >= NAMED
    }

    pub(super) fn holds(&self, generation: u64, epoch: u64, now: DateTime<Local>) -> bool {
        self.generation == generation && self.epoch == epoch && self.until.is_none_or(|u| now <= u)
    }

    /// The count, the first `named` senders (each once, oldest first; at most [`NAMED`])
    /// and how many others.
    pub(super) fn numbers(&self, named: usize) -> (usize, Vec<String>, usize) {
        let shown: Vec<String> = self
            .first
            .iter()
            .take(named.min(NAMED))
            .map(|m| m.front.from.clone())
            .collect();
        let others = self.senders.len() - shown.len();
        (self.count, shown, others)
    }
}
