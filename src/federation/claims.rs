//! Telegram's exactly-once across machines, kept in the hub: who forwards each escalation
//! (create-if-absent in [`CLAIMS_BUCKET`]), which machine's poller reads `getUpdates` (a lease
//! in [`LEASES_BUCKET`], expired by the hub's clock), what a reply to a forwarded part
//! answers, and the open permission prompts with the presses polled for them on another
//! machine ([`PERMS_BUCKET`]). Connects lazily: nothing here touches the network before the
//! first call.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use super::{Settings, hub, presence};

/// Forward claims, reply routes and the shared `getUpdates` offset.
pub const CLAIMS_BUCKET: &str = "T9IPC_CLAIMS";
/// How long a claim lives: well past the 24 hours in which a server catches up on
/// escalations, so a claim never expires while an escalation may still be offered.
pub const CLAIMS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The poller's lease.
pub const LEASES_BUCKET: &str = "T9IPC_LEASES";
/// A lease not renewed for this long is gone (the hub drops it by its own clock).
pub const LEASE_TTL: Duration = Duration::from_secs(20);
/// How often the holder renews the lease, and a waiting machine tries to take it.
pub const LEASE_REFRESH: Duration = Duration::from_secs(5);
/// The key of the Telegram poller's lease.
pub const POLLER_KEY: &str = "tg.poller";
/// The key of the `getUpdates` offset the latest poller reached.
pub const OFFSET_KEY: &str = "tg.offset";
/// Open permission prompts (`tg.perm.<request id>`, no secret) and the verdicts polled for
/// them on another machine (`tg.verdict.<request id>.<uid>`).
pub const PERMS_BUCKET: &str = "T9IPC_PERMS";
/// How long a prompt's entries live: past the 10 minutes a prompt waits for an answer (so a
/// press is known to the end), short enough that the pressed buttons' secrets (useless once
/// the prompt is settled) do not linger in the hub.
pub const PERMS_MAX_AGE: Duration = Duration::from_secs(3600);
/// How long one request to the hub may take before it counts as unreachable.
const REQUEST_WAIT: Duration = Duration::from_secs(5);

/// The key that claims the forward of escalation `id`.
pub fn forward_key(id: &str) -> String {
    format!("tg.fwd.{}", key_token(id))
}

/// The key that routes a reply to Telegram message `message_id` in `chat`.
pub fn reply_key(chat: i64, message_id: i64) -> String {
    format!("tg.reply.{chat}.{message_id}")
}

/// The key of the forum topic of `session` in `chat`: its `message_thread_id`.
pub fn topic_key(chat: i64, session: &str) -> String {
    format!(
        "tg.topic.{}.{}",
        key_token(&chat.to_string()),
        key_token(session)
    )
}

/// The key of the session whose forum topic is `thread` in `chat`.
pub fn thread_key(chat: i64, thread: i64) -> String {
    format!(
        "tg.thread.{}.{}",
        key_token(&chat.to_string()),
        key_token(&thread.to_string())
    )
}

/// The key of the open permission request `id` (in [`PERMS_BUCKET`]).
pub fn permission_key(id: &str) -> String {
    format!("tg.perm.{}", key_token(id))
}

/// The key of one verdict for the permission request `id` (in [`PERMS_BUCKET`]).
pub fn verdict_key(id: &str, uid: &str) -> String {
    format!("tg.verdict.{}.{}", key_token(id), key_token(uid))
}

/// The key of a pairing code waiting on some machine (in [`PERMS_BUCKET`]), by its tag
/// (`telegram::Token::tag`: the code itself never goes to the hub).
pub fn pairing_key(tag: &str) -> String {
    format!("tg.pair.{}", key_token(tag))
}

/// The key of who sent the pairing code tagged `tag` (in [`PERMS_BUCKET`]), written once by
/// the polling machine.
pub fn paired_key(tag: &str) -> String {
    format!("tg.paired.{}", key_token(tag))
}

/// `text` as one token of a key-value key (`[A-Za-z0-9_-]` and `=XX` for every other byte):
/// keys allow only `[-/_=.A-Za-z0-9]`, and `.` separates tokens.
fn key_token(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// Who forwards an escalation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// This machine: claimed now, by one of its servers before, or taken over from a machine
    /// that went away without finishing it.
    Ours,
    /// Another machine, `holder`; `finished` once it said it sent it (or gave up).
    Taken { holder: String, finished: bool },
}

