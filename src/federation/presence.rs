//! Who is live on the other machines: each bridge puts its machine's live sessions into the
//! key-value bucket [`BUCKET`] (key `<machine>.<session>`) at start and at every heartbeat,
//! and deletes the ones that ended. Entries live [`TTL`]: a machine that goes away (or its
//! bridge) disappears from the others' `who` within it, without anyone deleting it. Each put
//! also claims the session's name across machines ([`names`]).
//!
//! Each bridge also leaves its machine's last word in [`SEEN_BUCKET`] (no time to live): when
//! it last published, and whether it stopped. So `who` can say which machines went quiet
//! (unreachable, or stopped without a word) or stopped, instead of dropping them silently
//! when their entries expire.

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
/// The bucket of each machine's last word (key: the machine; value: [`Word`]).
pub const SEEN_BUCKET: &str = "T9IPC_SEEN";
/// A machine whose bridge has not published for this long (two refreshes) has gone quiet.
pub const QUIET_AFTER: Duration = Duration::from_secs(120);
/// A machine silent for longer than this is no longer mentioned (gone for good, most likely).
pub const FORGOTTEN_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// A machine's last word, as its bridge put it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Word {
    /// When, by that machine's clock (RFC 3339, ms).
    pub put_at: String,
    /// Its bridge stopped (no server or relay runs there any more).
    #[serde(default)]
    pub stopped: bool,
}

/// What is known of a machine that has no fresh word.
#[derive(Debug, Clone, PartialEq)]
pub struct Quiet {
    pub machine: String,
    /// When the hub stored its last word.
    pub last: chrono::DateTime<Local>,
    /// Its bridge said it stopped; otherwise it went quiet (unreachable, or killed).
    pub stopped: bool,
}

/// Whether a machine whose last word was stored `age` ago (and said `stopped`) is worth a
/// line in `who`: `None` while it is fresh, or when it is long gone.
pub fn quiet(age: chrono::TimeDelta, stopped: bool) -> Option<bool> {
    let age = age.to_std().unwrap_or_default();
    if age > FORGOTTEN_AFTER || (!stopped && age <= QUIET_AFTER) {
        return None;
    }
    Some(stopped)
}

/// What the other machines look like: their live sessions, and the machines without a fresh
/// word.
#[derive(Debug, Clone, Default)]
pub struct Elsewhere {
    pub live: Vec<Remote>,
    pub quiet: Vec<Quiet>,
}

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
    seen: kv::Store,
}

/// The buckets, created when missing.
pub(crate) async fn buckets(js: &jetstream::Context) -> Result<Buckets, String> {
    Ok(Buckets {
        presence: bucket(js).await?,
        names: names::bucket(js).await?,
        seen: hub::kv_bucket(js, SEEN_BUCKET, "each machine's last word", Duration::ZERO).await?,
    })
}

/// Leaves this machine's last word: it published now, or (`stopped`) its bridge ends.
pub(crate) async fn say(buckets: &Buckets, machine: &str, stopped: bool) -> Result<(), String> {
    let word = Word {
        put_at: Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
        stopped,
    };
    let value = serde_json::to_vec(&word).map_err(|e| e.to_string())?;
    buckets
        .seen
        .put(machine, value.into())
        .await
        .map(|_| ())
        .map_err(|e| format!("{SEEN_BUCKET} {machine}: {e}"))
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
    say(buckets, machine, false).await?;
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

/// The live sessions of the machines other than `settings.machine`, by machine and name,
/// and the machines without a fresh word; an error says why the hub could not be asked (the
/// caller says the machines are unreachable).
pub async fn others(settings: &Settings) -> Result<Elsewhere, String> {
    let js = hub::connect(settings).await?;
    others_on(&js, &settings.machine).await
}

/// [`others`] through a connection kept by the caller ([`hub::Link`]).
pub async fn others_on(js: &jetstream::Context, own: &str) -> Result<Elsewhere, String> {
    Ok(Elsewhere {
        live: live_elsewhere(js, own).await?,
        quiet: quiet_elsewhere(js, own).await?,
    })
}

/// The machines other than `own` whose last word is stale or says they stopped, by name.
async fn quiet_elsewhere(js: &jetstream::Context, own: &str) -> Result<Vec<Quiet>, String> {
    let Ok(store) = js.get_key_value(SEEN_BUCKET).await else {
        return Ok(Vec::new()); // no bridge of this version has spoken yet
    };
    let mut keys = store
        .keys()
        .await
        .map_err(|e| format!("{SEEN_BUCKET}: {e}"))?;
    let mut out = Vec::new();
    let now = Local::now();
    while let Some(key) = keys.next().await {
        let machine = key.map_err(|e| format!("{SEEN_BUCKET}: {e}"))?;
        if machine == own {
            continue;
        }
        let entry = match store.entry(&machine).await {
            Ok(Some(entry)) => entry,
            Ok(None) => continue,
            Err(err) => return Err(format!("{SEEN_BUCKET} {machine}: {err}")),
        };
        let word: Word = serde_json::from_slice(&entry.value).unwrap_or_default();
        let last = chrono::DateTime::from_timestamp_nanos(
            i64::try_from(entry.created.unix_timestamp_nanos()).unwrap_or(i64::MAX),
        )
        .with_timezone(&Local);
        if let Some(stopped) = quiet(now - last, word.stopped) {
            out.push(Quiet {
                machine,
                last,
                stopped,
            });
        }
    }
    Ok(out)
}

/// The live sessions of the machines other than `own`.
async fn live_elsewhere(js: &jetstream::Context, own: &str) -> Result<Vec<Remote>, String> {
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
    let own = format!("{own}.");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_is_named_once_its_word_is_stale_or_says_it_stopped_and_for_a_week() {
        let ago = |secs: i64| chrono::TimeDelta::seconds(secs);
        assert_eq!(quiet(ago(30), false), None);
        assert_eq!(quiet(ago(30), true), Some(true));
        assert_eq!(quiet(ago(119), false), None);
        assert_eq!(quiet(ago(121), false), Some(false));
        assert_eq!(quiet(ago(6 * 24 * 3600), false), Some(false));
        assert_eq!(quiet(ago(8 * 24 * 3600), true), None);
        // A clock behind the hub's: the word is fresh.
        assert_eq!(quiet(ago(-5), false), None);
    }
}
