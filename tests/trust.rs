//! Trust (issue 11): no lock another process holds freezes a server, the mailbox is private
//! whatever the umask, names are identities, and `heartbeats.json` is not trusted as paths.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

use crate::util::{BIN, EVENT_WAIT, Raw, TempMailbox, initialize_request};

/// What the issue promises: an answer, and an end after SIGTERM, within this.
const BOUND: Duration = Duration::from_secs(2);

/// Another process holding `path`'s `flock` for 30 s (one python3 process, so that killing
/// it frees the lock); returns once it holds it. Killed when dropped.
async fn hold_lock(path: &Path) -> Child {
    const HOLD: &str = "import fcntl, sys, time\n\
        f = open(sys.argv[1], 'a')\n\
        fcntl.flock(f, fcntl.LOCK_EX)\n\
        print('locked', flush=True)\n\
        time.sleep(30)\n";
    let mut child = Command::new("python3")
        .args(["-c", HOLD])
        .arg(path)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = timeout(EVENT_WAIT, lines.next_line()).await;
    assert_eq!(line.unwrap().unwrap().as_deref(), Some("locked"));
    child
}

/// Sends a request and waits for its answer at most [`BOUND`] (measured from the send).
async fn answered_within_bound(raw: &mut Raw, request: Value) -> Value {
    let id = request["id"].clone();
    let started = Instant::now();
    raw.send(request).await;
    let answer = timeout(BOUND, raw.response(id))
        .await
        .unwrap_or_else(|_| panic!("no answer within {BOUND:?}"));
    assert!(started.elapsed() < BOUND);
    answer
}

fn tool_call(id: u64, tool: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": args}})
}

/// The text of a tools/call answer, and whether it is an error result.
fn tool_text(answer: &Value) -> (String, bool) {
    let result = &answer["result"];
    let text = result["content"][0]["text"].as_str().unwrap_or_default();
    (text.to_owned(), result["isError"] == json!(true))
}

/// initialize, then t9_ipc_who, each answered within the bound; then SIGTERM ends the
/// server within the bound.
async fn serves_and_ends_in_time(mut raw: Raw) -> (String, bool) {
    let init = answered_within_bound(&mut raw, initialize_request(1)).await;
    assert!(init["result"]["serverInfo"].is_object(), "{init}");
    raw.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    let who = answered_within_bound(&mut raw, tool_call(2, "t9_ipc_who", json!({}))).await;
    let pid = raw.child.id().expect("running") as i32;
    // SAFETY: kill sends a signal to the child this test started; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let ended = timeout(BOUND, raw.child.wait()).await;
    assert!(ended.is_ok(), "still running {BOUND:?} after SIGTERM");
    tool_text(&who)
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn a_held_heartbeats_lock_never_freezes_a_server() {
    let mb = TempMailbox::new();
    let lock = mb.root().join("heartbeats.lock");
    let holder = hold_lock(&lock).await;
    let log = mb.root().join("serve.log");
    let raw = Raw::spawn_logged(mb.root(), "alpha", Some(&log));
    let (who, is_error) = serves_and_ends_in_time(raw).await;
    assert!(!is_error, "{who}");
    // It said why it is not listed: the lock file and its holder.
    let log = log_of(&log);
    assert!(log.contains("heartbeats.lock"), "{log}");
    assert!(
        log.contains(&format!("held by process {}", holder.id().unwrap())),
        "{log}"
    );
}

#[tokio::test]
async fn a_held_read_state_never_freezes_a_server() {
    let mb = TempMailbox::new();
    std::fs::create_dir_all(mb.root().join("state")).unwrap();
    let mut holder = hold_lock(&mb.root().join("state/beta.log")).await;
    let raw = Raw::spawn(mb.root(), "beta");
    let (who, is_error) = serves_and_ends_in_time(raw).await;
    assert!(!is_error && who.contains("beta (you)"), "{who}");
    holder.kill().await.unwrap();

    // Reading mail needs that lock: a clear error within the bound, and the mail is still
    // there once the lock is free.
    let mut holder = hold_lock(&mb.root().join("state/beta.log")).await;
    let mut raw = Raw::spawn(mb.root(), "beta");
    answered_within_bound(&mut raw, initialize_request(1)).await;
    write_message(mb.root(), "alpha", "beta", "kept for beta");
    let answer = answered_within_bound(&mut raw, tool_call(2, "t9_ipc_unread", json!({}))).await;
    let (text, is_error) = tool_text(&answer);
    assert!(is_error, "{text}");
    assert!(
        text.contains("state/beta.log") && text.contains("try again"),
        "{text}"
    );
    holder.kill().await.unwrap();
    let answer = answered_within_bound(&mut raw, tool_call(3, "t9_ipc_unread", json!({}))).await;
    let (text, is_error) = tool_text(&answer);
    assert!(!is_error && text.contains("kept for beta"), "{text}");
}

/// A message file written by hand, as any program following the spec may.
fn write_message(root: &Path, from: &str, to: &str, subject: &str) {
    let stamp = chrono::Local::now().format("%Y%m%dT%H%M%S%6f");
    let path = root
        .join("inbox")
        .join(format!("{stamp}-0a1b2c3d-{from}-{to}-x.md"));
    let created = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
    std::fs::write(
        path,
        format!(
            "---\nfrom: {from}\nto: {to}\ntype: ipc\nsubject: {subject}\npriority: normal\n\
             created: {created}\n---\n\nbody\n"
        ),
    )
    .unwrap();
}

/// Every folder and file under `dir`, with its mode.
fn modes_under(dir: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.path().symlink_metadata().unwrap();
        let mode = meta.permissions().mode() & 0o777;
        out.push((entry.path(), mode, meta.is_dir()));
        if meta.is_dir() {
            out.extend(modes_under(&entry.path()));
        }
    }
    out
}

