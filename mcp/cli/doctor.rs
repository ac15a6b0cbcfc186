//! `doctor`: what is wrong with this mailbox and what to do about it. Changes nothing; the
//! exit code says healthy (0) or not (1). Never prints the Telegram token.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use chrono::Local;
use t9_ipc::channels::Push;
use t9_ipc::config::{Config, DataDirSource, TelegramSetting};
use t9_ipc::fsx;
use t9_ipc::heartbeat::{Health, Heartbeats, Table};
use t9_ipc::mailbox::Mailbox;

use super::style::{Style, line, plural};

/// A temporary file older than this was left by an interrupted write.
const TMP_LEFTOVER: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Info,
    Warn,
    Problem,
}

struct Report {
    style: Style,
    problems: usize,
    warnings: usize,
}

impl Report {
    fn section(&self, title: &str) {
        println!("\n{}", self.style.bold(title));
    }

    fn line(&mut self, level: Level, text: &str) {
        let tag = match level {
            Level::Ok => "ok     ",
            Level::Info => "info   ",
            Level::Warn => {
                self.warnings += 1;
                "warn   "
            }
            Level::Problem => {
                self.problems += 1;
                "PROBLEM"
            }
        };
        // Names, folders and file names come from the mailbox: printed escaped.
        println!("  {tag}  {}", line(text));
    }
}

pub fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let now = Local::now();
    let mut r = Report {
        style: Style::stdout(),
        problems: 0,
        warnings: 0,
    };
    println!("t9-ipc {} doctor", env!("CARGO_PKG_VERSION"));

    r.section("Mailbox");
    let root = &config.data_dir;
    r.line(
        Level::Info,
        &format!("{} ({})", root.display(), config.data_dir_source.describe()),
    );
    let mailbox = check_root(&mut r, root, config.data_dir_source);

    r.section("Sessions (heartbeats.json)");
    let health = Heartbeats::new(root).health(now);
    check_sessions(&mut r, root, &health);
    if let Some(mailbox) = mailbox {
        check_inbox(&mut r, &mailbox, &health.live, now)?;
    }

    r.section("Telegram");
    check_telegram(&mut r);

    r.section("Federation");
    check_federation(&mut r, config);

    r.section("Claude Code");
    check_channels(&mut r, &health.live);

    Ok(verdict(&r))
}

/// heartbeats.json: unusable, entries that do not parse, stale entries, live sessions.
fn check_sessions(r: &mut Report, root: &Path, health: &Health) {
    if let Some(why) = &health.corrupt {
        r.line(
            Level::Problem,
            &format!(
                "heartbeats.json is unusable: {why}. Sessions treat it as empty (no one sees \
                 anyone) until one rewrites it at its next heartbeat (within 60 s); if it stays \
                 broken, delete {}",
                root.join("heartbeats.json").display()
            ),
        );
    }
    for (name, why) in &health.bad_entries {
        r.line(
            Level::Warn,
            &format!("entry {name:?} does not parse ({why}); sessions ignore it"),
        );
    }
    for (name, why) in &health.stale {
        r.line(
            Level::Warn,
            &format!(
                "stale entry {name}: {why}; the next session to write heartbeats.json removes it"
            ),
        );
    }
    if health.corrupt.is_none() {
        r.line(Level::Ok, &plural(health.live.len(), "live session"));
    }
}

/// Token and chat both set, both unset, or only one of them (which forwards nothing). Never
/// prints the token.
fn check_telegram(r: &mut Report) {
    let tg = TelegramSetting::from_env();
    match (tg.token_set, &tg.chat) {
        (true, Some(chat)) => r.line(
            Level::Ok,
            &format!(
                "configured: chat {chat}, token set (not shown){}",
                if tg.api_base.is_some() {
                    ", API base from IPC_TG_API_BASE"
                } else {
                    ""
                }
            ),
        ),
        (false, None) => r.line(
            Level::Info,
            "not configured: escalations stay in the mailbox (set IPC_TG_TOKEN and IPC_TG_CHAT \
             to forward them)",
        ),
        (true, None) => r.line(
            Level::Problem,
            "IPC_TG_TOKEN is set but IPC_TG_CHAT is not: nothing can be forwarded; set the chat id",
        ),
        (false, Some(_)) => r.line(
            Level::Problem,
            "IPC_TG_CHAT is set but IPC_TG_TOKEN is not: nothing can be forwarded; set the token",
        ),
    }
}

