//! Test harness: a temp mailbox, the built `t9-ipc serve` driven over stdio by the rmcp
//! client (as Claude Code drives it), and a raw line client for byte-level checks.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, CustomNotification, Implementation,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// The binary under test: the one cargo built for this run, unless [`use_binary`] named
/// another (the benches do: the build a user installs).
pub const BIN: Bin = Bin;

/// See [`BIN`]: usable wherever a program's path is (`Command::new(BIN)`, `{BIN}`).
#[derive(Clone, Copy)]
pub struct Bin;

static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes [`BIN`] the binary at `path`, before anything ran it.
#[allow(dead_code)]
pub fn use_binary(path: &Path) {
    let path = path.to_str().expect("a UTF-8 path").to_owned();
    assert!(BINARY.set(path).is_ok(), "use_binary before any use of BIN");
}

impl Bin {
    pub fn path(self) -> &'static str {
        BINARY.get_or_init(|| env!("CARGO_BIN_EXE_t9-ipc").to_owned())
    }
}

impl AsRef<std::ffi::OsStr> for Bin {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path().as_ref()
    }
}

impl AsRef<Path> for Bin {
    fn as_ref(&self) -> &Path {
        self.path().as_ref()
    }
}

impl std::fmt::Display for Bin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.path())
    }
}
/// Long enough for a push (after the 1 s grace) on a loaded CI machine; a passing test
/// never waits this long.
pub const EVENT_WAIT: Duration = Duration::from_secs(15);

/// A mailbox root in a temp folder, removed at the end of the test (or of the benchmark run,
/// [`keep_mailboxes`]).
pub struct TempMailbox {
    dir: Option<tempfile::TempDir>,
}

/// Mailboxes kept until [`remove_kept_mailboxes`], when [`keep_mailboxes`] was called.
static KEPT: std::sync::Mutex<Option<Vec<tempfile::TempDir>>> = std::sync::Mutex::new(None);

/// From now on a dropped [`TempMailbox`] stays on disk until [`remove_kept_mailboxes`]. For
/// the benchmarks: on ext4 without a journal, a file system that has just deleted many files
/// skips their inodes when it makes new ones for a minute or more (`recently_deleted`), so
/// deleting one figure's 100,000 messages would slow every file the next figures make.
#[allow(dead_code)]
pub fn keep_mailboxes() {
    KEPT.lock().unwrap().get_or_insert_with(Vec::new);
}

/// Removes the mailboxes kept since [`keep_mailboxes`].
#[allow(dead_code)]
pub fn remove_kept_mailboxes() {
    let kept = KEPT.lock().unwrap().take();
    drop(kept);
}

impl Drop for TempMailbox {
    fn drop(&mut self) {
        let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(kept), Some(dir)) = (kept.as_mut(), self.dir.take()) {
            kept.push(dir);
        }
    }
}

