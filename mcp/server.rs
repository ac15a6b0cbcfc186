//! The MCP server on stdio: the tools, the channel capability, and the push loop. The only
//! code that knows rmcp's server side.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::send::PriorityArg;
use crate::cli::style::ago;
use anyhow::Context as _;
use chrono::{DateTime, Local, TimeDelta};
use rmcp::handler::server::{tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{
    CallToolResult, ContentBlock, CustomNotification, DiscoverRequestMethod, DiscoverResult,
    ExperimentalCapabilities, Implementation, JsonObject, ServerCapabilities, ServerConfig,
    ServerNotification,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData as McpError, Peer, RoleServer, ServerHandler, ServiceExt};
use rmcp::{tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use t9_ipc::config::Config;
use t9_ipc::mailbox::{ArchivePlan, Message};
use t9_ipc::session::{Outgoing, Peer as LivePeer, Session, WaitFor};
use t9_ipc::telegram::Telegram;
use t9_ipc::watch::{self, Changed};
use t9_ipc::{Error, channels};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{Notify, watch as peer_watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::telegram;

/// The JSON-RPC method of a channel event.
pub const CHANNEL_METHOD: &str = "notifications/claude/channel";
/// Claude Code drops events that arrive too soon after `notifications/initialized`.
const PUSH_GRACE: Duration = Duration::from_millis(1000);
/// How often this session's heartbeat is refreshed (and the inbox rescanned, to catch an
/// event the watcher missed).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(60);
/// Unread messages returned by one `t9_ipc_unread` call when no limit is given.
const DEFAULT_UNREAD_LIMIT: u32 = 20;
/// A server archives finished mail at start when no server did for this long.
const ARCHIVE_EVERY: Duration = Duration::from_secs(3600);
/// `t9_ipc_wait`'s default and longest wait, in seconds.
const DEFAULT_WAIT_S: u64 = 60;
const MAX_WAIT_S: u64 = 600;

/// Runs the server until stdin closes or a signal arrives; then takes this session's
/// heartbeat entry away.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    // Installed first, so a signal at any later point ends the session in order.
    let cancel = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        cancel.clone(),
    ));
    let session = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Session::start(&config, Local::now())).await?
    }
    .with_context(|| format!("starting a session on {}", config.data_dir.display()))?;
    let session = Arc::new(session);
    tracing::info!(session = %session.name(), pid = session.pid(), data_dir = %config.data_dir.display(), "started");

    // Keep the inbox small: finished mail older than the set age moves to archive/.
    let archiver = {
        let s = session.clone();
        let plan = ArchivePlan {
            older_than: i64::try_from(config.archive_after_days)
                .ok()
                .and_then(TimeDelta::try_days)
                .unwrap_or(TimeDelta::MAX),
            dry_run: false,
        };
        tokio::task::spawn_blocking(move || {
            // Once an hour per mailbox is enough, however many sessions start.
            if !s.mailbox().archive_due(ARCHIVE_EVERY) {
                return;
            }
            match s.mailbox().archive(&plan, Local::now()) {
                Ok(moved) if !moved.is_empty() => {
                    tracing::info!(count = moved.len(), "archived finished mail")
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(err = %format!("{err:#}"), "archiving finished mail"),
            }
        })
    };
    // telegram: the forwarder, the reply poller and the start-up sweep; None without
    // IPC_TG_TOKEN.
    let telegram = telegram::start(&config, &cancel);
    let tg = telegram.as_ref().map(telegram::Running::handle);
    let (peer_tx, peer_rx) = peer_watch::channel(None);
    let mail = Arc::new(Notify::new());
    let pusher = tokio::spawn(
        Pusher {
            session: session.clone(),
            quiet: config.push_quiet,
            rate: config.push_rate,
            rescan_on_tick: false,
            last_push: None,
            recent: HashMap::new(),
            flush_at: None,
            mail: mail.clone(),
            dirty: true,
            tg: tg.clone(),
        }
        .run(peer_rx, cancel.child_token()),
    );

    let server = T9 {
        instructions: instructions(&session.name(), &config),
        session: session.clone(),
        config: Arc::new(config.clone()),
        peer_tx,
        mail,
        ending: cancel.clone(),
        telegram: tg,
        tool_router: T9::tool_router(),
    };
    let running = server
        .serve_with_ct(rmcp::transport::stdio(), cancel.child_token())
        .await;
    match running {
        Ok(running) => {
            tokio::select! {
                quit = running.waiting() => {
                    if let Err(err) = quit {
                        tracing::warn!(%err, "the MCP service ended with an error");
                    }
                }
                () = cancel.cancelled() => {}
            }
        }
        // A client that closes stdin (or a signal) before `initialize` ends it the same way.
        Err(err) => tracing::info!(%err, "no MCP session was established"),
    }
    cancel.cancel();
    signals.abort();
    let _ = pusher.await;
    let _ = archiver.await;
    if let Some(telegram) = telegram {
        telegram.stop().await;
    }
    let name = session.name();
    tokio::task::spawn_blocking(move || session.end(Local::now()))
        .await?
        .context("removing this session's heartbeat")?;
    tracing::info!(session = %name, "ended");
    Ok(())
}

