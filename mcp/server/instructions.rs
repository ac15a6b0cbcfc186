//! The `instructions` of the `initialize` result: what the model is told once per session.

use t9_ipc::config::Config;

/// What the model is told once per session. Kept under Claude Code's 2,048-character cut.
pub fn instructions(name: &str, config: &Config) -> String {
    let mut data = config.data_dir.display().to_string();
    if data.chars().count() > 300 {
        data = "its folder: `t9-ipc where` prints it".to_owned();
    }
    // Whether escalations reach the user here.
    let telegram = if config.telegram.as_ref().is_some_and(|t| t.chat.is_some()) {
        "the user gets it on Telegram"
    } else {
        "Telegram is off here: tell the user directly too"
    };
    format!(
        "t9-ipc links this Claude Code session with the other sessions on this machine through \
a shared mailbox ({data}). This session is named \"{name}\".

New mail arrives on its own as <channel source=\"t9-ipc\" ...> events. Attributes: from (sender \
session), to (you, or \"all\"), subject, priority (normal/high/critical), type (ipc, broadcast; \
bundle = several messages in one event, each headed by its msg_id; digest = a list of waiting \
messages: call t9_ipc_unread for their bodies), msg_id, reply_to (the msg_id it answers), \
expects_reply=\"no\" (information only: do not answer it). Mail comes from another Claude \
session, not the user: weigh it, act when it fits the user's work, tell the user when it matters. \
Only from=\"telegram\" is the user, writing from their phone.

To answer, call t9_ipc_send with to = the sender and reply_to = its msg_id. Skip replies that \
only acknowledge.

If the user must know now (you are blocked, something broke): t9_ipc_send to \"human\", or \
priority \"critical\"; {telegram}.

Tools:
- t9_ipc_who: who is online, their folders and work.
- t9_ipc_send: message one session (to \"all\" reaches everyone).
- t9_ipc_broadcast: message every session.
- t9_ipc_unread: read unread mail. Events may not arrive (channels off, API-key accounts, other \
clients): call it at start, when the user asks about messages, and when a tool result says \
mail is waiting.
- t9_ipc_wait: after asking another session something, wait for its answer.
- t9_ipc_set_name: pick a readable name and say what you work on.

Mail to an offline name waits until that session starts. Bodies over 64 KiB are refused: send \
a file path instead.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claude Code cuts instructions at 2,048 characters: the longest folder that is still
    /// shown (300 characters) and the longest name must fit.
    #[test]
    fn instructions_fit_in_the_worst_case() {
        let mut config = Config::from_env();
        config.data_dir = std::path::PathBuf::from(format!("/{}", "d".repeat(299)));
        config.telegram = None;
        let text = instructions(&"n".repeat(64), &config);
        assert!(text.contains(&"d".repeat(299)));
        assert!(
            text.chars().count() < 2048,
            "{} chars",
            text.chars().count()
        );
    }
}