/// A new mailbox made by `sh -c 'umask 022; exec t9-ipc serve'` (with `env`), after a send
/// and a read: the mailbox folder and everything under it, with modes.
async fn fresh_mailbox(
    mb: &TempMailbox,
    env: &[(&str, &str)],
) -> (PathBuf, Vec<(PathBuf, u32, bool)>) {
    let data = mb.root().join("new/data");
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!("umask 022; exec '{BIN}' serve")]);
    let mut env = env.to_vec();
    env.push(("IPC_DATA_DIR", data.to_str().unwrap()));
    let alpha = mb
        .spawn_command(cmd, Some("alpha"), cwd.path(), "t9-ipc-tests", &env)
        .await;
    alpha.send("beta", "hello", "b").await;
    alpha.ok("t9_ipc_unread", json!({})).await;
    alpha.quit().await;
    let mut all = modes_under(&data);
    for path in ["state/alpha.log", "heartbeats.lock", "heartbeats.json"] {
        assert!(
            all.iter().any(|(p, ..)| p.ends_with(path)),
            "no {path}: {all:?}"
        );
    }
    assert!(all.iter().any(|(p, ..)| p.starts_with(data.join("inbox"))));
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    all.push((data.clone(), mode, true));
    (data, all)
}

#[tokio::test]
async fn a_fresh_mailbox_is_private_under_umask_022() {
    let mb = TempMailbox::new();
    let (_, all) = fresh_mailbox(&mb, &[]).await;
    for (path, mode, is_dir) in all {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", path.display());
    }
}

#[tokio::test]
async fn a_mailbox_shared_on_purpose_is_group_shared_and_doctor_says_so() {
    let mb = TempMailbox::new();
    let (data, all) = fresh_mailbox(&mb, &[("IPC_SHARE_GROUP", "1")]).await;
    for (path, mode, is_dir) in all {
        // The seal key stays the owner's alone: the group shares the mail, not the power to
        // write it as a verified `human` or `telegram` (docs/SECURITY.md, "Senders").
        let want = if path.ends_with("seal.key") {
            0o600
        } else if is_dir {
            0o770
        } else {
            0o660
        };
        assert_eq!(mode, want, "{} is {mode:o}", path.display());
    }
    let (_, out) = doctor(&data, true).await;
    assert!(out.contains("shared with its group on purpose"), "{out}");
    assert!(!out.contains("readable by other users"), "{out}");
    // Without the setting, the same mailbox is open to the group: a problem.
    let (code, out) = doctor(&data, false).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("readable by other users"), "{out}");
}

