//! Working together: file claims between live sessions, the git pre-commit hook, the shared
//! board, search with receipts, and the size of what the tools cost the model.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::timeout;

use crate::util::{BIN, TempMailbox, process_exists};

/// A folder inside the mailbox's temp dir, resolved as the servers see their working folder.
fn folder(mb: &TempMailbox, name: &str) -> PathBuf {
    let dir = mb.root().join(name);
    std::fs::create_dir_all(&dir).expect("folder");
    dir.canonicalize().expect("canonical folder")
}

/// Runs `t9-ipc <args>` on this mailbox in `cwd`, with `env` added.
fn cli(mb: &TempMailbox, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env("IPC_DATA_DIR", mb.root())
        .env_remove("IPC_SESSION_ID")
        .envs(env.iter().copied());
    cmd.output().expect("run t9-ipc")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits until the process is gone (a zombie counts as gone).
async fn gone(pid: u32) {
    timeout(Duration::from_secs(10), async {
        while process_exists(pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the server exits after the signal");
}

/// The claim files in `<data>/claims/`.
fn claim_files(mb: &TempMailbox) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(mb.root().join("claims"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".md"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A claims `src/parser/**`; B's claim of a file inside is refused naming A and its note;
/// once A's session ends by `signal`, B's claim is granted at once.
async fn claim_frees_when_holder_ends(signal: i32) {
    let mb = TempMailbox::new();
    let repo = folder(&mb, "repo");
    let a = mb.spawn_with(Some("alpha"), &repo).await;
    let b = mb.spawn_with(Some("beta"), &repo).await;
    let granted = a
        .ok(
            "t9_ipc_claim",
            json!({"action": "claim", "paths": ["src/parser/**"], "note": "rewriting the parser"}),
        )
        .await;
    let abs = format!("{}/src/parser/**", repo.display());
    assert!(granted.contains(&abs), "{granted}");
    let files = claim_files(&mb);
    assert_eq!(files.len(), 1, "one file per claim: {files:?}");
    let on_disk = std::fs::read_to_string(mb.root().join("claims").join(&files[0])).unwrap();
    assert!(
        on_disk.contains(&abs) && on_disk.contains("session: alpha"),
        "{on_disk}"
    );

    for shared in [false, true] {
        let refused = b
            .call(
                "t9_ipc_claim",
                json!({"action": "claim", "paths": ["src/parser/lex.rs"], "shared": shared}),
            )
            .await;
        assert!(refused.is_error, "{}", refused.text);
        assert!(
            refused.text.contains("\"alpha\"") && refused.text.contains("rewriting the parser"),
            "{}",
            refused.text
        );
    }
    // Outside A's claim, B is free.
    b.ok(
        "t9_ipc_claim",
        json!({"action": "claim", "paths": ["docs/*.md"], "ttl_s": 60}),
    )
    .await;
    let listed = cli(&mb, &repo, &["claims", "--json"], &[]);
    let rows: Vec<Value> = serde_json::from_slice(&listed.stdout).expect("claims --json");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r["session"] == "alpha" && r["paths"][0] == abs.as_str())
    );

    // SAFETY: a plain kill(2) of the server this test started.
    unsafe { libc::kill(a.pid as i32, signal) };
    gone(a.pid).await;
    let granted = b
        .ok(
            "t9_ipc_claim",
            json!({"action": "claim", "paths": ["src/parser/lex.rs"]}),
        )
        .await;
    assert!(granted.contains("Claimed exclusive"), "{granted}");
    // A's claim file went with its session.
    let left = claim_files(&mb);
    assert_eq!(left.len(), 2, "{left:?}");
    let listed = b.ok("t9_ipc_claim", json!({"action": "list"})).await;
    assert!(!listed.contains("\"alpha\""), "{listed}");
    let released = b.ok("t9_ipc_claim", json!({"action": "release"})).await;
    assert!(released.contains("Released 2 claims"), "{released}");
    assert!(claim_files(&mb).is_empty());
    drop(a);
    b.quit().await;
}

#[tokio::test]
async fn a_claim_is_refused_until_its_holder_ends_by_sigterm() {
    claim_frees_when_holder_ends(libc::SIGTERM).await;
}

#[tokio::test]
async fn a_claim_is_refused_until_its_holder_ends_by_sigkill() {
    claim_frees_when_holder_ends(libc::SIGKILL).await;
}

#[tokio::test]
async fn claims_refuse_bad_input() {
    let mb = TempMailbox::new();
    let a = mb.spawn("alpha").await;
    for args in [
        json!({"action": "claim", "paths": []}),
        json!({"action": "claim", "paths": ["a\nb"]}),
        json!({"action": "claim", "paths": ["x"], "ttl_s": 28801}),
        json!({"action": "claim", "paths": ["x"], "ttl_s": 0}),
        json!({"action": "grab", "paths": ["x"]}),
    ] {
        let r = a.call("t9_ipc_claim", args.clone()).await;
        assert!(
            r.is_error && r.text.starts_with("Refused"),
            "{args}: {}",
            r.text
        );
    }
    assert!(claim_files(&mb).is_empty());
    a.quit().await;
}

fn git(repo: &Path, args: &[&str], env: &[(&str, &str)], mb: &TempMailbox) -> Output {
    std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
        .args(args)
        .current_dir(repo)
        .env("IPC_DATA_DIR", mb.root())
        .env_remove("IPC_SESSION_ID")
        .envs(env.iter().copied())
        .output()
        .expect("run git")
}

#[tokio::test]
async fn the_pre_commit_hook_refuses_a_claimed_file_until_it_is_released() {
    let mb = TempMailbox::new();
    let repo = folder(&mb, "repo");
    assert!(git(&repo, &["init", "-q"], &[], &mb).status.success());
    let hook = repo.join(".git/hooks/pre-commit");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(&hook, format!("#!/bin/sh\nexec '{BIN}' hook pre-commit\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(repo.join("src/parser")).unwrap();
    std::fs::write(repo.join("src/parser/lex.rs"), "// lexer\n").unwrap();
    std::fs::write(repo.join("README.md"), "hi\n").unwrap();

    let a = mb.spawn_with(Some("alpha"), &repo).await;
    let b = mb.spawn_with(Some("beta"), &repo).await;
    a.ok(
        "t9_ipc_claim",
        json!({"action": "claim", "paths": ["src/parser/**"], "note": "lexer rewrite"}),
    )
    .await;
    let as_beta = [("IPC_SESSION_ID", "beta")];
    // A file nobody claimed commits.
    assert!(git(&repo, &["add", "README.md"], &[], &mb).status.success());
    let out = git(&repo, &["commit", "-q", "-m", "readme"], &as_beta, &mb);
    assert!(out.status.success(), "{}", text(&out.stderr));

    assert!(
        git(&repo, &["add", "src/parser/lex.rs"], &[], &mb)
            .status
            .success()
    );
    let out = git(&repo, &["commit", "-q", "-m", "lexer"], &as_beta, &mb);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "the commit went through: {err}");
    assert!(
        err.contains("src/parser/lex.rs") && err.contains("\"alpha\""),
        "{err}"
    );
    assert!(err.contains("lexer rewrite"), "{err}");
    // --warn only warns.
    let out = cli(&mb, &repo, &["hook", "pre-commit", "--warn"], &as_beta);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("\"alpha\""));
    // The holder itself may commit its own files.
    let out = cli(
        &mb,
        &repo,
        &["hook", "pre-commit"],
        &[("IPC_SESSION_ID", "alpha")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let released = a.ok("t9_ipc_claim", json!({"action": "release"})).await;
    assert!(released.contains("Released 1 claim"), "{released}");
    let out = git(&repo, &["commit", "-q", "-m", "lexer"], &as_beta, &mb);
    assert!(out.status.success(), "{}", text(&out.stderr));
    a.quit().await;
    b.quit().await;
}

#[tokio::test]
async fn the_board_takes_one_of_two_writers_and_keeps_values_across_restarts() {
    let mb = TempMailbox::new();
    let a = mb.spawn("alpha").await;
    let b = mb.spawn("beta").await;
    let first = a
        .ok(
            "t9_ipc_board",
            json!({"action": "set", "key": "build", "value": "red", "expect": 0}),
        )
        .await;
    assert!(first.contains("version 1"), "{first}");
    let set = |value: &str| json!({"action": "set", "key": "build", "value": value, "expect": 1});
    let (ra, rb) = tokio::join!(
        a.call("t9_ipc_board", set("green")),
        b.call("t9_ipc_board", set("blue"))
    );
    assert!(
        ra.is_error != rb.is_error,
        "exactly one wins: {ra:?} {rb:?}"
    );
    let (winner, loser) = if ra.is_error {
        ("blue", &ra)
    } else {
        ("green", &rb)
    };
    assert!(loser.text.contains("version 2"), "{}", loser.text);
    for key in ["../escape", "a/b", "line\nbreak", ".hidden", "", "x..y"] {
        let r = a
            .call(
                "t9_ipc_board",
                json!({"action": "set", "key": key, "value": "v"}),
            )
            .await;
        assert!(
            r.is_error && r.text.contains("refused"),
            "{key:?}: {}",
            r.text
        );
    }
    let too_big = "x".repeat(4097);
    let r = a
        .call(
            "t9_ipc_board",
            json!({"action": "set", "key": "big", "value": too_big}),
        )
        .await;
    assert!(r.is_error, "{}", r.text);
    a.quit().await;
    b.quit().await;

    let mut board: Vec<String> = std::fs::read_dir(mb.root().join("board"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    board.sort();
    assert_eq!(board, ["build.md"]);
    assert!(!mb.root().join("escape.md").exists());
    let on_disk = std::fs::read_to_string(mb.root().join("board/build.md")).unwrap();
    assert!(
        on_disk.starts_with("---\n") && on_disk.ends_with(winner),
        "{on_disk}"
    );

    let c = mb.spawn("gamma").await;
    let got = c
        .ok("t9_ipc_board", json!({"action": "get", "key": "build"}))
        .await;
    assert!(got.contains("version 2") && got.ends_with(winner), "{got}");
    let listed = c.ok("t9_ipc_board", json!({"action": "list"})).await;
    assert!(listed.contains(&format!(": {winner}")), "{listed}");
    c.quit().await;

    // The command line reads what the tools wrote, and its writes meet the same check.
    let out = cli(&mb, mb.root(), &["board", "build"], &[]);
    assert_eq!(text(&out.stdout), winner);
    let out = cli(
        &mb,
        mb.root(),
        &["board", "build", "--set", "red", "--expect", "1"],
        &[],
    );
    assert!(!out.status.success() && text(&out.stderr).contains("version 2"));
    let out = cli(&mb, mb.root(), &["board", "--json"], &[]);
    let rows: Value = serde_json::from_slice(&out.stdout).expect("board --json");
    assert_eq!(rows[0]["version"], 2, "{rows}");
    assert!(
        !cli(&mb, mb.root(), &["board", "../x", "--set", "v"], &[])
            .status
            .success()
    );
}

/// Dates the mailbox's folders an hour back, as after a quiet hour: a search then keeps its
/// listing of them for the next search, until they change.
fn quiet_for_an_hour(mb: &TempMailbox) {
    let then = std::time::SystemTime::now() - Duration::from_secs(3600);
    for dir in ["inbox", "archive"] {
        let folder = std::fs::File::open(mb.root().join(dir)).expect("a folder");
        folder.set_modified(then).expect("date a folder");
    }
}

#[tokio::test]
async fn search_finds_a_message_sent_a_moment_ago() {
    let mb = TempMailbox::new();
    let a = mb.spawn("alpha").await;
    let b = mb.spawn("beta").await;
    let first = a.send("beta", "quokka one", "the first").await;
    quiet_for_an_hour(&mb);
    let found = b.ok("t9_ipc_search", json!({"words": "quokka"})).await;
    assert!(found.contains(&first), "{found}");
    let second = a.send("beta", "quokka two", "the second").await;
    let found = b.ok("t9_ipc_search", json!({"words": "quokka"})).await;
    assert!(found.contains(&first) && found.contains(&second), "{found}");
    a.quit().await;
    b.quit().await;
}

#[tokio::test]
async fn search_finds_a_message_archived_between_two_searches() {
    let mb = TempMailbox::new();
    let a = mb.spawn("alpha").await;
    let b = mb.spawn("beta").await;
    let id = a.send("beta", "wombat", "read, then archived").await;
    b.ok("t9_ipc_unread", json!({})).await;
    quiet_for_an_hour(&mb);
    let found = a.ok("t9_ipc_search", json!({"words": "wombat"})).await;
    assert!(
        found.contains(&id) && !found.contains("(archived)"),
        "{found}"
    );
    let out = cli(&mb, mb.root(), &["archive", "--older-than", "0"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(mb.root().join(format!("archive/{id}.md")).is_file());
    let found = a.ok("t9_ipc_search", json!({"words": "wombat"})).await;
    assert!(found.contains(&format!("{id} (archived)")), "{found}");
    assert_eq!(found.matches(id.as_str()).count(), 1, "{found}");
    a.quit().await;
    b.quit().await;
}

#[tokio::test]
async fn search_finds_archived_mail_and_receipts_say_read_then_answered() {
    let mb = TempMailbox::new();
    let a = mb.spawn("alpha").await;
    let b = mb.spawn("beta").await;
    let id = a
        .send("beta", "schema change", "the column zanzibar moves to v3")
        .await;
    let found = a.ok("t9_ipc_search", json!({"words": "ZANZIBAR"})).await;
    assert!(found.contains(&id), "{found}");
    let receipt = found
        .lines()
        .find(|l| l.starts_with("receipt: beta:"))
        .unwrap_or_else(|| panic!("no receipt: {found}"));
    assert!(!receipt.contains(": read"), "{receipt}");

    let before = chrono::Local::now() - chrono::TimeDelta::seconds(1);
    b.ok("t9_ipc_unread", json!({})).await;
    let after = chrono::Local::now() + chrono::TimeDelta::seconds(1);
    let found = a.ok("t9_ipc_search", json!({"with": "beta"})).await;
    // The receipt says when it was read: `read <YYYY-MM-DD HH:MM:SS>`, between the calls.
    let when = found
        .lines()
        .find_map(|l| l.strip_prefix("receipt: beta: read "))
        .unwrap_or_else(|| panic!("no read time: {found}"));
    let when = chrono::NaiveDateTime::parse_from_str(when, "%Y-%m-%d %H:%M:%S")
        .unwrap_or_else(|e| panic!("{when:?}: {e}"));
    assert!(
        before.naive_local() <= when && when <= after.naive_local(),
        "read at {when}, between {before} and {after}"
    );

    let out = cli(&mb, mb.root(), &["archive", "--older-than", "0"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(mb.root().join(format!("archive/{id}.md")).is_file());
    let found = a.ok("t9_ipc_search", json!({"words": "zanzibar v3"})).await;
    assert!(found.contains(&format!("{id} (archived)")), "{found}");
    assert!(found.contains("receipt: beta: read"), "{found}");
    // The recipient finds it too, by the thread.
    let theirs = b.ok("t9_ipc_search", json!({"thread": id})).await;
    assert!(
        theirs.contains(&id) && !theirs.contains("receipt:"),
        "{theirs}"
    );
    assert!(
        b.ok("t9_ipc_search", json!({"words": "nowhere-to-be-found"}))
            .await
            .contains("No message matches")
    );

    let reply = b
        .ok(
            "t9_ipc_send",
            json!({"to": "alpha", "subject": "ok", "body": "noted", "reply_to": id}),
        )
        .await;
    let reply_id = crate::util::msg_id_in(&reply);
    let out = cli(
        &mb,
        mb.root(),
        &["search", "--as", "alpha", "--thread", &id, "--json"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("search --json");
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{v}");
    assert_eq!(msgs[0]["msg_id"], reply_id.as_str(), "newest first");
    let sent = &msgs[1];
    assert_eq!(sent["msg_id"], id.as_str());
    assert_eq!(sent["archived"], true);
    assert_eq!(sent["receipts"][0]["read"], true);
    assert_eq!(
        sent["receipts"][0]["read_at"],
        when.format("%Y-%m-%d %H:%M:%S").to_string().as_str(),
        "{v}"
    );
    assert_eq!(sent["receipts"][0]["answered"]["msg_id"], reply_id.as_str());
    a.quit().await;
    b.quit().await;
}