/// A forward claim's value: `<machine>` while that machine forwards the escalation,
/// `<machine> <outcome>` (`sent`, `failed`) once it is done.
fn read_forward(value: &[u8]) -> (String, bool) {
    let text = String::from_utf8_lossy(value);
    match text.split_once(' ') {
        Some((holder, _)) => (holder.to_owned(), true),
        None => (text.into_owned(), false),
    }
}

/// Whether the machine holding an unfinished forward claim has gone away, so that another
/// may take it over: its bridge said it stopped after the claim was made (no server of it
/// runs any more), or the claim is older than [`presence::QUIET_AFTER`] and the holder has
/// not been heard from for that long (or ever). `word` is the holder's last word: its age,
/// whether it said it stopped, and whether it came after the claim.
pub fn holder_gone(claim_age: Duration, word: Option<(Duration, bool, bool)>) -> bool {
    let quiet = presence::QUIET_AFTER;
    match word {
        Some((_, true, true)) => true,
        Some((age, _, _)) => claim_age > quiet && age > quiet,
        None => claim_age > quiet,
    }
}

/// How long ago the hub stored something at `created` (Unix nanoseconds), by this
/// machine's clock.
fn age(created: i128) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    Duration::from_nanos(u64::try_from(now - created).unwrap_or(0))
}

/// The hub, seen from Telegram on one machine. Cheap to keep; connects on first use, and
/// again on the next call after a failed connect.
pub struct Claims {
    settings: Settings,
    buckets: OnceCell<Buckets>,
    /// Opened on first use, apart from the others: a hub user without the permissions for
    /// it still forwards and polls.
    perms: OnceCell<kv::Store>,
}

struct Buckets {
    js: jetstream::Context,
    claims: kv::Store,
    leases: kv::Store,
}

/// The values put under some keys of [`PERMS_BUCKET`] from now on: the verdicts for one
/// permission request ([`Claims::watch_verdicts`]), who sent a pairing code
/// ([`Claims::watch_perm`]).
pub struct PermWatch(kv::Watch);

impl PermWatch {
    /// The next value put; `None` when the watch ended (the connection is
    /// gone for good, or it broke [`WATCH_ERRORS`] times in a row).
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        let mut errors = 0;
        loop {
            match self.0.next().await? {
                Ok(entry) if entry.operation == kv::Operation::Put => {
                    return Some(entry.value.to_vec());
                }
                Ok(_) => {}
                Err(err) if errors < WATCH_ERRORS => {
                    errors += 1;
                    tracing::debug!(%err, "federation: watching the hub");
                }
                Err(err) => {
                    tracing::warn!(%err, "federation: a watch on the hub broke");
                    return None;
                }
            }
        }
    }
}

/// Errors in a row after which a watch is given up.
const WATCH_ERRORS: u32 = 10;

impl Claims {
    pub fn new(settings: Settings) -> Claims {
        Claims {
            settings,
            buckets: OnceCell::new(),
            perms: OnceCell::new(),
        }
    }

    /// This machine's name.
    pub fn machine(&self) -> &str {
        &self.settings.machine
    }

    async fn buckets(&self) -> Result<&Buckets, String> {
        self.buckets
            .get_or_try_init(|| async {
                bounded("connecting", connect(&self.settings))
                    .await
                    .and_then(|connected| connected)
            })
            .await
    }

