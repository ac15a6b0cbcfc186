//! Telegram in the server: starts the forwarder, the reply poller and the start-up sweep when
//! `IPC_TG_TOKEN` is set, and the helpers the server's call sites use. Without Telegram every
//! function here does nothing (and costs nothing).

use std::path::Path;
use std::time::{Duration, SystemTime};

use t9_ipc::config::{Config, TelegramConfig};
use t9_ipc::message::HUMAN;
use t9_ipc::session::{Sent, Session};
use t9_ipc::telegram::{self, Telegram};
use t9_ipc::text::plural;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Telegram running in this server, and its tasks.
pub struct Running {
    telegram: Telegram,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts Telegram when it is configured: builds the client, then in the background forwards
/// escalations and, when elected, reads replies. The server sweeps the last 24 hours of the
/// inbox ([`rescan`]) once its file watcher runs. A set-up error is logged and Telegram stays off.
pub fn start(config: &Config, cancel: &CancellationToken) -> Option<Running> {
    start_with(config, config.telegram.as_ref()?, cancel)
}

/// [`start`] with Telegram configured. Apart, and never inlined: the tasks it spawns are
/// built on its stack frame (tens of KiB), which a server without Telegram then never touches.
#[inline(never)]
fn start_with(
    config: &Config,
    settings: &TelegramConfig,
    cancel: &CancellationToken,
) -> Option<Running> {
    let telegram = match Telegram::new(settings, &config.data_dir) {
        Ok(telegram) => telegram,
        Err(err) => {
            tracing::warn!(err = %format!("{err:#}"), "Telegram is off");
            return None;
        }
    };
    // Federation on: the hub decides which machine forwards and which one polls.
    if let Ok(Some(federation)) = &config.federation {
        telegram.federate(federation);
    }
    tracing::info!(
        chat = ?settings.chat,
        api = %settings.token.scrub(&settings.api_base),
        give_up_s = settings.give_up_after.as_secs_f64(),
        "Telegram on"
    );
    let forwarder = {
        let (t, cancel) = (telegram.clone(), cancel.child_token());
        tokio::spawn(async move { t.forward(cancel).await })
    };
    let replies = {
        let (t, cancel) = (telegram.clone(), cancel.child_token());
        tokio::spawn(async move { t.answer(cancel).await })
    };
    // With the archive: the bookkeeping of escalations done with goes too.
    let pruner = {
        let t = telegram.clone();
        let days = config.archive_after_days;
        tokio::task::spawn_blocking(move || {
            match t.prune(Duration::from_secs(days.saturating_mul(24 * 3600))) {
                Ok(Some((claims, lines))) => tracing::info!(
                    claims,
                    replies_lines = lines,
                    "pruned the Telegram bookkeeping"
                ),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(err = %format!("{err:#}"), "pruning the Telegram bookkeeping")
                }
            }
        })
    };
    // The start-up sweep runs once the server's file watcher is up (see `rescan`), so that
    // no file falls between the two.
    Some(Running {
        telegram,
        tasks: vec![forwarder, replies, pruner],
    })
}

impl Running {
    pub fn handle(&self) -> Telegram {
        self.telegram.clone()
    }

    /// Waits for the tasks after the cancellation token was cancelled.
    pub async fn stop(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        self.telegram.join_tracked().await;
    }
}

fn catch_up(telegram: &Telegram) {
    match telegram.catch_up() {
        Ok(0) => {}
        Ok(n) => tracing::info!(queued = n, "escalations queued for Telegram"),
        Err(err) => tracing::warn!(err = %format!("{err:#}"), "sweeping the inbox for escalations"),
    }
}

/// At a rescan of the inbox: offers the new files to Telegram, in the background.
pub fn rescan(telegram: Option<&Telegram>) {
    if let Some(t) = telegram {
        let t = t.clone();
        tokio::task::spawn_blocking(move || catch_up(&t));
    }
}

