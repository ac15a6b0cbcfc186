//! The Telegram handle a server holds: the queue of escalations to forward, and the
//! forwarder that claims, sends (with retries) and records each one.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use chrono::{Local, TimeDelta};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::access::{Access, Allowed};
use super::api::{Api, ApiError, backoff};
use super::federated::Federated;
use super::files::{listed_files, send_file};
use super::permission::Pending;
use super::render::{Part, render};
use super::store::{Claim, Claimed, Forwarded, Store};
use super::{CATCH_UP_WINDOW, is_escalation};
use crate::config::TelegramConfig;
use crate::error::Result;
use crate::mailbox::{Mailbox, Message};
use crate::message;

/// Telegram for one server: the forward queue and the reply path. Cheap to clone.
#[derive(Clone)]
pub struct Telegram {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) api: Api,
    /// `IPC_TG_CHAT`; without it, the chat of the latest pairing is used ([`Inner::chat`]).
    config_chat: Option<i64>,
    /// `IPC_TG_ALLOW`.
    allow_env: Vec<i64>,
    pub(super) access: Access,
    /// The permission requests this process asked and waits for, with their secrets.
    pub(super) pending: Mutex<Pending>,
    /// The chat checked with `getChat`, and whether it is a forum.
    pub(super) forum: Mutex<Option<(i64, bool)>>,
    /// Tasks the server started that must end before it exits (permission prompts, which
    /// show their outcome on the way out).
    tracked: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    give_up_after: Duration,
    pub(super) store: Store,
    /// Its own handle on the mailbox: reads recent files, writes the person's replies.
    pub(super) mailbox: Mailbox,
    /// Escalations queued or settled in this process, so each is handled once here.
    offered: Mutex<HashSet<String>>,
    queue: mpsc::UnboundedSender<Arc<Message>>,
    queued: Mutex<Option<mpsc::UnboundedReceiver<Arc<Message>>>>,
    /// The hub's part in forwarding and polling, when federation is on
    /// ([`Telegram::federate`]).
    pub(super) federated: OnceLock<Federated>,
}

