//! The bridge's own files: private folders, and refused messages kept aside in
//! `quarantine/`. Message files in `inbox/` are read and written by
//! [`crate::mailbox::read_bytes`] and [`crate::mailbox::write_arrivals`].

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsx::{random_uid, sync_dir};

/// Creates `dir` (and its parents) with mode 0700 when it is missing.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::io("creating", dir)(e)),
    }
}

/// Keeps a refused message in `quarantine/` as `<name>.md` (its bytes) and `<name>.why`
/// (why, and what it claimed). The same bytes kept before under that name are not kept
/// twice; other bytes under a taken name get a random suffix. Returns the path of the kept
/// bytes.
pub fn quarantine(dir: &Path, name: &str, bytes: &[u8], why: &str) -> Result<PathBuf> {
    create_private_dir(dir)?;
    let mut name = name.to_owned();
    if let Ok(kept) = fs::read(dir.join(format!("{name}.md"))) {
        if kept == bytes {
            return Ok(dir.join(format!("{name}.md")));
        }
        name = format!("{name}-{}", random_uid());
    }
    let held = dir.join(format!("{name}.md"));
    let reason = dir.join(format!("{name}.why"));
    for (path, content) in [(&held, bytes), (&reason, why.as_bytes())] {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut file) => {
                file.write_all(content)
                    .and_then(|()| file.sync_all())
                    .map_err(Error::io("writing", path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("creating", path)(e)),
        }
    }
    sync_dir(dir)?;
    Ok(held)
}

/// One message kept aside, for `doctor` and people.
#[derive(Debug, Clone)]
pub struct Held {
    /// The kept bytes (`<name>.md`).
    pub path: PathBuf,
    /// The text of `<name>.why`.
    pub why: String,
}

/// Every message in `quarantine/`, by name.
pub fn quarantined(dir: &Path) -> Result<Vec<Held>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", dir)(e)),
    };
    let mut held: Vec<Held> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|path| Held {
            why: fs::read_to_string(path.with_extension("why")).unwrap_or_default(),
            path,
        })
        .collect();
    held.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(held)
}

/// Releases what `machine` sent while its key was not trusted: each message kept aside
/// whose `.why` names `machine` and `key` (just trusted), checked again against the key and
/// its signature, is written into `inbox/` the way every arrival is (noted in
/// `arrived.log` first, so it is never published as this machine's) and leaves
/// `quarantine/`. Anything else stays kept aside. Returns the ids released.
pub fn release(
    paths: &super::Paths,
    mailbox: &crate::mailbox::Mailbox,
    machine: &str,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<Vec<String>> {
    use super::wire;
    let key_hex = wire::hex(key.as_bytes());
    let mut ledger = None;
    let mut released = Vec::new();
    for held in quarantined(&paths.quarantine())? {
        let field = |name: &str| {
            held.why
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        if field("machine: ") != Some(machine) || field("key: ") != Some(key_hex.as_str()) {
            continue;
        }
        let Some(id) = field("id: ").filter(|id| wire::id_may_cross(id)) else {
            continue;
        };
        let signature = field("signature: ")
            .and_then(wire::from_hex)
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| ed25519_dalek::Signature::from_bytes(&b));
        let bytes = fs::read(&held.path).map_err(Error::io("reading", &held.path))?;
        if !signature.is_some_and(|sig| super::keys::verify(key, &sig, machine, id, &bytes)) {
            continue;
        }
        if ledger.is_none() {
            ledger = Some(super::ledger::Ledger::open(
                &paths.published(),
                &paths.arrived(),
            )?);
        }
        let ledger = ledger.as_mut().expect("opened above");
        if !ledger.has_arrived(id) && !mailbox.exists(id) {
            let arrival = crate::mailbox::Arrival {
                id,
                machine,
                bytes: &bytes,
            };
            crate::mailbox::write_arrivals(mailbox.inbox(), &[arrival], |flush| {
                ledger.record_arriving([(id, machine)], flush)
            })?;
            ledger.record_arrived([id])?;
        }
        for path in [held.path.clone(), held.path.with_extension("why")] {
            fs::remove_file(&path).map_err(Error::io("removing", &path))?;
        }
        released.push(id.to_owned());
    }
    if !released.is_empty() {
        sync_dir(&paths.quarantine())?;
    }
    Ok(released)
}

/// True when `path` is private to its owner (no group or other bits).
pub fn is_private(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_keeps_each_refused_message_once_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("quarantine");
        let first = quarantine(&q, "laptop-id", b"bytes", "bad signature").unwrap();
        // The same message again (redelivered): kept once.
        assert_eq!(
            quarantine(&q, "laptop-id", b"bytes", "again").unwrap(),
            first
        );
        // Other bytes under the same name: kept too, beside it.
        let other = quarantine(&q, "laptop-id", b"other", "other").unwrap();
        assert_ne!(other, first);
        let held = quarantined(&q).unwrap();
        assert_eq!(held.len(), 2);
        let first = held.iter().find(|h| h.path == first).unwrap();
        assert_eq!(fs::read(&first.path).unwrap(), b"bytes");
        assert_eq!(first.why, "bad signature");
        assert!(is_private(&q) && is_private(&first.path));
        assert_eq!(fs::read(&other).unwrap(), b"other");
    }
}
