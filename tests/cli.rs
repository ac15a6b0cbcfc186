//! The command line for people and scripts, and the Claude Code hook, run as built.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::time::timeout;

use crate::util::{BIN, Client, EVENT_WAIT, TempMailbox, spawn_client, without_telegram};

/// What a finished command left behind.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `t9-ipc <args>` on the mailbox of `mb`, with `stdin` as its input (closed when `None`),
/// with no IPC_SESSION_ID, the default log level, and not inside Claude Code (even when
/// these tests run from a Claude Code session).
fn command(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("IPC_DATA_DIR", root)
        .env_remove("IPC_SESSION_ID")
        .env_remove("CLAUDECODE")
        .env_remove("RUST_LOG")
        .env_remove("IPC_TG_TOKEN")
        .env_remove("IPC_TG_CHAT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn finish(mut cmd: Command, stdin: Option<&str>) -> Out {
    let mut child = cmd.spawn().expect("spawn t9-ipc");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
    }
    drop(pipe);
    let out = timeout(EVENT_WAIT, child.wait_with_output())
        .await
        .expect("the command ends in time")
        .expect("wait");
    Out {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

async fn t9(mb: &TempMailbox, args: &[&str], stdin: Option<&str>) -> Out {
    finish(command(mb.root(), args), stdin).await
}

/// The hook of the session `name` (found by IPC_SESSION_ID), with the event's JSON.
async fn hook_of(mb: &TempMailbox, name: &str, event: &str) -> Out {
    let mut cmd = command(mb.root(), &["hook", event]);
    cmd.env("IPC_SESSION_ID", name);
    finish(cmd, Some(&hook_input(event, "/"))).await
}

/// Starts a server named `name` as another terminal's Claude Code would: through a shell
/// that stays, so that this test process is not its parent, and the commands this test runs
/// stand for a person at a terminal, outside that session.
async fn spawn_elsewhere(mb: &TempMailbox, name: &str) -> Client {
    let cwd = mb.root().join(format!("work-{name}"));
    std::fs::create_dir_all(&cwd).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "\"$0\" serve; exit $?", BIN.path()])
        .current_dir(&cwd)
        .env("IPC_DATA_DIR", mb.root())
        .env("IPC_SESSION_ID", name)
        .env_remove("IPC_PUSH");
    without_telegram(&mut cmd);
    spawn_client(cmd, "t9-ipc-tests", Stdio::null()).await
}

/// The pid of the server of the live session `name`.
fn server_pid(mb: &TempMailbox, name: &str) -> u64 {
    mb.heartbeats()[name]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} has a pid in heartbeats.json"))
}

/// A command that must succeed.
async fn ok(mb: &TempMailbox, args: &[&str], stdin: Option<&str>) -> Out {
    let out = t9(mb, args, stdin).await;
    assert_eq!(out.code, 0, "t9-ipc {args:?} failed: {out:?}");
    out
}

/// The hook's JSON input as Claude Code writes it.
fn hook_input(event: &str, cwd: &str) -> String {
    json!({
        "session_id": "0f3c5e2a-9d1b-4c8e-a7f6-2b4d6e8f0a1c",
        "transcript_path": "/tmp/transcript.jsonl",
        "cwd": cwd,
        "permission_mode": "default",
        "hook_event_name": event,
        "prompt": "any news?"
    })
    .to_string()
}

/// The additionalContext of a hook's output, checking the output's shape.
fn context_of(out: &Out, event: &str) -> String {
    assert_eq!(out.code, 0, "{out:?}");
    let v: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("hook stdout is not one JSON object ({e}): {out:?}"));
    let specific = &v["hookSpecificOutput"];
    assert_eq!(specific["hookEventName"], event, "{v}");
    specific["additionalContext"]
        .as_str()
        .expect("additionalContext is a string")
        .to_owned()
}

fn state_log(mb: &TempMailbox, name: &str) -> String {
    std::fs::read_to_string(mb.root().join("state").join(format!("{name}.log"))).unwrap_or_default()
}

#[tokio::test]
async fn a_cli_send_is_pushed_to_a_running_session_and_who_lists_it() {
    let mb = TempMailbox::new();
    let mut beta = spawn_elsewhere(&mb, "beta").await;
    let pid = server_pid(&mb, "beta");
    let out = ok(
        &mb,
        &[
            "send",
            "beta",
            "from the terminal",
            "--body",
            "hello **beta**",
            "--priority",
            "high",
        ],
        None,
    )
    .await;
    let id = out.stdout.trim().to_owned();
    assert!(id.ends_with("-human-beta-from_the_terminal"), "{out:?}");
    assert!(out.stderr.contains("sent to beta (live, pid"), "{out:?}");
    let event = beta.next_event().await;
    assert_eq!(event.meta("msg_id"), id);
    assert_eq!(event.meta("from"), "human");
    assert_eq!(event.meta("priority"), "high");
    assert_eq!(event.content, "hello **beta**");

    // The body from stdin, a reply, another sender.
    let out = ok(
        &mb,
        &[
            "send",
            "beta",
            "re: it",
            "-",
            "--from",
            "ci-bot",
            "--reply-to",
            &id,
        ],
        Some("piped body\n"),
    )
    .await;
    let event = beta.next_event().await;
    assert_eq!(event.meta("msg_id"), out.stdout.trim());
    assert_eq!(event.meta("from"), "ci-bot");
    assert_eq!(event.meta("reply_to"), id);
    assert_eq!(event.content, "piped body\n");

    // The sender is no session: nothing but beta is in heartbeats.json.
    let names: Vec<String> = mb.heartbeats().keys().cloned().collect();
    assert_eq!(names, ["beta"]);
    let out = ok(&mb, &["who", "--json"], None).await;
    let who: Value = serde_json::from_str(&out.stdout).expect("who --json is JSON");
    let who = who.as_array().expect("an array");
    assert_eq!(who.len(), 1, "{who:?}");
    assert_eq!(who[0]["name"], "beta");
    assert_eq!(who[0]["pid"], pid);
    assert!(who[0]["cwd"].as_str().unwrap().ends_with("work-beta"));
    let table = ok(&mb, &["who"], None).await.stdout;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains(&format!("beta  {pid}")), "{table}");
    assert!(!table.contains('\x1b'), "colour in a pipe: {table:?}");
    beta.quit().await;
}

