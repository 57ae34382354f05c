//! `ingest-coordinator`: serves the ingest API (the default), seeds the reference data, or
//! merges partitions down to a bound at once (what the running coordinator does by itself).

use clap::{Parser, Subcommand};
use ingest_coordinator::config::Config;
use ingest_coordinator::pipeline::merge::Pass;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "Takes rates batches, splits them into chunks, commits them whole"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Migrate, then load regions.csv and ports.csv from a folder.
    Seed {
        /// Folder with regions.csv and ports.csv.
        #[arg(long, default_value = "data/ratestask")]
        data_dir: PathBuf,
    },
    /// Merge the partitions of prices_by_batch down to --partitions-max now, then exit.
    Merge,
}

#[tokio::main]
async fn main() -> ExitCode {
    ingest_core::process::init_logs();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).await,
        Command::Seed { data_dir } => seed(cli.config, data_dir).await,
        Command::Merge => merge(cli.config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ingest-coordinator: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let running = ingest_coordinator::app::start(config).await?;
    running
        .run_until(ingest_core::process::shutdown_signal())
        .await
}

async fn seed(config: Config, data_dir: PathBuf) -> anyhow::Result<()> {
    let mut client = ingest_core::db::connect(&config.database_url).await?;
    ingest_core::schema::migrate(&mut client).await?;
    let (regions, ports) = ingest_coordinator::seed::seed(&mut client, &data_dir).await?;
    println!(
        "seeded {regions} regions and {ports} ports from {}",
        data_dir.display()
    );
    Ok(())
}

async fn merge(config: Config) -> anyhow::Result<()> {
    config.check()?;
    let mut client = ingest_core::db::connect(&config.database_url).await?;
    ingest_core::schema::migrate(&mut client).await?;
    loop {
        let (count, merged) = ingest_coordinator::pipeline::merge::pass(
            &mut client,
            config.partitions_max,
            config.merge_max_bytes,
            config.merge_lock,
        )
        .await?;
        match merged {
            Pass::Merged(merged) => println!(
                "merged {} partitions ({} batches, {} rows) into {}",
                merged.partitions, merged.batches, merged.rows, merged.table
            ),
            Pass::Busy => {
                println!(
                    "{count} partitions (at most {}): another coordinator is merging them now",
                    config.partitions_max
                );
                return Ok(());
            }
            Pass::Nothing => {
                println!("{count} partitions (at most {})", config.partitions_max);
                return Ok(());
            }
        }
    }
}
