//! The MCP handshake as Claude Code performs it, checked on the raw bytes.

use serde_json::{Value, json};

use crate::util::{Raw, TempMailbox, initialize_request};

/// Claude Code 2.1.330's exact probe (shared/spec/channels.md).
fn discover_probe() -> Value {
    json!({"jsonrpc":"2.0","id":"server-discover-probe-1","method":"server/discover","params":{"_meta":{
        "io.modelcontextprotocol/protocolVersion":"2026-07-28",
        "io.modelcontextprotocol/clientInfo":{"name":"claude-code","version":"2.1.330"},
        "io.modelcontextprotocol/clientCapabilities":{"roots":{"listChanged":true}}}}})
}

#[tokio::test]
async fn discover_is_refused_then_initialize_declares_the_channel() {
    let mb = TempMailbox::new();
    let mut raw = Raw::spawn(mb.root(), "alpha");

    raw.send(discover_probe()).await;
    let refused = raw.response(json!("server-discover-probe-1")).await;
    assert_eq!(refused["error"]["code"], -32601, "{refused}");
    assert!(refused.get("result").is_none());

    raw.send(initialize_request(1)).await;
    let init = raw.response(json!(1)).await;
    let result = &init["result"];
    assert_eq!(result["protocolVersion"], "2025-11-25", "{init}");
    assert_eq!(
        result["capabilities"]["experimental"]["claude/channel"],
        json!({})
    );
    assert!(
        result["capabilities"]["experimental"]
            .get("claude/channel/permission")
            .is_none()
    );
    assert!(result["capabilities"]["tools"].is_object());
    assert_eq!(result["serverInfo"]["name"], "t9-ipc");
    assert_eq!(result["serverInfo"]["version"], env!("CARGO_PKG_VERSION"));
    let instructions = result["instructions"].as_str().expect("instructions");
    assert!(
        instructions.chars().count() < 2048,
        "{} chars",
        instructions.chars().count()
    );
    for needed in [
        "<channel source=\"t9-ipc\"",
        "msg_id",
        "reply_to",
        "t9_ipc_send",
        "t9_ipc_unread",
        "\"alpha\"",
    ] {
        assert!(
            instructions.contains(needed),
            "instructions lack {needed:?}"
        );
    }

    raw.send(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
        .await;
    raw.send(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))
        .await;
    let tools = raw.response(json!(2)).await;
    let mut names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "t9_ipc_board",
            "t9_ipc_broadcast",
            "t9_ipc_claim",
            "t9_ipc_search",
            "t9_ipc_send",
            "t9_ipc_set_name",
            "t9_ipc_unread",
            "t9_ipc_wait",
            "t9_ipc_who"
        ]
    );
}

#[tokio::test]
async fn stdout_holds_only_json_rpc_and_end_of_stdin_ends_the_session() {
    let mb = TempMailbox::new();
    // Junk in the inbox makes the server warn (on stderr) while we watch stdout.
    std::fs::create_dir_all(mb.inbox()).unwrap();
    std::fs::write(mb.inbox().join("junk.md"), "no front matter\n").unwrap();
    let mut raw = Raw::spawn(mb.root(), "alpha");
    raw.send(initialize_request(1)).await;
    raw.response(json!(1)).await;
    raw.send(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
        .await;
    for (id, (tool, args)) in [
        ("t9_ipc_who", json!({})),
        (
            "t9_ipc_send",
            json!({"to": "nobody-here", "subject": "hi", "body": "b"}),
        ),
        ("t9_ipc_send", json!({"to": "x y", "subject": "bad name"})),
        ("t9_ipc_unread", json!({})),
        (
            "t9_ipc_set_name",
            json!({"name": "alpha-2", "working_on": "tests"}),
        ),
        ("no_such_tool", json!({})),
    ]
    .into_iter()
    .enumerate()
    {
        let id = id as u64 + 10;
        raw.send(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}}))
            .await;
        raw.response(json!(id)).await;
    }
    assert!(mb.heartbeats().contains_key("alpha-2"));

    let pid = raw.child.id().unwrap();
    let (status, lines) = raw.finish().await;
    assert!(status.success(), "exit status {status}");
    assert!(!lines.is_empty());
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(v["jsonrpc"], "2.0", "{line}");
    }
    let hb = mb.heartbeats();
    assert!(
        !hb.values().any(|e| e["pid"] == pid),
        "the ended session left its heartbeat: {hb:?}"
    );
    assert!(
        mb.inbox().join("junk.md").exists(),
        "a reader deleted a junk file"
    );
}

