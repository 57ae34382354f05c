//! `ingest submit`: streams a file to the coordinator (never holding it in memory, with an
//! upload bar on a terminal) and says what became of it.

use crate::api::{Coordinator, Failure, Submitted};
use crate::follow;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ingest_wire::{BatchId, BatchState, BatchStatus, IdempotencyKey};
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{self, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::io::ReaderStream;

/// Bytes read from the file at a time.
const READ_BYTES: usize = 64 * 1024;

/// After a broken upload, how long the coordinator gets to notice the break and settle the batch.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

/// The first pause before an upload is sent again; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(1);

/// The longest pause between two uploads.
const MAX_PAUSE: Duration = Duration::from_secs(15);

/// How often to look in the meantime.
const SETTLE_POLL: Duration = Duration::from_millis(200);

/// What to submit and how.
pub struct Submission<'a> {
    /// The CSV file.
    pub file: &'a Path,
    /// The file is gzip-compressed already (sent with `Content-Encoding: gzip`).
    pub gzip: bool,
    /// Makes a retried submit return the earlier batch instead of loading the file twice. When
    /// none is given one is made up, so that an upload whose answer was lost can be found again.
    pub idempotency_key: Option<&'a IdempotencyKey>,
    /// The committed batch this one replaces when it commits (`Replaces:`).
    pub replaces: Option<BatchId>,
    /// How long to keep sending the file again while the coordinator cannot take it.
    pub retry_for: Duration,
}

/// Submits the file and reports the answer; returns the batch's status (a refused file is an
/// error, after its input errors are printed). An upload that broke off, found no coordinator or
/// got a 5xx is sent again with the same Idempotency-Key — once the coordinator says it kept no
/// batch for the key — with growing pauses, for up to `retry_for`.
pub async fn submit(api: &Coordinator, submission: &Submission<'_>) -> anyhow::Result<BatchStatus> {
    let answer = upload_until_answered(api, submission).await?;
    report(answer)
}