/// A server named alpha working in a folder outside the mailbox (kept while the guard
/// lives), with extra environment variables and its log in `log`.
async fn alpha_elsewhere(
    mb: &TempMailbox,
    env: &[(&str, &str)],
    log: Option<&Path>,
) -> (crate::util::Client, tempfile::TempDir) {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve");
    let client = mb
        .spawn_logged(cmd, Some("alpha"), cwd.path(), "t9-ipc-tests", env, log)
        .await;
    (client, cwd)
}

/// `t9-ipc doctor` on `root`, with `IPC_SHARE_GROUP=1` when `share`: its exit code and stdout.
async fn doctor(root: &Path, share: bool) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("doctor")
        .env("IPC_DATA_DIR", root)
        .env("IPC_SHARE_GROUP", if share { "1" } else { "0" })
        .env_remove("IPC_TG_TOKEN")
        .env_remove("IPC_TG_CHAT")
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("doctor runs");
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[tokio::test]
async fn doctor_fails_on_a_0755_mailbox_and_a_server_start_tightens_it_once() {
    let mb = TempMailbox::new();
    let root = mb.root();
    for dir in ["inbox", "archive", "state"] {
        std::fs::create_dir(root.join(dir)).unwrap();
    }
    write_message(root, "alpha", "beta", "readable");
    let set = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    for (path, ..) in modes_under(root) {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        set(&path, mode).unwrap();
    }
    set(root, 0o755).unwrap();
    let (code, out) = doctor(root, false).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("PROBLEM") && out.contains("readable by other users"),
        "{out}"
    );

    let log = root.join("serve.log");
    let (alpha, _cwd) = alpha_elsewhere(&mb, &[], Some(&log)).await;
    alpha.ok("t9_ipc_who", json!({})).await;
    alpha.quit().await;
    let warnings = log_of(&log).matches("readable by other users").count();
    assert_eq!(warnings, 1, "{}", log_of(&log));
    std::fs::remove_file(&log).unwrap();
    let (_, out) = doctor(root, false).await;
    assert!(!out.contains("readable by other users"), "{out}");
    assert!(out.contains("private: folders 0700, files 0600"), "{out}");
}

#[tokio::test]
async fn an_offline_name_with_unread_mail_is_not_taken_from_another_folder() {
    let mb = TempMailbox::new();
    // beta works in its own folder, then goes offline; mail for it waits.
    mb.spawn("beta").await.quit().await;
    let alpha = mb.spawn("alpha").await;
    alpha.send("beta", "for beta only", "secret").await;

    let mallory = mb.spawn("mallory").await;
    let r = mallory
        .call("t9_ipc_set_name", json!({"name": "beta"}))
        .await;
    assert!(r.is_error, "{}", r.text);
    assert!(r.text.contains("another folder"), "{}", r.text);
    assert!(r.text.contains("take_over: true"), "{}", r.text);
    assert_eq!(mb.heartbeats()["mallory"]["pid"], mallory.pid);
    let unread = mallory.ok("t9_ipc_unread", json!({})).await;
    assert!(!unread.contains("for beta only"), "{unread}");

    // The rightful session, back in its folder, gets its mail.
    let beta = mb.spawn("beta").await;
    let unread = beta.ok("t9_ipc_unread", json!({})).await;
    assert!(unread.contains("for beta only"), "{unread}");
    beta.quit().await;

    // The user may say otherwise: take_over takes the name, mail and all.
    alpha.send("beta", "second", "s").await;
    let r = mallory
        .call(
            "t9_ipc_set_name",
            json!({"name": "beta", "take_over": true}),
        )
        .await;
    assert!(!r.is_error, "{}", r.text);
    let unread = mallory.ok("t9_ipc_unread", json!({})).await;
    assert!(unread.contains("second"), "{unread}");
}

