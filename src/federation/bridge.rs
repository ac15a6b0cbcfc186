//! The bridge: one task per machine and mailbox that carries message files between this
//! machine's `inbox/` and the JetStream stream [`STREAM`](super::STREAM).
//!
//! - Outbound: every `*.md` that appears in `inbox/` and did not arrive from another machine
//!   is signed and published on `t9ipc.msg.<machine>` with its id as `Nats-Msg-Id`, then
//!   noted in `published.log`. Driven by file events and one scan at start; while NATS is
//!   unreachable the ids wait in memory and go out when the connection comes back.
//! - Inbound ([`super::inbound`]): a durable pull consumer `t9ipc-<machine>` streams every
//!   machine's messages; each is checked (signature, pinned key) and written into `inbox/`
//!   byte for byte, and acknowledged only after that.
//!
//! Every file operation runs on a blocking thread; the async side only waits for NATS, file
//! events and the cancellation token.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use chrono::Local;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::hub::{Claim, claim_machine, ensure_stream, options, redact_url};
use super::keys::{MachineKey, Pins};
use super::ledger::Ledger;
use super::wire::{self, Envelope};
use super::{Paths, Settings, subject_of};
use crate::error::{Error, Result};
use crate::mailbox::Mailbox;

/// The longest wait between two tries while NATS refuses or is away.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What both directions share (and the read marks' tasks, [`super::marks`]).
pub(super) struct Shared {
    pub(super) machine: String,
    pub(super) mailbox: Mailbox,
    pub(super) paths: Paths,
    pub(super) key: MachineKey,
    ledger: Mutex<Ledger>,
    pins: Mutex<Pins>,
    pub(super) marks: super::marks::Queue,
}

impl Shared {
    pub(super) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // Plain data; a panic elsewhere leaves it usable.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn pins(&self) -> MutexGuard<'_, Pins> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs the bridge for the mailbox at `data_dir` until `cancel` fires. The caller holds the
/// election lock. Returns an error only for what cannot be retried: the mailbox or the
/// federation folder cannot be opened, the key cannot be read, the credentials file cannot
/// be read.
pub async fn run(settings: Settings, data_dir: &Path, cancel: CancellationToken) -> Result<()> {
    let paths = Paths::new(data_dir);
    paths.create()?;
    let shared = Arc::new(Shared {
        machine: settings.machine.clone(),
        mailbox: Mailbox::open(data_dir)?,
        key: MachineKey::load_or_create(&paths.key())?,
        ledger: Mutex::new(Ledger::open(&paths.published(), &paths.arrived())?),
        pins: Mutex::new(Pins::load(&paths.known_machines())?),
        marks: super::marks::Queue::load(&paths.marks_offsets()),
        paths,
    });
    // Watch before the first scan, so nothing written in between is missed.
    let (_watcher, changes) = crate::watch::watch_messages(shared.mailbox.inbox(), None)?;

    let (connected_tx, connected) = watch::channel(false);
    let client = connect(&settings, connected_tx).await?;
    let js = jetstream::new(client.clone());
    tracing::info!(
        machine = %shared.machine,
        key = %wire::hex(shared.key.public().as_bytes()),
        url = %redact_url(&settings.url),
        "federation bridge started"
    );

    // This machine's name is this mailbox's: claimed in the hub before anything crosses.
    if !claim_name(&shared, &js, &connected, &cancel).await? {
        return Ok(());
    }

    let presence = tokio::spawn(presence(
        shared.clone(),
        js.clone(),
        connected.clone(),
        cancel.child_token(),
    ));
    let inbound = tokio::spawn(super::inbound::inbound(
        shared.clone(),
        js.clone(),
        connected.clone(),
        cancel.child_token(),
    ));
    let compaction = tokio::spawn(compact_daily(shared.clone(), cancel.child_token()));
    let marks = tokio::spawn(super::marks::run(
        shared.clone(),
        js.clone(),
        connected.clone(),
        cancel.child_token(),
    ));
    outbound(shared, js, changes, connected.clone(), cancel.clone()).await;
    cancel.cancel();
    // Each task ends at `cancel`, but one may be waiting on a request to a hub that has just
    // gone away (a presence put, a marks ack): they get a moment, then are stopped where
    // they are. What one did not finish is done again by the next bridge (nothing is noted
    // before the hub acknowledged it, and nothing is acknowledged before it is on disk).
    let deadline = tokio::time::Instant::now() + TASKS_STOP;
    for mut task in [inbound, presence, compaction, marks] {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            tracing::debug!("federation: a bridge task was stopped where it waited");
            task.abort();
        }
    }
    // Acks and publishes already handed to the client go out before the end; while the hub
    // is unreachable they cannot, and what they carry comes again.
    if *connected.borrow() {
        let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    }
    tracing::info!("federation bridge stopped");
    Ok(())
}

