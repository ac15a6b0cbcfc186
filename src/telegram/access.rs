//! Who may talk: the Telegram user ids allowed to write to sessions and to answer tool
//! permission prompts (`IPC_TG_ALLOW` and the paired users), and the pairing codes of
//! `t9-ipc telegram pair`.
//!
//! On disk, under `<data>/telegram/` (each file 0600):
//!
//! ```text
//! paired.json            the paired users: user id, the chat they paired from, name, when
//! pairing/<CODE>.json    a code waiting to be sent to the bot, with its expiry
//! pairing/<CODE>.arrived who sent it (user id, chat id, name): written by the poller
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Local, TimeDelta};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsx::private_dir;
use crate::fsx::write_atomic;

/// How long a pairing code is good for.
pub const PAIR_CODE_LIFE: TimeDelta = TimeDelta::minutes(10);
/// The letters of a pairing code: no 0/O, 1/I/L, so it reads back without doubt.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 6;

/// One user paired with `t9-ipc telegram pair`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairedUser {
    pub user_id: i64,
    /// The chat the code came from (for a private chat, the same number as the user id).
    pub chat_id: i64,
    /// The name Telegram shows for them (first name and @username), for `telegram status`.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub paired_at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PairedFile {
    #[serde(default)]
    users: Vec<PairedUser>,
}

/// A pairing code waiting for its message.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingCode {
    expires: String,
}

/// Who sent a pairing code, as the poller saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrival {
    pub user_id: i64,
    pub chat_id: i64,
    #[serde(default)]
    pub name: String,
}

/// The paired users and the pairing codes of one mailbox.
#[derive(Debug, Clone)]
pub struct Access {
    paired: PathBuf,
    pairing: PathBuf,
}

impl Access {
    pub fn open(data_dir: &Path) -> Result<Access> {
        let dir = data_dir.join("telegram");
        let access = Access {
            paired: dir.join("paired.json"),
            pairing: dir.join("pairing"),
        };
        private_dir(&access.pairing)?;
        Ok(access)
    }

    pub fn pairing_dir(&self) -> &Path {
        &self.pairing
    }

    /// The paired users, oldest first. A missing or unreadable file reads as none (an
    /// unreadable one is warned about).
    pub fn paired(&self) -> Vec<PairedUser> {
        match fs::read_to_string(&self.paired) {
            Ok(text) => match serde_json::from_str::<PairedFile>(&text) {
                Ok(file) => file.users,
                Err(err) => {
                    tracing::warn!(file = %self.paired.display(), %err, "paired.json is not what this version wrote; no user counts as paired");
                    Vec::new()
                }
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(err) => {
                tracing::warn!(file = %self.paired.display(), %err, "reading paired.json");
                Vec::new()
            }
        }
    }

    fn save(&self, users: Vec<PairedUser>) -> Result<()> {
        let text = serde_json::to_string_pretty(&PairedFile { users }).expect("plain data");
        write_atomic(&self.paired, text.as_bytes())
    }

    /// Adds (or replaces) a paired user.
    pub fn pair(&self, user: PairedUser) -> Result<()> {
        let mut users = self.paired();
        users.retain(|u| u.user_id != user.user_id);
        users.push(user);
        self.save(users)
    }

    /// Removes a paired user; false when they were not paired.
    pub fn unpair(&self, user_id: i64) -> Result<bool> {
        let mut users = self.paired();
        let before = users.len();
        users.retain(|u| u.user_id != user_id);
        if users.len() == before {
            return Ok(false);
        }
        self.save(users)?;
        Ok(true)
    }

    /// Makes a new pairing code, good until the returned time.
    pub fn new_code(&self, now: DateTime<Local>) -> Result<(String, DateTime<Local>)> {
        let mut bytes = [0u8; CODE_LEN];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::Telegram(format!("no system randomness for a code: {e}")))?;
        let code: String = bytes
            .iter()
            .map(|b| CODE_ALPHABET[*b as usize % CODE_ALPHABET.len()] as char)
            .collect();
        let expires = now + PAIR_CODE_LIFE;
        let pending = PendingCode {
            expires: expires.to_rfc3339(),
        };
        let path = self.pairing.join(format!("{code}.json"));
        write_atomic(
            &path,
            serde_json::to_string(&pending).expect("plain").as_bytes(),
        )?;
        Ok((code, expires))
    }

    /// The path where the arrival of `code` is recorded.
    pub fn arrival_path(&self, code: &str) -> PathBuf {
        self.pairing.join(format!("{code}.arrived"))
    }

