//! What crosses between machines: one NATS message per message file. The payload is the
//! file's bytes, unchanged; headers carry the origin machine, the message id, the origin's
//! public key and its signature (see [`keys::signed_bytes`](super::keys::signed_bytes)).
//! Pure: no I/O, no NATS types.

use ed25519_dalek::{Signature, VerifyingKey};

use super::keys::{self, MachineKey};

/// The origin machine's name.
pub const H_MACHINE: &str = "T9-Machine";
/// The message id (the file name without `.md`), percent-encoded.
pub const H_ID: &str = "T9-Id";
/// The origin machine's Ed25519 public key, hex.
pub const H_KEY: &str = "T9-Key";
/// The signature, hex.
pub const H_SIG: &str = "T9-Sig";
/// JetStream's de-duplication header: the (encoded) message id.
pub const H_NATS_MSG_ID: &str = "Nats-Msg-Id";

/// The longest id that crosses: the file name (id + `.md`) must fit a 255-byte name.
pub const MAX_ID_BYTES: usize = 250;

/// A message as it crosses: origin, id, key, signature and the file's bytes.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub machine: String,
    pub id: String,
    pub key: VerifyingKey,
    pub signature: Signature,
    pub bytes: Vec<u8>,
}

/// Why an arriving message was refused; the message is kept aside, never delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A header is missing or does not read.
    Malformed(String),
    /// The subject names another machine than the `T9-Machine` header.
    WrongSubject { subject: String },
    /// The signature does not cover these bytes, this id and this machine with this key.
    BadSignature,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed(why) => write!(f, "malformed: {why}"),
            Refusal::WrongSubject { subject } => {
                write!(
                    f,
                    "published on {subject}, which is not its machine's subject"
                )
            }
            Refusal::BadSignature => f.write_str("the signature does not match"),
        }
    }
}

impl Envelope {
    /// Signs a message file of this machine for publishing.
    pub fn seal(key: &MachineKey, machine: &str, id: &str, bytes: Vec<u8>) -> Envelope {
        Envelope {
            machine: machine.to_owned(),
            id: id.to_owned(),
            key: key.public(),
            signature: key.sign(machine, id, &bytes),
            bytes,
        }
    }

    /// The headers to publish with the bytes, `Nats-Msg-Id` included.
    pub fn headers(&self) -> [(&'static str, String); 5] {
        let id = encode_id(&self.id);
        [
            (H_NATS_MSG_ID, id.clone()),
            (H_MACHINE, self.machine.clone()),
            (H_ID, id),
            (H_KEY, hex(self.key.as_bytes())),
            (H_SIG, hex(&self.signature.to_bytes())),
        ]
    }

    /// Reads an arrived message: its headers (looked up by `header`), the subject it came on
    /// and its payload. The signature is checked against the key the message carries;
    /// whether that key is the machine's pinned one is for the caller to check.
    pub fn open(
        header: impl Fn(&str) -> Option<String>,
        subject: &str,
        bytes: Vec<u8>,
    ) -> Result<Envelope, Refusal> {
        let get = |name: &str| {
            header(name).ok_or_else(|| Refusal::Malformed(format!("no {name} header")))
        };
        let machine = get(H_MACHINE)?;
        super::check_machine(&machine)
            .map_err(|e| Refusal::Malformed(format!("{H_MACHINE}: {e}")))?;
        if subject != super::subject_of(&machine) {
            return Err(Refusal::WrongSubject {
                subject: subject.to_owned(),
            });
        }
        let id = decode_id(&get(H_ID)?)
            .ok_or_else(|| Refusal::Malformed(format!("{H_ID} is no message id")))?;
        let key = key_from_hex(&get(H_KEY)?)
            .ok_or_else(|| Refusal::Malformed(format!("{H_KEY} is no Ed25519 key")))?;
        let signature = from_hex(&get(H_SIG)?)
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| Signature::from_bytes(&b))
            .ok_or_else(|| Refusal::Malformed(format!("{H_SIG} is no signature")))?;
        if !keys::verify(&key, &signature, &machine, &id, &bytes) {
            return Err(Refusal::BadSignature);
        }
        Ok(Envelope {
            machine,
            id,
            key,
            signature,
            bytes,
        })
    }
}

/// True for an id that may cross and be written as `inbox/<id>.md`: not empty, at most
/// [`MAX_ID_BYTES`], no `/`, no control character, not starting with `.`.
pub fn id_may_cross(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && !id.starts_with('.')
        && !id.contains('/')
        && !id.chars().any(char::is_control)
}