/// Cancels the session on SIGTERM or SIGINT.
async fn cancel_on_signal(mut term: Signal, mut int: Signal, cancel: CancellationToken) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; ending"),
        _ = int.recv() => tracing::info!("SIGINT received; ending"),
    }
    cancel.cancel();
}

/// Keeps the index of this session's mail and its heartbeat current, and pushes new mail as
/// channel events once the client has sent `notifications/initialized` and the grace period
/// has passed.
struct Pusher {
    session: Arc<Session>,
    /// After a push, new mail waits this long and goes out as one event.
    quiet: Duration,
    /// Messages of one sender pushed per minute, at most.
    rate: Option<u32>,
    /// No file watcher could be started: rescan at each heartbeat instead.
    rescan_on_tick: bool,
    last_push: Option<Instant>,
    /// When each sender's recent messages were pushed (the last minute).
    recent: HashMap<String, VecDeque<Instant>>,
    /// A push held back by the quiet window or the rate limit is due then.
    flush_at: Option<Instant>,
    /// Woken after every look at the inbox, for `t9_ipc_wait`.
    mail: Arc<Notify>,
    /// This session's unread mail changed since the last look for pushes.
    dirty: bool,
    /// Telegram, when configured: offered every new message file, whoever wrote it.
    tg: Option<Telegram>,
}

/// Up to this many messages (and this many body bytes) go out whole in one event; more
/// become a digest that names them and asks the model to call `t9_ipc_unread`.
const BUNDLE_MAX: usize = 5;
const BUNDLE_MAX_BYTES: usize = 16 * 1024;
/// A digest names at most this many messages.
const DIGEST_MAX: usize = 20;
const RATE_WINDOW: Duration = Duration::from_secs(60);

