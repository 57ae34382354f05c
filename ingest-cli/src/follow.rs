//! Following a batch to its end: polls its status, shows progress (a live bar on a terminal, a
//! plain line every few seconds otherwise) and turns the final state into the command's outcome.

use crate::api::{Coordinator, Failure};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ingest_wire::{BatchId, BatchState, BatchStatus, CommitStep, OutageStep, RowError};
use std::time::{Duration, Instant};

/// How often the status is read.
const POLL: Duration = Duration::from_millis(250);

/// How often a plain progress line is printed when there is no terminal to draw on.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

/// Input errors printed before the rest are only counted.
const ERRORS_SHOWN: usize = 20;

/// Polls batch `id` until it is final or `timeout` passes, showing progress; succeeds when the
/// batch committed.
pub async fn follow(api: &Coordinator, id: BatchId, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut progress = Progress::new(id);
    let mut state = None;
    loop {
        match api.status(id).await {
            Ok(status) if status.is_final() => {
                progress.finish();
                return conclude(&status);
            }
            Ok(status) => {
                progress.show(&status);
                state = Some(status.state);
            }
            // A restarting coordinator: keep asking until the deadline.
            Err(error) if is_transient(&error) => progress.waiting(&error),
            Err(error) => {
                progress.finish();
                return Err(error);
            }
        }
        if Instant::now() >= deadline {
            progress.finish();
            let state = state.map_or("unknown", BatchState::as_str);
            anyhow::bail!(
                "batch {id} is still {state} after {} s; keep following it with `ingest wait {id}`",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The outcome of a final batch: the committed line, or its errors and a failure.
pub fn conclude(status: &BatchStatus) -> anyhow::Result<()> {
    let id = status.id;
    if status.state == BatchState::Committed {
        let rows = status.rows_total.unwrap_or(status.rows_loaded);
        let commit = status
            .commit_seconds
            .map_or("?".to_string(), |seconds| format!("{seconds:.2}"));
        let rate = status
            .rows_per_second
            .map_or("?".to_string(), |rate| format!("{rate:.0}"));
        println!("batch {id} committed: {rows} rows visible in prices (commit {commit} s, {rate} rows/s)");
        if let Some(old) = status.replaces {
            println!("batch {id} replaced batch {old}: its rows left prices in the same step");
        }
        if status.indexed == Some(false) {
            println!(
                "batch {id}: its read index is still being built (reads of it scan meanwhile)"
            );
        }
        return Ok(());
    }
    if status.state == BatchState::Retracted {
        match status.replaced_by {
            Some(by) => anyhow::bail!(
                "batch {id} was committed, then replaced by batch {by}: none of its rows is in prices"
            ),
            None => anyhow::bail!(
                "batch {id} was committed, then retracted: none of its rows is in prices"
            ),
        }
    }
    print_errors(&status.errors, status.error_count);
    let reason = status.error.as_deref().unwrap_or("no reason given");
    anyhow::bail!("batch {id} {}: {reason}", status.state)
}

/// Prints the first input errors on stderr, one a line, and how many more there are.
pub fn print_errors(errors: &[RowError], error_count: u64) {
    for error in errors.iter().take(ERRORS_SHOWN) {
        eprintln!("{error}");
    }
    let shown = errors.len().min(ERRORS_SHOWN) as u64;
    if error_count > shown {
        eprintln!("… and {} more", error_count - shown);
    }
}

/// True when the error says the coordinator may answer later.
fn is_transient(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<Failure>()
        .is_some_and(Failure::is_transient)
}

/// The progress display of one batch.
struct Progress {
    /// The batch id.
    id: BatchId,
    /// The bar, drawn on stdout; hidden when stdout is not a terminal.
    bar: ProgressBar,
    /// When the last plain line was printed (only used when the bar is hidden).
    last_line: Option<Instant>,
}

impl Progress {
    /// A spinner until the batch's row count is known.
    fn new(id: BatchId) -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        bar.set_style(spinner_style());
        bar.set_prefix(id.to_string());
        bar.set_message("reading its status");
        if !bar.is_hidden() {
            bar.enable_steady_tick(Duration::from_millis(100));
        }
        Progress {
            id,
            bar,
            last_line: None,
        }
    }

    /// Shows a status of the batch.
    fn show(&mut self, status: &BatchStatus) {
        match status.rows_total {
            Some(total) => {
                if self.bar.length() != Some(total) {
                    self.bar.set_style(bar_style());
                    self.bar.set_length(total);
                }
                self.bar.set_position(status.rows_loaded.min(total));
            }
            None => self.bar.set_position(status.rows_loaded),
        }
        self.bar.set_message(summary(status));
        self.plain(|| plain_line(status));
    }

    /// Shows that the coordinator did not answer and is asked again.
    fn waiting(&mut self, error: &anyhow::Error) {
        self.bar
            .set_message(format!("waiting for the coordinator: {error}"));
        let id = self.id;
        self.plain(|| format!("batch {id}: waiting for the coordinator: {error}"));
    }

    /// Prints a plain line when there is no bar to draw and the last line is old enough.
    fn plain(&mut self, line: impl FnOnce() -> String) {
        if !self.bar.is_hidden() {
            return;
        }
        let now = Instant::now();
        if self.last_line.is_some_and(|last| now - last < PLAIN_EVERY) {
            return;
        }
        self.last_line = Some(now);
        println!("{}", line());
    }

    /// Removes the bar, leaving the terminal for the final line.
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Before the row count is known.
fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} batch {prefix}: {pos} rows loaded · {msg}")
        .expect("the spinner template is valid")
}

/// Once the row count is known.
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} batch {prefix} [{bar:30.cyan/blue}] {pos}/{len} rows · {msg}",
    )
    .expect("the bar template is valid")
    .progress_chars("=> ")
}

