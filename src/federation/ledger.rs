//! What the bridge has done, in two append-only files of `<data>/federation/`, read back
//! whole at start:
//!
//! - `published.log`: one id a line, written after the stream acknowledged the message. A
//!   line lost in a crash means one more publish of that id, which the stream's
//!   de-duplication and the receivers' "already on disk" check absorb.
//! - `arrived.log`: `arriving <id>\t<machine>` (the origin; older logs lack it), written
//!   before an arrived file is renamed into `inbox/`, and `arrived <id>` after the rename.
//!   So a file in `inbox/` that came from another machine is known as such (it is never
//!   published as this machine's), and an arrival that was cut short is written again when
//!   the message comes again. The `arriving` lines are flushed only where the file cannot
//!   carry its machine itself ([`crate::mailbox::ORIGIN_ATTR`]); a line a crash of the
//!   machine took is written again from the file by the bridge's scan at start.
//!
//! A line without its newline (a crash mid-write) is dropped when the log is opened.
//!
//! Both logs grow by a line a message, so [`Ledger::compact`] rewrites them without the ids
//! that can no longer matter: older by the stamp in their name than the stream keeps
//! anything ([`FORGET_AFTER`]), so the hub cannot bring them again, and in neither `inbox/`
//! nor `archive/`, so no scan can find them to publish.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Local};

use super::hub::STREAM_MAX_AGE;
use crate::error::{Error, Result};
use crate::fsx;

/// How old an id must be (by the stamp in its name) before the logs may forget it: the
/// stream's age limit and a day for clocks that differ between machines.
pub const FORGET_AFTER: std::time::Duration =
    STREAM_MAX_AGE.saturating_add(std::time::Duration::from_secs(24 * 3600));

/// The logs are rewritten only when this many lines would go, or half of them.
const COMPACT_AT: usize = 1000;

/// The two logs, and what they say, in memory.
#[derive(Debug)]
pub struct Ledger {
    published_path: PathBuf,
    arrived_path: PathBuf,
    published_file: File,
    arrived_file: File,
    published: HashSet<String>,
    /// Ids with an `arriving` line: they came from elsewhere.
    arriving: HashSet<String>,
    /// Ids with an `arrived` line: written to `inbox/` for good.
    arrived: HashSet<String>,
}

impl Ledger {
    pub fn open(published: &Path, arrived: &Path) -> Result<Ledger> {
        let (published_file, published_text) = open_log(published)?;
        let (arrived_file, arrived_text) = open_log(arrived)?;
        let mut ledger = Ledger {
            published_path: published.to_path_buf(),
            arrived_path: arrived.to_path_buf(),
            published_file,
            arrived_file,
            published: complete_lines(&published_text).map(str::to_owned).collect(),
            arriving: HashSet::new(),
            arrived: HashSet::new(),
        };
        for line in complete_lines(&arrived_text) {
            match arrived_line(line) {
                Some(("arriving", id)) => {
                    ledger.arriving.insert(id.to_owned());
                }
                Some(("arrived", id)) => {
                    ledger.arriving.insert(id.to_owned());
                    ledger.arrived.insert(id.to_owned());
                }
                _ => tracing::warn!(%line, "arrived.log: skipped a line that does not read"),
            }
        }
        Ok(ledger)
    }

    /// Rewrites both logs (each atomically: a reader sees the old log or the new one)
    /// without the ids that `forgettable` at `now` with `on_disk` says may go, when at least
    /// [`COMPACT_AT`] lines or half of a log's lines would go. Returns the lines dropped.
    /// The caller is the only writer (it holds the bridge's election lock).
    pub fn compact(
        &mut self,
        now: DateTime<Local>,
        on_disk: impl Fn(&str) -> bool,
    ) -> Result<usize> {
        let gone = |id: &str| forgettable(id, now) && !on_disk(id);
        let published = rewrite(&self.published_path, |line| gone(line))?;
        let arrived = rewrite(&self.arrived_path, |line| {
            arrived_line(line).is_none_or(|(_, id)| gone(id))
        })?;
        if published > 0 {
            self.published_file = open_log(&self.published_path)?.0;
            self.published.retain(|id| !gone(id));
        }
        if arrived > 0 {
            self.arrived_file = open_log(&self.arrived_path)?.0;
            self.arriving.retain(|id| !gone(id));
            self.arrived.retain(|id| !gone(id));
        }
        Ok(published + arrived)
    }

    /// True when the id was published by this machine.
    pub fn is_published(&self, id: &str) -> bool {
        self.published.contains(id)
    }

    /// True when the id came from another machine (its arrival was at least begun).
    pub fn came_from_elsewhere(&self, id: &str) -> bool {
        self.arriving.contains(id)
    }

