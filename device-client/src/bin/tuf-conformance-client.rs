//! The tuf-conformance client-under-test CLI (CLIENT-CLI.md): `init`, `refresh`,
//! `download`. Exit 0 on success, 1 on any failure.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use device_client::tuf_http::TufHttpClient;
use protocol::tuf::Config;

#[derive(Parser)]
#[command(about = "TUF client for the tuf-conformance test suite")]
struct Cli {
    /// Directory holding trusted metadata (root.json, timestamp.json, ...).
    #[arg(long)]
    metadata_dir: PathBuf,
    /// Base URL of the repository's metadata.
    #[arg(long)]
    metadata_url: Option<String>,
    /// Target path to download; repeatable, processed in order.
    #[arg(long)]
    target_name: Vec<String>,
    /// Base URL of the repository's targets.
    #[arg(long)]
    target_base_url: Option<String>,
    /// Directory for downloaded targets.
    #[arg(long)]
    target_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trust the given root.json (copied, not checked).
    Init {
        /// The initial trusted root.
        trusted_root: PathBuf,
    },
    /// Update top-level metadata.
    Refresh,
    /// Download the --target-name targets.
    Download,
}

fn config() -> Config {
    device_client::tuf_config()
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { trusted_root } => {
            let bytes = std::fs::read(&trusted_root).with_context(|| format!("reading {}", trusted_root.display()))?;
            host::fs::write_atomic(&cli.metadata_dir.join("root.json"), &bytes, host::fs::PUBLIC)?;
        }
        Command::Refresh => {
            let url = cli.metadata_url.ok_or_else(|| anyhow!("--metadata-url required"))?;
            TufHttpClient::new(&cli.metadata_dir, &url, config())?.refresh()?;
        }
        Command::Download => {
            let url = cli.metadata_url.ok_or_else(|| anyhow!("--metadata-url required"))?;
            let base = cli.target_base_url.ok_or_else(|| anyhow!("--target-base-url required"))?;
            let dir = cli.target_dir.ok_or_else(|| anyhow!("--target-dir required"))?;
            let mut client = TufHttpClient::new(&cli.metadata_dir, &url, config())?;
            for name in &cli.target_name {
                let target = client.find_target(name)?.ok_or_else(|| anyhow!("{name} not found in repository"))?;
                if TufHttpClient::cached_target(&dir, &target).is_none() {
                    client.download_target(&target, &base, &dir)?;
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tuf-conformance-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}
