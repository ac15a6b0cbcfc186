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
use crate::error::Result;

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
    // One at a time, in the stream's order: a machine's key is pinned at its first message,
    // and a message that replaces another comes after it.
    let handle = |message| receive(&shared, message);
    consume("messages", setup, handle, connected, cancel).await;
}

/// Runs a durable consumer until `cancel`: `setup` makes it and opens its stream of messages
/// (again after any failure, once the connection is back, with a growing pause), and each
/// message goes to `handle`, one at a time. `what` names the consumer in warnings.
pub(super) async fn consume<S, SF, H, HF>(
    what: &str,
    setup: S,
    mut handle: H,
    mut connected: watch::Receiver<bool>,
    cancel: CancellationToken,
) where
    S: Fn() -> SF,
    SF: Future<Output = std::result::Result<consumer::pull::Stream, String>>,
    H: FnMut(jetstream::Message) -> HF,
    HF: Future<Output = ()>,
{
    let mut backoff = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        let got = tokio::select! {
            () = cancel.cancelled() => break,
            got = setup() => got,
        };
        match got {
            Ok(mut messages) => {
                backoff = Duration::from_millis(100);
                loop {
                    let next = tokio::select! {
                        () = cancel.cancelled() => return,
                        next = messages.next() => next,
                    };
                    match next {
                        Some(Ok(message)) => handle(message).await,
                        Some(Err(err))
                            if matches!(
                                err.kind(),
                                consumer::pull::MessagesErrorKind::MissingHeartbeat
                            ) =>
                        {
                            tracing::debug!(%err, "federation: {what} consumer");
                        }
                        Some(Err(err)) => {
                            tracing::warn!(%err, "federation: {what} consumer; setting it up again");
                            break;
                        }
                        None => break,
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

/// Handles one arrived message and acknowledges it, unless writing it failed (then it comes
/// again 2 s later).
async fn receive(shared: &Arc<Shared>, message: jetstream::Message) {
    let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
    take(
        shared,
        message,
        "an arrival",
        move |shared, header, subject, payload| {
            deliver(shared, header, subject, sequence, payload).map(|()| Taken::Done)
        },
    )
    .await;
}

/// What a handler did with a message.
pub(super) enum Taken {
    /// Done with it: acknowledge it.
    Done,
    /// Deliver it again after this long: what it needs has not arrived yet.
    Later(Duration),
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
    let subject = message.subject.to_string();
    let headers = message.headers.clone();
    let payload = message.payload.to_vec();
    let outcome = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            let header = |name: &str| {
                headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
            };
            handle(&shared, &header, &subject, payload)
        })
        .await
    };
    match outcome {
        Ok(Ok(Taken::Done)) => {
            if let Err(err) = message.ack().await {
                // It comes again and is found done then.
                tracing::debug!(%err, "federation: ack");
            }
        }
        Ok(Ok(Taken::Later(pause))) => {
            let _ = message.ack_with(jetstream::AckKind::Nak(Some(pause))).await;
        }
        Ok(Err(err)) => {
            let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
            tracing::error!(%err, seq, "federation: {what} was not written; it comes again");
            let _ = message
                .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(2))))
                .await;
        }
        Err(err) => tracing::error!(%err, "federation: handling {what}"),
    }
}

/// Checks an arrived message and writes it into `inbox/`, or keeps it aside. `Ok` means it
/// may be acknowledged: written, already there, this machine's own, or kept aside.
fn deliver(
    shared: &Shared,
    header: impl Fn(&str) -> Option<String>,
    subject: &str,
    sequence: u64,
    payload: Vec<u8>,
) -> Result<()> {
    let claims = Claims {
        machine: header(wire::H_MACHINE),
        id: header(wire::H_ID).and_then(|v| wire::decode_id(&v)),
        key: header(wire::H_KEY),
        sig: header(wire::H_SIG),
        subject,
        sequence,
    };
    let hold = |why: String, bytes: &[u8]| keep_aside(shared, &claims, &why, bytes);
    let envelope = match Envelope::open(&header, subject, payload.clone()) {
        Ok(envelope) => envelope,
        Err(refusal) => {
            let why = match &refusal {
                Refusal::BadSignature => {
                    "bad signature: the bytes, id or machine do not match what the machine signed"
                        .to_owned()
                }
                other => other.to_string(),
            };
            return hold(why, &payload);
        }
    };
    if envelope.machine == shared.machine {
        if envelope.key == shared.key.public() {
            // Our own message, back from the stream.
            return Ok(());
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
        return Ok(());
    }
    let written =
        crate::mailbox::write_arrival(shared.mailbox.inbox(), id, &envelope.bytes, || {
            shared.ledger().record_arriving(id, &envelope.machine)
        })?;
    shared.ledger().record_arrived(id)?;
    if written {
        tracing::info!(msg_id = %id, from_machine = %envelope.machine, seq = sequence, "arrived");
    } else {
        // Another writer put it there between the look above and the rename.
        tracing::debug!(msg_id = %id, "federation: already on disk");
    }
    Ok(())
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