    /// Claims the forward of escalation `id` for this machine with create-if-absent. A claim
    /// another machine holds and has not finished is taken over (update by revision, so by
    /// one machine only) when that machine has gone away ([`holder_gone`]).
    pub async fn claim_forward(&self, id: &str) -> Result<Forward, String> {
        let buckets = self.buckets().await?;
        let claims = &buckets.claims;
        let key = forward_key(id);
        let me = self.machine().to_owned();
        let created = bounded("claiming", claims.create(&key, me.clone().into())).await?;
        match created {
            Ok(_) => return Ok(Forward::Ours),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("{CLAIMS_BUCKET} {key}: {e}")),
        }
        // Looked at again when another machine changed the claim meanwhile.
        for _ in 0..3 {
            let entry = match bounded("reading a claim", claims.entry(&key)).await? {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry,
                Ok(_) => return Err(format!("{CLAIMS_BUCKET} {key}: the claim vanished")),
                Err(e) => return Err(format!("{CLAIMS_BUCKET} {key}: {e}")),
            };
            let (holder, finished) = read_forward(&entry.value);
            if holder == me {
                return Ok(Forward::Ours);
            }
            let claimed = entry.created.unix_timestamp_nanos();
            if finished || !self.gone(&buckets.js, &holder, claimed).await {
                return Ok(Forward::Taken { holder, finished });
            }
            let update = claims.update(&key, me.clone().into(), entry.revision);
            match bounded("taking a claim over", update).await? {
                Ok(_) => {
                    tracing::warn!(msg_id = %id, from_machine = %holder, "took over the forward of an escalation from a machine that went away without sending it");
                    return Ok(Forward::Ours);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(format!("{CLAIMS_BUCKET} {key}: {e}")),
            }
        }
        Err(format!("{CLAIMS_BUCKET} {key}: the claim kept changing"))
    }

    /// True when `holder`, whose claim the hub stored at `claimed`, has gone away.
    async fn gone(&self, js: &jetstream::Context, holder: &str, claimed: i128) -> bool {
        let word = match bounded(
            "reading a last word",
            js.get_key_value(presence::SEEN_BUCKET),
        )
        .await
        {
            Ok(Ok(seen)) => match bounded("reading a last word", seen.entry(holder)).await {
                Ok(Ok(Some(entry))) => {
                    let word: presence::Word =
                        serde_json::from_slice(&entry.value).unwrap_or_default();
                    let said = entry.created.unix_timestamp_nanos();
                    Some((age(said), word.stopped, said > claimed))
                }
                Ok(Ok(None)) => None,
                // Unknown: not gone.
                _ => return false,
            },
            _ => None,
        };
        holder_gone(age(claimed), word)
    }

    /// Says in the hub that this machine is done with the forward of `id` (`outcome`:
    /// `sent` or `failed`), so that no machine takes it over.
    pub async fn finish_forward(&self, id: &str, outcome: &str) -> Result<(), String> {
        let value = format!("{} {outcome}", self.machine()).into_bytes();
        self.put(&forward_key(id), value).await
    }

    /// Who holds the forward of `id` and whether it is finished; `None` when nobody claimed it.
    pub async fn forward_state(&self, id: &str) -> Result<Option<(String, bool)>, String> {
        Ok(self.get(&forward_key(id)).await?.map(|v| read_forward(&v)))
    }

    /// Watches the forward claim of `id` for changes from now on.
    pub async fn watch_forward(&self, id: &str) -> Result<kv::Watch, String> {
        let key = forward_key(id);
        let claims = &self.buckets().await?.claims;
        bounded("watching", claims.watch(&key))
            .await?
            .map_err(|e| format!("{CLAIMS_BUCKET} {key}: {e}"))
    }

    async fn perms(&self) -> Result<&kv::Store, String> {
        let js = &self.buckets().await?.js;
        self.perms
            .get_or_try_init(|| async {
                bounded("opening", bucket(js, PERMS_BUCKET, PERMS_MAX_AGE))
                    .await
                    .and_then(|opened| opened)
            })
            .await
    }

