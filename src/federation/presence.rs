//! Who is live on the other machines: each bridge puts its machine's live sessions into the
//! key-value bucket [`BUCKET`] (key `<machine>.<session>`) at start and at every heartbeat,
//! and deletes the ones that ended. Entries live [`TTL`]: a machine that goes away (or its
//! bridge) disappears from the others' `who` within it, without anyone deleting it. Each put
//! also claims the session's name across machines ([`names`]).

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use chrono::Local;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::{Settings, hub, names};
use crate::heartbeat::{Entry, Heartbeats};

/// The bucket of live sessions on every machine.
pub const BUCKET: &str = "T9IPC_PRESENCE";
/// How long an entry lives without a refresh: three heartbeats.
pub const TTL: Duration = Duration::from_secs(180);
/// How often the bridge refreshes its machine's entries (the heartbeat's period).
pub const REFRESH: Duration = Duration::from_secs(60);

/// One live session of some machine, as the bucket holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remote {
    pub machine: String,
    pub name: String,
    pub pid: u32,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub working_on: String,
    /// The session's last heartbeat, as in `heartbeats.json`.
    pub timestamp: String,
    #[serde(default)]
    pub push: String,
    /// When its machine's bridge put this entry, by that machine's clock (RFC 3339, ms):
    /// beside the hub's own time of the put, it shows how far the clocks are apart
    /// (`t9-ipc doctor`). Absent from entries of older versions.
    #[serde(default)]
    pub put_at: Option<String>,
}

impl Remote {
    /// The session's last heartbeat, if its time reads.
    pub fn last_seen(&self) -> Option<chrono::DateTime<Local>> {
        let entry: Entry = serde_json::from_value(
            serde_json::json!({"timestamp": self.timestamp, "pid": self.pid}),
        )
        .ok()?;
        entry.last_seen()
    }

    fn of(machine: &str, name: &str, entry: &Entry) -> Remote {
        Remote {
            machine: machine.to_owned(),
            name: name.to_owned(),
            pid: entry.pid,
            cwd: entry.cwd.clone(),
            working_on: entry.working_on.clone(),
            timestamp: entry.timestamp.clone(),
            push: entry.push().to_owned(),
            put_at: Some(Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false)),
        }
    }
}

/// The bucket, created when missing.
async fn bucket(js: &jetstream::Context) -> Result<kv::Store, String> {
    hub::kv_bucket(js, BUCKET, "live sessions of every machine", TTL).await
}

/// The buckets the bridge keeps its machine's sessions in: who is live, and their names.
pub(crate) struct Buckets {
    presence: kv::Store,
    names: kv::Store,
}

/// Both buckets, created when missing.
pub(crate) async fn buckets(js: &jetstream::Context) -> Result<Buckets, String> {
    Ok(Buckets {
        presence: bucket(js).await?,
        names: names::bucket(js).await?,
    })
}

/// Claims the name of each of this machine's live sessions (`live`, from `heartbeats.json`)
/// and puts its entry, then deletes the entries (and releases the names) of its sessions
/// that ended. A name another machine holds is warned about, naming both machines; the
/// session stays listed (it is live, and mail to its name crosses all the same).
pub(crate) async fn publish(
    buckets: &Buckets,
    machine: &str,
    live: &crate::heartbeat::Table,
) -> Result<usize, String> {
    let store = &buckets.presence;
    let mut current = BTreeSet::new();
    for (name, entry) in live {
        match names::claim(&buckets.names, name, machine).await {
            Ok(names::Claim::Ours) => {}
            Ok(names::Claim::Taken(holder)) => {
                tracing::warn!(session = %name, %holder, "federation: {}", names::clash(name, machine, &holder));
            }
            Err(err) => {
                tracing::warn!(session = %name, %err, "federation: claiming a session name")
            }
        }
        let key = format!("{machine}.{name}");
        let value =
            serde_json::to_vec(&Remote::of(machine, name, entry)).map_err(|e| e.to_string())?;
        store
            .put(&key, value.into())
            .await
            .map_err(|e| format!("{BUCKET} {key}: {e}"))?;
        current.insert(key);
    }
    let prefix = format!("{machine}.");
    let mut keys = store.keys().await.map_err(|e| format!("{BUCKET}: {e}"))?;
    let mut gone = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| format!("{BUCKET}: {e}"))?;
        if key.starts_with(&prefix) && !current.contains(&key) {
            gone.push(key);
        }
    }
    for key in gone {
        store
            .delete(&key)
            .await
            .map_err(|e| format!("{BUCKET} {key}: {e}"))?;
        // The presence entry said this machine had the name: its claim, if still ours, goes.
        let name = &key[prefix.len()..];
        if let Err(err) = names::release(&buckets.names, name, machine).await {
            // It expires with its time to live.
            tracing::warn!(session = %name, %err, "federation: releasing a session name");
        }
    }
    Ok(live.len())
}

