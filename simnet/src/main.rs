//! `simnet`: run a scenario and write report.json and plots.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "simnet", version, about = "otamesh fleet simulator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// One variant per subcommand; each has its own `*Args` struct and handler below.
#[derive(Subcommand)]
enum Command {
    /// Simulate a scenario: the mesh, both baselines and the lower bound.
    Run(RunArgs),
    /// The live demo: a seeder, 2 sites × 2 edge nodes and 24 device agents as real processes
    /// on loopback install v1 then v2; prints who ended where and what crossed each backhaul.
    Demo(DemoArgs),
}

#[derive(Args)]
struct DemoArgs {
    /// Device agents.
    #[arg(long, default_value_t = 24)]
    devices: usize,
    /// Image size in MiB.
    #[arg(long, default_value_t = 32)]
    image_mib: usize,
    /// Keep the working directory (repository, edge stores, device slots) for inspection.
    #[arg(long)]
    keep: bool,
    /// After the summary, keep the mesh running until Ctrl-C, with a small firmware release for
    /// microcontrollers rolled out, the edge nodes' TCP device services on every interface,
    /// and the commands that install it with the MCU agent's host build (`mcu-agent`) printed.
    #[arg(long)]
    hold: bool,
}

fn demo(args: DemoArgs) -> ExitCode {
    if args.devices < 2 || args.image_mib == 0 || args.image_mib > 1024 {
        eprintln!("simnet demo: --devices must be at least 2 and --image-mib 1 to 1024");
        return ExitCode::from(2);
    }
    let config = simnet::demo::DemoConfig {
        devices: args.devices,
        image_mib: args.image_mib,
        keep: args.keep,
        hold: args.hold,
        ..simnet::demo::DemoConfig::default()
    };
    match simnet::demo::run(&config) {
        Ok(summary) => {
            print!("{}", summary.render());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("simnet demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// A built-in scenario (factory-small, fleet-1m, flaky-backhaul, bad-release, windows,
    /// offline-site) or a TOML file.
    scenario: String,
    /// Seed; defaults to the scenario's.
    #[arg(long)]
    seed: Option<u64>,
    /// Where report.json and the plots go.
    #[arg(long, default_value = "simnet-out")]
    out: PathBuf,
    /// Print report.json to stdout instead of the summary.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Demo(args) => demo(args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let scenario = match simnet::scenario::load(&args.scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("simnet: {e}");
            return ExitCode::from(2);
        }
    };
    let seed = args.seed.unwrap_or(scenario.seed);
    let started = std::time::Instant::now();
    let report = simnet::simulate(&scenario, seed, false);
    let wall = started.elapsed();
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("simnet: cannot create {}: {e}", args.out.display());
        return ExitCode::from(2);
    }
    let json = simnet::report_json(&report);
    let report_path = args.out.join("report.json");
    if let Err(e) = std::fs::write(&report_path, &json) {
        eprintln!("simnet: cannot write {}: {e}", report_path.display());
        return ExitCode::from(2);
    }
    let plots = simnet::plots::write_all(&report, &args.out);
    if args.json {
        print!("{json}");
    } else {
        print!("{}", simnet::report::summary_text(&report));
        println!("wrote {} ({:.1} s wall)", report_path.display(), wall.as_secs_f64());
        match &plots {
            Ok(w) if w.with_text => println!("plots: {} SVG + PNG files in {}", w.files.len() / 2, args.out.display()),
            Ok(w) => println!("plots: {} files without text (no TrueType font found; set SIMNET_FONT)", w.files.len()),
            Err(e) => eprintln!("simnet: plots failed: {e}"),
        }
    }
    if !report.checks.passed {
        eprintln!("simnet: invariant violated; replay with: simnet run {} --seed {seed}", args.scenario);
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
