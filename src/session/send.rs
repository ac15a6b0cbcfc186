//! Sending: every field checked before one message file is written.

use chrono::{DateTime, Local, TimeDelta};

use super::Session;
use crate::error::{Error, Result};
use crate::heartbeat::{Entry, Heartbeats, Table};
use crate::mailbox::{Draft, Mailbox, Message};
use crate::message::{self, BROADCAST, HUMAN, Priority};

/// The longest time to live a sender may set: 30 days.
pub const MAX_TTL: TimeDelta = TimeDelta::days(30);

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

impl Session {
    /// Writes one message (to `all` for a broadcast) after checking every field; see
    /// [`send_from`]. Answering a message marks it read.
    pub fn send(&self, out: &Outgoing<'_>, now: DateTime<Local>) -> Result<Sent> {
        let from = self.name();
        // A session never writes as a reserved sender (`human`, `telegram`, `system`): its
        // name was checked when it was taken; checked again here, where it matters.
        message::check_name(&from)
            .map_err(|why| Error::Refused(format!("this session cannot send: {why}")))?;
        let sent = send_from(&self.mailbox, &self.heartbeats, &from, out, now)?;
        let (saw_push, switched) = sent
            .reply_to
            .as_deref()
            .map_or((false, false), |id| self.answered(id));
        // The heartbeat says whether push is on: written again only when it just turned on
        // (one rewrite of heartbeats.json less on every reply to an event).
        if switched && let Err(err) = self.refresh(now) {
            tracing::warn!(%err, "writing the heartbeat");
        }
        Ok(Sent { saw_push, ..sent })
    }
}

/// Whom a message goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum To<'a> {
    Everyone,
    /// The person (an escalation).
    Human,
    Session(&'a str),
}

impl<'a> To<'a> {
    /// The recipient `to` names, checked against the sender `from`.
    fn read(to: &'a str, from: &str) -> Result<To<'a>> {
        if to == BROADCAST || to == "broadcast" {
            return Ok(To::Everyone);
        }
        // `human` (or `telegram`, answering the person) is an escalation: it goes to the
        // person, on Telegram when configured.
        let to = to.trim();
        if message::is_human(to) {
            return Ok(To::Human);
        }
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
        Ok(To::Session(to))
    }

    fn name(self) -> &'a str {
        match self {
            To::Everyone => BROADCAST,
            To::Human => HUMAN,
            To::Session(name) => name,
        }
    }

    /// The message's `type`.
    fn kind(self) -> &'static str {
        match self {
            To::Everyone => "broadcast",
            To::Human => "escalation",
            To::Session(_) => "ipc",
        }
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
    // `human`, exactly, is the person at a terminal (the command line's default sender,
    // refused there inside a Claude Code session): answering it reaches them the way any
    // escalation does. No other reserved name is written here: `telegram` only by the
    // Telegram poller, `system` never.
    if from != HUMAN {
        message::check_name(from)
            .map_err(|why| Error::Refused(format!("the sender is not a valid name: {why}")))?;
    }
    let to = To::read(out.to, from)?;
    let subject = message::check_subject(out.subject).map_err(Error::Refused)?;
    message::check_body(out.body).map_err(Error::Refused)?;
    let expires = expiry(out.ttl, now)?;
    let reply_to = out.reply_to.map(str::trim).filter(|r| !r.is_empty());
    let answered = reply_to.map(|id| answered(mailbox, id)).transpose()?;
    let supersedes = out.supersedes.map(str::trim).filter(|r| !r.is_empty());
    if let Some(id) = supersedes {
        check_supersedes(mailbox, id, from, to.name())?;
    }
    let thread = answered
        .as_ref()
        .map(|m| m.front.thread.clone().unwrap_or_else(|| m.id.clone()));
    let draft = Draft {
        from,
        to: to.name(),
        kind: to.kind(),
        subject: &subject,
        priority: out.priority.as_str(),
        reply_to,
        thread: thread.as_deref(),
        supersedes,
        expires,
        info_only: out.info_only,
        body: out.body,
    };
    let id = mailbox.write(&draft, now)?;
    let mut live: Table = heartbeats.live(now);
    live.remove(from);
    let recipient = match to {
        To::Session(name) => live.get(name).cloned(),
        To::Everyone | To::Human => None,
    };
    Ok(Sent {
        id,
        to: to.name().to_owned(),
        reply_to: answered.map(|m| m.id.clone()),
        recipient,
        others: live.into_keys().collect(),
        saw_push: false,
    })
}

/// When a message with this time to live expires; a time to live out of range is refused.
fn expiry(ttl: Option<TimeDelta>, now: DateTime<Local>) -> Result<Option<DateTime<Local>>> {
    match ttl {
        Some(ttl) if ttl <= TimeDelta::zero() || ttl > MAX_TTL => Err(Error::Refused(
            "ttl_s must be between 1 second and 30 days (2592000), or left out for a \
             message that never expires"
                .to_owned(),
        )),
        Some(ttl) => Ok(Some(now + ttl)),
        None => Ok(None),
    }
}

/// The message a reply answers, from the inbox or the archive.
fn answered(mailbox: &Mailbox, id: &str) -> Result<std::sync::Arc<Message>> {
    mailbox
        .get(id)
        .or_else(|| mailbox.get_archived(id))
        .ok_or_else(|| {
            Error::Refused(format!(
                "reply_to {id:?} is no message in the inbox or archive. Pass the msg_id \
                 of the message you answer exactly as given, or leave reply_to out"
            ))
        })
}

/// Refuses to replace anything but an earlier message of `from` to `to` in the inbox.
fn check_supersedes(mailbox: &Mailbox, id: &str, from: &str, to: &str) -> Result<()> {
    match mailbox.get(id) {
        Some(old) if old.front.from == from && old.front.to == to => Ok(()),
        Some(old) => Err(Error::Refused(format!(
            "supersedes {id:?} is a message from {:?} to {:?}; a message can only \
             replace an earlier one of this session to the same recipient",
            old.front.from, old.front.to
        ))),
        None => Err(Error::Refused(format!(
            "supersedes {id:?} is no message in the inbox. Pass the msg_id your \
             earlier send returned, or leave supersedes out"
        ))),
    }
}
