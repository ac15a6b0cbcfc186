//! The seal: a mark that t9-ipc's own code wrote a message file, so that a file claiming a
//! reserved sender (`telegram`, `human`, `system`) that t9-ipc did not write can be told.
//!
//! Every message from a reserved sender that [`crate::mailbox::Mailbox::write`] writes
//! carries a front-matter key `seal: v1:<hex>`: HMAC-SHA256, keyed by the mailbox's secret
//! `<data>/seal.key` (32 random bytes, mode 0600, made on first use), over the message id and
//! every key and value of the file but the seal itself, and the body. A reader recomputes it.
//! A session's messages carry none: a reader checks no seal of a session name, which anyone
//! may use. What this proves, and what it cannot (a process of the same user can read the
//! key), is in `docs/SECURITY.md`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ring::hmac;

use crate::error::{Error, Result};
use crate::message::FrontMatter;
use crate::text::{from_hex, hex};

/// The front-matter key that holds the seal.
pub const SEAL_KEY: &str = "seal";
/// The key file's name under the mailbox root.
pub const KEY_FILE: &str = "seal.key";
/// The version prefix of a seal value.
const V1: &str = "v1:";

/// What a reader can say about a message's sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A session name: anyone may use one, so there is nothing to verify.
    Session,
    /// A reserved sender in a file t9-ipc's own code wrote (the seal is valid).
    Verified,
    /// A reserved sender in a file without a valid seal: someone else wrote it (or changed
    /// it), or this process cannot read the key.
    Unverified,
}

/// The mailbox's key, read (or made) on first use.
pub struct Sealer {
    path: PathBuf,
    key: Mutex<Option<Arc<hmac::Key>>>,
    /// A key that cannot be used is warned about once.
    warned: AtomicBool,
}

impl Sealer {
    /// The sealer of the mailbox at `root`; nothing is read yet.
    pub fn new(root: &Path) -> Sealer {
        Sealer {
            path: root.join(KEY_FILE),
            key: Mutex::new(None),
            warned: AtomicBool::new(false),
        }
    }

    /// The key, read or made now if need be; `None` (with one warning) when it cannot be had
    /// or must not be trusted. No lock is held while the file is read: two callers that
    /// both find no key read the same file (the one [`make_key`] linked into place).
    fn key(&self) -> Option<Arc<hmac::Key>> {
        if let Some(key) = &*self.slot() {
            return Some(key.clone());
        }
        match load_or_make(&self.path) {
            Ok(bytes) => {
                let key = Arc::new(hmac::Key::new(hmac::HMAC_SHA256, &bytes));
                Some(self.slot().get_or_insert(key).clone())
            }
            Err(err) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%err, "messages cannot be sealed or their reserved senders verified");
                }
                None
            }
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<hmac::Key>>> {
        // The guard holds plain data; a panic elsewhere leaves it usable.
        self.key.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The seal value for message `id` with this front matter (its seal, if any, left out)
    /// and body; `None` when the key cannot be had.
    pub fn seal(&self, id: &str, front: &FrontMatter, body: &str) -> Option<String> {
        let key = self.key()?;
        let tag = hmac::sign(&key, &canonical(id, front, body));
        Some(format!("{V1}{}", hex(tag.as_ref())))
    }

    /// What can be said about the sender of message `id`.
    pub fn sender(&self, id: &str, front: &FrontMatter, body: &str) -> Sender {
        if !crate::message::is_reserved(front.from.trim()) {
            return Sender::Session;
        }
        let valid = front
            .extra
            .get(SEAL_KEY)
            .and_then(|v| v.trim().strip_prefix(V1))
            .and_then(from_hex)
            .zip(self.key())
            .is_some_and(|(tag, key)| {
                hmac::verify(&key, &canonical(id, front, body), &tag).is_ok()
            });
        if valid {
            Sender::Verified
        } else {
            Sender::Unverified
        }
    }
}

/// The bytes the seal covers: a version line, the id, every front-matter key and value but
/// the seal (known keys in a fixed order, then the others sorted), the body; each part
/// prefixed by its length, so no two messages give the same bytes.
fn canonical(id: &str, front: &FrontMatter, body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 512);
    let mut part = |s: &str| {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    part("t9-ipc seal v1");
    part(id);
    let known = [
        ("from", Some(&front.from)),
        ("to", Some(&front.to)),
        ("type", Some(&front.kind)),
        ("subject", Some(&front.subject)),
        ("priority", Some(&front.priority)),
        ("created", Some(&front.created)),
        ("reply_to", front.reply_to.as_ref()),
        ("thread", front.thread.as_ref()),
        ("supersedes", front.supersedes.as_ref()),
        ("expires", front.expires.as_ref()),
        ("expects_reply", front.expects_reply.as_ref()),
    ];
    for (key, value) in known {
        if let Some(value) = value {
            part(key);
            part(value);
        }
    }
    for (key, value) in front.extra.iter().filter(|(k, _)| *k != SEAL_KEY) {
        part(key);
        part(value);
    }
    part(body);
    out
}

/// The key's 32 bytes: read from `path`, or made there when it does not exist.
fn load_or_make(path: &Path) -> Result<Vec<u8>> {
    match read_key(path) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            make_key(path)?;
            read_key(path)
        }
        other => other,
    }
}