/// How long the bridge's tasks get to end after `cancel`.
const TASKS_STOP: Duration = Duration::from_secs(2);

/// Claims this machine's name in the hub, trying again while the hub does not answer: true
/// once it is ours, false at `cancel`, an error when another mailbox holds it.
async fn claim_name(
    shared: &Shared,
    js: &jetstream::Context,
    connected: &watch::Receiver<bool>,
    cancel: &CancellationToken,
) -> Result<bool> {
    let mut backoff = Duration::from_millis(100);
    loop {
        // A hub that does not answer holds the claim for the request's whole timeout: the
        // session's end must not wait for it.
        let claimed = tokio::select! {
            () = cancel.cancelled() => return Ok(false),
            claimed = claim_machine(js, &shared.machine, &shared.key) => claimed,
        };
        match claimed {
            Ok(Claim::Ours) => return Ok(true),
            Ok(Claim::Taken(other)) => {
                return Err(Error::Refused(format!(
                    "the machine name {:?} is held in the hub by another mailbox (key {other}); \
                     give this mailbox its own name with IPC_MACHINE",
                    shared.machine
                )));
            }
            Err(err) => {
                tracing::warn!(%err, "federation: cannot claim this machine's name yet; will try again");
                pause(&mut connected.clone(), &mut backoff, cancel).await;
                if cancel.is_cancelled() {
                    return Ok(false);
                }
            }
        }
    }
}

/// A client that connects (and reconnects) in the background; `connected` follows its state.
async fn connect(
    settings: &Settings,
    connected: watch::Sender<bool>,
) -> Result<async_nats::Client> {
    let connected = Arc::new(connected);
    let options = options(settings)
        .await?
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let connected = connected.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("NATS connected");
                        connected.send_replace(true);
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(
                            "NATS unreachable; local mail keeps working, crossing waits"
                        );
                        connected.send_replace(false);
                    }
                    // Refused credentials or permissions: a person must act.
                    async_nats::Event::ServerError(err) => {
                        tracing::warn!(%err, "NATS server error");
                    }
                    async_nats::Event::ClientError(err)
                        if err.to_string().contains("authorization") =>
                    {
                        tracing::warn!(%err, "NATS refused this machine's credentials");
                    }
                    // Failed reconnects while the hub is away: one line a try, for debugging.
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        });
    options
        .connect(settings.url.as_str())
        .await
        .map_err(|e| Error::Refused(format!("IPC_NATS_URL {}: {e}", redact_url(&settings.url))))
}