/// An id as a header value: bytes outside `[A-Za-z0-9_.-]` as `%XX`. The ids t9-ipc makes
/// are unchanged.
pub fn encode_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The id an [`encode_id`] value stands for; `None` when it is no such value or no id that
/// may cross.
pub fn decode_id(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let pair = value.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(pair, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    let id = String::from_utf8(out).ok()?;
    id_may_cross(&id).then_some(id)
}

/// An Ed25519 public key from 64 hex digits.
pub fn key_from_hex(text: &str) -> Option<VerifyingKey> {
    from_hex(text)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
}

pub use crate::text::{from_hex, hex};

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const ID: &str = "20260406T153000123456-0a1b2c3d-alpha-beta-parser_done";

    fn sealed() -> Envelope {
        let key = MachineKey::from_seed([9; 32]);
        Envelope::seal(
            &key,
            "laptop",
            ID,
            b"---\nfrom: alpha\n---\n\nhi\n".to_vec(),
        )
    }

    fn open(
        env: &Envelope,
        subject: &str,
        edit: impl Fn(&mut HashMap<&str, String>),
    ) -> Result<Envelope, Refusal> {
        let mut headers: HashMap<&str, String> = env.headers().into_iter().collect();
        edit(&mut headers);
        Envelope::open(
            |name| headers.get(name).cloned(),
            subject,
            env.bytes.clone(),
        )
    }

    #[test]
    fn a_sealed_message_opens_with_its_bytes_id_and_machine() {
        let env = sealed();
        let headers: HashMap<_, _> = env.headers().into_iter().collect();
        assert_eq!(headers[H_NATS_MSG_ID], ID);
        assert_eq!(headers[H_MACHINE], "laptop");
        let got = open(&env, "t9ipc.msg.laptop", |_| {}).unwrap();
        assert_eq!(got.bytes, env.bytes);
        assert_eq!(got.id, ID);
        assert_eq!(got.machine, "laptop");
        assert_eq!(got.key, env.key);
    }

    #[test]
    fn tampering_is_refused() {
        let env = sealed();
        // Other bytes under the same signature.
        let mut changed = env.clone();
        changed.bytes.push(b'!');
        let headers: HashMap<_, _> = env.headers().into_iter().collect();
        let got = Envelope::open(
            |n| headers.get(n).cloned(),
            "t9ipc.msg.laptop",
            changed.bytes,
        );
        assert_eq!(got.unwrap_err(), Refusal::BadSignature);
        // Renamed, or claimed by another machine on its own subject.
        let got = open(&env, "t9ipc.msg.laptop", |h| {
            h.insert(H_ID, "other-id".into());
        });
        assert_eq!(got.unwrap_err(), Refusal::BadSignature);
        let got = open(&env, "t9ipc.msg.server", |h| {
            h.insert(H_MACHINE, "server".into());
        });
        assert_eq!(got.unwrap_err(), Refusal::BadSignature);
        // Another machine's key.
        let other = MachineKey::from_seed([1; 32]).public();
        let got = open(&env, "t9ipc.msg.laptop", |h| {
            h.insert(H_KEY, hex(other.as_bytes()));
        });
        assert_eq!(got.unwrap_err(), Refusal::BadSignature);
        // The subject of another machine.
        let got = open(&env, "t9ipc.msg.server", |_| {});
        assert!(matches!(got.unwrap_err(), Refusal::WrongSubject { .. }));
    }

    #[test]
    fn missing_or_unreadable_headers_are_malformed() {
        let env = sealed();
        for (name, value) in [
            (H_MACHINE, None),
            (H_MACHINE, Some("a/b")),
            (H_ID, None),
            (H_ID, Some("../etc")),
            (H_ID, Some("%2e%2e%2Fx")),
            (H_ID, Some(".hidden")),
            (H_KEY, Some("abcd")),
            (H_SIG, Some("zz")),
            (H_SIG, None),
        ] {
            let got = open(&env, "t9ipc.msg.laptop", |h| match value {
                Some(v) => {
                    h.insert(name, v.to_owned());
                }
                None => {
                    h.remove(name);
                }
            });
            assert!(
                matches!(got, Err(Refusal::Malformed(_))),
                "{name}={value:?}: {got:?}"
            );
        }
    }

    #[test]
    fn ids_round_trip_through_headers() {
        for id in [ID, "a b", "ünïcode: yes", "100%", "x.y-z_w"] {
            let encoded = encode_id(id);
            assert!(encoded.bytes().all(|b| b.is_ascii_graphic()), "{encoded}");
            assert_eq!(decode_id(&encoded).as_deref(), Some(id));
        }
        assert_eq!(encode_id(ID), ID);
        for bad in ["", "a%2Fb", "%0A", "%zz", "a b", "%2"] {
            assert_eq!(decode_id(bad), None, "{bad:?}");
        }
        assert!(!id_may_cross(&"x".repeat(MAX_ID_BYTES + 1)));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 15, 16, 255]), "000f10ff");
        assert_eq!(from_hex("000F10ff"), Some(vec![0, 15, 16, 255]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("gg"), None);
        assert_eq!(from_hex("éé"), None);
    }
}