#[tokio::test]
async fn a_refused_send_says_why_in_one_line_and_writes_nothing() {
    let mb = TempMailbox::new();
    let out = t9(&mb, &["send", "be ta", "s"], None).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(
        out.stderr
            .starts_with("t9-ipc: not sent: `to` is not a session name"),
        "{out:?}"
    );
    // A person at a terminal is pointed at the command, not at the tool.
    assert!(
        out.stderr.contains("`t9-ipc who`") && !out.stderr.contains("t9_ipc_who"),
        "{out:?}"
    );
    let big = "x".repeat(64 * 1024 + 1);
    let out = t9(&mb, &["send", "beta", "big", "--body", &big], None).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("65537 bytes"), "{out:?}");
    let out = t9(
        &mb,
        &["send", "beta", "s", "--reply-to", "no-such-id"],
        None,
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("reply_to"), "{out:?}");
    // Usage mistakes exit 2.
    let out = t9(&mb, &["send", "beta", "s", "--from", "x"], None).await;
    assert_eq!(out.code, 2, "{out:?}");
    let out = t9(&mb, &["send", "beta", "s", "body", "--body", "other"], None).await;
    assert_eq!(out.code, 2, "{out:?}");
    let out = t9(&mb, &["inbox", "--unread"], None).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(
        mb.inbox_files().is_empty(),
        "a refused send wrote {:?}",
        mb.inbox_files()
    );
}

#[tokio::test]
async fn inbox_lists_marks_read_and_show_prints_one() {
    let mb = TempMailbox::new();
    let id = ok(&mb, &["send", "gamma", "first", "--body", "one"], None)
        .await
        .stdout
        .trim()
        .to_owned();
    ok(&mb, &["send", "delta", "not for gamma"], None).await;
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["msg_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let out = ok(&mb, &["inbox", "gamma", "--unread", "--json"], None).await;
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list(&v), std::slice::from_ref(&id));
    assert_eq!(v[0]["body"], "one");
    assert_eq!(v[0]["unread"], true);
    assert!(
        state_log(&mb, "gamma").is_empty(),
        "looking wrote read state"
    );

    let out = ok(&mb, &["inbox", "gamma", "--mark-read"], None).await;
    assert!(out.stdout.contains("\n* "), "{out:?}");
    assert!(out.stderr.contains("marked 1 message read"), "{out:?}");
    assert!(state_log(&mb, "gamma").contains(&format!("read {id}")));
    let out = ok(&mb, &["inbox", "gamma", "--unread", "--json"], None).await;
    assert_eq!(out.stdout.trim(), "[]");
    let out = ok(&mb, &["inbox", "gamma"], None).await;
    assert!(
        out.stdout.contains(&id) && !out.stdout.contains("* "),
        "{out:?}"
    );

    // The whole inbox without a name; one message by a unique start of its id.
    let out = ok(&mb, &["inbox"], None).await;
    assert!(out.stdout.starts_with("2 messages in "), "{out:?}");
    let out = ok(&mb, &["show", &id[..24]], None).await;
    assert!(
        out.stdout.starts_with(&format!("msg_id:   {id}\n")),
        "{out:?}"
    );
    assert!(out.stdout.ends_with("subject:  first\n\none\n"), "{out:?}");
    // JSON names the id as the tools and events do.
    let out = ok(&mb, &["show", &id, "--json"], None).await;
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["msg_id"], id.as_str(), "{v}");
    assert!(v.get("id").is_none(), "{v}");
    let out = t9(&mb, &["show", "2"], None).await;
    assert_eq!(out.code, 1, "an ambiguous start: {out:?}");
    let out = t9(&mb, &["show", "nothing-like-it"], None).await;
    assert_eq!(out.code, 1, "{out:?}");
}

