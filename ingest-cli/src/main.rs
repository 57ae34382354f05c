//! `ingest`: submits a rates file to the ingest coordinator and follows it to commit with a live
//! progress bar; also shows, lists, waits for, cancels and retracts batches. On failure it exits
//! non-zero with one line `ingest: <reason>` on stderr.

mod api;
mod follow;
mod submit;

use api::{Cancelled, Coordinator, Retracted};
use clap::{Args, Parser, Subcommand};
use ingest_wire::{BatchId, BatchState, IdempotencyKey};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The command line.
#[derive(Parser)]
#[command(
    name = "ingest",
    version,
    about = "Submit rates batches to the ingest coordinator and follow them to commit"
)]
struct Cli {
    /// Where the coordinator listens.
    #[arg(
        long,
        env = "INGEST_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,

    /// Bearer token for submit, cancel and retract (prefer the environment variable: flags show
    /// in `ps`).
    #[arg(long, env = "INGEST_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,

    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
enum Command {
    /// Stream a CSV file to the coordinator, then follow the batch to commit.
    Submit {
        /// The CSV file (orig_code,dest_code,day,price); `.gz` files are sent compressed.
        file: PathBuf,
        /// The file is gzip-compressed (implied by a `.gz` name).
        #[arg(long)]
        gzip: bool,
        /// Makes a retried submit return the earlier batch instead of loading the file twice.
        #[arg(long, value_name = "KEY", value_parser = parse_key)]
        idempotency_key: Option<IdempotencyKey>,
        /// Replace this committed batch: when the new batch commits, the old one's rows leave
        /// prices in the same transaction (readers see one or the other, never both).
        #[arg(long, value_name = "ID", value_parser = clap::value_parser!(i64).range(1..))]
        replaces: Option<i64>,
        /// Return once the file is accepted instead of following the batch.
        #[arg(long)]
        no_wait: bool,
        /// While the coordinator cannot take the file (unreachable, restarting, 5xx), send it
        /// again with the same Idempotency-Key for up to this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        retry_for: u64,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Print a batch's status as JSON.
    Status {
        /// The batch id.
        id: i64,
    },
    /// Follow a batch until it is final (committed, failed, cancelled or retracted).
    Wait {
        /// The batch id.
        id: i64,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// List the newest batches, one a line.
    List {
        /// How many batches (1 to 100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Cancel a batch that is not committed yet.
    Cancel {
        /// The batch id.
        id: i64,
    },
    /// Retract a committed batch: take all its rows out of prices, in one step for readers.
    Retract {
        /// The batch id.
        id: i64,
    },
}

/// An `--idempotency-key`, checked as the coordinator checks it.
fn parse_key(key: &str) -> Result<IdempotencyKey, String> {
    IdempotencyKey::parse(key).map_err(|invalid| invalid.to_string())
}

/// How long to follow a batch.
#[derive(Args)]
struct FollowArgs {
    /// Give up following after this many seconds (the batch carries on).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    timeout: u64,
}

impl FollowArgs {
    /// The timeout as a duration.
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

/// Parses the command line, runs the command, and turns a failure into one line on stderr.
#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version.
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            let text = error.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!("ingest: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, whatever the coordinator's message held.
            let reason = format!("{error:#}");
            let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!("ingest: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let api = Coordinator::new(&cli.url, cli.token)?;
    match cli.command {
        Command::Submit {
            file,
            gzip,
            idempotency_key,
            replaces,
            no_wait,
            retry_for,
            follow,
        } => {
            let submission = submit::Submission {
                file: &file,
                gzip,
                idempotency_key: idempotency_key.as_ref(),
                replaces: replaces.map(BatchId),
                retry_for: Duration::from_secs(retry_for),
            };
            submit_and_follow(&api, &submission, no_wait, &follow).await
        }
        Command::Status { id } => show_status(&api, BatchId(id)).await,
        Command::Wait { id, follow } => follow::follow(&api, BatchId(id), follow.timeout()).await,
        Command::List { limit } => list(&api, limit).await,
        Command::Cancel { id } => cancel(&api, BatchId(id)).await,
        Command::Retract { id } => retract(&api, BatchId(id)).await,
    }
}

/// `ingest submit`: sends the file, then follows the batch unless it is final or `--no-wait`.
async fn submit_and_follow(
    api: &Coordinator,
    submission: &submit::Submission<'_>,
    no_wait: bool,
    follow: &FollowArgs,
) -> anyhow::Result<()> {
    let status = submit::submit(api, submission).await?;
    if status.is_final() {
        follow::conclude(&status)
    } else if no_wait {
        Ok(())
    } else {
        follow::follow(api, status.id, follow.timeout()).await
    }
}

/// `ingest status`: the coordinator's answer as it is, pretty-printed.
async fn show_status(api: &Coordinator, id: BatchId) -> anyhow::Result<()> {
    let status = api.status_json(id).await?;
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}

/// `ingest cancel`: a batch already final cannot be cancelled, and that is an error.
async fn cancel(api: &Coordinator, id: BatchId) -> anyhow::Result<()> {
    match api.cancel(id).await? {
        Cancelled::Now(status) => {
            println!("batch {} cancelled", status.id);
            Ok(())
        }
        Cancelled::AlreadyFinal(status) => {
            anyhow::bail!("batch {} is already {}", status.id, status.state)
        }
    }
}

/// `ingest retract`: only a committed batch can be; otherwise the error says what it is instead.
async fn retract(api: &Coordinator, id: BatchId) -> anyhow::Result<()> {
    match api.retract(id).await? {
        Retracted::Now(status) => {
            let rows = status.rows_total.unwrap_or(status.rows_loaded);
            println!(
                "batch {} retracted: {rows} rows taken out of prices",
                status.id
            );
            Ok(())
        }
        Retracted::NotCommitted(status) if status.state == BatchState::Retracted => {
            match status.replaced_by {
                Some(by) => anyhow::bail!(
                    "batch {} is already retracted: batch {by} replaced it",
                    status.id
                ),
                None => anyhow::bail!("batch {} is already retracted", status.id),
            }
        }
        Retracted::NotCommitted(status) => anyhow::bail!(
            "batch {} is {}, not committed: only a committed batch can be retracted",
            status.id,
            status.state
        ),
    }
}

/// `ingest list`: id, state, rows loaded out of total, creation time.
async fn list(api: &Coordinator, limit: u32) -> anyhow::Result<()> {
    for batch in api.list(limit).await? {
        let total = batch
            .rows_total
            .map_or("?".to_string(), |total| total.to_string());
        println!(
            "{:>6}  {:<10}  {:>21}  {}",
            batch.id,
            batch.state,
            format!("{}/{total}", batch.rows_loaded),
            batch.created_at
        );
    }
    Ok(())
}
