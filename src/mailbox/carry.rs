//! Read marks carried between machines: the `read` and `pushed` lines of a state log that
//! the bridge sends to other machines ([`Mailbox::state_tail`]), and the ones it receives
//! from them ([`Mailbox::append_carried`]).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use chrono::{DateTime, Local, SecondsFormat};

use super::Mailbox;
use super::state::{Line, Mark, parse_line};
use crate::error::{Error, Result};
use crate::fsx;

/// One `read` or `pushed` mark of a message by a name, with when it was made, if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedMark {
    /// `true` for `read`, `false` for `pushed`.
    pub read: bool,
    pub id: String,
    pub at: Option<DateTime<Local>>,
}

/// The read and pushed marks of one state log from an offset on, and where they end.
#[derive(Debug, Default)]
pub struct StateTail {
    /// The log's first `joined` time (looked up only when there are marks).
    pub joined: Option<DateTime<Local>>,
    pub marks: Vec<CarriedMark>,
    /// The offset after the last whole line taken: where the next look starts.
    pub end: u64,
}

impl Mailbox {
    /// The names that have a state log (`state/<name>.log`), sorted.
    pub fn state_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.state)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| n.strip_suffix(".log").map(str::to_owned))
                    .filter(|n| self.state_path(n).is_ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The read and pushed marks appended to `name`'s log from byte `from` on (from its start
    /// when the log is shorter: it was replaced or cut), whole lines only, with their times
    /// from `state/<name>.times`. Takes no lock: writers append whole lines.
    pub fn state_tail(&self, name: &str, from: u64) -> Result<StateTail> {
        let path = self.state_path(name)?;
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(StateTail::default()),
            Err(err) => return Err(Error::io("opening", &path)(err)),
        };
        let len = file.metadata().map_err(Error::io("reading", &path))?.len();
        let start = if from > len { 0 } else { from };
        file.seek(SeekFrom::Start(start))
            .map_err(Error::io("reading", &path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(Error::io("reading", &path))?;
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let mut tail = self.tail_of(name, &bytes[..whole]);
        tail.end = start + whole as u64;
        if !tail.marks.is_empty() {
            tail.joined = first_joined(&path);
        }
        Ok(tail)
    }

    /// Under the lock of `name`'s log (waited for at most [`fsx::LOCK_WAIT`]): takes the
    /// marks appended since `from` (this machine's own, to be carried on), then appends the
    /// `carried` marks the log lacks, and their times to `.times`. A missing log is started
    /// with `joined` (the name's time on its other machine; else now). Returns the tail,
    /// whose end is past the lines appended (so they are never carried back), and how many
    /// marks were appended.
    pub fn append_carried(
        &self,
        name: &str,
        from: u64,
        joined: Option<DateTime<Local>>,
        carried: &[CarriedMark],
    ) -> Result<(StateTail, usize)> {
        let path = self.state_path(name)?;
        let mut file = fsx::private_options()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(Error::io("opening", &path))?;
        fsx::fix_mode(&file, &path)?;
        fsx::lock_within(&file, &path, fsx::LOCK_WAIT)?;
        let mut all = Vec::new();
        file.read_to_end(&mut all)
            .map_err(Error::io("reading", &path))?;
        let start = if from as usize > all.len() {
            0
        } else {
            from as usize
        };
        let whole = all[start..]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(start, |i| start + i + 1);
        let mut tail = self.tail_of(name, &all[start..whole]);
        let text = String::from_utf8_lossy(&all);
        let mut has: HashSet<(bool, &str)> = HashSet::new();
        for line in text.lines() {
            match parse_line(line) {
                Line::Mark(Mark::Read, id) => has.insert((true, id)),
                Line::Mark(Mark::Pushed, id) => has.insert((false, id)),
                _ => false,
            };
        }
        let mut lines = String::new();
        if all.last().is_some_and(|b| *b != b'\n') {
            // A line cut short by a writer that failed: ours start on a line of their own.
            lines.push('\n');
        }
        if all.is_empty() {
            let joined = joined.unwrap_or_else(Local::now);
            lines.push_str(&format!("joined {}\n", joined.to_rfc3339()));
        }
        let mut times = String::new();
        let mut appended = 0;
        for mark in carried {
            if !has.insert((mark.read, mark.id.as_str())) {
                continue;
            }
            let word = if mark.read { Mark::Read } else { Mark::Pushed }.word();
            lines.push_str(&format!("{word} {}\n", mark.id));
            let at = mark.at.unwrap_or_else(Local::now);
            let at = at.to_rfc3339_opts(SecondsFormat::Secs, false);
            times.push_str(&format!("{word} {} {at}\n", mark.id));
            appended += 1;
        }
        if appended > 0 || all.is_empty() {
            if let Err(err) = file.write_all(lines.as_bytes()) {
                // Half a line would spoil the next one written: take it back.
                let _ = file.set_len(all.len() as u64);
                return Err(Error::io("appending to", &path)(err));
            }
            if let Err(err) = append_private(&path.with_extension("times"), times.as_bytes()) {
                tracing::warn!(%err, "the times of carried marks were not recorded");
            }
            tail.end = (all.len() + lines.len()) as u64;
        } else {
            tail.end = whole as u64;
        }
        if !tail.marks.is_empty() {
            tail.joined = joined_in(&text);
        }
        Ok((tail, appended))
    }

    /// The read and pushed marks in `bytes` (whole lines of `name`'s log), with their times.
    fn tail_of(&self, name: &str, bytes: &[u8]) -> StateTail {
        let mut marks = Vec::new();
        for line in String::from_utf8_lossy(bytes).lines() {
            if let Line::Mark(what @ (Mark::Read | Mark::Pushed), id) = parse_line(line) {
                let read = matches!(what, Mark::Read);
                marks.push(CarriedMark {
                    read,
                    id: id.to_owned(),
                    at: None,
                });
            }
        }
        if !marks.is_empty() {
            let times = self.mark_times(name).unwrap_or_default();
            for mark in &mut marks {
                let known = times.get(&mark.id);
                mark.at = known.and_then(|t| if mark.read { t.read } else { t.pushed });
            }
        }
        StateTail {
            joined: None,
            marks,
            end: 0,
        }
    }
}

/// The first `joined` time in a log's text.
fn joined_in(text: &str) -> Option<DateTime<Local>> {
    text.lines().find_map(|line| match parse_line(line) {
        Line::Joined(t) => Some(t),
        _ => None,
    })
}

/// The `joined` time on the first line of the log at `path` (where it is written).
fn first_joined(path: &Path) -> Option<DateTime<Local>> {
    let mut first = String::new();
    BufReader::new(File::open(path).ok()?)
        .read_line(&mut first)
        .ok()?;
    joined_in(&first)
}

/// Appends `bytes` to the file at `path`, created private when missing.
pub(super) fn append_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = fsx::private_options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(Error::io("opening", path))?;
    fsx::fix_mode(&file, path)?;
    file.write_all(bytes)
        .map_err(Error::io("appending to", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(read: bool, id: &str) -> CarriedMark {
        CarriedMark {
            read,
            id: id.to_owned(),
            at: None,
        }
    }

    #[test]
    fn carried_marks_are_appended_once_and_never_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let mb = Mailbox::open(dir.path()).unwrap();
        let now = Local::now();
        let mut state = mb.read_state("beta", now).unwrap();
        state.mark_read(["local-1"]).unwrap();
        // Another machine's marks arrive: the local mark since 0 comes back to be carried
        // on; the carried ones are appended, a repeat is skipped.
        let carried = [
            mark(true, "far-1"),
            mark(false, "far-1"),
            mark(true, "far-1"),
        ];
        let (tail, n) = mb.append_carried("beta", 0, None, &carried).unwrap();
        assert_eq!(n, 2);
        assert_eq!(tail.marks.len(), 1);
        assert_eq!(
            (tail.marks[0].read, tail.marks[0].id.as_str()),
            (true, "local-1")
        );
        assert!(tail.marks[0].at.is_some(), "its time from the .times file");
        assert!(tail.joined.is_some());
        // Nothing new since: the carried lines are not in the next tail.
        assert!(mb.state_tail("beta", tail.end).unwrap().marks.is_empty());
        let (again, n) = mb.append_carried("beta", tail.end, None, &carried).unwrap();
        assert_eq!((n, again.marks.len(), again.end), (0, 0, tail.end));
        // The running state sees them, with their times.
        state.refresh().unwrap();
        assert!(state.was_read("far-1") && state.was_pushed("far-1"));
        let times = mb.mark_times("beta").unwrap();
        assert!(times["far-1"].read.is_some() && times["far-1"].pushed.is_some());
        // A later local mark is in the next tail, with its time.
        state.mark_read(["local-2"]).unwrap();
        let next = mb.state_tail("beta", tail.end).unwrap();
        assert_eq!(next.marks.len(), 1);
        assert_eq!(next.marks[0].id, "local-2");
        assert!(next.marks[0].at.is_some());
    }

    #[test]
    fn a_new_log_starts_with_the_carried_joined_time() {
        let dir = tempfile::tempdir().unwrap();
        let mb = Mailbox::open(dir.path()).unwrap();
        let joined = DateTime::parse_from_rfc3339("2026-01-02T03:04:05+00:00")
            .unwrap()
            .with_timezone(&Local);
        let (tail, n) = mb
            .append_carried("gamma", 0, Some(joined), &[mark(true, "x")])
            .unwrap();
        assert_eq!((n, tail.marks.len()), (1, 0));
        let state = mb.peek_state("gamma", Local::now()).unwrap();
        assert_eq!(state.joined, joined);
        assert!(state.was_read("x"));
        assert_eq!(mb.state_names(), ["gamma"]);
    }
}
