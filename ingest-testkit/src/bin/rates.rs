//! Generated rates files and their checksums, for the chaos run and the benchmarks: one tool, so
//! that what they generate, what the tests generate (`ingest_testkit::rates_file`) and what they
//! judge `prices` by are the same rows.
//!
//! ```text
//! rates generate ROWS SEED PORTS_CSV OUT   write ROWS deterministic prices over the real port
//!                                          codes (orig_code,dest_code,day,price)
//! rates checksum FILE                      per day: day,count,sum(price), sorted by day
//! rates judge EXPECTED ACTUAL              compare two checksum files; print
//!                                          lost=N duplicated=N differing_days=N, exit 1 if any
//! ```
//!
//! The checksum is what the chaos run judges `prices` by: a row lost or loaded twice changes a
//! day's count, a row changed changes its sum. Build it with
//! `cargo build --release --locked -p ingest-testkit --bin rates` (or with the other binaries,
//! `cargo build --release --locked --bins`).

use anyhow::{bail, Context};
use ingest_testkit::rates_file;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "\
Generated rates files and their checksums, for the chaos run (and the benchmark).

  rates generate ROWS SEED PORTS_CSV OUT   write ROWS deterministic prices over the real port
                                           codes (orig_code,dest_code,day,price)
  rates checksum FILE                      per day: day,count,sum(price), sorted by day
  rates judge EXPECTED ACTUAL              compare two checksum files; print
                                           lost=N duplicated=N differing_days=N, exit 1 if any
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let done = match args.as_slice() {
        ["generate", rows, seed, ports, out] => generate(rows, seed, ports, out).map(|()| true),
        ["checksum", file] => checksum(Path::new(file)).map(|()| true),
        ["judge", expected, actual] => judge(Path::new(expected), Path::new(actual)),
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match done {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("rates: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `rows` rows of seed `seed` to `out`, streamed.
fn generate(rows: &str, seed: &str, ports: &str, out: &str) -> anyhow::Result<()> {
    let rows: u64 = rows.parse().context("ROWS")?;
    let seed: u64 = seed.parse().context("SEED")?;
    let codes = rates_file::port_codes_in(Path::new(ports));
    if codes.is_empty() {
        bail!("{ports}: no port codes");
    }
    let file = File::create(out).with_context(|| format!("creating {out}"))?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    writer.write_all(b"orig_code,dest_code,day,price\n")?;
    for i in 0..rows {
        let (orig, dest, day, price) = rates_file::row(&codes, seed, i);
        writeln!(writer, "{orig},{dest},{day},{price}")?;
    }
    writer
        .into_inner()
        .map_err(|error| error.into_error())?
        .sync_all()
        .with_context(|| format!("writing {out}"))?;
    Ok(())
}

/// Prints `day,count,sum(price)` per day of a rates file, sorted by day.
fn checksum(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(BufReader::with_capacity(1 << 20, file));
    let header = reader.headers()?.clone();
    let column = |name: &str| {
        header
            .iter()
            .position(|field| field == name)
            .with_context(|| format!("{}: no column {name}", path.display()))
    };
    let (day_at, price_at) = (column("day")?, column("price")?);
    let mut days: BTreeMap<String, (u64, i128)> = BTreeMap::new();
    let mut record = csv::ByteRecord::new();
    while reader.read_byte_record(&mut record)? {
        let line = record.position().map_or(0, |p| p.line());
        let field = |at: usize| {
            record
                .get(at)
                .and_then(|value| std::str::from_utf8(value).ok())
                .with_context(|| format!("{}: line {line}: no column {at}", path.display()))
        };
        let day = field(day_at)?;
        let price: i128 = field(price_at)?
            .trim()
            .parse()
            .with_context(|| format!("{}: line {line}: price", path.display()))?;
        let entry = match days.get_mut(day) {
            Some(entry) => entry,
            None => days.entry(day.to_owned()).or_default(),
        };
        entry.0 += 1;
        entry.1 += price;
    }
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for (day, (count, sum)) in &days {
        writeln!(out, "{day},{count},{sum}")?;
    }
    out.flush()?;
    Ok(())
}

/// A checksum file: day -> (count, sum).
fn read_checksum(path: &Path) -> anyhow::Result<BTreeMap<String, (i128, i128)>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut days = BTreeMap::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let [day, count, sum] = fields.as_slice() else {
            bail!("{}: not day,count,sum: {line}", path.display());
        };
        let number = |text: &str| {
            text.trim()
                .parse::<i128>()
                .with_context(|| format!("{}: not a number: {line}", path.display()))
        };
        days.insert(day.to_string(), (number(count)?, number(sum)?));
    }
    Ok(days)
}

/// Compares two checksum files; prints what differs and says whether nothing did.
fn judge(expected: &Path, actual: &Path) -> anyhow::Result<bool> {
    let (expected, actual) = (read_checksum(expected)?, read_checksum(actual)?);
    let (mut lost, mut duplicated, mut differing) = (0i128, 0i128, 0u64);
    let days: std::collections::BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
    for day in days {
        let want = expected.get(day).copied().unwrap_or((0, 0));
        let got = actual.get(day).copied().unwrap_or((0, 0));
        lost += (want.0 - got.0).max(0);
        duplicated += (got.0 - want.0).max(0);
        differing += u64::from(want != got);
    }
    println!("lost={lost} duplicated={duplicated} differing_days={differing}");
    Ok(lost == 0 && duplicated == 0 && differing == 0)
}