#[tokio::test]
async fn no_arguments_prints_help_and_never_reads_stdin() {
    let mut child = tokio::process::Command::new(crate::util::BIN)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run");
    // Held open for the whole wait: a binary that read stdin would hang here.
    let _stdin = child.stdin.take();
    let out = tokio::time::timeout(crate::util::EVENT_WAIT, child.wait_with_output())
        .await
        .expect("t9-ipc with no arguments exits without waiting on stdin")
        .expect("wait");
    let help = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(help.contains("Usage"), "{help}");
    assert!(help.contains("serve"), "{help}");
}

#[tokio::test]
async fn sigterm_ends_the_session_and_takes_its_heartbeat() {
    let mb = TempMailbox::new();
    let mut raw = Raw::spawn(mb.root(), "alpha");
    raw.send(initialize_request(1)).await;
    raw.response(json!(1)).await;
    assert!(mb.heartbeats().contains_key("alpha"));
    let pid = raw.child.id().expect("running");
    // SAFETY: sends SIGTERM to the child this test spawned.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(crate::util::EVENT_WAIT, raw.child.wait())
        .await
        .expect("exit after SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status}");
    assert!(
        !mb.heartbeats().contains_key("alpha"),
        "{:?}",
        mb.heartbeats()
    );
}

#[tokio::test]
async fn a_bad_file_is_warned_about_once() {
    let mb = TempMailbox::new();
    std::fs::create_dir_all(mb.inbox()).unwrap();
    std::fs::write(mb.inbox().join("broken-note.md"), "no front matter\n").unwrap();
    let log = mb.root().join("stderr.log");
    let mut raw = Raw::spawn_logged(mb.root(), "alpha", Some(&log));
    raw.send(initialize_request(1)).await;
    raw.response(json!(1)).await;
    for id in 2..6 {
        // Each unread call rescans the inbox.
        raw.send(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"t9_ipc_unread","arguments":{}}}))
            .await;
        raw.response(json!(id)).await;
    }
    raw.finish().await;
    let log = std::fs::read_to_string(&log).unwrap();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("broken-note.md"))
        .count();
    assert_eq!(warnings, 1, "{log}");
    assert!(mb.inbox().join("broken-note.md").exists());
}

#[test]
fn where_prints_the_mailbox_and_setup_checks_the_server() {
    let mb = TempMailbox::new();
    let out = std::process::Command::new(crate::util::BIN)
        .arg("where")
        .env("IPC_DATA_DIR", mb.root())
        .output()
        .expect("run where");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        mb.root().display().to_string()
    );

    let out = std::process::Command::new(crate::util::BIN)
        .arg("setup")
        .env("IPC_DATA_DIR", mb.root())
        .output()
        .expect("run setup");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("declares claude/channel"), "{text}");
    assert!(text.contains("t9_ipc_who"), "{text}");
    assert!(
        text.contains("claude mcp add --scope user t9-ipc --"),
        "{text}"
    );
    assert!(
        text.contains("--dangerously-load-development-channels server:t9-ipc"),
        "{text}"
    );
    // The self-check ran on a scratch mailbox: the real one has no session left in it.
    assert!(mb.heartbeats().is_empty(), "{:?}", mb.heartbeats());
}
