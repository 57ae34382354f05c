//! Generated rates files: deterministic rows over the real port codes, streamed in blocks so a
//! test can send millions of rows without holding them, with the checksum to expect.

use bytes::Bytes;
use std::path::Path;

/// The real port codes.
pub fn port_codes(data_dir: &Path) -> Vec<String> {
    port_codes_in(&data_dir.join("ports.csv"))
}

/// The port codes of a ports file (the first column, below its header).
pub fn port_codes_in(ports_csv: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(ports_csv)
        .unwrap_or_else(|error| panic!("{}: {error}", ports_csv.display()));
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    reader
        .records()
        .map(|record| record.expect("port record")[0].to_string())
        .collect()
}

/// Row `i` of a generated file with seed `seed`: orig, dest, day, price.
pub fn row(codes: &[String], seed: u64, i: u64) -> (String, String, String, i64) {
    let x = i.wrapping_mul(6364136223846793005).wrapping_add(seed);
    let orig = &codes[(x % codes.len() as u64) as usize];
    let dest = &codes[((x >> 17) % codes.len() as u64) as usize];
    let day = 1 + (x >> 33) % 28;
    let month = 1 + (x >> 41) % 12;
    let price = ((x >> 23) % 5000) as i64;
    (
        orig.clone(),
        dest.clone(),
        format!("2016-{month:02}-{day:02}"),
        price,
    )
}

/// The file's bytes from row `from` to `to` (exclusive), with the header when `from` is 0.
pub fn block(codes: &[String], seed: u64, from: u64, to: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(((to - from) * 30) as usize + 32);
    if from == 0 {
        out.extend_from_slice(b"orig_code,dest_code,day,price\n");
    }
    for i in from..to {
        let (orig, dest, day, price) = row(codes, seed, i);
        out.extend_from_slice(format!("{orig},{dest},{day},{price}\n").as_bytes());
    }
    out
}

/// The whole file in memory (small files only).
pub fn whole(codes: &[String], seed: u64, rows: u64) -> Vec<u8> {
    block(codes, seed, 0, rows)
}

/// The file as a stream of 10,000-row blocks, for a request body.
pub fn stream(codes: Vec<String>, seed: u64, rows: u64) -> reqwest::Body {
    let blocks = (0..rows.div_ceil(10_000)).map(move |b| {
        let from = b * 10_000;
        let to = (from + 10_000).min(rows);
        Ok::<_, std::io::Error>(Bytes::from(block(&codes, seed, from, to)))
    });
    reqwest::Body::wrap_stream(futures_util::stream::iter(blocks))
}

/// (rows, sum of prices) of a generated file.
pub fn totals(codes: &[String], seed: u64, rows: u64) -> (i64, i64) {
    let sum = (0..rows).map(|i| row(codes, seed, i).3).sum();
    (rows as i64, sum)
}

/// (rows, sum of prices) of a generated file over the repository's port codes: what readers
/// must see of its batch.
pub fn expected(seed: u64, rows: u64) -> (i64, i64) {
    totals(&port_codes(&crate::data_dir()), seed, rows)
}

/// Per day: (rows, sum of prices) of a generated file over the repository's port codes — a
/// checksum that a lost or doubled chunk cannot pass by luck.
pub fn expected_by_day(seed: u64, rows: u64) -> std::collections::BTreeMap<String, (i64, i64)> {
    let codes = port_codes(&crate::data_dir());
    let mut days = std::collections::BTreeMap::new();
    for i in 0..rows {
        let (_, _, day, price) = row(&codes, seed, i);
        let entry = days.entry(day).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += price;
    }
    days
}

/// The file as a slow client sends it: 10,000-row blocks with `pause` between them (the pause is
/// the point: a fault lands while the upload is still coming in).
pub fn paced(
    codes: Vec<String>,
    seed: u64,
    rows: u64,
    pause: std::time::Duration,
) -> reqwest::Body {
    let blocks = futures_util::stream::unfold(0u64, move |from| {
        let codes = codes.clone();
        async move {
            if from >= rows {
                return None;
            }
            if from > 0 {
                tokio::time::sleep(pause).await;
            }
            let to = (from + 10_000).min(rows);
            let block = Bytes::from(block(&codes, seed, from, to));
            Some((Ok::<_, std::io::Error>(block), to))
        }
    });
    reqwest::Body::wrap_stream(blocks)
}
