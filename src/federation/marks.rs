//! Read state across machines: the `read` and `pushed` marks of mail that crossed, carried
//! from the state log where a session made them to the same name's log on every other
//! machine, through the stream [`MARKS_STREAM`].
//!
//! - Outbound: file events on `state/` say which logs grew; the lines after how far each was
//!   read (`marks.offsets`) are taken, the marks of ids that crossed (in `published.log` or
//!   `arrived.log`) published on `t9ipc.state.<machine>`, signed with the machine key. The
//!   offsets are saved once everything read is acknowledged by the stream.
//! - Inbound: a durable consumer `t9ipc-<machine>` on [`MARKS_STREAM`]; each batch's subject,
//!   signature and pinned key are checked, and the marks of ids on this machine's disk that
//!   are for that name are appended to its log (those it lacks), under the log's lock, after
//!   taking the lines appended since the last look: so what was carried in is never carried
//!   back out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use chrono::{DateTime, Local, SecondsFormat};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::bridge::{Shared, ours_to_publish};
use super::hub::{ACK_WAIT, MAX_ACK_PENDING, STREAM_MAX_AGE, consumer_name};
use super::inbound::Taken;
use super::keys::{self, MachineKey, Pin};
use super::wire;
use crate::error::Result;
use crate::mailbox::{CarriedMark, StateTail};

/// The stream of read marks (its own, so message counts and consumers stay the messages').
pub const MARKS_STREAM: &str = "T9IPC_MARKS";
/// The subject of machine `m`'s marks is `t9ipc.state.<m>`.
pub const MARKS_PREFIX: &str = "t9ipc.state";
/// What a batch's signature names in place of a message id. No message id can be this (it
/// holds a `/`), so a batch's signature never passes for a message's, nor the reverse.
const SIGNED_AS: &str = "/marks";
/// At most this many marks in one NATS message (well under the hub's payload limit).
const MAX_BATCH: usize = 500;

/// The subject machine `machine` publishes its marks on.
pub fn marks_subject(machine: &str) -> String {
    format!("{MARKS_PREFIX}.{machine}")
}

/// One name's marks as they cross: the JSON payload of one NATS message.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Batch {
    pub name: String,
    /// When the name first read mail on its machine (RFC 3339): a log started elsewhere
    /// starts with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<String>,
    pub marks: Vec<WireMark>,
}

/// One mark in a [`Batch`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireMark {
    /// `read` or `pushed`.
    pub mark: String,
    pub id: String,
    /// When it was made (RFC 3339), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

fn rfc3339(t: DateTime<Local>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, false)
}

fn parse_time(text: Option<&str>) -> Option<DateTime<Local>> {
    Some(
        DateTime::parse_from_rfc3339(text?)
            .ok()?
            .with_timezone(&Local),
    )
}

impl Batch {
    fn add(&mut self, tail: StateTail) {
        if self.joined.is_none() {
            self.joined = tail.joined.map(rfc3339);
        }
        self.marks.extend(tail.marks.into_iter().map(|m| WireMark {
            mark: if m.read { "read" } else { "pushed" }.to_owned(),
            id: m.id,
            at: m.at.map(rfc3339),
        }));
    }

    /// The marks as the mailbox takes them; words it does not know and ids that cannot
    /// cross are left out.
    fn carried(&self) -> Vec<CarriedMark> {
        self.marks
            .iter()
            .filter(|m| wire::id_may_cross(&m.id))
            .filter_map(|m| {
                let read = match m.mark.as_str() {
                    "read" => true,
                    "pushed" => false,
                    _ => return None,
                };
                let at = parse_time(m.at.as_deref());
                Some(CarriedMark {
                    read,
                    id: m.id.clone(),
                    at,
                })
            })
            .collect()
    }
}