/// State, chunks, rate and ETA: `loading · 6/12 chunks · 51234 rows/s · ETA 1s`.
fn summary(status: &BatchStatus) -> String {
    let mut parts = vec![
        status.state.to_string(),
        format!("{}/{} chunks", status.chunks.loaded, status.chunks.total),
    ];
    if let Some(rate) = status.rows_per_second {
        parts.push(format!("{rate:.0} rows/s"));
    }
    if let Some(eta) = eta(status) {
        parts.push(format!("ETA {}", short_duration(eta)));
    }
    if let Some(commit) = commit(status) {
        parts.push(commit);
    }
    if let Some(outage) = outage(status) {
        parts.push(outage);
    }
    parts.join(" · ")
}

/// `batch 3 loading: 30000/56689 rows, 6/12 chunks, 51234 rows/s, ETA 1s`.
fn plain_line(status: &BatchStatus) -> String {
    let total = status
        .rows_total
        .map_or("?".to_string(), |total| total.to_string());
    let mut line = format!(
        "batch {} {}: {}/{total} rows, {}/{} chunks",
        status.id, status.state, status.rows_loaded, status.chunks.loaded, status.chunks.total
    );
    if let Some(rate) = status.rows_per_second {
        line.push_str(&format!(", {rate:.0} rows/s"));
    }
    if let Some(eta) = eta(status) {
        line.push_str(&format!(", ETA {}", short_duration(eta)));
    }
    if let Some(commit) = commit(status) {
        line.push_str(&format!(", {commit}"));
    }
    if let Some(outage) = outage(status) {
        line.push_str(&format!(", {outage}"));
    }
    line
}

/// `commit: index (building index: sorting live tuples) 40%`, while a coordinator commits.
fn commit(status: &BatchStatus) -> Option<String> {
    let progress = status.commit.as_ref()?;
    let step = match progress.step {
        CommitStep::Index => "index",
        CommitStep::ForeignKeys => "foreign keys",
        CommitStep::Attach => "attach",
    };
    let share = match (progress.done, progress.total) {
        (Some(done), Some(total)) if total > 0 => {
            format!(" {}%", (done.min(total) * 100 / total))
        }
        _ => String::new(),
    };
    Some(format!("commit: {step} ({}){share}", progress.phase))
}

/// `commit attempt 2 met an outage, retrying: …`, while the batch is in that step.
fn outage(status: &BatchStatus) -> Option<String> {
    let outage = status.outage.as_ref()?;
    let current = matches!(
        (status.state, outage.step),
        (BatchState::Committing, OutageStep::Commit) | (BatchState::Loading, OutageStep::Load)
    );
    current.then(|| {
        format!(
            "{} attempt {} met an outage, retrying: {}",
            outage.step, outage.attempt, outage.reason
        )
    })
}

/// The ETA while rows are left to load (the coordinator says 0 during the commit).
fn eta(status: &BatchStatus) -> Option<f64> {
    let rows_left = status
        .rows_total
        .is_some_and(|total| status.rows_loaded < total);
    status.eta_seconds.filter(|_| rows_left)
}

/// Seconds as `42s`, `3m05s` or `2h07m`.
fn short_duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0).ceil() as u64;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::short_duration;

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(0.2), "1s");
        assert_eq!(short_duration(59.0), "59s");
        assert_eq!(short_duration(185.0), "3m05s");
        assert_eq!(short_duration(7620.0), "2h07m");
    }
}
