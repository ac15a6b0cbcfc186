//! The `t9-ipc` binary: its entry, argument parsing and logging; `serve` runs the MCP server,
//! the other subcommands are for people.

// stdout carries JSON-RPC and logs go through `tracing`: only the command line prints.
#![deny(clippy::print_stdout, clippy::print_stderr)]
// The process's entry is `main` below, not the standard library's shim (see there).
#![cfg_attr(not(test), no_main)]

mod cli;
mod server;
mod shared;
mod telegram;

use std::process::ExitCode;

use anyhow::Context as _;
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
    /// Send a message to one session (or `all`), from a terminal or a script.
    Send(cli::send::SendArgs),
    /// Send a message to every session.
    Broadcast(cli::send::BroadcastArgs),
    /// List the live sessions.
    Who(cli::who::WhoArgs),
    /// List the messages for a session name.
    Inbox(cli::inbox::InboxArgs),
    /// Print one message whole.
    Show(cli::inbox::ShowArgs),
    /// Follow the mailbox live: print each new message as it arrives.
    Tail(cli::tail::TailArgs),
    /// For Claude Code hooks: print this session's unread mail into its context.
    Hook(cli::hook::HookArgs),
    /// Check the mailbox, the sessions and the setup; say what to fix.
    Doctor,
    /// Move read and old messages from inbox/ to archive/.
    Archive(cli::archive::ArchiveArgs),
    /// Delete old messages from archive/.
    Prune(cli::archive::PruneArgs),
    /// Add t9-ipc to Claude Code (`claude mcp add`), or print what to paste.
    Install(cli::install::InstallArgs),
    /// List the live file claims of the sessions.
    Claims(cli::claims::ClaimsArgs),
    /// Search a session's mail (inbox and archive), with receipts for what it sent.
    Search(cli::search::SearchArgs),
    /// Read or write the shared board (small named values the sessions share).
    Board(cli::board::BoardArgs),
    /// Carry this mailbox to other machines through NATS (IPC_NATS_URL) until stopped.
    Relay(cli::relay::RelayArgs),
    /// Telegram: pair an account, show the setup, unpair.
    Telegram(cli::telegram::TelegramArgs),
}

/// The process's entry, in place of the standard library's `main` shim. That shim's start-up
/// asks glibc for the main thread's stack bounds (to name a stack overflow in its message),
/// which glibc finds by reading `/proc/self/maps` with `fopen` and `sscanf`: time every start
/// pays, and libc code an idle server then keeps mapped (about 0.2 MiB resident). What the
/// shim does that matters here is done here: the standard descriptors made valid, SIGPIPE
/// ignored (every Rust program's default; see [`restore_sigpipe`]), a panic ended with exit
/// code 101 (its message printed by the panic hook as always, naming the main thread
/// `<unnamed>`), stdout flushed at the exit (`std::process::exit`). A stack overflow still
/// ends the process, by SIGSEGV, without the shim's one line about it.
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    standard_fds();
    // SAFETY: setting a signal's disposition at start-up, before any thread exists, has no
    // preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // Flushes stdout first (the standard library's clean-up), then exits.
    std::process::exit(exit_status(std::panic::catch_unwind(run)))
}

/// The process's exit status for what [`run`] gave: its code (0, 1, or 2 for a usage
/// mistake), or 101 for a panic, as the standard library's shim ends one.
fn exit_status(ran: std::thread::Result<ExitCode>) -> libc::c_int {
    match ran {
        Ok(code) if code == ExitCode::SUCCESS => 0,
        Ok(code) if code == ExitCode::from(2) => 2,
        Ok(_) => 1,
        Err(_) => 101,
    }
}

/// Opens `/dev/null` on each of the descriptors 0, 1 and 2 that is closed, as the standard
/// library's start-up does: a file opened later must never become stdout (JSON-RPC) or stderr.
#[cfg(not(test))]
fn standard_fds() {
    for fd in 0..=2 {
        // SAFETY: `fcntl` and `open` take plain integers and a constant C string; a descriptor
        // opened here stays open for the process's life, as the standard library's does.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) == -1
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
                // The lowest free descriptor, so `fd` itself (those below it are open).
                && libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) != fd
            {
                libc::abort();
            }
        }
    }
}