pub(super) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Telegram {
    /// Builds the client and opens `<data_dir>/telegram/`. No network traffic: that starts
    /// with [`Telegram::forward`] and [`Telegram::answer`].
    pub fn new(config: &TelegramConfig, data_dir: &Path) -> Result<Telegram> {
        let api = Api::new(config)?;
        let store = Store::open(data_dir)?;
        let mailbox = Mailbox::open(data_dir)?;
        let access = Access::open(data_dir)?;
        let (queue, queued) = mpsc::unbounded_channel();
        Ok(Telegram {
            inner: Arc::new(Inner {
                api,
                config_chat: config.chat,
                allow_env: config.allow.clone(),
                access,
                pending: Mutex::new(Pending::new()),
                forum: Mutex::new(None),
                tracked: Mutex::new(Vec::new()),
                give_up_after: config.give_up_after,
                store,
                mailbox,
                offered: Mutex::new(HashSet::new()),
                queue,
                queued: Mutex::new(Some(queued)),
                federated: OnceLock::new(),
            }),
        })
    }

    /// True when escalations can be forwarded (`IPC_TG_CHAT` is set, or a user was paired).
    pub fn forwards(&self) -> bool {
        self.inner.chat().is_some()
    }

    /// The chat escalations go to: `IPC_TG_CHAT`, else the chat of the latest pairing.
    pub fn chat(&self) -> Option<i64> {
        self.inner.chat()
    }

    /// Keeps `task` to be awaited by [`Telegram::join_tracked`] at the end of the session.
    pub fn track(&self, task: tokio::task::JoinHandle<()>) {
        let mut tracked = locked(&self.inner.tracked);
        tracked.retain(|t| !t.is_finished());
        tracked.push(task);
    }

    /// Waits for the tracked tasks (after the cancellation token was cancelled).
    pub async fn join_tracked(&self) {
        let tasks = std::mem::take(&mut *locked(&self.inner.tracked));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// The bot's `@username` (`getMe`), or why it could not be had.
    pub async fn bot_name(&self) -> std::result::Result<String, String> {
        #[derive(serde::Deserialize)]
        struct Me {
            #[serde(default)]
            username: String,
        }
        self.inner
            .api
            .call::<Me>("getMe", &serde_json::json!({}), None)
            .await
            .map(|me| format!("@{}", me.username))
            .map_err(|e| e.to_string())
    }

    /// Offers a message that appeared in the inbox, whoever wrote it. Never blocks: an
    /// escalation not seen before in this process is queued for [`Telegram::forward`];
    /// anything else is ignored. Returns true when it was queued.
    pub fn offer(&self, msg: &Arc<Message>) -> bool {
        if !is_escalation(&msg.front) || self.inner.chat().is_none() {
            return false;
        }
        if !locked(&self.inner.offered).insert(msg.id.clone()) {
            return false;
        }
        // The receiver lives as long as the forwarder; after it, nothing needs sending.
        self.inner.queue.send(msg.clone()).is_ok()
    }

    /// Offers every inbox message whose file name stamp is within the last 24 hours
    /// ([`CATCH_UP_WINDOW`]): at start, this finishes forwards that were pending when a
    /// server stopped, and sends escalations written while none ran. Blocks (reads files);
    /// cheap when repeated, as only new files are read. Returns how many were queued.
    pub fn catch_up(&self) -> Result<usize> {
        let window = TimeDelta::from_std(CATCH_UP_WINDOW).expect("24 hours fit a TimeDelta");
        let recent = self.inner.mailbox.recent(Local::now() - window)?;
        Ok(recent.iter().filter(|m| self.offer(m)).count())
    }

    /// Forwards queued escalations, one at a time, until `cancel`. Call it once (a second
    /// call returns at once). A forward cut short by `cancel` stays claimed by nobody: the
    /// next server to start takes it over.
    pub async fn forward(&self, cancel: CancellationToken) {
        let Some(mut queued) = locked(&self.inner.queued).take() else {
            tracing::warn!("the Telegram forwarder runs already");
            return;
        };
        if self.inner.chat().is_none() {
            tracing::warn!(
                "IPC_TG_TOKEN is set but IPC_TG_CHAT is not (and nobody is paired): escalations are not forwarded"
            );
        }
        loop {
            let msg = tokio::select! {
                () = cancel.cancelled() => return,
                msg = queued.recv() => match msg {
                    Some(msg) => msg,
                    None => return,
                },
            };
            // Offered only when a chat is known; read again, a pairing may have changed it.
            let Some(chat) = self.inner.chat() else {
                continue;
            };
            self.forward_one(chat, msg, &cancel).await;
        }
    }

    /// Runs blocking bookkeeping off the async threads.
    pub(super) async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> R + Send + 'static,
    ) -> Option<R> {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || work(&inner)).await {
            Ok(r) => Some(r),
            Err(err) => {
                tracing::warn!(%err, "Telegram bookkeeping failed");
                None
            }
        }
    }

    pub(super) fn forget(&self, id: &str) {
        locked(&self.inner.offered).remove(id);
    }

    /// Claims, renders and sends one escalation, then records the outcome beside its claim.
    async fn forward_one(&self, chat: i64, msg: Arc<Message>, cancel: &CancellationToken) {
        let Some(claim) = self.claim(&msg.id).await else {
            return;
        };
        let Some(mut claim) = self.claim_in_hub(&msg, claim, cancel).await else {
            return;
        };
        let thread = self.topic_for(&msg.front.from).await;
        // Cleared at every way out of here.
        let id = msg.id.clone();
        let _on_the_way = OnTheWay(&self.inner.store, &id);
        let parts = render(&msg);
        let n = parts.len();
        let mut run = Run::new(self.inner.give_up_after);
        for (i, part) in parts.iter().enumerate() {
            if claim.part_sent(i, n) {
                continue;
            }
            self.inner.store.sending(&msg.id, true);
            let sent = tokio::select! {
                () = cancel.cancelled() => return,
                sent = self.send_part(chat, thread, &msg.id, i, part, &mut run) => sent,
            };
            match sent {
                Ok(telegram_id) => {
                    let Some(back) = self.record_part(chat, &msg, claim, i, n, telegram_id).await
                    else {
                        return;
                    };
                    claim = back;
                }
                Err(err) => return self.give_up(msg, claim, n, &run, &err).await,
            }
        }
        // Then the files the message lists, each recorded like a part.
        let files = listed_files(&msg.body);
        let total = n + files.len();
        for (j, path) in files.iter().enumerate() {
            if claim.part_sent(n + j, total) {
                continue;
            }
            self.inner.store.sending(&msg.id, true);
            let sent = tokio::select! {
                () = cancel.cancelled() => return,
                sent = send_file(&self.inner.api, chat, thread, path) => sent,
            };
            let telegram_id = match sent {
                Ok(id) => id,
                Err(err) => {
                    tracing::warn!(msg_id = %msg.id, file = %path.display(), %err, "a file for the user was not sent");
                    let note = format!("A file could not be sent: {} ({err})", path.display());
                    self.inner
                        .api
                        .send(chat, thread, &note, false)
                        .await
                        .unwrap_or(0)
                }
            };
            let Some(back) = self
                .record_part(chat, &msg, claim, n + j, total, telegram_id)
                .await
            else {
                return;
            };
            claim = back;
        }
        let finished = self.blocking(move |_| claim.finish("sent")).await;
        if let Some(Err(err)) = finished {
            tracing::warn!(msg_id = %msg.id, %err, "recording the forward as done");
        }
        self.finish_in_hub(&msg.id, "sent").await;
        tracing::info!(msg_id = %msg.id, parts = n, tries = run.tries, ms = run.started.elapsed().as_millis() as u64, "forwarded to Telegram");
    }

    /// Claims `id` for this server; `None` when it is not this server's to send (sent
    /// already, another server sends it, or the claim failed: a later rescan tries again).
    async fn claim(&self, id: &str) -> Option<Claim> {
        let claimed = {
            let id = id.to_owned();
            self.blocking(move |inner| inner.store.claim(&id)).await
        };
        match claimed {
            Some(Ok(Claimed::Mine(claim))) => return Some(claim),
            Some(Ok(Claimed::Settled)) => {
                tracing::debug!(msg_id = %id, "already forwarded to Telegram");
                return None;
            }
            Some(Ok(Claimed::Busy)) => {
                // Another live server sends it. Forget it here, so that if that server dies
                // a later offer (a rescan) can take the claim over.
                tracing::debug!(msg_id = %id, "another server forwards it");
            }
            Some(Err(err)) => {
                tracing::warn!(msg_id = %id, err = %format!("{err:#}"), "cannot claim the escalation; a later rescan tries again");
            }
            None => {}
        }
        self.forget(id);
        None
    }

    /// Sends part `i` of escalation `id`, retrying until it is sent, refused, or the next
    /// try would come after `run`'s deadline. HTML that Telegram refuses is sent again as
    /// plain text. Returns the part's Telegram message id, or the last error.
    async fn send_part(
        &self,
        chat: i64,
        thread: Option<i64>,
        id: &str,
        i: usize,
        part: &Part,
        run: &mut Run,
    ) -> Result<i64, ApiError> {
        let mut html = true;
        loop {
            run.tries += 1;
            let text = if html { &part.html } else { &part.plain };
            let err = match self.inner.api.send(chat, thread, text, html).await {
                Ok(telegram_id) => return Ok(telegram_id),
                Err(err) if err.is_bad_html() && html => {
                    tracing::warn!(msg_id = %id, part = i + 1, %err, "Telegram refused the HTML; sending the part as plain text");
                    html = false;
                    continue;
                }
                Err(err) => err,
            };
            let delay = match &err {
                ApiError::Refused(..) => return Err(err),
                ApiError::RateLimited(wait) => *wait,
                ApiError::Network(_) | ApiError::Server(..) => {
                    run.failures += 1;
                    backoff(run.failures - 1)
                }
            };
            if Instant::now() + delay > run.deadline {
                return Err(err);
            }
            tracing::info!(msg_id = %id, %err, retry_in_ms = delay.as_millis() as u64, "forwarding to Telegram failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Writes down a sent part: in `replies.log` (so a reply to it finds the escalation) and
    /// in the claim. Returns the claim, or `None` when the bookkeeping thread failed.
    async fn record_part(
        &self,
        chat: i64,
        msg: &Message,
        mut claim: Claim,
        i: usize,
        n: usize,
        telegram_id: i64,
    ) -> Option<Claim> {
        let forwarded = Forwarded {
            chat,
            message_id: telegram_id,
            msg_id: msg.id.clone(),
            from: msg.front.from.clone(),
            subject: msg.front.subject.clone(),
        };
        let shared = forwarded.clone();
        let (claim, remembered, recorded) = self
            .blocking(move |inner| {
                let remembered = inner.store.remember(&forwarded);
                let recorded = claim.record_part(i, n, telegram_id);
                (claim, remembered, recorded)
            })
            .await?;
        if let Err(err) = remembered {
            tracing::warn!(msg_id = %msg.id, err = %format!("{err:#}"), "a reply to this part will not find its escalation");
        }
        if let Err(err) = recorded {
            tracing::warn!(msg_id = %msg.id, %err, "recording a sent part");
        }
        self.share_route(&shared).await;
        Some(claim)
    }

    /// Gives a forward up: writes `failed/<msg_id>.txt` and `done failed` in the claim.
    async fn give_up(&self, msg: Arc<Message>, claim: Claim, n: usize, run: &Run, err: &ApiError) {
        let id = msg.id.clone();
        let sent = claim.parts.iter().filter(|p| p.1 == n).count();
        let record = format!(
            "msg_id: {id}\nfrom: {}\nsubject: {}\ngave up: {} after {} tries over {} s\nparts sent: {sent} of {n}\nlast error: {err}\n",
            msg.front.from,
            message::one_line(&msg.front.subject),
            Local::now().format(message::TIME_FORMAT),
            run.tries,
            run.started.elapsed().as_secs(),
        );
        let outcome = self
            .blocking(move |inner| {
                let path = inner.store.record_failure(&msg.id, &record);
                (path, claim.finish("failed"))
            })
            .await;
        self.finish_in_hub(&id, "failed").await;
        let path = match outcome {
            Some((Ok(path), _)) => path.display().to_string(),
            Some((Err(e), _)) => format!("not recorded: {e:#}"),
            None => "not recorded".to_owned(),
        };
        tracing::warn!(msg_id = %id, %err, tries = run.tries, record = %path, "gave up forwarding an escalation to Telegram");
    }
}

impl Inner {
    /// The chat escalations and prompts go to and replies are read from: `IPC_TG_CHAT`,
    /// else the chat of the latest pairing.
    pub(super) fn chat(&self) -> Option<i64> {
        self.config_chat
            .or_else(|| self.access.paired().last().map(|u| u.chat_id))
    }

    /// Who may write and who may answer prompts, as the files say now.
    pub(super) fn allowed(&self) -> Allowed {
        Allowed::new(&self.allow_env, &self.access.paired(), self.chat())
    }
}

/// While held, a part of the escalation may be on its way; dropping it says none is.
struct OnTheWay<'a>(&'a Store, &'a str);

impl Drop for OnTheWay<'_> {
    fn drop(&mut self) {
        self.0.sending(self.1, false);
    }
}

impl Telegram {
    /// Removes the Telegram bookkeeping of escalations done with (claims with an outcome,
    /// `replies.log` lines) older than `older_than`, with the archive; at most once an hour
    /// per mailbox. Blocks: call it on a blocking thread.
    pub fn prune(&self, older_than: Duration) -> Result<Option<(usize, usize)>> {
        let stamp = self.inner.mailbox.root().join("telegram").join("pruned");
        let recent = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(3600));
        if recent {
            return Ok(None);
        }
        let _ = super::store::private()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&stamp);
        // Settled permission requests, verdicts nobody took (their session ended) and pairing
        // codes: a day is long past any of them.
        let day = Duration::from_secs(24 * 3600);
        let telegram = self.inner.mailbox.root().join("telegram");
        for dir in ["permissions", "verdicts", "pairing"] {
            for entry in std::fs::read_dir(telegram.join(dir))
                .into_iter()
                .flatten()
                .flatten()
            {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > day);
                if old {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let inbox = self.inner.mailbox.inbox().to_path_buf();
        let pruned = self
            .inner
            .store
            .prune(older_than, |id| inbox.join(format!("{id}.md")).exists())?;
        Ok(Some(pruned))
    }
}

/// One escalation's forward: when it started, when it is given up, the tries so far.
struct Run {
    started: Instant,
    deadline: Instant,
    tries: u32,
    /// Network and server errors so far: they set the backoff.
    failures: u32,
}

impl Run {
    fn new(give_up_after: Duration) -> Run {
        let started = Instant::now();
        Run {
            started,
            deadline: started + give_up_after,
            tries: 0,
            failures: 0,
        }
    }
}

impl fmt::Debug for Telegram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telegram")
            .field("chat", &self.inner.config_chat)
            .field("api_base", &self.inner.api.base)
            .field("token", &self.inner.api.token)
            .finish_non_exhaustive()
    }
}
