//! What one message the person writes in the configured chat becomes: a delivery, a notice
//! back, a typed permission answer, or nothing. Pure: no I/O, unit-tested.

use super::{TgMessage, User};
use crate::message::{self, BROADCAST};
use crate::telegram::access::Allowed;
use crate::telegram::permission::{Behavior, typed_answer};
use crate::telegram::store::Forwarded;

/// What to do with one incoming message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Inbound {
    /// Not ours to hear: another chat, or a bot. Logged without its text.
    Ignore(&'static str),
    /// Written to the inbox from `telegram`.
    Deliver {
        to: String,
        subject: String,
        body: String,
        reply_to: Option<String>,
    },
    /// Told back to the person, in the configured chat.
    Notice(String),
    /// A typed `yes abcde` / `no abcde` from a user who may answer prompts.
    Typed(Behavior, String),
}

const HELP: &str = "This bot forwards t9-ipc escalations. Reply to one to answer the session \
that sent it, or write \"@name your message\" to write to a session (\"@all\" reaches every \
session).";

/// A file saved from the phone: its kind (`photo`, `document`, …) and where it was saved.
type SavedFile<'a> = Option<(&'a str, &'a str)>;

/// Decides what an incoming message becomes. `lookup` finds the escalation a Telegram
/// message id was part of.
pub(super) fn inbound(
    m: &TgMessage,
    chat: Option<i64>,
    allowed: &Allowed,
    topic: Option<String>,
    file: SavedFile,
    lookup: impl FnOnce(i64) -> Option<Forwarded>,
) -> Inbound {
    let from = match sender(m, chat, allowed) {
        Ok(from) => from,
        Err(why) => return Inbound::Ignore(why),
    };
    let text = m
        .text
        .as_deref()
        .or(m.caption.as_deref())
        .unwrap_or("")
        .trim();
    if text.is_empty() && file.is_none() {
        return Inbound::Notice(
            "Not delivered: only text, photos, documents and voice notes reach the sessions."
                .to_owned(),
        );
    }
    if let Some((behavior, id)) = typed_answer(text).filter(|_| file.is_none()) {
        if !allowed.may_answer(from.id) {
            return Inbound::Notice(
                "Not taken: only the user ids of IPC_TG_ALLOW or paired users answer permission requests."
                    .to_owned(),
            );
        }
        return Inbound::Typed(behavior, id);
    }
    if let Some(replied) = &m.reply_to_message
        && let Some(f) = lookup(replied.message_id)
    {
        return reply_to_escalation(f, text, file);
    }
    if let Some(rest) = text.strip_prefix('@') {
        return addressed(rest, file);
    }
    if let Some(session) = topic {
        // Anything written in a session's forum topic goes to that session.
        return Inbound::Deliver {
            to: session,
            subject: file_summary(text, file),
            body: with_file(text, file),
            reply_to: None,
        };
    }
    if text.starts_with('/') {
        return Inbound::Notice(HELP.to_owned());
    }
    Inbound::Notice(format!("Not delivered. {HELP}"))
}

/// The sender, if the message is one we hear: from the configured chat, by a person who may
/// write. Otherwise why it is ignored.
fn sender<'m>(
    m: &'m TgMessage,
    chat: Option<i64>,
    allowed: &Allowed,
) -> Result<&'m User, &'static str> {
    if chat != Some(m.chat.id) {
        return Err("a chat other than IPC_TG_CHAT");
    }
    let Some(from) = &m.from else {
        return Err("no sender (an anonymous admin or a channel post)");
    };
    if from.is_bot {
        return Err("a bot");
    }
    if !allowed.may_write(from.id) {
        return Err("a user not in IPC_TG_ALLOW and not paired");
    }
    Ok(from)
}

/// A reply to a forwarded escalation: goes back to the session that sent it.
fn reply_to_escalation(f: Forwarded, text: &str, file: SavedFile) -> Inbound {
    if message::check_name(&f.from).is_err() {
        return Inbound::Notice(format!(
            "Not delivered: the escalation came from {:?}, which is no session name.",
            f.from
        ));
    }
    Inbound::Deliver {
        to: f.from,
        subject: cut_chars(&format!("re: {}", f.subject), message::MAX_SUBJECT_CHARS),
        body: with_file(text, file),
        reply_to: Some(f.msg_id),
    }
}

/// "@name message" (`rest` is what follows the `@`): to that session, or to all with "@all".
fn addressed(rest: &str, file: SavedFile) -> Inbound {
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let (name, body) = rest.split_at(end);
    let body = body.trim();
    if body.is_empty() {
        return Inbound::Notice(format!("Not delivered: write a message after @{name}."));
    }
    let to = if name == BROADCAST {
        BROADCAST.to_owned()
    } else if let Err(why) = message::check_name(name) {
        return Inbound::Notice(format!("Not delivered: @{name} is no session name: {why}."));
    } else {
        name.to_owned()
    };
    Inbound::Deliver {
        to,
        subject: file_summary(body, file),
        body: with_file(body, file),
        reply_to: None,
    }
}

/// The body, with a file saved from the phone named at its end.
fn with_file(body: &str, file: SavedFile) -> String {
    match file {
        Some((kind, path)) => format!("{body}\n\n[{kind} from the phone, saved at {path}]")
            .trim_start()
            .to_owned(),
        None => body.to_owned(),
    }
}

/// The subject: the body's summary, or the kind of file when a file came without words.
fn file_summary(body: &str, file: SavedFile) -> String {
    match file {
        Some((kind, _)) if body.is_empty() => format!("a {kind} from the phone"),
        _ => summary(body),
    }
}

