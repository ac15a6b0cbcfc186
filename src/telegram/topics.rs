//! One forum topic per session, when the chat is a forum supergroup: created with
//! `createForumTopic` on first use and remembered in `<data>/telegram/topics.json` (0600),
//! whose lock (`topics.lock`) makes sure two servers never create two topics for one session.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::service::{Inner, Telegram, locked};
use super::store::private;
use crate::fsx::write_atomic;

/// `topics.json`: `"<chat>/<session>"` → the topic's `message_thread_id`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TopicsFile {
    #[serde(default)]
    topics: BTreeMap<String, i64>,
}

#[derive(Deserialize)]
struct ChatInfo {
    #[serde(default)]
    is_forum: bool,
}

#[derive(Deserialize)]
struct ForumTopic {
    message_thread_id: i64,
}

fn key(chat: i64, session: &str) -> String {
    format!("{chat}/{session}")
}

impl Inner {
    fn topics(&self) -> BTreeMap<String, i64> {
        let path = self.mailbox.root().join("telegram").join("topics.json");
        fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<TopicsFile>(&t).ok())
            .map(|f| f.topics)
            .unwrap_or_default()
    }

    fn save_topic(&self, chat: i64, session: &str, thread: i64) -> crate::Result<()> {
        let mut topics = self.topics();
        topics.insert(key(chat, session), thread);
        let path = self.mailbox.root().join("telegram").join("topics.json");
        let text = serde_json::to_string_pretty(&TopicsFile { topics }).expect("plain");
        write_atomic(&path, text.as_bytes())
    }

    /// The session whose topic `thread` is in `chat`.
    pub(super) fn session_of_topic(&self, chat: i64, thread: i64) -> Option<String> {
        let prefix = format!("{chat}/");
        self.topics().into_iter().find_map(|(k, t)| {
            (t == thread)
                .then(|| k.strip_prefix(&prefix).map(str::to_owned))
                .flatten()
        })
    }
}

/// The topics a chat has, by session, for `telegram status`.
pub fn topics_of(data_dir: &std::path::Path, chat: i64) -> Vec<(String, i64)> {
    let path = data_dir.join("telegram").join("topics.json");
    let prefix = format!("{chat}/");
    fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<TopicsFile>(&t).ok())
        .map(|f| {
            f.topics
                .into_iter()
                .filter_map(|(k, t)| Some((k.strip_prefix(&prefix)?.to_owned(), t)))
                .collect()
        })
        .unwrap_or_default()
}

impl Telegram {
    fn remember_topic(&self, chat: i64, session: &str, thread: i64) {
        if let Err(err) = self.inner.save_topic(chat, session, thread) {
            tracing::warn!(err = %format!("{err:#}"), "remembering a forum topic");
        }
    }

    /// Deletes a topic made in vain (best effort: an empty topic is all that would stay).
    async fn delete_topic(&self, chat: i64, thread: i64) {
        let params = json!({"chat_id": chat, "message_thread_id": thread});
        if let Err(err) = self
            .inner
            .api
            .call::<bool>("deleteForumTopic", &params, None)
            .await
        {
            tracing::debug!(%err, thread, "deleting a forum topic made twice");
        }
    }

    /// Learns from the hub the sessions of the forum topics that `updates` were written in
    /// and this machine does not know (another machine made them), so that a message in
    /// such a topic reaches its session (federation on).
    pub(super) async fn fetch_topics(&self, updates: &[Value]) {
        let Some(fed) = self.inner.federated.get() else {
            return;
        };
        for (chat, thread) in updates.iter().filter_map(topic_of) {
            if self.inner.session_of_topic(chat, thread).is_some() {
                continue;
            }
            if let Some(session) = fed.session_of_topic(chat, thread).await {
                self.remember_topic(chat, &session, thread);
            }
        }
    }

    /// True when `chat` is a forum supergroup (`getChat`), asked once per process.
    async fn is_forum(&self, chat: i64) -> bool {
        if let Some((c, forum)) = *locked(&self.inner.forum)
            && c == chat
        {
            return forum;
        }
        match self
            .inner
            .api
            .call::<ChatInfo>("getChat", &json!({"chat_id": chat}), None)
            .await
        {
            Ok(info) => {
                *locked(&self.inner.forum) = Some((chat, info.is_forum));
                info.is_forum
            }
            Err(err) => {
                // Refused: no chat info to be had (take it as no forum); else try next time.
                if matches!(err, super::api::ApiError::Refused(..)) {
                    *locked(&self.inner.forum) = Some((chat, false));
                }
                tracing::debug!(%err, "getChat failed; sending without a topic");
                false
            }
        }
    }

    /// The topic (`message_thread_id`) of `session`'s messages, created on first use; `None`
    /// outside a forum, or when the topic cannot be made (then the message goes to the
    /// chat's general topic).
    pub(super) async fn topic_for(&self, session: &str) -> Option<i64> {
        let chat = self.inner.chat()?;
        if !self.is_forum(chat).await {
            return None;
        }
        if let Some(t) = self.inner.topics().get(&key(chat, session)) {
            return Some(*t);
        }
        // Under the lock, look again, then create: one topic per session, whoever asks.
        let lock_path = self
            .inner
            .mailbox
            .root()
            .join("telegram")
            .join("topics.lock");
        let lock = tokio::task::spawn_blocking(move || -> io::Result<File> {
            let file = private()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            file.lock()?;
            Ok(file)
        })
        .await
        .ok()?
        .ok()?;
        if let Some(t) = self.inner.topics().get(&key(chat, session)) {
            return Some(*t);
        }
        // Across machines, one topic per session too: another machine may have made it.
        let fed = self.inner.federated.get();
        if let Some(fed) = fed
            && let Some(thread) = fed.topic(chat, session).await
        {
            self.remember_topic(chat, session, thread);
            return Some(thread);
        }
        let created = self
            .inner
            .api
            .call::<ForumTopic>(
                "createForumTopic",
                &json!({"chat_id": chat, "name": session}),
                None,
            )
            .await;
        let mut thread = match created {
            Ok(t) => t.message_thread_id,
            Err(err) => {
                tracing::warn!(%err, session, "creating a forum topic; sending to the general topic");
                return None;
            }
        };
        if let Some(fed) = fed
            && let Some(first) = fed.first_topic(chat, session, thread).await
            && first != thread
        {
            // Another machine made one at the same time and was first: theirs is used.
            self.delete_topic(chat, thread).await;
            thread = first;
        }
        self.remember_topic(chat, session, thread);
        drop(lock);
        tracing::info!(session, thread, "a forum topic for this session");
        Some(thread)
    }
}

/// The chat and topic of an update written in a forum topic.
fn topic_of(update: &Value) -> Option<(i64, i64)> {
    let message = update.get("message")?;
    if !message.get("is_topic_message")?.as_bool()? {
        return None;
    }
    let chat = message.get("chat")?.get("id")?.as_i64()?;
    Some((chat, message.get("message_thread_id")?.as_i64()?))
}
