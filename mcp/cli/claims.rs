//! `claims`: the live file claims of the mailbox, for people (`--json` for scripts).

use anyhow::Context as _;
use chrono::Local;
use clap::Args;
use t9_ipc::config::Config;
use t9_ipc::coord::claims::Claims;

/// `t9-ipc claims`.
#[derive(Debug, Args)]
#[command(
    after_help = "Sessions claim files with the t9_ipc_claim tool; each claim is a file in \
<mailbox>/claims/. A claim ends when released, when its time runs out, or when its session ends."
)]
pub struct ClaimsArgs {
    /// Print a JSON array (session, pid, mode, paths, note, created, expires, file).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ClaimsArgs, config: &Config) -> anyhow::Result<()> {
    let claims = Claims::new(&config.data_dir);
    let live = claims
        .live(Local::now())
        .with_context(|| format!("reading {}", claims.dir().display()))?;
    if args.json {
        let rows: Vec<serde_json::Value> = live
            .iter()
            .map(|c| {
                serde_json::json!({
                    "session": c.session, "pid": c.pid, "mode": c.mode, "paths": c.paths,
                    "note": c.note, "created": c.created, "expires": c.expires,
                    "file": claims.dir().join(format!("{}.md", c.id)),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{}", crate::shared::coord::format_claims(&live, 0));
    }
    Ok(())
}
