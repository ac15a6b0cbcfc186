//! Federation: one mailbox across machines, carried by NATS JetStream (see
//! `docs/FEDERATION.md`). Opt-in: nothing here runs unless `IPC_NATS_URL` is set.
//!
//! - [`keys`]: this machine's Ed25519 key and the keys pinned for other machines.
//! - [`wire`]: what crosses between machines: origin machine, message id, key, signature,
//!   and the file's bytes.
//! - [`ledger`]: `published.log` and `arrived.log`, append-only, so a restarted bridge
//!   publishes exactly what is missing and never republishes what arrived.
//! - [`store`]: the bridge's own files: private folders, refused messages kept aside in
//!   `quarantine/` (message files are read and written by `mailbox`).
//! - [`bridge`]: the one task per machine and mailbox that publishes and receives
//!   (`inbound`: what it receives, checked and written into `inbox/`).
//! - [`hub`]: connection options, the stream and the consumer (and their settings), the
//!   machine-name claim and its takeover (`relay --reclaim`).
//! - [`marks`]: read and pushed marks of mail that crossed, carried to the same name's
//!   state log on the other machines (`t9ipc.state.<machine>` of the stream `T9IPC_MARKS`).
//! - [`origins`]: which machine a message in `inbox/` came from, for its channel event.
//! - [`presence`]: the live sessions of every machine, in a key-value bucket with a TTL.
//! - [`claims`]: Telegram across machines: who forwards each escalation, which machine
//!   polls `getUpdates` (a lease), and where a reply to a forwarded part goes.
//! - [`names`]: session names claimed across machines (create-if-absent), so none is held
//!   by two machines.
//! - [`election`]: which process of a machine runs the bridge (`bridge.lock`).
//! - [`health`]: what `doctor` reports about all of this; reads only.
//!
//! Everything the federation keeps on disk lives in `<data>/federation/` (folder 0700,
//! files 0600). Nothing in it is deleted by the program; the two logs are compacted.

pub mod bridge;
pub mod claims;
pub mod election;
pub mod health;
pub mod hub;
mod inbound;
pub mod keys;
pub mod ledger;
pub mod marks;
pub mod names;
pub mod origins;
pub mod presence;
pub mod store;
pub mod wire;

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::Result;

/// The stream every machine publishes to.
pub const STREAM: &str = "T9IPC";
/// The subject of machine `m`'s messages is `t9ipc.msg.<m>`.
pub const SUBJECT_PREFIX: &str = "t9ipc.msg";

/// The subject a machine publishes its messages on.
pub fn subject_of(machine: &str) -> String {
    format!("{SUBJECT_PREFIX}.{machine}")
}

/// The federation settings (read by [`crate::config::Config`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `IPC_NATS_URL`: e.g. `nats://hub.example:4222` or `tls://…`; user and password may be
    /// in the URL. Several servers may be given, comma-separated.
    pub url: String,
    /// `IPC_NATS_CREDS`: a NATS `.creds` file (user JWT and nkey seed).
    pub creds: Option<PathBuf>,
    /// `IPC_NATS_CA`: a PEM file of the certificate authority that signed the hub's TLS
    /// certificate, when it is not one the system trusts.
    pub ca: Option<PathBuf>,
    /// `IPC_MACHINE`: this machine's name; default the host name (see [`default_machine`]).
    pub machine: String,
}

/// Takes part in the election for this mailbox's bridge and runs the bridge while elected,
/// until `cancel`: what a server does when federation is on (`t9-ipc relay` does the same in
/// the foreground). `None` when `IPC_NATS_URL` is unset, or the settings are refused
/// (warned about). The task ends soon after `cancel`.
pub fn spawn_elected(
    config: &Config,
    cancel: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let settings = match &config.federation {
        Ok(Some(settings)) => settings.clone(),
        Ok(None) => return None,
        Err(err) => {
            tracing::warn!(%err, "federation is off");
            return None;
        }
    };
    Some(spawn_bridge(
        settings,
        config.data_dir.clone(),
        cancel.child_token(),
    ))
}

