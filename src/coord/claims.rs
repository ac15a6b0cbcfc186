//! File claims: one file per claim in `<data>/claims/`, written and checked under the
//! folder's bounded lock. A claim names absolute paths or globs; it is live until it is
//! released, its time runs out, or its session ends (its pid is no longer a live session in
//! `heartbeats.json`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Local, TimeDelta};
use serde::{Deserialize, Serialize};

use super::{
    DirLock, md_files, parse_stamp, private_dir, read_small_with_meta, remove, split_front, stamp,
};
use crate::error::{Error, Result};
use crate::heartbeat::{Heartbeats, Table};
use crate::mailbox::random_uid;
use crate::message::{file_stem_part, one_line};

/// A claim's time when none is given: 30 minutes.
pub const DEFAULT_TTL: TimeDelta = TimeDelta::minutes(30);
/// The longest claim: 8 hours.
pub const MAX_TTL: TimeDelta = TimeDelta::hours(8);
/// Paths or globs in one claim.
pub const MAX_PATTERNS: usize = 32;
/// Characters in one path or glob, and in a note.
pub const MAX_PATTERN_CHARS: usize = 1024;
pub const MAX_NOTE_CHARS: usize = 200;
/// Claim files read at most (a bigger folder is junk; the rest is skipped with a warning).
const MAX_FILES: usize = 100_000;
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Who claims: the session's name, its server's pid and its working folder.
#[derive(Debug, Clone)]
pub struct Holder<'a> {
    pub name: &'a str,
    pub pid: u32,
    pub cwd: &'a Path,
}

/// What a session asks to claim.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// Paths or globs (`*`, `?`, `**`), relative to the holder's folder or absolute.
    pub paths: &'a [String],
    /// Others may claim the same files too (the claim only informs).
    pub shared: bool,
    pub ttl: Option<TimeDelta>,
    pub note: &'a str,
}

/// A claim as its file holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// The file name without `.md`.
    #[serde(skip)]
    pub id: String,
    pub session: String,
    pub pid: u32,
    /// `exclusive` or `shared`.
    pub mode: String,
    pub created: String,
    pub expires: String,
    #[serde(default)]
    pub note: String,
    /// Absolute, normalised paths or globs.
    pub paths: Vec<String>,
}

impl Claim {
    pub fn is_exclusive(&self) -> bool {
        self.mode != "shared"
    }

    pub fn expires_at(&self) -> Option<DateTime<Local>> {
        parse_stamp(&self.expires)
    }

    /// True while the time has not run out and its session is alive (its pid is one of
    /// [`running_sessions`]).
    pub fn is_live(&self, running: &Running, now: DateTime<Local>) -> bool {
        self.expires_at().is_some_and(|t| t > now) && running.runs(self.pid)
    }

    /// The path or glob of this claim that covers `path` (absolute), if any.
    pub fn covering(&self, path: &str) -> Option<&str> {
        self.paths
            .iter()
            .find(|p| covers(p, path))
            .map(String::as_str)
    }

    /// One line for people and models: who, what, until when, why.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "\"{}\" (pid {}) holds {} {} until {}",
            self.session,
            self.pid,
            self.mode,
            self.paths.join(", "),
            self.expires_at().map_or_else(
                || self.expires.clone(),
                |t| t.format("%H:%M:%S").to_string()
            ),
        );
        if !self.note.is_empty() {
            s.push_str(&format!(" — note: {}", self.note));
        }
        s
    }
}

/// Which sessions' processes still run: listed live in `heartbeats.json` and, looked at
/// once each when a claim asks (not for every live session: `t9_ipc_who` with 200 sessions
/// and no claim looks at none), not gone and not a zombie (killed, not yet reaped: its
/// session is over). The table was read a moment ago, when a zombie still counted as
/// running; it may be reaped since.
pub struct Running {
    live: HashSet<u32>,
    looked: std::cell::RefCell<HashMap<u32, bool>>,
}

impl Running {
    fn of(live: &Table) -> Running {
        Running {
            live: live.values().map(|e| e.pid).collect(),
            looked: Default::default(),
        }
    }

    fn runs(&self, pid: u32) -> bool {
        self.live.contains(&pid)
            && *self
                .looked
                .borrow_mut()
                .entry(pid)
                .or_insert_with(|| still_running(pid))
    }
}

