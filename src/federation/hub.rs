//! The hub's side of the federation that the bridge, presence and `doctor` share: connection
//! options (credentials from the URL or a `.creds` file, a certificate authority), the
//! stream, the durable consumer's name, and the machine-name claim.

use std::time::Duration;

use async_nats::ConnectOptions;
use async_nats::jetstream::{self, consumer, stream};

use super::keys::MachineKey;
use super::{STREAM, SUBJECT_PREFIX, Settings, wire};
use crate::error::{Error, Result};

/// How long the stream keeps a message: a machine that is away longer misses it.
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The stream drops a second publish of the same id within this window.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(3600);
/// How long the hub waits for an ack before it delivers a message again.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// How many messages the hub hands a machine before it has acknowledged them.
pub const MAX_ACK_PENDING: i64 = 1000;

/// The connection options of `settings`: name, credentials (from the URL or a `.creds`
/// file), and the certificate authority.
pub(crate) async fn options(settings: &Settings) -> Result<ConnectOptions> {
    let mut options = ConnectOptions::new().name(format!("t9-ipc {}", settings.machine));
    // The client ignores credentials in the URL: hand them over (user and password, or a
    // token as the user part alone).
    match url_credentials(&settings.url) {
        Some((user, Some(password))) => options = options.user_and_password(user, password),
        Some((token, None)) => options = options.token(token),
        None => {}
    }
    if let Some(ca) = &settings.ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some(creds) = &settings.creds {
        options = options
            .credentials_file(creds)
            .await
            .map_err(Error::io("reading the NATS credentials", creds))?;
    }
    Ok(options)
}

/// The user and password (or token) of the first server URL that has them, decoded.
fn url_credentials(urls: &str) -> Option<(String, Option<String>)> {
    urls.split(',').find_map(|one| {
        let addr: async_nats::ServerAddr = one.trim().parse().ok()?;
        let user = percent_decode(addr.username()?);
        let password = addr.password().map(percent_decode);
        Some((user, password))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = text.get(i + 1..i + 3).filter(|_| bytes[i] == b'%');
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection to the hub made at the first question and kept, for a process that asks
/// again and again (a server's `t9_ipc_who`): one handshake (TLS and credentials included)
/// instead of one a question. The client reconnects by itself; while it is not connected a
/// question fails at once rather than waiting for it, and a first connect that failed is
/// tried again at the next question.
pub struct Link {
    settings: Settings,
    js: tokio::sync::OnceCell<jetstream::Context>,
}

impl Link {
    pub fn new(settings: Settings) -> Link {
        Link {
            settings,
            js: tokio::sync::OnceCell::new(),
        }
    }

    /// The connected context; an error says why the hub cannot be asked now.
    pub async fn get(&self) -> Result<&jetstream::Context, String> {
        let js = self.js.get_or_try_init(|| connect(&self.settings)).await?;
        match js.client().connection_state() {
            async_nats::connection::State::Connected => Ok(js),
            _ => Err(format!(
                "the hub {} is not connected (reconnecting)",
                redact_url(&self.settings.url)
            )),
        }
    }
}

/// A connection of its own to the hub, for a question asked once (`who`, a rename, a
/// Telegram claim, `relay --reclaim`); an error says why the hub could not be reached.
pub(crate) async fn connect(settings: &Settings) -> Result<jetstream::Context, String> {
    let client = options(settings)
        .await
        .map_err(|e| e.to_string())?
        .connect(settings.url.as_str())
        .await
        .map_err(|e| format!("the hub {}: {e}", redact_url(&settings.url)))?;
    Ok(jetstream::new(client))
}

/// The URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| match (one.find("://"), one.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}<credentials>{}", &one[..scheme + 3], &one[at..])
            }
            _ => one.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The stream's settings that t9-ipc owns: its subjects, how long it keeps a message and
/// its de-duplication window. Everything else (replicas, size limits, placement) is the hub
/// operator's.
fn stream_config() -> stream::Config {
    stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![format!("{SUBJECT_PREFIX}.>")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: STREAM_MAX_AGE,
        duplicate_window: DUPLICATE_WINDOW,
        description: Some("t9-ipc: message files crossing between machines".to_owned()),
        ..Default::default()
    }
}

/// The hub's stream settings with ours put in, or `None` when they already agree: a
/// stream made by an older version (or changed by hand) gets this version's settings.
fn stream_update(current: &stream::Config) -> Option<stream::Config> {
    let ours = stream_config();
    let agrees = current.subjects == ours.subjects
        && current.max_age == ours.max_age
        && current.duplicate_window == ours.duplicate_window;
    (!agrees).then(|| stream::Config {
        subjects: ours.subjects,
        max_age: ours.max_age,
        duplicate_window: ours.duplicate_window,
        ..current.clone()
    })
}

/// The stream, created when it is missing, and given this version's settings when they
/// differ ([`stream_update`]; a hub that refuses the update is warned about and used as it
/// is).
pub(crate) async fn ensure_stream(js: &jetstream::Context) -> Result<stream::Stream, String> {
    let stream = js
        .get_or_create_stream(stream_config())
        .await
        .map_err(|e| format!("stream {STREAM}: {e}"))?;
    if let Some(update) = stream_update(&stream.cached_info().config) {
        match js.update_stream(&update).await {
            Ok(_) => tracing::info!("federation: gave the stream {STREAM} this version's settings"),
            Err(e) => {
                tracing::warn!(err = %e, "federation: cannot update the stream {STREAM}'s settings; using them as they are")
            }
        }
    }
    Ok(stream)
}

/// The settings of machine `machine`'s durable consumer.
fn consumer_config(machine: &str) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(consumer_name(machine)),
        description: Some(format!("t9-ipc: messages for machine {machine}")),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        filter_subject: format!("{SUBJECT_PREFIX}.>"),
        // A message delivered just before the hub died and never acknowledged comes again
        // after this; found on disk then, it costs only the wait.
        ack_wait: ACK_WAIT,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    }
}

