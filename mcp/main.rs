//! The `t9-ipc` binary: argument parsing and logging; `serve` runs the MCP server, the other
//! subcommands are for people.

mod cli;
mod server;
mod telegram;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use t9_ipc::config::Config;

/// A shared mailbox for Claude Code sessions: discovery, messages and real-time channel push.
#[derive(Parser)]
#[command(name = "t9-ipc", version, arg_required_else_help = true)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MCP server on stdin/stdout (what Claude Code starts).
    Serve,
    /// Check that the server works and print how to add it to Claude Code.
    Setup,
    /// Print the mailbox folder this binary uses.
    Where,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let config = Config::from_env();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("t9-ipc: starting the async runtime: {err}"); // stdout-ok: this is stderr
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Command::Serve => server::serve(config).await,
            Command::Setup => cli::setup(&config).await,
            Command::Where => cli::where_is(&config),
        }
    });
    // The work is done; don't wait for a blocking read of stdin that may never return
    // (after a signal, stdin is still open).
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("t9-ipc: {err:#}"); // stdout-ok: this is stderr
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr only: stdout carries JSON-RPC. `RUST_LOG` sets the level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("t9_ipc=info,warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
