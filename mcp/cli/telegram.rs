//! `t9-ipc telegram pair|status|unpair`: allow a Telegram account without hunting for ids,
//! see the setup, take an account away. The token stays in the environment (`IPC_TG_TOKEN`);
//! nothing here writes it anywhere.
//!
//! Pairing and the single poller: `pair` takes its turn for the poll lock like a server. When
//! a server reads Telegram already, that server sees the code arrive and records it in
//! `<data>/telegram/pairing/<CODE>.arrived`; otherwise this command reads Telegram itself
//! (handling any other update exactly as a server would) until the code arrives. Either way
//! the command watches `pairing/` and saves the user once the code is there. With federation
//! on, the command also waits for the poller's lease before it reads Telegram, and offers
//! the code in the hub, so that the server of another machine that reads Telegram hands its
//! arrival over (`telegram::pairing`); the user is saved on this machine.

use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::Local;
use clap::{Args, Subcommand};
use t9_ipc::config::Config;
use t9_ipc::telegram::{Access, CodeWatch, PairedUser, Telegram, topics_of};
use tokio_util::sync::CancellationToken;

/// `t9-ipc telegram`.
#[derive(Debug, Args)]
pub struct TelegramArgs {
    #[command(subcommand)]
    pub command: TelegramCommand,
}

#[derive(Debug, Subcommand)]
pub enum TelegramCommand {
    /// Print a code to send to the bot from the Telegram account to allow; save that account.
    Pair,
    /// Show the bot, the chat, the allowed users and the forum topics.
    Status,
    /// Remove a paired user id.
    Unpair {
        /// The Telegram user id, as `telegram status` lists it.
        id: i64,
    },
}

pub async fn run(args: TelegramArgs, config: &Config) -> anyhow::Result<()> {
    match args.command {
        TelegramCommand::Pair => pair(config).await,
        TelegramCommand::Status => status(config).await,
        TelegramCommand::Unpair { id } => unpair(config, id),
    }
}

fn access(config: &Config) -> anyhow::Result<Access> {
    Access::open(&config.data_dir)
        .with_context(|| format!("opening {}", config.data_dir.join("telegram").display()))
}

fn telegram(config: &Config) -> anyhow::Result<Telegram> {
    let Some(settings) = config.telegram.as_ref() else {
        bail!("IPC_TG_TOKEN is not set: set it to the bot token from @BotFather, then try again");
    };
    Telegram::new(settings, &config.data_dir).context("setting up Telegram")
}

async fn pair(config: &Config) -> anyhow::Result<()> {
    let telegram = telegram(config)?;
    // Federation on: this command polls only while it holds the poller's lease, like a
    // server, and the code travels through the hub to whichever machine polls.
    if let Ok(Some(federation)) = &config.federation {
        telegram.federate(federation);
    }
    let access = access(config)?;
    let bot = telegram.bot_name().await.unwrap_or_else(|e| {
        eprintln!("t9-ipc: getMe failed ({e}); pairing goes on");
        "your bot".to_owned()
    });
    let (code, expires) = access.new_code(Local::now())?;
    let hub = telegram.offer_code(&code, expires).await;
    println!(
        "Send this code to {bot} from the Telegram account to allow (in a group: /pair {code}):\n\n    {code}\n\nIt expires at {} (in {} minutes). Waiting for it…",
        expires.format("%H:%M:%S"),
        t9_ipc::telegram::PAIR_CODE_LIFE.num_minutes()
    );
    let cancel = CancellationToken::new();
    let poller = {
        let (t, cancel) = (telegram.clone(), cancel.child_token());
        tokio::spawn(async move { t.answer(cancel).await })
    };
    let carried = hub.map(|watch| tokio::spawn(carry(watch, access.clone(), code.clone())));
    let arrived = wait_for(&access, &code, expires).await;
    cancel.cancel();
    let _ = poller.await;
    if let Some(carried) = carried {
        carried.abort();
        telegram.withdraw_code(&code).await;
    }
    access.drop_code(&code);
    let Some(arrival) = arrived? else {
        bail!(
            "the code {code} expired before it arrived; nothing was saved. Run `t9-ipc telegram pair` again"
        );
    };
    access.pair(PairedUser {
        user_id: arrival.user_id,
        chat_id: arrival.chat_id,
        name: arrival.name.clone(),
        paired_at: Local::now().to_rfc3339(),
    })?;
    println!(
        "Saved in {}: user {} ({}) may write to sessions and approve tool calls; chat {}.",
        config.data_dir.join("telegram/paired.json").display(),
        arrival.user_id,
        if arrival.name.is_empty() {
            "no name"
        } else {
            &arrival.name
        },
        arrival.chat_id
    );
    match config.telegram.as_ref().and_then(|t| t.chat) {
        Some(chat) if chat != arrival.chat_id => println!(
            "IPC_TG_CHAT is {chat}: escalations keep going there; this user is heard there."
        ),
        Some(_) => {}
        None => println!(
            "IPC_TG_CHAT is not set: escalations go to chat {} now.",
            arrival.chat_id
        ),
    }
    println!("Sessions started from now on relay tool-permission prompts to Telegram.");
    Ok(())
}

