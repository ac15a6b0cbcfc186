//! The MCP side of the server: the tools, their arguments and handlers, and the `initialize`
//! answer (the channel capability; `server/discover` refused).

use std::sync::Arc;
use std::time::Duration;

use crate::shared::PriorityArg;
use chrono::{Local, TimeDelta};
use rmcp::handler::server::{tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{
    CallToolResult, ContentBlock, DiscoverRequestMethod, DiscoverResult, ExperimentalCapabilities,
    Implementation, JsonObject, ServerCapabilities, ServerConfig,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData as McpError, Peer, RoleServer, ServerHandler};
use rmcp::{tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use t9_ipc::config::Config;
use t9_ipc::session::{Outgoing, Session, WaitFor};
use t9_ipc::telegram::Telegram;
use t9_ipc::text::plural;
use t9_ipc::watch::Changed;
use t9_ipc::{Error, channels};
use tokio::sync::{Notify, watch as peer_watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::arrivals::Subscribers;
use super::format::{describe_wait, format_sent, format_unread, format_waited, format_who};
use crate::telegram;

/// Unread messages returned by one `t9_ipc_unread` call when no limit is given.
const DEFAULT_UNREAD_LIMIT: u32 = 20;
/// `t9_ipc_wait`'s default and longest wait, in seconds.
const DEFAULT_WAIT_S: u64 = 60;
const MAX_WAIT_S: u64 = 600;
/// How long a tool waits for the push loop to take in a file event already under way.
const CATCH_UP: Duration = Duration::from_millis(50);

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

/// The server's tools and handlers; rmcp clones it per request.
#[derive(Clone)]
pub struct T9 {
    pub(super) session: Arc<Session>,
    pub(super) config: Arc<Config>,
    peer_tx: peer_watch::Sender<Option<Peer<RoleServer>>>,
    /// Woken after every look at the inbox.
    mail: Arc<Notify>,
    /// Cancelled when the session ends.
    ending: CancellationToken,
    /// Told of each message this session sends.
    subscribers: Subscribers,
    /// Present when Telegram is configured; only to say in a send's answer what happens to
    /// an escalation.
    telegram: Option<Telegram>,
    instructions: String,
    tool_router: ToolRouter<T9>,
}

/// What the tools share with the rest of the server.
pub struct Shared {
    pub session: Arc<Session>,
    pub config: Config,
    /// Where `on_initialized` hands the client's peer to the push loop.
    pub peer_tx: peer_watch::Sender<Option<Peer<RoleServer>>>,
    pub mail: Arc<Notify>,
    pub ending: CancellationToken,
    pub subscribers: Subscribers,
    pub telegram: Option<Telegram>,
}

impl T9 {
    pub fn new(shared: Shared) -> T9 {
        T9 {
            instructions: super::instructions::instructions(&shared.session.name(), &shared.config),
            session: shared.session,
            config: Arc::new(shared.config),
            peer_tx: shared.peer_tx,
            mail: shared.mail,
            ending: shared.ending,
            subscribers: shared.subscribers,
            telegram: shared.telegram,
            tool_router: T9::tool_router() + T9::coord_router(),
        }
    }
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
    /// Makes sure the index has every file now in the inbox: a file renamed into place a
    /// moment ago has its event under way; wait for it briefly, then rescan.
    async fn catch_up(&self) {
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let woken = self.mail.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            // A `stat` of the inbox folder: on a blocking thread, as all file I/O.
            let s = self.session.clone();
            if tokio::task::spawn_blocking(move || s.is_current())
                .await
                .unwrap_or(false)
            {
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
                "{} (from {}): call t9_ipc_unread.",
                plural(n, "unread message"),
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
        } = args;
        let critical = matches!(priority, PriorityArg::Critical);
        let (subscribers, tg) = (self.subscribers.clone(), self.telegram.clone());
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
                    subscribers.sent(s, &out, &sent.id);
                    Ok(sent)
                },
                move |sent| telegram::sent_text(&sent, critical, tg.as_ref(), format_sent),
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
                // Telegram forwards given up in the last day are shown too.
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