/// The federation's own findings, at the same levels.
fn check_federation(r: &mut Report, config: &Config) {
    for found in t9_ipc::federation::health::check(&config.data_dir, &config.federation) {
        use t9_ipc::federation::health::Level as L;
        let level = match found.level {
            L::Ok => Level::Ok,
            L::Info => Level::Info,
            L::Warn => Level::Warn,
            L::Problem => Level::Problem,
        };
        r.line(level, &found.text);
    }
}

/// How messages reach a session by themselves, and which live sessions are not known to get
/// channel events.
fn check_channels(r: &mut Report, live: &Table) {
    r.line(
        Level::Info,
        "messages arrive by themselves only in sessions started with \
         `claude --dangerously-load-development-channels server:t9-ipc` (the name after \
         server: is the one in your mcpServers)",
    );
    let silent: Vec<&str> = live
        .iter()
        .filter(|(_, e)| e.push_mode() != Push::On)
        .map(|(n, _)| n.as_str())
        .collect();
    if !silent.is_empty() {
        r.line(
            Level::Info,
            &format!(
                "not known to get channel events: {}; there, mail is read with t9_ipc_unread, or \
                 put into each prompt by the hook (README: \"Without channels\")",
                silent.join(", ")
            ),
        );
    }
}

/// The closing line and the exit code: healthy (0) unless a PROBLEM line was printed (1).
fn verdict(r: &Report) -> ExitCode {
    println!();
    if r.problems == 0 {
        let warnings = if r.warnings == 0 {
            String::new()
        } else {
            format!(" ({}, nothing to do now)", plural(r.warnings, "warning"))
        };
        println!("{}", r.style.bold(&format!("Healthy{warnings}.")));
        ExitCode::SUCCESS
    } else {
        println!(
            "{}",
            r.style.bold(&format!(
                "{} found: see the PROBLEM lines.",
                plural(r.problems, "problem")
            ))
        );
        ExitCode::FAILURE
    }
}

/// The root folder: exists, is ours, is writable, is not open to other users. Creates
/// nothing: a mailbox that is not there is reported, never made.
fn check_root(r: &mut Report, root: &Path, source: DataDirSource) -> Option<Mailbox> {
    let set = matches!(source, DataDirSource::Env | DataDirSource::EnvRelative);
    if source == DataDirSource::EnvRelative {
        r.line(
            Level::Warn,
            "IPC_DATA_DIR is a relative path: sessions started in other folders use other \
             mailboxes and do not see each other; give an absolute path",
        );
    }
    let meta = root_folder(r, root, set)?;
    let mode = meta.permissions().mode() & 0o777;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let owner = if meta.uid() == uid {
        "owned by you".to_owned()
    } else {
        format!("owned by uid {}", meta.uid())
    };
    r.line(Level::Info, &format!("mode {mode:04o}, {owner}"));
    check_private(r, root);
    if !check_writable(r, root) {
        return None;
    }
    open_mailbox(r, root, set)
}

/// The root's metadata if it is a folder; otherwise says why not (a PROBLEM when
/// `IPC_DATA_DIR`, `set`, names a folder that is not there).
fn root_folder(r: &mut Report, root: &Path, set: bool) -> Option<std::fs::Metadata> {
    let meta = match std::fs::metadata(root) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && set => {
            r.line(
                Level::Problem,
                "the folder does not exist: check IPC_DATA_DIR for a typo. Sessions started \
                 with it would make a new, empty mailbox there and see no one else",
            );
            return None;
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            r.line(
                Level::Warn,
                "the folder does not exist yet; the first session (or `t9-ipc send`) creates it",
            );
            return None;
        }
        Err(err) => {
            r.line(Level::Problem, &format!("cannot read the folder: {err}"));
            return None;
        }
    };
    if !meta.is_dir() {
        r.line(
            Level::Problem,
            "it is not a folder; point IPC_DATA_DIR at a folder",
        );
        return None;
    }
    Some(meta)
}

/// Whether the root and each of its folders that exist are writable by us; a PROBLEM line for
/// each that is not.
fn check_writable(r: &mut Report, root: &Path) -> bool {
    let mut writable = true;
    for sub in ["", "inbox", "archive", "state"] {
        let dir = root.join(sub);
        if dir.exists() && !can_write(&dir) {
            writable = false;
            r.line(
                Level::Problem,
                &format!(
                    "{} is not writable by you: sends and read marks fail; fix its permissions",
                    dir.display()
                ),
            );
        }
    }
    writable
}