impl TempMailbox {
    pub fn new() -> TempMailbox {
        TempMailbox {
            dir: Some(tempfile::tempdir().expect("temp dir")),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.as_ref().expect("a mailbox in use").path()
    }

    pub fn inbox(&self) -> PathBuf {
        self.root().join("inbox")
    }

    /// The `.md` files in the inbox, sorted.
    pub fn inbox_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.inbox())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn heartbeats(&self) -> Map<String, Value> {
        let text = std::fs::read_to_string(self.root().join("heartbeats.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }

    /// Starts a server named `name` (IPC_SESSION_ID) in a fresh working folder.
    pub async fn spawn(&self, name: &str) -> Client {
        let cwd = self.root().join(format!("work-{name}"));
        std::fs::create_dir_all(&cwd).expect("cwd");
        self.spawn_with(Some(name), &cwd).await
    }

    /// Starts a server with an optional IPC_SESSION_ID in working folder `cwd`.
    pub async fn spawn_with(&self, name: Option<&str>, cwd: &Path) -> Client {
        self.spawn_as(name, cwd, "t9-ipc-tests", &[]).await
    }

    /// Starts a server named `name` with extra environment variables (`IPC_TG_*`, or a
    /// `RUST_LOG` that replaces the default), its stderr written to `log` when given.
    pub async fn spawn_env(&self, name: &str, envs: &[(&str, &str)], log: Option<&Path>) -> Client {
        let cwd = self.root().join(format!("work-{name}"));
        std::fs::create_dir_all(&cwd).expect("cwd");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve");
        self.spawn_logged(cmd, Some(name), &cwd, "t9-ipc-tests", envs, log)
            .await
    }

    /// Starts a server named `name` whose client introduces itself as Claude Code (as the
    /// real one does: clientInfo name `claude-code`), with extra environment variables.
    pub async fn spawn_claude(&self, name: &str, env: &[(&str, &str)]) -> Client {
        let cwd = self.root().join(format!("work-{name}"));
        std::fs::create_dir_all(&cwd).expect("cwd");
        self.spawn_as(Some(name), &cwd, "claude-code", env).await
    }

    /// Starts a server; the client introduces itself as `client`.
    pub async fn spawn_as(
        &self,
        name: Option<&str>,
        cwd: &Path,
        client: &str,
        env: &[(&str, &str)],
    ) -> Client {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve");
        self.spawn_command(cmd, name, cwd, client, env).await
    }

    /// Runs `cmd` (which must end up running `t9-ipc serve` on its stdio) as a server of
    /// this mailbox.
    pub async fn spawn_command(
        &self,
        cmd: Command,
        name: Option<&str>,
        cwd: &Path,
        client: &str,
        env: &[(&str, &str)],
    ) -> Client {
        self.spawn_logged(cmd, name, cwd, client, env, None).await
    }

    /// [`TempMailbox::spawn_command`], with stderr written to `log` when given.
    pub async fn spawn_logged(
        &self,
        mut cmd: Command,
        name: Option<&str>,
        cwd: &Path,
        client: &str,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Client {
        cmd.current_dir(cwd)
            .env("IPC_DATA_DIR", self.root())
            .env_remove("IPC_SESSION_ID")
            .env_remove("IPC_PUSH");
        without_telegram(&mut cmd);
        logs_to(&mut cmd, log);
        if let Some(name) = name {
            cmd.env("IPC_SESSION_ID", name);
        }
        cmd.envs(env.iter().copied());
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::null(),
        };
        spawn_client(cmd, client, stderr).await
    }
}

/// The core the servers (and hubs) started from now on are kept to, when a figure simulates
/// machines of one core each on one host ([`start_on_core`]); `None`: any core.
static CORE: std::sync::Mutex<Option<usize>> = std::sync::Mutex::new(None);

/// Keeps the processes started from now on to `core` (`None`: any core again).
#[allow(dead_code)]
pub fn start_on_core(core: Option<usize>) {
    *CORE.lock().unwrap_or_else(|p| p.into_inner()) = core;
}

/// Keeps `cmd`'s process to the core chosen by [`start_on_core`], if any.
pub fn on_chosen_core(cmd: &mut Command) {
    let Some(core) = *CORE.lock().unwrap_or_else(|p| p.into_inner()) else {
        return;
    };
    // SAFETY: between fork and exec the closure makes one system call on its own stack.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(core, &mut set);
            match libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
}

/// Starts `cmd` (which runs `t9-ipc serve`, perhaps through a shell) and completes the MCP
/// handshake with it; the client introduces itself as `client`.
pub async fn spawn_client(mut cmd: Command, client: &str, stderr: Stdio) -> Client {
    on_chosen_core(&mut cmd);
    let (tx, events) = mpsc::unbounded_channel();
    let transport = TokioChildProcess::builder(cmd)
        .stderr(stderr)
        .spawn()
        .expect("spawn t9-ipc serve")
        .0;
    let pid = transport.id().expect("child pid");
    let handler = Events {
        tx,
        client: client.to_owned(),
    };
    let service = timeout(EVENT_WAIT, handler.serve(transport))
        .await
        .expect("initialize in time")
        .expect("initialize");
    Client {
        service,
        events,
        pid,
    }
}

/// Forwards every channel event the server pushes into a queue the test reads.
pub struct Events {
    tx: mpsc::UnboundedSender<CustomNotification>,
    client: String,
}

impl ClientHandler for Events {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new(self.client.clone(), "0"),
        )
    }

    async fn on_custom_notification(
        &self,
        notification: CustomNotification,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.tx.send(notification);
    }
}

/// The message ids an event delivers whole (a single message or a bundle), and those it
/// only names (a digest). A notice of held mail names no id: that mail waits for
/// `t9_ipc_unread`.
pub fn delivered_ids(event: &Event) -> (Vec<String>, Vec<String>) {
    let ids: Vec<String> = event
        .meta
        .get("msg_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if event.meta("type") == "digest" {
        (Vec::new(), ids)
    } else {
        (ids, Vec::new())
    }
}

/// Reads every unread message of `client` with bodies, page by page; their ids.
pub async fn read_all(client: &Client) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let page = client.ok("t9_ipc_unread", json!({"limit": 1000})).await;
        let got = bodies_in(&page);
        if got.is_empty() {
            return ids;
        }
        ids.extend(got);
    }
}