/// Reads the key file: a regular file (no link followed) of this user, readable by no one
/// else, holding 64 hex digits. Any other file is not trusted: whoever else can read or
/// wrote it could seal messages.
fn read_key(path: &Path) -> Result<Vec<u8>> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(Error::io("reading", path))?;
    let meta = file.metadata().map_err(Error::io("reading", path))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let refuse = |why: &str| {
        Err(Error::Refused(format!(
            "{} {why}; it is not trusted. Remove it: a new key is made on the next send \
             (earlier messages from telegram or human then show as unverified)",
            path.display()
        )))
    };
    if !meta.is_file() {
        return refuse("is not a regular file");
    }
    if meta.uid() != me {
        return refuse("belongs to another user");
    }
    if meta.mode() & 0o077 != 0 {
        return refuse("is readable or writable by other users");
    }
    let mut text = String::new();
    (&mut file)
        .take(256)
        .read_to_string(&mut text)
        .map_err(Error::io("reading", path))?;
    match from_hex(text.trim()) {
        Some(bytes) if bytes.len() == 32 => Ok(bytes),
        _ => refuse("does not hold 64 hex digits"),
    }
}

/// Makes a fresh key file at `path` unless one appears there first: the key is written to
/// a temporary file (0600) and linked to `path`, which fails when `path` exists, so two
/// processes making it at once agree on one key.
fn make_key(path: &Path) -> Result<()> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Refused(format!("no system randomness for the seal key: {e}")))?;
    let tmp = path.with_extension(format!("tmp.{}", crate::fsx::random_uid()));
    let written = (|| -> std::io::Result<()> {
        let mut file: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(format!("{}\n", hex(&bytes)).as_bytes())?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                crate::fsx::sync_dir(dir)?;
            }
            tracing::info!(path = %path.display(), "made the mailbox's seal key");
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(Error::io("creating", path)(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn front(from: &str) -> FrontMatter {
        FrontMatter {
            from: from.into(),
            to: "beta".into(),
            kind: "ipc".into(),
            subject: "s".into(),
            priority: "normal".into(),
            created: "2026-04-06 15:30:00".into(),
            ..FrontMatter::default()
        }
    }

    fn sealed(sealer: &Sealer, id: &str, from: &str, body: &str) -> FrontMatter {
        let mut f = front(from);
        let seal = sealer.seal(id, &f, body).expect("a key");
        f.extra.insert(SEAL_KEY.into(), seal);
        f
    }

    #[test]
    fn a_seal_covers_the_id_every_value_and_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::new(dir.path());
        let f = sealed(&sealer, "id1", "telegram", "body");
        assert_eq!(sealer.sender("id1", &f, "body"), Sender::Verified);
        assert_eq!(sealer.sender("id2", &f, "body"), Sender::Unverified);
        assert_eq!(sealer.sender("id1", &f, "body!"), Sender::Unverified);
        let mut to = f.clone();
        to.to = "gamma".into();
        assert_eq!(sealer.sender("id1", &to, "body"), Sender::Unverified);
        let mut extra = f.clone();
        extra.extra.insert("x".into(), "y".into());
        assert_eq!(sealer.sender("id1", &extra, "body"), Sender::Unverified);
        // A session's own seal does not carry over to a reserved sender.
        let alpha = sealed(&sealer, "id1", "alpha", "body");
        let mut forged = alpha.clone();
        forged.from = "telegram".into();
        assert_eq!(sealer.sender("id1", &alpha, "body"), Sender::Session);
        assert_eq!(sealer.sender("id1", &forged, "body"), Sender::Unverified);
        assert_eq!(
            sealer.sender("id1", &front("Human"), "body"),
            Sender::Unverified
        );
        // Another process of this mailbox reads the same key.
        assert_eq!(
            Sealer::new(dir.path()).sender("id1", &f, "body"),
            Sender::Verified
        );
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn processes_making_the_key_at_once_agree_on_one() {
        let dir = tempfile::tempdir().unwrap();
        let seals: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Sealer::new(dir.path()).seal("id", &front("human"), "b")))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().expect("a key"))
                .collect()
        });
        assert!(seals.windows(2).all(|w| w[0] == w[1]), "{seals:?}");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "only the key file stays");
    }

    #[test]
    fn a_key_others_can_read_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let f = sealed(&Sealer::new(dir.path()), "id", "telegram", "b");
        let path = dir.path().join(KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let sealer = Sealer::new(dir.path());
        assert_eq!(sealer.sender("id", &f, "b"), Sender::Unverified);
        assert!(sealer.seal("id", &f, "b").is_none());
        let err = read_key(&path).unwrap_err().to_string();
        assert!(err.contains("readable"), "{err}");
    }

    #[test]
    fn a_linked_key_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        Sealer::new(other.path())
            .seal("id", &front("a"), "")
            .unwrap();
        std::os::unix::fs::symlink(other.path().join(KEY_FILE), dir.path().join(KEY_FILE)).unwrap();
        assert!(
            Sealer::new(dir.path())
                .seal("id", &front("a"), "")
                .is_none()
        );
    }
}