/// True when an existing consumer's settings differ from ours in what can be changed (how
/// messages are delivered from the start cannot, and needs no change).
fn consumer_differs(current: &consumer::Config, ours: &consumer::pull::Config) -> bool {
    current.ack_wait != ours.ack_wait
        || current.max_ack_pending != ours.max_ack_pending
        || current.filter_subject != ours.filter_subject
        || current.description != ours.description
}

/// Machine `machine`'s durable consumer on `stream`, created when missing and given this
/// version's settings when they differ (a hub that refuses is warned about, and the
/// consumer used as it is).
pub(crate) async fn ensure_consumer(
    stream: &stream::Stream,
    machine: &str,
) -> Result<consumer::PullConsumer, String> {
    let name = consumer_name(machine);
    let ours = consumer_config(machine);
    let mut consumer = stream
        .get_or_create_consumer(&name, ours.clone())
        .await
        .map_err(|e| format!("consumer {name}: {e}"))?;
    if consumer_differs(&consumer.cached_info().config, &ours) {
        match stream.create_consumer(ours).await {
            Ok(updated) => {
                tracing::info!(consumer = %name, "federation: gave the consumer this version's settings");
                consumer = updated;
            }
            Err(e) => {
                tracing::warn!(consumer = %name, err = %e, "federation: cannot update the consumer's settings; using them as they are")
            }
        }
    }
    Ok(consumer)
}

/// The key-value bucket that maps each machine name to the key of the mailbox holding it.
pub const MACHINES_BUCKET: &str = "T9IPC_MACHINES";

/// Whether this mailbox holds its machine name in the hub.
pub(crate) enum Claim {
    Ours,
    /// Another mailbox (this hex key) holds it.
    Taken(String),
}

/// The key-value bucket `name` (history 1, file storage, entries kept `max_age`, zero for
/// ever), created when missing; an existing one is used as it is.
pub(crate) async fn kv_bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    max_age: Duration,
) -> Result<jetstream::kv::Store, String> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    js.create_key_value(jetstream::kv::Config {
        bucket: name.to_owned(),
        description: format!("t9-ipc: {description}"),
        history: 1,
        max_age,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("bucket {name}: {e}"))
}

/// The bucket of machine-name claims, created when missing.
async fn machines_bucket(js: &jetstream::Context) -> Result<jetstream::kv::Store, String> {
    let about = "machine name -> the key of the mailbox holding it";
    kv_bucket(js, MACHINES_BUCKET, about, Duration::ZERO).await
}

/// Claims `machine` for this mailbox's key with create-if-absent: two mailboxes (on one host,
/// or a copied configuration) never share a name, and so never split one consumer's
/// messages between them.
pub(crate) async fn claim_machine(
    js: &jetstream::Context,
    machine: &str,
    key: &MachineKey,
) -> Result<Claim, String> {
    use jetstream::kv;
    let ours = wire::hex(key.public().as_bytes());
    let bucket = machines_bucket(js).await?;
    match bucket.create(machine, ours.clone().into()).await {
        Ok(_) => {
            tracing::info!(machine, "federation: claimed this machine's name");
            return Ok(Claim::Ours);
        }
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("claiming {machine}: {e}")),
    }
    match bucket.get(machine).await {
        Ok(Some(held)) if held.as_ref() == ours.as_bytes() => Ok(Claim::Ours),
        Ok(Some(held)) => Ok(Claim::Taken(String::from_utf8_lossy(&held).into_owned())),
        Ok(None) => Err(format!(
            "claiming {machine}: the claim vanished; trying again"
        )),
        Err(e) => Err(format!("claiming {machine}: {e}")),
    }
}

