//! Message ids: the file stem `<stamp>-<uid>-<from>-<to>-<subject>`, made and read here
//! only. Pure: no I/O. The byte offsets of that shape live in this file and nowhere else.

use std::fmt;
use std::ops::Deref;

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Timelike};

use crate::message::BROADCAST;

/// A set of message ids, hashed with foldhash: such sets are looked up once for every
/// unread message at each reminder and push look, where SipHash was the largest cost under a
/// flood. Ids come from file names in the user's own mailbox, so the weaker resistance to
/// crafted collisions costs nothing here.
pub type IdSet = foldhash::HashSet<String>;
/// A map keyed by message id, hashed like [`IdSet`].
pub type IdMap<V> = foldhash::HashMap<String, V>;

/// Bytes of the stamp `YYYYMMDDTHHMMSSffffff`.
const STAMP_LEN: usize = 21;
/// Bytes of the stamp's seconds part, `YYYYMMDDTHHMMSS`.
const SECONDS_LEN: usize = 15;
/// Where the uid starts (after the stamp and a `-`).
const UID_START: usize = STAMP_LEN + 1;
/// Where the `-` after the 8-digit uid stands.
const UID_END: usize = UID_START + 8;
/// Where `<from>-<to>-<subject>` starts.
const NAMES_START: usize = UID_END + 1;
/// Characters of a name in an id.
const NAME_CHARS: usize = 16;
/// Characters of the subject in an id.
const SUBJECT_CHARS: usize = 40;

/// A message id named the way [`file_stem`] names them: `<stamp>-<uid>-<rest>`, parsed
/// once. `<rest>` is `<from>-<to>-<subject>`; since names may hold `-`, the three cannot
/// always be told apart, so they are asked about ([`MessageId::may_be_from`],
/// [`MessageId::may_address`]) rather than cut out.
///
/// It borrows the id's text and derefs to it, so it goes wherever a `&str` id goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId<'a> {
    text: &'a str,
}

impl<'a> MessageId<'a> {
    /// The id, when it has the shape [`file_stem`] writes (digits of the stamp, `T`, the
    /// dashes around the uid, something after); `None` for ids of another shape, which
    /// other writers may use and which are still message ids.
    pub fn parse(id: &'a str) -> Option<MessageId<'a>> {
        let b = id.as_bytes();
        let shaped = b.len() > NAMES_START
            && b[..8].iter().all(u8::is_ascii_digit)
            && b[8] == b'T'
            && b[9..STAMP_LEN].iter().all(u8::is_ascii_digit)
            && b[STAMP_LEN] == b'-'
            && b[UID_END] == b'-';
        // The bytes checked are ASCII, so every offset used below is a char boundary.
        shaped.then_some(MessageId { text: id })
    }

    /// True when `id` can name a file directly in a mailbox folder: not empty, no path
    /// separator, not hidden. Any id read from or given for a file is checked this way.
    pub fn is_file_stem(id: &str) -> bool {
        !id.is_empty() && !id.contains(['/', '\\']) && !id.starts_with('.')
    }

    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// `YYYYMMDDTHHMMSSffffff`, local time.
    pub fn stamp(&self) -> &'a str {
        &self.text[..STAMP_LEN]
    }

    /// The 8 random characters after the stamp.
    pub fn uid(&self) -> &'a str {
        &self.text[UID_START..UID_END]
    }

    /// `<from>-<to>-<subject>` as written.
    pub fn names_and_subject(&self) -> &'a str {
        &self.text[NAMES_START..]
    }

    /// The stamp as a time, when it is a valid one.
    pub fn time(&self) -> Option<DateTime<Local>> {
        stem_time(self.text)
    }

    /// False only when the id shows that `name` did not send it: `<from>` starts the rest.
    pub fn may_be_from(&self, name: &str) -> bool {
        let rest = self.names_and_subject().as_bytes();
        let part = file_stem_part(name);
        rest.starts_with(part.as_bytes()) && rest.get(part.len()) == Some(&b'-')
    }

    /// False only when the id shows that the message is not addressed to `to`: its
    /// recipient part is another name. A cheap filter before reading a file, never the
    /// final word.
    pub fn may_address(&self, to: &str) -> bool {
        // `<from>-<to>-<subject>`: names may hold '-', so look for the part anywhere, matches
        // that overlap included (`---` in `0_0-----`). A name longer than 16 characters is
        // cut to 16 here; another writer may not cut it, so its first 16 are enough.
        let rest = self.names_and_subject().as_bytes();
        let part = file_stem_part(to);
        let part = part.as_bytes();
        let cut = to.chars().count() > NAME_CHARS;
        (1..rest.len()).any(|at| {
            let end = at + part.len();
            rest[at - 1] == b'-'
                && rest[at..].starts_with(part)
                && (cut || end == rest.len() || rest[end] == b'-')
        })
    }

    /// [`MessageId::may_address`] for `all`, or `broadcast` of older writers.
    pub fn may_address_everyone(&self) -> bool {
        self.may_address(BROADCAST) || self.may_address("broadcast")
    }
}

