//! The hub's side of the federation that the bridge, presence and `doctor` share: connection
//! options (credentials from the URL or a `.creds` file, a certificate authority), the
//! stream, the durable consumer's name, and the machine-name claim.

use std::time::Duration;

use async_nats::ConnectOptions;
use async_nats::jetstream::{self, stream};

use super::keys::MachineKey;
use super::{STREAM, SUBJECT_PREFIX, Settings, wire};
use crate::error::{Error, Result};

/// How long the stream keeps a message: a machine that is away longer misses it.
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The stream drops a second publish of the same id within this window.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(3600);
/// How long the hub waits for an ack before it delivers a message again.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

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

/// The stream, created when it is missing (an existing one is used as it is).
pub(crate) async fn ensure_stream(js: &jetstream::Context) -> Result<stream::Stream, String> {
    let config = stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![format!("{SUBJECT_PREFIX}.>")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: STREAM_MAX_AGE,
        duplicate_window: DUPLICATE_WINDOW,
        description: Some("t9-ipc: message files crossing between machines".to_owned()),
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| format!("stream {STREAM}: {e}"))
}

/// The key-value bucket that maps each machine name to the key of the mailbox holding it.
pub const MACHINES_BUCKET: &str = "T9IPC_MACHINES";

/// Whether this mailbox holds its machine name in the hub.
pub(crate) enum Claim {
    Ours,
    /// Another mailbox (this hex key) holds it.
    Taken(String),
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
    let bucket = match js.get_key_value(MACHINES_BUCKET).await {
        Ok(bucket) => bucket,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: MACHINES_BUCKET.to_owned(),
                description: "t9-ipc: machine name -> the key of the mailbox holding it".to_owned(),
                history: 1,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("bucket {MACHINES_BUCKET}: {e}"))?,
    };
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
}