/// The mailbox in the root, if it has an `inbox/` and opens.
fn open_mailbox(r: &mut Report, root: &Path, set: bool) -> Option<Mailbox> {
    if !root.join("inbox").is_dir() {
        r.line(
            Level::Problem,
            &format!(
                "no inbox/ in it: this folder is no mailbox{}",
                if set {
                    "; check IPC_DATA_DIR for a typo"
                } else {
                    " yet; the first session (or `t9-ipc send`) makes one"
                }
            ),
        );
        return None;
    }
    match Mailbox::open(root) {
        Ok(mailbox) => Some(mailbox),
        Err(err) => {
            r.line(Level::Problem, &format!("{err:#}"));
            None
        }
    }
}

/// Group- or world-readable paths of the mailbox: a PROBLEM, unless the group may read them
/// because `IPC_SHARE_GROUP=1` says so.
fn check_private(r: &mut Report, root: &Path) {
    let (dirs, files) = (fsx::dir_mode(), fsx::file_mode());
    if fsx::shared_with_group() {
        r.line(
            Level::Info,
            &format!(
                "shared with its group on purpose (IPC_SHARE_GROUP=1): folders {dirs:04o}, files \
                 {files:04o}; every member of the group can read all mail and write messages \
                 under any name"
            ),
        );
    }
    let (top, loose): (Vec<_>, Vec<_>) = t9_ipc::mailbox::loose_paths(root)
        .into_iter()
        .partition(|l| l.path == root);
    // The root itself: others who can list it see only the names in it (everything below is
    // private), worth a note; others who can write it can replace heartbeats.json: a problem.
    if let Some(l) = top.first() {
        let level = if l.mode & 0o002 != 0 || (l.mode & 0o020 != 0 && !fsx::shared_with_group()) {
            Level::Problem
        } else {
            Level::Info
        };
        r.line(
            level,
            &format!(
                "the folder is {:04o}: other users can list{} it; a server start makes it \
                 {dirs:04o} (or `chmod go-rwx {}`)",
                l.mode,
                if level == Level::Problem {
                    " and change"
                } else {
                    ""
                },
                root.display()
            ),
        );
    }
    if loose.is_empty() {
        r.line(
            Level::Ok,
            &format!("private: folders {dirs:04o}, files {files:04o}"),
        );
        return;
    }
    let shown: Vec<String> = loose
        .iter()
        .take(3)
        .map(|l| format!("{} ({:04o})", l.path.display(), l.mode))
        .collect();
    r.line(
        Level::Problem,
        &format!(
            "{} readable by other users{}: {}{}. The next server start tightens them to \
             {dirs:04o}/{files:04o} (or run `chmod -R go-rwx {}`){}",
            plural(loose.len(), "path"),
            if fsx::shared_with_group() {
                " outside the group"
            } else {
                ""
            },
            shown.join(", "),
            if loose.len() > 3 { ", …" } else { "" },
            root.display(),
            if fsx::shared_with_group() {
                ""
            } else {
                "; to share the mailbox with a group on purpose, set IPC_SHARE_GROUP=1 (README)"
            }
        ),
    );
}

fn can_write(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// Messages, bad files and leftovers in `inbox/`, and the mail of each live session.
fn check_inbox(
    r: &mut Report,
    mailbox: &Mailbox,
    live: &Table,
    now: chrono::DateTime<Local>,
) -> anyhow::Result<()> {
    let audit = mailbox.audit()?;
    for (name, e) in live {
        let state = mailbox.peek_state(name, now)?;
        let mine = audit.messages.iter().filter(|m| m.front.is_for(name));
        let total = mine.clone().count();
        let unread = mine.filter(|m| state.is_unread(name, m, now)).count();
        r.line(
            Level::Info,
            &format!(
                "{name}: pid {}, push {}, {}, {unread} unread, in {}",
                e.pid,
                e.push(),
                plural(total, "message"),
                e.cwd.as_deref().unwrap_or("?")
            ),
        );
    }

    r.section("Inbox");
    r.line(
        Level::Ok,
        &format!(
            "{} in inbox/, {} in archive/",
            plural(audit.messages.len(), "message"),
            audit.archived
        ),
    );
    for (name, reason) in &audit.bad {
        r.line(
            Level::Problem,
            &format!(
                "{name}: {reason}. It is skipped, never deleted; move it out of {}",
                mailbox.inbox().display()
            ),
        );
    }
    let old = SystemTime::now() - TMP_LEFTOVER;
    for (name, modified) in &audit.temporary {
        if modified.is_some_and(|m| m < old) {
            r.line(
                Level::Warn,
                &format!("{name}: a temporary file left by an interrupted write; safe to delete"),
            );
        }
    }
    Ok(())
}
