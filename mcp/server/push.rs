//! The push engine: keeps the index of this session's mail and its heartbeat current, tells
//! the subscribers of every message that arrives, and pushes new mail as channel events once
//! the client has sent `notifications/initialized` and the grace period has passed. When to
//! push is decided by [`super::rules`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Local;
use rmcp::model::{CustomNotification, JsonRpcMessage, ServerNotification};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::{Peer, RoleServer};
use t9_ipc::config::Config;
use t9_ipc::mailbox::Message;
use t9_ipc::session::Session;
use t9_ipc::watch::{self, Changed};
use tokio::sync::{Notify, watch as peer_watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::arrivals::{OwnSends, Subscribers};
use super::events;
use super::rules::{Batch, Gate, Plan};

/// The JSON-RPC method of a channel event.
pub const CHANNEL_METHOD: &str = "notifications/claude/channel";
/// Claude Code drops events that arrive too soon after `notifications/initialized`.
const PUSH_GRACE: Duration = Duration::from_millis(1000);
/// How often this session's heartbeat is refreshed (and the inbox rescanned, to catch an
/// event the watcher missed).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(60);

/// The client's peer, published by `on_initialized`.
pub type PeerRx = peer_watch::Receiver<Option<Peer<RoleServer>>>;

/// Where the client is, as the push loop sees it.
enum Link {
    /// Before `notifications/initialized`: file events are indexed, nothing is pushed.
    Before,
    /// Initialized; pushes begin at the instant given.
    Grace(Peer<RoleServer>, Instant),
    /// Pushes go out.
    Ready(Peer<RoleServer>),
    /// The server ended before `initialized`; the session is ending too.
    Gone,
}

impl Link {
    fn ready(&self) -> Option<&Peer<RoleServer>> {
        match self {
            Link::Ready(peer) => Some(peer),
            _ => None,
        }
    }

    fn grace_ends(&self) -> Option<Instant> {
        match self {
            Link::Grace(_, at) => Some(*at),
            _ => None,
        }
    }
}

/// How long after a failed look at the inbox (a mailbox made again without its `state/`, a
/// file system error) it is looked at again, doubled at each failure up to the heartbeat's
/// period: the changes that look had taken are in no other.
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// Replies kept for a push that looks only for answers; past this, the next push looks at
/// everything instead.
const REPLIES_KEPT: usize = 1024;

pub struct Pusher {
    session: Arc<Session>,
    gate: Gate,
    /// No file watcher could be started: rescan at each heartbeat instead.
    rescan_on_tick: bool,
    /// A push held back by the quiet window or the rate limit is due then.
    flush_at: Option<Instant>,
    /// The inbox changed too recently for its time to vouch for the index: look again then
    /// ([`watch::FolderTime`]), so that `t9_ipc_unread` can trust the index without a rescan.
    settle_at: Option<Instant>,
    /// The last look at the inbox failed: the next takes a whole scan, due after this long
    /// at the latest (`settle_at`).
    retry: Option<Duration>,
    /// Woken after every look at the inbox, for `t9_ipc_wait`.
    mail: Arc<Notify>,
    /// This session's unread mail changed since the last look for pushes.
    dirty: bool,
    /// Replies that arrived since the last look for pushes: while the limits let only
    /// answers go, they are all a push looks at.
    replies: Vec<Arc<Message>>,
    /// A whole scan found mail since the last look: look at everything that waits.
    whole_look: bool,
    /// Told of every new message file, whoever wrote it.
    subscribers: Subscribers,
    /// What this session sent: the answers to it go out at once.
    own: OwnSends,
    /// Channel events the transport has written whole (see [`Counted`]).
    written: Arc<AtomicU64>,
    /// What may be pushed, looked up on the blocking thread of the sync just before (one
    /// thread hop less for a message that arrives alone).
    prefetched: Option<Pending>,
}

/// Messages that may be pushed, with the look they were taken at ([`Session::pushing`]).
type Pending = (Vec<Arc<Message>>, u64);

impl Pusher {
    pub fn new(
        session: Arc<Session>,
        config: &Config,
        mail: Arc<Notify>,
        (subscribers, own): (Subscribers, OwnSends),
        written: Arc<AtomicU64>,
    ) -> Pusher {
        Pusher {
            session,
            gate: Gate::new(config.push_quiet, config.push_rate),
            rescan_on_tick: false,
            flush_at: None,
            settle_at: None,
            retry: None,
            mail,
            dirty: true,
            replies: Vec::new(),
            whole_look: true,
            subscribers,
            own,
            written,
            prefetched: None,
        }
    }

    pub async fn run(mut self, mut peer_rx: PeerRx, cancel: CancellationToken) {
        let (mut watcher, mut changes) = self.start_watcher().await;
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the entry was just written
        // Index the inbox now, so tools and waits have it before any event, and let the
        // subscribers sweep the recent files for what no server handled yet.
        self.sync(rescan(), false).await;
        let mut link = Link::Before;
        loop {
            let (due, settle) = (self.flush_at, self.settle_at);
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = peer_rx.changed(), if matches!(link, Link::Before) => {
                    link = match changed {
                        Err(_) => Link::Gone,
                        // Pushes begin after the grace period; file events are indexed meanwhile.
                        Ok(()) => match peer_rx.borrow_and_update().clone() {
                            Some(p) => Link::Grace(p, Instant::now() + PUSH_GRACE),
                            None => Link::Before,
                        },
                    };
                }
                () = sleep_until_due(link.grace_ends()) => {
                    if let Link::Grace(p, _) = std::mem::replace(&mut link, Link::Before) {
                        tracing::debug!("channel push enabled");
                        // Catch-up: what waited for this name while it was away. It
                        // does not count against the senders' minute.
                        self.push(&p).await;
                        self.gate.caught_up();
                        link = Link::Ready(p);
                    }
                }
                // A change or the end of a young inbox time: take what changed (perhaps
                // nothing) with the folder's time.
                Some(hinted) = async {
                    tokio::select! {
                        changed = changes.changed() => changed.map(|()| true),
                        () = sleep_until_due(settle) => Some(false),
                    }
                } => {
                    if hinted && changes.can_wait() {
                        // Only others' mail: taken once the burst it may begin is over.
                        self.settle_at.get_or_insert(Instant::now() + watch::SETTLE);
                        continue;
                    }
                    self.settle_at = None;
                    let changed = self.take(&changes);
                    if changed.rewatch {
                        self.rewatch(watcher.as_mut());
                    }
                    if !self.subscribers.everyone() && self.session.pass_over(&changed) {
                        // Only others' mail: nothing to read, and no push to look for.
                        if let Some(left) = changed.time.young() {
                            self.settle_at = Some(Instant::now() + left);
                        }
                        self.mail.notify_waiters();
                        continue;
                    }
                    // With pushes open, the sync also looks for what to push.
                    let look = link.ready().is_some()
                        && self.gate.closed_until(Instant::now()).is_none();
                    self.sync(changed, look).await;
                    // Only when this session's mail changed: looking costs as much as its
                    // unread mail, and most files in a busy inbox are someone else's.
                    if let Some(p) = link.ready().filter(|_| self.dirty) {
                        self.push(p).await;
                    }
                }
                () = sleep_until_due(due) => {
                    self.flush_at = None;
                    if let Some(p) = link.ready() {
                        self.push(p).await;
                    }
                }
                _ = tick.tick() => self.heartbeat(link.ready()).await,
            }
        }
    }

    /// What changed: a whole scan when the last look failed, which lost what it had taken.
    fn take(&self, changes: &watch::Changes) -> Changed {
        let mut changed = changes.take();
        changed.rescan |= self.retry.is_some();
        changed
    }

    /// Starts the file watcher. Started here, not before `initialize`: setting up inotify
    /// takes milliseconds that the client would otherwise wait for. The index is built after
    /// it, so no file falls between the two.
    async fn start_watcher(&mut self) -> (Option<watch::Watcher>, watch::Changes) {
        let inbox = self.session.mailbox().inbox().to_path_buf();
        // Others' mail can wait, unless a subscriber reads every new file.
        let s = self.session.clone();
        let can_wait = (!self.subscribers.everyone())
            .then(|| Arc::new(move |stem: &str| s.can_wait(stem)) as watch::CanWait);
        let watching = move || watch::watch_messages(&inbox, can_wait);
        let err = match tokio::task::spawn_blocking(watching).await {
            Ok(Ok((watcher, changes))) => return (Some(watcher), changes),
            Ok(Err(err)) => format!("{err:#}"),
            Err(err) => err.to_string(),
        };
        // E.g. the inotify limits are reached. Pull still works, and the heartbeat's rescan
        // still pushes, only later: degrade rather than refuse to start.
        tracing::warn!(%err, "no file watcher; the inbox is rescanned every 60 s instead");
        self.rescan_on_tick = true;
        (None, watch::Changes::none())
    }

    /// Watches `inbox/` again after it was removed and perhaps made again.
    fn rewatch(&self, watcher: Option<&mut watch::Watcher>) {
        let inbox = self.session.mailbox().inbox();
        match watcher.map(|w| w.rewatch(inbox)) {
            Some(Ok(())) => tracing::info!(dir = %inbox.display(), "watching the inbox again"),
            Some(Err(err)) => tracing::warn!(err = %format!("{err:#}"), "the inbox is gone"),
            None => {}
        }
    }

    /// Refreshes the heartbeat; without a watcher, rescans and pushes too.
    async fn heartbeat(&mut self, peer: Option<&Peer<RoleServer>>) {
        let s = self.session.clone();
        match tokio::task::spawn_blocking(move || s.refresh(Local::now())).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(err = %format!("{err:#}"), "refreshing the heartbeat"),
            Err(err) => tracing::warn!(%err, "refreshing the heartbeat"),
        }
        if self.rescan_on_tick {
            self.sync(rescan(), false).await;
            if let Some(p) = peer {
                self.push(p).await;
            }
        } else {
            self.subscribers.rescan(); // what the watcher missed
        }
    }

    /// Updates the index from what changed, then wakes the waits. With `look`, when this
    /// session's mail changed, also finds what may be pushed, for the push that follows.
    async fn sync(&mut self, changed: Changed, look: bool) {
        let rescan = changed.rescan;
        let s = self.session.clone();
        let everyone = self.subscribers.everyone();
        let synced = tokio::task::spawn_blocking(move || {
            let now = Local::now();
            let synced = s.sync(changed, everyone, now)?;
            // A failed look is looked at again by the push itself.
            let pending = (look && synced.mine_changed)
                .then(|| s.pending_pushes(now).ok())
                .flatten();
            Ok::<_, t9_ipc::Error>((synced, pending))
        })
        .await;
        self.prefetched = None;
        match synced {
            Ok(Ok((synced, pending))) => {
                if rescan {
                    self.retry = None;
                }
                self.prefetched = pending;
                if let Some(left) = synced.young {
                    self.settle_at.get_or_insert(Instant::now() + left);
                }
                for msg in &synced.arrived {
                    self.subscribers.arrived(msg);
                }
                // The replies among them, for a push that looks only for answers.
                let replies = synced.arrived.iter().filter(|m| m.front.reply_to.is_some());
                self.replies.extend(replies.cloned());
                if self.replies.len() > REPLIES_KEPT {
                    // No push for a long while (push off): a whole look instead, later.
                    self.replies.clear();
                    self.whole_look = true;
                }
                self.dirty |= synced.mine_changed;
            }
            Ok(Err(err)) => self.failed(&format!("{err:#}")),
            Err(err) => self.failed(&err.to_string()),
        }
        if rescan {
            // What the scan found is in no arrival: the next push looks at everything.
            self.whole_look = true;
            // After the index's listing, not before: a file that lands between the two is
            // in the subscribers' sweep, or is new to the index at its file event. Either
            // way it is offered.
            self.subscribers.rescan();
        }
        self.mail.notify_waiters();
    }

    /// A look at the inbox failed: the files it took are looked at again by a whole scan,
    /// soon, then less often while it keeps failing.
    fn failed(&mut self, err: &str) {
        let wait = self
            .retry
            .map_or(RETRY_FIRST, |w| (w * 2).min(HEARTBEAT_EVERY));
        tracing::warn!(%err, again_in = ?wait, "reading the inbox");
        self.retry = Some(wait);
        let at = Instant::now() + wait;
        self.settle_at = Some(self.settle_at.map_or(at, |s| s.min(at)));
    }

    /// Pushes what is pending, unless the quiet window or the rate limit says later.
    async fn push(&mut self, peer: &Peer<RoleServer>) {
        self.dirty = false;
        for id in self.own.take() {
            self.gate.asked(id);
        }
        let replies = std::mem::take(&mut self.replies);
        let whole_look = std::mem::take(&mut self.whole_look);
        // Taken whatever this push does: it was looked up for this push only.
        let prefetched = self.prefetched.take();
        let now = Instant::now();
        let s = self.session.clone();
        let pending = match self.gate.closed_until(now).filter(|_| !whole_look) {
            // Only answers can go until the limits free: look at the replies that just
            // arrived, not at everything that waits (a flood would make each look cost
            // what the flood is).
            Some(until) => {
                self.flush_at = Some(self.flush_at.map_or(until, |at| at.min(until)));
                let answers: Vec<_> = replies
                    .into_iter()
                    .filter(|m| self.gate.is_answer(m))
                    .collect();
                if answers.is_empty() {
                    return;
                }
                tokio::task::spawn_blocking(move || s.pending_among(&answers, Local::now())).await
            }
            None => match prefetched {
                Some(pending) => Ok(Ok(pending)),
                None => tokio::task::spawn_blocking(move || s.pending_pushes(Local::now())).await,
            },
        };
        let (pending, looked) = match pending {
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
        match self.gate.plan(pending, now, Local::now()) {
            Plan::Hold { retry_at } => self.flush_at = retry_at.or(self.flush_at),
            Plan::Send(batch) => self.send(peer, batch, now, looked).await,
        }
    }

    /// Sends one event, then records it: exactly once when the session ends normally, at
    /// least once (never lost) when the process dies between the two.
    async fn send(&mut self, peer: &Peer<RoleServer>, batch: Batch, now: Instant, looked: u64) {
        let params = events::params(&batch, &self.session.name(), self.session.mailbox());
        let ids =
            |msgs: &[Arc<Message>]| -> Vec<String> { msgs.iter().map(|m| m.id.clone()).collect() };
        let (pushed, listed) = (ids(&batch.whole), ids(&batch.named));
        if !self.session.pushing(&pushed, looked) {
            // The model read mail meanwhile (an unread page, a wait): plan again, at once,
            // from a whole look, without it.
            self.whole_look = true;
            self.flush_at = Some(Instant::now());
            return;
        }
        let event = CustomNotification::new(CHANNEL_METHOD, Some(params));
        // One event at a time: if the count moved, this event was written whole.
        let before = self.written.load(Ordering::SeqCst);
        if let Err(err) = peer
            .send_notification(ServerNotification::CustomNotification(event))
            .await
        {
            // When stdin closes, rmcp answers "transport closed" even for an event it had
            // already written: ask the transport itself.
            if self.written.load(Ordering::SeqCst) == before {
                self.session.push_failed(&pushed);
                tracing::warn!(%err, "push failed; the messages stay unread");
                return;
            }
            tracing::debug!(%err, "the event was written before the transport closed");
        }
        // Recorded after the event left: a crash in between pushes it again at the next
        // start (at least once), never loses it.
        let s = self.session.clone();
        let recorded = tokio::task::spawn_blocking(move || {
            s.mark_pushed(&pushed)?;
            s.mark_listed(&listed)
        })
        .await;
        if let Ok(Err(err)) = recorded {
            tracing::warn!(err = %format!("{err:#}"), "recording pushed messages");
        }
        // One line for a digest at the default level, not one a message: a digest of a
        // flood names thousands, and writing their lines held up the tool calls meanwhile.
        if let (Some(first), Some(last)) = (batch.named.first(), batch.named.last()) {
            let count = batch.named.len();
            tracing::info!(count, first = %first.id, last = %last.id, "named in an event");
        }
        for msg in &batch.named {
            tracing::debug!(msg_id = %msg.id, from = %msg.front.from, "named in an event");
        }
        for msg in &batch.whole {
            tracing::info!(msg_id = %msg.id, from = %msg.front.from, "pushed");
        }
        self.gate.sent(&batch, now);
    }
}

/// A transport that counts the channel events it has written whole: rmcp reports a write
/// that finished just before stdin closed as failed, and a push must be recorded exactly
/// when its event went out.
pub struct Counted<T> {
    inner: T,
    written: Arc<AtomicU64>,
}

impl<T> Counted<T> {
    pub fn new(inner: T, written: Arc<AtomicU64>) -> Counted<T> {
        Counted { inner, written }
    }
}

impl<T: Transport<RoleServer>> Transport<RoleServer> for Counted<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let event = matches!(&item, JsonRpcMessage::Notification(n)
            if matches!(&n.notification, ServerNotification::CustomNotification(c)
                if c.method == CHANNEL_METHOD));
        let write = self.inner.send(item);
        let written = self.written.clone();
        async move {
            let result = write.await;
            if event && result.is_ok() {
                written.fetch_add(1, Ordering::SeqCst);
            }
            result
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<RxJsonRpcMessage<RoleServer>>> + Send {
        self.inner.receive()
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

/// A look at the whole inbox.
fn rescan() -> Changed {
    Changed {
        rescan: true,
        ..Changed::default()
    }
}

async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
