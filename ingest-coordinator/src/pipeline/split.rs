//! Split: turns the uploaded byte stream into validated, encoded chunks, on blocking threads.
//!
//! One thread reads the body (gunzipping it if asked), hashes it, checks the header and cuts
//! the lines into raw chunks of `chunk_rows` lines; rayon then validates, encodes and compresses
//! several raw chunks at once; finished chunks go, in order, to the publisher through a bounded channel. At
//! no point is more than a few chunks of the batch in memory, whatever the size of the file.
//!
//! The first bad line stops the publishing (nothing more is sent to workers); reading goes on to
//! report up to `max_errors` errors, then stops.

use super::body::{BodyReader, Source};
use super::copy_binary::CopyWriter;
use super::rates::{self, Header, Ports};
use ingest_core::chunk::ChunkSeq;
use ingest_core::chunk_copy::ChunkCopy;
use ingest_wire::{LineNumber, RowError};
use rayon::prelude::*;
use std::io::{self, BufRead, BufReader};
use tokio::sync::mpsc;

/// How to cut and check a batch.
#[derive(Debug, Clone)]
pub struct SplitSettings {
    /// Lines per chunk.
    pub chunk_rows: usize,
    /// The longest line accepted, in bytes.
    pub max_line_bytes: usize,
    /// Errors reported before reading stops.
    pub max_errors: usize,
    /// The largest body accepted, in bytes (compressed and uncompressed alike).
    pub max_body_bytes: u64,
    /// The body is gzip-compressed.
    pub gzip: bool,
}

/// A validated chunk, ready to publish.
#[derive(Debug)]
pub struct Chunk {
    /// The chunk's number within its batch.
    pub seq: ChunkSeq,
    /// The source line of its first row.
    pub first_line: LineNumber,
    /// The source line of its last row.
    pub last_line: LineNumber,
    /// Rows in the COPY stream.
    pub rows: u32,
    /// Its durable copy: the binary COPY stream, compressed, with its checksum (made here, on
    /// rayon, as the stream is encoded).
    pub copy: ChunkCopy,
}

/// Why reading stopped before the end of the body, if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cutoff {
    /// The body exceeded `max_body_bytes`.
    TooLarge,
    /// The client's upload broke off.
    Interrupted(String),
}

/// What splitting a whole body found.
#[derive(Debug, Default)]
pub struct SplitReport {
    /// Valid rows sent to the publisher.
    pub rows: u64,
    /// Chunks sent to the publisher.
    pub chunks: u32,
    /// Bytes of the body as received (compressed, if it was).
    pub bytes_received: u64,
    /// SHA-256 of the body as received, hex.
    pub sha256: String,
    /// The first `max_errors` problems, by line.
    pub errors: Vec<RowError>,
    /// Problems found before reading stopped.
    pub error_count: usize,
    /// Reading stopped at `max_errors` before the end of the file.
    pub errors_truncated: bool,
    /// Reading stopped for a reason that is not about the content.
    pub cutoff: Option<Cutoff>,
}

/// A run of raw lines waiting to be validated.
struct RawChunk {
    seq: i32,
    first_line: u64,
    /// The lines, each ending in `\n` (carriage returns already removed).
    text: Vec<u8>,
    lines: usize,
}

/// A raw chunk after validation.
struct Checked {
    chunk: Option<Chunk>,
    errors: Vec<RowError>,
    error_count: usize,
}

/// Reads the whole body and sends its chunks to `chunks` until the end or the first error.
/// Runs on a blocking thread.
pub fn split(
    body: BodyReader,
    settings: &SplitSettings,
    ports: &Ports,
    chunks: mpsc::Sender<Chunk>,
) -> SplitReport {
    let mut source = Source::new(body, settings.gzip, settings.max_body_bytes);
    let mut report = SplitReport::default();
    let result = Splitter::new(settings, ports, &chunks, &mut report).run(&mut source);
    (report.bytes_received, report.sha256) = source.into_body().finish();
    if let Err(error) = result {
        report.errors.push(error);
        report.error_count += 1;
    }
    report.errors.sort_by_key(|error| error.line);
    report.errors.truncate(settings.max_errors);
    report
}

