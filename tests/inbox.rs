//! Files in the inbox that are not ours to trust: junk, foreign writers, the original's format.

use std::os::unix::fs::symlink;

use serde_json::json;

use crate::util::TempMailbox;

const GOOD_FOR_BETA: &str = "---\nfrom: alpha\nto: beta\ntype: ipc\nsubject: sneaky\npriority: normal\ncreated: 2030-01-01 00:00:00\n---\n\nbody\n";

#[tokio::test]
async fn junk_files_neither_crash_nor_push_nor_get_deleted() {
    let mb = TempMailbox::new();
    let alpha = mb.spawn("alpha").await;
    let mut beta = mb.spawn("beta").await;
    let inbox = mb.inbox();
    let outside = mb.root().join("outside.md");
    std::fs::write(&outside, GOOD_FOR_BETA).unwrap();
    let junk: Vec<(&str, Vec<u8>)> = vec![
        (
            "20300101T000000000000-00000001-x-beta-no_front_matter.md",
            b"just text for beta\n".to_vec(),
        ),
        (
            "20300101T000000000000-00000002-x-beta-binary.md",
            vec![0xff, 0xfe, 0x00, 0x9f, 0x92, 0x96, 0x00],
        ),
        (
            "20300101T000000000000-00000003-x-beta-bad_yaml.md",
            b"---\n{{{ : [\n\t- ]\n---\n\nbody\n".to_vec(),
        ),
        (
            "20300101T000000000000-00000004-x-beta-no_from.md",
            b"---\nto: beta\nsubject: s\n---\n\nbody\n".to_vec(),
        ),
        (
            "20300101T000000000000-00000005-x-beta-unclosed.md",
            b"---\nfrom: alpha\nto: beta\n".to_vec(),
        ),
        (
            "20300101T000000000000-00000006-x-beta-s.tmp.0badc0de",
            GOOD_FOR_BETA.as_bytes().to_vec(),
        ),
        ("notes.txt", GOOD_FOR_BETA.as_bytes().to_vec()),
        (
            "huge.md",
            [GOOD_FOR_BETA.as_bytes(), &vec![b'x'; 1024 * 1024 + 1]].concat(),
        ),
    ];
    for (name, bytes) in &junk {
        std::fs::write(inbox.join(name), bytes).unwrap();
    }
    symlink(
        &outside,
        inbox.join("20300101T000000000000-00000007-x-beta-link.md"),
    )
    .unwrap();
    std::fs::create_dir(inbox.join("folder.md")).unwrap();

    let id = alpha.send("beta", "the real one", "real body").await;
    let event = beta.next_event().await;
    assert_eq!(
        event.meta("msg_id"),
        id,
        "a junk file was pushed: {event:?}"
    );

    let unread = beta.ok("t9_ipc_unread", json!({})).await;
    assert!(unread.contains("1 unread message"), "{unread}");
    assert!(!unread.contains("sneaky"), "{unread}");

    for (name, _) in &junk {
        assert!(inbox.join(name).exists(), "{name} was deleted");
    }
    assert!(
        inbox
            .join("20300101T000000000000-00000007-x-beta-link.md")
            .symlink_metadata()
            .is_ok()
    );
    assert!(inbox.join("folder.md").is_dir());
    // Both servers still answer, and no junk file was pushed, then or since.
    alpha.ok("t9_ipc_who", json!({})).await;
    beta.ok("t9_ipc_who", json!({})).await;
    beta.nothing_before_marker(&alpha, "beta").await;
}

#[tokio::test]
async fn files_of_the_original_python_writer_are_read() {
    let mb = TempMailbox::new();
    let mut beta = mb.spawn("beta").await;
    // Unquoted values that strict YAML rejects or misreads, as the original wrote them.
    let text = "---\nfrom: py-session\nto: beta\ntype: ipc\nsubject: fix: the parser #2\npriority: high\ncreated: 2099-01-01 10:00:00\n---\n\nfrom python\n";
    let id = "20990101T100000000000-1a2b3c4d-py-session-beta-fix__the_parser__2";
    let tmp = mb.inbox().join(format!("{id}.tmp.1a2b3c4d"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, mb.inbox().join(format!("{id}.md"))).unwrap();
    let event = beta.next_event().await;
    assert_eq!(event.meta("subject"), "fix: the parser #2");
    assert_eq!(event.meta("from"), "py-session");
    assert_eq!(event.meta("priority"), "high");
    assert_eq!(event.meta("msg_id"), id);
    assert_eq!(event.content, "from python");
}

#[tokio::test]
async fn a_corrupt_heartbeats_file_is_rewritten_and_stale_entries_go() {
    let mb = TempMailbox::new();
    std::fs::write(mb.root().join("heartbeats.json"), "{\"half\": {\"timest").unwrap();
    let alpha = mb.spawn("alpha").await;
    let hb = mb.heartbeats();
    assert!(hb.contains_key("alpha"), "{hb:?}");

    // An entry whose process is gone, and one of a live process that signed off.
    let mut hb = mb.heartbeats();
    hb.insert("ghost".into(), json!({"timestamp": "2099-01-01 00:00:00", "status": "active", "pid": 999_999_999u32, "working_on": ""}));
    hb.insert("leaving".into(), json!({"timestamp": "2099-01-01 00:00:00", "status": "signing-off", "pid": std::process::id(), "working_on": ""}));
    std::fs::write(
        mb.root().join("heartbeats.json"),
        serde_json::to_string(&hb).unwrap(),
    )
    .unwrap();
    let who = alpha.ok("t9_ipc_who", json!({})).await;
    assert!(!who.contains("ghost") && !who.contains("leaving"), "{who}");

    let _beta = mb.spawn("beta").await; // any write cleans
    let hb = mb.heartbeats();
    assert!(
        !hb.contains_key("ghost") && !hb.contains_key("leaving"),
        "{hb:?}"
    );
    assert!(
        hb.contains_key("alpha") && hb.contains_key("beta"),
        "{hb:?}"
    );
}