#[tokio::test]
async fn tail_prints_a_message_sent_after_it_started() {
    let mb = TempMailbox::new();
    ok(&mb, &["send", "beta", "before tail"], None).await;
    let mut tail = command(mb.root(), &["tail"]).spawn().expect("spawn tail");
    let mut stderr = BufReader::new(tail.stderr.take().unwrap()).lines();
    let mut stdout = BufReader::new(tail.stdout.take().unwrap()).lines();
    let ready = timeout(EVENT_WAIT, stderr.next_line())
        .await
        .expect("tail says it follows")
        .unwrap()
        .unwrap();
    assert!(ready.contains("following"), "{ready}");

    let id = ok(
        &mb,
        &[
            "send",
            "beta",
            "after tail",
            "--body",
            "line one\nline two",
            "--priority",
            "critical",
        ],
        None,
    )
    .await
    .stdout
    .trim()
    .to_owned();
    let mut lines = Vec::new();
    while lines.len() < 5 {
        let line = timeout(EVENT_WAIT, stdout.next_line())
            .await
            .expect("tail prints the new message")
            .unwrap()
            .expect("tail still runs");
        lines.push(line);
    }
    assert!(
        lines[0].ends_with("human → beta  [critical] after tail"),
        "{lines:?}"
    );
    assert_eq!(lines[1], format!("  {id}"));
    assert_eq!(lines[2..], ["    line one", "    line two", ""]);
    let all = lines.join("\n");
    assert!(!all.contains("before tail"), "{all}");
    assert!(!all.contains('\x1b'), "colour in a pipe: {all:?}");

    // `--to` filters.
    let mut only_gamma = command(mb.root(), &["tail", "--to", "gamma"])
        .spawn()
        .unwrap();
    let mut g_err = BufReader::new(only_gamma.stderr.take().unwrap()).lines();
    let mut g_out = BufReader::new(only_gamma.stdout.take().unwrap()).lines();
    timeout(EVENT_WAIT, g_err.next_line())
        .await
        .unwrap()
        .unwrap();
    ok(&mb, &["send", "beta", "not gamma's"], None).await;
    ok(&mb, &["broadcast", "for everyone"], None).await;
    let first = timeout(EVENT_WAIT, g_out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.ends_with("human → all  for everyone"), "{first}");
    tail.kill().await.unwrap();
    only_gamma.kill().await.unwrap();
}

#[tokio::test]
async fn the_hook_prints_unread_mail_once_then_nothing() {
    let mb = TempMailbox::new();
    let beta = spawn_elsewhere(&mb, "beta").await;
    // Junk in the inbox costs nothing.
    std::fs::write(mb.inbox().join("junk.md"), "no front matter").unwrap();
    let id = ok(
        &mb,
        &["send", "beta", "build is red", "--body", "see ci #812"],
        None,
    )
    .await
    .stdout
    .trim()
    .to_owned();
    let out = hook_of(&mb, "beta", "UserPromptSubmit").await;
    let text = context_of(&out, "UserPromptSubmit");
    assert!(
        text.contains("unread mail for this session (\"beta\"). 1 message shown below"),
        "{text}"
    );
    assert_eq!(
        crate::util::bodies_in(&text),
        std::slice::from_ref(&id),
        "{text}"
    );
    assert!(text.contains("from: human · to: beta"), "{text}");
    assert!(
        text.ends_with("subject: build is red\n\nsee ci #812"),
        "{text}"
    );
    assert!(state_log(&mb, "beta").contains(&format!("read {id}")));

    let again = hook_of(&mb, "beta", "UserPromptSubmit").await;
    assert_eq!((again.code, again.stdout.as_str()), (0, ""), "{again:?}");

    // The other events take the same form, with their own name.
    ok(&mb, &["broadcast", "--from", "ci-bot", "deploy done"], None).await;
    let out = hook_of(&mb, "beta", "PostToolUse").await;
    assert!(context_of(&out, "PostToolUse").contains("subject: deploy done"));

    // A message too long for the hook's context is named once, not cut, and stays unread.
    let long = "word ".repeat(4_000);
    let long_id = ok(&mb, &["send", "beta", "long one", "--body", &long], None)
        .await
        .stdout
        .trim()
        .to_owned();
    let out = hook_of(&mb, "beta", "SessionStart").await;
    let text = context_of(&out, "SessionStart");
    assert!(
        text.contains(&format!("- {long_id} from human: long one")),
        "{text}"
    );
    assert!(!text.contains("word word"), "{text}");
    let again = hook_of(&mb, "beta", "SessionStart").await;
    assert_eq!(again.stdout, "", "named again: {again:?}");
    assert!(!state_log(&mb, "beta").contains(&format!("read {long_id}")));
    beta.quit().await;
}

