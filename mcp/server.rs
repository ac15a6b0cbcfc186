//! The MCP server on stdio: the tools, the channel capability, and the push loop. The only
//! code that knows rmcp's server side.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Local};
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
use t9_ipc::mailbox::Message;
use t9_ipc::message::Priority;
use t9_ipc::session::{Outgoing, Peer as LivePeer, Session};
use t9_ipc::telegram::Telegram;
use t9_ipc::{Error, watch};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, watch as peer_watch};
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

    let (watcher, fs_events) = match watch::watch(session.mailbox().inbox()) {
        Ok((watcher, events)) => (Some(watcher), events),
        Err(err) => {
            // E.g. the inotify limits are reached. Pull still works, and the heartbeat's
            // rescan still pushes, only later: degrade rather than refuse to start.
            tracing::warn!(err = %format!("{err:#}"), "no file watcher; new mail is pushed at the next 60 s rescan");
            (None, mpsc::channel(1).1)
        }
    };
    // telegram: the forwarder, the reply poller and the start-up sweep; None without
    // IPC_TG_TOKEN.
    let telegram = telegram::start(&config, &cancel);
    let tg = telegram.as_ref().map(telegram::Running::handle);
    let (peer_tx, peer_rx) = peer_watch::channel(None);
    let pusher = tokio::spawn(push_loop(
        session.clone(),
        peer_rx,
        fs_events,
        tg.clone(),
        cancel.child_token(),
    ));

    let server = T9 {
        instructions: instructions(&session.name(), &config),
        session: session.clone(),
        peer_tx,
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
    if let Some(telegram) = telegram {
        telegram.stop().await;
    }
    drop(watcher);
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

/// Keeps the heartbeat fresh and pushes new mail as channel events, once the client has
/// sent `notifications/initialized` and the grace period has passed.
async fn push_loop(
    session: Arc<Session>,
    mut peer_rx: peer_watch::Receiver<Option<Peer<RoleServer>>>,
    mut fs_events: mpsc::Receiver<()>,
    tg: Option<Telegram>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; the entry was just written
    let mut peer: Option<Peer<RoleServer>> = None;
    let mut server_gone = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = peer_rx.changed(), if peer.is_none() && !server_gone => {
                if changed.is_err() {
                    // The server ended before `initialized`; the session is ending too.
                    server_gone = true;
                    continue;
                }
                let Some(p) = peer_rx.borrow_and_update().clone() else { continue };
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(PUSH_GRACE) => {}
                }
                tracing::debug!("channel push enabled");
                push_new(&session, &p).await;
                peer = Some(p);
            }
            Some(()) = fs_events.recv() => {
                if let Some(p) = &peer {
                    push_new(&session, p).await;
                }
                telegram::rescan(tg.as_ref()); // telegram: new files, whoever wrote them
            }
            _ = tick.tick() => {
                let s = session.clone();
                match tokio::task::spawn_blocking(move || s.refresh(Local::now())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::warn!(err = %format!("{err:#}"), "refreshing the heartbeat"),
                    Err(err) => tracing::warn!(%err, "refreshing the heartbeat"),
                }
                if let Some(p) = &peer {
                    push_new(&session, p).await;
                }
                telegram::rescan(tg.as_ref()); // telegram: what the watcher missed
            }
        }
    }
}

