//! This machine's Ed25519 key (`machine.key`, 0600, made on first use) and the keys pinned
//! for other machines (`known_machines`: the first key seen for a name is kept; a different
//! one later is refused until a person trusts it).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::error::{Error, Result};
use crate::federation::wire::{from_hex, hex, key_from_hex};

/// This machine's signing key.
pub struct MachineKey {
    signing: SigningKey,
}

impl std::fmt::Debug for MachineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineKey")
            .field("public", &hex(self.public().as_bytes()))
            .finish_non_exhaustive()
    }
}

impl MachineKey {
    /// Reads the key at `path`, or makes one there (0600) when there is none. Two processes
    /// making it at once end up with the same key: the file is linked into place only if no
    /// other process put one there first.
    pub fn load_or_create(path: &Path) -> Result<MachineKey> {
        match read_key(path) {
            Ok(key) => return Ok(key),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| {
            Error::Refused(format!(
                "no system randomness to make the machine key {}: {e}",
                path.display()
            ))
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".machine.key.tmp.{}", crate::mailbox::random_uid()));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(Error::io("creating", &tmp))?;
            writeln!(file, "{}", hex(&seed)).map_err(Error::io("writing", &tmp))?;
            file.sync_all().map_err(Error::io("flushing", &tmp))?;
            match fs::hard_link(&tmp, path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(Error::io("linking", path)(e)),
            }
        })();
        let _ = fs::remove_file(&tmp);
        written?;
        crate::fsx::sync_dir(dir)?;
        read_key(path)
    }

    /// A key from a seed (tests).
    pub fn from_seed(seed: [u8; 32]) -> MachineKey {
        MachineKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    pub fn public(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Signs what [`signed_bytes`] makes of a message.
    pub fn sign(&self, machine: &str, id: &str, bytes: &[u8]) -> Signature {
        self.signing.sign(&signed_bytes(machine, id, bytes))
    }
}

/// What a signature covers: a fixed label, the origin machine, the message id and the file's
/// bytes, so a signed file can be neither renamed nor claimed by another machine.
pub fn signed_bytes(machine: &str, id: &str, bytes: &[u8]) -> Vec<u8> {
    const LABEL: &[u8] = b"t9-ipc federation v1\0";
    let mut out = Vec::with_capacity(LABEL.len() + machine.len() + id.len() + bytes.len() + 2);
    out.extend_from_slice(LABEL);
    out.extend_from_slice(machine.as_bytes());
    out.push(0);
    out.extend_from_slice(id.as_bytes());
    out.push(0);
    out.extend_from_slice(bytes);
    out
}

/// True when `signature` by `key` covers this machine, id and bytes.
pub fn verify(
    key: &VerifyingKey,
    signature: &Signature,
    machine: &str,
    id: &str,
    bytes: &[u8],
) -> bool {
    key.verify(&signed_bytes(machine, id, bytes), signature)
        .is_ok()
}

fn read_key(path: &Path) -> Result<MachineKey> {
    check_private(path)?;
    let text = fs::read_to_string(path).map_err(Error::io("reading", path))?;
    let seed: [u8; 32] = from_hex(text.trim())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            Error::Refused(format!(
                "{} is no machine key (64 hex digits expected); move it away to make a new one",
                path.display()
            ))
        })?;
    Ok(MachineKey::from_seed(seed))
}

/// Refuses a key file others can read: the key proves this machine's messages.
fn check_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(Error::io("reading", path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Refused(format!(
            "{} is readable by others (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// What [`Pins::check`] found for a machine's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// The first key seen for this machine: now pinned.
    New,
    /// The pinned key.
    Same,
    /// Another key than the pinned one: refuse the message.
    Changed { pinned: VerifyingKey },
}

/// The keys pinned for other machines, kept in `known_machines`: one `<machine> <hex key>`
/// line each, appended under the file's lock. A later line for the same machine replaces an
/// earlier one (that is how a person trusts a new key); lines that do not read are skipped.
#[derive(Debug)]
pub struct Pins {
    path: PathBuf,
    keys: BTreeMap<String, VerifyingKey>,
}

impl Pins {
    pub fn load(path: &Path) -> Result<Pins> {
        let mut pins = Pins {
            path: path.to_path_buf(),
            keys: BTreeMap::new(),
        };
        pins.reload()?;
        Ok(pins)
    }

    fn reload(&mut self) -> Result<()> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io("reading", &self.path)(e)),
        };
        self.keys = parse_pins(&text);
        Ok(())
    }

    /// The pinned key of a machine.
    pub fn get(&self, machine: &str) -> Option<&VerifyingKey> {
        self.keys.get(machine)
    }

    /// Every pinned machine and key.
    pub fn all(&self) -> &BTreeMap<String, VerifyingKey> {
        &self.keys
    }

    /// Compares `key` with the one pinned for `machine`, pinning it when there is none.
    pub fn check(&mut self, machine: &str, key: &VerifyingKey) -> Result<Pin> {
        if self.keys.get(machine) == Some(key) {
            return Ok(Pin::Same);
        }
        // Not pinned, or pinned to another key: another process (a person's `trust`) may
        // have changed the pins meanwhile. Read again under the lock, then append if new.
        let file = self.open_locked()?;
        self.reload()?;
        match self.keys.get(machine) {
            Some(pinned) if pinned == key => Ok(Pin::Same),
            Some(pinned) => Ok(Pin::Changed { pinned: *pinned }),
            None => {
                append_pin(&file, &self.path, machine, key)?;
                self.keys.insert(machine.to_owned(), *key);
                Ok(Pin::New)
            }
        }
    }

    /// Pins `key` for `machine`, replacing any key pinned before (a person decided to trust
    /// it).
    pub fn trust(&mut self, machine: &str, key: &VerifyingKey) -> Result<()> {
        let file = self.open_locked()?;
        append_pin(&file, &self.path, machine, key)?;
        self.reload()
    }

    fn open_locked(&self) -> Result<File> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(Error::io("opening", &self.path))?;
        file.lock().map_err(Error::io("locking", &self.path))?;
        Ok(file)
    }
}