/// The headers that sign `payload` as machine `machine`'s marks.
pub fn seal(key: &MachineKey, machine: &str, payload: &[u8]) -> [(&'static str, String); 3] {
    let signature = key.sign(machine, SIGNED_AS, payload);
    [
        (wire::H_MACHINE, machine.to_owned()),
        (wire::H_KEY, wire::hex(key.public().as_bytes())),
        (wire::H_SIG, wire::hex(&signature.to_bytes())),
    ]
}

/// The machine and key of a batch that came on `subject`, once its subject is the claimed
/// machine's and the signature covers the payload; else why not.
pub fn open(
    header: impl Fn(&str) -> Option<String>,
    subject: &str,
    payload: &[u8],
) -> Result<(String, VerifyingKey), String> {
    let machine = header(wire::H_MACHINE).ok_or("no T9-Machine header")?;
    super::check_machine(&machine).map_err(|e| format!("T9-Machine: {e}"))?;
    if subject != marks_subject(&machine) {
        return Err(format!("published on {subject}, not its machine's subject"));
    }
    let key = header(wire::H_KEY)
        .and_then(|k| wire::key_from_hex(&k))
        .ok_or("no Ed25519 key in T9-Key")?;
    let signature = header(wire::H_SIG)
        .and_then(|s| wire::from_hex(&s))
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))
        .ok_or("no signature in T9-Sig")?;
    if !keys::verify(&key, &signature, &machine, SIGNED_AS, payload) {
        return Err("the signature does not match".to_owned());
    }
    Ok((machine, key))
}

// ---------------------------------------------------------------------------------------
// What was read and what waits

/// How far each state log was read, and the marks that wait to be published.
pub(super) struct Queue {
    inner: Mutex<Inner>,
    /// Rung when inbound took in local marks to publish.
    wake: Notify,
}

struct Inner {
    /// `marks.offsets`: `<offset> <name>` a line.
    path: PathBuf,
    read_to: BTreeMap<String, u64>,
    saved: BTreeMap<String, u64>,
    pending: BTreeMap<String, Batch>,
    /// Marks of mail this machine has yet to publish (read while the hub was away, or in the
    /// moment before the bridge published it): they wait for their message
    /// ([`Queue::released`]).
    held: BTreeMap<String, Batch>,
}

impl Queue {
    /// The offsets saved at `path` (none when missing; lines that do not read are skipped).
    pub(super) fn load(path: &Path) -> Queue {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let saved: BTreeMap<String, u64> = text
            .lines()
            .filter_map(|l| {
                let (at, name) = l.split_once(' ')?;
                Some((name.to_owned(), at.parse().ok()?))
            })
            .collect();
        Queue {
            inner: Mutex::new(Inner {
                path: path.to_owned(),
                read_to: saved.clone(),
                saved,
                pending: BTreeMap::new(),
                held: BTreeMap::new(),
            }),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data; a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bridge published messages: the held marks of those go out now (on a blocking
    /// thread, without the ledger's lock held).
    pub(super) fn released(&self, shared: &Shared) {
        if self.lock().release(shared) {
            self.wake.notify_one();
        }
    }
}

/// The marks of `name` in `batches`, made when missing.
fn batch_of<'a>(batches: &'a mut BTreeMap<String, Batch>, name: &str) -> &'a mut Batch {
    batches.entry(name.to_owned()).or_insert_with(|| Batch {
        name: name.to_owned(),
        ..Batch::default()
    })
}

/// `marks` sorted by their message: those of mail that crossed (this machine published it,
/// or it came from another), to publish now; those of mail this machine has yet to publish
/// (in `inbox/`, from where the bridge publishes), to hold; the others, of mail that never
/// crosses, are dropped.
fn sort_out<M>(shared: &Shared, marks: Vec<M>, id: impl Fn(&M) -> &str) -> (Vec<M>, Vec<M>) {
    let ledger = shared.ledger();
    let (now, rest): (Vec<M>, Vec<M>) = marks.into_iter().partition(|m| {
        let id = id(m);
        ledger.is_published(id) || ledger.came_from_elsewhere(id)
    });
    let later = rest
        .into_iter()
        .filter(|m| {
            let id = id(m);
            ours_to_publish(&ledger, id)
                && shared.mailbox.inbox().join(format!("{id}.md")).is_file()
        })
        .collect();
    (now, later)
}

impl Inner {
    fn from(&self, name: &str) -> u64 {
        self.read_to.get(name).copied().unwrap_or(0)
    }