/// After a send that escalates (to `human`, or critical): offers the message just written.
/// Blocks briefly (reads one file): call it on a blocking thread.
pub fn offer_sent(telegram: Option<&Telegram>, escalates: bool, session: &Session, id: &str) {
    let Some(t) = telegram.filter(|t| escalates && t.forwards()) else {
        return;
    };
    match session.mailbox().get(id) {
        Some(msg) => {
            t.offer(&msg);
        }
        // The next rescan finds it.
        None => tracing::warn!(msg_id = %id, "reading a sent escalation back"),
    }
}

/// The send tool's answer: for `to: "human"` what happens to the escalation; for a
/// critical message, `plain` plus a note that the person hears of it too.
pub fn sent_text(
    sent: &Sent,
    critical: bool,
    telegram: Option<&Telegram>,
    plain: impl FnOnce(&Sent) -> String,
) -> String {
    let forwarding = telegram.is_some_and(Telegram::forwards);
    let id = &sent.id;
    if sent.to == HUMAN {
        return if forwarding {
            format!(
                "Escalated to the user as msg_id {id}. It is being sent to them on Telegram \
                 now. An answer arrives as a message from \"telegram\" with reply_to {id}; \
                 carry on meanwhile."
            )
        } else {
            format!(
                "Saved as msg_id {id} for the user, but Telegram is not set up for this \
                 session (IPC_TG_TOKEN, IPC_TG_CHAT), so nobody was notified. Tell the user \
                 directly."
            )
        };
    }
    let text = plain(sent);
    if critical && forwarding {
        format!("{text} Priority critical: the user is told on Telegram too.")
    } else {
        text
    }
}

/// A line for `t9_ipc_who` when forwards were given up in the last 24 hours.
pub fn who_note(data_dir: &Path) -> String {
    let since = SystemTime::now() - Duration::from_secs(24 * 3600);
    let failed = telegram::failures(data_dir, since);
    if failed.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = failed
        .iter()
        .take(3)
        .map(|f| format!("{} ({})", f.msg_id, f.error))
        .collect();
    format!(
        "\nTelegram: {} could not be delivered in the last 24 h; the user has \
         not seen {}: {}{}. Records: {}",
        plural(failed.len(), "escalation"),
        if failed.len() == 1 { "it" } else { "them" },
        shown.join("; "),
        if failed.len() > 3 { "; …" } else { "" },
        data_dir.join("telegram").join("failed").display(),
    )
}

/// The body of a send with `files`: only to `human`, each a file of at most 50 MB (relative
/// paths are taken from the session's folder); their paths are appended, and the forwarder
/// sends them after the text. Refused with a text for the model otherwise.
pub fn with_files(body: String, to: &str, files: &[String], cwd: &Path) -> Result<String, String> {
    if files.is_empty() {
        return Ok(body);
    }
    if !t9_ipc::message::is_human(to.trim()) {
        return Err(
            "Refused: files go only to \"human\" (the user on Telegram); to another \
                    session, put the paths in the body."
                .to_owned(),
        );
    }
    let section = telegram::files_section(files, cwd).map_err(|e| {
        format!("Refused: {e}. Send existing files of at most 50 MB each; nothing was sent.")
    })?;
    Ok(body + &section)
}

/// The `attachment` meta of a channel event: the path of the file a message from the phone
/// carries, as the poller names it on the body's last line
/// (`[photo from the phone, saved at <path>]`, under `telegram/files/`).
pub fn attachment_meta(msg: &t9_ipc::mailbox::Message, meta: &mut serde_json::Value) {
    if msg.front.from != t9_ipc::message::TELEGRAM {
        return;
    }
    let Some(last) = msg.body.trim_end().lines().last() else {
        return;
    };
    let path = last
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .and_then(|l| l.split_once(" from the phone, saved at "))
        .map(|(_, path)| path)
        .filter(|path| path.contains("/telegram/files/"));
    if let Some(path) = path {
        meta["attachment"] = serde_json::json!(path);
    }
}

/// True when escalations reach the user: a token, and a chat (`IPC_TG_CHAT`, or a pairing).
pub fn forwards(config: &Config) -> bool {
    let Some(settings) = config.telegram.as_ref() else {
        return false;
    };
    settings.chat.is_some()
        || telegram::Access::open(&config.data_dir).is_ok_and(|a| !a.paired().is_empty())
}
