//! "A message arrived": the one interface through which the server tells other services
//! (Telegram today) about mail. The push engine publishes each message file its index sees
//! for the first time, whoever it is for, and asks for a catch-up at each whole look at the
//! inbox; the send tool publishes what this session has just written.

use std::sync::Arc;

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
}

/// Everyone told of arrivals; cheap to clone.
#[derive(Clone, Default)]
pub struct Subscribers(Arc<Vec<Box<dyn Subscriber>>>);

impl Subscribers {
    pub fn new(list: Vec<Box<dyn Subscriber>>) -> Subscribers {
        Subscribers(Arc::new(list))
    }

    /// True when nobody listens: the index then reads only this session's mail.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