/// Records the arrival of `code` that another machine's poller put in the hub, where
/// [`wait_for`] sees it.
async fn carry(mut watch: CodeWatch, access: Access, code: String) {
    if let Some(arrival) = watch.arrival().await
        && let Err(err) = access.record_arrival(&code, &arrival)
    {
        eprintln!("t9-ipc: recording the pairing the hub brought: {err:#}");
    }
}

/// Waits for `code`'s arrival (watching `pairing/`), until `expires` or Ctrl-C.
async fn wait_for(
    access: &Access,
    code: &str,
    expires: chrono::DateTime<Local>,
) -> anyhow::Result<Option<t9_ipc::telegram::Arrival>> {
    let (_watcher, mut changes) = t9_ipc::watch::watch(access.pairing_dir())?;
    let left = (expires - Local::now()).to_std().unwrap_or(Duration::ZERO);
    let deadline = tokio::time::Instant::now() + left;
    loop {
        if let Some(arrival) = access.arrival(code) {
            return Ok(Some(arrival));
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return Ok(None),
            _ = tokio::signal::ctrl_c() => bail!("interrupted; nothing was saved"),
            changed = changes.changed() => {
                if changed.is_none() {
                    bail!("watching {} stopped", access.pairing_dir().display());
                }
                changes.take();
            }
        }
    }
}

async fn status(config: &Config) -> anyhow::Result<()> {
    let access = access(config)?;
    let env_allow = config
        .telegram
        .as_ref()
        .map(|t| t.allow.clone())
        .unwrap_or_default();
    match config.telegram.as_ref() {
        None => println!("bot: none (IPC_TG_TOKEN is not set)"),
        Some(_) => {
            let telegram = telegram(config)?;
            match telegram.bot_name().await {
                Ok(name) => println!("bot: {name}"),
                Err(e) => println!("bot: getMe failed: {e}"),
            }
            match (
                config.telegram.as_ref().and_then(|t| t.chat),
                telegram.chat(),
            ) {
                (Some(chat), _) => println!("chat: {chat} (IPC_TG_CHAT)"),
                (None, Some(chat)) => println!("chat: {chat} (from the latest pairing)"),
                (None, None) => println!("chat: none (set IPC_TG_CHAT, or pair)"),
            }
            if let Some(chat) = telegram.chat() {
                let topics = topics_of(&config.data_dir, chat);
                if topics.is_empty() {
                    println!("topics: none");
                }
                for (session, thread) in topics {
                    println!("topic: {session} (thread {thread})");
                }
            }
        }
    }
    let paired = access.paired();
    if env_allow.is_empty() && paired.is_empty() {
        println!("allowed users: none named: tool-permission prompts are not relayed");
    }
    for id in &env_allow {
        println!("allowed: {id} (IPC_TG_ALLOW)");
    }
    for u in &paired {
        println!(
            "allowed: {} {} (paired {}, chat {})",
            u.user_id,
            u.name,
            u.paired_at.get(..16).unwrap_or(&u.paired_at),
            u.chat_id
        );
    }
    Ok(())
}

fn unpair(config: &Config, id: i64) -> anyhow::Result<()> {
    if access(config)?.unpair(id)? {
        println!("Removed user {id}: they may no longer write to sessions or approve tool calls.");
        Ok(())
    } else {
        bail!("user {id} is not paired (`t9-ipc telegram status` lists who is)")
    }
}
