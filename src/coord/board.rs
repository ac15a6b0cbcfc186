//! The shared board: small named values in `<data>/board/<key>.md` (front matter: key,
//! version, by, at; the value is the body). Writes take the folder's bounded lock; a write
//! may name the version it expects and is refused if another came in between.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};

use super::{DirLock, md_files, parse_stamp, private_dir, read_small, split_front, stamp};
use crate::error::{Error, Result};

/// The longest key, and the longest value in bytes.
pub const MAX_KEY_CHARS: usize = 64;
pub const MAX_VALUE_BYTES: usize = 4096;
/// Keys on one board, at most.
pub const MAX_KEYS: usize = 1000;

/// One value with who wrote it and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    /// 1 for the first write, one more for each write after.
    pub version: u64,
    /// The session that wrote it.
    pub by: String,
    /// When, RFC 3339.
    pub at: String,
    #[serde(skip)]
    pub value: String,
}

impl Entry {
    pub fn at_time(&self) -> Option<DateTime<Local>> {
        parse_stamp(&self.at)
    }
}

/// Checks a key: 1 to 64 ASCII letters, digits, `_`, `-` or `.`, starting with a letter or
/// digit (so never a path, a dot file or a line break).
pub fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_CHARS
        && key.as_bytes()[0].is_ascii_alphanumeric()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !key.contains("..");
    if ok {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "key {key:?} is refused; a key has 1 to {MAX_KEY_CHARS} ASCII letters, digits, '_', \
             '-' or '.', starts with a letter or digit, e.g. \"build\" or \"api-version\""
        )))
    }
}

/// The board folder of a mailbox root.
pub struct Board {
    dir: PathBuf,
}

impl Board {
    pub fn new(root: &Path) -> Board {
        Board {
            dir: root.join("board"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `value` under `key` as `by`. With `expect`, refused unless the current version
    /// is `expect` (0: the key must not exist yet). Returns the new entry.
    pub fn set(
        &self,
        key: &str,
        value: &str,
        expect: Option<u64>,
        by: &str,
        now: DateTime<Local>,
    ) -> Result<Entry> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(Error::Refused(format!(
                "the value has {} bytes; at most {MAX_VALUE_BYTES}. Put more in a file and set \
                 its path",
                value.len()
            )));
        }
        if value.contains('\0') {
            return Err(Error::Refused("the value holds a NUL character".to_owned()));
        }
        private_dir(&self.dir)?;
        let _lock = DirLock::take(&self.dir)?;
        let current = self.get(key)?;
        let version = current.as_ref().map_or(0, |e| e.version);
        if let Some(want) = expect
            && want != version
        {
            let now_holds = match &current {
                Some(e) => format!("version {} (set by \"{}\" at {})", e.version, e.by, e.at),
                None => "no value (version 0)".to_owned(),
            };
            return Err(Error::Refused(format!(
                "\"{key}\" has {now_holds}, not version {want}: someone wrote in between. Get it, \
                 then set again with expect: {version}"
            )));
        }
        if current.is_none() && md_files(&self.dir)?.len() >= MAX_KEYS {
            return Err(Error::Refused(format!(
                "the board holds {MAX_KEYS} keys already; reuse a key"
            )));
        }
        let entry = Entry {
            key: key.to_owned(),
            version: version + 1,
            by: by.to_owned(),
            at: stamp(now),
            value: value.to_owned(),
        };
        // Plain strings and a number always serialise.
        let yaml = serde_yaml::to_string(&entry).expect("a board entry serialises");
        let text = format!("---\n{yaml}---\n\n{value}");
        super::write_atomic(&self.dir, &format!("{key}.md"), text.as_bytes())?;
        Ok(entry)
    }

    /// The entry under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Entry>> {
        check_key(key)?;
        let path = self.dir.join(format!("{key}.md"));
        if !path.exists() {
            return Ok(None);
        }
        Ok(read_small(&path, (MAX_VALUE_BYTES + 4096) as u64).and_then(|t| parse(&t, key)))
    }

    /// Every entry, by key.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for (name, path) in md_files(&self.dir)? {
            let key = name.trim_end_matches(".md");
            if check_key(key).is_err() {
                continue;
            }
            match read_small(&path, (MAX_VALUE_BYTES + 4096) as u64).and_then(|t| parse(&t, key)) {
                Some(e) => out.push(e),
                None => tracing::warn!(file = %path.display(), "skipped: not a board entry"),
            }
        }
        Ok(out)
    }
}

fn parse(text: &str, key: &str) -> Option<Entry> {
    let (yaml, body) = split_front(text)?;
    let mut entry: Entry = serde_yaml::from_str(yaml).ok()?;
    // The file name is the key; a file whose front matter says otherwise is not trusted.
    if entry.key != key {
        return None;
    }
    entry.value = body.to_owned();
    Some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_keys_are_refused() {
        for key in [
            "",
            "../x",
            "a/b",
            "a\nb",
            ".hidden",
            "x..y",
            "-x",
            "a b",
            "ä",
            "k\0",
            &"k".repeat(65),
        ] {
            assert!(check_key(key).is_err(), "{key:?}");
        }
        for key in ["build", "api-version", "v1.2", "A_b-9"] {
            assert!(check_key(key).is_ok(), "{key:?}");
        }
    }

    #[test]
    fn values_round_trip_with_front_matter_lookalikes() {
        let dir = tempfile::tempdir().unwrap();
        let board = Board::new(dir.path());
        let now = Local::now();
        let value = "---\nkey: other\n---\nred: yes\n";
        board.set("build", value, Some(0), "alpha", now).unwrap();
        let e = board.get("build").unwrap().unwrap();
        assert_eq!(
            (e.value.as_str(), e.version, e.by.as_str()),
            (value, 1, "alpha")
        );
        assert!(board.set("build", "x", Some(0), "beta", now).is_err());
        assert_eq!(
            board
                .set("build", "x", Some(1), "beta", now)
                .unwrap()
                .version,
            2
        );
    }
}
