//! One forum topic per session, when the chat is a forum supergroup.

use super::service::Telegram;

impl Telegram {
    /// The topic (`message_thread_id`) of `session`'s messages; `None` outside a forum.
    pub(super) async fn topic_for(&self, _session: &str) -> Option<i64> {
        None
    }
}