    /// Puts `value` under `key` in [`CLAIMS_BUCKET`] (a reply route, the offset).
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        put_in(&self.buckets().await?.claims, CLAIMS_BUCKET, key, value).await
    }

    /// The value under `key` in [`CLAIMS_BUCKET`], if any.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        get_in(&self.buckets().await?.claims, CLAIMS_BUCKET, key).await
    }

    /// Puts `value` under `key` in [`CLAIMS_BUCKET`] unless a value is there already
    /// (create-if-absent); the value that holds now, ours or the first one's.
    pub async fn put_first(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, String> {
        let claims = &self.buckets().await?.claims;
        match bounded("claiming", claims.create(key, value.clone().into())).await? {
            Ok(_) => return Ok(value),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("{CLAIMS_BUCKET} {key}: {e}")),
        }
        get_in(claims, CLAIMS_BUCKET, key)
            .await?
            .ok_or_else(|| format!("{CLAIMS_BUCKET} {key}: the first value vanished"))
    }

    /// Puts `value` under `key` in [`PERMS_BUCKET`] (an open request, a verdict).
    pub async fn put_perm(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        put_in(self.perms().await?, PERMS_BUCKET, key, value).await
    }

    /// The value under `key` in [`PERMS_BUCKET`], if any.
    pub async fn get_perm(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        get_in(self.perms().await?, PERMS_BUCKET, key).await
    }

    /// Puts `value` under `key` in [`PERMS_BUCKET`] unless a value is there already
    /// (create-if-absent); false when one was.
    pub async fn create_perm(&self, key: &str, value: Vec<u8>) -> Result<bool, String> {
        let perms = self.perms().await?;
        match bounded("writing", perms.create(key, value.into())).await? {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(format!("{PERMS_BUCKET} {key}: {e}")),
        }
    }

    /// Deletes `key` from [`PERMS_BUCKET`].
    pub async fn delete_perm(&self, key: &str) -> Result<(), String> {
        let perms = self.perms().await?;
        bounded("deleting", perms.delete(key))
            .await?
            .map_err(|e| format!("{PERMS_BUCKET} {key}: {e}"))
    }

    /// Watches the values put under `keys` (a key, or a pattern with `*`) in
    /// [`PERMS_BUCKET`] from now on.
    pub async fn watch_perm(&self, keys: &str) -> Result<PermWatch, String> {
        let perms = self.perms().await?;
        bounded("watching", perms.watch(keys))
            .await?
            .map(PermWatch)
            .map_err(|e| format!("{PERMS_BUCKET} {keys}: {e}"))
    }

    /// Watches the verdicts put for permission request `id` from now on (only new ones:
    /// start it before the prompt goes out).
    pub async fn watch_verdicts(&self, id: &str) -> Result<PermWatch, String> {
        self.watch_perm(&format!("tg.verdict.{}.*", key_token(id)))
            .await
    }

    /// Takes the poller's lease for `holder` (this machine and process); `Some(revision)`
    /// when it is held now, `None` when another holds it.
    pub async fn take_lease(&self, holder: &str) -> Result<Option<u64>, String> {
        let leases = &self.buckets().await?.leases;
        let created = leases.create(POLLER_KEY, holder.to_owned().into());
        match bounded("taking the lease", created).await? {
            Ok(revision) => return Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("{LEASES_BUCKET} {POLLER_KEY}: {e}")),
        }
        // Ours already (a renewal that timed out but reached the hub): renew it.
        match bounded("reading the lease", leases.entry(POLLER_KEY)).await? {
            Ok(Some(entry))
                if entry.operation == kv::Operation::Put
                    && entry.value.as_ref() == holder.as_bytes() =>
            {
                self.renew_lease(holder, entry.revision).await
            }
            Ok(_) => Ok(None),
            Err(e) => Err(format!("{LEASES_BUCKET} {POLLER_KEY}: {e}")),
        }
    }

    /// Renews the lease held at `revision`; `Some(new revision)`, or `None` when it is no
    /// longer ours (expired and taken by another).
    pub async fn renew_lease(&self, holder: &str, revision: u64) -> Result<Option<u64>, String> {
        let leases = &self.buckets().await?.leases;
        let updated = leases.update(POLLER_KEY, holder.to_owned().into(), revision);
        match bounded("renewing the lease", updated).await? {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(format!("{LEASES_BUCKET} {POLLER_KEY}: {e}")),
        }
    }

    /// Gives the lease held at `revision` up, so another machine takes it at its next try.
    pub async fn release_lease(&self, revision: u64) -> Result<(), String> {
        let leases = &self.buckets().await?.leases;
        bounded(
            "releasing the lease",
            leases.delete_expect_revision(POLLER_KEY, Some(revision)),
        )
        .await?
        .map_err(|e| format!("{LEASES_BUCKET} {POLLER_KEY}: {e}"))
    }
}

