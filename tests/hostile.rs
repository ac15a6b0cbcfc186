//! Real-world junk in `inbox/`, and a disk that refuses writes. Each case drives the built
//! servers: no crash, no hang, no push of garbage, other mail unaffected, and a bad file
//! warned about once on stderr however often the inbox is scanned.

use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::process::Command;

use crate::util::{BIN, Client, TempMailbox, bodies_in, msg_id_in, without_telegram};

/// Two servers, `alpha` and `beta`; beta's stderr goes to a file the test reads.
struct Scene {
    mb: TempMailbox,
    alpha: Client,
    beta: Client,
    log: PathBuf,
    pokes: usize,
}

impl Scene {
    async fn new() -> Scene {
        let mb = TempMailbox::new();
        let log = mb.root().join("beta.log");
        let alpha = mb.spawn("alpha").await;
        let mut beta = mb.spawn_env("beta", &[], Some(&log)).await;
        // Past the grace period (a first message is pushed), and nothing else was: from now
        // on new mail is pushed at once. Read, so that it is out of the way.
        beta.nothing_before_marker(&alpha, "beta").await;
        beta.ok("t9_ipc_unread", json!({})).await;
        Scene {
            mb,
            alpha,
            beta,
            log,
            pokes: 0,
        }
    }

    fn inbox(&self) -> PathBuf {
        self.mb.inbox()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Beta's warnings that mention `needle`.
    fn warnings(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    fn rescans(&self) -> usize {
        self.log().matches("rescanned the inbox").count()
    }

    /// Changes the inbox folder without an event that settles a file (a hidden folder is
    /// made): beta's next `t9_ipc_unread` finds its index out of date and scans the whole
    /// inbox.
    fn poke(&mut self) {
        self.pokes += 1;
        std::fs::create_dir(self.inbox().join(format!(".poke-{}", self.pokes))).unwrap();
    }

    /// Makes beta scan the whole inbox `n` more times, and checks that it did. (An event
    /// that arrives after a poke brings the index up to date without a scan: poke again.)
    async fn rescan(&mut self, n: usize) {
        let want = self.rescans() + n;
        for _ in 0..n * 5 {
            if self.rescans() >= want {
                return;
            }
            self.poke();
            // `t9_ipc_unread` brings the index up to date before it answers.
            self.beta
                .ok("t9_ipc_unread", json!({"mark_read": false}))
                .await;
        }
        assert!(self.rescans() >= want, "too few rescans\n{}", self.log());
    }

    /// Alpha sends beta a good message: it is the next event, whole.
    async fn good_message_gets_through(&mut self, subject: &str) -> String {
        let body = format!("good body of {subject}");
        let id = self.alpha.send("beta", subject, &body).await;
        let event = self.beta.next_event().await;
        assert_eq!(event.meta("msg_id"), id, "not the good message: {event:?}");
        assert_eq!(event.content, body);
        id
    }

    /// Nothing else was pushed: a marker from alpha is the next event. Returns its id (it
    /// stays unread).
    async fn no_more_events(&mut self) -> String {
        self.beta.nothing_before_marker(&self.alpha, "beta").await
    }

    /// `t9_ipc_unread` returns exactly these messages, with bodies.
    async fn unread_is(&self, ids: &[&str]) -> String {
        let text = self.beta.ok("t9_ipc_unread", json!({"limit": 100})).await;
        let mut got = bodies_in(&text);
        got.sort();
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "{text}");
        text
    }

    /// The common shape of a junk case: a good message before the junk, the junk, several
    /// whole scans, a good message after; both pushed and listed, nothing else; exactly one
    /// warning that mentions `warned` (or none when `warned` is `None`).
    async fn survives(&mut self, put_junk: impl FnOnce(&Path), warned: Option<&str>) {
        let before = self.good_message_gets_through("before the junk").await;
        put_junk(&self.inbox());
        self.rescan(3).await;
        let after = self.good_message_gets_through("after the junk").await;
        self.rescan(2).await;
        let marker = self.no_more_events().await;
        self.unread_is(&[&before, &after, &marker]).await;
        if let Some(needle) = warned {
            let warnings = self.warnings(needle);
            assert_eq!(warnings.len(), 1, "{warnings:#?}\n{}", self.log());
        }
        // Both servers still answer.
        self.alpha.ok("t9_ipc_who", json!({})).await;
        self.beta.ok("t9_ipc_who", json!({})).await;
    }
}

/// A message id for beta of the usual shape, numbered `n`.
fn id_for_beta(n: u32, subject: &str) -> String {
    format!("20300101T000000{n:06}-{n:08x}-alpha-beta-{subject}")
}

/// A message file for beta as another writer may write it, lines ending in `nl`.
fn for_beta(subject: &str, body: &str, nl: &str) -> String {
    [
        "---",
        "from: alpha",
        "to: beta",
        "type: ipc",
        &format!("subject: {subject}"),
        "priority: normal",
        "created: 2030-01-01 00:00:00",
        "---",
        "",
        body,
    ]
    .join(nl)
        + nl
}

/// Puts a file in place the atomic way (a temporary name, then a rename): one event.
fn put(inbox: &Path, name: impl AsRef<Path>, bytes: &[u8]) {
    let tmp = inbox.join("junk.tmp.0badc0de");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, inbox.join(name)).unwrap();
}

