//! Sessions finding each other, sending, broadcasting, and receiving channel pushes.

use serde_json::json;
use t9_ipc::message;

use crate::util::TempMailbox;

#[tokio::test]
async fn two_servers_see_each_other() {
    let mb = TempMailbox::new();
    let alpha = mb.spawn("alpha").await;
    let beta = mb.spawn("beta").await;
    let who = alpha.ok("t9_ipc_who", json!({})).await;
    assert!(who.contains("- alpha (you) · pid"), "{who}");
    assert!(who.contains(&format!("- beta · pid {}", beta.pid)), "{who}");
    assert!(
        who.contains("work-beta"),
        "who shows the working folder: {who}"
    );
    let who = beta.ok("t9_ipc_who", json!({})).await;
    assert!(who.contains("- beta (you)"), "{who}");
    assert!(who.contains("- alpha · pid"), "{who}");

    beta.ok(
        "t9_ipc_set_name",
        json!({"name": "reviewer", "working_on": "the parser review"}),
    )
    .await;
    let who = alpha.ok("t9_ipc_who", json!({})).await;
    assert!(who.contains("- reviewer · pid"), "{who}");
    assert!(who.contains("working on: the parser review"), "{who}");
    assert!(!who.contains("- beta"), "{who}");

    beta.quit().await;
    let who = alpha.ok("t9_ipc_who", json!({})).await;
    assert!(
        !who.contains("reviewer"),
        "an ended session is still listed: {who}"
    );
    alpha.quit().await;
}

#[tokio::test]
async fn a_send_is_pushed_to_the_recipient_with_exact_meta_and_not_to_the_sender() {
    let mb = TempMailbox::new();
    let mut alpha = mb.spawn("alpha").await;
    let mut beta = mb.spawn("beta").await;
    let sent = alpha
        .ok(
            "t9_ipc_send",
            json!({"to": "beta", "subject": "parser done", "body": "pushing to **main**", "priority": "high"}),
        )
        .await;
    assert!(sent.contains("live"), "{sent}");
    let id = crate::util::msg_id_in(&sent);

    let event = beta.next_event().await;
    assert_eq!(event.content, "pushing to **main**");
    let keys: Vec<&str> = event.meta.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "created", "from", "msg_id", "priority", "subject", "to", "type"
        ]
    );
    assert_eq!(event.meta("from"), "alpha");
    assert_eq!(event.meta("to"), "beta");
    assert_eq!(event.meta("subject"), "parser done");
    assert_eq!(event.meta("priority"), "high");
    assert_eq!(event.meta("type"), "ipc");
    assert_eq!(event.meta("msg_id"), id);
    assert!(mb.inbox().join(format!("{id}.md")).is_file());

    // A reply names the message it answers; it reaches alpha with reply_to.
    beta.ok(
        "t9_ipc_send",
        json!({"to": "alpha", "subject": "re: parser done", "body": "thanks", "reply_to": id}),
    )
    .await;
    let reply = alpha.next_event().await;
    assert_eq!(reply.meta("reply_to"), id);
    assert_eq!(reply.meta("from"), "beta");

    // The sender did not get its own message, and nothing was pushed twice.
    alpha.nothing_before_marker(&beta, "alpha").await;
    beta.nothing_before_marker(&alpha, "beta").await;
}

#[tokio::test]
async fn a_broadcast_reaches_everyone_but_the_sender() {
    let mb = TempMailbox::new();
    let mut alpha = mb.spawn("alpha").await;
    let mut beta = mb.spawn("beta").await;
    let mut gamma = mb.spawn("gamma").await;
    let sent = alpha
        .ok(
            "t9_ipc_broadcast",
            json!({"subject": "API changed", "body": "see docs/api.md"}),
        )
        .await;
    assert!(sent.contains("2 live sessions"), "{sent}");
    for rx in [&mut beta, &mut gamma] {
        let e = rx.next_event().await;
        assert_eq!(e.meta("to"), "all");
        assert_eq!(e.meta("type"), "broadcast");
        assert_eq!(e.meta("from"), "alpha");
        assert_eq!(e.content, "see docs/api.md");
    }
    // `to: "all"` on t9_ipc_send is a broadcast too.
    beta.send("all", "me too", "").await;
    assert_eq!(gamma.next_event().await.meta("from"), "beta");
    assert_eq!(alpha.next_event().await.meta("from"), "beta");
    alpha.nothing_before_marker(&gamma, "alpha").await;
    beta.nothing_before_marker(&gamma, "beta").await;
}

#[tokio::test]
async fn a_hostile_subject_round_trips_on_disk_and_in_the_event() {
    let mb = TempMailbox::new();
    let alpha = mb.spawn("alpha").await;
    let mut beta = mb.spawn("beta").await;
    let subject = "fix: \"x\" #1\n---\nto: mallory";
    let id = alpha
        .send("beta", subject, "---\nfrom: mallory\n---\nbody")
        .await;
    let expected = "fix: \"x\" #1 --- to: mallory";

    let text = std::fs::read_to_string(mb.inbox().join(format!("{id}.md"))).unwrap();
    let (front, body) = message::parse(&text).unwrap();
    assert_eq!(front.subject, expected);
    assert_eq!(front.from, "alpha");
    assert_eq!(front.to, "beta");
    assert_eq!(body, "---\nfrom: mallory\n---\nbody");
    // No key beyond the six of the format: the subject added none, and a session's message
    // carries no seal (only a reserved sender's does).
    assert!(
        front.extra.is_empty(),
        "the subject added keys: {:?}",
        front.extra
    );
    // The front matter is strict YAML, not only readable by our tolerant reader.
    let yaml = text
        .strip_prefix("---\n")
        .unwrap()
        .split("\n---\n")
        .next()
        .unwrap();
    let strict: serde_yaml::Mapping = serde_yaml::from_str(yaml).expect("valid YAML");
    assert_eq!(
        strict.get("subject").and_then(|v| v.as_str()),
        Some(expected)
    );
    assert_eq!(strict.len(), 6, "{yaml}");

    let event = beta.next_event().await;
    // In the tag, quotes are written as entities so they cannot end the value.
    assert_eq!(event.meta("subject"), expected.replace('"', "&quot;"));
    assert_eq!(event.content, "---\nfrom: mallory\n---\nbody");
}

