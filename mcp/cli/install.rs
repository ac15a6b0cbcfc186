//! `install`: add the MCP entry through `claude mcp add` when `claude` is on PATH, or print
//! what to paste. It edits no file itself, so it never rewrites a user's config.

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use serde_json::json;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Scope {
    /// Every project of this user (~/.claude.json).
    User,
    /// This project, shared through .mcp.json.
    Project,
    /// This project, for this user only.
    Local,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Project => "project",
            Scope::Local => "local",
        }
    }
}

/// `t9-ipc install`.
#[derive(Debug, Args)]
#[command(
    after_help = "Runs `claude mcp add --scope <SCOPE> t9-ipc -- <this binary> serve`. \
Without `claude` on PATH it prints the JSON to paste instead. Either way it prints the hook \
settings for sessions without channels; it writes no file itself."
)]
pub struct InstallArgs {
    #[arg(long, value_enum, default_value_t = Scope::User)]
    pub scope: Scope,
    /// Print what would be run; run nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: InstallArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let exe = exe.display().to_string();
    let claude_args = [
        "mcp",
        "add",
        "--scope",
        args.scope.as_str(),
        "t9-ipc",
        "--",
        &exe,
        "serve",
    ];
    let shown = format!("claude {}", claude_args.join(" "));
    if args.dry_run {
        // Say what the real run would do: it runs `claude` only when it finds one.
        if on_path("claude") {
            println!("would run: {shown}");
        } else {
            print_paste(&exe)?;
        }
    } else {
        match Command::new("claude").args(claude_args).output() {
            Ok(out) if out.status.success() => {
                println!("ran: {shown}");
                print!("{}", String::from_utf8_lossy(&out.stdout));
            }
            Ok(out) => bail!(
                "`{shown}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .replace('\n', " ")
            ),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => print_paste(&exe)?,
            Err(err) => return Err(err).context("running `claude`"),
        }
    }
    println!("{}", super::precommit::install_text(&exe));
    println!(
        "\nStart sessions with channels on, so messages arrive by themselves:\n\n  \
         claude --dangerously-load-development-channels server:t9-ipc\n\n\
         Where channels are off (API-key, Bedrock or Vertex accounts, or without the flag), \
         add these hooks to ~/.claude/settings.json so unread mail comes with each prompt:\n\n{}",
        hook_settings(&exe)
    );
    Ok(())
}

/// Without `claude`: the MCP entry to paste into ~/.claude.json.
fn print_paste(exe: &str) -> anyhow::Result<()> {
    let entry = json!({"mcpServers": {"t9-ipc": {
        "type": "stdio", "command": exe, "args": ["serve"]}}});
    println!(
        "`claude` is not on PATH. Add this to ~/.claude.json (merge it into an existing \
         \"mcpServers\"):\n\n{}",
        serde_json::to_string_pretty(&entry)?
    );
    Ok(())
}

/// True when `PATH` holds an executable file named `program`, as the real run would find it.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The `hooks` object of Claude Code's settings.json that runs `<exe> hook <event>`.
pub fn hook_settings(exe: &str) -> String {
    let exe = shell_quote(exe);
    let command =
        |event: &str| json!({"type": "command", "command": format!("{exe} hook {event}")});
    let settings = json!({"hooks": {
        "SessionStart": [{"hooks": [command("SessionStart")]}],
        "UserPromptSubmit": [{"hooks": [command("UserPromptSubmit")]}],
        "PostToolUse": [{"matcher": "*", "hooks": [command("PostToolUse")]}],
    }});
    // A JSON value always serialises.
    serde_json::to_string_pretty(&settings).unwrap_or_default()
}

/// `s` as one shell word: unchanged when it is plain, else in single quotes.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