/// The state of one pass over a body.
struct Splitter<'a> {
    settings: &'a SplitSettings,
    ports: &'a Ports,
    out: &'a mpsc::Sender<Chunk>,
    report: &'a mut SplitReport,
    next_seq: i32,
    /// Raw chunks waiting for the next parallel round.
    waiting: Vec<RawChunk>,
    /// The publisher hung up (it failed); stop sending.
    publisher_gone: bool,
}

impl<'a> Splitter<'a> {
    fn new(
        settings: &'a SplitSettings,
        ports: &'a Ports,
        out: &'a mpsc::Sender<Chunk>,
        report: &'a mut SplitReport,
    ) -> Splitter<'a> {
        Splitter {
            settings,
            ports,
            out,
            report,
            next_seq: 0,
            waiting: Vec::new(),
            publisher_gone: false,
        }
    }

    /// Reads every line. Err is a problem that stops reading (its RowError is reported too).
    fn run(&mut self, source: &mut Source) -> Result<(), RowError> {
        let mut reader = BufReader::with_capacity(1 << 20, source);
        let mut line = Vec::with_capacity(256);
        let header = self.read_header(&mut reader, &mut line)?;
        let mut blank_lines: Vec<u64> = Vec::new();
        let mut current: Option<RawChunk> = None;
        let mut data_lines: u64 = 0;
        let mut line_no: u64 = 1;
        loop {
            line_no += 1;
            if !self.read_line(&mut reader, &mut line, line_no)? {
                break;
            }
            if line.is_empty() {
                // Blank lines are fine at the end of a file; anywhere else they are an error.
                blank_lines.push(line_no);
                continue;
            }
            self.report_blank_lines(&mut blank_lines);
            data_lines += 1;
            self.add_line(&mut current, &line, line_no, &header);
            if self.publisher_gone {
                return Ok(());
            }
            if self.report.error_count >= self.settings.max_errors {
                self.report.errors_truncated = true;
                // Check the lines read so far first: a chunk not checked yet may hold errors on
                // earlier lines than those already found (blank lines are found as read).
                self.check_rest(current, &header);
                return Ok(());
            }
        }
        self.check_rest(current, &header);
        if data_lines == 0 {
            return Err(RowError::line(
                2,
                "no prices: the file has a header but no data lines",
            ));
        }
        Ok(())
    }

    /// Reads line 1 and its columns; a body without even that is refused.
    fn read_header(
        &mut self,
        reader: &mut BufReader<&mut Source>,
        line: &mut Vec<u8>,
    ) -> Result<Header, RowError> {
        if !self.read_line(reader, line, 1)? {
            return Err(RowError::line(
                1,
                format!(
                    "empty file: expected the header {}",
                    rates::COLUMNS.join(",")
                ),
            ));
        }
        Header::parse(line)
    }

    /// Reports the blank lines seen so far: a data line after them means they are not the end.
    #[inline]
    fn report_blank_lines(&mut self, blank_lines: &mut Vec<u64>) {
        for blank in blank_lines.drain(..) {
            self.error(RowError::line(blank, "empty line"));
        }
    }

    /// Appends a data line to the chunk being filled, and queues the chunk once it is full.
    #[inline]
    fn add_line(
        &mut self,
        current: &mut Option<RawChunk>,
        line: &[u8],
        line_no: u64,
        header: &Header,
    ) {
        let chunk_rows = self.settings.chunk_rows;
        let raw = current.get_or_insert_with(|| RawChunk {
            seq: 0,
            first_line: line_no,
            text: Vec::with_capacity(chunk_rows * 32),
            lines: 0,
        });
        raw.text.extend_from_slice(line);
        raw.text.push(b'\n');
        raw.lines += 1;
        if raw.lines == chunk_rows {
            let full = current.take().expect("a chunk is being filled");
            self.queue(full, header.clone());
        }
    }

    /// Queues the partly filled chunk, if any, and checks every chunk still waiting.
    fn check_rest(&mut self, current: Option<RawChunk>, header: &Header) {
        if let Some(rest) = current {
            self.queue(rest, header.clone());
        }
        self.flush(header);
    }

    /// Reads one line into `line` without its `\n` or `\r\n`. False at the end of the body.
    fn read_line(
        &mut self,
        reader: &mut BufReader<&mut Source>,
        line: &mut Vec<u8>,
        line_no: u64,
    ) -> Result<bool, RowError> {
        line.clear();
        loop {
            let available = match reader.fill_buf() {
                Ok(available) => available,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(self.read_failed(line_no, error)),
            };
            if available.is_empty() {
                return Ok(!line.is_empty());
            }
            let (take, done) = match memchr::memchr(b'\n', available) {
                Some(at) => (at + 1, true),
                None => (available.len(), false),
            };
            if line.len() + take > self.settings.max_line_bytes + 2 {
                return Err(RowError::line(
                    line_no,
                    format!(
                        "line is longer than the limit of {} bytes",
                        self.settings.max_line_bytes
                    ),
                ));
            }
            line.extend_from_slice(&available[..take]);
            reader.consume(take);
            if done {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(true);
            }
        }
    }

    /// Turns a read failure into the error to report, noting cut-offs that are not about content.
    fn read_failed(&mut self, line_no: u64, error: io::Error) -> RowError {
        let message = error.to_string();
        if error.kind() == io::ErrorKind::FileTooLarge {
            self.report.cutoff = Some(Cutoff::TooLarge);
            return RowError::line(
                line_no,
                format!(
                    "the body is larger than the limit of {} bytes",
                    self.settings.max_body_bytes
                ),
            );
        }
        if error.kind() == io::ErrorKind::ConnectionAborted {
            self.report.cutoff = Some(Cutoff::Interrupted(message.clone()));
            return RowError::line(line_no, format!("the upload broke off: {message}"));
        }
        if self.settings.gzip
            && matches!(
                error.kind(),
                io::ErrorKind::InvalidInput
                    | io::ErrorKind::InvalidData
                    | io::ErrorKind::UnexpectedEof
            )
        {
            return RowError::line(
                line_no,
                format!("the gzip stream is corrupt or truncated ({message})"),
            );
        }
        self.report.cutoff = Some(Cutoff::Interrupted(message.clone()));
        RowError::line(line_no, format!("the body could not be read: {message}"))
    }

    fn error(&mut self, error: RowError) {
        self.report.error_count += 1;
        self.keep([error]);
    }

    /// Adds errors, keeping the `max_errors` on the lowest lines: a chunk's errors arrive when
    /// it is checked, after blank lines further down were already reported.
    fn keep(&mut self, errors: impl IntoIterator<Item = RowError>) {
        self.report.errors.extend(errors);
        if self.report.errors.len() > self.settings.max_errors {
            self.report.errors.sort_by_key(|error| error.line);
            self.report.errors.truncate(self.settings.max_errors);
        }
    }

    /// Adds a full raw chunk to the round; runs the round when every rayon thread has one.
    fn queue(&mut self, mut raw: RawChunk, header: Header) {
        raw.seq = self.next_seq;
        self.next_seq += 1;
        self.waiting.push(raw);
        if self.waiting.len() >= rayon::current_num_threads().max(1) {
            self.flush(&header);
        }
    }

    /// Validates and encodes the waiting raw chunks in parallel, then sends them in order.
    fn flush(&mut self, header: &Header) {
        let waiting = std::mem::take(&mut self.waiting);
        let max_errors = self.settings.max_errors;
        let ports = self.ports;
        let checked: Vec<Checked> = waiting
            .into_par_iter()
            .map(|raw| check(raw, header, ports, max_errors))
            .collect();
        for checked in checked {
            self.report.error_count += checked.error_count;
            self.keep(checked.errors);
            let Some(chunk) = checked.chunk else { continue };
            if self.report.error_count > 0 || self.publisher_gone {
                continue;
            }
            self.report.rows += u64::from(chunk.rows);
            self.report.chunks += 1;
            if self.out.blocking_send(chunk).is_err() {
                self.publisher_gone = true;
            }
        }
    }
}

