//! The MCP server on stdio: starts the session, the push engine and Telegram, serves the
//! tools until stdin closes or a signal arrives, then ends everything in order. The only
//! code that knows rmcp's server side.
//!
//! One concern a file: `tools` (handlers and the `initialize` answer), `format` (tool result
//! text), `push` (the push loop), `rules` (when to push, pure), `events` (event text),
//! `instructions`, `arrivals` (the subscribers told of new mail, Telegram among them), and
//! `permission` (the relay of tool-permission prompts to the phone and the verdict back).

mod args;
mod arrivals;
mod coord;
mod events;
mod format;
mod instructions;
mod permission;
mod push;
mod rules;
mod tools;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{Local, TimeDelta};
use rmcp::ServiceExt;
use rmcp::service::{Peer, RoleServer};
use t9_ipc::config::Config;
use t9_ipc::mailbox::ArchivePlan;
use t9_ipc::session::Session;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{Notify, watch as peer_watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::telegram;
use arrivals::{Escalations, OwnSends, Subscriber, Subscribers};
use push::{Counted, PeerRx, Pusher};
use tools::{Shared, T9};

/// A server archives finished mail at start when no server did for this long.
const ARCHIVE_EVERY: Duration = Duration::from_secs(3600);

/// Runs the server until stdin closes or a signal arrives; then takes this session's
/// heartbeat entry away. Every task it starts is a child of one cancellation token and is
/// waited for before it returns.
/// How long the end of a session waits for the federation bridge to stop.
const BRIDGE_STOP: Duration = Duration::from_secs(3);

pub async fn serve(config: Config) -> anyhow::Result<()> {
    // Installed first, so a signal at any later point ends the session in order.
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(cancel_on_signal(
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        cancel.clone(),
    ));
    let session = match start_session(&config).await {
        Ok(session) => session,
        Err(err) => {
            cancel.cancel();
            return Err(err);
        }
    };
    let (peer_tx, peer_rx) = peer_watch::channel(None);
    spawn_sweeps(&tasks, &config, &session, peer_rx.clone(), &cancel);
    // Telegram: the forwarder, the reply poller and, through the push loop, the start-up
    // sweep; None without IPC_TG_TOKEN.
    let telegram = telegram::start(&config, &cancel);
    let tg = telegram.as_ref().map(telegram::Running::handle);
    // Federation: this mailbox's bridge, when IPC_NATS_URL is set and this server is elected.
    let federation = t9_ipc::federation::spawn_elected(&config, &cancel);
    let own = OwnSends::default();
    let subscribers = Subscribers::new(
        tg.iter()
            .map(|t| Box::new(Escalations(t.clone())) as Box<dyn Subscriber>)
            .chain([Box::new(own.clone()) as Box<dyn Subscriber>])
            .collect(),
    );
    let mail = Arc::new(Notify::new());
    let written = Arc::new(AtomicU64::new(0));
    spawn_pusher(
        &tasks,
        Pusher::new(
            session.clone(),
            &config,
            mail.clone(),
            (subscribers.clone(), own),
            written.clone(),
        ),
        peer_rx,
        &cancel,
    );
    let server = T9::new(Shared {
        session: session.clone(),
        config,
        peer_tx,
        mail,
        ending: cancel.clone(),
        subscribers,
        telegram: tg,
    });
    run_until_end(server, written, &cancel).await;
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    if let Some(federation) = federation {
        // Bounded: a hub that stops answering in the middle of a request must not hold the
        // session's end (what was not acknowledged comes again).
        if tokio::time::timeout(BRIDGE_STOP, federation).await.is_err() {
            tracing::warn!("federation: the bridge did not stop within 3 s; ending without it");
        }
    }
    if let Some(telegram) = telegram {
        telegram.stop().await;
    }
    end_session(session).await
}

/// Registers this session (a blocking flock on heartbeats.json).
async fn start_session(config: &Config) -> anyhow::Result<Arc<Session>> {
    let start = config.clone();
    let session = tokio::task::spawn_blocking(move || Session::start(&start, Local::now()))
        .await?
        .with_context(|| format!("starting a session on {}", config.data_dir.display()))?;
    tracing::info!(session = %session.name(), pid = session.pid(), data_dir = %config.data_dir.display(), "started");
    Ok(Arc::new(session))
}

/// Serves MCP on stdio until stdin closes or `cancel` (a signal); `written` counts the
/// channel events written whole.
async fn run_until_end(server: T9, written: Arc<AtomicU64>, cancel: &CancellationToken) {
    // Pipes (how MCP clients start servers) are read on the reactor, not on a blocking
    // thread: nothing is left behind when the session ends.
    let (stdin, stdout) = rmcp::transport::stdio_pipes();
    let transport = Counted::new(
        rmcp::transport::async_rw::AsyncRwTransport::new_server(stdin, stdout),
        written,
    );
    match server.serve_with_ct(transport, cancel.child_token()).await {
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
}

/// Two sweeps in the background, once the client has its answer to `initialize` (on two
/// cores their threads would compete with it), or after a second, or at the end:
/// - private by default: a mailbox other users can read is tightened, with one warning. It
///   looks at every file of the mailbox (100,000 of them take a while), and nothing the
///   server does waits on it (every file it writes is private already);
/// - keep the inbox small: finished mail older than the set age moves to archive/.
#[inline(never)]
fn spawn_sweeps(
    tasks: &TaskTracker,
    config: &Config,
    session: &Arc<Session>,
    mut initialized: peer_watch::Receiver<Option<Peer<RoleServer>>>,
    cancel: &CancellationToken,
) {
    let (root, archiving) = (config.data_dir.clone(), session.clone());
    let (plan, sweeps, ending) = (archive_plan(config), tasks.clone(), cancel.clone());
    tasks.spawn(async move {
        tokio::select! {
            _ = initialized.wait_for(Option::is_some) => {}
            () = ending.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        sweeps.spawn_blocking(move || t9_ipc::mailbox::tighten(&root));
        sweeps.spawn_blocking(move || archive(&archiving, &plan));
    });
}

/// Spawns the push loop. Never inlined, nor is [`spawn_sweeps`]: a task's future is built in
/// the frame that spawns it, and in `serve`'s frame it would stay on the main thread's stack.
#[inline(never)]
fn spawn_pusher(tasks: &TaskTracker, pusher: Pusher, peer_rx: PeerRx, cancel: &CancellationToken) {
    tasks.spawn(pusher.run(peer_rx, cancel.child_token()));
}

/// Takes this session's heartbeat entry away.
async fn end_session(session: Arc<Session>) -> anyhow::Result<()> {
    let name = session.name();
    tokio::task::spawn_blocking(move || session.end(Local::now()))
        .await?
        .context("removing this session's heartbeat")?;
    tracing::info!(session = %name, "ended");
    Ok(())
}

/// Cancels the session on SIGTERM or SIGINT; returns when the session ends otherwise.
async fn cancel_on_signal(mut term: Signal, mut int: Signal, cancel: CancellationToken) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; ending"),
        _ = int.recv() => tracing::info!("SIGINT received; ending"),
        () = cancel.cancelled() => return,
    }
    cancel.cancel();
}

fn archive_plan(config: &Config) -> ArchivePlan {
    ArchivePlan {
        older_than: i64::try_from(config.archive_after_days)
            .ok()
            .and_then(TimeDelta::try_days)
            .unwrap_or(TimeDelta::MAX),
        dry_run: false,
    }
}

/// Moves finished mail to archive/, once an hour per mailbox however many sessions start.
/// Blocks: run it on a blocking thread.
fn archive(session: &Session, plan: &ArchivePlan) {
    if !session.mailbox().archive_due(ARCHIVE_EVERY) {
        return;
    }
    match session.mailbox().archive(plan, Local::now()) {
        Ok(moved) if !moved.is_empty() => {
            tracing::info!(count = moved.len(), "archived finished mail")
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(err = %format!("{err:#}"), "archiving finished mail"),
    }
}
