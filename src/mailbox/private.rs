//! Private by default: which paths of a mailbox are its own, which of them other users can
//! read, and tightening them to 0700 folders and 0600 files (0770/0660 when the mailbox is
//! shared with its group, [`crate::fsx::share_with_group`]).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::fsx::{dir_mode, file_mode};

/// What t9-ipc keeps directly in a mailbox root. Only these are checked and tightened (and
/// the root itself): a root pointed at a folder that holds other things leaves them alone.
const OWNED: &[&str] = &[
    "inbox",
    "archive",
    "state",
    "telegram",
    "claims",
    "board",
    "heartbeats.json",
    "heartbeats.lock",
];

/// A path of the mailbox whose mode gives more than the mailbox allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loose {
    pub path: PathBuf,
    pub mode: u32,
    pub is_dir: bool,
}

impl Loose {
    /// The mode it should have: its own bits, less those the mailbox does not allow.
    pub fn wanted(&self) -> u32 {
        self.mode & if self.is_dir { dir_mode() } else { file_mode() }
    }
}

/// The root and the paths t9-ipc owns in it (folders walked whole, links not followed) whose
/// mode lets other users (or, unless shared, the group) in.
pub fn loose_paths(root: &Path) -> Vec<Loose> {
    let mut out = Vec::new();
    check(root, &mut out, false);
    for name in OWNED {
        check(&root.join(name), &mut out, true);
    }
    out
}

fn check(path: &Path, out: &mut Vec<Loose>, walk: bool) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    let is_dir = meta.is_dir();
    if !is_dir && !meta.is_file() {
        return; // a link or something stranger: never followed, never changed
    }
    let allowed = if is_dir { dir_mode() } else { file_mode() };
    if mode & !allowed & 0o777 != 0 {
        out.push(Loose {
            path: path.to_path_buf(),
            mode,
            is_dir,
        });
    }
    if walk && is_dir {
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            check(&entry.path(), out, true);
        }
    }
}

/// Tightens every [`loose_paths`] entry; one warning says how many were changed and which
/// could not be (another user's files). Returns how many were changed.
pub fn tighten(root: &Path) -> usize {
    let loose = loose_paths(root);
    let mut changed = 0;
    let mut failed = Vec::new();
    for l in &loose {
        match fs::set_permissions(&l.path, fs::Permissions::from_mode(l.wanted())) {
            Ok(()) => changed += 1,
            Err(err) => failed.push(format!("{} ({err})", l.path.display())),
        }
    }
    if !loose.is_empty() {
        tracing::warn!(
            root = %root.display(),
            tightened = changed,
            failed = %failed.join(", "),
            "the mailbox was readable by other users: its folders are now {:o} and its files {:o} \
             (set IPC_SHARE_GROUP=1 to share it with its group on purpose)",
            dir_mode(),
            file_mode()
        );
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_paths_are_found_and_tightened_links_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("inbox")).unwrap();
        fs::write(root.join("inbox/a.md"), "x").unwrap();
        fs::write(root.join("elsewhere.txt"), "mine").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("inbox/l.md")).unwrap();
        let set = |p: &Path, m| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        set(root, 0o755);
        set(&root.join("inbox"), 0o755);
        set(&root.join("inbox/a.md"), 0o644);
        set(&root.join("elsewhere.txt"), 0o644);
        let loose = loose_paths(root);
        assert_eq!(loose.len(), 3, "{loose:?}");
        assert_eq!(tighten(root), 3);
        assert!(loose_paths(root).is_empty());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root.join("inbox/a.md")), 0o600);
        assert_eq!(mode(&root.join("inbox")), 0o700);
        // Not the mailbox's: untouched.
        assert_eq!(mode(&root.join("elsewhere.txt")), 0o644);
    }
}
