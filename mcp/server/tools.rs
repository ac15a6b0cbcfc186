//! The MCP side of the server: the tools, their arguments and handlers, and the `initialize`
//! answer (the channel capability; `server/discover` refused).

use std::sync::Arc;
use std::time::Duration;

use chrono::{Local, TimeDelta};
use rmcp::handler::server::{tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{
    CallToolResult, ContentBlock, CustomNotification, DiscoverRequestMethod, DiscoverResult,
    ExperimentalCapabilities, Implementation, JsonObject, ServerCapabilities, ServerConfig,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData as McpError, Peer, RoleServer, ServerHandler};
use rmcp::{tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use t9_ipc::config::Config;
use t9_ipc::coord::claims::Claims;
use t9_ipc::federation::hub;
use t9_ipc::message::Priority;
use t9_ipc::session::{Outgoing, Session, WaitFor};
use t9_ipc::telegram::Telegram;
use t9_ipc::text::plural;
use t9_ipc::watch::Changed;
use t9_ipc::{Error, channels};
use tokio::sync::{Notify, watch as peer_watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::args::{self, SendArgs, UnreadArgs, WaitArgs, parse};
use super::arrivals::Subscribers;
use super::format::{describe_wait, format_sent, format_unread, format_waited, format_who};
use crate::shared::federation::{self, NameClaim};
use crate::telegram;

/// Unread messages returned by one `t9_ipc_unread` call when no limit is given.
const DEFAULT_UNREAD_LIMIT: u64 = 20;
/// Bytes of bodies and subjects one `t9_ipc_unread` result holds at most (a single larger
/// message comes alone): well below what clients refuse (Claude Code: 25,000 tokens).
pub const UNREAD_MAX_BYTES: usize = 40_000;
/// `t9_ipc_wait`'s default and longest wait, in seconds.
const DEFAULT_WAIT_S: u64 = 60;
const MAX_WAIT_S: u64 = 600;
/// How long a tool waits for the push loop to take in a file event already under way.
const CATCH_UP: Duration = Duration::from_millis(50);

#[derive(Debug, Deserialize, JsonSchema)]
struct SetNameArgs {
    /// The new name: 3 to 64 letters, digits, '_' or '-'. Others send to it.
    name: String,
    /// One line telling the others what this session works on.
    #[serde(default)]
    working_on: Option<String>,
    /// true only when the user said this session is that name: takes a name that has
    /// unread mail and was last used from another folder.
    #[serde(default)]
    take_over: Option<bool>,
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
    /// The hub, connected at the first `t9_ipc_who` and kept (federation on).
    hub: Option<Arc<hub::Link>>,
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
        let hub = match &shared.config.federation {
            Ok(Some(settings)) => Some(Arc::new(hub::Link::new(settings.clone()))),
            _ => None,
        };
        T9 {
            hub,
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
        answer(
            tokio::task::spawn_blocking(move || work(&session)).await,
            done,
        )
    }

    /// [`T9::blocking`] followed by the reminder ([`T9::remind`]), both on one blocking
    /// thread: one hand-over instead of two, so a send answers that much sooner.
    async fn blocking_reminded<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Session) -> Result<R, Error> + Send + 'static,
        done: impl FnOnce(R) -> String,
    ) -> Result<CallToolResult, McpError> {
        let session = self.session.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let result = work(&session);
            (result, reminder(&session))
        })
        .await;
        match joined {
            Ok((result, line)) => with_line(answer(Ok(result), done), line),
            Err(err) => answer(Err(err), done),
        }
    }
}

/// The closing line of [`T9::remind`], when unseen mail waits. The index as the file events
/// keep it: a message that landed this very millisecond is named at the next call (waiting
/// here would slow every send under load). Blocks: call it on a blocking thread.
fn reminder(s: &Session) -> Option<String> {
    match s.unseen(10, Local::now()) {
        Ok((0, _, _)) | Err(_) => None,
        Ok((n, senders, others)) => Some(format!(
            "{} (from {}): call t9_ipc_unread.",
            plural(n, "unread message"),
            t9_ipc::text::names_and_others(&senders, others)
        )),
    }
}