#[allow(clippy::print_stderr)] // the one-line error of a failed command
#[cfg_attr(test, allow(dead_code))]
fn run() -> ExitCode {
    let args = parse_args();
    if !matches!(
        args.command,
        Command::Serve | Command::Relay(_) | Command::Telegram(_) | Command::Setup
    ) {
        restore_sigpipe();
    }
    init_logging();
    let config = Config::from_env();
    // Before any file is made: the modes every folder and file of the mailbox get.
    t9_ipc::fsx::share_with_group(config.share_group);
    // The hook runs at every prompt: no async runtime, and it always exits 0.
    let command = match args.command {
        Command::Hook(hook) => return cli::hook::run(hook, &config),
        command => command,
    };
    let result = match command {
        Command::Serve
        | Command::Setup
        | Command::Tail(_)
        | Command::Relay(_)
        | Command::Telegram(_) => run_async(command, config),
        command => run_sync(command, &config),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One line on stderr; a usage mistake exits 2 like clap's own.
            let text = format!("{err:#}").replace('\n', " ");
            eprintln!("t9-ipc: {text}"); // stdout-ok: stderr, a failed command's one line
            if err.downcast_ref::<cli::UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The command line. `t9-ipc serve`, what Claude Code starts each session with, is recognised
/// without clap: building clap's parser constructs all twenty subcommands, code spread over the
/// whole binary that an idle server would otherwise keep mapped. Any other command line, `serve`
/// with anything after it included, is clap's.
fn parse_args() -> Args {
    let mut words = std::env::args_os().skip(1);
    match (words.next(), words.next()) {
        (Some(word), None) if word == "serve" => Args {
            command: Command::Serve,
        },
        _ => Args::parse(),
    }
}

/// Runs the commands that need no async runtime. Apart from `main`, and never inlined: their
/// locals would otherwise make the stack frame of every `serve` larger, resident all its life.
#[inline(never)]
fn run_sync(command: Command, config: &Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Where => cli::where_is(config).map(|()| ExitCode::SUCCESS),
        Command::Send(a) => cli::send::send(a, config).map(|()| ExitCode::SUCCESS),
        Command::Broadcast(a) => cli::send::broadcast(a, config).map(|()| ExitCode::SUCCESS),
        Command::Who(a) => cli::who::run(a, config).map(|()| ExitCode::SUCCESS),
        Command::Inbox(a) => cli::inbox::inbox(a, config).map(|()| ExitCode::SUCCESS),
        Command::Show(a) => cli::inbox::show(a, config).map(|()| ExitCode::SUCCESS),
        Command::Doctor => cli::doctor::run(config),
        Command::Archive(a) => cli::archive::archive(a, config).map(|()| ExitCode::SUCCESS),
        Command::Prune(a) => cli::archive::prune(a, config).map(|()| ExitCode::SUCCESS),
        Command::Install(a) => cli::install::run(a).map(|()| ExitCode::SUCCESS),
        Command::Claims(a) => cli::claims::run(a, config).map(|()| ExitCode::SUCCESS),
        Command::Search(a) => cli::search::run(a, config).map(|()| ExitCode::SUCCESS),
        Command::Board(a) => cli::board::run(a, config).map(|()| ExitCode::SUCCESS),
        _ => unreachable!("only the commands without the runtime come here"),
    }
}

/// A command whose output is cut short (`t9-ipc search … | head`) ends quietly, as Unix tools
/// do, instead of panicking on a closed pipe. The commands that hold a connection or a child's
/// pipe keep Rust's default, set in `main` (SIGPIPE ignored), since with the default a write
/// to a peer that went away kills the process without a word: `serve` (a client that goes
/// away is an ordinary end, handled by the transport), `relay` and `telegram` (the NATS client
/// writes with `writev`, which raises SIGPIPE when the hub was killed: the relay died
/// silently), `setup` (it writes to the server it checks, and says so when that server ended).
fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to its default at start-up, before any thread
    // exists, has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Runs the commands that need the async runtime.
fn run_async(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(on_heap(command, config));
    // Every task was waited for. What can remain is a blocking read of a terminal's stdin
    // (`serve` reads pipes without one; `setup` and `tail` read none): don't wait for it.
    runtime.shutdown_background();
    result.map(|()| ExitCode::SUCCESS)
}

/// The future of an async command, built on the heap by a function of its own. Built in
/// the frame that polls it, the largest of them (tens of KiB) would keep that much of the
/// main thread's stack below every poll, resident for the server's whole life.
#[inline(never)]
fn on_heap(
    command: Command,
    config: Config,
) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>>>> {
    match command {
        Command::Serve => Box::pin(server::serve(config)),
        Command::Setup => Box::pin(async move { cli::setup::setup(&config).await }),
        Command::Tail(a) => Box::pin(async move { cli::tail::run(a, &config).await }),
        Command::Relay(a) => Box::pin(async move { cli::relay::run(a, &config).await }),
        Command::Telegram(a) => Box::pin(async move { cli::telegram::run(a, &config).await }),
        _ => unreachable!("only async commands come here"),
    }
}

/// Logs go to stderr only: stdout carries JSON-RPC. `RUST_LOG` sets the level. Logs carry
/// no message bodies: rmcp's debug and trace output (whole JSON-RPC messages) is cut to
/// `rmcp=info` whatever `RUST_LOG` says, unless `IPC_LOG_WIRE=1` asks for it.
///
/// `RUST_LOG` is read as `target=level` directives (`Targets`), not with `EnvFilter`, whose
/// span and field filters (unused here) cost about 100 KiB of code: a regex DFA builder.
fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = t9_ipc::config::log_filter()
        .parse::<Targets>()
        .or_else(|_| t9_ipc::config::DEFAULT_LOG.parse())
        .unwrap_or_default();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .with(filter)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_ends_with_101_and_the_commands_codes_pass_through() {
        assert_eq!(exit_status(Ok(ExitCode::SUCCESS)), 0);
        assert_eq!(exit_status(Ok(ExitCode::FAILURE)), 1);
        assert_eq!(exit_status(Ok(ExitCode::from(2))), 2);
        let panicked = std::panic::catch_unwind(|| -> ExitCode { panic!("a test's panic") });
        assert_eq!(exit_status(panicked), 101);
    }
}
