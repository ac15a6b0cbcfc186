//! The reply path: the elected server long-polls `getUpdates`, and what the person writes
//! in the configured chat becomes an inbox message from `telegram` (or a notice back).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Local;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::access::{Allowed, Arrival, code_in};
use super::api::{ApiError, MAX_BACKOFF, POLL_SECONDS, REQUEST_TIMEOUT, backoff};
use super::federated::HubRequest;
use super::files::incoming;
use super::pairing::{HubCode, HubPairing};
use super::permission::{Behavior, Verdict, parse_callback};
use super::service::{Inner, Telegram};
use super::store::private;
use crate::mailbox::Draft;
use crate::message::{BROADCAST, TELEGRAM};

mod triage;

use triage::{Inbound, inbound};

#[derive(Debug, Deserialize)]
struct Update {
    message: Option<TgMessage>,
    callback_query: Option<CallbackQuery>,
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    id: String,
    from: User,
    #[serde(default)]
    data: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TgMessage {
    chat: Chat,
    from: Option<User>,
    text: Option<String>,
    caption: Option<String>,
    reply_to_message: Option<Replied>,
    /// The forum topic the message was written in.
    #[serde(default)]
    message_thread_id: Option<i64>,
    #[serde(default)]
    is_topic_message: bool,
}

#[derive(Debug, Deserialize)]
struct Chat {
    id: i64,
}

#[derive(Debug, Deserialize)]
struct User {
    id: i64,
    #[serde(default)]
    is_bot: bool,
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    username: Option<String>,
}

impl User {
    /// How the person is named in outcomes and `telegram status`.
    fn name(&self) -> String {
        match &self.username {
            Some(u) if !self.first_name.is_empty() => format!("{} (@{u})", self.first_name),
            Some(u) => format!("@{u}"),
            None => self.first_name.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Replied {
    message_id: i64,
}

/// What the poller sends back after a batch: a notice in a chat, or a toast on a press.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// A text in a chat (and forum topic).
    Notice(i64, Option<i64>, String),
    Toast(String, String),
    /// A verdict for a request asked on another machine: put in the hub, then `done` is
    /// sent (`failed` when the hub refused it). A press of Allow or Deny is confirmed only
    /// once the asking server records the outcome it `settles` as; `not_taken` is sent when
    /// it does not within [`super::federated::TAKEN_WITHIN`] (the session ended).
    Hub {
        request_id: String,
        verdict: Verdict,
        settles: Option<&'static str>,
        done: Box<Answer>,
        failed: Box<Answer>,
        not_taken: Box<Answer>,
    },
    /// A pairing code that waits on another machine: who sent it goes into the hub, then
    /// the person is told.
    Pair(Box<HubPairing>),
}

impl Telegram {
    /// The reply path, until `cancel`: waits to be elected (the lock on
    /// `<data>/telegram/poll.lock`, held by one server at a time and taken by a waiting one
    /// when its holder exits), then long-polls `getUpdates` from the stored offset and turns
    /// what the person writes in the configured chat into inbox messages from `telegram`.
    /// Waiting costs nothing: a blocking thread sleeps in the lock call.
    pub async fn answer(&self, cancel: CancellationToken) {
        let Some(_lock) = self.elected(&cancel).await else {
            return;
        };
        self.poll_leased(&cancel).await;
    }

    /// Long-polls `getUpdates` until `cancel`, from the stored offset on.
    pub(super) async fn poll(&self, cancel: &CancellationToken) {
        let local = self
            .blocking(|inner| inner.store.load_offset())
            .await
            .flatten();
        let mut offset = self.shared_offset(local).await;
        let mut errors = PollErrors::default();
        loop {
            let got = tokio::select! {
                () = cancel.cancelled() => return,
                got = self.get_updates(offset) => got,
            };
            match got {
                Ok(updates) => {
                    errors = PollErrors::default();
                    let next = self.take(updates, offset).await;
                    if next != offset {
                        self.share_offset(next).await;
                    }
                    offset = next;
                }
                Err(err) => {
                    let delay = errors.delay(&err);
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Waits for the poll lock; `None` when cancelled first or the lock cannot be taken.
    async fn elected(&self, cancel: &CancellationToken) -> Option<File> {
        let path = self.inner.store.poll_lock.clone();
        let waiting = tokio::task::spawn_blocking(move || -> io::Result<File> {
            let file = private()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            file.lock()?;
            Ok(file)
        });
        let lock = tokio::select! {
            () = cancel.cancelled() => return None,
            lock = waiting => lock,
        };
        match lock {
            Ok(Ok(file)) => Some(file),
            Ok(Err(err)) => {
                tracing::warn!(%err, "cannot take the Telegram poll lock; replies are read by other servers only");
                None
            }
            Err(err) => {
                tracing::warn!(%err, "waiting for the Telegram poll lock");
                None
            }
        }
    }

    /// One long poll for the updates from `offset` on.
    async fn get_updates(&self, offset: Option<i64>) -> Result<Vec<Value>, ApiError> {
        let mut body =
            json!({"timeout": POLL_SECONDS, "allowed_updates": ["message", "callback_query"]});
        if let Some(offset) = offset {
            body["offset"] = json!(offset);
        }
        let timeout = Duration::from_secs(POLL_SECONDS) + REQUEST_TIMEOUT;
        self.inner
            .api
            .call::<Vec<Value>>("getUpdates", &body, Some(timeout))
            .await
    }

    /// Handles a batch of updates and sends the notices it gives; returns the next offset.
    async fn take(&self, updates: Vec<Value>, offset: Option<i64>) -> Option<i64> {
        if updates.is_empty() {
            return offset;
        }
        let files = self.fetch_files(&updates).await;
        self.fetch_routes(&updates).await;
        self.fetch_topics(&updates).await;
        let remote = Remote {
            requests: self.fetch_requests(&updates).await,
            codes: self.fetch_codes(&updates).await,
        };
        let taken = self
            .blocking(move |inner| inner.take_updates(updates, offset, files, &remote))
            .await;
        let Some((next, answers)) = taken else {
            return offset;
        };
        for answer in answers {
            let answer = self.through_hub(answer).await;
            let answer = self.pair_through_hub(answer).await;
            let sent = match &answer {
                Answer::Notice(chat, thread, text) => self
                    .inner
                    .api
                    .send(*chat, *thread, text, false)
                    .await
                    .map(|_| ()),
                Answer::Toast(id, text) => self.inner.api.answer_callback(id, text).await,
                // Carried out just above: they give a toast or a notice back.
                Answer::Hub { .. } | Answer::Pair(_) => Ok(()),
            };
            if let Err(err) = sent {
                tracing::warn!(%err, "answering the person on Telegram");
            }
        }
        next
    }
}

/// What the hub knows of a batch (federation on; empty without).
struct Remote {
    /// The permission requests of other machines pressed or answered in it.
    requests: HashMap<String, HubRequest>,
    /// The pairing codes sent in it that wait on other machines.
    codes: HashMap<String, HubCode>,
}

/// The verdict a press of `action` gives, the toast that confirms it, and the outcome the
/// asking server records when it takes it ("See more" settles nothing).
fn pressed(
    action: char,
    secret: String,
    by: String,
) -> (Verdict, &'static str, Option<&'static str>) {
    match action {
        'm' => (Verdict::More, "", None),
        'a' => (Verdict::Press { secret, by }, "Allowed.", Some("allowed")),
        _ => (Verdict::Press { secret, by }, "Denied.", Some("denied")),
    }
}

/// The failed polls in a row: they set the wait before the next, and an error is logged as a
/// warning only when it differs from the one before.
#[derive(Default)]
struct PollErrors {
    failures: u32,
    last: String,
}

impl PollErrors {
    /// Logs `err` and returns how long to wait before the next poll.
    fn delay(&mut self, err: &ApiError) -> Duration {
        let delay = match err {
            ApiError::RateLimited(wait) => *wait,
            ApiError::Refused(..) => MAX_BACKOFF,
            _ => {
                self.failures += 1;
                backoff(self.failures - 1)
            }
        };
        let text = err.to_string();
        if text != self.last {
            tracing::warn!(err = %text, retry_in_ms = delay.as_millis() as u64, "reading replies from Telegram failed");
            self.last = text;
        } else {
            tracing::debug!(err = %text, "reading replies from Telegram failed again");
        }
        delay
    }
}

impl Inner {
    /// Handles a batch of updates; returns the next offset and the notices to send.
    fn take_updates(
        &self,
        updates: Vec<Value>,
        mut offset: Option<i64>,
        mut files: HashMap<i64, Result<PathBuf, String>>,
        remote: &Remote,
    ) -> (Option<i64>, Vec<Answer>) {
        let mut notices = Vec::new();
        let allowed = self.allowed();
        let delivered = self.store.delivered();
        for value in updates {
            let Some(update_id) = value.get("update_id").and_then(Value::as_i64) else {
                tracing::warn!("skipped a Telegram update without an update_id");
                continue;
            };
            offset = Some(offset.map_or(update_id + 1, |o| o.max(update_id + 1)));
            let file = files.remove(&update_id);
            if let Some((_, Some(msg_id))) = delivered.get(&update_id) {
                // Delivered before a crash that came before the offset was saved.
                tracing::info!(update_id, %msg_id, "a Telegram update delivered already; skipped");
                continue;
            }
            let taking = delivered.get(&update_id).map(|(at, _)| at.as_str());
            notices.extend(self.take_update(update_id, value, &allowed, file, taking, remote));
        }
        if let Some(offset) = offset
            && let Err(err) = self.store.save_offset(offset)
        {
            tracing::warn!(err = %format!("{err:#}"), "saving the Telegram offset");
        }
        (offset, notices)
    }

    /// Handles one update; returns the notice to send back, if any.
    fn take_update(
        &self,
        update_id: i64,
        value: Value,
        allowed: &Allowed,
        file: Option<Result<PathBuf, String>>,
        taking: Option<&str>,
        remote: &Remote,
    ) -> Option<Answer> {
        let kind = value.get("message").and_then(incoming).map(|f| f.kind);
        let update = match serde_json::from_value::<Update>(value) {
            Ok(update) => update,
            Err(err) => {
                tracing::warn!(update_id, %err, "skipped a Telegram update this version does not understand");
                return None;
            }
        };
        if let Some(q) = update.callback_query {
            return Some(self.press(update_id, &q, allowed, remote));
        }
        let Some(m) = update.message else {
            tracing::debug!(update_id, "skipped a Telegram update that is no message");
            return None;
        };
        if let Some(answer) = self.pairing(&m, remote) {
            return Some(answer);
        }
        let topic = m
            .message_thread_id
            .filter(|_| m.is_topic_message)
            .and_then(|thread| self.session_of_topic(m.chat.id, thread));
        let saved = match (&file, kind) {
            (Some(Ok(path)), Some(kind)) => Some((kind, path.display().to_string())),
            (Some(Err(why)), Some(kind)) => {
                tracing::warn!(update_id, err = %why, "a file from Telegram was not saved");
                return Some(Answer::Notice(
                    m.chat.id,
                    m.message_thread_id,
                    format!("Not delivered: the {kind} could not be fetched ({why})."),
                ));
            }
            _ => None,
        };
        let file = saved.as_ref().map(|(k, p)| (*k, p.as_str()));
        let action = inbound(&m, self.chat(), allowed, topic, file, |message_id| {
            self.store
                .lookup_waiting(m.chat.id, message_id)
                .unwrap_or_else(|err| {
                    tracing::warn!(err = %format!("{err:#}"), "reading replies.log");
                    None
                })
        });
        self.act(update_id, taking, &m, action, remote)
    }

    /// Carries out what an incoming message became; returns the notice to send back, if any.
    fn act(
        &self,
        update_id: i64,
        taking: Option<&str>,
        m: &TgMessage,
        action: Inbound,
        remote: &Remote,
    ) -> Option<Answer> {
        match action {
            Inbound::Ignore(why) => {
                // The chat id helps whoever sets IPC_TG_CHAT; the text is not logged.
                tracing::warn!(
                    update_id,
                    chat_id = m.chat.id,
                    from = why,
                    "ignored a Telegram message (its text is not logged)"
                );
                None
            }
            Inbound::Notice(text) => Some(Answer::Notice(m.chat.id, m.message_thread_id, text)),
            Inbound::Typed(behavior, id) => {
                let by = m.from.as_ref().map(User::name).unwrap_or_default();
                Some(Answer::Notice(
                    m.chat.id,
                    m.message_thread_id,
                    self.typed(&id, behavior, by, remote),
                ))
            }
            Inbound::Deliver {
                to,
                subject,
                body,
                reply_to,
            } => self
                .deliver_once(update_id, taking, &to, &subject, &body, reply_to.as_deref())
                .map(|text| Answer::Notice(m.chat.id, m.message_thread_id, text)),
        }
    }

    /// A pairing code sent to the bot (from any chat: pairing is how a chat becomes known):
    /// one of this machine's, or one that waits on another machine (`remote`).
    fn pairing(&self, m: &TgMessage, remote: &Remote) -> Option<Answer> {
        let from = m.from.as_ref().filter(|u| !u.is_bot)?;
        let text = m.text.as_deref()?;
        let arrival = Arrival {
            user_id: from.id,
            chat_id: m.chat.id,
            name: from.name(),
        };
        if self
            .access
            .code_arrived(text, &arrival, Local::now())
            .is_none()
        {
            let code = code_in(text)?;
            let offer = remote.codes.get(&code)?;
            let (chat, thread) = (m.chat.id, m.message_thread_id);
            return Some(Answer::Pair(Box::new(HubPairing::new(
                code, offer, arrival, chat, thread,
            ))));
        }
        tracing::info!(
            user_id = from.id,
            chat_id = m.chat.id,
            "a pairing code arrived"
        );
        Some(Answer::Notice(
            m.chat.id,
            m.message_thread_id,
            format!(
                "Paired: user {} in chat {}. `t9-ipc telegram pair` saves it now.",
                from.id, m.chat.id
            ),
        ))
    }

    /// A button press on a permission prompt.
    fn press(
        &self,
        update_id: i64,
        q: &CallbackQuery,
        allowed: &Allowed,
        remote: &Remote,
    ) -> Answer {
        let toast = |text: &str| Answer::Toast(q.id.clone(), text.to_owned());
        let Some((action, id, secret)) = q.data.as_deref().and_then(parse_callback) else {
            tracing::debug!(update_id, "a button press this version does not know");
            return toast("This button is not (or no longer) understood.");
        };
        if q.from.is_bot || !allowed.may_answer(q.from.id) {
            tracing::warn!(update_id, user_id = q.from.id, request_id = %id, "a press from a user who may not answer was refused");
            return toast("Refused: you are not allowed to answer permission requests.");
        }
        let (verdict, said, settles) = pressed(action, secret, q.from.name());
        let Some(request) = self.open_request(&id) else {
            return match remote.requests.get(&id) {
                None => toast("Unknown request: it expired or was never asked here."),
                Some(r) => match &r.outcome {
                    Some(outcome) => toast(&format!("Already answered ({outcome}).")),
                    // Checked here as locally; the asking server checks the secret.
                    None => Answer::Hub {
                        request_id: id,
                        verdict,
                        settles,
                        done: Box::new(toast(said)),
                        failed: Box::new(toast("Not taken: the hub could not be written.")),
                        not_taken: Box::new(toast(&format!(
                            "Not taken: {} on {} did not take it within {} s; that session has probably ended.",
                            r.session,
                            r.machine,
                            super::federated::TAKEN_WITHIN.as_secs()
                        ))),
                    },
                },
            };
        };
        if let Some(outcome) = &request.outcome {
            return toast(&format!("Already answered ({outcome})."));
        }
        if !crate::heartbeat::pid_running(request.pid) {
            return toast("The session that asked has ended; nothing was answered.");
        }
        match self.write_verdict(&id, &verdict) {
            Ok(()) => {
                tracing::info!(update_id, request_id = %id, session = %request.session, "a press was handed to the asking session");
                toast(said)
            }
            Err(err) => {
                tracing::warn!(update_id, err = %format!("{err:#}"), "writing a verdict");
                toast("Not taken: the mailbox could not be written.")
            }
        }
    }

    /// A typed `yes abcde` / `no abcde` from a user who may answer.
    fn typed(&self, id: &str, behavior: Behavior, by: String, remote: &Remote) -> String {
        let Some(request) = self.open_request(id) else {
            return match remote.requests.get(id) {
                None => format!("Unknown request {id}: it expired or was never asked here."),
                Some(HubRequest {
                    outcome: Some(outcome),
                    ..
                }) => format!("Request {id} is already answered ({outcome})."),
                // No secret proves a typed answer, and the hub takes none without one.
                Some(r) => format!(
                    "Not taken: {} asked {id} on the machine {}, where a typed answer cannot reach. Press Allow or Deny on its prompt.",
                    r.session, r.machine
                ),
            };
        };
        if let Some(outcome) = &request.outcome {
            return format!("Request {id} is already answered ({outcome}).");
        }
        if !crate::heartbeat::pid_running(request.pid) {
            return format!("The session that asked {id} has ended; nothing was answered.");
        }
        // This process asked it: it holds the secret, so the answer is proven like a press.
        let verdict = match (self.own_secret(id, behavior), behavior) {
            (Some(secret), _) => Verdict::Press { secret, by },
            (None, Behavior::Deny) => Verdict::TypedDeny { by },
            (None, Behavior::Allow) => {
                return format!(
                    "Not taken: a typed yes counts only in the session that reads Telegram, and {} asked this one. Press Allow on its prompt.",
                    request.session
                );
            }
        };
        match self.write_verdict(id, &verdict) {
            Ok(()) => match behavior {
                Behavior::Allow => format!("Allowed {id}."),
                Behavior::Deny => format!("Denied {id}."),
            },
            Err(err) => format!("Not taken: the mailbox could not be written ({err})."),
        }
    }

    /// [`Inner::deliver`] exactly once per update: `delivered.log` says when an update was
    /// taken and which message it became, so an update read again after a crash (before the
    /// offset was saved) is not written twice. `taking` is when an earlier try began, if one
    /// did: then a message from it that reached the inbox counts as the delivery.
    fn deliver_once(
        &self,
        update_id: i64,
        taking: Option<&str>,
        to: &str,
        subject: &str,
        body: &str,
        reply_to: Option<&str>,
    ) -> Option<String> {
        if let Some(at) = taking.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
            let since = at.with_timezone(&Local) - chrono::TimeDelta::seconds(2);
            let earlier = self.mailbox.recent(since).ok().and_then(|recent| {
                recent.into_iter().find(|m| {
                    m.front.from == TELEGRAM && m.front.to == to && m.body.trim() == body.trim()
                })
            });
            if let Some(m) = earlier {
                tracing::info!(update_id, msg_id = %m.id, "a Telegram update delivered before a crash; not written again");
                let _ = self
                    .store
                    .note_delivery(&format!("{update_id} delivered {}", m.id));
                return None;
            }
        }
        if let Err(err) = self
            .store
            .note_delivery(&format!("{update_id} taking {}", Local::now().to_rfc3339()))
        {
            tracing::warn!(update_id, err = %format!("{err:#}"), "noting a delivery");
        }
        let (notice, id) = self.deliver(update_id, to, subject, body, reply_to);
        if let Some(id) = id
            && let Err(err) = self
                .store
                .note_delivery(&format!("{update_id} delivered {id}"))
        {
            tracing::warn!(update_id, err = %format!("{err:#}"), "noting a delivery");
        }
        notice
    }

    /// Writes what the person wrote into the inbox, from `telegram`; returns a notice for
    /// the person when the mailbox cannot be written. This is the only code that writes
    /// `from: telegram`: no session can hold the name, and the library's send path refuses
    /// it. [`Mailbox::write`](crate::mailbox::Mailbox::write) seals the file, so readers see
    /// the sender as verified ([`crate::seal`]).
    fn deliver(
        &self,
        update_id: i64,
        to: &str,
        subject: &str,
        body: &str,
        reply_to: Option<&str>,
    ) -> (Option<String>, Option<String>) {
        // A reply joins the thread of the escalation it answers.
        let thread = reply_to.map(|id| {
            self.mailbox
                .get(id)
                .or_else(|| self.mailbox.get_archived(id))
                .and_then(|m| m.front.thread.clone())
                .unwrap_or_else(|| id.to_owned())
        });
        let draft = Draft {
            from: TELEGRAM,
            to,
            kind: if to == BROADCAST { "broadcast" } else { "ipc" },
            subject,
            priority: "normal",
            reply_to,
            thread: thread.as_deref(),
            body,
            ..Draft::default()
        };
        match self.mailbox.write(&draft, Local::now()) {
            Ok(msg_id) => {
                tracing::info!(update_id, %msg_id, %to, "a message from Telegram was delivered");
                (None, Some(msg_id))
            }
            Err(err) => {
                tracing::warn!(update_id, err = %format!("{err:#}"), "writing a message from Telegram");
                (
                    Some(format!(
                        "Not delivered: the mailbox could not be written ({err})."
                    )),
                    None,
                )
            }
        }
    }
}