/// `result` with `line` added as a last block, when there is one.
fn with_line(
    result: Result<CallToolResult, McpError>,
    line: Option<String>,
) -> Result<CallToolResult, McpError> {
    match line {
        Some(line) => result.map(|mut r| {
            r.content.push(ContentBlock::text(line));
            r
        }),
        None => result,
    }
}

/// The answer to a tool call from its blocking work: any failure becomes an error result the
/// model can read.
fn answer<R>(
    joined: Result<Result<R, Error>, tokio::task::JoinError>,
    done: impl FnOnce(R) -> String,
) -> Result<CallToolResult, McpError> {
    match joined {
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
        let s = self.session.clone();
        let line = tokio::task::spawn_blocking(move || reminder(&s))
            .await
            .ok()
            .flatten();
        with_line(result, line)
    }

    /// Sends one message (to `all` for a broadcast) and describes the result.
    async fn deliver(&self, args: SendArgs) -> Result<CallToolResult, McpError> {
        let checked = args::required(args.to, "to", "a session name from t9_ipc_who, or \"all\"")
            .and_then(|to| {
                let subject = args::required(
                    args.subject,
                    "subject",
                    "one line of at most 200 characters",
                )?;
                Ok((to, subject, args::priority(args.priority.as_deref())?))
            });
        let (to, subject, priority) = match checked {
            Ok(checked) => checked,
            Err(text) => return refused(text),
        };
        let body = match telegram::with_files(args.body, &to, &args.files, &self.config.cwd) {
            Ok(body) => body,
            Err(text) => return refused(text),
        };
        let (reply_to, supersedes) = (args.reply_to, args.supersedes);
        let (ttl_s, info_only) = (args.ttl_s, args.info_only.unwrap_or(false));
        let critical = priority == Priority::Critical;
        let (subscribers, tg) = (self.subscribers.clone(), self.telegram.clone());
        self.blocking_reminded(
            move |s| {
                let ttl = ttl_s.map(|secs| {
                    i64::try_from(secs)
                        .ok()
                        .and_then(TimeDelta::try_seconds)
                        .unwrap_or(TimeDelta::MAX)
                });
                let out = Outgoing {
                    to: &to,
                    subject: &subject,
                    body: &body,
                    priority,
                    reply_to: reply_to.as_deref(),
                    supersedes: supersedes.as_deref(),
                    ttl,
                    info_only,
                };
                let sent = s.send(&out, Local::now())?;
                subscribers.sent(s, &out, &sent.id);
                Ok(sent)
            },
            move |sent| telegram::sent_text(&sent, critical, tg.as_ref(), format_sent),
        )
        .await
    }
}