#[tokio::test]
async fn a_rename_says_what_mail_the_old_name_keeps() {
    let mb = TempMailbox::new();
    let alpha = mb.spawn("alpha").await;
    let gamma = mb.spawn("gamma").await;
    alpha.send("gamma", "left behind", "b").await;
    let text = gamma
        .ok("t9_ipc_set_name", json!({"name": "gamma-two"}))
        .await;
    assert!(
        text.contains("\"gamma\" still has 1 unread message (from alpha"),
        "{text}"
    );
    assert!(text.contains("t9_ipc_set_name(name: \"gamma\")"), "{text}");
    // Its own old name, used from this folder: taken back without take_over, mail and all.
    gamma.ok("t9_ipc_set_name", json!({"name": "gamma"})).await;
    let unread = gamma.ok("t9_ipc_unread", json!({})).await;
    assert!(unread.contains("left behind"), "{unread}");
}

#[tokio::test]
async fn a_heartbeat_entry_named_like_a_path_is_skipped() {
    let mb = TempMailbox::new();
    let root = mb.root().join("mailbox");
    std::fs::create_dir_all(root.join("inbox")).unwrap();
    let escape = format!("x{}", std::process::id());
    let name = format!("../../{escape}");
    let folder = mb.root().join("work");
    std::fs::create_dir_all(&folder).unwrap();
    let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string();
    let table = json!({ name.clone(): {
        "timestamp": now, "status": "active", "pid": std::process::id(),
        "working_on": "x", "cwd": folder.to_str().unwrap()
    }});
    std::fs::write(root.join("heartbeats.json"), table.to_string()).unwrap();

    let mut hook = Command::new(BIN);
    hook.args(["hook", "UserPromptSubmit"])
        .env("IPC_DATA_DIR", &root)
        .env_remove("IPC_SESSION_ID")
        .env_remove("CLAUDECODE")
        .current_dir(&folder)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = hook.spawn().unwrap();
    let input = json!({"hook_event_name": "UserPromptSubmit", "cwd": folder.to_str().unwrap()});
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = timeout(EVENT_WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no t9-ipc session found"), "{stderr}");
    // Where `state/../../<escape>.log` would have gone: the mailbox's parent.
    assert!(!mb.root().join(format!("{escape}.log")).exists());
    assert!(!root.join("state").exists() || modes_under(&root.join("state")).is_empty());

    let env = [("IPC_DATA_DIR", root.to_str().unwrap())];
    let (alpha, _cwd) = alpha_elsewhere(&mb, &env, None).await;
    let who = alpha.ok("t9_ipc_who", json!({})).await;
    assert!(
        who.contains("alpha (you)") && !who.contains(&escape),
        "{who}"
    );
}

/// The log of a server run with `RUST_LOG=trace` (and `env`) that sent one message with a
/// recognizable body.
async fn trace_log_of_a_send(mb: &TempMailbox, env: &[(&str, &str)]) -> String {
    let log = mb.root().join("trace.log");
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "trace"));
    let (alpha, _cwd) = alpha_elsewhere(mb, &env, Some(&log)).await;
    alpha.send("beta", "s", "the-secret-body-42").await;
    alpha.quit().await;
    log_of(&log)
}

#[tokio::test]
async fn logs_carry_no_bodies_unless_the_wire_is_asked_for() {
    let mb = TempMailbox::new();
    let log = trace_log_of_a_send(&mb, &[]).await;
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "{log}");
    assert!(!log.contains("the-secret-body-42"), "{log}");
    let log = trace_log_of_a_send(&mb, &[("IPC_LOG_WIRE", "1")]).await;
    assert!(
        log.contains("the-secret-body-42"),
        "the opt-in shows the wire"
    );
}