async fn put_in(store: &kv::Store, name: &str, key: &str, value: Vec<u8>) -> Result<(), String> {
    bounded("writing", store.put(key, value.into()))
        .await?
        .map(|_| ())
        .map_err(|e| format!("{name} {key}: {e}"))
}

async fn get_in(store: &kv::Store, name: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
    bounded("reading", store.get(key))
        .await?
        .map(|value| value.map(|v| v.to_vec()))
        .map_err(|e| format!("{name} {key}: {e}"))
}

/// Connects to the hub and opens (or creates) the claims and leases buckets.
async fn connect(settings: &Settings) -> Result<Buckets, String> {
    let js = hub::connect(settings).await?;
    Ok(Buckets {
        claims: bucket(&js, CLAIMS_BUCKET, CLAIMS_MAX_AGE).await?,
        leases: bucket(&js, LEASES_BUCKET, LEASE_TTL).await?,
        js,
    })
}

/// `work`, or an error when the hub does not answer within [`REQUEST_WAIT`].
async fn bounded<T>(what: &str, work: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(REQUEST_WAIT, work)
        .await
        .map_err(|_| format!("{what}: the hub did not answer within {REQUEST_WAIT:?}"))
}

/// The bucket `name`, created when missing (an existing one is used as it is).
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
) -> Result<kv::Store, String> {
    super::hub::kv_bucket(js, name, "Telegram across machines", max_age).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_keys_are_valid_for_negative_chats() {
        let valid = |k: &str| {
            k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
        };
        let (topic, thread) = (topic_key(-1001234, "alpha"), thread_key(-1001234, 7));
        assert_eq!(topic, "tg.topic.-1001234.alpha");
        assert_eq!(thread, "tg.thread.-1001234.7");
        assert!(valid(&topic) && valid(&thread));
    }

    #[test]
    fn a_forward_claim_is_taken_over_only_from_a_machine_that_went_away() {
        let s = Duration::from_secs;
        let quiet = presence::QUIET_AFTER;
        // Said it stopped after it claimed: gone at once.
        assert!(holder_gone(s(1), Some((s(1), true, true))));
        // Stopped before the claim, then claimed (a new start): not gone while fresh.
        assert!(!holder_gone(s(1), Some((s(1), true, false))));
        // Heard from lately: not gone, however old the claim.
        assert!(!holder_gone(quiet * 10, Some((s(5), false, true))));
        // Quiet for long, and the claim old: gone; a young claim waits.
        assert!(holder_gone(
            quiet + s(1),
            Some((quiet + s(1), false, false))
        ));
        assert!(!holder_gone(s(10), Some((quiet + s(1), false, false))));
        // Never heard from: gone once the claim is old.
        assert!(!holder_gone(s(10), None));
        assert!(holder_gone(quiet + s(1), None));
        assert_eq!(read_forward(b"laptop"), ("laptop".to_owned(), false));
        assert_eq!(read_forward(b"laptop sent"), ("laptop".to_owned(), true));
    }

    #[test]
    fn keys_are_valid_and_distinct() {
        let ids = [
            "20261206T231500123456-00000001-alpha-beta-disk_full",
            "a.b",
            "a=2Eb",
            "a b/c%",
        ];
        let keys: Vec<String> = ids.iter().map(|id| forward_key(id)).collect();
        for key in &keys {
            let token = key.strip_prefix("tg.fwd.").unwrap();
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-=".contains(&b)),
                "{key}"
            );
        }
        assert_eq!(
            keys[0],
            format!("tg.fwd.{}", ids[0]),
            "ids t9-ipc makes stay as they are"
        );
        assert_eq!(keys[1], "tg.fwd.a=2Eb");
        assert_eq!(
            keys[2], "tg.fwd.a=3D2Eb",
            "`=` is escaped too, so no two ids meet"
        );
        assert_eq!(keys[3], "tg.fwd.a=20b=2Fc=25");
        assert_eq!(reply_key(-100_123, 45), "tg.reply.-100123.45");
        assert_eq!(permission_key("fghij"), "tg.perm.fghij");
        assert_eq!(
            verdict_key("fghij", "0a1b2c3d"),
            "tg.verdict.fghij.0a1b2c3d"
        );
    }
}
