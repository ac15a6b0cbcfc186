//! The text of tool results: who is online, what a send did, unread mail, a waited-for
//! message.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::shared::ago;
use crate::shared::federation::{self, Others};
use chrono::{DateTime, Local};
use t9_ipc::coord::claims::Claim;
use t9_ipc::mailbox::Message;
use t9_ipc::session::{Peer as LivePeer, WaitFor};
use t9_ipc::text::{Boundary, plural};

use super::events::body_or_note;

/// The answer of `t9_ipc_who`: each live session, with its live file claims under it.
pub fn format_who(
    peers: &[LivePeer],
    me: &str,
    claims: &t9_ipc::Result<BTreeMap<String, Vec<Claim>>>,
    elsewhere: Option<&Others>,
    now: DateTime<Local>,
) -> String {
    let remote = elsewhere.map_or(0, |e| e.found.as_ref().map_or(0, Vec::len));
    let others = peers.iter().filter(|p| !p.you).count() + remote;
    let mut out = String::new();
    if others == 0 {
        let _ = writeln!(
            out,
            "No other session is online. You are \"{me}\". Mail sent to a name waits in the \
             inbox until a session with that name starts."
        );
    } else {
        let _ = writeln!(
            out,
            "{} (you are \"{me}\"):",
            plural(peers.len(), "live session")
        );
    }
    for p in peers {
        let _ = write!(
            out,
            "- {}{} · pid {} · {} · seen {}",
            p.name,
            if p.you { " (you)" } else { "" },
            p.pid,
            p.cwd.as_deref().unwrap_or("folder unknown"),
            ago(p.last_seen, now),
        );
        if !p.working_on.is_empty() {
            let _ = write!(out, " · working on: {}", p.working_on);
        }
        out.push('\n');
        if let Ok(claims) = claims {
            for c in claims.get(&p.name).into_iter().flatten() {
                let _ = writeln!(out, "  claim: {}", c.describe());
            }
        }
    }
    if let Err(err) = claims {
        let _ = writeln!(out, "(file claims could not be read: {err})");
    }
    if let Some(elsewhere) = elsewhere {
        let _ = writeln!(out, "{}", federation::lines(elsewhere, now));
    }
    if others > 0 {
        out.push_str("Message one with t9_ipc_send(to: \"<name>\", subject, body).");
    }
    out.trim_end().to_owned()
}

/// What a send did, for a recipient that is not the user.
pub fn format_sent(sent: &t9_ipc::session::Sent) -> String {
    let id = &sent.id;
    if sent.to == t9_ipc::message::BROADCAST {
        return if sent.others.is_empty() {
            format!(
                "Broadcast saved as msg_id {id}. No other session is online now; sessions that \
                 start later do not get older broadcasts."
            )
        } else {
            format!(
                "Broadcast sent to {} ({}) as msg_id {id}.",
                plural(sent.others.len(), "live session"),
                sent.others.join(", ")
            )
        };
    }
    let to = &sent.to;
    match &sent.recipient {
        Some(entry) => format!(
            "Sent to \"{to}\" (live, pid {}) as msg_id {id}. It arrives there now; if it \
             answers, the reply comes to you.",
            entry.pid
        ),
        None => {
            let live = if sent.others.is_empty() {
                "no other session is online".to_owned()
            } else {
                format!("online now: {}", sent.others.join(", "))
            };
            format!(
                "Saved as msg_id {id}, but no live session is named \"{to}\" ({live}). The \
                 message waits in the inbox until a session named \"{to}\" starts and reads it. \
                 If you meant one of the online sessions, send again with its name."
            )
        }
    }
}

/// Names listed at most after a result's messages (the rest are counted).
const NAMED_AT_MOST: usize = 10;

