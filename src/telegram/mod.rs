//! Telegram: escalations out to the person, and what the person writes back into the inbox.
//! The only user of reqwest, and the only code that holds the bot token.
//!
//! - **Out.** [`Telegram::offer`] queues a message that [`is_escalation`]; the forwarder
//!   ([`Telegram::forward`]) claims it (so that exactly one of the running servers sends it),
//!   renders it ([`render()`]) and sends it with retries, then records the outcome beside it.
//!   [`Telegram::catch_up`] offers the escalations of the last 24 hours at start, so a
//!   restarted server finishes what was pending.
//! - **Back.** [`Telegram::answer`] waits to be elected (a lock on `poll.lock`; the server
//!   holding it long-polls `getUpdates`, and the next waiting server takes over when it
//!   exits). A reply to a forwarded message becomes an inbox message from `telegram` to the
//!   session that escalated, with `reply_to` set; `@name text` goes to that session, and so
//!   does text in a session's forum topic. Only the configured chat, and only allowed users
//!   (`access`), are heard.
//! - **Permissions.** [`Telegram::ask`] relays a tool-permission prompt and waits for the
//!   verdict a press brings back (`permission`; see docs/SECURITY.md).
//!
//! The files: `render` (markdown to Telegram's HTML, split into parts), `api` (the token,
//! the Bot API client and its errors), `store` (the files below), `service` (the
//! [`Telegram`] handle and the forwarder), `inbound` (the reply poller; `inbound::triage`
//! decides what a message from the person becomes), `access` (allowed users, pairing), `pairing` (pairing
//! through the hub with federation on), `permission` (the prompt relay), `topics` (one forum topic per session), `files` (files both ways), `federated`
//! (with federation on: the hub's claim before a forward, the poller's lease, replies'
//! routes across machines; see `federation::claims`).
//!
//! On disk, under `<data>/telegram/` (each file 0600; state is replaced durably):
//!
//! ```text
//! claims/<msg_id>       created exclusively (a hard link) by the server that forwards the
//!                       message, and locked while it works; lines: who claimed it, each part
//!                       sent (`part 1/2 <telegram id>`), then `done sent` or `done failed`
//! failed/<msg_id>.txt   why a forward was given up: when, how many tries, the last error
//! replies.log           one JSON line a sent part: its Telegram id -> the escalated msg_id
//! offset                the next getUpdates offset
//! delivered.log         updates taken since the offset was saved, and what they became
//! sending/<msg_id>      a part is on its way and not yet in replies.log
//! poll.lock             the lock that elects the one server reading replies
//! paired.json, pairing/ allowed users and pending pairing codes (see `access`)
//! permissions/, verdicts/  open permission requests and their answers (see `permission`)
//! topics.json           each session's forum topic, by chat
//! files/                files received from the phone
//! ```
//!
//! The token is a [`Token`]: it prints as `<redacted>`, and every error text that could hold
//! it (reqwest's include the URL, and the URL holds the token) is scrubbed before it is
//! logged or written.

mod access;
mod api;
mod federated;
mod files;
mod inbound;
mod pairing;
mod permission;
mod render;
mod service;
mod store;
mod topics;

use std::time::Duration;

use crate::message::{self, FrontMatter};

pub use access::{Access, Arrival, PAIR_CODE_LIFE, PairedUser};
pub use api::Token;
pub use files::{FILES_HEADER, MAX_DOWNLOAD, MAX_UPLOAD, files_section, listed_files};
pub use pairing::CodeWatch;
pub use permission::{Asker, Behavior, PERMISSION_TIMEOUT, PermissionRequest, typed_answer};
pub use render::{MAX_MESSAGE, Part, render};
pub use service::Telegram;
pub use store::{Failure, failures};
pub use topics::topics_of;

/// How far back [`Telegram::catch_up`] looks, by the stamp in the file name.
pub const CATCH_UP_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// True when a message goes to the person: `type: escalation` or `priority: critical`
/// (any case). What the person wrote (`from: telegram` or `human`) never goes back.
pub fn is_escalation(front: &FrontMatter) -> bool {
    if message::is_human(front.from.trim()) {
        return false;
    }
    front.kind.trim().eq_ignore_ascii_case("escalation")
        || front.priority.trim().eq_ignore_ascii_case("critical")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escalations() {
        let mut front = FrontMatter {
            from: "alpha".into(),
            to: "human".into(),
            kind: "escalation".into(),
            priority: "normal".into(),
            ..FrontMatter::default()
        };
        assert!(is_escalation(&front));
        front.kind = "ipc".into();
        assert!(!is_escalation(&front));
        front.priority = "Critical".into();
        assert!(is_escalation(&front));
        front.from = "telegram".into();
        assert!(!is_escalation(&front), "the person's words never go back");
    }
}
