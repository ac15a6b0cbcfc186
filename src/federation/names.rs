//! Session names across machines: each name live anywhere is claimed in the key-value bucket
//! [`BUCKET`] (key: the session name, value: the machine holding it) with create-if-absent,
//! so two machines never both hold one name. Claims live [`TTL`] (presence's) unless their
//! machine's bridge refreshes them, so a machine that goes away frees its names.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use super::{Settings, presence};

/// The bucket of session-name claims.
pub const BUCKET: &str = "T9IPC_NAMES";
/// How long a claim lives without a refresh: the same as a presence entry.
pub const TTL: Duration = presence::TTL;
/// Tries at a claim that races another writer of the same key before giving up.
const TRIES: usize = 3;

/// Who holds a session name in the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This machine holds it (claimed now, or refreshed).
    Ours,
    /// Another machine holds it.
    Taken(String),
}

/// What to do about a name, given what the bucket holds for it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Nothing (or a deleted claim) is there: create the key.
    Create,
    /// This machine's claim at that revision: update it, which restarts its time to live.
    Refresh(u64),
    /// Another machine's claim.
    Taken(String),
}

/// The step for a name whose key holds `held` (the value and revision of a live claim, or
/// `None` for no claim or a deleted one).
fn step(held: Option<(&[u8], u64)>, machine: &str) -> Step {
    match held {
        None => Step::Create,
        Some((value, revision)) if value == machine.as_bytes() => Step::Refresh(revision),
        Some((value, _)) => Step::Taken(String::from_utf8_lossy(value).into_owned()),
    }
}

/// The bucket, created when missing.
pub(crate) async fn bucket(js: &jetstream::Context) -> Result<kv::Store, String> {
    let about = "session name -> the machine holding it";
    super::hub::kv_bucket(js, BUCKET, about, TTL).await
}

/// The live claim on `name`: its value and revision; `None` when there is none.
async fn held(store: &kv::Store, name: &str) -> Result<Option<(Vec<u8>, u64)>, String> {
    match store.entry(name).await {
        Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
            Ok(Some((entry.value.to_vec(), entry.revision)))
        }
        Ok(_) => Ok(None),
        Err(e) => Err(format!("{BUCKET} {name}: {e}")),
    }
}

/// Claims `name` for `machine`: creates the claim when there is none, refreshes this
/// machine's own claim, and leaves another machine's alone (saying whose it is).
pub(crate) async fn claim(store: &kv::Store, name: &str, machine: &str) -> Result<Claim, String> {
    let mut last = String::new();
    for _ in 0..TRIES {
        let current = held(store, name).await?;
        let done = match step(current.as_ref().map(|(v, r)| (v.as_slice(), *r)), machine) {
            Step::Taken(other) => return Ok(Claim::Taken(other)),
            Step::Create => store
                .create(name, machine.to_owned().into())
                .await
                .map_err(|e| e.to_string()),
            Step::Refresh(revision) => store
                .update(name, machine.to_owned().into(), revision)
                .await
                .map_err(|e| e.to_string()),
        };
        match done {
            Ok(_) => return Ok(Claim::Ours),
            // Another writer came in between (another machine's create, this machine's
            // other refresh): look again.
            Err(e) => last = e,
        }
    }
    Err(format!("{BUCKET} {name}: {last}"))
}

/// Deletes the claim on `name` if `machine` holds it (a session of this machine ended); another
/// machine's claim stays.
pub(crate) async fn release(store: &kv::Store, name: &str, machine: &str) -> Result<(), String> {
    match held(store, name).await? {
        Some((value, revision)) if value == machine.as_bytes() => store
            .delete_expect_revision(name, Some(revision))
            .await
            // A refresh in between means the name is live again: it stays.
            .or_else(|e| match e.kind() {
                kv::DeleteErrorKind::WrongLastRevision => Ok(()),
                _ => Err(format!("{BUCKET} {name}: {e}")),
            }),
        _ => Ok(()),
    }
}

/// Of `names` (this machine's live sessions), those whose claim another machine holds, with
/// that machine; reads only (for `doctor`).
pub(crate) async fn held_elsewhere(
    js: &jetstream::Context,
    machine: &str,
    names: &[String],
) -> Result<Vec<(String, String)>, String> {
    let Ok(store) = js.get_key_value(BUCKET).await else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for name in names {
        if let Some((value, _)) = held(&store, name).await?
            && value != machine.as_bytes()
        {
            out.push((name.clone(), String::from_utf8_lossy(&value).into_owned()));
        }
    }
    Ok(out)
}

/// The warning for a name live here whose claim another machine holds.
pub fn clash(name: &str, here: &str, holder: &str) -> String {
    format!(
        "the session name {name:?} is live on this machine ({here}) and on machine {holder}, \
         which claimed it first: mail to {name:?} reaches both; rename the session here \
         (t9_ipc_set_name)"
    )
}

/// Claims `name` for this machine (`settings.machine`) on its own connection to the hub, as
/// a rename does before it takes the name; an error says why the hub could not be asked.
pub async fn claim_now(settings: &Settings, name: &str) -> Result<Claim, String> {
    let store = bucket(&super::hub::connect(settings).await?).await?;
    claim(&store, name, &settings.machine).await
}

/// The machine whose claim on `name` is live in the hub, if any.
pub async fn holder_now(settings: &Settings, name: &str) -> Result<Option<String>, String> {
    let Ok(store) = super::hub::connect(settings)
        .await?
        .get_key_value(BUCKET)
        .await
    else {
        // No bridge has claimed anything yet.
        return Ok(None);
    };
    Ok(held(&store, name)
        .await?
        .map(|(value, _)| String::from_utf8_lossy(&value).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_created_refreshed_or_left_to_its_machine() {
        assert_eq!(step(None, "laptop"), Step::Create);
        assert_eq!(step(Some((b"laptop", 7)), "laptop"), Step::Refresh(7));
        assert_eq!(
            step(Some((b"buildbox", 7)), "laptop"),
            Step::Taken("buildbox".to_owned())
        );
        // A machine whose name starts like ours is another machine.
        assert_eq!(
            step(Some((b"laptop-2", 3)), "laptop"),
            Step::Taken("laptop-2".to_owned())
        );
    }

    #[test]
    fn a_clash_names_both_machines_and_what_to_do() {
        let said = clash("alpha", "buildbox", "laptop");
        assert!(said.contains("\"alpha\""), "{said}");
        assert!(said.contains("(buildbox)"), "{said}");
        assert!(said.contains("machine laptop"), "{said}");
        assert!(said.contains("t9_ipc_set_name"), "{said}");
    }
}