/// Files of other writers that are messages after all: pushed and listed, no warning.
async fn a_foreign_message_arrives(id: &str, text: String, subject: &str, body: &str) {
    let mut s = Scene::new().await;
    put(&s.inbox(), format!("{id}.md"), text.as_bytes());
    let event = s.beta.next_event().await;
    assert_eq!(event.meta("msg_id"), id, "{event:?}");
    assert_eq!(event.meta("subject"), subject);
    assert_eq!(event.meta("from"), "alpha");
    assert_eq!(event.content, body);
    let good = s.good_message_gets_through("after it").await;
    let marker = s.no_more_events().await;
    let text = s.unread_is(&[id, &good, &marker]).await;
    assert!(text.contains(body), "{text}");
    assert!(s.warnings(id).is_empty(), "{}", s.log());
}

#[tokio::test]
async fn a_crlf_file_is_a_message() {
    let id = id_for_beta(1, "crlf");
    let text = for_beta("from windows", "line one\r\nline two", "\r\n");
    a_foreign_message_arrives(&id, text, "from windows", "line one\r\nline two").await;
}

#[tokio::test]
async fn a_file_with_a_byte_order_mark_is_a_message() {
    let id = id_for_beta(2, "bom");
    let text = format!("\u{feff}{}", for_beta("with a BOM", "marked", "\n"));
    a_foreign_message_arrives(&id, text, "with a BOM", "marked").await;
}

#[tokio::test]
async fn front_matter_with_tabs_is_a_message() {
    let id = id_for_beta(3, "tabs");
    let text = "---\nfrom:\talpha\n\tto:\tbeta\ntype:\t\tipc\nsubject:\ttabbed\tsubject\n---\n\nbody\twith a tab\n";
    // A tab is a control character: a space in the event's meta, kept in the body.
    a_foreign_message_arrives(&id, text.to_owned(), "tabbed subject", "body\twith a tab").await;
}

#[tokio::test]
async fn duplicate_keys_that_disagree_are_no_message() {
    let mut s = Scene::new().await;
    let id = id_for_beta(4, "dup");
    // Which recipient is meant? Neither gets it.
    let text = "---\nfrom: alpha\nto: beta\nsubject: twice\nto: gamma\n---\n\nfor whom?\n";
    s.survives(
        |inbox| put(inbox, format!("{id}.md"), text.as_bytes()),
        Some(&id),
    )
    .await;
    assert!(s.warnings(&id)[0].contains("twice"), "{}", s.log());
}

#[tokio::test]
async fn a_50_mb_file_is_not_read_into_memory() {
    let mut s = Scene::new().await;
    let id = id_for_beta(5, "huge");
    s.survives(
        |inbox| {
            // Written in place, in 1 MiB pieces: a good message for beta, then more.
            let mut file = std::fs::File::create(inbox.join(format!("{id}.md"))).unwrap();
            file.write_all(for_beta("huge", "start", "\n").as_bytes())
                .unwrap();
            let piece = vec![b'x'; 1024 * 1024];
            for _ in 0..50 {
                file.write_all(&piece).unwrap();
            }
        },
        Some(&id),
    )
    .await;
    assert!(s.warnings(&id)[0].contains("larger than"), "{}", s.log());
    // The most memory the server ever held stays far below the file's size.
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.beta.pid)).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    assert!(peak_kb < 40 * 1024, "peak resident memory {peak_kb} kB");
}

