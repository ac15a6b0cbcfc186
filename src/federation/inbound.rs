//! The bridge's inbound side: this machine's durable consumer streams every machine's
//! messages; each is checked (signature, pinned key) and written into `inbox/` byte for byte,
//! and acknowledged only after that. A message already on disk is acknowledged without a
//! write; a refused one is kept in `quarantine/` and acknowledged.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use chrono::Local;
use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::bridge::{Shared, pause};
use super::hub::{consumer_name, ensure_consumer, ensure_stream};
use super::keys::Pin;
use super::store;
use super::wire::{self, Envelope, Refusal};
use crate::error::{Error, Result};
use crate::mailbox::Arrival;

pub(super) async fn inbound(
    shared: Arc<Shared>,
    js: jetstream::Context,
    connected: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let name = consumer_name(&shared.machine);
    let setup = || async {
        let stream = ensure_stream(&js).await?;
        let consumer = ensure_consumer(&stream, &shared.machine).await?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| format!("consumer {name}: {e}"))?;
        tracing::info!(consumer = %name, "federation: receiving");
        Ok(messages)
    };
    let handle = |messages| receive(&shared, messages);
    consume("messages", setup, handle, connected, cancel).await;
}

/// Runs a durable consumer until `cancel`: `setup` makes it and opens its stream of messages
/// (again after any failure, once the connection is back, with a growing pause), and the
/// messages go to `handle` in the stream's order, as many at a time as were waiting together
/// (at most [`AT_ONCE`]); the next ones are taken when it is done. `what` names the consumer
/// in warnings.
pub(super) async fn consume<S, SF, H, HF>(
    what: &str,
    setup: S,
    mut handle: H,
    mut connected: watch::Receiver<bool>,
    cancel: CancellationToken,
) where
    S: Fn() -> SF,
    SF: Future<Output = std::result::Result<consumer::pull::Stream, String>>,
    H: FnMut(Vec<jetstream::Message>) -> HF,
    HF: Future<Output = ()>,
{
    let mut backoff = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        let got = tokio::select! {
            () = cancel.cancelled() => break,
            got = setup() => got,
        };
        match got {
            Ok(messages) => {
                backoff = Duration::from_millis(100);
                let mut chunks = messages.ready_chunks(AT_ONCE);
                loop {
                    let chunk = tokio::select! {
                        () = cancel.cancelled() => return,
                        chunk = chunks.next() => chunk,
                    };
                    let Some(chunk) = chunk else { break };
                    let mut ready = Vec::with_capacity(chunk.len());
                    let mut broken = false;
                    for next in chunk {
                        match next {
                            Ok(message) => ready.push(message),
                            Err(err)
                                if matches!(
                                    err.kind(),
                                    consumer::pull::MessagesErrorKind::MissingHeartbeat
                                ) =>
                            {
                                tracing::debug!(%err, "federation: {what} consumer");
                            }
                            Err(err) => {
                                tracing::warn!(%err, "federation: {what} consumer; setting it up again");
                                broken = true;
                                break;
                            }
                        }
                    }
                    if !ready.is_empty() {
                        handle(ready).await;
                    }
                    if broken {
                        break;
                    }
                }
            }
            Err(err) => {
                tracing::warn!(%err, "federation: cannot receive {what} yet; will try again");
            }
        }
        pause(&mut connected, &mut backoff, &cancel).await;
    }
}

/// Messages handed over at once, at most: what waited together when a machine catches up.
const AT_ONCE: usize = 64;

/// Handles the arrivals that waited together ([`deliver_all`]), then acknowledges each,
/// unless it was not written (then it comes again 2 s later).
async fn receive(shared: &Arc<Shared>, messages: Vec<jetstream::Message>) {
    let parts: Vec<Parts> = messages.iter().map(Parts::of).collect();
    let outcomes = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || deliver_all(&shared, &parts)).await
    };
    match outcomes {
        Ok(outcomes) => {
            for (message, outcome) in messages.into_iter().zip(outcomes) {
                settle(message, outcome.map(|()| Taken::Done), "an arrival").await;
            }
        }
        // Not acknowledged: they come again after the consumer's wait.
        Err(err) => tracing::error!(%err, "federation: handling arrivals"),
    }
}

/// What a handler did with a message.
pub(super) enum Taken {
    /// Done with it: acknowledge it.
    Done,
    /// Deliver it again after this long: what it needs has not arrived yet.
    Later(Duration),
}

/// What a handler reads of a message: its subject, headers, payload and place in the stream.
struct Parts {
    subject: String,
    headers: Option<async_nats::HeaderMap>,
    payload: Vec<u8>,
    sequence: u64,
}