/// Waits until `connected` says so (or `cancel`), then up to `backoff`; doubles `backoff`.
pub(super) async fn pause(
    connected: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
    cancel: &CancellationToken,
) {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    let online = tokio::select! {
        () = cancel.cancelled() => false,
        // Also when the client is gone (an error): then only the sleep paces the tries.
        got = connected.wait_for(|c| *c) => {
            drop(got);
            true
        }
    };
    if online {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Compacts `published.log` and `arrived.log` ([`Ledger::compact`]) at start and once a
/// day: a relay may run for months.
async fn compact_daily(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut daily = tokio::time::interval(Duration::from_secs(24 * 3600));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = daily.tick() => {}
        }
        let shared = shared.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut ledger = shared.ledger();
            ledger.compact(Local::now(), |id| shared.mailbox.exists(id))
        })
        .await;
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(%err, "federation: compacting the logs"),
            Err(err) => tracing::warn!(%err, "federation: compacting the logs"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Presence

/// Keeps this machine's live sessions in the presence bucket: at start, whenever
/// `heartbeats.json` is replaced, after a reconnect, and at least every
/// [`presence::REFRESH`] (the entries' time to live is three of those).
async fn presence(
    shared: Arc<Shared>,
    js: jetstream::Context,
    mut connected: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    use super::presence;
    let root = shared.mailbox.root().to_path_buf();
    let (_watcher, mut beats) = match presence::watch_heartbeats(&root) {
        Ok((watcher, beats)) => (Some(watcher), beats),
        Err(err) => {
            tracing::warn!(%err, "federation: not watching heartbeats.json; presence follows the refresh only");
            (None, tokio::sync::mpsc::channel(1).1)
        }
    };
    let mut refresh = tokio::time::interval(presence::REFRESH);
    let mut store = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = refresh.tick() => {}
            Some(()) = beats.recv() => {}
            res = connected.changed() => {
                if res.is_err() {
                    return;
                }
            }
        }
        if !*connected.borrow_and_update() {
            continue;
        }
        if store.is_none() {
            match presence::buckets(&js).await {
                Ok(s) => store = Some(s),
                Err(err) => {
                    tracing::warn!(%err, "federation: presence");
                    continue;
                }
            }
        }
        let Some(s) = &store else { continue };
        let live = presence::live(&root).await;
        // A put in flight when the session ends (or the hub goes) is not waited for.
        let published = tokio::select! {
            () = cancel.cancelled() => break,
            published = presence::publish(s, &shared.machine, &live) => published,
        };
        match published {
            Ok(n) => tracing::debug!(sessions = n, "presence published"),
            Err(err) => tracing::warn!(%err, "federation: presence"),
        }
    }
    // The last word: this bridge stops (a standby one, if any, speaks right after). Not
    // while the hub is unreachable: the session's end would wait for nothing.
    if let Some(s) = store.as_ref().filter(|_| *connected.borrow()) {
        let said = tokio::time::timeout(
            Duration::from_secs(2),
            presence::say(s, &shared.machine, true),
        )
        .await;
        if !matches!(said, Ok(Ok(()))) {
            tracing::debug!("federation: could not say that this bridge stops");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Outbound

async fn outbound(
    shared: Arc<Shared>,
    js: jetstream::Context,
    mut changes: crate::watch::Changes,
    mut connected: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let mut pending = match scan(&shared).await {
        Ok(ids) => ids,
        Err(err) => {
            tracing::error!(%err, "federation: listing the inbox; only new files are published");
            BTreeSet::new()
        }
    };
    let mut stream_ready = false;
    let mut backoff = Duration::from_millis(100);
    // Set while a failed publish waits for its next try.
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        if !pending.is_empty() && retry_at.is_none() && *connected.borrow() {
            match publish_pending(&shared, &js, &connected, &mut pending, &mut stream_ready).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(err) => {
                    tracing::warn!(%err, waiting = pending.len(), "federation: publishing failed; will try again");
                    retry_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            hint = changes.changed() => {
                if hint.is_none() {
                    tracing::error!("federation: the inbox watcher stopped; the bridge stops");
                    break;
                }
                let changed = changes.take();
                let new = if changed.rescan {
                    scan(&shared).await.unwrap_or_else(|err| {
                        tracing::warn!(%err, "federation: rescanning the inbox");
                        BTreeSet::new()
                    })
                } else {
                    changed
                        .files
                        .iter()
                        .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
                        .collect()
                };
                // Sealing, on one blocking thread with the reading of the files, leaves out
                // what is not this machine's to publish.
                pending.extend(new);
            }
            res = connected.changed() => {
                if res.is_err() {
                    break;
                }
                if *connected.borrow_and_update() {
                    // Back online: try now, and check the stream again (a new server may
                    // have lost it).
                    retry_at = None;
                    stream_ready = false;
                }
            }
            () = retry => retry_at = None,
        }
    }
}

/// True for an id this machine should publish: not yet published, not arrived from
/// elsewhere, and fit to cross.
pub(super) fn ours_to_publish(ledger: &Ledger, id: &str) -> bool {
    !ledger.is_published(id) && !ledger.came_from_elsewhere(id) && wire::id_may_cross(id)
}

/// Every id in `inbox/` this machine has yet to publish. A file the ledger does not know
/// but that is marked as another machine's ([`crate::mailbox::arrived_from`]) arrived
/// before a crash of the machine took its unflushed line in `arrived.log`: the line is
/// written again and the file is not published.
async fn scan(shared: &Arc<Shared>) -> Result<BTreeSet<String>> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let ids = shared.mailbox.ids()?;
        let mut ledger = shared.ledger();
        let mut ours = BTreeSet::new();
        let mut arrived = Vec::new();
        for id in ids.into_iter().filter(|id| ours_to_publish(&ledger, id)) {
            match crate::mailbox::arrived_from(shared.mailbox.inbox(), &id) {
                Some(machine) if machine != shared.machine => arrived.push((id, machine)),
                _ => {
                    ours.insert(id);
                }
            }
        }
        if !arrived.is_empty() {
            let noted = arrived.iter().map(|(id, m)| (id.as_str(), m.as_str()));
            ledger.record_arriving(noted, true)?;
            ledger.record_arrived(arrived.iter().map(|(id, _)| id.as_str()))?;
            tracing::warn!(
                files = arrived.len(),
                "federation: arrivals missing from arrived.log (a crash of the machine) were noted again from their files"
            );
        }
        Ok(ours)
    })
    .await
    .map_err(|e| Error::Refused(format!("scanning the inbox: {e}")))?
}