/// The ids of the messages a `t9_ipc_unread` or `t9_ipc_wait` result returns with bodies:
/// the `msg_id:` line after each line that opens a message with this result's boundary
/// (named in the preamble, before any body).
pub fn bodies_in(text: &str) -> Vec<String> {
    let Some(token) = boundary_of(text) else {
        return Vec::new();
    };
    let open = format!("=== {token} ");
    let mut lines = text.lines();
    let mut ids = Vec::new();
    while let Some(line) = lines.next() {
        if line.starts_with(&open) {
            let id = lines.next().and_then(|l| l.strip_prefix("msg_id: "));
            ids.push(
                id.expect("a msg_id line after the boundary")
                    .trim()
                    .to_owned(),
            );
        }
    }
    ids
}

/// The boundary token a result's preamble announces (`… a line "=== <token> k/n ===" …`).
pub fn boundary_of(text: &str) -> Option<String> {
    let start = text.find("a line \"=== ")? + "a line \"=== ".len();
    text[start..].split(' ').next().map(str::to_owned)
}

/// One channel event: the body and the meta attributes.
#[derive(Debug, Clone)]
pub struct Event {
    pub content: String,
    pub meta: Map<String, Value>,
}

impl Event {
    pub fn meta(&self, key: &str) -> &str {
        self.meta
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("meta {key} missing or not a string: {:?}", self.meta))
    }
}

/// A running `t9-ipc serve` with an MCP client session on its stdio.
pub struct Client {
    pub service: RunningService<RoleClient, Events>,
    events: mpsc::UnboundedReceiver<CustomNotification>,
    pub pid: u32,
}

/// A tool's answer: its text and whether it was an error result.
#[derive(Debug)]
pub struct Reply {
    pub text: String,
    pub is_error: bool,
}

