//! `t9-ipc setup`: checks the mailbox, starts `t9-ipc serve` on a scratch mailbox and talks
//! MCP to it as a client would, then prints the lines that add the server to Claude Code.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use t9_ipc::config::Config;
use t9_ipc::mailbox::Mailbox;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};

use super::mailbox_exists;

pub async fn setup(config: &Config) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this binary")?;
    // Setup is where a new user starts: it may make the mailbox, and says so.
    let existed = mailbox_exists(config).is_ok();
    let mailbox = Mailbox::open(&config.data_dir)
        .with_context(|| format!("opening the mailbox {}", config.data_dir.display()))?;
    println!("t9-ipc {} at {}", env!("CARGO_PKG_VERSION"), exe.display());
    println!(
        "mailbox: {} ({}{})",
        mailbox.root().display(),
        config.data_dir_source.describe(),
        if existed { "" } else { "; created now" }
    );

    let mut serve = Command::new(&exe);
    serve.arg("serve");
    let (handshake, tools) = self_check(serve).await?;
    println!(
        "self-check: `t9-ipc serve` answered in {} ms, declares claude/channel, tools: {}",
        handshake.as_millis(),
        tools.join(", ")
    );
    let exe = exe.display();
    println!(
        "\nAdd it to Claude Code for all your projects:\n\
         \n  claude mcp add --scope user t9-ipc -- {exe} serve\n\
         \nor put this in ~/.claude.json under \"mcpServers\":\n\
         \n  \"t9-ipc\": {{ \"type\": \"stdio\", \"command\": \"{exe}\", \"args\": [\"serve\"] }}\n\
         \nThen start each session with channels on, so messages arrive by themselves:\n\
         \n  claude --dangerously-load-development-channels server:t9-ipc\n\
         \nWithout that flag the tools still work; ask Claude to check unread messages, or let a \
         hook bring them with each prompt (`t9-ipc install --dry-run` prints the settings)."
    );
    Ok(())
}

/// How long the check waits for each answer of the server.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Starts `serve` (`t9-ipc serve`) on a scratch mailbox and talks MCP to it over its stdio, as Claude
/// Code does (`initialize`, `notifications/initialized`, `tools/list`): the time to the
/// `initialize` answer and the tool names, or why the check failed.
///
/// Three JSON-RPC lines, written here rather than with rmcp's client, which would add about
/// 0.7 MB to every installed binary for this one check.
async fn self_check(mut serve: Command) -> anyhow::Result<(Duration, Vec<String>)> {
    let scratch = tempfile::tempdir().context("making a scratch mailbox")?;
    // The check server's logs are kept out of this friendly output; they are shown only
    // when the check fails.
    let log_path = scratch.path().join("serve.log");
    let log = std::fs::File::create(&log_path).context("making the check's log file")?;
    let mut child = serve
        .env("IPC_DATA_DIR", scratch.path())
        .env("IPC_SESSION_ID", "setup-check")
        // The check must not join the user's Telegram bot (it would read their replies into
        // the scratch mailbox).
        .env_remove("IPC_TG_TOKEN")
        // Nor the federation (the scratch mailbox would claim this machine's name).
        .env_remove("IPC_NATS_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting `t9-ipc serve`")?;
    let mut rpc = Rpc {
        stdin: child.stdin.take().context("the server's stdin")?,
        stdout: BufReader::new(child.stdout.take().context("the server's stdout")?).lines(),
        next_id: 0,
    };
    let checked = check(&mut rpc).await;
    // Closing its stdin ends the server, as a client's exit does.
    drop(rpc);
    if tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    checked.map_err(|err| {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        match text.trim() {
            "" => err,
            text => err.context(format!("its log: {}", text.replace('\n', " | "))),
        }
    })
}