    /// Takes `tail` (lines of `name`'s log read up to its end): the marks of ids that
    /// crossed wait to be published, those of mail this machine is still to publish are held
    /// until it has. True when some wait to be published.
    fn take(&mut self, shared: &Shared, name: &str, tail: StateTail) -> bool {
        self.read_to.insert(name.to_owned(), tail.end);
        let (now, later) = sort_out(shared, tail.marks, |m| &m.id);
        let part = |marks| StateTail {
            joined: tail.joined,
            marks,
            end: tail.end,
        };
        if !later.is_empty() {
            tracing::debug!(%name, marks = later.len(), "read marks held until their message is published");
            batch_of(&mut self.held, name).add(part(later));
        }
        if now.is_empty() {
            return false;
        }
        batch_of(&mut self.pending, name).add(part(now));
        true
    }

    /// Moves the held marks of messages published since to those that wait to be published,
    /// and drops those whose message left `inbox/` unpublished (it never will be). True when
    /// some moved.
    fn release(&mut self, shared: &Shared) -> bool {
        let mut moved = false;
        for (name, batch) in std::mem::take(&mut self.held) {
            let (now, later) = sort_out(shared, batch.marks, |m| &m.id);
            if !now.is_empty() {
                tracing::debug!(%name, marks = now.len(), "held read marks go out: their message was published");
                moved = true;
                let pending = batch_of(&mut self.pending, &name);
                pending.joined = pending.joined.take().or(batch.joined.clone());
                pending.marks.extend(now);
            }
            if !later.is_empty() {
                self.held.insert(
                    name,
                    Batch {
                        marks: later,
                        ..batch
                    },
                );
            }
        }
        moved
    }

    /// Drops the first `n` marks of `name` that wait: the stream acknowledged them.
    fn published(&mut self, name: &str, n: usize) {
        if let Some(waiting) = self.pending.get_mut(name) {
            waiting.marks.drain(..n.min(waiting.marks.len()));
            if waiting.marks.is_empty() {
                self.pending.remove(name);
            }
        }
    }