impl Client {
    pub async fn call(&self, tool: &str, args: Value) -> Reply {
        let Value::Object(args) = args else {
            panic!("tool arguments must be an object")
        };
        let result = self
            .service
            .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args))
            .await
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        let text = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect::<Vec<_>>()
            .join("\n");
        Reply {
            text,
            is_error: result.is_error.unwrap_or(false),
        }
    }

    /// Calls a tool that must succeed and returns its text.
    pub async fn ok(&self, tool: &str, args: Value) -> String {
        let reply = self.call(tool, args).await;
        assert!(!reply.is_error, "{tool} failed: {}", reply.text);
        reply.text
    }

    /// Sends a message and returns its msg_id, read from the tool's answer.
    pub async fn send(&self, to: &str, subject: &str, body: &str) -> String {
        let text = self
            .ok(
                "t9_ipc_send",
                json!({"to": to, "subject": subject, "body": body}),
            )
            .await;
        msg_id_in(&text)
    }

    /// The next channel event if one arrives within `wait`; later ones stay queued.
    pub async fn next_event_within(&mut self, wait: Duration) -> Option<Event> {
        let n = timeout(wait, self.events.recv()).await.ok()??;
        let params = n.params.unwrap_or_default();
        Some(Event {
            content: params["content"].as_str().unwrap_or_default().to_owned(),
            meta: params["meta"].as_object().cloned().unwrap_or_default(),
        })
    }

    /// The next channel event, or a panic after [`EVENT_WAIT`].
    pub async fn next_event(&mut self) -> Event {
        let n = timeout(EVENT_WAIT, self.events.recv())
            .await
            .expect("a channel event within the wait")
            .expect("the event queue is open");
        assert_eq!(n.method, "notifications/claude/channel");
        let params = n.params.expect("params");
        Event {
            content: params["content"]
                .as_str()
                .expect("content string")
                .to_owned(),
            meta: params["meta"].as_object().expect("meta object").clone(),
        }
    }

    /// Waits out the channel grace period: the next event if one comes within 1.5 s.
    pub async fn next_event_or_none(&mut self) -> Option<Event> {
        self.events_within(Duration::from_millis(1500))
            .await
            .into_iter()
            .next()
    }

    /// Proves that no event reached this client before now without waiting a fixed time:
    /// `from` sends `to` (this client's name) a marker message, and the next event must be
    /// exactly that marker, alone. (A message pushed twice, or one that should not have been
    /// pushed, comes before it or in the same event.) `from` must not be held back by the
    /// rate limit here. Returns the marker's msg_id; it stays unread.
    pub async fn nothing_before_marker(&mut self, from: &Client, to: &str) -> String {
        let marker = from.send(to, "marker", "nothing came before me").await;
        let event = self.next_event().await;
        assert_eq!(
            event.meta("msg_id"),
            marker,
            "an event other than the marker came: {event:?}"
        );
        marker
    }

    /// Events that arrive within `wait`: what was already on the way when a server was
    /// killed. (To show that nothing more arrives, use [`Client::nothing_before_marker`].)
    pub async fn events_within(&mut self, wait: Duration) -> Vec<Event> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(n)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            let params = n.params.unwrap_or_default();
            got.push(Event {
                content: params["content"].as_str().unwrap_or_default().to_owned(),
                meta: params["meta"].as_object().cloned().unwrap_or_default(),
            });
        }
        got
    }

    /// The next notification of any method (channel events included) within `wait`.
    pub async fn next_notification_within(&mut self, wait: Duration) -> Option<CustomNotification> {
        timeout(wait, self.events.recv()).await.ok()?
    }

    /// Sends a notification to the server, as Claude Code sends `permission_request`.
    pub async fn notify(&self, method: &str, params: Value) {
        let n = CustomNotification::new(method.to_owned(), Some(params));
        self.service
            .send_notification(rmcp::model::ClientNotification::CustomNotification(n))
            .await
            .expect("notification sent");
    }

    /// Closes stdin (the normal end of a session) and waits for the process to exit.
    pub async fn quit(self) {
        let pid = self.pid;
        let _ = self.service.cancel().await;
        for _ in 0..200 {
            if !process_exists(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("t9-ipc serve (pid {pid}) did not exit after stdin closed");
    }
}

/// A developer's own Telegram and federation settings must never reach a test server.
pub fn without_telegram(cmd: &mut Command) {
    for var in [
        "IPC_TG_TOKEN",
        "IPC_TG_CHAT",
        "IPC_TG_API_BASE",
        "IPC_TG_GIVE_UP_S",
        "IPC_NATS_URL",
        "IPC_NATS_CREDS",
        "IPC_NATS_CA",
        "IPC_MACHINE",
        "IPC_TG_ALLOW",
    ] {
        cmd.env_remove(var);
    }
}

/// A server whose log is kept (`log` given) logs at debug level for whoever reads it; one
/// whose log is thrown away runs at the default level, as a user's does, so that figures
/// measured through these helpers pay for no formatting a user's server does not do.
pub fn logs_to(cmd: &mut Command, log: Option<&Path>) {
    match log {
        Some(_) => cmd.env("RUST_LOG", "t9_ipc=debug"),
        None => cmd.env_remove("RUST_LOG"),
    };
}

/// Waits until the log file `log` has a line containing `text`; panics after [`EVENT_WAIT`].
pub async fn until_logged(log: &Path, text: &str) {
    let deadline = std::time::Instant::now() + EVENT_WAIT;
    while !std::fs::read_to_string(log).is_ok_and(|t| t.contains(text)) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never logged {text:?}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn process_exists(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state letter is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

/// The msg_id a send result names.
pub fn msg_id_in(text: &str) -> String {
    let start = text.find("msg_id ").expect("result names a msg_id") + "msg_id ".len();
    text[start..]
        .split(|c: char| c.is_whitespace() || c == ',')
        .next()
        .unwrap()
        .trim_end_matches('.')
        .to_owned()
}

/// `t9-ipc serve` spoken to line by line, keeping every byte of stdout.
pub struct Raw {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
}

impl Raw {
    pub fn spawn(root: &Path, name: &str) -> Raw {
        Raw::spawn_logged(root, name, None)
    }

    /// Like [`Raw::spawn`], with stderr (the log) written to `log` when given.
    pub fn spawn_logged(root: &Path, name: &str, log: Option<&Path>) -> Raw {
        Raw::spawn_full(root, name, log, &[])
    }

    /// Like [`Raw::spawn`], with extra environment variables (the benches' servers with
    /// federation settings; the tests use the other spawns).
    #[allow(dead_code)]
    pub fn spawn_env(root: &Path, name: &str, envs: &[(&str, &str)]) -> Raw {
        Raw::spawn_full(root, name, None, envs)
    }

    fn spawn_full(root: &Path, name: &str, log: Option<&Path>, envs: &[(&str, &str)]) -> Raw {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::null(),
        };
        let mut cmd = Command::new(BIN);
        without_telegram(&mut cmd);
        logs_to(&mut cmd, log);
        on_chosen_core(&mut cmd);
        let mut child = cmd
            .arg("serve")
            .env("IPC_DATA_DIR", root)
            .env("IPC_SESSION_ID", name)
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Raw {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    pub async fn send(&mut self, message: Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        let mut line = serde_json::to_string(&message).unwrap();
        line.push('\n');
        stdin.write_all(line.as_bytes()).await.expect("write");
        stdin.flush().await.expect("flush");
    }

    /// The next stdout line, parsed.
    pub async fn recv(&mut self) -> Value {
        let line = timeout(EVENT_WAIT, self.lines.next_line())
            .await
            .expect("a line in time")
            .expect("read")
            .expect("stdout open");
        self.seen.push(line.clone());
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON on stdout: {line:?}: {e}"))
    }

    /// Reads lines until the response with `id`; other lines (notifications) are kept in
    /// `seen` too.
    pub async fn response(&mut self, id: Value) -> Value {
        loop {
            let v = self.recv().await;
            if v.get("id") == Some(&id) {
                return v;
            }
        }
    }

    /// Closes stdin, reads the rest of stdout, and returns the exit status.
    pub async fn finish(mut self) -> (std::process::ExitStatus, Vec<String>) {
        drop(self.stdin.take());
        while let Ok(Ok(Some(line))) = timeout(EVENT_WAIT, self.lines.next_line()).await {
            self.seen.push(line);
        }
        let status = timeout(EVENT_WAIT, self.child.wait())
            .await
            .expect("exit in time")
            .expect("wait");
        (status, self.seen)
    }
}

pub fn initialize_request(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {"roots": {"listChanged": true}},
        "clientInfo": {"name": "claude-code", "version": "2.1.330"}
    }})
}

/// The `tools/list` result and the `initialize` result, as a raw client reads them.
pub async fn listing(mb: &TempMailbox) -> (Value, Value) {
    let mut raw = Raw::spawn(mb.root(), "alpha");
    raw.send(initialize_request(1)).await;
    let init = raw.response(json!(1)).await;
    raw.send(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
        .await;
    raw.send(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))
        .await;
    let tools = raw.response(json!(2)).await;
    raw.finish().await;
    (tools["result"].clone(), init["result"].clone())
}