    /// True when the id was written into `inbox/` on arrival, for good.
    pub fn has_arrived(&self, id: &str) -> bool {
        self.arrived.contains(id)
    }

    /// How many ids were published; for logs and tests.
    pub fn published_count(&self) -> usize {
        self.published.len()
    }

    /// Notes that the stream acknowledged `id`.
    pub fn record_published(&mut self, id: &str) -> Result<()> {
        self.record_published_all(&[id])
    }

    /// Notes that the stream acknowledged these ids, in one write.
    pub fn record_published_all(&mut self, ids: &[&str]) -> Result<()> {
        let lines: String = ids.iter().map(|id| format!("{id}\n")).collect();
        append(
            &mut self.published_file,
            &self.published_path,
            &lines,
            false,
        )?;
        self.published.extend(ids.iter().map(|id| (*id).to_owned()));
        Ok(())
    }

    /// Notes that these ids, each with the machine it came from, are about to be renamed
    /// into `inbox/`; flushed to disk when `flush` says so (their files do not carry their
    /// machine, see [`crate::mailbox::ORIGIN_ATTR`]).
    pub fn record_arriving<'a>(
        &mut self,
        arrivals: impl IntoIterator<Item = (&'a str, &'a str)>,
        flush: bool,
    ) -> Result<()> {
        let mut text = String::new();
        let mut ids = Vec::new();
        for (id, machine) in arrivals {
            text.push_str(&format!("arriving {id}\t{machine}\n"));
            ids.push(id);
        }
        append(&mut self.arrived_file, &self.arrived_path, &text, flush)?;
        self.arriving.extend(ids.into_iter().map(str::to_owned));
        Ok(())
    }

    /// Notes that these ids are in `inbox/` for good.
    pub fn record_arrived<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let mut text = String::new();
        let mut noted = Vec::new();
        for id in ids {
            text.push_str(&format!("arrived {id}\n"));
            noted.push(id);
        }
        append(&mut self.arrived_file, &self.arrived_path, &text, false)?;
        self.arrived.extend(noted.into_iter().map(str::to_owned));
        Ok(())
    }
}

/// The word and the id of an `arrived.log` line, without the machine after a tab (ids hold
/// no control character).
fn arrived_line(line: &str) -> Option<(&str, &str)> {
    line.split_once(' ')
        .map(|(word, rest)| (word, rest.split('\t').next().unwrap_or(rest)))
}

/// True when `id`'s stamp says it is older than [`FORGET_AFTER`] at `now`. An id of another
/// shape has no known age and is kept.
fn forgettable(id: &str, now: DateTime<Local>) -> bool {
    crate::id::stem_time(id).is_some_and(|t| {
        now.signed_duration_since(t)
            .to_std()
            .is_ok_and(|age| age > FORGET_AFTER)
    })
}

/// Rewrites the log at `path` without its lines that `drop` picks, when there are enough of
/// them ([`COMPACT_AT`] or half); returns how many went (0 when it was left as it is).
fn rewrite(path: &Path, drop: impl Fn(&str) -> bool) -> Result<usize> {
    let text = fs::read_to_string(path).map_err(Error::io("reading", path))?;
    let lines: Vec<&str> = complete_lines(&text).collect();
    let kept: Vec<&str> = lines.iter().copied().filter(|l| !drop(l)).collect();
    let gone = lines.len() - kept.len();
    if gone == 0 || (gone < COMPACT_AT && gone * 2 < lines.len()) {
        return Ok(0);
    }
    let mut out = String::with_capacity(text.len());
    for line in kept {
        out.push_str(line);
        out.push('\n');
    }
    fsx::write_atomic(path, out.as_bytes())?;
    tracing::info!(file = %path.display(), dropped = gone, "compacted");
    Ok(gone)
}

/// Opens a log for appending (0600), reading what it holds, and drops a torn last line.
fn open_log(path: &Path) -> Result<(File, String)> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io("opening", path))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(Error::io("reading", path))?;
    if bytes.last().is_some_and(|&b| b != b'\n') {
        tracing::warn!(file = %path.display(), "the last line was cut short; it is dropped");
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(keep);
        file.set_len(keep as u64)
            .map_err(Error::io("writing", path))?;
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    file.seek(SeekFrom::End(0))
        .map_err(Error::io("reading", path))?;
    Ok((file, text))
}

/// The lines that end with a newline; the torn end of a crashed write is left out.
fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.split('\n').filter(|l| !l.is_empty())
}