/// The live sessions of this mailbox, read on a blocking thread.
pub(crate) async fn live(root: &std::path::Path) -> crate::heartbeat::Table {
    let heartbeats = Heartbeats::new(root);
    tokio::task::spawn_blocking(move || heartbeats.live(Local::now()))
        .await
        .unwrap_or_default()
}

/// A hint each time `heartbeats.json` in `root` is replaced (a session started, ended, or
/// beat). Dropping the watcher stops the hints.
pub(crate) fn watch_heartbeats(
    root: &std::path::Path,
) -> notify::Result<(notify::RecommendedWatcher, tokio::sync::mpsc::Receiver<()>)> {
    use notify::Watcher as _;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode};
        let hit = match event {
            // Reading the file (as `publish` does) must not count: only a replacement or a
            // write does.
            Ok(event) => {
                let changes = match event.kind {
                    EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                    EventKind::Access(_) => false,
                    _ => true,
                };
                changes
                    && event
                        .paths
                        .iter()
                        .any(|p| p.file_name().is_some_and(|n| n == "heartbeats.json"))
            }
            Err(_) => true,
        };
        if hit {
            // Full means a hint is already waiting.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(root, notify::RecursiveMode::NonRecursive)?;
    Ok((watcher, rx))
}

/// The live sessions of the machines other than `settings.machine`, by machine and name;
/// an error says why the hub could not be asked (the caller says the machines are
/// unreachable).
pub async fn others(settings: &Settings) -> Result<Vec<Remote>, String> {
    let js = hub::connect(settings).await?;
    let store = match js.get_key_value(BUCKET).await {
        Ok(store) => store,
        // No bridge has put anything yet.
        Err(_) => return Ok(Vec::new()),
    };
    let mut keys = store.keys().await.map_err(|e| format!("{BUCKET}: {e}"))?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        names.push(key.map_err(|e| format!("{BUCKET}: {e}"))?);
    }
    let own = format!("{}.", settings.machine);
    let mut out = Vec::new();
    for key in names.into_iter().filter(|k| !k.starts_with(&own)) {
        match store.get(&key).await {
            Ok(Some(value)) => match serde_json::from_slice::<Remote>(&value) {
                Ok(remote) => out.push(remote),
                Err(err) => tracing::warn!(%key, %err, "presence: an entry that does not read"),
            },
            Ok(None) => {}
            Err(err) => return Err(format!("{BUCKET} {key}: {err}")),
        }
    }
    out.sort_by(|a, b| (&a.machine, &a.name).cmp(&(&b.machine, &b.name)));
    Ok(out)
}

/// [`others`] for callers outside an async runtime (the command line); at most `wait`.
pub fn others_blocking(settings: &Settings, wait: Duration) -> Result<Vec<Remote>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        tokio::time::timeout(wait, others(settings))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the hub did not answer within {} s",
                    wait.as_secs()
                ))
            })
    })
}
