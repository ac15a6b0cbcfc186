//! Read state across machines: a message read on the machine of its recipient shows as read
//! on the machine it was sent from, and only marks of mail that crossed, and that is on the
//! receiving disk, are carried. Two "machines" (mailboxes with their relays) on one
//! `nats-server`.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use serde_json::{Value, json};
use t9_ipc::federation::keys::MachineKey;
use t9_ipc::federation::wire::{self, Envelope};

use crate::federation::{Machine, Nats, message_file, publish};

/// Long enough for a loaded machine; a passing test never waits this long.
const WAIT: Duration = Duration::from_secs(30);

/// `name`'s state log on machine `m` (empty when it has none).
fn state_log(m: &Machine, name: &str) -> String {
    fs::read_to_string(m.mb.root().join("state").join(format!("{name}.log"))).unwrap_or_default()
}

/// Waits until `m`'s state log of `name` holds `line`; panics with the log after [`WAIT`].
async fn until_logged(m: &Machine, name: &str, line: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !state_log(m, name).lines().any(|l| l == line) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{line:?} never reached {}'s {name}.log:\n{}",
            m.name,
            state_log(m, name)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The receipt of `to` for message `id` in `t9-ipc search --as <from> --json` on `m`.
async fn receipt(m: &Machine, from: &str, id: &str) -> Option<Value> {
    let out: Value = serde_json::from_str(&m.cli(&["search", "--as", from, "--json"]).await)
        .expect("search --json prints JSON");
    let hit = out["messages"]
        .as_array()?
        .iter()
        .find(|h| h["msg_id"] == id)?;
    hit["receipts"].as_array()?.first().cloned()
}

/// Writes a message file as t9-ipc would, straight into `dir` (0600).
fn put(dir: &Path, id: &str, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(dir.join(format!("{id}.md")))
        .expect("write a message file");
    file.write_all(bytes).unwrap();
}

#[tokio::test]
async fn a_message_read_on_another_machine_shows_read_where_it_was_sent() {
    let nats = Nats::start().await;
    let a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    let beta = b.mb.spawn("beta").await;

    let id = a
        .cli(&[
            "send",
            "beta",
            "parser done",
            "--from",
            "alpha",
            "--body",
            "see main",
        ])
        .await;
    b.log.arrived(&id).await;
    let unread = beta.ok("t9_ipc_unread", json!({})).await;
    assert!(unread.contains(&id), "{unread}");

    // The sender's machine learns it: its search shows the receipt read by beta (asked
    // again until it does), and its state log of beta holds the mark.
    let deadline = tokio::time::Instant::now() + WAIT;
    let read = loop {
        let got = receipt(&a, "alpha", &id).await;
        if got.as_ref().is_some_and(|r| r["read"] == true) {
            break got.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no read receipt on laptop: {got:?}\nits beta.log: {}",
            state_log(&a, "beta")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(read["to"], "beta", "{read}");
    assert!(read["read_at"].is_string(), "the time it was read: {read}");
    let log = state_log(&a, "beta");
    assert!(log.lines().any(|l| l == format!("read {id}")), "{log}");
    assert!(
        log.starts_with("joined "),
        "a log started by a carried mark: {log}"
    );
    // So laptop's copy is finished mail: archiving would move it as read by beta.
    let finished = a.cli(&["archive", "--older-than", "0", "--dry-run"]).await;
    assert!(
        finished.contains(&format!("{id}  (read by beta)")),
        "{finished}"
    );
    // Carried once: the mark that came in is not sent back and appended again on B.
    let b_log = state_log(&b, "beta");
    assert_eq!(b_log.matches(&format!("read {id}\n")).count(), 1, "{b_log}");
    beta.quit().await;
}

#[tokio::test]
async fn only_marks_of_mail_that_crossed_and_is_on_the_disk_are_carried() {
    let nats = Nats::start().await;
    let a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    let beta = b.mb.spawn("beta").await;

    // A message both machines hold in archive/ without its having crossed: its mark must
    // not be published (if it were, laptop would write it: the file is there, for beta).
    let (local, bytes) = message_file("alpha", "beta", "never crossed", "hi");
    put(&a.mb.root().join("archive"), &local, &bytes);
    put(&b.mb.root().join("archive"), &local, &bytes);

    let gone = a.cli(&["send", "beta", "first", "--from", "alpha"]).await;
    let kept = a.cli(&["send", "beta", "second", "--from", "alpha"]).await;
    b.log.arrived(&gone).await;
    b.log.arrived(&kept).await;
    // laptop no longer has the first: a mark for it must not be written there.
    fs::remove_file(a.file(&gone)).unwrap();

    // beta's log on buildbox gets the local mark first, then both crossed ones in one append.
    let mut log = fs::OpenOptions::new()
        .append(true)
        .open(b.mb.root().join("state/beta.log"))
        .expect("beta's state log");
    writeln!(log, "read {local}").unwrap();
    drop(log);
    let unread = beta.ok("t9_ipc_unread", json!({})).await;
    assert!(unread.contains(&gone) && unread.contains(&kept), "{unread}");

    until_logged(&a, "beta", &format!("read {kept}")).await;
    let on_a = state_log(&a, "beta");
    assert!(
        !on_a.contains(&local),
        "a mark of mail that never crossed: {on_a}"
    );
    assert!(
        !on_a.contains(&gone),
        "a mark of mail not on laptop: {on_a}"
    );
    beta.quit().await;
}

/// How many times machine `machine` published a `read` mark of `id` in the marks stream.
async fn published_reads(nats: &Nats, machine: &str, id: &str) -> usize {
    use t9_ipc::federation::marks::{Batch, MARKS_STREAM, marks_subject};
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(MARKS_STREAM)
        .await
        .expect("the marks stream");
    let last = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let mut count = 0;
    for seq in 1..=last {
        let Ok(raw) = stream.get_raw_message(seq).await else {
            continue;
        };
        if raw.subject.as_str() != marks_subject(machine) {
            continue;
        }
        let batch: Batch = serde_json::from_slice(&raw.payload).expect("a batch");
        count += batch
            .marks
            .iter()
            .filter(|m| m.mark == "read" && m.id == id)
            .count();
    }
    count
}

#[tokio::test]
async fn a_restarted_relay_carries_on_where_it_left_the_state_logs() {
    let nats = Nats::start().await;
    let a = Machine::start("laptop", &nats).await;
    let mut b = Machine::start("buildbox", &nats).await;
    let beta = b.mb.spawn("beta").await;
    let mut read = Vec::new();
    for subject in ["before", "after"] {
        let id = a.cli(&["send", "beta", subject, "--from", "alpha"]).await;
        b.log.arrived(&id).await;
        let unread = beta.ok("t9_ipc_unread", json!({})).await;
        assert!(unread.contains(&id), "{unread}");
        until_logged(&a, "beta", &format!("read {id}")).await;
        read.push(id);
        if subject == "before" {
            b.stop_relay().await;
            b.start_relay(&nats.url()).await;
        }
    }
    // The restarted relay published the later mark and not the earlier one again: it read
    // beta's log from where marks.offsets said.
    assert_eq!(published_reads(&nats, "buildbox", &read[0]).await, 1);
    assert_eq!(published_reads(&nats, "buildbox", &read[1]).await, 1);
    let offsets = fs::read_to_string(b.mb.root().join("federation/marks.offsets")).unwrap();
    assert!(offsets.ends_with(" beta\n"), "{offsets}");
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(b.mb.root().join("federation/marks.offsets")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    beta.quit().await;
}

#[tokio::test]
async fn a_name_that_moves_to_another_machine_finds_its_mail_there_read() {
    let nats = Nats::start().await;
    let a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    let beta = b.mb.spawn("beta").await;
    let id = a.cli(&["send", "beta", "moved", "--from", "alpha"]).await;
    b.log.arrived(&id).await;
    let unread = beta.ok("t9_ipc_unread", json!({})).await;
    assert!(unread.contains(&id), "{unread}");
    until_logged(&a, "beta", &format!("read {id}")).await;
    beta.quit().await;

    // beta now starts on laptop, where the message was written: it is read there too.
    let moved = a.mb.spawn("beta").await;
    let unread = moved.ok("t9_ipc_unread", json!({})).await;
    assert!(unread.contains("No unread messages."), "{unread}");
    assert!(!unread.contains(&id), "{unread}");
    moved.quit().await;
}

/// A message written and read on one machine while the hub is away: its read mark waits
/// for the message to be published, then crosses (it used to be dropped as "never crossed").
#[tokio::test]
async fn a_mark_made_before_its_message_was_published_crosses_after_it() {
    let mut nats = Nats::start().await;
    let a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    let beta = b.mb.spawn("beta").await;
    let gamma = b.mb.spawn("gamma").await;
    nats.kill().await;
    let sent = gamma
        .ok(
            "t9_ipc_send",
            json!({"to": "beta", "subject": "while away"}),
        )
        .await;
    let id = crate::util::msg_id_in(&sent);
    let unread = beta.ok("t9_ipc_unread", json!({})).await;
    assert!(unread.contains(&id), "{unread}");
    b.log
        .wait("buildbox's relay to hold the mark", |log| {
            log.count("read marks held until their message is published") > 0
        })
        .await;
    nats.restart().await;
    a.log.arrived(&id).await;
    until_logged(&a, "beta", &format!("read {id}")).await;
    // Once: the mark crossed back to nowhere and B's log has it once.
    let b_log = state_log(&b, "beta");
    assert_eq!(b_log.matches(&format!("read {id}\n")).count(), 1, "{b_log}");
    beta.quit().await;
    gamma.quit().await;
}

/// A mark can come before its message (a machine catching up takes both streams at once;
/// here the message is kept aside on cloud until a person trusts its key): the batch comes
/// again, and the mark is written once the message is on the disk.
#[tokio::test]
async fn a_mark_that_comes_before_its_message_is_written_once_the_message_is_here() {
    use std::os::unix::fs::DirBuilderExt as _;
    let nats = Nats::start().await;
    let b = Machine::start("buildbox", &nats).await;
    let key = MachineKey::from_seed([1; 32]);
    let other = MachineKey::from_seed([2; 32]);
    // cloud knows "intruder" by another key than the one it signs with.
    let mut c = Machine::without_relay("cloud");
    let fed = c.mb.root().join("federation");
    fs::DirBuilder::new().mode(0o700).create(&fed).unwrap();
    let pins = format!("intruder {}\n", wire::hex(other.public().as_bytes()));
    fs::write(fed.join("known_machines"), pins).unwrap();
    c.start_relay(&nats.url()).await;

    let beta = b.mb.spawn("beta").await;
    let (id, bytes) = message_file("mallory", "beta", "early mark", "hi");
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let envelope = Envelope::seal(&key, "intruder", &id, bytes);
    publish(&js, "t9ipc.msg.intruder", &envelope, |_| {}).await;
    b.log.arrived(&id).await;
    // beta reads it on buildbox; cloud gets the mark while the message is kept aside there.
    let unread = beta.ok("t9_ipc_unread", json!({})).await;
    assert!(unread.contains(&id), "{unread}");
    c.log
        .wait("the mark to reach cloud before its message", |log| {
            log.count("read marks of mail not here yet") > 0
        })
        .await;
    assert!(!c.file(&id).exists());

    let said = c
        .cli(&[
            "relay",
            "--trust",
            "intruder",
            &wire::hex(key.public().as_bytes()),
        ])
        .await;
    assert!(said.contains("1 message kept aside"), "{said}");
    until_logged(&c, "beta", &format!("read {id}")).await;
    beta.quit().await;
}