/// One look at `/proc/<pid>/stat`: the process exists and is not a zombie.
#[cfg(target_os = "linux")]
fn still_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.get(s.rfind(')')? + 1..)?.trim_start().chars().next()?;
            Some(state != 'Z')
        })
        .unwrap_or(false)
}

#[cfg(not(target_os = "linux"))]
fn still_running(pid: u32) -> bool {
    crate::process::pid_running(pid)
}

/// What a granted claim did.
#[derive(Debug, Clone)]
pub struct Granted {
    pub claim: Claim,
    /// Other live sessions' claims that overlap it (shared ones, or exclusive ones a shared
    /// claim of this session may stand beside): for information.
    pub overlapping: Vec<Claim>,
}

/// The claims folder of a mailbox root.
pub struct Claims {
    dir: PathBuf,
    heartbeats: Heartbeats,
}

impl Claims {
    pub fn new(root: &Path) -> Claims {
        Claims {
            dir: root.join("claims"),
            heartbeats: Heartbeats::new(root),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Claims `req.paths` for `holder`. Refused when a path overlaps another live session's
    /// exclusive claim (or, for an exclusive claim, any other live session's claim that is
    /// exclusive), naming the holder, its note and when it ends. Dead and expired claims are
    /// removed on the way.
    pub fn claim(
        &self,
        holder: &Holder<'_>,
        req: &Request<'_>,
        now: DateTime<Local>,
    ) -> Result<Granted> {
        let paths = resolve_all(holder.cwd, req.paths)?;
        let ttl = match req.ttl {
            None => DEFAULT_TTL,
            Some(t) if t > TimeDelta::zero() && t <= MAX_TTL => t,
            Some(t) => {
                return Err(Error::Refused(format!(
                    "ttl_s {} is out of range; use 1 to {} seconds (default {})",
                    t.num_seconds(),
                    MAX_TTL.num_seconds(),
                    DEFAULT_TTL.num_seconds()
                )));
            }
        };
        let note = one_line(req.note.trim());
        if note.chars().count() > MAX_NOTE_CHARS {
            return Err(Error::Refused(format!(
                "the note has {} characters; at most {MAX_NOTE_CHARS}",
                note.chars().count()
            )));
        }
        private_dir(&self.dir)?;
        let _lock = DirLock::take(&self.dir)?;
        let live = self.heartbeats.live(now);
        let mut overlapping = Vec::new();
        for other in self.sweep(&live, now)? {
            if other.pid == holder.pid {
                continue;
            }
            let hit = paths
                .iter()
                .find_map(|p| other.paths.iter().find(|o| overlap(p, o)).map(|o| (p, o)));
            let Some((mine, theirs)) = hit else { continue };
            if other.is_exclusive() {
                return Err(Error::Refused(format!(
                    "{mine} overlaps {theirs}: {}. Work on other files, ask \"{}\" with \
                     t9_ipc_send, or claim again after that time",
                    other.describe(),
                    other.session
                )));
            }
            overlapping.push(other);
        }
        let claim = Claim {
            id: format!(
                "{}-{}-{}",
                now.format("%Y%m%dT%H%M%S%6f"),
                random_uid(),
                file_stem_part(holder.name)
            ),
            session: holder.name.to_owned(),
            pid: holder.pid,
            mode: if req.shared { "shared" } else { "exclusive" }.to_owned(),
            created: stamp(now),
            expires: stamp(now + ttl),
            note,
            paths,
        };
        let text = render(&claim);
        super::write_atomic(&self.dir, &format!("{}.md", claim.id), text.as_bytes())?;
        Ok(Granted { claim, overlapping })
    }

    /// Ends this pid's claims: those naming one of `paths` (resolved as a claim resolves
    /// them), or all of them when `paths` is empty. Returns the claims ended.
    pub fn release(
        &self,
        holder: &Holder<'_>,
        paths: &[String],
        now: DateTime<Local>,
    ) -> Result<Vec<Claim>> {
        let wanted = if paths.is_empty() {
            Vec::new()
        } else {
            resolve_all(holder.cwd, paths)?
        };
        if !self.dir.is_dir() {
            return Ok(Vec::new());
        }
        let _lock = DirLock::take(&self.dir)?;
        let live = self.heartbeats.live(now);
        let mut ended = Vec::new();
        for claim in self.sweep(&live, now)? {
            if claim.pid != holder.pid {
                continue;
            }
            if wanted.is_empty() || claim.paths.iter().any(|p| wanted.contains(p)) {
                remove(&self.dir.join(format!("{}.md", claim.id)))?;
                ended.push(claim);
            }
        }
        Ok(ended)
    }

    /// Every live claim, oldest first. Reads only; nothing is removed.
    pub fn live(&self, now: DateTime<Local>) -> Result<Vec<Claim>> {
        let claims = self.read_all()?;
        if claims.is_empty() {
            return Ok(claims); // no need to read heartbeats.json
        }
        let running = Running::of(&self.heartbeats.live(now));
        Ok(claims
            .into_iter()
            .filter(|c| c.is_live(&running, now))
            .collect())
    }

    /// The live claims by session name, for `t9_ipc_who` and `t9-ipc who`.
    pub fn by_session(&self, now: DateTime<Local>) -> Result<BTreeMap<String, Vec<Claim>>> {
        let mut out: BTreeMap<String, Vec<Claim>> = BTreeMap::new();
        for claim in self.live(now)? {
            out.entry(claim.session.clone()).or_default().push(claim);
        }
        Ok(out)
    }

    /// For each of `files` (absolute paths) that another live session claims exclusively
    /// (any session but `except_pid`): the file and the claim.
    pub fn blocking(
        &self,
        files: &[String],
        except_pid: Option<u32>,
        now: DateTime<Local>,
    ) -> Result<Vec<(String, Claim)>> {
        let claims: Vec<Claim> = self
            .live(now)?
            .into_iter()
            .filter(|c| c.is_exclusive() && Some(c.pid) != except_pid)
            .collect();
        let mut out = Vec::new();
        for file in files {
            if let Some(c) = claims.iter().find(|c| c.covering(file).is_some()) {
                out.push((file.clone(), c.clone()));
            }
        }
        Ok(out)
    }

    /// The live claims; the files of dead or expired ones are removed (the caller holds the
    /// lock).
    fn sweep(&self, live: &Table, now: DateTime<Local>) -> Result<Vec<Claim>> {
        let running = Running::of(live);
        let mut kept = Vec::new();
        for claim in self.read_all()? {
            if claim.is_live(&running, now) {
                kept.push(claim);
            } else {
                tracing::debug!(claim = %claim.id, session = %claim.session, "removed an ended claim");
                remove(&self.dir.join(format!("{}.md", claim.id)))?;
            }
        }
        Ok(kept)
    }

    /// Every claim file that parses, oldest first; others are skipped with a warning (once
    /// while they stay as they are) and left alone. A file parsed before is parsed again only
    /// when it changed ([`PARSED`]).
    fn read_all(&self) -> Result<Vec<Claim>> {
        let files = md_files(&self.dir)?;
        if files.len() > MAX_FILES {
            tracing::warn!(dir = %self.dir.display(), count = files.len(), "too many claim files; reading the first {MAX_FILES}");
        }
        // Taken out while files are read, so no lock is held across I/O; a call meanwhile
        // parses what it reads itself.
        let mut known = with_parsed(|p| p.remove(&self.dir)).unwrap_or_default();
        let mut kept = HashMap::with_capacity(files.len().min(MAX_FILES));
        let mut out = Vec::new();
        for (name, path) in files.into_iter().take(MAX_FILES) {
            let same = known.remove(&name).filter(|(seen, _)| {
                std::fs::symlink_metadata(&path).is_ok_and(|meta| FileStamp::of(&meta) == *seen)
            });
            let Some((stamp, claim)) = same.or_else(|| read_claim(&path, &name)) else {
                continue;
            };
            out.extend(claim.clone());
            kept.insert(name, (stamp, claim));
        }
        with_parsed(|p| p.insert(self.dir.clone(), kept));
        Ok(out)
    }
}

/// A claim file's identity, from the `stat` of the file read. Claim files are never changed
/// in place, only written whole under a new inode ([`super::write_atomic`]) or removed, so a
/// coarse clock cannot hide a change; size and time tell files changed by other means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

/// The claim files this process parsed, by folder and file name (`None`: not a claim), as
/// they were when read; only the files of the folder's last listing are kept.
type Parsed = HashMap<PathBuf, HashMap<String, (FileStamp, Option<Claim>)>>;

static PARSED: Mutex<Option<Parsed>> = Mutex::new(None);

fn with_parsed<R>(f: impl FnOnce(&mut Parsed) -> R) -> R {
    // Plain data: a panic elsewhere leaves it usable.
    let mut parsed = PARSED.lock().unwrap_or_else(|p| p.into_inner());
    f(parsed.get_or_insert_with(HashMap::new))
}

/// Reads and parses one claim file, with the stamp of the file read; the claim is `None`
/// (with a warning) when it is no claim, all is `None` when it cannot be read.
fn read_claim(path: &Path, name: &str) -> Option<(FileStamp, Option<Claim>)> {
    let (text, meta) = read_small_with_meta(path, MAX_FILE_BYTES)?;
    let claim = parse(&text).map(|mut claim| {
        claim.id = name.trim_end_matches(".md").to_owned();
        claim
    });
    if claim.is_none() {
        tracing::warn!(file = %path.display(), "skipped: not a claim file");
    }
    Some((FileStamp::of(&meta), claim))
}

fn render(claim: &Claim) -> String {
    // Plain strings, numbers and a list always serialise.
    let yaml = serde_yaml::to_string(claim).expect("a claim serialises");
    format!(
        "---\n{yaml}---\n\n{} claimed by {} ({}){}\n",
        claim.paths.join(", "),
        claim.session,
        claim.mode,
        if claim.note.is_empty() {
            String::new()
        } else {
            format!(": {}", claim.note)
        }
    )
}

fn parse(text: &str) -> Option<Claim> {
    let (yaml, _) = split_front(text)?;
    serde_yaml::from_str(yaml).ok()
}

/// Each path or glob made absolute against `cwd` and normalised (`.` and `..` taken out,
/// no trailing `/`). Refused: none, too many, too long, control characters.
pub fn resolve_all(cwd: &Path, paths: &[String]) -> Result<Vec<String>> {
    if paths.is_empty() {
        return Err(Error::Refused(
            "no paths given; pass paths: [\"src/parser/**\", \"README.md\"]".to_owned(),
        ));
    }
    if paths.len() > MAX_PATTERNS {
        return Err(Error::Refused(format!(
            "{} paths given; at most {MAX_PATTERNS} in one claim (a glob like dir/** covers many)",
            paths.len()
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for p in paths {
        let p = p.trim();
        if p.is_empty() || p.chars().count() > MAX_PATTERN_CHARS || p.chars().any(char::is_control)
        {
            return Err(Error::Refused(format!(
                "{p:?} is no path: give 1 to {MAX_PATTERN_CHARS} characters without control \
                 characters"
            )));
        }
        let abs = normalise(&cwd.join(p));
        if !out.contains(&abs) {
            out.push(abs);
        }
    }
    Ok(out)
}

fn normalise(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    format!("/{}", parts.join("/"))
}

fn segments(p: &str) -> Vec<&str> {
    p.split('/').filter(|s| !s.is_empty()).collect()
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// True when the glob `pattern` covers `path`: it matches the path or a folder above it (a
/// claim of a folder covers what is inside). `*` and `?` stay within one name; `**` spans
/// any number of names.
pub fn covers(pattern: &str, path: &str) -> bool {
    let pat = segments(pattern);
    let path = segments(path);
    (1..=path.len()).any(|k| glob(&pat, &path[..k])) || (path.is_empty() && pat.is_empty())
}

/// True when two claims' paths or globs may name a common file. Two globs overlap when
/// either covers the other's text, or when the fixed folders before their first wildcard
/// lie one inside the other (erring towards "overlap").
pub fn overlap(a: &str, b: &str) -> bool {
    if covers(a, b) || covers(b, a) {
        return true;
    }
    if !(has_wildcard(a) && has_wildcard(b)) {
        return false;
    }
    let fixed = |p: &str| -> Vec<String> {
        segments(p)
            .into_iter()
            .take_while(|s| !has_wildcard(s))
            .map(str::to_owned)
            .collect()
    };
    let (fa, fb) = (fixed(a), fixed(b));
    fa.starts_with(&fb) || fb.starts_with(&fa)
}

fn glob(pat: &[&str], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => glob(rest, path) || (!path.is_empty() && glob(pat, &path[1..])),
        Some((first, rest)) => match path.split_first() {
            Some((name, more)) => {
                name_matches(first.as_bytes(), name.as_bytes()) && glob(rest, more)
            }
            None => false,
        },
    }
}

/// `*` and `?` within one name, by bytes (iterative, with one backtrack point).
fn name_matches(pat: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_cover_paths() {
        let cases = [
            ("/r/src/parser/**", "/r/src/parser/lex.rs", true),
            ("/r/src/parser/**", "/r/src/parser/a/b/c.rs", true),
            ("/r/src/parser/**", "/r/src/parserx/lex.rs", false),
            ("/r/src/parser", "/r/src/parser/lex.rs", true),
            ("/r/src/*.rs", "/r/src/main.rs", true),
            ("/r/src/*.rs", "/r/src/a/main.rs", false),
            ("/r/src/m?in.rs", "/r/src/main.rs", true),
            ("/r/src/**/mod.rs", "/r/src/a/b/mod.rs", true),
            ("/r/src/**/mod.rs", "/r/src/mod.rs", true),
            ("/r/README.md", "/r/README.mdx", false),
        ];
        for (pat, path, want) in cases {
            assert_eq!(covers(pat, path), want, "{pat} {path}");
        }
    }

    #[test]
    fn claims_overlap() {
        assert!(overlap("/r/src/parser/**", "/r/src/parser/lex.rs"));
        assert!(overlap("/r/src/parser/lex.rs", "/r/src/parser/**"));
        assert!(overlap("/r/src/**", "/r/src/parser/*.rs"));
        assert!(!overlap("/r/src/parser/**", "/r/docs/*.md"));
        assert!(!overlap("/r/a.rs", "/r/b.rs"));
    }

    #[test]
    fn a_claim_file_written_again_or_removed_is_read_again() {
        let root = tempfile::tempdir().unwrap();
        let claims = Claims::new(root.path());
        let holder = Holder {
            name: "alpha",
            pid: std::process::id(),
            cwd: Path::new("/w"),
        };
        let req = Request {
            paths: &["a.rs".to_owned()],
            note: "first",
            ..Request::default()
        };
        let a = claims.claim(&holder, &req, Local::now()).unwrap().claim.id;
        let file = |id: &str| claims.dir().join(format!("{id}.md"));
        let text = std::fs::read_to_string(file(&a)).unwrap();
        let b = format!("{a}b");
        super::super::write_atomic(claims.dir(), &format!("{b}.md"), text.as_bytes()).unwrap();
        let notes = || -> Vec<(String, String)> {
            let all = claims.read_all().unwrap();
            all.into_iter().map(|c| (c.id, c.note)).collect()
        };
        let first = || "first".to_owned();
        assert_eq!(notes(), [(a.clone(), first()), (b.clone(), first())]);
        // The same size and (as on a coarse clock) the same time: told apart by the inode.
        let then = std::fs::metadata(file(&a)).unwrap().modified().unwrap();
        let again = text.replace("note: first", "note: again");
        super::super::write_atomic(claims.dir(), &format!("{a}.md"), again.as_bytes()).unwrap();
        let written = std::fs::File::options().write(true).open(file(&a)).unwrap();
        written.set_modified(then).unwrap();
        remove(&file(&b)).unwrap();
        assert_eq!(notes(), [(a, "again".to_owned())]);
    }

    #[test]
    fn paths_resolve_against_the_folder() {
        let cwd = Path::new("/w/repo");
        assert_eq!(
            resolve_all(cwd, &["src/../lib/./x.rs".into(), "/abs/y".into()]).unwrap(),
            vec!["/w/repo/lib/x.rs".to_owned(), "/abs/y".to_owned()]
        );
        assert!(resolve_all(cwd, &[]).is_err());
        assert!(resolve_all(cwd, &["a\nb".into()]).is_err());
    }
}