    /// Saves the offsets once nothing read waits to be published (so a restart takes up
    /// again what was not acknowledged).
    fn save_if_settled(&mut self) {
        if !self.pending.is_empty() || !self.held.is_empty() || self.read_to == self.saved {
            return;
        }
        let text: String = self
            .read_to
            .iter()
            .map(|(name, at)| format!("{at} {name}\n"))
            .collect();
        match crate::fsx::write_atomic(&self.path, text.as_bytes()) {
            Ok(()) => self.saved = self.read_to.clone(),
            Err(err) => tracing::warn!(%err, "federation: saving how far the state logs were read"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The tasks

/// Runs both directions until `cancel`.
pub(super) async fn run(
    shared: Arc<Shared>,
    js: jetstream::Context,
    connected: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let inbound = tokio::spawn(inbound(
        shared.clone(),
        js.clone(),
        connected.clone(),
        cancel.child_token(),
    ));
    outbound(shared, js, connected, cancel).await;
    let _ = inbound.await;
}

/// The marks stream, created when missing.
async fn marks_stream(js: &jetstream::Context) -> Result<stream::Stream, String> {
    js.get_or_create_stream(stream::Config {
        name: MARKS_STREAM.to_owned(),
        subjects: vec![format!("{MARKS_PREFIX}.>")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: STREAM_MAX_AGE,
        description: Some("t9-ipc: read marks of mail that crossed machines".to_owned()),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("stream {MARKS_STREAM}: {e}"))
}

/// Runs `f` on the queue on a blocking thread: the queue's lock may be held while a state
/// log's lock is waited for, which must never hold up the server's one thread. `None` when
/// the thread failed.
async fn with_queue<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Inner) -> T + Send + 'static,
) -> Option<T> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || f(&mut shared.marks.lock()))
        .await
        .ok()
}

/// Names whose logs changed (`None`: all), from file events on `state/`.
type Changed = Arc<Mutex<Option<BTreeSet<String>>>>;

fn watch_state(
    dir: &Path,
) -> notify::Result<(notify::RecommendedWatcher, mpsc::Receiver<()>, Changed)> {
    use notify::event::{AccessKind, AccessMode};
    use notify::{EventKind, Watcher as _};
    let (tx, rx) = mpsc::channel(1);
    let changed: Changed = Arc::new(Mutex::new(Some(BTreeSet::new())));
    let names = changed.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let mut names = names.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Ok(event) if event.need_rescan() => *names = None,
            Ok(event) => {
                if matches!(event.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write))
                {
                    return; // reading a log (the bridge does) is no change
                }
                let logs = event.paths.iter().filter_map(|p| {
                    let name = p.file_name()?.to_str()?.strip_suffix(".log")?;
                    Some(name.to_owned())
                });
                let before = names.as_ref().map(BTreeSet::len);
                if let Some(set) = names.as_mut() {
                    set.extend(logs);
                }
                if before == names.as_ref().map(BTreeSet::len) && before.is_some() {
                    return;
                }
            }
            Err(_) => *names = None,
        }
        drop(names);
        let _ = tx.try_send(());
    })?;
    watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok((watcher, rx, changed))
}

/// Reads the logs named in `changed` (all when it says so) from where they were left.
async fn read_logs(shared: &Arc<Shared>, changed: Option<BTreeSet<String>>) {
    let shared = shared.clone();
    let done = tokio::task::spawn_blocking(move || {
        let names = changed.map_or_else(|| shared.mailbox.state_names(), Vec::from_iter);
        let mut inner = shared.marks.lock();
        for name in names {
            match shared.mailbox.state_tail(&name, inner.from(&name)) {
                Ok(tail) => {
                    inner.take(&shared, &name, tail);
                }
                Err(err) => tracing::warn!(%err, "federation: reading a state log"),
            }
        }
        inner.save_if_settled();
    })
    .await;
    if let Err(err) = done {
        tracing::warn!(%err, "federation: reading the state logs");
    }
}

/// How long new marks are gathered before they are read and published (receipts are not
/// urgent; the messages themselves cross at once).
const GATHER: Duration = Duration::from_millis(250);