/// Appends `lines` (each ending in a newline) in one write.
fn append(file: &mut File, path: &Path, lines: &str, flush: bool) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    file.write_all(lines.as_bytes())
        .map_err(Error::io("writing", path))?;
    if flush {
        file.sync_data().map_err(Error::io("flushing", path))?;
    }
    Ok(())
}

/// The ids in a `published.log`, in order, repeats included (for checks and tests).
pub fn read_published(path: &Path) -> io::Result<Vec<String>> {
    let text = fs::read_to_string(path)?;
    Ok(complete_lines(&text).map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn what_was_recorded_is_known_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (p, a) = (
            dir.path().join("published.log"),
            dir.path().join("arrived.log"),
        );
        let mut ledger = Ledger::open(&p, &a).unwrap();
        ledger.record_published("one").unwrap();
        ledger
            .record_arriving([("two words", "laptop"), ("three", "laptop")], false)
            .unwrap();
        ledger.record_arrived(["three"]).unwrap();
        drop(ledger);
        let ledger = Ledger::open(&p, &a).unwrap();
        assert!(ledger.is_published("one"));
        assert!(!ledger.is_published("two words"));
        assert!(ledger.came_from_elsewhere("two words"));
        assert!(!ledger.has_arrived("two words"));
        assert!(ledger.came_from_elsewhere("three") && ledger.has_arrived("three"));
        assert!(!ledger.came_from_elsewhere("one"));
        for path in [&p, &a] {
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (p, a) = (
            dir.path().join("published.log"),
            dir.path().join("arrived.log"),
        );
        fs::write(&p, "one\ntw").unwrap();
        fs::write(&a, "arriving x\narrived x\nnonsense\narriv").unwrap();
        let mut ledger = Ledger::open(&p, &a).unwrap();
        assert!(ledger.is_published("one"));
        assert!(!ledger.is_published("tw"));
        assert!(ledger.has_arrived("x"));
        ledger.record_published("two").unwrap();
        drop(ledger);
        assert_eq!(read_published(&p).unwrap(), ["one", "two"]);
        let ledger = Ledger::open(&p, &a).unwrap();
        assert!(ledger.is_published("two"));
        assert_eq!(ledger.published_count(), 2);
    }

    #[test]
    fn compaction_forgets_only_old_ids_that_left_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (p, a) = (
            dir.path().join("published.log"),
            dir.path().join("arrived.log"),
        );
        let now = Local::now();
        let stem = |days: i64, n: usize| {
            crate::id::file_stem(
                now - chrono::TimeDelta::days(days),
                &format!("{n:08x}"),
                "a",
                "b",
                "s",
            )
        };
        let old: Vec<String> = (0..6).map(|n| stem(40, n)).collect();
        let young = stem(2, 9);
        let mut ledger = Ledger::open(&p, &a).unwrap();
        for id in &old {
            ledger.record_published(id).unwrap();
            ledger
                .record_arriving([(id.as_str(), "laptop")], true)
                .unwrap();
            ledger.record_arrived([id.as_str()]).unwrap();
        }
        ledger.record_published(&young).unwrap();
        ledger.record_published("hand-named").unwrap();
        ledger
            .record_arriving([(young.as_str(), "laptop")], false)
            .unwrap();
        // The first old id is still in the archive: kept.
        let on_disk = |id: &str| id == old[0];
        assert_eq!(ledger.compact(now, on_disk).unwrap(), 5 + 10);
        // Nothing more to drop: the logs are left as they are.
        assert_eq!(ledger.compact(now, on_disk).unwrap(), 0);
        ledger.record_published("after").unwrap();
        for l in [&ledger, &Ledger::open(&p, &a).unwrap()] {
            assert!(l.is_published(&old[0]) && l.has_arrived(&old[0]));
            assert!(!l.is_published(&old[1]) && !l.came_from_elsewhere(&old[1]));
            assert!(l.is_published(&young) && l.came_from_elsewhere(&young));
            assert!(l.is_published("hand-named") && l.is_published("after"));
        }
        assert_eq!(
            read_published(&p).unwrap(),
            [old[0].as_str(), &young, "hand-named", "after"]
        );
        let mode = fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_few_old_lines_among_many_are_left_until_there_are_enough() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("published.log");
        let old = crate::id::file_stem(
            Local::now() - chrono::TimeDelta::days(60),
            "00000001",
            "a",
            "b",
            "s",
        );
        let mut text = format!("{old}\n");
        for n in 0..3 {
            text.push_str(&format!("young{n}\n"));
        }
        fs::write(&p, &text).unwrap();
        assert_eq!(rewrite(&p, |l| l == old).unwrap(), 0);
        assert_eq!(fs::read_to_string(&p).unwrap(), text);
    }
}