impl Deref for MessageId<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        self.text
    }
}

impl AsRef<str> for MessageId<'_> {
    fn as_ref(&self) -> &str {
        self.text
    }
}

impl fmt::Display for MessageId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text)
    }
}

/// The time in a message id's stamp (`YYYYMMDDTHHMMSSffffff`, local time), if it has one.
/// Only the stamp is looked at: ids of another shape that start with a stamp have a time.
pub fn stem_time(id: &str) -> Option<DateTime<Local>> {
    let seconds = NaiveDateTime::parse_from_str(id.get(..SECONDS_LEN)?, "%Y%m%dT%H%M%S").ok()?;
    let micros: u32 = id.get(SECONDS_LEN..STAMP_LEN)?.parse().ok()?;
    let naive = seconds.with_nanosecond(micros * 1000)?;
    Local.from_local_datetime(&naive).earliest()
}

/// The file stem (the message id): `<stamp>-<uid>-<from>-<to>-<subject>`.
pub fn file_stem(now: DateTime<Local>, uid: &str, from: &str, to: &str, subject: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        now.format("%Y%m%dT%H%M%S%6f"),
        uid,
        name_part(from, NAME_CHARS),
        name_part(to, NAME_CHARS),
        name_part(subject, SUBJECT_CHARS),
    )
}

/// False only when a file stem written by [`file_stem`] shows that the message is not
/// addressed to `to`; stems of another shape may be for anyone, so they answer true. See
/// [`MessageId::may_address`].
pub fn stem_may_address(stem: &str, to: &str) -> bool {
    MessageId::parse(stem).is_none_or(|id| id.may_address(to))
}

/// [`stem_may_address`] for a session's mail: addressed to `name` or to everyone.
pub fn stem_may_be_for(stem: &str, name: &str) -> bool {
    MessageId::parse(stem).is_none_or(|id| id.may_address(name) || id.may_address_everyone())
}

/// [`stem_may_address`] for `all`, or `broadcast` of older writers.
pub fn stem_may_address_everyone(stem: &str) -> bool {
    MessageId::parse(stem).is_none_or(|id| id.may_address_everyone())
}

/// True for a stem named as [`file_stem`] names them: `<stamp>-<uid>-<rest>`.
pub fn stem_is_shaped(stem: &str) -> bool {
    MessageId::parse(stem).is_some()
}

/// A session name as it appears in file names: cut to 16 characters, unsafe ones replaced.
pub fn file_stem_part(name: &str) -> String {
    name_part(name, NAME_CHARS)
}

fn name_part(s: &str, max_chars: usize) -> String {
    s.chars()
        .take(max_chars)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_an_id() {
        let id = MessageId::parse("20260406T153000123456-0a1b2c3d-al-pha-beta-a_subject").unwrap();
        assert_eq!(id.stamp(), "20260406T153000123456");
        assert_eq!(id.uid(), "0a1b2c3d");
        assert_eq!(id.names_and_subject(), "al-pha-beta-a_subject");
        assert!(id.may_be_from("al-pha"));
        assert!(id.may_be_from("al"));
        assert!(!id.may_be_from("alp"));
        assert!(!id.may_be_from("beta"));
        assert!(id.may_address("beta"));
        assert_eq!(&*id, id.as_str());
        assert!(id.time().is_some());
        for odd in [
            "notes",
            "20260406T153000123456-0a1b2c3d-",
            "2026040XT153000123456-0a1b2c3d-a",
        ] {
            assert_eq!(MessageId::parse(odd), None, "{odd}");
        }
        // Multi-byte characters near the offsets never split a character.
        assert_eq!(
            MessageId::parse("20260406T153000123456-0a1b2c3é-a-b-s"),
            None
        );
        assert!(MessageId::parse("20260406T153000123456-0a1b2c3d-é-b-s").is_some());
    }

    #[test]
    fn ids_that_can_name_a_file() {
        assert!(MessageId::is_file_stem(
            "20260406T153000123456-0a1b2c3d-a-b-s"
        ));
        assert!(MessageId::is_file_stem("notes"));
        for bad in ["", ".hidden", "a/b", "a\\b", "../x"] {
            assert!(!MessageId::is_file_stem(bad), "{bad}");
        }
    }
}