impl Pusher {
    async fn run(
        mut self,
        mut peer_rx: peer_watch::Receiver<Option<Peer<RoleServer>>>,
        cancel: CancellationToken,
    ) {
        // Started here, not before `initialize`: setting up inotify takes milliseconds that
        // the client would otherwise wait for. The index below is built after it, so no file
        // falls between the two.
        let inbox = self.session.mailbox().inbox().to_path_buf();
        let watching = tokio::task::spawn_blocking(move || watch::watch(&inbox)).await;
        let (_watcher, mut changes) = match watching {
            Ok(Ok((watcher, changes))) => (Some(watcher), changes),
            Ok(Err(err)) => {
                // E.g. the inotify limits are reached. Pull still works, and the heartbeat's
                // rescan still pushes, only later: degrade rather than refuse to start.
                tracing::warn!(err = %format!("{err:#}"), "no file watcher; the inbox is rescanned every 60 s instead");
                self.rescan_on_tick = true;
                (None, watch::Changes::none())
            }
            Err(err) => {
                tracing::warn!(%err, "no file watcher; the inbox is rescanned every 60 s instead");
                self.rescan_on_tick = true;
                (None, watch::Changes::none())
            }
        };
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the entry was just written
        // Index the inbox now, so tools and waits have it before any event, and let Telegram
        // sweep the recent files for escalations that no server forwarded yet.
        self.sync(Changed {
            rescan: true,
            ..Changed::default()
        })
        .await;
        let mut peer: Option<Peer<RoleServer>> = None;
        // The client's peer, until the grace period after `initialized` has passed.
        let mut waiting: Option<(Peer<RoleServer>, Instant)> = None;
        let mut server_gone = false;
        loop {
            let due = self.flush_at;
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = peer_rx.changed(), if waiting.is_none() && peer.is_none() && !server_gone => {
                    if changed.is_err() {
                        // The server ended before `initialized`; the session is ending too.
                        server_gone = true;
                        continue;
                    }
                    // Pushes begin after the grace period; file events are indexed meanwhile.
                    waiting = peer_rx
                        .borrow_and_update()
                        .clone()
                        .map(|p| (p, Instant::now() + PUSH_GRACE));
                }
                () = sleep_until_due(waiting.as_ref().map(|(_, at)| *at)) => {
                    let Some((p, _)) = waiting.take() else { continue };
                    tracing::debug!("channel push enabled");
                    // Catch-up: what waited for this name while it was away.
                    self.push(&p).await;
                    peer = Some(p);
                }
                Some(()) = changes.changed() => {
                    self.sync(changes.take()).await;
                    // Only when this session's mail changed: looking costs as much as its
                    // unread mail, and most files in a busy inbox are someone else's.
                    if let Some(p) = peer.as_ref().filter(|_| self.dirty) {
                        self.push(p).await;
                    }
                }
                () = sleep_until_due(due) => {
                    self.flush_at = None;
                    if let Some(p) = &peer {
                        self.push(p).await;
                    }
                }
                _ = tick.tick() => {
                    let s = self.session.clone();
                    match tokio::task::spawn_blocking(move || s.refresh(Local::now())).await {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => tracing::warn!(err = %format!("{err:#}"), "refreshing the heartbeat"),
                        Err(err) => tracing::warn!(%err, "refreshing the heartbeat"),
                    }
                    if self.rescan_on_tick {
                        self.sync(Changed { rescan: true, ..Changed::default() }).await;
                        if let Some(p) = &peer {
                            self.push(p).await;
                        }
                    } else {
                        telegram::rescan(self.tg.as_ref()); // telegram: what the watcher missed
                    }
                }
            }
        }
    }

    /// Updates the index from what changed, then wakes the waits.
    async fn sync(&mut self, changed: Changed) {
        if changed.rescan {
            telegram::rescan(self.tg.as_ref()); // telegram: a whole look at recent files
        }
        self.index(changed).await;
    }

    async fn index(&mut self, changed: Changed) {
        let s = self.session.clone();
        let everyone = self.tg.is_some();
        match tokio::task::spawn_blocking(move || s.sync(changed, everyone, Local::now())).await {
            Ok(Ok(synced)) => {
                if let Some(tg) = &self.tg {
                    for msg in &synced.arrived {
                        tg.offer(msg); // telegram: every new file, whoever wrote it
                    }
                }
                self.dirty |= synced.mine_changed;
            }
            Ok(Err(err)) => tracing::warn!(err = %format!("{err:#}"), "reading the inbox"),
            Err(err) => tracing::warn!(%err, "reading the inbox"),
        }
        self.mail.notify_waiters();
    }

    /// Pushes what is pending, unless the quiet window or the rate limit says later.
    async fn push(&mut self, peer: &Peer<RoleServer>) {
        self.dirty = false;
        let s = self.session.clone();
        let pending =
            match tokio::task::spawn_blocking(move || s.pending_pushes(Local::now())).await {
                Ok(Ok(pending)) => pending,
                Ok(Err(err)) => {
                    tracing::warn!(err = %format!("{err:#}"), "reading the inbox");
                    return;
                }
                Err(err) => {
                    tracing::warn!(%err, "reading the inbox");
                    return;
                }
            };
        if pending.is_empty() {
            return;
        }
        let now = Instant::now();
        if let Some(last) = self.last_push
            && now < last + self.quiet
        {
            self.flush_at = Some(last + self.quiet);
            return;
        }
        let (ready, held) = self.admit(pending, now);
        if ready.is_empty() {
            // Only held mail: no event. It waits unread (reminders name it) and goes out when
            // the sender's minute frees.
            let next = held.iter().filter_map(|(_, at)| *at).min();
            self.flush_at = next.or(self.flush_at);
            return;
        }
        let held: Vec<Arc<Message>> = held.into_iter().map(|(m, _)| m).collect();
        let me = self.session.name();
        let bodies: usize = ready.iter().map(|m| m.body.len()).sum();
        let whole = ready.len() <= BUNDLE_MAX && bodies <= BUNDLE_MAX_BYTES;
        let (params, pushed, listed) = if whole {
            // Held mail is named in this event and then waits for t9_ipc_unread.
            (event_params(&ready, &held, &me), ready, held)
        } else {
            let all: Vec<_> = ready.into_iter().chain(held).collect();
            (digest_params(&all, &me), Vec::new(), all)
        };
        let ids =
            |msgs: &[Arc<Message>]| -> Vec<String> { msgs.iter().map(|m| m.id.clone()).collect() };
        let (pushed_ids, listed_ids) = (ids(&pushed), ids(&listed));
        self.session.pushing(&pushed_ids);
        let event = CustomNotification::new(CHANNEL_METHOD, Some(params));
        match peer
            .send_notification(ServerNotification::CustomNotification(event))
            .await
        {
            Ok(()) => {
                // Recorded after the event left: a crash in between pushes it again at the
                // next start (at least once), never loses it.
                let s = self.session.clone();
                let recorded = tokio::task::spawn_blocking(move || {
                    s.mark_pushed(&pushed_ids)?;
                    s.mark_listed(&listed_ids)
                })
                .await;
                if let Ok(Err(err)) = recorded {
                    tracing::warn!(err = %format!("{err:#}"), "recording pushed messages");
                }
                for msg in &listed {
                    tracing::info!(msg_id = %msg.id, from = %msg.front.from, "named in an event");
                }
                for msg in &pushed {
                    tracing::info!(msg_id = %msg.id, from = %msg.front.from, "pushed");
                    if let Some(rate) = self.rate {
                        let times = self.recent.entry(msg.front.from.clone()).or_default();
                        times.push_back(now);
                        while times.len() > rate as usize {
                            times.pop_front();
                        }
                    }
                }
                self.last_push = Some(now);
            }
            Err(err) => {
                self.session.push_failed(&pushed_ids);
                tracing::warn!(%err, "push failed; the messages stay unread");
            }
        }
    }

    /// Splits pending mail into what may go now and what the per-sender rate limit holds
    /// back (with the time it may go).
    fn admit(
        &mut self,
        pending: Vec<Arc<Message>>,
        now: Instant,
    ) -> (Vec<Arc<Message>>, Vec<Held>) {
        let Some(rate) = self.rate else {
            return (pending, Vec::new());
        };
        let mut ready = Vec::new();
        let mut held = Vec::new();
        let mut taken: HashMap<&str, usize> = HashMap::new();
        for times in self.recent.values_mut() {
            while times.front().is_some_and(|t| now >= *t + RATE_WINDOW) {
                times.pop_front();
            }
        }
        self.recent.retain(|_, t| !t.is_empty());
        for msg in &pending {
            let from = msg.front.from.as_str();
            let recent = self.recent.get(from);
            let used = recent.map_or(0, VecDeque::len) + taken.get(from).copied().unwrap_or(0);
            if used < rate as usize {
                *taken.entry(from).or_default() += 1;
                ready.push(msg.clone());
            } else {
                let free_at = recent.and_then(|t| t.front()).map(|t| *t + RATE_WINDOW);
                held.push((msg.clone(), free_at));
            }
        }
        (ready, held)
    }
}

