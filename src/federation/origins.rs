//! Which machine a message in `inbox/` came from, for the `machine` of its channel event.
//!
//! Read from the `arriving <id>\t<machine>` lines of `arrived.log` (written before the file
//! is renamed into `inbox/`, so a file a server sees is already in the log). Each process
//! keeps what it has read and reads only what was appended since: one `stat` a lookup, and a
//! read only when the log grew. No federation folder: one failed `stat`, `None`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Paths;

/// What one mailbox's `arrived.log` said, up to `read` bytes.
#[derive(Default)]
struct Index {
    read: u64,
    machines: HashMap<String, String>,
}

static INDEXES: Mutex<Option<HashMap<PathBuf, Index>>> = Mutex::new(None);

/// The machine the message `id` of the mailbox at `data_dir` arrived from; `None` for one
/// written on this machine (or that arrived before machines were noted in the log).
pub fn machine_of(data_dir: &Path, id: &str) -> Option<String> {
    let path = Paths::new(data_dir).arrived();
    let len = std::fs::metadata(&path).ok()?.len();
    let mut all = INDEXES.lock().unwrap_or_else(|e| e.into_inner());
    let index = all
        .get_or_insert_with(HashMap::new)
        .entry(data_dir.to_path_buf())
        .or_default();
    if len < index.read {
        // Replaced by a shorter file: read it again from the start.
        *index = Index::default();
    }
    if len > index.read
        && let Err(err) = index.catch_up(&path)
    {
        tracing::debug!(%err, file = %path.display(), "origins: reading");
    }
    index.machines.get(id).cloned()
}

impl Index {
    /// Reads the complete lines appended since the last read.
    fn catch_up(&mut self, path: &Path) -> std::io::Result<()> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(self.read))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        for line in String::from_utf8_lossy(&bytes[..end]).split('\n') {
            if let Some((id, machine)) = arriving(line) {
                self.machines.insert(id.to_owned(), machine.to_owned());
            }
        }
        self.read += end as u64 + 1;
        Ok(())
    }
}

/// The id and machine of an `arriving <id>\t<machine>` line.
pub(crate) fn arriving(line: &str) -> Option<(&str, &str)> {
    line.strip_prefix("arriving ")?.split_once('\t')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn machines_are_read_from_arriving_lines_as_the_log_grows() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        assert_eq!(machine_of(dir.path(), "a"), None);
        std::fs::create_dir(&paths.dir).unwrap();
        std::fs::write(
            paths.arrived(),
            "arriving old\narriving a b\tlaptop\narrived a b\n",
        )
        .unwrap();
        assert_eq!(machine_of(dir.path(), "a b").as_deref(), Some("laptop"));
        assert_eq!(machine_of(dir.path(), "old"), None);
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(paths.arrived())
            .unwrap();
        log.write_all(b"arriving c\tbuildbox\narriving d\tcu")
            .unwrap();
        assert_eq!(machine_of(dir.path(), "c").as_deref(), Some("buildbox"));
        assert_eq!(machine_of(dir.path(), "d"), None, "a torn line waits");
        log.write_all(b"t\n").unwrap();
        assert_eq!(machine_of(dir.path(), "d").as_deref(), Some("cut"));
    }
}