async fn outbound(
    shared: Arc<Shared>,
    js: jetstream::Context,
    mut connected: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    // Watch before the first look, so nothing appended in between is missed.
    let state = shared.mailbox.root().join("state");
    let (_watcher, mut hints, changed) = match watch_state(&state) {
        Ok((w, hints, changed)) => (Some(w), hints, changed),
        Err(err) => {
            tracing::warn!(%err, "federation: not watching state/; read marks do not cross");
            return;
        }
    };
    read_logs(&shared, None).await;
    let (mut ready, mut backoff, mut retry_at) = (false, Duration::from_millis(100), None);
    loop {
        let waiting = with_queue(&shared, |q| !q.pending.is_empty()).await == Some(true);
        if waiting && retry_at.is_none() && *connected.borrow() {
            match publish(&shared, &js, &mut ready).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(err) => {
                    tracing::warn!(%err, "federation: publishing read marks failed; will try again");
                    ready = false;
                    retry_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let retry = async move {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            hint = hints.recv() => {
                if hint.is_none() {
                    break;
                }
                // Marks follow every push and read: gathered for a moment, they cross as one
                // batch rather than one message each, which cost every crossing message as
                // much again on both machines.
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(GATHER) => {}
                }
                let names = changed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replace(BTreeSet::new());
                read_logs(&shared, names).await;
            }
            () = shared.marks.wake.notified() => {}
            res = connected.changed() => {
                if res.is_err() {
                    break;
                }
                retry_at = None;
            }
            () = retry => retry_at = None,
        }
    }
}

/// Publishes what waits, a batch at a time, each acknowledged by the stream before it
/// leaves the queue; then saves the offsets.
async fn publish(
    shared: &Arc<Shared>,
    js: &jetstream::Context,
    ready: &mut bool,
) -> Result<(), String> {
    if !*ready {
        marks_stream(js).await?;
        *ready = true;
    }
    loop {
        let next = with_queue(shared, |q| {
            q.pending.values().next().map(|b| Batch {
                marks: b.marks.iter().take(MAX_BATCH).cloned().collect(),
                ..b.clone()
            })
        });
        let Some(batch) = next.await.flatten() else {
            break;
        };
        let payload = serde_json::to_vec(&batch).map_err(|e| e.to_string())?;
        let mut headers = HeaderMap::new();
        for (name, value) in seal(&shared.key, &shared.machine, &payload) {
            headers.insert(name, value.as_str());
        }
        js.publish_with_headers(marks_subject(&shared.machine), headers, payload.into())
            .await
            .map_err(|e| format!("publishing read marks: {e}"))?
            .await
            .map_err(|e| format!("publishing read marks: {e}"))?;
        tracing::debug!(name = %batch.name, marks = batch.marks.len(), "read marks published");
        with_queue(shared, move |q| q.published(&batch.name, batch.marks.len())).await;
    }
    with_queue(shared, Inner::save_if_settled).await;
    Ok(())
}

async fn inbound(
    shared: Arc<Shared>,
    js: jetstream::Context,
    connected: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let setup = || async {
        let stream = marks_stream(&js).await?;
        let name = consumer_name(&shared.machine);
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("t9-ipc: read marks for machine {}", shared.machine)),
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy: consumer::DeliverPolicy::All,
            // The whole stream; named so that the hub's permission for creating it has the
            // shape of the messages' consumer (`…CREATE.<stream>.<name>.>`).
            filter_subject: format!("{MARKS_PREFIX}.>"),
            ack_wait: ACK_WAIT,
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(&name, config)
            .await
            .map_err(|e| format!("consumer {name} of {MARKS_STREAM}: {e}"))?;
        consumer
            .messages()
            .await
            .map_err(|e| format!("consumer {name} of {MARKS_STREAM}: {e}"))
    };
    let handle = |messages: Vec<jetstream::Message>| async {
        for message in messages {
            take_in(&shared, message).await;
        }
    };
    super::inbound::consume("read marks", setup, handle, connected, cancel).await;
}

/// Applies one arrived batch and acknowledges it, unless appending failed (then it comes
/// again 2 s later).
async fn take_in(shared: &Arc<Shared>, message: jetstream::Message) {
    let delivered = message.info().map_or(1, |i| i.delivered);
    super::inbound::take(
        shared,
        message,
        "read marks",
        move |shared, header, subject, payload| apply(shared, header, subject, &payload, delivered),
    )
    .await;
}

/// A batch with marks of mail not on this disk yet comes again after this pause...
const MAIL_WAIT_PAUSE: Duration = Duration::from_secs(5);
/// ...until it was delivered this many times (about a minute): a machine catching up takes
/// both streams at once, so a mark can come before its message. Mail that never comes (it
/// never crossed to this machine) costs a dozen looks at the batch.
const MAIL_WAIT_TRIES: i64 = 12;