#[tokio::test]
async fn a_fifo_is_never_opened() {
    let mut s = Scene::new().await;
    let id = id_for_beta(6, "fifo");
    let fifo = s.inbox().join(format!("{id}.md"));
    s.survives(
        |_| {
            let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid C string; mkfifo only reads it.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        },
        Some(&id),
    )
    .await;
    // Asked for by name, it is refused at once, not waited on.
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        s.alpha.call(
            "t9_ipc_send",
            json!({"to": "beta", "subject": "re", "reply_to": id}),
        ),
    )
    .await
    .expect("the server answers");
    assert!(reply.is_error, "{}", reply.text);
    assert!(reply.text.contains("no message"), "{}", reply.text);
    // `t9-ipc doctor` reads every file: it names the FIFO and exits.
    let mut doctor = Command::new(BIN);
    without_telegram(&mut doctor);
    doctor.arg("doctor").env("IPC_DATA_DIR", s.mb.root());
    let out = tokio::time::timeout(Duration::from_secs(15), doctor.output())
        .await
        .expect("doctor exits")
        .unwrap();
    let all = String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned();
    assert!(
        all.contains(&id) && all.contains("not a regular file"),
        "{all}"
    );
    assert!(fifo.exists());
}

#[tokio::test]
async fn a_symlink_loop_is_skipped() {
    let mut s = Scene::new().await;
    s.survives(
        |inbox| {
            symlink(inbox.join("loop-b.md"), inbox.join("loop-a.md")).unwrap();
            symlink(inbox.join("loop-a.md"), inbox.join("loop-b.md")).unwrap();
            symlink(inbox.join("loop-self.md"), inbox.join("loop-self.md")).unwrap();
        },
        None,
    )
    .await;
    for name in ["loop-a.md", "loop-b.md", "loop-self.md"] {
        let warnings = s.warnings(name);
        assert_eq!(warnings.len(), 1, "{name}: {warnings:#?}");
        assert!(warnings[0].contains("a symbolic link"), "{warnings:?}");
    }
}