#[tool_router]
impl T9 {
    #[tool(
        name = "t9_ipc_who",
        description = "List the live sessions: name, pid, folder, last seen, work, claims; yours \
is marked (you). Use it to find the name to send to.",
        input_schema = args::WHO_SCHEMA.clone()
    )]
    async fn who(&self) -> Result<CallToolResult, McpError> {
        // The other machines (federation on), from the hub, at most a few seconds.
        let elsewhere = federation::others(&self.config.federation, self.hub.as_deref()).await;
        // This session's name live on another machine too (taken at start): said, with who
        // holds it.
        let clash = match &elsewhere {
            Some(others) => {
                let me = self.session.name();
                federation::same_name(&self.config.federation, others, &me).await
            }
            None => None,
        };
        self.blocking_reminded(
            // Telegram forwards given up in the last day are shown too.
            |s| {
                let now = Local::now();
                Ok((
                    s.who(now),
                    s.name(),
                    telegram::who_note(s.mailbox().root()),
                    Claims::new(s.mailbox().root()).by_session(now),
                ))
            },
            |(peers, me, note, claims)| {
                let mut said = format_who(&peers, &me, &claims, elsewhere.as_ref(), Local::now());
                if let Some(clash) = clash {
                    said = format!("{said}\n{clash}");
                }
                said + &note
            },
        )
        .await
    }

    #[tool(
        name = "t9_ipc_send",
        description = "Send a message to one session, to \"all\", or to \"human\" (the user, on \
Telegram when set up). Use it to ask, inform or answer (pass the msg_id as reply_to).",
        input_schema = args::SEND_SCHEMA.clone()
    )]
    async fn send(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<CallToolResult, McpError> {
        match parse(args, args::SEND_USAGE) {
            Ok(args) => self.deliver(args).await,
            Err(text) => refused(text),
        }
    }

    #[tool(
        name = "t9_ipc_broadcast",
        description = "Send a message to every session. Use it for news that concerns everyone.",
        input_schema = args::BROADCAST_SCHEMA.clone()
    )]
    async fn broadcast(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<CallToolResult, McpError> {
        match parse::<SendArgs>(args, args::BROADCAST_USAGE) {
            Ok(args) => {
                self.deliver(SendArgs {
                    to: Some(t9_ipc::message::BROADCAST.to_owned()),
                    reply_to: None,
                    supersedes: None,
                    files: Vec::new(),
                    ..args
                })
                .await
            }
            Err(text) => refused(text),
        }
    }

    #[tool(
        name = "t9_ipc_unread",
        description = "Return your unread messages, urgent then oldest, about 40,000 characters \
a call, and mark them read; it names what is left. Use it at start, when mail is announced, or \
when asked.",
        input_schema = args::UNREAD_SCHEMA.clone()
    )]
    async fn unread(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<CallToolResult, McpError> {
        let args: UnreadArgs = match parse(args, args::UNREAD_USAGE) {
            Ok(args) => args,
            Err(text) => return refused(text),
        };
        let mark_read = args.mark_read.unwrap_or(true);
        let limit = match args.limit {
            Some(0) => {
                return refused(format!(
                    "Refused: limit must be at least 1; use {} (default {DEFAULT_UNREAD_LIMIT}).",
                    args::UNREAD_USAGE
                ));
            }
            Some(n) => n,
            None => DEFAULT_UNREAD_LIMIT,
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        self.catch_up().await;
        self.blocking(
            move |s| s.unread(limit, UNREAD_MAX_BYTES, mark_read, Local::now()),
            move |page| format_unread(&page, mark_read, UNREAD_MAX_BYTES),
        )
        .await
    }

    #[tool(
        name = "t9_ipc_set_name",
        description = "Name this session (others send to the name) and say what it works on. Use \
it at start; a name with unread mail last used from another folder needs take_over: true.",
        input_schema = rmcp::handler::server::common::schema_for_type::<SetNameArgs>()
    )]
    async fn set_name(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<CallToolResult, McpError> {
        let args: SetNameArgs = match parse(args, "t9_ipc_set_name(name, working_on?, take_over?)")
        {
            Ok(args) => args,
            Err(text) => return refused(text),
        };
        let name = args.name.trim().to_owned();
        let shown = name.clone();
        let take_over = args.take_over.unwrap_or(false);
        // The local checks first; then, with federation on, the hub's claim for this machine
        // (not for the name it has: the bridge keeps that one's claim, and a status update
        // needs no round trip).
        let asked = name.clone();
        let checked = self
            .blocking(
                move |s| s.may_take(&asked, take_over, Local::now()),
                |()| String::new(),
            )
            .await;
        if checked.as_ref().map_or(true, |r| r.is_error == Some(true)) {
            return self.remind(checked).await;
        }
        let claimed = if name != self.session.name() {
            federation::claim_name(&self.config.federation, &name).await
        } else {
            NameClaim::Off
        };
        let across = match claimed {
            NameClaim::Off | NameClaim::Ours => String::new(),
            NameClaim::Taken(machine) => {
                return self
                    .remind(refused(federation::taken_elsewhere(&name, &machine)))
                    .await;
            }
            NameClaim::Unreachable(err) => {
                tracing::warn!(%err, session = %name, "federation: the name is not claimed across machines yet");
                " The hub could not be asked, so other machines are not checked yet; the \
                 bridge claims the name when the hub is back."
                    .to_owned()
            }
        };
        let result = self.blocking(
            move |s| s.set_name(&name, args.working_on.as_deref(), take_over, Local::now()),
            move |left| {
                format!(
                    "This session is now \"{shown}\". Others reach it with t9_ipc_send(to: \"{shown}\").{across}{}",
                    format_left(&left)
                )
            },
        )
        .await;
        self.remind(result).await
    }

    #[tool(
        name = "t9_ipc_wait",
        description = "Wait for a message (from a session, or replying to a msg_id) and return \
it, marked read. Use it after asking another session something.",
        input_schema = args::WAIT_SCHEMA.clone()
    )]
    async fn wait(
        &self,
        Parameters(args): Parameters<JsonObject>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let args: WaitArgs = match parse(args, args::WAIT_USAGE) {
            Ok(args) => args,
            Err(text) => return refused(text),
        };
        let secs = match args.timeout_s {
            None => DEFAULT_WAIT_S,
            Some(s @ 1..=MAX_WAIT_S) => s,
            Some(s) => {
                return refused(format!(
                    "Refused: timeout_s {s} is out of range; use 1 to {MAX_WAIT_S} seconds \
                     (default {DEFAULT_WAIT_S}), as in {}.",
                    args::WAIT_USAGE
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
            let took = move || {
                let now = Local::now();
                let msg = s.wait_take(waiter, now)?;
                // What else waits, said in the result rather than after it.
                let more = if msg.is_some() {
                    s.unseen(0, now)?.0
                } else {
                    0
                };
                Ok::<_, Error>(msg.map(|m| (m, more)))
            };
            match tokio::task::spawn_blocking(took).await {
                Ok(Ok(Some(got))) => break Ok(got),
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
            Ok((msg, more)) => ok(format_waited(&msg, more)),
            Err(text) => ok(text),
        }
    }
}

/// What a rename left with the old name, for the set_name result.
fn format_left(left: &t9_ipc::session::Renamed) -> String {
    if left.left == 0 {
        return String::new();
    }
    let old = &left.old;
    let shown = if left.left_pushed > 0 {
        format!(", {} of them shown as channel events", left.left_pushed)
    } else {
        String::new()
    };
    format!(
        " The old name \"{old}\" still has {} (from {}{shown}); it stays addressed to \
         \"{old}\" and is not shown under the new name. To read it, call \
         t9_ipc_set_name(name: \"{old}\"), then t9_ipc_unread, then rename again.",
        plural(left.left, "unread message"),
        t9_ipc::text::some_names(&left.left_from, 10)
    )
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for T9 {
    fn get_info(&self) -> ServerConfig {
        let mut experimental = ExperimentalCapabilities::new();
        experimental.insert("claude/channel".to_owned(), JsonObject::new());
        super::permission::declare(&mut experimental, self.telegram.as_ref()); // permission relay
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

    /// Claude Code's `permission_request` (see server/permission.rs).
    async fn on_custom_notification(
        &self,
        n: CustomNotification,
        cx: NotificationContext<RoleServer>,
    ) {
        let (tg, s, c) = (self.telegram.as_ref(), &self.session, &self.config);
        super::permission::on_notification(n, cx.peer, tg, s, c, &self.ending);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic in a tool's blocking work is caught and answered as a failure the model can
    /// read, not the end of the server: unwinding works with the unwinder `build.rs` links in.
    #[tokio::test]
    async fn a_panic_in_blocking_work_is_answered_as_a_failure() {
        let joined = tokio::task::spawn_blocking(|| -> Result<(), Error> {
            panic!("a bug in a tool's work")
        })
        .await;
        let answered = answer(joined, |()| "done".to_owned()).expect("an answer");
        assert_eq!(answered.is_error, Some(true));
        let text = serde_json::to_string(&answered.content).expect("JSON");
        assert!(text.contains("Failed: internal error"), "{text}");
    }
}
