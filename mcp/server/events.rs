//! The text of channel events: one message as it is, several as a bundle, many as a digest,
//! with the meta attributes the model reads on the `<channel>` tag.

use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::json;
use t9_ipc::mailbox::Message;

use super::rules::Batch;

/// What an empty body is shown as, in events and tool results.
pub const EMPTY_BODY: &str = "(no body; the subject is the whole message)";
/// A digest names at most this many messages.
const DIGEST_MAX: usize = 20;

/// The `params` of the event that carries `batch` to the session named `me`.
pub fn params(batch: &Batch, me: &str) -> serde_json::Value {
    if batch.digest {
        digest_params(&batch.named, me)
    } else {
        event_params(&batch.whole, &batch.named, me)
    }
}

/// One event carrying whole messages: one message as it is, several as a bundle.
fn event_params(msgs: &[Arc<Message>], held: &[Arc<Message>], me: &str) -> serde_json::Value {
    if msgs.is_empty() {
        let (content, from) = held_notice(held);
        let priority = held.iter().min_by_key(|m| m.front.urgency());
        return json!({"content": content, "meta": {
            "from": from.join(","), "to": me, "type": "notice",
            "subject": format!("{} waiting messages", held.len()),
            "priority": priority.map_or("normal", |m| m.front.priority_or_normal()),
            "count": held.len().to_string(),
        }});
    }
    let mut params = if let [msg] = msgs {
        channel_params(msg)
    } else {
        let mut content = String::new();
        for msg in msgs {
            write_bundled(&mut content, msg);
        }
        json!({
            "content": content.trim_end(),
            "meta": group_meta(msgs, me, "bundle", format!("{} messages", msgs.len())),
        })
    };
    if !held.is_empty() {
        append_held(&mut params, held);
    }
    params
}

/// One message of a bundle: a header line, then its body.
fn write_bundled(content: &mut String, msg: &Message) {
    let f = &msg.front;
    let _ = writeln!(
        content,
        "--- msg_id: {} · from: {} · priority: {} · subject: {}",
        msg.id,
        f.from,
        f.priority_or_normal(),
        f.subject
    );
    if let Some(r) = &f.reply_to {
        let _ = writeln!(content, "reply_to: {r}");
    }
    if !f.expects_reply() {
        content.push_str("(information only: no reply expected)\n");
    }
    content.push('\n');
    content.push_str(body_or_note(msg));
    content.push_str("\n\n");
}

/// The body, or a note saying there is none.
pub fn body_or_note(msg: &Message) -> &str {
    if msg.body.trim().is_empty() {
        EMPTY_BODY
    } else {
        &msg.body
    }
}

/// One event naming many messages without their bodies.
fn digest_params(msgs: &[Arc<Message>], me: &str) -> serde_json::Value {
    let mut content = format!(
        "{} messages are waiting for you. Read them with t9_ipc_unread (it returns the \
         bodies, urgent first).\n",
        msgs.len()
    );
    for msg in msgs.iter().take(DIGEST_MAX) {
        let f = &msg.front;
        let _ = writeln!(
            content,
            "- {} · from {} · {} · msg_id {}",
            f.subject,
            f.from,
            f.priority_or_normal(),
            msg.id
        );
    }
    if msgs.len() > DIGEST_MAX {
        let _ = writeln!(content, "- … and {} more", msgs.len() - DIGEST_MAX);
    }
    json!({
        "content": content.trim_end(),
        "meta": group_meta(msgs, me, "digest", format!("{} waiting messages", msgs.len())),
    })
}

/// Tells the model that some senders' mail waits because of the limits.
fn append_held(params: &mut serde_json::Value, held: &[Arc<Message>]) {
    let note = format!("\n\n({})", held_notice(held).0);
    if let Some(serde_json::Value::String(content)) = params.get_mut("content") {
        content.push_str(&note);
    }
}

/// The notice for mail the limits hold back: how many wait, from whom, the subjects of the
/// first few, that `t9_ipc_unread` returns them and that more this minute is not announced;
/// with the senders, for the meta.
pub fn held_notice(held: &[Arc<Message>]) -> (String, Vec<&str>) {
    const SUBJECTS: usize = 5;
    let senders = senders_of(held);
    let shown = senders
        .iter()
        .take(10)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let more = senders.len().saturating_sub(10);
    let mut text = format!(
        "{} more {} waiting unread (too many at once) from {shown}{}. First subjects:",
        held.len(),
        if held.len() == 1 {
            "message is"
        } else {
            "messages are"
        },
        if more > 0 {
            format!(" and {more} other senders")
        } else {
            String::new()
        },
    );
    for m in held.iter().take(SUBJECTS) {
        let _ = write!(text, " \"{}\" ({});", m.front.subject, m.front.from);
    }
    text.push_str(
        " Call t9_ipc_unread to read them all. More mail from these senders this minute is \
         not announced: t9_ipc_unread returns it too.",
    );
    (text, senders)
}

/// The senders of `msgs`, each once, in order.
fn senders_of(msgs: &[Arc<Message>]) -> Vec<&str> {
    let mut from: Vec<&str> = Vec::new();
    for m in msgs {
        if !from.contains(&m.front.from.as_str()) {
            from.push(&m.front.from);
        }
    }
    from
}

/// Meta of an event that carries several messages.
fn group_meta(msgs: &[Arc<Message>], me: &str, kind: &str, subject: String) -> serde_json::Value {
    let from = senders_of(msgs);
    let priority = msgs
        .iter()
        .min_by_key(|m| m.front.urgency())
        .map_or("normal", |m| m.front.priority_or_normal());
    let ids: Vec<&str> = msgs.iter().map(|m| m.id.as_str()).collect();
    json!({
        "from": from.join(","),
        "to": me,
        "subject": subject,
        "priority": priority,
        "type": kind,
        "msg_id": ids.join(" "),
        "count": msgs.len().to_string(),
    })
}

/// The `params` of a channel event: the body as content, the front matter as string meta.
fn channel_params(msg: &Message) -> serde_json::Value {
    let f = &msg.front;
    let or = |value: &str, default: &str| {
        if value.is_empty() {
            default.to_owned()
        } else {
            value.to_owned()
        }
    };
    let mut meta = json!({
        "from": f.from,
        "to": f.to,
        "subject": f.subject,
        "priority": or(&f.priority, "normal"),
        "type": or(&f.kind, if f.is_broadcast() { "broadcast" } else { "ipc" }),
        "msg_id": msg.id,
        "created": f.created,
    });
    if let Some(reply_to) = &f.reply_to {
        meta["reply_to"] = json!(reply_to);
    }
    if !f.expects_reply() {
        meta["expects_reply"] = json!("no");
    }
    if let Some(expires) = &f.expires {
        meta["expires"] = json!(expires);
    }
    json!({ "content": body_or_note(msg), "meta": meta })
}