/// `s` cut to `max` characters, with `…` when cut.
fn cut_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// A subject for a message the person wrote: its first line, shortened. The body keeps the
/// whole text, so nothing is lost.
fn summary(text: &str) -> String {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    cut_chars(first.unwrap_or("(no text)"), 80)
}

#[cfg(test)]
mod tests {
    use super::super::{Chat, Replied};
    use super::*;

    fn tg(chat: i64, text: &str, reply_to: Option<i64>) -> TgMessage {
        TgMessage {
            chat: Chat { id: chat },
            from: Some(user(chat, false)),
            text: Some(text.to_owned()),
            caption: None,
            reply_to_message: reply_to.map(|message_id| Replied { message_id }),
            message_thread_id: None,
            is_topic_message: false,
        }
    }

    fn user(id: i64, is_bot: bool) -> User {
        User {
            id,
            is_bot,
            first_name: "Me".into(),
            username: None,
        }
    }

    fn allowed() -> Allowed {
        Allowed::new(&[], &[], Some(5))
    }

    fn forwarded(message_id: i64) -> Option<Forwarded> {
        (message_id == 77).then(|| Forwarded {
            chat: 5,
            message_id: 77,
            msg_id: "ID".into(),
            from: "alpha".into(),
            subject: "disk full".into(),
        })
    }

    #[test]
    fn what_the_person_writes_becomes() {
        assert_eq!(
            inbound(
                &tg(6, "@alpha hi", None),
                Some(5),
                &allowed(),
                None,
                None,
                forwarded
            ),
            Inbound::Ignore("a chat other than IPC_TG_CHAT")
        );
        assert_eq!(
            inbound(
                &tg(5, "x", Some(77)),
                None,
                &allowed(),
                None,
                None,
                forwarded
            ),
            Inbound::Ignore("a chat other than IPC_TG_CHAT")
        );
        let mut bot = tg(5, "@alpha hi", None);
        bot.from = Some(user(5, true));
        assert_eq!(
            inbound(&bot, Some(5), &allowed(), None, None, forwarded),
            Inbound::Ignore("a bot")
        );
        assert_eq!(
            inbound(
                &tg(5, " use the backup\n\ndisk ", Some(77)),
                Some(5),
                &allowed(),
                None,
                None,
                forwarded
            ),
            Inbound::Deliver {
                to: "alpha".into(),
                subject: "re: disk full".into(),
                body: "use the backup\n\ndisk".into(),
                reply_to: Some("ID".into()),
            }
        );
        assert_eq!(
            inbound(
                &tg(5, "@beta restart the job\nnow", None),
                Some(5),
                &allowed(),
                None,
                None,
                forwarded
            ),
            Inbound::Deliver {
                to: "beta".into(),
                subject: "restart the job".into(),
                body: "restart the job\nnow".into(),
                reply_to: None,
            }
        );
        // A reply to something else, with a mention, goes by the mention.
        assert!(matches!(
            inbound(&tg(5, "@beta hi", Some(1)), Some(5), &allowed(), None, None, forwarded),
            Inbound::Deliver { to, .. } if to == "beta"
        ));
        assert!(matches!(
            inbound(&tg(5, "@all hi", None), Some(5), &allowed(), None, None, forwarded),
            Inbound::Deliver { to, .. } if to == "all"
        ));
        for text in ["hello", "/start", "@x hi", "@beta", "@human hi"] {
            assert!(
                matches!(
                    inbound(
                        &tg(5, text, None),
                        Some(5),
                        &allowed(),
                        None,
                        None,
                        forwarded
                    ),
                    Inbound::Notice(_)
                ),
                "{text}"
            );
        }
        let mut anonymous = tg(5, "@alpha hi", None);
        anonymous.from = None;
        assert!(matches!(
            inbound(&anonymous, Some(5), &allowed(), None, None, forwarded),
            Inbound::Ignore(_)
        ));
        let mut stranger = tg(5, "@alpha hi", None);
        stranger.from = Some(user(6, false));
        assert!(matches!(
            inbound(&stranger, Some(5), &allowed(), None, None, forwarded),
            Inbound::Ignore(_)
        ));
        // A typed answer: only from an id named as allowed.
        assert!(matches!(
            inbound(
                &tg(5, "yes abcde", None),
                Some(5),
                &allowed(),
                None,
                None,
                forwarded
            ),
            Inbound::Notice(_)
        ));
        let named = Allowed::new(&[5], &[], Some(5));
        assert_eq!(
            inbound(
                &tg(5, "No ABCDE", None),
                Some(5),
                &named,
                None,
                None,
                forwarded
            ),
            Inbound::Typed(Behavior::Deny, "abcde".into())
        );
        assert_eq!(
            inbound(
                &tg(5, "hello", None),
                Some(5),
                &allowed(),
                Some("beta".into()),
                None,
                forwarded
            ),
            Inbound::Deliver {
                to: "beta".into(),
                subject: "hello".into(),
                body: "hello".into(),
                reply_to: None,
            },
            "text in a session's topic goes to that session"
        );
        let mut photo = tg(5, "", None);
        photo.text = None;
        let Inbound::Deliver { subject, body, .. } = inbound(
            &photo,
            Some(5),
            &allowed(),
            Some("beta".into()),
            Some(("photo", "/d/p.jpg")),
            forwarded,
        ) else {
            panic!()
        };
        assert_eq!(subject, "a photo from the phone");
        assert_eq!(body, "[photo from the phone, saved at /d/p.jpg]");
        let long = format!("@beta {}", "word ".repeat(100));
        let Inbound::Deliver { subject, body, .. } = inbound(
            &tg(5, &long, None),
            Some(5),
            &allowed(),
            None,
            None,
            forwarded,
        ) else {
            panic!()
        };
        assert_eq!(subject.chars().count(), 80);
        assert_eq!(body, long[6..].trim());
    }
}
