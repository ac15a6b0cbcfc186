//! "A message arrived": the one interface through which the server tells other services
//! (Telegram today) about mail. The push engine publishes each message file its index sees
//! for the first time, whoever it is for, and asks for a catch-up at each whole look at the
//! inbox; the send tool publishes what this session has just written.

use std::sync::{Arc, Mutex};

use t9_ipc::mailbox::Message;
use t9_ipc::message::{Priority, is_human};
use t9_ipc::session::{Outgoing, Session};
use t9_ipc::telegram::Telegram;

use crate::telegram;

/// A service told of the mail that arrives. Its methods must return quickly: the first two
/// run on the push loop, the third on the send tool's blocking thread.
pub trait Subscriber: Send + Sync {
    /// A message file seen for the first time, whoever wrote it and whoever it is for.
    fn arrived(&self, msg: &Arc<Message>);
    /// The inbox is being looked at whole (at start, at a rescan, at each heartbeat): catch
    /// up, in the background, on files whose events were missed.
    fn rescan(&self);
    /// This session has just written `id` from `out`. A subscriber that must not wait for
    /// the file event may read it back here (this runs on a blocking thread).
    fn sent(&self, session: &Session, out: &Outgoing<'_>, id: &str);
    /// Whether it wants every new message file, whoever it is for (the index then reads them
    /// all), or only this session's sends.
    fn wants_everyone(&self) -> bool {
        true
    }
}

/// Everyone told of arrivals; cheap to clone.
#[derive(Clone, Default)]
pub struct Subscribers(Arc<Vec<Box<dyn Subscriber>>>);

impl Subscribers {
    pub fn new(list: Vec<Box<dyn Subscriber>>) -> Subscribers {
        Subscribers(Arc::new(list))
    }

    /// True when someone wants every new message file; otherwise the index reads only this
    /// session's mail.
    pub fn everyone(&self) -> bool {
        self.0.iter().any(|s| s.wants_everyone())
    }

    pub fn arrived(&self, msg: &Arc<Message>) {
        self.0.iter().for_each(|s| s.arrived(msg));
    }

    pub fn rescan(&self) {
        self.0.iter().for_each(|s| s.rescan());
    }

    pub fn sent(&self, session: &Session, out: &Outgoing<'_>, id: &str) {
        self.0.iter().for_each(|s| s.sent(session, out, id));
    }
}

/// Telegram as a subscriber: escalations among the arrivals are forwarded to the user.
pub struct Escalations(pub Telegram);

impl Subscriber for Escalations {
    fn arrived(&self, msg: &Arc<Message>) {
        // Queues an escalation not seen before; ignores everything else.
        self.0.offer(msg);
    }

    fn rescan(&self) {
        telegram::rescan(Some(&self.0));
    }

    fn sent(&self, session: &Session, out: &Outgoing<'_>, id: &str) {
        // A critical message or one to the user: forwarded now, not at the file event.
        let escalates = out.priority == Priority::Critical || is_human(out.to.trim());
        telegram::offer_sent(Some(&self.0), escalates, session, id);
    }
}

/// The ids of the messages this session sent, for the push rules: the first answer to each
/// goes out at once (see `rules::Gate::asked`). Cheap to clone.
#[derive(Clone, Default)]
pub struct OwnSends(Arc<Mutex<Vec<String>>>);

impl OwnSends {
    /// The ids sent since the last call.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Subscriber for OwnSends {
    fn arrived(&self, _: &Arc<Message>) {}

    fn rescan(&self) {}

    fn sent(&self, _: &Session, _: &Outgoing<'_>, id: &str) {
        let mut ids = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Taken at each push; bounded all the same, should pushes stop.
        if ids.len() < 10_000 {
            ids.push(id.to_owned());
        }
    }

    fn wants_everyone(&self) -> bool {
        false
    }
}