/// Publishes the waiting ids, oldest first, each acknowledged by the stream before it is
/// noted. Up to [`PUBLISH_AT_ONCE`] go out before their acknowledgements are awaited (in
/// order), so a backlog costs one round trip to the hub per batch, not per message. Stops at
/// the first failure: what was acknowledged is noted, the rest waits for the next try (and a
/// second copy that reaches the stream is dropped by its de-duplication, or by the receivers).
async fn publish_pending(
    shared: &Arc<Shared>,
    js: &jetstream::Context,
    connected: &watch::Receiver<bool>,
    pending: &mut BTreeSet<String>,
    stream_ready: &mut bool,
) -> Result<(), String> {
    if !*stream_ready {
        ensure_stream(js).await?;
        *stream_ready = true;
    }
    while !pending.is_empty() {
        let batch: Vec<String> = pending.iter().take(PUBLISH_AT_ONCE).cloned().collect();
        let mut acks = Vec::new();
        let mut sent = Ok(());
        for (id, envelope) in seal(shared, batch).await? {
            let Some(envelope) = envelope else {
                pending.remove(&id);
                continue;
            };
            let mut headers = HeaderMap::new();
            for (name, value) in envelope.headers() {
                headers.insert(name, value.as_str());
            }
            let subject = subject_of(&shared.machine);
            match js
                .publish_with_headers(subject, headers, envelope.bytes.into())
                .await
            {
                Ok(acked) => acks.push((id, acked)),
                Err(e) => {
                    sent = Err(format!("publishing {id}: {e}"));
                    break;
                }
            }
        }
        let mut done = Vec::new();
        for (id, acked) in acks {
            // A connection that drops takes the ack with it: try again after the reconnect
            // rather than wait out the ack's timeout (the stream drops a second copy).
            let mut link = connected.clone();
            let ack = tokio::select! {
                ack = acked => ack.map_err(|e| format!("publishing {id}: {e}")),
                _ = link.wait_for(|c| !*c) => Err(format!("publishing {id}: the connection dropped before the stream acknowledged it")),
            };
            match ack {
                Ok(ack) => {
                    tracing::debug!(msg_id = %id, seq = ack.sequence, duplicate = ack.duplicate, "published");
                    done.push(id);
                }
                Err(err) => {
                    sent = sent.and(Err(err));
                    break;
                }
            }
        }
        note_published(shared, &done).await?;
        for id in &done {
            pending.remove(id);
        }
        sent?;
    }
    Ok(())
}

/// Publishes sent before their acknowledgements are awaited, at most.
const PUBLISH_AT_ONCE: usize = 64;

/// Notes `ids` as published, on a blocking thread.
async fn note_published(shared: &Arc<Shared>, ids: &[String]) -> Result<(), String> {
    if ids.is_empty() {
        return Ok(());
    }
    let (shared, ids) = (shared.clone(), ids.to_vec());
    let noted = tokio::task::spawn_blocking(move || {
        let mut ledger = shared.ledger();
        let all: Vec<&str> = ids.iter().map(String::as_str).collect();
        if let Err(err) = ledger.record_published_all(&all) {
            // The stream has them; a later restart publishes them again and the stream's
            // de-duplication or the receivers' check drops the second copies.
            tracing::error!(%err, count = ids.len(), first = %ids[0], "federation: noting publishes");
        }
        drop(ledger);
        shared.marks.released(&shared);
    })
    .await;
    noted.map_err(|e| e.to_string())
}

/// The signed envelope of each `inbox/<id>.md`, or `None` when there is nothing to publish:
/// the file is gone, is no good message (warned about by the mailbox), or is still being
/// written (its writer's close brings it back).
async fn seal(
    shared: &Arc<Shared>,
    ids: Vec<String>,
) -> Result<Vec<(String, Option<Envelope>)>, String> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        ids.into_iter()
            .map(|id| {
                let envelope = seal_one(&shared, &id);
                (id, envelope)
            })
            .collect()
    })
    .await
    .map_err(|e| format!("sealing: {e}"))
}

fn seal_one(shared: &Shared, id: &str) -> Option<Envelope> {
    {
        let ledger = shared.ledger();
        if !ours_to_publish(&ledger, id) {
            return None;
        }
    }
    // Written by another process as an arrival (`relay --trust` releasing kept-aside mail
    // notes it in arrived.log, which this bridge read at its start): not ours.
    if super::origins::machine_of(shared.mailbox.root(), id).is_some() {
        return None;
    }
    // Read once: checked as a message and published byte for byte.
    let bytes = shared.mailbox.message_bytes(id)?;
    Some(Envelope::seal(&shared.key, &shared.machine, id, bytes))
}