    /// The arrival of `code`, once the poller recorded it.
    pub fn arrival(&self, code: &str) -> Option<Arrival> {
        let text = fs::read_to_string(self.arrival_path(code)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Forgets `code` (its file and its arrival).
    pub fn drop_code(&self, code: &str) {
        let _ = fs::remove_file(self.pairing.join(format!("{code}.json")));
        let _ = fs::remove_file(self.arrival_path(code));
    }

    /// When `text` is a pending, unexpired code (alone, or after `/start` or `/pair`), records
    /// who sent it and returns the code. Anything else: `None`.
    pub fn code_arrived(
        &self,
        text: &str,
        arrival: &Arrival,
        now: DateTime<Local>,
    ) -> Option<String> {
        let code = code_in(text)?;
        let path = self.pairing.join(format!("{code}.json"));
        let pending: PendingCode = serde_json::from_str(&fs::read_to_string(&path).ok()?).ok()?;
        let expires = DateTime::parse_from_rfc3339(&pending.expires).ok()?;
        if now > expires {
            tracing::info!("an expired pairing code arrived; ignored");
            return None;
        }
        match self.record_arrival(&code, arrival) {
            Ok(true) => Some(code),
            Ok(false) => None,
            Err(err) => {
                tracing::warn!(err = %format!("{err:#}"), "recording a pairing");
                None
            }
        }
    }

    /// Records who sent `code` (for the command waiting for it), unless an arrival is
    /// recorded already; false then.
    pub fn record_arrival(&self, code: &str, arrival: &Arrival) -> Result<bool> {
        if self.arrival_path(code).exists() {
            return Ok(false);
        }
        let text = serde_json::to_string(arrival).expect("plain");
        write_atomic(&self.arrival_path(code), text.as_bytes())?;
        Ok(true)
    }
}

/// The code in a message: `CODE`, `/start CODE` or `/pair CODE` (any case).
pub(super) fn code_in(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    let first = words.next()?;
    let code = if first.starts_with('/') {
        let cmd = first.split('@').next().unwrap_or(first);
        if !matches!(cmd, "/start" | "/pair") {
            return None;
        }
        words.next()?
    } else {
        first
    };
    if words.next().is_some() {
        return None;
    }
    let code = code.to_ascii_uppercase();
    (code.len() == CODE_LEN && code.bytes().all(|b| CODE_ALPHABET.contains(&b))).then_some(code)
}

/// Who may talk, read once per batch of updates: the ids of `IPC_TG_ALLOW`, the paired users,
/// and in a private chat (a positive `IPC_TG_CHAT`) its own user.
#[derive(Debug, Clone, Default)]
pub struct Allowed {
    /// `IPC_TG_ALLOW` and the paired users: the ids that may answer permission prompts.
    pub explicit: Vec<i64>,
    /// The private chat's own user (its chat id is the person's user id).
    pub private_chat_user: Option<i64>,
}

impl Allowed {
    pub fn new(env: &[i64], paired: &[PairedUser], chat: Option<i64>) -> Allowed {
        let mut explicit: Vec<i64> = env.to_vec();
        explicit.extend(paired.iter().map(|u| u.user_id));
        explicit.sort_unstable();
        explicit.dedup();
        Allowed {
            explicit,
            private_chat_user: chat.filter(|c| *c > 0),
        }
    }

    /// May `user` write to sessions?
    pub fn may_write(&self, user: i64) -> bool {
        self.explicit.contains(&user) || self.private_chat_user == Some(user)
    }

    /// May `user` answer a permission prompt? Only the ids named explicitly.
    pub fn may_answer(&self, user: i64) -> bool {
        self.explicit.contains(&user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_found_in_what_the_person_sends() {
        assert_eq!(code_in("k7pq2x"), Some("K7PQ2X".into()));
        assert_eq!(code_in(" /start K7PQ2X "), Some("K7PQ2X".into()));
        assert_eq!(code_in("/pair@t9bot K7PQ2X"), Some("K7PQ2X".into()));
        for no in [
            "K7PQ2",
            "K7PQ2X1",
            "K0PQ2X",
            "/help K7PQ2X",
            "K7PQ2X please",
            "",
        ] {
            assert_eq!(code_in(no), None, "{no}");
        }
    }

    #[test]
    fn a_code_arrives_once_and_not_after_its_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let access = Access::open(dir.path()).unwrap();
        let now = Local::now();
        let (code, expires) = access.new_code(now).unwrap();
        assert!(expires > now);
        let who = Arrival {
            user_id: 5,
            chat_id: 5,
            name: "Me".into(),
        };
        assert_eq!(access.code_arrived("WRONG1", &who, now), None);
        assert_eq!(
            access.code_arrived(&code, &who, now + PAIR_CODE_LIFE + TimeDelta::seconds(1)),
            None
        );
        assert_eq!(
            access.code_arrived(&code.to_lowercase(), &who, now),
            Some(code.clone())
        );
        assert_eq!(access.arrival(&code), Some(who.clone()));
        assert_eq!(access.code_arrived(&code, &who, now), None, "only once");
        access
            .pair(PairedUser {
                user_id: 5,
                chat_id: 5,
                name: "Me".into(),
                paired_at: String::new(),
            })
            .unwrap();
        assert_eq!(access.paired().len(), 1);
        assert!(access.unpair(5).unwrap());
        assert!(!access.unpair(5).unwrap());
        assert!(access.paired().is_empty());
    }

    #[test]
    fn who_may_write_and_who_may_answer() {
        let paired = [PairedUser {
            user_id: 9,
            chat_id: 9,
            name: String::new(),
            paired_at: String::new(),
        }];
        let a = Allowed::new(&[7], &paired, Some(5));
        assert!(a.may_write(7) && a.may_write(9) && a.may_write(5));
        assert!(a.may_answer(7) && a.may_answer(9));
        assert!(
            !a.may_answer(5),
            "the private chat's user must be named to approve"
        );
        assert!(!a.may_write(6));
        let group = Allowed::new(&[], &[], Some(-100));
        assert!(!group.may_write(100));
    }
}