/// The handshake and the tool list: the time to the `initialize` answer and the names.
async fn check(rpc: &mut Rpc) -> anyhow::Result<(Duration, Vec<String>)> {
    let started = Instant::now();
    let init = rpc
        .call(
            "initialize",
            json!({
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t9-ipc setup", "version": env!("CARGO_PKG_VERSION")}
            }),
        )
        .await
        .context("the MCP handshake with `t9-ipc serve` failed")?;
    let handshake = started.elapsed();
    if init["capabilities"]["experimental"]["claude/channel"].is_null() {
        bail!("the server does not declare the claude/channel capability");
    }
    rpc.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await?;
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let params = cursor.map_or_else(|| json!({}), |c| json!({"cursor": c}));
        let page = rpc
            .call("tools/list", params)
            .await
            .context("listing the tools")?;
        let names = page["tools"].as_array().into_iter().flatten();
        tools.extend(names.filter_map(|t| t["name"].as_str().map(str::to_owned)));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    Ok((handshake, tools))
}

/// A JSON-RPC line protocol over a child's stdio.
struct Rpc {
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    next_id: u64,
}

impl Rpc {
    async fn send(&mut self, message: Value) -> anyhow::Result<()> {
        let mut line = message.to_string();
        line.push('\n');
        match self.stdin.write_all(line.as_bytes()).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                bail!(
                    "`t9-ipc serve` ended before it was asked {}",
                    message["method"]
                )
            }
            Err(err) => Err(err).context("writing to `t9-ipc serve`"),
        }
    }

    /// Sends a request and returns its `result`; lines that are not its answer
    /// (notifications) are passed over.
    async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        let answer = tokio::time::timeout(ANSWER_WAIT, async {
            loop {
                let Some(line) = self.stdout.next_line().await? else {
                    bail!("`t9-ipc serve` ended without answering {method}");
                };
                let Ok(message) = serde_json::from_str::<Value>(&line) else {
                    bail!("`t9-ipc serve` wrote a line that is not JSON-RPC: {line}");
                };
                if message["id"] == json!(id) {
                    return Ok(message);
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("`t9-ipc serve` did not answer {method} within 10 s"))??;
        if let Some(err) = answer.get("error") {
            bail!("`t9-ipc serve` refused {method}: {err}");
        }
        Ok(answer["result"].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for `t9-ipc serve`: a shell running `body`.
    fn fake(body: &str) -> Command {
        let mut sh = Command::new("sh");
        sh.args(["-c", body]);
        sh
    }

    #[tokio::test]
    async fn a_server_that_ends_at_once_fails_the_check_with_its_log() {
        let serve = fake("echo 'cannot open the mailbox' >&2; exit 1");
        let err = self_check(serve).await.unwrap_err();
        let text = format!("{err:#}");
        // It ends before the question is written, or before it is answered.
        assert!(text.contains("`t9-ipc serve` ended"), "{text}");
        assert!(text.contains("initialize"), "{text}");
        assert!(text.contains("its log: cannot open the mailbox"), "{text}");
    }

    #[tokio::test]
    async fn a_server_without_the_channel_capability_fails_the_check() {
        // A notification first (passed over), then the answer, which lacks claude/channel.
        let serve = fake(
            r#"read request
echo '{"jsonrpc":"2.0","method":"notifications/message","params":{}}'
echo '{"jsonrpc":"2.0","id":1,"result":{"capabilities":{"tools":{}}}}'
read rest"#,
        );
        let err = self_check(serve).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("does not declare the claude/channel capability"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn tools_are_listed_across_pages() {
        let serve = fake(
            r#"read request
echo '{"jsonrpc":"2.0","id":1,"result":{"capabilities":{"experimental":{"claude/channel":{}}}}}'
read initialized
read list
echo '{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"a"}],"nextCursor":"p2"}}'
read list
case "$list" in *'"cursor":"p2"'*) echo '{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"b"}]}}';; esac
read rest"#,
        );
        let (_, tools) = self_check(serve).await.unwrap();
        assert_eq!(tools, ["a", "b"]);
    }
}
