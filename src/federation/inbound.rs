//! The bridge's inbound side: this machine's durable consumer streams every machine's
//! messages; each is checked (signature, pinned key) and written into `inbox/` byte for byte,
//! and acknowledged only after that. A message already on disk is acknowledged without a
//! write; a refused one is kept in `quarantine/` and acknowledged.
//!
//! Messages that are waiting together are handled together: each file is written and
//! flushed, then one `arrived.log` flush notes all of them as arriving, then each is renamed
//! into place, then one flush of the folder. A lone message costs three flushes, as before;
//! a burst costs one a message and two a burst.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
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
use crate::error::Result;

/// At most this many waiting messages are handled as one batch.
const BATCH: usize = 64;

pub(super) async fn inbound(
    shared: Arc<Shared>,
    js: jetstream::Context,
    mut connected: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        let messages = async {
            let stream = ensure_stream(&js).await?;
            let consumer = ensure_consumer(&stream, &shared.machine).await?;
            consumer
                .messages()
                .await
                .map_err(|e| format!("consumer {}: {e}", consumer_name(&shared.machine)))
        };
        let messages = tokio::select! {
            () = cancel.cancelled() => break,
            got = messages => match got {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(%err, "federation: cannot receive yet; will try again");
                    pause(&mut connected, &mut backoff, &cancel).await;
                    continue;
                }
            },
        };
        tracing::info!(consumer = %consumer_name(&shared.machine), "federation: receiving");
        backoff = Duration::from_millis(100);
        // Whatever is ready when one message comes, up to BATCH, comes with it.
        let mut batches = messages.ready_chunks(BATCH);
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => return,
                next = batches.next() => next,
            };
            let Some(batch) = next else { break };
            let mut good = Vec::with_capacity(batch.len());
            let mut broken = false;
            for item in batch {
                match item {
                    Ok(message) => good.push(message),
                    Err(err) => {
                        use consumer::pull::MessagesErrorKind as Kind;
                        if matches!(err.kind(), Kind::MissingHeartbeat) {
                            tracing::debug!(%err, "federation: consumer");
                        } else {
                            tracing::warn!(%err, "federation: consumer; setting it up again");
                            broken = true;
                        }
                    }
                }
            }
            receive(&shared, good).await;
            if broken {
                break;
            }
        }
        pause(&mut connected, &mut backoff, &cancel).await;
    }
}

/// One arrived message as the blocking side reads it.
struct Arrival {
    headers: Option<HeaderMap>,
    subject: String,
    sequence: u64,
    payload: Vec<u8>,
}

impl Arrival {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    }
}

/// Handles arrived messages and acknowledges each, unless writing it failed (then it comes
/// again two seconds later).
async fn receive(shared: &Arc<Shared>, messages: Vec<jetstream::Message>) {
    if messages.is_empty() {
        return;
    }
    let arrivals: Vec<Arrival> = messages
        .iter()
        .map(|m| Arrival {
            headers: m.headers.clone(),
            subject: m.subject.to_string(),
            sequence: m.info().map(|i| i.stream_sequence).unwrap_or(0),
            payload: m.payload.to_vec(),
        })
        .collect();
    let outcomes = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || deliver_all(&shared, arrivals)).await
    };
    let outcomes = match outcomes {
        Ok(outcomes) => outcomes,
        Err(err) => {
            // Not acknowledged: they come again after the ack wait.
            tracing::error!(%err, "federation: handling arrivals");
            return;
        }
    };
    for (message, outcome) in messages.iter().zip(outcomes) {
        match outcome {
            Ok(()) => {
                if let Err(err) = message.ack().await {
                    // It comes again and is found on disk then.
                    tracing::debug!(%err, "federation: ack");
                }
            }
            Err(err) => {
                let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
                tracing::error!(%err, seq, "federation: an arrival was not written; it comes again");
                let _ = message
                    .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(2))))
                    .await;
            }
        }
    }
}

/// Checks each arrival, writes those to write together, and says for each whether it may
/// be acknowledged.
fn deliver_all(shared: &Shared, arrivals: Vec<Arrival>) -> Vec<Result<()>> {
    let mut outcomes: Vec<Result<()>> = Vec::with_capacity(arrivals.len());
    let mut writes: Vec<(usize, Envelope)> = Vec::new();
    for (i, arrival) in arrivals.into_iter().enumerate() {
        match check(shared, arrival) {
            // The same message twice in one batch (a redelivery): written once.
            Ok(Some(envelope)) if writes.iter().any(|(_, e)| e.id == envelope.id) => {
                outcomes.push(Ok(()));
            }
            Ok(Some(envelope)) => {
                outcomes.push(Ok(()));
                writes.push((i, envelope));
            }
            Ok(None) => outcomes.push(Ok(())),
            Err(err) => outcomes.push(Err(err)),
        }
    }
    if writes.is_empty() {
        return outcomes;
    }
    let files: Vec<(&str, &[u8])> = writes
        .iter()
        .map(|(_, e)| (e.id.as_str(), e.bytes.as_slice()))
        .collect();
    let written = crate::mailbox::write_arrivals(shared.mailbox.inbox(), &files, |ready| {
        let arriving: Vec<(&str, &str)> = ready
            .iter()
            .map(|&k| (writes[k].1.id.as_str(), writes[k].1.machine.as_str()))
            .collect();
        shared.ledger().record_arriving_all(&arriving)
    });
    let arrived: Vec<&str> = writes
        .iter()
        .zip(&written)
        .filter(|(_, w)| w.is_ok())
        .map(|((_, e), _)| e.id.as_str())
        .collect();
    if let Err(err) = shared.ledger().record_arrived_all(&arrived) {
        // On disk and noted as arriving: a redelivery finds the file and acknowledges it.
        tracing::warn!(%err, "federation: noting arrivals");
    }
    for ((i, envelope), result) in writes.iter().zip(written) {
        if result.is_ok() {
            tracing::info!(msg_id = %envelope.id, from_machine = %envelope.machine, "arrived");
        }
        outcomes[*i] = result;
    }
    outcomes
}

/// Checks an arrived message: `Some` when it is to be written into `inbox/`; `None` when it
/// may be acknowledged as it is (already there, this machine's own, or kept aside).
fn check(shared: &Shared, arrival: Arrival) -> Result<Option<Envelope>> {
    let header = |name: &str| arrival.header(name);
    let claims = Claims {
        machine: header(wire::H_MACHINE),
        id: header(wire::H_ID).and_then(|v| wire::decode_id(&v)),
        key: header(wire::H_KEY),
        sig: header(wire::H_SIG),
        subject: &arrival.subject,
        sequence: arrival.sequence,
    };
    let hold = |why: String, bytes: &[u8]| keep_aside(shared, &claims, &why, bytes).map(|()| None);
    let envelope = match Envelope::open(header, &arrival.subject, arrival.payload.clone()) {
        Ok(envelope) => envelope,
        Err(refusal) => {
            let why = match &refusal {
                Refusal::BadSignature => {
                    "bad signature: the bytes, id or machine do not match what the machine signed"
                        .to_owned()
                }
                other => other.to_string(),
            };
            return hold(why, &arrival.payload);
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
    if shared.ledger().has_arrived(&envelope.id) || shared.mailbox.exists(&envelope.id) {
        tracing::debug!(msg_id = %envelope.id, "federation: already on disk");
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