/// Uploads the file, again after each transient failure, until the coordinator answers or
/// `retry_for` runs out (then the last failure is the error).
async fn upload_until_answered(
    api: &Coordinator,
    submission: &Submission<'_>,
) -> anyhow::Result<Submitted> {
    let key = submission
        .idempotency_key
        .cloned()
        .unwrap_or_else(fresh_key);
    let ours = submission.idempotency_key.is_none();
    let deadline = Instant::now() + submission.retry_for;
    let mut pause = FIRST_PAUSE;
    loop {
        let error = match upload(api, submission, &key).await {
            Ok(answer) => return Ok(answer),
            Err(error) if is_transient(&error) => error,
            Err(error) => return Err(error),
        };
        // The coordinator may have kept the upload (an answer lost on the way back) or be
        // settling it: ask by key before sending the file again.
        if let Some(answer) = settled(api, &key, ours).await {
            return Ok(answer);
        }
        if Instant::now() + pause > deadline {
            return Err(error);
        }
        eprintln!(
            "ingest: {}; sending the file again in {} s (same Idempotency-Key)",
            one_line(&error),
            pause.as_secs()
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Prints what became of the upload; a refused or cancelled batch is an error, after its input
/// errors.
fn report(answer: Submitted) -> anyhow::Result<BatchStatus> {
    match answer {
        Submitted::Accepted(status) => {
            let rows = status
                .rows_total
                .map_or("?".to_string(), |rows| rows.to_string());
            let replacing = status
                .replaces
                .map(|old| format!("; it replaces batch {old} when it commits"))
                .unwrap_or_default();
            println!(
                "batch {} accepted: {rows} rows in {} chunks{replacing}",
                status.id, status.chunks.total
            );
            Ok(status)
        }
        Submitted::Repeated(status) => {
            println!(
                "batch {} already has this Idempotency-Key; it is {}",
                status.id, status.state
            );
            Ok(status)
        }
        Submitted::Refused(status) => {
            follow::print_errors(&status.errors, status.error_count);
            let reason = status.error.as_deref().unwrap_or("no reason given");
            let verdict = if status.state == BatchState::Cancelled {
                "was cancelled"
            } else {
                "was refused"
            };
            anyhow::bail!("batch {} {verdict}: {reason}", status.id)
        }
    }
}

/// One upload of the whole file, streamed from disk with a bar.
async fn upload(
    api: &Coordinator,
    submission: &Submission<'_>,
    key: &IdempotencyKey,
) -> anyhow::Result<Submitted> {
    let path = submission.file;
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let metadata = file
        .metadata()
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(!metadata.is_dir(), "{} is a directory", path.display());

    // Pipes and other special files have no length: the bar becomes a byte counter.
    let size = metadata.is_file().then_some(metadata.len());
    let uploading = upload_bar(path, size);
    let reader = Counted {
        inner: file,
        bar: uploading.clone(),
    };
    let body = reqwest::Body::wrap_stream(ReaderStream::with_capacity(reader, READ_BYTES));
    let gzip = submission.gzip || path.extension().is_some_and(|ext| ext == "gz");
    let answer = api.submit(body, gzip, Some(key), submission.replaces).await;
    uploading.finish_and_clear();
    answer
}

/// Asks for the batch of `key` after an upload failed on the way. The coordinator stops reading
/// a body it does not need (a file refused early, a repeated key), answers and closes; the close
/// can reset the connection before its answer is read, so the batch may exist with an answer we
/// lost. An upload the coordinator saw break off, or gave up on, fails and its key is released:
/// no batch answers to the key then (`None`), and sending the file again with the same key is
/// safe. When the key is `ours` (made for this run), its batch is this upload's; a key given by
/// the user may belong to an earlier submit.
async fn settled(api: &Coordinator, key: &IdempotencyKey, ours: bool) -> Option<Submitted> {
    let deadline = Instant::now() + SETTLE_WITHIN;
    loop {
        let found = api.find_by_key(key).await.ok()??;
        match found {
            // The coordinator has not seen the end of the upload yet: give it a moment.
            status if status.state == BatchState::Receiving && Instant::now() < deadline => {
                tokio::time::sleep(SETTLE_POLL).await;
            }
            status if status.state == BatchState::Receiving => return None,
            status if !ours => return Some(Submitted::Repeated(status)),
            status if matches!(status.state, BatchState::Failed | BatchState::Cancelled) => {
                return Some(Submitted::Refused(status))
            }
            status => return Some(Submitted::Accepted(status)),
        }
    }
}

/// True when the coordinator may take the upload if it is sent again: the connection broke or
/// could not be made, or the coordinator answered 5xx.
fn is_transient(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<Failure>()
        .is_some_and(Failure::is_transient)
}

/// An error as one line.
fn one_line(error: &anyhow::Error) -> String {
    format!("{error:#}")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A key unique to this run, so a broken-off upload can be found again.
fn fresh_key() -> IdempotencyKey {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    IdempotencyKey::parse(&format!("ingest-cli-{}-{nanos}", std::process::id()))
        .expect("a made-up key is valid")
}

/// A bar of bytes sent, drawn on stdout when it is a terminal.
fn upload_bar(path: &Path, size: Option<u64>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stdout());
    let template = if size.is_some() {
        "{spinner} uploading {prefix} [{bar:30.cyan/blue}] {binary_bytes}/{binary_total_bytes} \
         {binary_bytes_per_sec}"
    } else {
        "{spinner} uploading {prefix}: {binary_bytes} {binary_bytes_per_sec}"
    };
    let style = ProgressStyle::with_template(template)
        .expect("the upload template is valid")
        .progress_chars("=> ");
    bar.set_style(style);
    let name = path.file_name().unwrap_or(path.as_os_str());
    bar.set_prefix(name.to_string_lossy().into_owned());
    bar
}

/// A reader that advances a progress bar by the bytes read through it.
struct Counted<R> {
    /// The file.
    inner: R,
    /// The bar to advance.
    bar: ProgressBar,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.bar.inc(read as u64);
        poll
    }
}