#[tokio::test]
async fn a_file_deleted_between_listing_and_reading_is_no_trouble() {
    let mut s = Scene::new().await;
    let before = s.good_message_gets_through("before the churn").await;
    // A file that comes and goes as fast as it can (as an archiving session moves mail
    // away), while beta scans the inbox again and again.
    let text = "---\nfrom: alpha\nto: gamma\nsubject: s\n---\n\nnot for beta\n";
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (inbox, stop) = (s.inbox(), stop.clone());
        std::thread::spawn(move || {
            let (tmp, md) = (inbox.join("vanishing.tmp.1"), inbox.join("vanishing.md"));
            while !stop.load(Ordering::Relaxed) {
                std::fs::write(&tmp, text).unwrap();
                std::fs::rename(&tmp, &md).unwrap();
                std::fs::remove_file(&md).unwrap();
            }
        })
    };
    // Until the server has met the file gone between seeing it and reading it (and said
    // so, at whatever level).
    let met = |log: String| {
        log.lines().any(|l| {
            l.contains("vanishing.md") && (l.contains("gone") || l.contains("No such file"))
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !met(s.log()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the race never happened\n{}",
            s.log()
        );
        s.beta.ok("t9_ipc_who", json!({})).await;
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    let after = s.good_message_gets_through("after the churn").await;
    let marker = s.no_more_events().await;
    s.unread_is(&[&before, &after, &marker]).await;
    assert!(s.warnings("vanishing").is_empty(), "{}", s.log());
}

#[tokio::test]
async fn a_file_still_being_written_is_pushed_once_whole_after_close() {
    let mut s = Scene::new().await;
    let id = id_for_beta(7, "slow");
    let mut file = std::fs::File::create(s.inbox().join(format!("{id}.md"))).unwrap();
    let parts = ["first part\n", "second part\n", "last part"];
    file.write_all(for_beta("slow", "", "\n").trim_end().as_bytes())
        .unwrap();
    file.write_all(b"\n\n").unwrap();
    for part in parts {
        file.write_all(part.as_bytes()).unwrap();
        // The writer pauses: beta scans the whole inbox and is asked for its mail.
        let rescans = s.rescans();
        s.poke();
        let unread = s.beta.ok("t9_ipc_unread", json!({})).await;
        assert!(s.rescans() > rescans, "no rescan happened\n{}", s.log());
        assert!(!unread.contains(&id), "half a message was read: {unread}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(s.beta.events_within(Duration::ZERO).await.is_empty());
    drop(file);
    let event = s.beta.next_event().await;
    assert_eq!(event.meta("msg_id"), id, "{event:?}");
    assert_eq!(event.content, "first part\nsecond part\nlast part");
    let marker = s.no_more_events().await;
    let text = s.unread_is(&[&id, &marker]).await;
    assert!(
        text.contains("first part\nsecond part\nlast part"),
        "{text}"
    );
    assert!(s.warnings(&id).is_empty(), "{}", s.log());
}

#[tokio::test]
async fn a_file_name_that_is_not_utf8_is_skipped() {
    let mut s = Scene::new().await;
    let mut name = b"20300101T000000000008-00000008-alpha-beta-bad_name".to_vec();
    name.extend(b"\xff\xfe.md");
    let name = std::ffi::OsStr::from_bytes(&name).to_owned();
    let text = for_beta("odd name", "body", "\n");
    s.survives(|inbox| put(inbox, &name, text.as_bytes()), Some("bad_name"))
        .await;
    assert!(
        s.warnings("bad_name")[0].contains("not UTF-8"),
        "{}",
        s.log()
    );
}

#[tokio::test]
async fn a_non_ascii_file_name_is_no_trouble_for_a_new_session() {
    let mb = TempMailbox::new();
    let alpha = mb.spawn("alpha").await;
    // `é` takes bytes 29 and 30 of the name: no cut there may split it.
    let id = "20300101T000000000009-0000000é-alpha-gamma-s";
    put(
        &mb.inbox(),
        format!("{id}.md"),
        "---\nfrom: alpha\nto: gamma\nsubject: s\n---\n\nfor gamma\n".as_bytes(),
    );
    // gamma has never run: its start looks for earlier mail it sent, by file name.
    let gamma = mb.spawn("gamma").await;
    let text = gamma.ok("t9_ipc_unread", json!({})).await;
    assert_eq!(bodies_in(&text), [id], "{text}");
    alpha.ok("t9_ipc_who", json!({})).await;
}

/// Undoes what made the inbox read-only, even when the test fails.
struct ReadOnly {
    inbox: PathBuf,
    away: Option<PathBuf>,
}

impl ReadOnly {
    /// `chmod 0555`; where that does not stop this user (root), `inbox` is moved away and a
    /// plain file takes its place, so that creating a file in it fails all the same.
    fn make(inbox: &Path) -> (ReadOnly, &'static str) {
        use std::os::unix::fs::PermissionsExt;
        let mode = |m| std::fs::set_permissions(inbox, std::fs::Permissions::from_mode(m));
        mode(0o555).unwrap();
        let probe = inbox.join(".probe");
        let mut guard = ReadOnly {
            inbox: inbox.to_path_buf(),
            away: None,
        };
        if std::fs::write(&probe, "").is_err() {
            return (guard, "chmod 0555");
        }
        std::fs::remove_file(&probe).unwrap();
        mode(0o755).unwrap();
        let away = inbox.with_file_name("inbox.away");
        std::fs::rename(inbox, &away).unwrap();
        guard.away = Some(away);
        std::fs::write(inbox, "not a folder").unwrap();
        (guard, "a file in place of inbox/")
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if let Some(away) = self.away.take() {
            let _ = std::fs::remove_file(&self.inbox);
            let _ = std::fs::rename(away, &self.inbox);
        } else {
            let _ = std::fs::set_permissions(&self.inbox, std::fs::Permissions::from_mode(0o755));
        }
    }
}

#[tokio::test]
async fn a_read_only_inbox_fails_the_send_clearly_and_the_server_goes_on() {
    let mb = TempMailbox::new();
    let alpha = mb.spawn("alpha").await;
    let mut beta = mb.spawn("beta").await;
    // A first event shows that beta's push loop, and so its file watcher, runs before the
    // inbox is swapped (as root, for a file).
    let ready = beta.nothing_before_marker(&alpha, "beta").await;
    let (read_only, how) = ReadOnly::make(&mb.inbox());
    let reply = alpha
        .call(
            "t9_ipc_send",
            json!({"to": "beta", "subject": "blocked", "body": "b"}),
        )
        .await;
    assert!(reply.is_error, "{how}: {}", reply.text);
    assert!(
        reply.text.starts_with("Failed: creating ") && reply.text.contains("Nothing was changed"),
        "{how}: {}",
        reply.text
    );
    drop(read_only);
    assert_eq!(mb.inbox_files(), [format!("{ready}.md")], "{how}");
    // The same server sends again once the folder is writable, and it is pushed.
    let id = alpha.send("beta", "unblocked", "b").await;
    assert_eq!(beta.next_event().await.meta("msg_id"), id, "{how}");
    beta.nothing_before_marker(&alpha, "beta").await;
}

/// The largest file a server may write in the full-disk test.
const DISK_LEFT: u64 = 16 * 1024;

#[tokio::test]
async fn a_full_disk_fails_the_send_clearly_and_loses_nothing() {
    let mb = TempMailbox::new();
    let mut beta = mb.spawn("beta").await;
    // alpha may write no file larger than DISK_LEFT: a write past it fails (EFBIG) half
    // way, as on a full disk, whoever runs the test and wherever.
    let mut cmd = Command::new(BIN);
    cmd.arg("serve");
    // SAFETY: setrlimit and signal are async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: DISK_LEFT,
                rlim_max: DISK_LEFT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Past the limit a write fails with EFBIG instead of ending the process.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let cwd = mb.root().join("work-alpha");
    std::fs::create_dir_all(&cwd).unwrap();
    let alpha = mb
        .spawn_logged(cmd, Some("alpha"), &cwd, "t9-ipc-tests", &[], None)
        .await;

    // A message larger than the disk has room for: a clear error, and nothing left behind.
    let body = "x".repeat(40 * 1024);
    let reply = alpha
        .call(
            "t9_ipc_send",
            json!({"to": "beta", "subject": "too big for the disk", "body": body}),
        )
        .await;
    assert!(reply.is_error, "{}", reply.text);
    assert!(
        reply.text.starts_with("Failed: writing ") && reply.text.contains("Nothing was changed"),
        "{}",
        reply.text
    );
    assert!(mb.inbox_files().is_empty(), "{:?}", mb.inbox_files());

    // The server goes on: a message that fits is sent and pushed.
    let id = msg_id_in(
        &alpha
            .ok(
                "t9_ipc_send",
                json!({"to": "beta", "subject": "fits", "body": "small"}),
            )
            .await,
    );
    assert_eq!(beta.next_event().await.meta("msg_id"), id);

    // alpha's read state has no room left: marking mail read fails, and the mail stays
    // unread instead of vanishing.
    let state = mb.root().join("state").join("alpha.log");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&state)
        .unwrap();
    let used = log.metadata().unwrap().len();
    let line = "read padding-to-fill-the-disk\n";
    let room = DISK_LEFT - used - 8;
    log.write_all(&line.repeat(room as usize / line.len()).into_bytes())
        .unwrap();
    log.write_all(&vec![b'\n'; room as usize % line.len()])
        .unwrap();
    drop(log);
    let full = std::fs::metadata(&state).unwrap().len();
    let question = beta.send("alpha", "question", "still there?").await;
    let reply = alpha.call("t9_ipc_unread", json!({})).await;
    assert!(reply.is_error, "{}", reply.text);
    assert!(
        reply.text.starts_with("Failed: appending to "),
        "{}",
        reply.text
    );
    let again = alpha.ok("t9_ipc_unread", json!({"mark_read": false})).await;
    assert_eq!(
        bodies_in(&again),
        std::slice::from_ref(&question),
        "{again}"
    );
    // Half a line is not left in the state file to spoil the next one.
    assert_eq!(std::fs::metadata(&state).unwrap().len(), full);
    // The answer is written: the send succeeds even though the question cannot be marked.
    let answer = msg_id_in(
        &alpha
            .ok(
                "t9_ipc_send",
                json!({"to": "beta", "subject": "yes", "reply_to": question}),
            )
            .await,
    );
    assert_eq!(beta.next_event().await.meta("msg_id"), answer);
    beta.nothing_before_marker(&alpha, "beta").await;
}

#[tokio::test]
async fn a_fifo_in_place_of_heartbeats_json_is_treated_as_empty() {
    let mb = TempMailbox::new();
    std::fs::create_dir_all(mb.root()).unwrap();
    let path = mb.root().join("heartbeats.json");
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string; mkfifo only reads it.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    // Starting, listing and sending must not block on the FIFO.
    let alpha = tokio::time::timeout(Duration::from_secs(10), mb.spawn("alpha"))
        .await
        .expect("the server starts");
    let who = alpha.ok("t9_ipc_who", json!({})).await;
    assert!(who.contains("alpha (you)"), "{who}");
    // The next write replaces the FIFO with the real file.
    assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
}