impl Parts {
    fn of(message: &jetstream::Message) -> Parts {
        Parts {
            subject: message.subject.to_string(),
            headers: message.headers.clone(),
            payload: message.payload.to_vec(),
            sequence: message.info().map(|i| i.stream_sequence).unwrap_or(0),
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    }
}

/// Runs `handle` on a blocking thread with a message's headers, subject and payload, then
/// acknowledges the message, or asks for it again when `handle` says so; when `handle` fails,
/// asks for it again 2 s later (a NAK).
pub(super) async fn take(
    shared: &Arc<Shared>,
    message: jetstream::Message,
    what: &'static str,
    handle: impl FnOnce(&Shared, &dyn Fn(&str) -> Option<String>, &str, Vec<u8>) -> Result<Taken>
    + Send
    + 'static,
) {
    let mut parts = Parts::of(&message);
    let outcome = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            let payload = std::mem::take(&mut parts.payload);
            handle(&shared, &|name| parts.header(name), &parts.subject, payload)
        })
        .await
    };
    match outcome {
        Ok(outcome) => settle(message, outcome, what).await,
        Err(err) => tracing::error!(%err, "federation: handling {what}"),
    }
}

/// Acknowledges `message`, or asks for it again: after the pause its handler asked for, or
/// 2 s after a failure.
async fn settle(message: jetstream::Message, outcome: Result<Taken>, what: &str) {
    match outcome {
        Ok(Taken::Done) => {
            if let Err(err) = message.ack().await {
                // It comes again and is found done then.
                tracing::debug!(%err, "federation: ack");
            }
        }
        Ok(Taken::Later(pause)) => {
            let _ = message.ack_with(jetstream::AckKind::Nak(Some(pause))).await;
        }
        Err(err) => {
            let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
            tracing::error!(%err, seq, "federation: {what} was not written; it comes again");
            let _ = message
                .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(2))))
                .await;
        }
    }
}

/// Checks arrivals one by one in the stream's order (a machine's key is pinned at its first
/// message), then writes those to deliver together ([`crate::mailbox::write_arrivals`]: in
/// that order, so a message that replaces another lands after it, and with one flush of the
/// folder). Each outcome is `Ok` when its message may be acknowledged: written, already
/// there, this machine's own, or kept aside.
fn deliver_all(shared: &Shared, parts: &[Parts]) -> Vec<Result<()>> {
    let mut outcomes = Vec::with_capacity(parts.len());
    let mut writes: Vec<(usize, Envelope)> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        match check(shared, part) {
            // The same id twice in one batch is written once.
            Ok(Some(envelope)) if !writes.iter().any(|(_, e)| e.id == envelope.id) => {
                writes.push((i, envelope));
                outcomes.push(Ok(()));
            }
            Ok(_) => outcomes.push(Ok(())),
            Err(err) => outcomes.push(Err(err)),
        }
    }
    if let Err(err) = write(shared, parts, &writes) {
        let why = err.to_string();
        for (i, _) in &writes {
            outcomes[*i] = Err(Error::Refused(why.clone()));
        }
    }
    outcomes
}

/// Writes the checked arrivals into `inbox/` and notes them in the ledger.
fn write(shared: &Shared, parts: &[Parts], writes: &[(usize, Envelope)]) -> Result<()> {
    if writes.is_empty() {
        return Ok(());
    }
    let arrivals: Vec<Arrival> = writes
        .iter()
        .map(|(_, e)| Arrival {
            id: &e.id,
            machine: &e.machine,
            bytes: &e.bytes,
        })
        .collect();
    let written = crate::mailbox::write_arrivals(shared.mailbox.inbox(), &arrivals, |flush| {
        let noted = arrivals.iter().map(|a| (a.id, a.machine));
        shared.ledger().record_arriving(noted, flush)
    })?;
    shared
        .ledger()
        .record_arrived(arrivals.iter().map(|a| a.id))?;
    for ((i, envelope), written) in writes.iter().zip(written) {
        let id = &envelope.id;
        if written {
            let seq = parts[*i].sequence;
            tracing::info!(msg_id = %id, from_machine = %envelope.machine, seq, "arrived");
        } else {
            // Another writer put it there between the look and the rename.
            tracing::debug!(msg_id = %id, "federation: already on disk");
        }
    }
    Ok(())
}

