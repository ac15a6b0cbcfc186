//! Session names: stable defaults, uniqueness among live sessions, renames.

use serde_json::json;

use crate::util::TempMailbox;

#[tokio::test]
async fn the_default_name_is_the_folder_stable_across_restarts_and_unique() {
    let mb = TempMailbox::new();
    let project = mb.root().join("My Parser");
    std::fs::create_dir_all(&project).unwrap();
    let first = mb.spawn_with(None, &project).await;
    let second = mb.spawn_with(None, &project).await;
    let who = first.ok("t9_ipc_who", json!({})).await;
    assert!(who.contains("- My-Parser (you)"), "{who}");
    assert!(who.contains("- My-Parser-2 · pid"), "{who}");
    second.quit().await;
    first.quit().await;

    // Mail sent while it was away reaches the restarted session under the same name.
    let other = mb.spawn("other").await;
    other.send("My-Parser", "while you were out", "b").await;
    let mut again = mb.spawn_with(None, &project).await;
    let who = again.ok("t9_ipc_who", json!({})).await;
    assert!(who.contains("- My-Parser (you)"), "{who}");
    assert_eq!(
        again.next_event().await.meta("subject"),
        "while you were out"
    );
}

#[tokio::test]
async fn a_name_held_by_a_live_session_is_refused() {
    let mb = TempMailbox::new();
    let alpha = mb.spawn("alpha").await;
    let beta = mb.spawn("beta").await;
    let r = beta.call("t9_ipc_set_name", json!({"name": "alpha"})).await;
    assert!(r.is_error, "{}", r.text);
    assert!(
        r.text.contains("held by another live session"),
        "{}",
        r.text
    );
    assert!(r.text.contains(&alpha.pid.to_string()), "{}", r.text);

    for bad in ["ab", "has space", "all", "x/y"] {
        let r = beta.call("t9_ipc_set_name", json!({"name": bad})).await;
        assert!(r.is_error, "{bad} accepted: {}", r.text);
    }
    let hb = mb.heartbeats();
    assert_eq!(hb["alpha"]["pid"], alpha.pid);
    assert_eq!(hb["beta"]["pid"], beta.pid);

    // IPC_SESSION_ID naming a live session's name gets a free variant instead.
    let dup = mb.spawn("alpha").await;
    let who = dup.ok("t9_ipc_who", json!({})).await;
    assert!(who.contains("- alpha-2 (you)"), "{who}");
}
