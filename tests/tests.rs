//! Integration tests: the built `t9-ipc serve` driven over stdio, one temp mailbox a test.

mod util;

mod cli;
mod coord;
mod defaults;
mod delivery;
mod fed_marks;
mod fed_names;
mod fed_telegram;
mod federation;
mod format;
mod handshake;
mod hostile;
mod inbox;
mod messaging;
mod names;
mod props;
mod pull;
mod telegram;
mod trust;
mod verify;