/// Validates and encodes one raw chunk (runs on rayon).
fn check(raw: RawChunk, header: &Header, ports: &Ports, max_errors: usize) -> Checked {
    let mut writer = CopyWriter::with_rows(raw.lines);
    let mut errors = Vec::new();
    let mut error_count = 0;
    let mut last_line = raw.first_line;
    for (offset, line) in raw.text[..raw.text.len().saturating_sub(1)]
        .split(|b| *b == b'\n')
        .enumerate()
    {
        let line_no = raw.first_line + offset as u64;
        last_line = line_no;
        match rates::parse_line(line, line_no, header, ports) {
            Ok(price) if error_count == 0 => writer.push(&price),
            Ok(_) => {}
            Err(error) => {
                error_count += 1;
                if errors.len() < max_errors {
                    errors.push(error);
                }
            }
        }
    }
    let chunk = (error_count == 0).then(|| Chunk {
        seq: ChunkSeq(raw.seq),
        first_line: LineNumber(raw.first_line),
        last_line: LineNumber(last_line),
        rows: u32::try_from(writer.rows()).expect("a chunk holds at most chunk_rows rows"),
        copy: ChunkCopy::of(&writer.finish()),
    });
    Checked {
        chunk,
        errors,
        error_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn run(body: &[u8], chunk_rows: usize) -> (SplitReport, Vec<Chunk>) {
        run_with(body, chunk_rows, false)
    }

    fn run_with(body: &[u8], chunk_rows: usize, gzip: bool) -> (SplitReport, Vec<Chunk>) {
        let (frames_tx, frames_rx) = mpsc::channel(4);
        let (chunks_tx, mut chunks_rx) = mpsc::channel(1000);
        let settings = SplitSettings {
            chunk_rows,
            max_line_bytes: 100,
            max_errors: 10,
            max_body_bytes: 10_000,
            gzip,
        };
        let ports = Ports::new(["AAAAA".to_string(), "BBBBB".to_string()]);
        let body = Bytes::copy_from_slice(body);
        let feeder = std::thread::spawn(move || {
            for piece in body.chunks(7) {
                // The splitter may stop reading early (a fatal error): then stop sending.
                if frames_tx
                    .blocking_send(Ok(Bytes::copy_from_slice(piece)))
                    .is_err()
                {
                    break;
                }
            }
        });
        let report = split(
            BodyReader::new(frames_rx, settings.max_body_bytes),
            &settings,
            &ports,
            chunks_tx,
        );
        feeder.join().unwrap();
        let mut chunks = Vec::new();
        while let Ok(chunk) = chunks_rx.try_recv() {
            chunks.push(chunk);
        }
        (report, chunks)
    }

    #[test]
    fn chunk_boundaries_never_drop_or_double_a_row() {
        let mut body = String::from("orig_code,dest_code,day,price\r\n");
        for i in 0..23 {
            body.push_str(&format!("AAAAA,BBBBB,2016-01-01,{i}\r\n"));
        }
        body.push_str("\n\n");
        for chunk_rows in [1, 2, 5, 22, 23, 24, 100] {
            let (report, chunks) = run(body.as_bytes(), chunk_rows);
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            assert_eq!(report.rows, 23);
            assert_eq!(chunks.iter().map(|c| c.rows).sum::<u32>(), 23);
            assert_eq!(chunks[0].first_line, LineNumber(2));
            assert_eq!(chunks.last().unwrap().last_line, LineNumber(24));
            for pair in chunks.windows(2) {
                assert_eq!(pair[0].last_line.get() + 1, pair[1].first_line.get());
                assert_eq!(pair[0].seq.get() + 1, pair[1].seq.get());
            }
        }
    }

    #[test]
    fn errors_carry_file_line_numbers_and_stop_publishing() {
        let body = "orig_code,dest_code,day,price\nAAAAA,BBBBB,2016-01-01,1\n\nAAAAA,BBBBB,2016-01-01,x\nAAAAA,BBBBB,2016-01-01,2\n";
        let (report, chunks) = run(body.as_bytes(), 1);
        assert_eq!(report.error_count, 2);
        assert_eq!(report.errors[0].line.get(), 3);
        assert_eq!(report.errors[0].message, "empty line");
        assert_eq!(report.errors[1].line.get(), 4);
        assert_eq!(report.errors[1].column.as_deref(), Some("price"));
        assert!(
            chunks.len() <= 1,
            "nothing after the first error is published"
        );
    }

    #[test]
    fn errors_of_a_chunk_checked_late_still_come_first() {
        // Ten blank lines reach the limit while the chunk holding line 3 is still unchecked.
        let mut body = String::from("orig_code,dest_code,day,price\nAAAAA,BBBBB,2016-01-01,1\n");
        body.push_str("AAAAA,BBBBB,2016-01-01,x\n");
        for _ in 0..20 {
            body.push_str("\nAAAAA,BBBBB,2016-01-01,1\n");
        }
        let (report, chunks) = run(body.as_bytes(), 1000);
        assert!(report.errors_truncated);
        assert_eq!(report.errors.len(), 10);
        assert_eq!(report.errors[0].line.get(), 3);
        assert_eq!(report.errors[0].column.as_deref(), Some("price"));
        assert_eq!(report.errors[1].line.get(), 4);
        assert!(chunks.is_empty());
    }

    #[test]
    fn empty_and_header_only_bodies_are_refused() {
        assert!(run(b"", 10).0.errors[0].message.contains("empty file"));
        let (report, _) = run(b"orig_code,dest_code,day,price\n", 10);
        assert!(report.errors[0].message.contains("no data lines"));
    }

    #[test]
    fn long_lines_stop_reading() {
        let body = format!("orig_code,dest_code,day,price\n{}\n", "A".repeat(500));
        let (report, _) = run(body.as_bytes(), 10);
        assert_eq!(report.errors[0].line.get(), 2);
        assert!(report.errors[0].message.contains("longer than the limit"));
    }

    /// What must hold for any body: a report whose numbers agree with what was published, and
    /// errors whose line numbers exist in the body.
    fn assert_consistent(body: &[u8], report: &SplitReport, chunks: &[Chunk]) {
        let published: u32 = chunks.iter().map(|chunk| chunk.rows).sum();
        assert_eq!(report.chunks as usize, chunks.len());
        assert_eq!(report.rows, u64::from(published));
        assert!(report.error_count >= report.errors.len());
        assert!(report.errors.len() <= 10);
        let lines = body.split(|&byte| byte == b'\n').count() as u64;
        for error in &report.errors {
            assert!(
                error.line.get() <= lines.max(1),
                "line {} of {lines}",
                error.line
            );
        }
        for pair in report.errors.windows(2) {
            assert!(pair[0].line <= pair[1].line, "errors come in line order");
        }
        if report.errors.is_empty() && report.cutoff.is_none() {
            assert!(report.rows > 0, "an accepted file has rows");
        }
    }

    /// A valid file of `rows` lines.
    fn valid_body(rows: usize) -> Vec<u8> {
        let mut body = String::from("orig_code,dest_code,day,price\n");
        for i in 0..rows {
            body.push_str(&format!("AAAAA,\"BBBBB\",2016-01-{:02},{i}\n", i % 28 + 1));
        }
        body.into_bytes()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Arbitrary bytes, plain or announced as gzip, never panic the splitter.
        #[test]
        fn arbitrary_bodies_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            chunk_rows in 1usize..4,
            gzip in proptest::prelude::any::<bool>(),
        ) {
            let (report, chunks) = run_with(&body, chunk_rows, gzip);
            if !gzip {
                assert_consistent(&body, &report, &chunks);
            }
            proptest::prop_assert!(!report.errors.is_empty() || report.rows > 0 || report.cutoff.is_some());
        }

        /// A valid file with one byte changed either still loads every line or is refused
        /// with an error on a line the file has; never a panic, never a row lost silently.
        #[test]
        fn a_valid_file_with_one_byte_changed_is_loaded_whole_or_refused(
            rows in 1usize..30,
            position in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::prelude::any::<u8>(),
            chunk_rows in 1usize..8,
        ) {
            let mut body = valid_body(rows);
            let at = position.index(body.len());
            body[at] = byte;
            let (report, chunks) = run(&body, chunk_rows);
            assert_consistent(&body, &report, &chunks);
            if report.errors.is_empty() {
                let data_lines = body
                    .split(|&b| b == b'\n')
                    .skip(1)
                    .filter(|line| !line.is_empty() && *line != b"\r")
                    .count();
                proptest::prop_assert_eq!(report.rows as usize, data_lines);
            }
        }
    }
}