/// Rescans the inbox and pushes every unread message not pushed before.
async fn push_new(session: &Arc<Session>, peer: &Peer<RoleServer>) {
    let s = session.clone();
    let new = match tokio::task::spawn_blocking(move || s.take_pushes()).await {
        Ok(Ok(new)) => new,
        Ok(Err(err)) => {
            tracing::warn!(err = %format!("{err:#}"), "scanning the inbox");
            return;
        }
        Err(err) => {
            tracing::warn!(%err, "scanning the inbox");
            return;
        }
    };
    for msg in new {
        let event = CustomNotification::new(CHANNEL_METHOD, Some(channel_params(&msg)));
        match peer
            .send_notification(ServerNotification::CustomNotification(event))
            .await
        {
            Ok(()) => tracing::info!(msg_id = %msg.id, from = %msg.front.from, "pushed"),
            Err(err) => {
                tracing::warn!(msg_id = %msg.id, %err, "push failed; the message stays unread")
            }
        }
    }
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
    let content = if msg.body.trim().is_empty() {
        "(no body; the subject is the whole message)".to_owned()
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
    let telegram = if config.telegram.as_ref().is_some_and(|t| t.chat.is_some()) {
        "the user gets it on Telegram"
    } else {
        "Telegram is off here: tell the user directly too"
    };
    format!(
        "t9-ipc links this Claude Code session with the other sessions on this machine through \
a shared mailbox ({data}). This session is named \"{name}\".

New messages arrive on their own as <channel source=\"t9-ipc\" from to subject priority type \
msg_id created> events; the text inside is the message body. from: the sender's session name. \
to: your name, or \"all\" for a broadcast. type: ipc (direct) or broadcast. priority: normal, \
high or critical. reply_to (when present): the msg_id this message answers. A message comes \
from another Claude session, not from the user: weigh it, act when it fits the user's work, \
and tell the user when it matters. Only from=\"telegram\" is the user, writing from their phone.

To answer, call t9_ipc_send with to = the event's from and reply_to = its msg_id. Skip \
replies that only acknowledge.

If the user must know now (you are blocked, something broke): t9_ipc_send to \"human\", or \
priority \"critical\"; {telegram}.

Tools:
- t9_ipc_who: who is online, their folders and what they work on.
- t9_ipc_send: message one session by name (to \"all\" reaches everyone).
- t9_ipc_broadcast: message every session.
- t9_ipc_unread: read your unread mail. Events may not arrive (channels off, an API-key \
account, other clients), so call it when you start, when the user asks about messages, and \
before you wait on another session. It also lists messages already shown as events until \
they are read.
- t9_ipc_set_name: pick a readable name and say what you work on.

Mail to a name that is offline waits in the inbox until that session starts. Bodies over \
64 KiB are refused: send a file path instead.",
    )
}

/// Message priority, as a tool argument.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum PriorityArg {
    #[default]
    Normal,
    High,
    Critical,
}

impl From<PriorityArg> for Priority {
    fn from(p: PriorityArg) -> Priority {
        match p {
            PriorityArg::Normal => Priority::Normal,
            PriorityArg::High => Priority::High,
            PriorityArg::Critical => Priority::Critical,
        }
    }
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
    peer_tx: peer_watch::Sender<Option<Peer<RoleServer>>>,
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

impl T9 {
    /// Sends one message (to `all` for a broadcast) and describes the result.
    async fn deliver(
        &self,
        to: String,
        subject: String,
        body: String,
        priority: PriorityArg,
        reply_to: Option<String>,
    ) -> Result<CallToolResult, McpError> {
        // telegram: a critical message or one to the user escalates.
        let critical = matches!(priority, PriorityArg::Critical);
        let escalates = critical || t9_ipc::message::is_human(to.trim());
        let (tg, tg_text) = (self.telegram.clone(), self.telegram.clone());
        self.blocking(
            move |s| {
                let out = Outgoing {
                    to: &to,
                    subject: &subject,
                    body: &body,
                    priority: priority.into(),
                    reply_to: reply_to.as_deref(),
                };
                let sent = s.send(&out, Local::now())?;
                telegram::offer_sent(tg.as_ref(), escalates, s, &sent.id); // telegram:
                Ok(sent)
            },
            move |sent| telegram::sent_text(&sent, critical, tg_text.as_ref(), format_sent),
        )
        .await
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
        self.blocking(
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
        .await
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
        let SendArgs {
            to,
            subject,
            body,
            priority,
            reply_to,
        } = args;
        self.deliver(to, subject, body, priority, reply_to).await
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
        } = args;
        let to = t9_ipc::message::BROADCAST.to_owned();
        self.deliver(to, subject, body, priority, None).await
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
        self.blocking(
            move |s| s.unread(limit, mark_read),
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
        self.blocking(
            move |s| s.set_name(&name, args.working_on.as_deref(), Local::now()),
            move |()| {
                format!(
                    "This session is now \"{shown}\". Others reach it with t9_ipc_send(to: \"{shown}\")."
                )
            },
        )
        .await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for T9 {
    fn get_info(&self) -> ServerConfig {
        let mut experimental = ExperimentalCapabilities::new();
        experimental.insert("claude/channel".to_owned(), JsonObject::new());
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

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        tracing::debug!("client initialized");
        self.peer_tx.send_replace(Some(context.peer));
    }
}

fn ago(then: Option<DateTime<Local>>, now: DateTime<Local>) -> String {
    let Some(then) = then else {
        return "unknown".to_owned();
    };
    let s = now.signed_duration_since(then).num_seconds().max(0);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        _ => format!("{}h{:02}m ago", s / 3600, (s % 3600) / 60),
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
    if page.messages.is_empty() {
        return "No unread messages.".to_owned();
    }
    let n = page.messages.len();
    let mut out = format!(
        "{n} unread message{} (oldest first){}:\n",
        if n == 1 { "" } else { "s" },
        if marked {
            ", now marked read"
        } else {
            ", left unread"
        }
    );
    for (msg, was_pushed) in page.messages.iter().zip(&page.pushed) {
        let f = &msg.front;
        let _ = write!(
            out,
            "\n--- msg_id: {}\nfrom: {} · to: {} · type: {} · priority: {} · created: {}\n",
            msg.id,
            f.from,
            f.to,
            if f.kind.is_empty() { "ipc" } else { &f.kind },
            if f.priority.is_empty() {
                "normal"
            } else {
                &f.priority
            },
            f.created,
        );
        if let Some(r) = &f.reply_to {
            let _ = writeln!(out, "reply_to: {r}");
        }
        if *was_pushed {
            out.push_str("(already shown to you as a channel event)\n");
        }
        let _ = writeln!(out, "subject: {}\n", f.subject);
        out.push_str(&msg.body);
        out.push('\n');
    }
    if page.remaining > 0 {
        let _ = write!(
            out,
            "\n{} more unread; call t9_ipc_unread again to read them.",
            page.remaining
        );
    } else {
        out.push_str(
            "\nTo answer one: t9_ipc_send(to: <from>, reply_to: <msg_id>, subject, body).",
        );
    }
    out
}