/// A message the rate limit holds back, with the time its sender's minute frees.
type Held = (Arc<Message>, Option<Instant>);

async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One event carrying whole messages: one message as it is, several as a bundle.
fn event_params(msgs: &[Arc<Message>], held: &[Arc<Message>], me: &str) -> serde_json::Value {
    let mut params = if let [msg] = msgs {
        channel_params(msg)
    } else {
        let mut content = String::new();
        for msg in msgs {
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
            content.push_str(if msg.body.trim().is_empty() {
                EMPTY_BODY
            } else {
                &msg.body
            });
            content.push_str("\n\n");
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

/// Tells the model that some senders' mail waits because of the rate limit.
fn append_held(params: &mut serde_json::Value, held: &[Arc<Message>]) {
    let mut senders: Vec<&str> = held.iter().map(|m| m.front.from.as_str()).collect();
    senders.dedup();
    let note = format!(
        "\n\n({} more from {} wait unread (too many at once): call t9_ipc_unread to read them.)",
        held.len(),
        senders.join(", ")
    );
    if let Some(serde_json::Value::String(content)) = params.get_mut("content") {
        content.push_str(&note);
    }
}

/// Meta of an event that carries several messages.
fn group_meta(msgs: &[Arc<Message>], me: &str, kind: &str, subject: String) -> serde_json::Value {
    let mut from: Vec<&str> = Vec::new();
    for m in msgs {
        if !from.contains(&m.front.from.as_str()) {
            from.push(&m.front.from);
        }
    }
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

const EMPTY_BODY: &str = "(no body; the subject is the whole message)";

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
    telegram::attachment_meta(msg, &mut meta); // telegram: a file from the phone
    let content = if msg.body.trim().is_empty() {
        EMPTY_BODY.to_owned()
    } else {
        msg.body.clone()
    };
    json!({ "content": content, "meta": meta })
}

/// What the model is told once per session. Kept under Claude Code's 2,048-character cut.
pub fn instructions(name: &str, config: &Config) -> String {
    let mut data = config.data_dir.display().to_string();
    if data.chars().count() > 300 {
        data = "its folder: `t9-ipc where` prints it".to_owned();
    }
    // telegram: whether escalations reach the user here.
    let telegram = if telegram::forwards(config) {
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

#[derive(Debug, Deserialize, JsonSchema)]
struct SendArgs {
    /// The recipient's session name, as t9_ipc_who lists it; "all" sends to every session;
    /// "human" escalates to the user.
    to: String,
    /// One line, at most 200 characters.
    subject: String,
    /// The message in markdown, at most 64 KiB. For more, write a file and send its path.
    #[serde(default)]
    body: String,
    /// normal (default), high or critical (critical also tells the user on Telegram).
    #[serde(default)]
    priority: PriorityArg,
    /// When answering a message: its msg_id, exactly as given.
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(flatten)]
    delivery: DeliveryArgs,
    /// The msg_id of an earlier message of yours to the same recipient that this one
    /// replaces: if it was not shown yet, it never will be.
    #[serde(default)]
    supersedes: Option<String>,
    /// To "human" only: paths of files (each at most 50 MB) sent to the user on Telegram.
    #[serde(default)]
    files: Vec<String>,
}

/// Options every send takes.
#[derive(Debug, Default, Deserialize, JsonSchema)]
struct DeliveryArgs {
    /// Seconds the message matters (1 to 2592000). After that it is not shown to anyone
    /// and is archived. Leave out for messages that never expire.
    #[serde(default)]
    ttl_s: Option<u64>,
    /// true for information only: the recipient is told not to answer.
    #[serde(default)]
    info_only: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct WaitArgs {
    /// Seconds to wait, 1 to 600 (default 60).
    #[serde(default)]
    timeout_s: Option<u64>,
    /// Only a message from this session name.
    #[serde(default)]
    from: Option<String>,
    /// Only a reply to this msg_id (the one your send returned).
    #[serde(default)]
    reply_to: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct BroadcastArgs {
    /// One line, at most 200 characters.
    subject: String,
    /// The message in markdown, at most 64 KiB. For more, write a file and send its path.
    #[serde(default)]
    body: String,
    /// normal (default), high or critical (critical also tells the user on Telegram).
    #[serde(default)]
    priority: PriorityArg,
    #[serde(flatten)]
    delivery: DeliveryArgs,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct UnreadArgs {
    /// Mark the returned messages read (default true). false only peeks.
    #[serde(default)]
    mark_read: Option<bool>,
    /// At most this many messages, oldest first (default 20).
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct SetNameArgs {
    /// The new name: 3 to 64 letters, digits, '_' or '-'. Others send to it.
    name: String,
    /// One line telling the others what this session works on.
    #[serde(default)]
    working_on: Option<String>,
}

#[derive(Clone)]
pub struct T9 {
    session: Arc<Session>,
    config: Arc<Config>,
    peer_tx: peer_watch::Sender<Option<Peer<RoleServer>>>,
    /// Woken after every look at the inbox.
    mail: Arc<Notify>,
    /// Cancelled when the session ends.
    ending: CancellationToken,
    /// Present when Telegram is configured.
    telegram: Option<Telegram>,
    instructions: String,
    tool_router: ToolRouter<T9>,
}

fn ok(text: String) -> Result<CallToolResult, McpError> {
    Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
}

fn refused(text: String) -> Result<CallToolResult, McpError> {
    Ok(CallToolResult::error(vec![ContentBlock::text(text)]))
}

impl T9 {
    /// Runs blocking session work off the async threads; any failure becomes an error result
    /// the model can read.
    async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Session) -> Result<R, Error> + Send + 'static,
        done: impl FnOnce(R) -> String,
    ) -> Result<CallToolResult, McpError> {
        let session = self.session.clone();
        match tokio::task::spawn_blocking(move || work(&session)).await {
            Ok(Ok(r)) => ok(done(r)),
            Ok(Err(Error::Io { op, path, source })) => {
                tracing::warn!(%op, path = %path.display(), %source, "tool failed");
                refused(format!(
                    "Failed: {op} {}: {source}. Nothing was changed; tell the user.",
                    path.display()
                ))
            }
            Ok(Err(err)) => refused(format!("Refused: {err}.")),
            Err(err) => refused(format!("Failed: internal error ({err}). Try again.")),
        }
    }
}

/// How long a tool waits for the push loop to take in a file event already under way.
const CATCH_UP: Duration = Duration::from_millis(50);

impl T9 {
    /// Makes sure the index has every file now in the inbox: a file renamed into place a
    /// moment ago has its event under way; wait for it briefly, then rescan.
    async fn catch_up(&self) {
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let woken = self.mail.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.session.is_current() {
                return;
            }
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let s = self.session.clone();
        let rescan = Changed {
            rescan: true,
            ..Changed::default()
        };
        if let Ok(Err(err)) =
            tokio::task::spawn_blocking(move || s.sync(rescan, false, Local::now())).await
        {
            tracing::warn!(err = %format!("{err:#}"), "reading the inbox");
        }
    }

    /// Adds one closing line to a tool result when unread mail the model has not seen is
    /// waiting, so that it is noticed at the next tool call even where channel events do
    /// not arrive.
    async fn remind(
        &self,
        result: Result<CallToolResult, McpError>,
    ) -> Result<CallToolResult, McpError> {
        // The index as the file events keep it: a message that landed this very millisecond
        // is named at the next call (waiting here would slow every send under load).
        let s = self.session.clone();
        let line = match tokio::task::spawn_blocking(move || s.unseen(Local::now())).await {
            Ok(Ok((0, _))) => return result,
            Ok(Ok((n, senders))) => format!(
                "{n} unread message{} (from {}): call t9_ipc_unread.",
                if n == 1 { "" } else { "s" },
                senders.join(", ")
            ),
            _ => return result,
        };
        result.map(|mut r| {
            r.content.push(ContentBlock::text(line));
            r
        })
    }

    /// Sends one message (to `all` for a broadcast) and describes the result.
    async fn deliver(&self, args: SendArgs) -> Result<CallToolResult, McpError> {
        let SendArgs {
            to,
            subject,
            body,
            priority,
            reply_to,
            delivery,
            supersedes,
            files,
        } = args;
        let body = match telegram::with_files(body, &to, &files, &self.config.cwd) {
            Ok(body) => body,
            Err(text) => return refused(text),
        };
        // telegram: a critical message or one to the user escalates.
        let critical = matches!(priority, PriorityArg::Critical);
        let escalates = critical || t9_ipc::message::is_human(to.trim());
        let (tg, tg_text) = (self.telegram.clone(), self.telegram.clone());
        let result = self
            .blocking(
                move |s| {
                    let ttl = delivery.ttl_s.map(|secs| {
                        i64::try_from(secs)
                            .ok()
                            .and_then(TimeDelta::try_seconds)
                            .unwrap_or(TimeDelta::MAX)
                    });
                    let out = Outgoing {
                        to: &to,
                        subject: &subject,
                        body: &body,
                        priority: priority.into(),
                        reply_to: reply_to.as_deref(),
                        supersedes: supersedes.as_deref(),
                        ttl,
                        info_only: delivery.info_only.unwrap_or(false),
                    };
                    let sent = s.send(&out, Local::now())?;
                    telegram::offer_sent(tg.as_ref(), escalates, s, &sent.id); // telegram:
                    Ok(sent)
                },
                move |sent| telegram::sent_text(&sent, critical, tg_text.as_ref(), format_sent),
            )
            .await;
        self.remind(result).await
    }
}

#[tool_router]
impl T9 {
    #[tool(
        name = "t9_ipc_who",
        description = "List the live Claude Code sessions on this machine: name, pid, working \
folder, last seen, what each works on. Marks this session with \"(you)\". Use the names as `to` \
in t9_ipc_send."
    )]
    async fn who(&self) -> Result<CallToolResult, McpError> {
        let result = self
            .blocking(
                // telegram: forwards given up in the last day are shown too.
                |s| {
                    Ok((
                        s.who(Local::now()),
                        s.name(),
                        telegram::who_note(s.mailbox().root()),
                    ))
                },
                |(peers, me, note)| format_who(&peers, &me, Local::now()) + &note,
            )
            .await;
        self.remind(result).await
    }

    #[tool(
        name = "t9_ipc_send",
        description = "Send a message to one session by name (t9_ipc_who lists them), or to \
\"all\". It is saved in the shared inbox at once; a live recipient sees it as a channel event, \
an offline one when it next starts. To answer a message pass its msg_id as reply_to. To reach \
the user (on Telegram, when set up), send to \"human\"; priority \"critical\" tells the user \
too. Use both only when the user must know now."
    )]
    async fn send(
        &self,
        Parameters(args): Parameters<SendArgs>,
    ) -> Result<CallToolResult, McpError> {
        self.deliver(args).await
    }

    #[tool(
        name = "t9_ipc_broadcast",
        description = "Send a message to every session (to: \"all\"). Use it for news that \
concerns everyone; for one session use t9_ipc_send."
    )]
    async fn broadcast(
        &self,
        Parameters(args): Parameters<BroadcastArgs>,
    ) -> Result<CallToolResult, McpError> {
        let BroadcastArgs {
            subject,
            body,
            priority,
            delivery,
        } = args;
        self.deliver(SendArgs {
            to: t9_ipc::message::BROADCAST.to_owned(),
            subject,
            body,
            priority,
            reply_to: None,
            delivery,
            supersedes: None,
            files: Vec::new(),
        })
        .await
    }

    #[tool(
        name = "t9_ipc_unread",
        description = "Read this session's unread messages (direct and broadcast), oldest \
first, with their bodies, and mark them read. Works whether or not channel events arrive: \
call it when starting, when the user asks about messages, or when events may be off."
    )]
    async fn unread(
        &self,
        Parameters(args): Parameters<UnreadArgs>,
    ) -> Result<CallToolResult, McpError> {
        let mark_read = args.mark_read.unwrap_or(true);
        let limit = match args.limit {
            Some(0) => {
                return refused(
                    "Refused: limit must be at least 1 (or left out for 20).".to_owned(),
                );
            }
            Some(n) => n,
            None => DEFAULT_UNREAD_LIMIT,
        } as usize;
        self.catch_up().await;
        self.blocking(
            move |s| s.unread(limit, mark_read, Local::now()),
            move |page| format_unread(&page, mark_read),
        )
        .await
    }

    #[tool(
        name = "t9_ipc_set_name",
        description = "Give this session a readable name others send to (3-64 letters, digits, \
'_' or '-'), and optionally a one-line status of what it works on. A name held by another live \
session is refused. Mail sent to the old name stays with the old name."
    )]
    async fn set_name(
        &self,
        Parameters(args): Parameters<SetNameArgs>,
    ) -> Result<CallToolResult, McpError> {
        let name = args.name.trim().to_owned();
        let shown = name.clone();
        let result = self.blocking(
            move |s| s.set_name(&name, args.working_on.as_deref(), Local::now()),
            move |()| {
                format!(
                    "This session is now \"{shown}\". Others reach it with t9_ipc_send(to: \"{shown}\")."
                )
            },
        )
        .await;
        self.remind(result).await
    }

    #[tool(
        name = "t9_ipc_wait",
        description = "Wait until a message for this session arrives, then return it (marked \
read). Use it after asking another session something: pass from (its name) and/or reply_to \
(the msg_id your send returned). An unread message that already matches is returned at once. \
timeout_s: 1-600, default 60; on timeout it says so and you may wait again."
    )]
    async fn wait(
        &self,
        Parameters(args): Parameters<WaitArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let secs = match args.timeout_s {
            None => DEFAULT_WAIT_S,
            Some(s @ 1..=MAX_WAIT_S) => s,
            Some(s) => {
                return refused(format!(
                    "Refused: timeout_s {s} is out of range; use 1 to {MAX_WAIT_S} seconds \
                     (default {DEFAULT_WAIT_S})."
                ));
            }
        };
        let clean = |v: Option<String>| v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let filter = WaitFor {
            from: clean(args.from),
            reply_to: clean(args.reply_to),
        };
        let what = describe_wait(&filter);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let waiter = self.session.wait_begin(filter);
        self.catch_up().await;
        let outcome = loop {
            // Registered before looking, so a message that lands in between still wakes us.
            let woken = self.mail.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let s = self.session.clone();
            match tokio::task::spawn_blocking(move || s.wait_take(waiter, Local::now())).await {
                Ok(Ok(Some(msg))) => break Ok(msg),
                Ok(Ok(None)) => {}
                Ok(Err(err)) => break Err(format!("Failed: {err}. Try again.")),
                Err(err) => break Err(format!("Failed: internal error ({err}). Try again.")),
            }
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep_until(deadline) => {
                    break Err(format!(
                        "No {what} arrived within {secs} s. Call t9_ipc_wait again to keep \
                         waiting, or go on with other work."
                    ));
                }
                () = self.ending.cancelled() => {
                    break Err("The session is ending; the wait stopped.".to_owned());
                }
                () = context.ct.cancelled() => {
                    break Err("The wait was cancelled.".to_owned());
                }
            }
        };
        self.session.wait_end(waiter);
        match outcome {
            Ok(msg) => ok(format_waited(&msg)),
            Err(text) => ok(text),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for T9 {
    fn get_info(&self) -> ServerConfig {
        let mut experimental = ExperimentalCapabilities::new();
        experimental.insert("claude/channel".to_owned(), JsonObject::new());
        crate::permission::declare(&mut experimental, self.telegram.as_ref()); // permission relay
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_experimental_with(experimental)
                .build(),
        )
        .with_server_info(Implementation::new("t9-ipc", env!("CARGO_PKG_VERSION")))
        .with_instructions(self.instructions.clone())
    }

    /// Refused on purpose: a session that answers `server/discover` is moved to the
    /// 2026-07-28 protocol, where Claude Code skips channels. See shared/spec/channels.md.
    async fn discover(
        &self,
        _context: RequestContext<RoleServer>,
    ) -> Result<DiscoverResult, McpError> {
        Err(McpError::method_not_found::<DiscoverRequestMethod>())
    }

    /// Claude Code's `permission_request` (see mcp/permission.rs).
    async fn on_custom_notification(
        &self,
        n: CustomNotification,
        cx: NotificationContext<RoleServer>,
    ) {
        let (tg, s, c) = (self.telegram.as_ref(), &self.session, &self.config);
        crate::permission::on_notification(n, cx.peer, tg, s, c, &self.ending);
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let client = context
            .peer
            .peer_info()
            .map(|info| info.client_info.name.clone())
            .unwrap_or_default();
        let (push, why) = channels::detect(&self.config, &client);
        tracing::info!(push = push.as_str(), why = %why, "channel events");
        self.session.set_push(push);
        let s = self.session.clone();
        let _ = tokio::task::spawn_blocking(move || s.refresh(Local::now())).await;
        self.peer_tx.send_replace(Some(context.peer));
    }
}