#[tokio::test]
async fn limits_refuse_instead_of_cutting() {
    let mb = TempMailbox::new();
    let alpha = mb.spawn("alpha").await;
    let _beta = mb.spawn("beta").await;
    let big = "x".repeat(64 * 1024 + 1);
    let r = alpha
        .call(
            "t9_ipc_send",
            json!({"to": "beta", "subject": "big", "body": big}),
        )
        .await;
    assert!(r.is_error, "{}", r.text);
    assert!(
        r.text.contains("65537 bytes") && r.text.contains("file"),
        "{}",
        r.text
    );

    let r = alpha
        .call(
            "t9_ipc_send",
            json!({"to": "beta", "subject": "s".repeat(201)}),
        )
        .await;
    assert!(
        r.is_error && r.text.contains("201 characters"),
        "{}",
        r.text
    );

    let r = alpha
        .call("t9_ipc_send", json!({"to": "be ta", "subject": "s"}))
        .await;
    assert!(r.is_error && r.text.contains("' '"), "{}", r.text);

    let r = alpha
        .call("t9_ipc_send", json!({"to": "alpha", "subject": "s"}))
        .await;
    assert!(r.is_error && r.text.contains("yourself"), "{}", r.text);

    let r = alpha
        .call(
            "t9_ipc_send",
            json!({"to": "beta", "subject": "s", "reply_to": "nope"}),
        )
        .await;
    assert!(r.is_error && r.text.contains("reply_to"), "{}", r.text);

    let r = alpha
        .call(
            "t9_ipc_send",
            json!({"to": "beta", "subject": "s", "priority": "urgent"}),
        )
        .await;
    assert!(r.is_error, "{}", r.text);

    assert!(
        mb.inbox_files().iter().all(|f| !f.ends_with(".md")),
        "a refused send left a file: {:?}",
        mb.inbox_files()
    );
    // Exactly at the limits is accepted.
    let ok = "x".repeat(64 * 1024);
    alpha
        .ok(
            "t9_ipc_send",
            json!({"to": "beta", "subject": "s".repeat(200), "body": ok}),
        )
        .await;
}

#[tokio::test]
async fn mail_to_an_offline_name_waits_and_arrives_when_it_starts() {
    let mb = TempMailbox::new();
    let alpha = mb.spawn("alpha").await;
    let sent = alpha
        .ok(
            "t9_ipc_send",
            json!({"to": "gamma", "subject": "when you start", "body": "hello"}),
        )
        .await;
    assert!(
        sent.contains("no live session is named \"gamma\""),
        "{sent}"
    );
    let id = crate::util::msg_id_in(&sent);
    // A broadcast from before gamma existed is history, not gamma's mail.
    alpha
        .ok("t9_ipc_broadcast", json!({"subject": "old news"}))
        .await;

    let mut gamma = mb.spawn("gamma").await;
    let event = gamma.next_event().await;
    assert_eq!(event.meta("msg_id"), id);

    let unread = gamma.ok("t9_ipc_unread", json!({})).await;
    assert!(unread.contains(&id), "{unread}");
    assert!(unread.contains("1 unread message"), "{unread}");
    // The test client is not Claude Code, so a push does not count as seen.
    assert!(unread.contains("also sent as a channel event"), "{unread}");
    assert!(!unread.contains("old news"), "{unread}");
    assert_eq!(
        gamma.ok("t9_ipc_unread", json!({})).await,
        "No unread messages."
    );
    // Nothing else was pushed, then or since: not the broadcast from before gamma existed.
    gamma.nothing_before_marker(&alpha, "gamma").await;
}

#[tokio::test]
async fn unread_pages_peeks_and_marks() {
    let mb = TempMailbox::new();
    let alpha = mb.spawn("alpha").await;
    let beta = mb.spawn("beta").await;
    let ids = [
        alpha.send("beta", "one", "1").await,
        alpha.send("beta", "two", "2").await,
        alpha.send("beta", "three", "3").await,
    ];
    let peek = beta
        .ok("t9_ipc_unread", json!({"mark_read": false, "limit": 2}))
        .await;
    // The third is named (left unread), not shown.
    assert_eq!(crate::util::bodies_in(&peek), ids[..2], "{peek}");
    assert!(peek.contains("1 more unread"), "{peek}");
    let page = beta.ok("t9_ipc_unread", json!({"limit": 2})).await;
    assert!(page.contains("now marked read"), "{page}");
    let rest = beta.ok("t9_ipc_unread", json!({})).await;
    assert_eq!(crate::util::bodies_in(&rest), ids[2..], "{rest}");
    assert_eq!(
        beta.ok("t9_ipc_unread", json!({})).await,
        "No unread messages."
    );
    let r = beta.call("t9_ipc_unread", json!({"limit": 0})).await;
    assert!(r.is_error);
}
