//! What the bridge has done, in two append-only files of `<data>/federation/`, read back
//! whole at start:
//!
//! - `published.log`: one id a line, written after the stream acknowledged the message. A
//!   line lost in a crash means one more publish of that id, which the stream's
//!   de-duplication and the receivers' "already on disk" check absorb.
//! - `arrived.log`: `arriving <id>\t<machine>` (the origin; older logs lack it), flushed to disk before an arrived file is renamed into
//!   `inbox/`, and `arrived <id>` after the rename. So a file in `inbox/` that came from
//!   another machine is always known as such (it is never published as this machine's), and
//!   an arrival that was cut short is written again when the message comes again.
//!
//! A line without its newline (a crash mid-write) is dropped when the log is opened.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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
            // The id, without the machine after a tab (ids hold no control character).
            let split = line
                .split_once(' ')
                .map(|(k, rest)| (k, rest.split('\t').next().unwrap_or(rest)));
            match split {
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
        append(&mut self.published_file, &self.published_path, id, false)?;
        self.published.insert(id.to_owned());
        Ok(())
    }

    /// Notes, on disk, that `id` is about to be renamed into `inbox/` from `machine`.
    pub fn record_arriving(&mut self, id: &str, machine: &str) -> Result<()> {
        let line = format!("arriving {id}\t{machine}");
        append(&mut self.arrived_file, &self.arrived_path, &line, true)?;
        self.arriving.insert(id.to_owned());
        Ok(())
    }

    /// Notes that `id` is in `inbox/` for good.
    pub fn record_arrived(&mut self, id: &str) -> Result<()> {
        let line = format!("arrived {id}");
        append(&mut self.arrived_file, &self.arrived_path, &line, false)?;
        self.arrived.insert(id.to_owned());
        Ok(())
    }
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

fn append(file: &mut File, path: &Path, line: &str, flush: bool) -> Result<()> {
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    file.write_all(buf.as_bytes())
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
        ledger.record_arriving("two words", "laptop").unwrap();
        ledger.record_arriving("three", "laptop").unwrap();
        ledger.record_arrived("three").unwrap();
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
}