/// Who holds this machine's name in the hub, for `t9-ipc relay --reclaim`: looked at by
/// [`MachineName::look`], taken over by [`MachineName::take`] once the person agreed.
pub struct MachineName {
    bucket: jetstream::kv::Store,
    pub machine: String,
    /// This mailbox's key (hex).
    pub ours: String,
    /// The key (hex) that holds the name and the claim's revision; `None` when nobody does.
    pub held: Option<(String, u64)>,
}

impl MachineName {
    /// Connects to the hub and reads the claim of `settings.machine`.
    pub async fn look(settings: &Settings, key: &MachineKey) -> Result<MachineName, String> {
        let bucket = machines_bucket(&connect(settings).await?).await?;
        let machine = settings.machine.clone();
        let held = match bucket.entry(&machine).await {
            Ok(Some(entry)) if entry.operation == jetstream::kv::Operation::Put => Some((
                String::from_utf8_lossy(&entry.value).into_owned(),
                entry.revision,
            )),
            Ok(_) => None,
            Err(e) => return Err(format!("reading the claim of {machine}: {e}")),
        };
        Ok(MachineName {
            bucket,
            machine,
            ours: wire::hex(key.public().as_bytes()),
            held,
        })
    }

    /// True when this mailbox holds the name already.
    pub fn is_ours(&self) -> bool {
        self.held.as_ref().is_some_and(|(key, _)| *key == self.ours)
    }

    /// Makes the name this mailbox's: replaces the claim that was looked at (only if it is
    /// still the same: a claim changed meanwhile is refused), or creates it when there was
    /// none.
    pub async fn take(&self) -> Result<(), String> {
        let value = self.ours.clone().into();
        let done = match &self.held {
            Some((_, revision)) => self
                .bucket
                .update(&self.machine, value, *revision)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => self
                .bucket
                .create(&self.machine, value)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        done.map_err(|e| {
            format!(
                "taking over {}: {e} (the claim changed meanwhile; look again)",
                self.machine
            )
        })
    }
}

/// The durable consumer's name for a machine.
pub fn consumer_name(machine: &str) -> String {
    format!("t9ipc-{machine}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact_url("nats://me:secret@hub:4222"),
            "nats://<credentials>@hub:4222"
        );
        assert_eq!(
            redact_url("tls://a:4222,nats://u:p@b:4222"),
            "tls://a:4222,nats://<credentials>@b:4222"
        );
        assert_eq!(redact_url("nats://hub:4222"), "nats://hub:4222");
    }

    #[test]
    fn credentials_in_the_url_are_found_and_decoded() {
        assert_eq!(
            url_credentials("nats://hub:4222,nats://me:p%40ss@hub2:4222"),
            Some(("me".to_owned(), Some("p@ss".to_owned())))
        );
        assert_eq!(
            url_credentials("tls://s3cr3t@hub:4222"),
            Some(("s3cr3t".to_owned(), None))
        );
        assert_eq!(url_credentials("nats://hub:4222"), None);
    }

    #[test]
    fn a_stream_with_other_settings_gets_ours_and_keeps_the_operators() {
        assert!(stream_update(&stream_config()).is_none());
        let older = stream::Config {
            duplicate_window: Duration::from_secs(120),
            num_replicas: 3,
            max_bytes: 1 << 30,
            ..stream_config()
        };
        let update = stream_update(&older).expect("an update");
        assert_eq!(update.duplicate_window, DUPLICATE_WINDOW);
        assert_eq!((update.num_replicas, update.max_bytes), (3, 1 << 30));
        let shorter = stream::Config {
            max_age: Duration::from_secs(3600),
            ..stream_config()
        };
        assert_eq!(stream_update(&shorter).unwrap().max_age, STREAM_MAX_AGE);
    }

    #[test]
    fn a_consumer_with_another_ack_wait_differs() {
        use async_nats::jetstream::consumer::IntoConsumerConfig;
        let ours = consumer_config("laptop");
        let same = ours.clone().into_consumer_config();
        assert!(!consumer_differs(&same, &ours));
        let older = consumer::Config {
            ack_wait: Duration::from_secs(30),
            ..same
        };
        assert!(consumer_differs(&older, &ours));
    }
}