fn append_pin(mut file: &File, path: &Path, machine: &str, key: &VerifyingKey) -> Result<()> {
    let line = format!("{machine} {}\n", hex(key.as_bytes()));
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(Error::io("writing", path))
}

fn parse_pins(text: &str) -> BTreeMap<String, VerifyingKey> {
    let mut keys = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(machine), Some(key), None) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let key = key_from_hex(key);
        match key {
            Some(key) if super::check_machine(machine).is_ok() => {
                keys.insert(machine.to_owned(), key);
            }
            _ => tracing::warn!(%line, "known_machines: skipped a line that does not read"),
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_made_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine.key");
        let first = MachineKey::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = MachineKey::load_or_create(&path).unwrap();
        assert_eq!(first.public(), again.public());
        // Only the key file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["machine.key"]);
    }

    #[test]
    fn a_key_readable_by_others_or_damaged_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine.key");
        MachineKey::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = MachineKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not hex\n").unwrap();
        let err = MachineKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("no machine key"), "{err}");
    }

    #[test]
    fn a_signature_covers_machine_id_and_bytes() {
        let key = MachineKey::from_seed([7; 32]);
        let bytes = b"---\nfrom: a\nto: b\n---\n\nhi\n";
        let sig = key.sign("laptop", "id-1", bytes);
        assert!(verify(&key.public(), &sig, "laptop", "id-1", bytes));
        assert!(!verify(&key.public(), &sig, "server", "id-1", bytes));
        assert!(!verify(&key.public(), &sig, "laptop", "id-2", bytes));
        let mut changed = bytes.to_vec();
        let last = changed.len() - 2;
        changed[last] = b'o';
        assert!(!verify(&key.public(), &sig, "laptop", "id-1", &changed));
        let other = MachineKey::from_seed([8; 32]);
        assert!(!verify(&other.public(), &sig, "laptop", "id-1", bytes));
    }

    #[test]
    fn the_first_key_is_pinned_and_a_changed_one_refused_until_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_machines");
        let one = MachineKey::from_seed([1; 32]).public();
        let two = MachineKey::from_seed([2; 32]).public();
        let mut pins = Pins::load(&path).unwrap();
        assert_eq!(pins.check("laptop", &one).unwrap(), Pin::New);
        assert_eq!(pins.check("laptop", &one).unwrap(), Pin::Same);
        assert_eq!(
            pins.check("laptop", &two).unwrap(),
            Pin::Changed { pinned: one }
        );
        // The pin survives a restart, and the file is private.
        let mut pins = Pins::load(&path).unwrap();
        assert_eq!(
            pins.check("laptop", &two).unwrap(),
            Pin::Changed { pinned: one }
        );
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A person trusts the new key: it replaces the old one, also after a restart.
        pins.trust("laptop", &two).unwrap();
        assert_eq!(pins.check("laptop", &two).unwrap(), Pin::Same);
        let mut pins = Pins::load(&path).unwrap();
        assert_eq!(pins.check("laptop", &two).unwrap(), Pin::Same);
        assert_eq!(
            pins.check("laptop", &one).unwrap(),
            Pin::Changed { pinned: two }
        );
    }

    #[test]
    fn damaged_pin_lines_are_skipped() {
        let good = MachineKey::from_seed([3; 32]).public();
        let text = format!(
            "server {}\nbroken\nx {}\nlaptop zz\nbox {} extra\n",
            hex(good.as_bytes()),
            hex(good.as_bytes()),
            hex(good.as_bytes())
        );
        let pins = parse_pins(&text);
        assert_eq!(pins.keys().collect::<Vec<_>>(), ["server"]);
    }
}