/// Checks a batch and appends its marks to the name's log. `Done` when it may be
/// acknowledged: written, nothing to write, this machine's own, or refused (warned about);
/// `Later` while some of its marks are of mail that may still arrive.
fn apply(
    shared: &Shared,
    header: impl Fn(&str) -> Option<String>,
    subject: &str,
    payload: &[u8],
    delivered: i64,
) -> Result<Taken> {
    let refused = |why: &str| tracing::warn!(%why, %subject, "federation: read marks refused");
    let (machine, key) = match open(header, subject, payload) {
        Ok(opened) => opened,
        Err(why) => {
            refused(&why);
            return Ok(Taken::Done);
        }
    };
    if machine == shared.machine {
        return Ok(Taken::Done);
    }
    if let Pin::Changed { .. } = shared.pins().check(&machine, &key)? {
        refused("signed with another key than the one pinned for its machine");
        return Ok(Taken::Done);
    }
    let batch: Batch = match serde_json::from_slice(payload) {
        Ok(batch) => batch,
        Err(err) => {
            refused(&format!("not a batch of marks: {err}"));
            return Ok(Taken::Done);
        }
    };
    if let Err(why) = crate::message::check_name(&batch.name) {
        refused(&why);
        return Ok(Taken::Done);
    }
    // Only marks of mail on this disk that is for that name: a mark can hide no one
    // else's mail.
    let name = batch.name.as_str();
    let (marks, absent): (Vec<CarriedMark>, Vec<CarriedMark>) = batch
        .carried()
        .into_iter()
        .filter(|m| crate::message::stem_may_be_for(&m.id, name))
        .partition(|m| shared.mailbox.exists(&m.id));
    let taken = if !absent.is_empty() && delivered < MAIL_WAIT_TRIES {
        tracing::debug!(%name, from_machine = %machine, waiting = absent.len(), "read marks of mail not here yet");
        Taken::Later(MAIL_WAIT_PAUSE)
    } else {
        Taken::Done
    };
    if marks.is_empty() {
        tracing::debug!(%name, from_machine = %machine, "read marks for mail not here");
        return Ok(taken);
    }
    let joined = parse_time(batch.joined.as_deref());
    let mut inner = shared.marks.lock();
    let (tail, written) = shared
        .mailbox
        .append_carried(name, inner.from(name), joined, &marks)?;
    if inner.take(shared, name, tail) {
        shared.marks.wake.notify_one();
    }
    drop(inner);
    if written > 0 {
        tracing::info!(%name, from_machine = %machine, marks = written, "read marks arrived");
    } else {
        tracing::debug!(%name, from_machine = %machine, "read marks arrived, all known here");
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn a_batch_opens_only_on_its_machines_subject_with_its_signature() {
        let key = MachineKey::from_seed([7; 32]);
        let payload = br#"{"name":"beta","marks":[{"mark":"read","id":"x"}]}"#;
        let headers: HashMap<_, _> = seal(&key, "laptop", payload).into_iter().collect();
        let get = |n: &str| headers.get(n).cloned();
        let (machine, got) = open(get, "t9ipc.state.laptop", payload).unwrap();
        assert_eq!((machine.as_str(), got), ("laptop", key.public()));
        assert!(open(get, "t9ipc.state.server", payload).is_err());
        assert!(open(get, "t9ipc.state.laptop", b"{}").is_err());
        // A message's signature over the same bytes is no batch's, and the reverse.
        let as_message = key.sign("laptop", "x", payload);
        let mut forged = headers.clone();
        forged.insert(wire::H_SIG, wire::hex(&as_message.to_bytes()));
        assert!(open(|n| forged.get(n).cloned(), "t9ipc.state.laptop", payload).is_err());
    }

    #[test]
    fn unknown_words_and_ids_that_cannot_cross_are_left_out() {
        let batch: Batch = serde_json::from_str(
            r#"{"name":"beta","marks":[{"mark":"read","id":"a"},{"mark":"listed","id":"b"},
                {"mark":"pushed","id":"../c","at":"2026-01-02T03:04:05+00:00"},
                {"mark":"pushed","id":"d","at":"2026-01-02T03:04:05+00:00"}]}"#,
        )
        .unwrap();
        let marks = batch.carried();
        assert_eq!(marks.len(), 2);
        assert!(marks[0].read && marks[0].at.is_none());
        assert!(!marks[1].read && marks[1].at.is_some());
    }
}