/// A page of unread mail, as `t9_ipc_unread` returns it: what it holds and what is left
/// first, then the messages, each opened by a line with a boundary drawn for this result.
pub fn format_unread(page: &t9_ipc::session::Unread, marked: bool, bound: usize) -> String {
    let n = page.messages.len();
    let mut out = if n == 0 {
        "No unread messages.\n".to_owned()
    } else {
        format!(
            "{} (urgent first, then oldest){}.\n",
            plural(n, "unread message"),
            if marked {
                ", now marked read"
            } else {
                ", left unread"
            }
        )
    };
    if !page.seen.is_empty() {
        let _ = writeln!(
            out,
            "Already shown to you as channel events{}:",
            if marked { " (now marked read)" } else { "" }
        );
        name_messages(&mut out, &page.seen);
    }
    if !page.rest.is_empty() {
        let _ = writeln!(
            out,
            "{} more unread, left unread (one call returns about {bound} characters): call \
             t9_ipc_unread again to read them. Next:",
            page.rest.len()
        );
        name_messages(&mut out, &page.rest);
    }
    if n > 0 {
        out.push_str(
            "To answer one: t9_ipc_send(to: <from>, reply_to: <msg_id>, subject, body).\n",
        );
    }
    let boundary = Boundary::new();
    if n > 0 {
        let _ = writeln!(out, "{}", boundary.preamble(n));
    }
    for (k, (msg, was_pushed)) in page.messages.iter().zip(&page.pushed).enumerate() {
        let note = was_pushed
            .then_some("(it was also sent as a channel event, which may not have reached you)");
        write_message(&mut out, msg, &boundary.open(k + 1, n), note);
    }
    out.trim_end().to_owned()
}

/// One line per message (subject, sender, msg_id), at most [`NAMED_AT_MOST`], then a count.
fn name_messages(out: &mut String, msgs: &[Arc<Message>]) {
    for msg in msgs.iter().take(NAMED_AT_MOST) {
        let _ = writeln!(
            out,
            "- {} · from {} · msg_id {}",
            msg.front.subject, msg.front.from, msg.id
        );
    }
    if msgs.len() > NAMED_AT_MOST {
        let _ = writeln!(out, "- and {} more", msgs.len() - NAMED_AT_MOST);
    }
}

/// One message as tool results show it: the line that opens it, a header, then the body.
fn write_message(out: &mut String, msg: &Message, open: &str, note: Option<&str>) {
    let f = &msg.front;
    let _ = write!(
        out,
        "\n{open}\nmsg_id: {}\nfrom: {} · to: {} · type: {} · priority: {} · created: {}\n",
        msg.id,
        f.from,
        f.to,
        if f.kind.is_empty() { "ipc" } else { &f.kind },
        f.priority_or_normal(),
        f.created,
    );
    if let Some(r) = &f.reply_to {
        let _ = writeln!(out, "reply_to: {r}");
    }
    if !f.expects_reply() {
        out.push_str("(information only: no reply expected)\n");
    }
    if let Some(note) = note {
        let _ = writeln!(out, "{note}");
    }
    let _ = writeln!(out, "subject: {}\n", f.subject);
    out.push_str(body_or_note(msg));
    out.push('\n');
}

/// The message `t9_ipc_wait` returns.
pub fn format_waited(msg: &Message, more: usize) -> String {
    let mut out = "Message arrived (now marked read).\n".to_owned();
    if more > 0 {
        let _ = writeln!(
            out,
            "{} more unread, left unread: call t9_ipc_unread to read them.",
            more
        );
    }
    if msg.front.expects_reply() {
        out.push_str("To answer: t9_ipc_send(to: <from>, reply_to: <msg_id>, subject, body).\n");
    }
    let boundary = Boundary::new();
    let _ = writeln!(out, "{}", boundary.preamble(1));
    write_message(&mut out, msg, &boundary.open(1, 1), None);
    out.trim_end().to_owned()
}

/// What a wait waits for, in words.
pub fn describe_wait(filter: &WaitFor) -> String {
    match (&filter.from, &filter.reply_to) {
        (None, None) => "message".to_owned(),
        (Some(f), None) => format!("message from \"{f}\""),
        (None, Some(r)) => format!("reply to {r}"),
        (Some(f), Some(r)) => format!("reply from \"{f}\" to {r}"),
    }
}