/// [`spawn_elected`]'s task. Apart, and never inlined: the bridge's future is built on its
/// stack frame (tens of KiB), which a server without federation then never touches.
#[inline(never)]
fn spawn_bridge(
    settings: Settings,
    data_dir: PathBuf,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(err) = run_elected(settings, &data_dir, cancel).await {
            tracing::error!(%err, "federation bridge");
        }
    })
}

/// Waits to be elected (holding `bridge.lock`), then runs the bridge until `cancel`.
pub async fn run_elected(
    settings: Settings,
    data_dir: &Path,
    cancel: CancellationToken,
) -> Result<()> {
    let paths = Paths::new(data_dir);
    paths.create()?;
    let lock = paths.bridge_lock();
    let leadership = match election::try_lead(&lock)? {
        Some(held) => held,
        None => {
            tracing::info!(lock = %lock.display(), "federation: another process runs this mailbox's bridge; standing by");
            match election::lead(&lock, &cancel).await? {
                Some(held) => held,
                None => return Ok(()),
            }
        }
    };
    tracing::info!(machine = %settings.machine, mailbox = %data_dir.display(), "federation: running the bridge");
    let result = bridge::run(settings, data_dir, cancel).await;
    drop(leadership);
    result
}

/// Checks a machine name: the rules of session names, `[A-Za-z0-9_-]{3,64}`.
pub fn check_machine(name: &str) -> std::result::Result<(), String> {
    crate::message::check_name(name)
}

/// The host name made into a machine name: the part before the first dot, every character
/// outside `[A-Za-z0-9_-]` turned into `-`, cut to 64 characters, and `-host` added to a name
/// shorter than 3 characters.
pub fn default_machine() -> String {
    machine_from_host(&host_name())
}

fn machine_from_host(host: &str) -> String {
    let first = host.split('.').next().unwrap_or_default();
    let mut name: String = first
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.chars().count() < 3 {
        name.push_str("-host");
    }
    if check_machine(&name).is_err() {
        // A host called `all` or `human`: still a usable, distinct name.
        name.push_str("-host");
    }
    name
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_owned();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Where the federation keeps its files: `<data>/federation/`.
#[derive(Debug, Clone)]
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(data_dir: &Path) -> Paths {
        Paths {
            dir: data_dir.join("federation"),
        }
    }

    /// Creates the folder (0700) if it is missing.
    pub fn create(&self) -> Result<()> {
        store::create_private_dir(&self.dir)?;
        store::create_private_dir(&self.quarantine())
    }

    /// This machine's secret key (hex seed), 0600.
    pub fn key(&self) -> PathBuf {
        self.dir.join("machine.key")
    }

    /// The keys pinned for other machines: `<machine> <hex public key>` a line.
    pub fn known_machines(&self) -> PathBuf {
        self.dir.join("known_machines")
    }

    /// Ids published to the stream, one a line.
    pub fn published(&self) -> PathBuf {
        self.dir.join("published.log")
    }

    /// Ids that arrived from other machines: `arriving <id>\t<machine>` before the file is renamed into
    /// `inbox/`, `arrived <id>` after.
    pub fn arrived(&self) -> PathBuf {
        self.dir.join("arrived.log")
    }

    /// How far each state log was read for read marks to carry: `<offset> <name>` a line.
    pub fn marks_offsets(&self) -> PathBuf {
        self.dir.join("marks.offsets")
    }

    /// Messages refused on arrival (bad signature, changed key), with a `.why` beside each.
    pub fn quarantine(&self) -> PathBuf {
        self.dir.join("quarantine")
    }

    /// The lock the bridge's holder keeps.
    pub fn bridge_lock(&self) -> PathBuf {
        self.dir.join("bridge.lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_become_machine_names() {
        for (host, machine) in [
            ("buildbox", "buildbox"),
            ("laptop.local", "laptop"),
            ("ip-10-0-0-1.ec2.internal", "ip-10-0-0-1"),
            ("pi", "pi-host"),
            ("", "-host"),
            ("all", "all-host"),
            ("my box", "my-box"),
        ] {
            let got = machine_from_host(host);
            assert_eq!(got, machine, "{host:?}");
            if !host.is_empty() {
                assert!(check_machine(&got).is_ok(), "{got:?}");
            }
        }
        let long = "x".repeat(100);
        assert_eq!(machine_from_host(&long).len(), 64);
    }
}