fn format_who(peers: &[LivePeer], me: &str, now: DateTime<Local>) -> String {
    let others = peers.iter().filter(|p| !p.you).count();
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
            "{} live session{} (you are \"{me}\"):",
            peers.len(),
            if peers.len() == 1 { "" } else { "s" }
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
    }
    if others > 0 {
        out.push_str("Message one with t9_ipc_send(to: \"<name>\", subject, body).");
    }
    out.trim_end().to_owned()
}

fn format_sent(sent: &t9_ipc::session::Sent) -> String {
    let id = &sent.id;
    if sent.to == t9_ipc::message::BROADCAST {
        return if sent.others.is_empty() {
            format!(
                "Broadcast saved as msg_id {id}. No other session is online now; sessions that \
                 start later do not get older broadcasts."
            )
        } else {
            format!(
                "Broadcast sent to {} live session{} ({}) as msg_id {id}.",
                sent.others.len(),
                if sent.others.len() == 1 { "" } else { "s" },
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

fn format_unread(page: &t9_ipc::session::Unread, marked: bool) -> String {
    let n = page.messages.len();
    let mut out = if n == 0 {
        "No unread messages.\n".to_owned()
    } else {
        format!(
            "{n} unread message{} (urgent first, then oldest){}:\n",
            if n == 1 { "" } else { "s" },
            if marked {
                ", now marked read"
            } else {
                ", left unread"
            }
        )
    };
    for (msg, was_pushed) in page.messages.iter().zip(&page.pushed) {
        out.push('\n');
        write_message(&mut out, msg);
        if *was_pushed {
            out.push_str("(it was also sent as a channel event, which may not have reached you)\n");
        }
    }
    if !page.seen.is_empty() {
        let _ = writeln!(
            out,
            "\nAlready shown to you as channel events{}:",
            if marked { " (now marked read)" } else { "" }
        );
        for msg in &page.seen {
            let _ = writeln!(
                out,
                "- {} · from {} · msg_id {}",
                msg.front.subject, msg.front.from, msg.id
            );
        }
    }
    if page.remaining > 0 {
        let _ = write!(
            out,
            "\n{} more unread; call t9_ipc_unread again to read them.",
            page.remaining
        );
    } else if n > 0 {
        out.push_str(
            "\nTo answer one: t9_ipc_send(to: <from>, reply_to: <msg_id>, subject, body).",
        );
    }
    out.trim_end().to_owned()
}

/// One message as tool results show it: a header, then the body.
fn write_message(out: &mut String, msg: &Message) {
    let f = &msg.front;
    let _ = write!(
        out,
        "--- msg_id: {}\nfrom: {} · to: {} · type: {} · priority: {} · created: {}\n",
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
    let _ = writeln!(out, "subject: {}\n", f.subject);
    out.push_str(if msg.body.trim().is_empty() {
        EMPTY_BODY
    } else {
        &msg.body
    });
    out.push('\n');
}

fn format_waited(msg: &Message) -> String {
    let mut out = "Message arrived (now marked read):\n\n".to_owned();
    write_message(&mut out, msg);
    if msg.front.expects_reply() {
        out.push_str("\nTo answer: t9_ipc_send(to: <from>, reply_to: <msg_id>, subject, body).");
    }
    out.trim_end().to_owned()
}

fn describe_wait(filter: &WaitFor) -> String {
    match (&filter.from, &filter.reply_to) {
        (None, None) => "message".to_owned(),
        (Some(f), None) => format!("message from \"{f}\""),
        (None, Some(r)) => format!("reply to {r}"),
        (Some(f), Some(r)) => format!("reply from \"{f}\" to {r}"),
    }
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