#[tokio::test]
async fn the_hook_prints_nothing_and_exits_0_on_any_error() {
    let mb = TempMailbox::new();
    let input = hook_input("UserPromptSubmit", "/");
    let not_a_folder = mb.root().join("file");
    std::fs::write(&not_a_folder, "").unwrap();
    let broken_inbox = mb.root().join("broken");
    std::fs::create_dir(&broken_inbox).unwrap();
    std::fs::write(broken_inbox.join("inbox"), "a file where the folder goes").unwrap();
    for (root, args, stdin) in [
        (
            not_a_folder.as_path(),
            vec!["hook", "UserPromptSubmit"],
            input.as_str(),
        ),
        (
            broken_inbox.as_path(),
            vec!["hook", "UserPromptSubmit"],
            input.as_str(),
        ),
        (mb.root(), vec!["hook", "UserPromptSubmit"], "{not json"),
        (mb.root(), vec!["hook", "Stop"], input.as_str()),
        (
            mb.root(),
            vec!["hook", "UserPromptSubmit", "--bogus"],
            input.as_str(),
        ),
    ] {
        let mut cmd = command(root, &args);
        cmd.env("IPC_SESSION_ID", "beta");
        let out = finish(cmd, Some(stdin)).await;
        assert_eq!(out.code, 0, "{root:?} {args:?}: {out:?}");
        assert_eq!(out.stdout, "", "{root:?} {args:?}: {out:?}");
        assert!(
            out.stderr.contains("t9-ipc hook: nothing shown: "),
            "{root:?} {args:?}: {out:?}"
        );
    }
}

#[tokio::test]
async fn the_hook_finds_its_session_by_the_process_that_started_both() {
    let mb = TempMailbox::new();
    // Sent before alpha starts: from here on, this test's commands run inside alpha.
    let to_alpha = ok(&mb, &["send", "alpha", "for alpha"], None).await;
    let to_beta = ok(&mb, &["send", "beta", "for beta"], None).await;
    // alpha is started by this test process, as Claude Code starts its MCP server.
    let alpha = mb.spawn("alpha").await;
    // beta is started by another process: a shell that stays.
    let beta_cwd = mb.root().join("work-beta");
    std::fs::create_dir_all(&beta_cwd).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "\"$0\" serve; exit $?", BIN.path()])
        .current_dir(&beta_cwd)
        .env("IPC_DATA_DIR", mb.root())
        .env("IPC_SESSION_ID", "beta");
    let beta = spawn_client(cmd, "t9-ipc-tests", std::process::Stdio::null()).await;

    // The hook runs through a shell, as Claude Code runs it; no IPC_SESSION_ID, a folder
    // no session started in.
    let mut via_shell = Command::new("sh");
    via_shell
        .args(["-c", "\"$0\" hook UserPromptSubmit; exit $?", BIN.path()])
        .env("IPC_DATA_DIR", mb.root())
        .env_remove("IPC_SESSION_ID")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = finish(via_shell, Some(&hook_input("UserPromptSubmit", "/"))).await;
    let text = context_of(&out, "UserPromptSubmit");
    assert!(text.contains("(\"alpha\")"), "{text}");
    assert!(text.contains(to_alpha.stdout.trim()), "{text}");
    assert!(!text.contains(to_beta.stdout.trim()), "{text}");

    // Without a server of its own, a hook falls back to the only session of its folder.
    alpha.quit().await;
    let cwd = beta_cwd.display().to_string();
    let out = t9(
        &mb,
        &["hook", "UserPromptSubmit"],
        Some(&hook_input("UserPromptSubmit", &cwd)),
    )
    .await;
    let text = context_of(&out, "UserPromptSubmit");
    assert!(text.contains("(\"beta\")"), "{text}");
    assert!(text.contains(to_beta.stdout.trim()), "{text}");
    beta.quit().await;
}

#[tokio::test]
async fn doctor_finds_a_corrupt_heartbeats_file_and_a_junk_inbox_file() {
    let mb = TempMailbox::new();
    ok(&mb, &["send", "beta", "a good one"], None).await;
    let out = ok(&mb, &["doctor"], None).await;
    assert!(out.stdout.contains("1 message in inbox/"), "{}", out.stdout);
    assert!(
        out.stdout.trim_end().ends_with("Healthy."),
        "{}",
        out.stdout
    );

    std::fs::write(mb.root().join("heartbeats.json"), "{\"alpha\": {\"pid\": ").unwrap();
    std::fs::write(mb.inbox().join("notes.txt"), "junk").unwrap();
    std::fs::write(mb.inbox().join("half.md"), "---\nfrom: alpha\n").unwrap();
    let mut cmd = command(mb.root(), &["doctor"]);
    cmd.env("IPC_TG_TOKEN", "123456:SECRET-token-value")
        .env("IPC_TG_CHAT", "4242");
    let out = finish(cmd, None).await;
    assert_eq!(out.code, 1, "{out:?}");
    let report = &out.stdout;
    assert!(
        report.contains("PROBLEM  heartbeats.json is unusable: not a JSON object"),
        "{report}"
    );
    assert!(
        report.contains("PROBLEM  notes.txt: not a .md file"),
        "{report}"
    );
    assert!(
        report.contains("PROBLEM  half.md: the front matter has no closing"),
        "{report}"
    );
    // The fourth: the files written here with the umask's 0644 are readable by others.
    assert!(
        report.contains("PROBLEM  3 paths readable by other users"),
        "{report}"
    );
    assert!(report.contains("4 problems found"), "{report}");
    assert!(
        report.contains("configured: chat 4242, token set (not shown)"),
        "{report}"
    );
    assert!(
        !report.contains("SECRET") && !out.stderr.contains("SECRET"),
        "{out:?}"
    );
    // Nothing was changed or deleted.
    assert!(mb.inbox().join("notes.txt").is_file());
    assert_eq!(
        std::fs::read_to_string(mb.root().join("heartbeats.json")).unwrap(),
        "{\"alpha\": {\"pid\": "
    );
}