/// True for this machine's own message come back from the stream, known without checking
/// its signature (the costliest step, paid here for every message this machine sends):
/// it names this machine and this machine's key, its id was published from here, and its
/// bytes are those of the file still in `inbox/`. Whatever its signature, taking it in would
/// change nothing; anything else is checked in full.
fn is_our_own_copy(shared: &Shared, claims: &Claims<'_>, payload: &[u8]) -> bool {
    let (Some(machine), Some(id), Some(key)) = (&claims.machine, &claims.id, &claims.key) else {
        return false;
    };
    *machine == shared.machine
        && key.eq_ignore_ascii_case(&crate::text::hex(shared.key.public().as_bytes()))
        && shared.ledger().is_published(id)
        && crate::mailbox::read_bytes(shared.mailbox.inbox(), id)
            .is_ok_and(|bytes| bytes.as_deref() == Some(payload))
}

/// Checks an arrived message: `Some` when it is to be written into `inbox/`; `None` when it
/// may be acknowledged as it is (already there, this machine's own, or kept aside here).
fn check(shared: &Shared, part: &Parts) -> Result<Option<Envelope>> {
    let (subject, sequence, payload) = (part.subject.as_str(), part.sequence, &part.payload);
    let header = |name: &str| part.header(name);
    let claims = Claims {
        machine: header(wire::H_MACHINE),
        id: header(wire::H_ID).and_then(|v| wire::decode_id(&v)),
        key: header(wire::H_KEY),
        sig: header(wire::H_SIG),
        subject,
        sequence,
    };
    if is_our_own_copy(shared, &claims, payload) {
        // Our own message, back from the stream.
        return Ok(None);
    }
    let hold = |why: String, bytes: &[u8]| keep_aside(shared, &claims, &why, bytes).map(|()| None);
    let envelope = match Envelope::open(header, subject, payload.clone()) {
        Ok(envelope) => envelope,
        Err(refusal) => {
            let why = match &refusal {
                Refusal::BadSignature => {
                    "bad signature: the bytes, id or machine do not match what the machine signed"
                        .to_owned()
                }
                other => other.to_string(),
            };
            return hold(why, payload);
        }
    };
    if envelope.machine == shared.machine {
        if envelope.key == shared.key.public() {
            // Our own message, back from the stream.
            return Ok(None);
        }
        return hold(
            "it claims to come from this machine but is signed with another key".to_owned(),
            &envelope.bytes,
        );
    }
    match shared.pins().check(&envelope.machine, &envelope.key)? {
        Pin::Same => {}
        Pin::New => tracing::info!(
            machine = %envelope.machine,
            key = %wire::hex(envelope.key.as_bytes()),
            "federation: pinned the key of a machine seen for the first time"
        ),
        Pin::Changed { pinned } => {
            return hold(
                format!(
                    "the machine's key changed: pinned {}, this one is {}; if the machine \
                     really made a new key, trust it with: t9-ipc relay --trust {} {}",
                    wire::hex(pinned.as_bytes()),
                    wire::hex(envelope.key.as_bytes()),
                    envelope.machine,
                    wire::hex(envelope.key.as_bytes()),
                ),
                &envelope.bytes,
            );
        }
    }
    let id = &envelope.id;
    if shared.ledger().has_arrived(id) || shared.mailbox.exists(id) {
        tracing::debug!(msg_id = %id, "federation: already on disk");
        return Ok(None);
    }
    Ok(Some(envelope))
}

/// What an arrived message's headers claim, for the `.why` of one kept aside.
struct Claims<'a> {
    machine: Option<String>,
    id: Option<String>,
    key: Option<String>,
    sig: Option<String>,
    subject: &'a str,
    sequence: u64,
}

/// Keeps a refused arrival in `quarantine/` with why, and warns.
fn keep_aside(shared: &Shared, claims: &Claims, why: &str, bytes: &[u8]) -> Result<()> {
    let machine = claims
        .machine
        .as_deref()
        .filter(|m| super::check_machine(m).is_ok())
        .unwrap_or("unknown-machine");
    let name = match &claims.id {
        Some(id) => format!("{machine}-{id}"),
        None => format!("{machine}-seq{}", claims.sequence),
    };
    let text = format!(
        "refused: {why}\nmachine: {}\nid: {}\nsubject: {}\nkey: {}\nsignature: {}\nstream_sequence: {}\nreceived: {}\n",
        claims.machine.as_deref().unwrap_or("-"),
        claims.id.as_deref().unwrap_or("-"),
        claims.subject,
        claims.key.as_deref().unwrap_or("-"),
        claims.sig.as_deref().unwrap_or("-"),
        claims.sequence,
        Local::now().format("%Y-%m-%d %H:%M:%S"),
    );
    let path = store::quarantine(&shared.paths.quarantine(), &name, bytes, &text)?;
    tracing::warn!(%why, machine = %machine, held = %path.display(), "federation: a message was refused and kept aside");
    Ok(())
}
