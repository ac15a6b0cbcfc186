//! t9-ipc: a shared mailbox for Claude Code sessions, on one machine or (through NATS) several.
//!
//! Code map:
//! - [`channels`]: whether channel events reach the model (evidence about the client).
//! - [`coord`]: file claims, the shared board and mail search with receipts (`claims/`, `board/`).
//! - [`config`]: the only reader of the environment; a plain struct passed explicitly.
//! - [`error`]: the library's one error type; file-system variants name the path.
//! - [`fsx`]: the one atomic file write (temporary file, fsync, rename, fsync of the folder,
//!   mode 0600), the folder flush and random uid that go with it, the private modes (0700/0600,
//!   or 0770/0660 with `IPC_SHARE_GROUP`), and the one bounded file lock.
//! - [`id`]: message ids (`<stamp>-<uid>-<from>-<to>-<subject>`) made and read: the
//!   [`id::MessageId`] type holds the only byte offsets of that shape. Pure, no I/O.
//! - [`message`]: a message file's front matter and body, parsed and rendered; pure, no I/O.
//! - [`mailbox`]: the only code that touches message files and read state: `mod` (folders,
//!   writing one message, finding one by id), `read` (reading one file safely), `scan`
//!   (listing the inbox through the parse cache, a session's mail in `inbox/` and
//!   `archive/` for search through the same cache and kept folder listings, the audit),
//!   `state` (read state logs), `archive` (moving finished mail to `archive/`, pruning it),
//!   `private` (which paths other users can read; tightening them at start).
//! - [`heartbeat`]: `heartbeats.json` under its lock; liveness of an entry.
//! - [`seal`]: the seal every message t9-ipc writes for a reserved sender carries, and the
//!   check that a reserved sender (`telegram`, `human`, `system`) was written by t9-ipc's
//!   own code.
//! - [`process`]: other processes: whether a pid runs, the chain of parents above one.
//! - [`session`]: one running session: `mod` (its name, heartbeat and the state the async
//!   side shares; the lock order), `index` (the index of its unread mail: sync, unread,
//!   pushes, waits), `send` (every field of a send checked, then one file written).
//! - [`text`]: small pieces of text shared by user-facing messages (`plural`, the
//!   `Boundary` between the messages of one result).
//! - [`watch`]: file-system events on `inbox/` turned into "look at these files" or "rescan"
//!   hints (`watch::kernel`: inotify with a narrow mask on Linux; `notify` elsewhere).
//! - [`telegram`]: escalations forwarded to Telegram, and the person's replies written back;
//!   its bookkeeping lives in `<data>/telegram/`.
//! - [`federation`]: message files carried between machines by NATS JetStream (opt-in,
//!   `IPC_NATS_URL`); its bookkeeping lives in `<data>/federation/`.
//!
//! The MCP server, the CLI and everything that speaks JSON-RPC live in the binary (`mcp/`).
//!
//! Invariants, stated as absences:
//! - Nothing outside `mailbox` writes or deletes a message file (arrivals from other
//!   machines too, written byte for byte); nothing deletes a file it cannot parse.
//! - Nothing outside `heartbeat` writes `heartbeats.json`, and nothing writes it without
//!   holding the lock on `heartbeats.lock`.
//! - No file is replaced other than by [`fsx::write_atomic`] (or, for `heartbeats.json`,
//!   which means nothing after a crash, [`fsx::write_atomic_unsynced`]); no file they write
//!   is readable by other users.
//! - No byte offset into a message id outside `id`; no push state compared as a word
//!   (`channels::Push` is compared).
//! - No lock of `session` that the async side takes is held across I/O (see
//!   [`session::Session`]); the federation bridge's locks (its ledger, pinned keys, read
//!   marks) are taken only on blocking threads; no file lock is waited for without a bound
//!   ([`fsx::lock_within`]), except Telegram's poll election on its own thread.
//! - Nothing in this library writes to stdout (it belongs to the JSON-RPC protocol) or
//!   stderr, or knows about MCP: `clippy::print_stdout` and `clippy::print_stderr` are
//!   denied here; diagnostics go through `tracing`.
//! - No session name is a reserved sender ([`message::RESERVED`]); only the Telegram poller
//!   writes `from: telegram`, only the command line outside any Claude Code session writes
//!   `from: human`.
//! - No message is cut: over-long subjects and bodies are refused, never truncated.
//! - No message file is opened in a way that can block (a FIFO) or follows a link, read past
//!   `mailbox::MAX_FILE_BYTES`, or read while a process has it open for writing (Linux).
//! - Nothing outside `telegram` uses reqwest. The bot token lives only in a
//!   `telegram::Token` (filled by `config`), which prints as `<redacted>`; only `telegram`
//!   reads its text, for the request URL, and no log line, error or file holds it.

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod channels;
pub mod config;
pub mod coord;
pub mod error;
pub mod federation;
pub mod fsx;
pub mod heartbeat;
pub mod id;
pub mod mailbox;
pub mod message;
pub mod process;
pub mod seal;
pub mod session;
pub mod telegram;
pub mod text;
pub mod watch;

pub use error::{Error, Result};