#[tokio::test]
async fn archive_moves_only_what_is_done_with_and_prune_empties_the_archive() {
    let mb = TempMailbox::new();
    let write = |id: &str, from: &str, to: &str| {
        let text = format!(
            "---\nfrom: {from}\nto: {to}\ntype: ipc\nsubject: s\npriority: normal\ncreated: 2020-01-01 00:00:00\n---\n\nold\n"
        );
        std::fs::write(mb.inbox().join(format!("{id}.md")), text).unwrap();
    };
    let read = "20200101T000000000001-00000001-alpha-beta-s";
    let unread = "20200101T000000000002-00000002-alpha-beta-s";
    let bcast = "20200101T000000000003-00000003-alpha-all-s";
    let recent = ok(&mb, &["broadcast", "new"], None)
        .await
        .stdout
        .trim()
        .to_owned();
    write(read, "alpha", "beta");
    write(unread, "alpha", "beta");
    write(bcast, "alpha", "all");
    std::fs::write(mb.inbox().join("junk.md"), "junk").unwrap();
    std::fs::create_dir_all(mb.root().join("state")).unwrap();
    std::fs::write(
        mb.root().join("state/beta.log"),
        format!("joined 2019-12-31T00:00:00+00:00\nread {read}\nread {bcast}\n"),
    )
    .unwrap();

    let dry = ok(&mb, &["archive", "--dry-run"], None).await;
    assert_eq!(
        dry.stdout,
        format!("{read}  (read by beta)\n{bcast}  (a broadcast read by everyone)\n")
    );
    assert!(dry.stderr.contains("would move 2 messages"), "{dry:?}");
    assert_eq!(mb.inbox_files().len(), 5, "a dry run moved files");

    ok(&mb, &["archive"], None).await;
    let mut left = mb.inbox_files();
    left.sort();
    let mut want = vec![
        format!("{unread}.md"),
        "junk.md".to_owned(),
        format!("{recent}.md"),
    ];
    want.sort();
    assert_eq!(left, want);
    // An archived message is still shown and can still be answered.
    ok(&mb, &["show", read], None).await;
    ok(&mb, &["send", "alpha", "re: s", "--reply-to", read], None).await;

    std::fs::write(mb.root().join("archive/notes.txt"), "mine").unwrap();
    let dry = ok(&mb, &["prune", "--dry-run"], None).await;
    assert_eq!(dry.stdout, format!("{read}\n{bcast}\n"));
    ok(&mb, &["prune"], None).await;
    let archive: Vec<_> = std::fs::read_dir(mb.root().join("archive"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(archive, ["notes.txt"]);
}

#[tokio::test]
async fn the_hook_leaves_out_what_was_pushed_only_where_push_is_known_to_work() {
    let mb = TempMailbox::new();
    let mut beta = spawn_elsewhere(&mb, "beta").await;
    let id = ok(&mb, &["send", "beta", "pushed already"], None)
        .await
        .stdout
        .trim()
        .to_owned();
    assert_eq!(beta.next_event().await.meta("msg_id"), id);
    // The server records the push right after the event has left.
    timeout(EVENT_WAIT, async {
        while !state_log(&mb, "beta").contains(&format!("pushed {id}")) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the push is recorded");

    // The server says its events reach the model: the hook does not repeat them.
    let set_push = |value: Option<&str>| {
        let mut table = mb.heartbeats();
        let entry = table["beta"].as_object_mut().unwrap();
        match value {
            Some(v) => entry.insert("push".into(), json!(v)),
            None => entry.remove("push"),
        };
        std::fs::write(
            mb.root().join("heartbeats.json"),
            serde_json::to_string(&table).unwrap(),
        )
        .unwrap();
    };
    set_push(Some("on"));
    let out = hook_of(&mb, "beta", "UserPromptSubmit").await;
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");

    // Not known: an event may have been dropped, so the hook shows it.
    set_push(Some("unknown"));
    let out = hook_of(&mb, "beta", "UserPromptSubmit").await;
    assert!(context_of(&out, "UserPromptSubmit").contains(&id));
    beta.quit().await;
}

#[tokio::test]
async fn install_dry_run_prints_the_command_and_the_hook_settings() {
    let mb = TempMailbox::new();
    let out = finish(with_claude(&mb, true, &["install", "--dry-run"]), None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.starts_with(&format!(
            "would run: claude mcp add --scope user t9-ipc -- {BIN} serve\n"
        )),
        "{out:?}"
    );
    let start = out.stdout.find("\n{").expect("a JSON block") + 1;
    let settings: Value =
        serde_json::from_str(&out.stdout[start..]).expect("the settings are JSON");
    for event in ["SessionStart", "UserPromptSubmit", "PostToolUse"] {
        assert_eq!(
            settings["hooks"][event][0]["hooks"][0]["command"],
            format!("{BIN} hook {event}"),
            "{settings}"
        );
    }
}

/// `t9-ipc <args>` with a PATH that holds a stand-in `claude` (a script that exits 0), or
/// no `claude` at all.
fn with_claude(mb: &TempMailbox, present: bool, args: &[&str]) -> Command {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = mb
        .root()
        .join(if present { "bin-with" } else { "bin-without" });
    std::fs::create_dir_all(&bin).unwrap();
    if present {
        let claude = bin.join("claude");
        std::fs::write(&claude, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut cmd = command(mb.root(), args);
    cmd.env("PATH", &bin);
    cmd
}

#[tokio::test]
async fn reserved_senders_are_refused_and_inside_a_session_the_cli_sends_as_it() {
    let mb = TempMailbox::new();
    for from in [
        "telegram",
        "TeLeGrAm",
        "system",
        "SYSTEM",
        "all",
        "Broadcast",
    ] {
        for args in [
            vec!["send", "beta", "s", "--from", from],
            vec!["broadcast", "s", "--from", from],
        ] {
            let out = t9(&mb, &args, None).await;
            assert_eq!(out.code, 2, "{args:?}: {out:?}");
            assert!(out.stderr.contains("is reserved"), "{args:?}: {out:?}");
        }
    }
    assert!(mb.inbox_files().is_empty(), "{:?}", mb.inbox_files());

    // Claude Code's Bash tool (CLAUDECODE set) with no live t9-ipc session: not as the user.
    let mut cmd = command(mb.root(), &["send", "beta", "s"]);
    cmd.env("CLAUDECODE", "1");
    let out = finish(cmd, None).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("must not speak as the user"), "{out:?}");
    let mut cmd = command(mb.root(), &["send", "gamma", "s", "--from", "ci-bot"]);
    cmd.env("CLAUDECODE", "1");
    assert_eq!(finish(cmd, None).await.code, 0);

    // This test process starts alpha's server, as Claude Code does: the commands it runs
    // now run inside alpha, and send as alpha.
    let alpha = mb.spawn("alpha").await;
    let mut beta = spawn_elsewhere(&mb, "beta").await;
    let out = ok(&mb, &["send", "beta", "from inside"], None).await;
    assert!(
        out.stdout.trim().ends_with("-alpha-beta-from_inside"),
        "{out:?}"
    );
    let event = beta.next_event().await;
    assert_eq!(event.meta("from"), "alpha");
    assert_eq!(event.meta("msg_id"), out.stdout.trim());
    for from in ["human", "HUMAN", "beta", "ci-bot"] {
        let out = t9(&mb, &["send", "beta", "s", "--from", from], None).await;
        assert_eq!(out.code, 2, "{from}: {out:?}");
        assert!(
            out.stderr.contains("inside the Claude Code session alpha")
                && out.stderr.contains("must not speak as the user"),
            "{from}: {out:?}"
        );
    }
    let out = ok(&mb, &["send", "beta", "named", "--from", "alpha"], None).await;
    assert!(out.stdout.trim().ends_with("-alpha-beta-named"), "{out:?}");
    let out = ok(&mb, &["broadcast", "all hands"], None).await;
    assert!(
        out.stdout.trim().ends_with("-alpha-all-all_hands"),
        "{out:?}"
    );
    alpha.quit().await;
    beta.quit().await;
}

#[tokio::test]
async fn show_tail_inbox_and_who_print_control_characters_escaped() {
    let mb = TempMailbox::new();
    ok(&mb, &["send", "beta", "make the mailbox"], None).await;
    let mut tail = command(mb.root(), &["tail", "--to", "beta"])
        .spawn()
        .expect("spawn tail");
    let mut t_err = BufReader::new(tail.stderr.take().unwrap()).lines();
    let mut t_out = BufReader::new(tail.stdout.take().unwrap()).lines();
    timeout(EVENT_WAIT, t_err.next_line())
        .await
        .expect("tail says it follows")
        .unwrap();

    // A hand-written message: a title change in the subject and the sender, a clipboard
    // write and an 8-bit CSI in the body (YAML's double quotes spell ESC and BEL).
    let id = "20260101T000000000000-00000000-evil-beta-x";
    let text = "---\nfrom: \"ev\\x1b]0;pwned\\x07il\"\nto: beta\ntype: ipc\n\
                subject: \"hi \\x1b]0;x\\x07 there\"\npriority: normal\n\
                created: 2026-01-01 00:00:00\n---\n\nbody \x1b]52;c;YWJj\x07\n\tindented \u{9b}2J\n";
    let tmp = mb.inbox().join("evil.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, mb.inbox().join(format!("{id}.md"))).unwrap();
    let raw = |s: &str| s.contains(['\x1b', '\x07', '\u{9b}']);

    let out = ok(&mb, &["show", id], None).await;
    assert!(!raw(&out.stdout), "{:?}", out.stdout);
    assert!(
        out.stdout.contains("subject:  hi \\x1b]0;x\\x07 there\n"),
        "{:?}",
        out.stdout
    );
    assert!(
        out.stdout.contains("from:     ev\\x1b]0;pwned\\x07il\n"),
        "{:?}",
        out.stdout
    );
    // Newlines and tabs in the body stay readable.
    assert!(
        out.stdout
            .ends_with("\nbody \\x1b]52;c;YWJj\\x07\n\tindented \\u{9b}2J\n"),
        "{:?}",
        out.stdout
    );
    let out = ok(&mb, &["show", id, "--json"], None).await;
    assert!(!raw(&out.stdout), "{:?}", out.stdout);
    assert!(out.stdout.contains("\\u009b2J"), "{:?}", out.stdout);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v["subject"], "hi \x1b]0;x\x07 there",
        "JSON keeps the text exact"
    );

    let out = ok(&mb, &["inbox", "beta"], None).await;
    assert!(!raw(&out.stdout), "{:?}", out.stdout);
    assert!(
        out.stdout.contains("hi \\x1b]0;x\\x07 there"),
        "{:?}",
        out.stdout
    );
    let out = ok(&mb, &["inbox", "beta", "--json"], None).await;
    assert!(!raw(&out.stdout), "{:?}", out.stdout);

    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("indented")) {
        let line = timeout(EVENT_WAIT, t_out.next_line())
            .await
            .expect("tail prints the message")
            .unwrap()
            .expect("tail still runs");
        lines.push(line);
    }
    let all = lines.join("\n");
    assert!(!raw(&all), "{all:?}");
    assert!(all.contains("hi \\x1b]0;x\\x07 there"), "{all:?}");
    assert!(all.contains("    \tindented \\u{9b}2J"), "{all:?}");
    tail.kill().await.unwrap();

    // A session whose status line and folder carry escapes, alive as this test process.
    let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string();
    let table = json!({"gamma": {
        "timestamp": now, "status": "active", "pid": std::process::id(),
        "working_on": "\x1b[2J\x1b[Hall clear", "cwd": "/tmp/g\x1b]0;t\x07"}});
    std::fs::write(mb.root().join("heartbeats.json"), table.to_string()).unwrap();
    let out = ok(&mb, &["who"], None).await;
    assert!(!raw(&out.stdout), "{:?}", out.stdout);
    assert!(
        out.stdout.contains("\\x1b[2J\\x1b[Hall clear"),
        "{:?}",
        out.stdout
    );
    let out = ok(&mb, &["who", "--json"], None).await;
    assert!(!raw(&out.stdout), "{:?}", out.stdout);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v[0]["working_on"], "\x1b[2J\x1b[Hall clear");
}

#[tokio::test]
async fn inbox_human_lists_the_replies_to_the_person() {
    let mb = TempMailbox::new();
    let id = ok(
        &mb,
        &["send", "human", "need a decision", "--from", "ci-bot"],
        None,
    )
    .await
    .stdout
    .trim()
    .to_owned();
    ok(&mb, &["send", "beta", "not for the person"], None).await;
    let out = ok(&mb, &["inbox", "human", "--json"], None).await;
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["msg_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);
    let out = ok(&mb, &["inbox", "human", "--unread"], None).await;
    assert!(
        out.stdout.starts_with("1 unread message for human (you):"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("ci-bot → human  need a decision"),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_send_to_human_says_where_it_goes() {
    let mb = TempMailbox::new();
    let out = ok(&mb, &["send", "human", "note to self"], None).await;
    assert!(!out.stderr.contains("no live session"), "{out:?}");
    assert!(
        out.stderr
            .contains("saved for the user (`t9-ipc inbox human` lists it)")
            && out.stderr.contains("never forwarded to Telegram"),
        "{out:?}"
    );
    let out = ok(&mb, &["send", "human", "blocked", "--from", "ci-bot"], None).await;
    assert!(
        out.stderr.contains("Telegram is not set up here") && !out.stderr.contains("waits"),
        "{out:?}"
    );
    let mut cmd = command(mb.root(), &["send", "human", "blocked", "--from", "ci-bot"]);
    cmd.env("IPC_TG_TOKEN", "123:abc").env("IPC_TG_CHAT", "42");
    let out = finish(cmd, None).await;
    assert!(
        out.stderr.contains(
            "no t9-ipc session runs now, so it goes to Telegram when the next one starts"
        ),
        "{out:?}"
    );
}

#[tokio::test]
async fn an_explicit_dash_with_nothing_on_stdin_is_refused() {
    let mb = TempMailbox::new();
    for args in [
        vec!["send", "beta", "s", "-"],
        vec!["send", "beta", "s", "--body-file", "-"],
        vec!["broadcast", "s", "-"],
    ] {
        let out = t9(&mb, &args, Some("")).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains("stdin was empty"), "{args:?}: {out:?}");
    }
    assert!(mb.inbox_files().is_empty(), "{:?}", mb.inbox_files());
}

#[tokio::test]
async fn a_missing_mailbox_is_reported_never_made() {
    let mb = TempMailbox::new();
    let typo = mb.root().join("typo");
    let empty = mb.root().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for root in [&typo, &empty] {
        for args in [
            vec!["inbox"],
            vec!["inbox", "beta"],
            vec!["who"],
            vec!["show", "20260101"],
            vec!["tail"],
            vec!["archive", "--dry-run"],
            vec!["prune"],
        ] {
            let out = finish(command(root, &args), None).await;
            assert_eq!(out.code, 1, "{root:?} {args:?}: {out:?}");
            assert!(out.stderr.contains("no mailbox at"), "{args:?}: {out:?}");
        }
        let out = finish(command(root, &["doctor"]), None).await;
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stdout.contains("PROBLEM"), "{out:?}");
        let mut hook = command(root, &["hook", "UserPromptSubmit"]);
        hook.env("IPC_SESSION_ID", "beta");
        let out = finish(hook, Some(&hook_input("UserPromptSubmit", "/"))).await;
        assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");
    }
    assert!(!typo.exists(), "a read made the mailbox");
    let left: Vec<_> = std::fs::read_dir(&empty).unwrap().collect();
    assert!(left.is_empty(), "a read wrote into {empty:?}: {left:?}");

    // A relative IPC_DATA_DIR means the folder this command started in, said once.
    let mut cmd = command(Path::new("rel/mb"), &["where"]);
    cmd.current_dir(mb.root());
    let out = finish(cmd, None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim(),
        mb.root().join("rel/mb").display().to_string()
    );
    assert!(out.stderr.contains("is relative"), "{out:?}");
}

#[tokio::test]
async fn setup_keeps_the_servers_log_out_of_its_output() {
    let mb = TempMailbox::new();
    let out = ok(&mb, &["setup"], None).await;
    assert!(
        out.stdout.contains("self-check: `t9-ipc serve` answered"),
        "{out:?}"
    );
    for text in [&out.stdout, &out.stderr] {
        assert!(
            !text.contains(" INFO ") && !text.contains("push=\""),
            "{out:?}"
        );
    }
}

/// A command started with stdout and stderr closed finds `/dev/null` there, opened by the
/// process's entry, so that no file it opens later takes their place and receives its
/// output (or breaks it: `tail` wrote its lines into its own inotify descriptor and died).
#[tokio::test]
async fn a_command_started_with_its_output_closed_writes_to_dev_null() {
    let mb = TempMailbox::new();
    ok(&mb, &["send", "beta", "hello"], None).await;
    let mut sh = Command::new("sh");
    sh.args(["-c", "exec \"$0\" tail >&- 2>&-", BIN.path()])
        .env("IPC_DATA_DIR", mb.root())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    without_telegram(&mut sh);
    let child = sh.spawn().expect("spawn sh");
    let pid = child.id().expect("pid");
    let fd = |n: u32| std::fs::read_link(format!("/proc/{pid}/fd/{n}")).ok();
    // Once it watches the inbox (its inotify descriptor is open), above the first three.
    let watching = async {
        while !(3..32).any(|n| fd(n).is_some_and(|p| p.to_string_lossy().contains("inotify"))) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    timeout(EVENT_WAIT, watching)
        .await
        .expect("tail watches the inbox");
    assert_eq!(fd(1), Some("/dev/null".into()));
    assert_eq!(fd(2), Some("/dev/null".into()));
}

/// `t9-ipc serve` alone is read without clap (start-up); `serve` with anything after it is
/// still clap's: its help, and a refused extra word (usage, exit 2), never a server started.
#[tokio::test]
async fn serve_with_more_words_is_read_by_the_parser() {
    let mb = TempMailbox::new();
    let help = ok(&mb, &["serve", "--help"], None).await.stdout;
    assert!(
        help.contains("Run the MCP server on stdin/stdout"),
        "{help}"
    );
    let extra = t9(&mb, &["serve", "now"], None).await;
    assert_eq!(extra.code, 2, "{extra:?}");
    assert!(
        extra.stderr.contains("unexpected argument 'now'"),
        "{extra:?}"
    );
    assert!(extra.stdout.is_empty(), "{extra:?}");
}

#[tokio::test]
async fn archive_help_says_what_archive_moves() {
    let mb = TempMailbox::new();
    let help = ok(&mb, &["archive", "--help"], None).await.stdout;
    for words in [
        "expired",
        "replaced by a later message",
        "direct messages their recipient has read",
        "broadcasts read by every name",
        "nothing is deleted",
    ] {
        assert!(help.contains(words), "{words:?} missing: {help}");
    }
    assert!(!help.contains("that are broadcasts, or"), "{help}");
}

#[tokio::test]
async fn install_dry_run_without_claude_prints_what_the_real_run_prints() {
    let mb = TempMailbox::new();
    let dry = finish(with_claude(&mb, false, &["install", "--dry-run"]), None).await;
    let real = finish(with_claude(&mb, false, &["install"]), None).await;
    assert_eq!((dry.code, real.code), (0, 0), "{dry:?} {real:?}");
    assert!(!dry.stdout.contains("would run"), "{dry:?}");
    assert!(dry.stdout.contains("`claude` is not on PATH"), "{dry:?}");
    assert_eq!(dry.stdout, real.stdout);
}

/// Output cut short by its reader (`t9-ipc … | head`) ends the command quietly, as any Unix
/// tool ends: no panic, no backtrace on stderr.
#[tokio::test]
async fn a_closed_output_pipe_ends_a_command_quietly() {
    let mb = TempMailbox::new();
    ok(&mb, &["send", "--from", "alpha", "beta", "hello"], None).await;
    let mut child = command(mb.root(), &["inbox"])
        .spawn()
        .expect("spawn t9-ipc");
    // The reading end is closed before the command can write: its first write fails.
    drop(child.stdout.take());
    drop(child.stdin.take());
    let out = timeout(EVENT_WAIT, child.wait_with_output())
        .await
        .expect("the command ends in time")
        .expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}
