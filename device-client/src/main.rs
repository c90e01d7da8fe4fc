//! `device-client`: the otamesh Linux device agent.
//!
//! ```text
//! device-client run    [--config FILE] [--data-dir DIR] [--edge quic://IP:PORT ...] [--no-mdns]
//! device-client check  [same]            one update attempt (through its reboots), then exit
//! device-client status [--config FILE | --data-dir DIR] [--json]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use device_client::agent::{self, Agent, Mode};
use device_client::config::AgentConfig;

#[derive(Parser)]
#[command(
    name = "device-client",
    version,
    about = "otamesh Linux device agent: fetch signed releases from edge \
    nodes, install into the inactive slot, health-check, commit or roll back"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: check for updates periodically and install them.
    Run(Settings),
    /// Make one update attempt (including the reboot into the new slot and its trial), then exit.
    /// Exits 0 when the device ends up-to-date or committed, 1 otherwise.
    Check(Settings),
    /// Print the agent's last status.
    Status {
        #[command(flatten)]
        settings: Settings,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct Settings {
    /// TOML config (see device-client/src/config.rs for every key and its default).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides `edges` (repeatable): quic://IP:PORT or tcp://IP:PORT.
    #[arg(long = "edge")]
    edges: Vec<String>,
    /// Do not look for edge nodes by mDNS (sets `mdns = false`); only `edges` are used.
    #[arg(long)]
    no_mdns: bool,
    /// Overrides `trusted_root`.
    #[arg(long)]
    trusted_root: Option<PathBuf>,
}

impl Settings {
    fn resolve(&self) -> Result<AgentConfig> {
        let mut config = match &self.config {
            Some(path) => AgentConfig::from_file(path)?,
            None => AgentConfig::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if !self.edges.is_empty() {
            config.edges = self.edges.clone();
        }
        if self.no_mdns {
            config.mdns = false;
        }
        if let Some(root) = &self.trusted_root {
            config.trusted_root = Some(root.clone());
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli: Cli = host::cli::parse_args();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            host::cli::print_error(&e);
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Status { settings, json } => {
            let config = settings.resolve()?;
            let status = agent::read_status(&config.data_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(settings) => {
            let agent = Agent::open(settings.resolve()?, Mode::Run)?;
            runtime()?.block_on(agent.run())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(settings) => {
            let agent = Agent::open(settings.resolve()?, Mode::Check)?;
            let result = runtime()?.block_on(agent.run())?;
            print_status(&result.status);
            if result.record.last_error.is_none() {
                return Ok(ExitCode::SUCCESS);
            }
            // The status above is the report; stderr still ends in one `error:` line.
            let error = result.status["error"].as_str().unwrap_or("unknown");
            eprintln!(
                "error: the update attempt failed ({error}); check that an edge node is reachable, then run `check` again"
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

fn print_status(status: &serde_json::Value) {
    let s = |k: &str| status[k].as_str().unwrap_or("-").to_string();
    println!("state:    {}", s("state"));
    println!("version:  {} (slot {})", s("version"), s("active_slot"));
    if let Some(target) = status["target"].as_object() {
        println!("target:   {}", target.get("version").and_then(|v| v.as_str()).unwrap_or("-"));
    }
    let p = &status["progress"];
    println!(
        "progress: {}/{} chunks, {} bytes fetched, {} bytes reused",
        p["chunks_done"], p["chunk_count"], p["bytes_fetched"], p["bytes_reused"]
    );
    if let Some(e) = status["error"].as_str() {
        println!("error:    {e}");
    }
    if let Some(h) = status["health"].as_str() {
        println!("health:   {h}");
    }
}
