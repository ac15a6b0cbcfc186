//! t9-ipc: a shared mailbox for Claude Code sessions on one machine.
//!
//! Code map:
//! - [`channels`]: whether channel events reach the model (evidence about the client).
//! - [`config`]: the only reader of the environment; a plain struct passed explicitly.
//! - [`message`]: a message file's front matter and body, parsed and rendered; pure, no I/O.
//! - [`mailbox`]: the only code that touches message files and read state.
//! - [`heartbeat`]: `heartbeats.json` under its lock; liveness of an entry.
//! - [`session`]: one running session: its name, heartbeat, sends and unread mail.
//! - [`watch`]: file-system events on `inbox/` turned into "rescan" hints.
//! - [`telegram`]: escalations forwarded to Telegram, and the person's replies written back;
//!   its bookkeeping lives in `<data>/telegram/`.
//! - [`federation`]: message files carried between machines by NATS JetStream (opt-in,
//!   `IPC_NATS_URL`); its bookkeeping lives in `<data>/federation/`.
//!
//! The MCP server, the CLI and everything that speaks JSON-RPC live in the binary (`mcp/`).
//!
//! Invariants, stated as absences:
//! - Nothing outside `mailbox` writes or deletes a message file (but `federation::store`,
//!   which writes arrivals from other machines byte for byte); nothing deletes a file it
//!   cannot parse.
//! - Nothing outside `heartbeat` writes `heartbeats.json`, and nothing writes it without
//!   holding the lock on `heartbeats.lock`.
//! - Nothing in this library writes to stdout (it belongs to the JSON-RPC protocol) or knows
//!   about MCP.
//! - No message is cut: over-long subjects and bodies are refused, never truncated.
//! - No message file is opened in a way that can block (a FIFO) or follows a link, read past
//!   `mailbox::MAX_FILE_BYTES`, or read while a process has it open for writing (Linux).
//! - Nothing outside `telegram` uses reqwest. The bot token lives only in a
//!   `telegram::Token` (filled by `config`), which prints as `<redacted>`; only `telegram`
//!   reads its text, for the request URL, and no log line, error or file holds it.

pub mod channels;
pub mod config;
pub mod error;
pub mod federation;
pub mod heartbeat;
pub mod mailbox;
pub mod message;
pub mod session;
pub mod telegram;
pub mod watch;

pub use error::{Error, Result};
