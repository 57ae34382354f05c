//! The rates file format: a CSV header naming `orig_code,dest_code,day,price` (in any order) and
//! one price per line. This file turns one line into one validated [`Price`], or into a
//! [`RowError`] that names the line, the column, the value and the reason.
//!
//! A record is one line: prices hold codes, dates and integers, so a quoted field may contain
//! commas and escaped quotes (`""`) but not a line break. That keeps line numbers exact and
//! lets lines be split and checked in parallel.

use ingest_wire::{LineNumber, RowError};
use std::borrow::Cow;
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// The columns of a rates file, by name.
pub const COLUMNS: [&str; 4] = ["orig_code", "dest_code", "day", "price"];

/// Values longer than this are shortened in error reports.
const VALUE_SHOWN: usize = 40;

/// An error about one field of a line, its value shortened.
fn field_error(line: u64, column: &str, value: &[u8], message: impl Into<String>) -> RowError {
    RowError {
        line: LineNumber(line),
        column: Some(column.to_string()),
        value: Some(shorten(value)),
        message: message.into(),
    }
}

/// The value as text, at most [`VALUE_SHOWN`] characters, invalid UTF-8 replaced, NUL shown as
/// `␀` (PostgreSQL cannot store NUL in text or jsonb, and the errors are stored there).
pub fn shorten(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value).replace('\0', "\u{2400}");
    if text.chars().count() <= VALUE_SHOWN {
        return text;
    }
    let mut short: String = text.chars().take(VALUE_SHOWN).collect();
    short.push('…');
    short
}

/// Where each rates column sits on a line, read from the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `positions[i]` is the field index of `COLUMNS[i]`.
    positions: [usize; 4],
}

impl Header {
    /// Reads the header line (line 1, without its line ending; a UTF-8 byte-order mark allowed).
    pub fn parse(line: &[u8]) -> Result<Header, RowError> {
        let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(RowError::line(1, missing_header()));
        }
        if memchr::memchr(0, line).is_some() {
            return Err(RowError::line(1, "line contains a NUL byte"));
        }
        let fields = split_fields(line).map_err(|(index, message)| RowError {
            line: LineNumber(1),
            column: Some(format!("column {}", index + 1)),
            value: None,
            message,
        })?;
        if !fields
            .iter()
            .any(|field| COLUMNS.contains(&header_name(field)))
        {
            // Not one column named: the file has no header (it starts with data, or with junk).
            return Err(RowError {
                line: LineNumber(1),
                column: None,
                value: Some(shorten(line)),
                message: format!("{} (no column is named on it)", missing_header()),
            });
        }
        let positions = column_positions(&fields)?;
        all_columns_named(positions)?;
        Ok(Header { positions })
    }
}

/// Why line 1 is not a header, naming the header expected.
fn missing_header() -> String {
    format!(
        "missing header: the first line must be {}",
        COLUMNS.join(",")
    )
}

/// A header field as the column name it gives (trimmed; not UTF-8 names nothing).
fn header_name(field: &[u8]) -> &str {
    std::str::from_utf8(field).unwrap_or("").trim()
}

/// Where each of [`COLUMNS`] sits among the header's fields (`usize::MAX` for one not named);
/// a column named twice, or a field naming no column, is an error on that field.
fn column_positions(fields: &[Cow<'_, [u8]>]) -> Result<[usize; 4], RowError> {
    let mut positions = [usize::MAX; 4];
    for (index, field) in fields.iter().enumerate() {
        let name = header_name(field);
        match COLUMNS.iter().position(|column| *column == name) {
            Some(column) if positions[column] != usize::MAX => {
                return Err(field_error(
                    1,
                    &format!("column {}", index + 1),
                    field,
                    format!("column {name} appears twice in the header"),
                ));
            }
            Some(column) => positions[column] = index,
            None => {
                return Err(field_error(
                    1,
                    &format!("column {}", index + 1),
                    field,
                    format!(
                        "unexpected column in the header; expected exactly {}",
                        COLUMNS.join(",")
                    ),
                ));
            }
        }
    }
    Ok(positions)
}

/// Every one of [`COLUMNS`] has a position: the error lists those the header lacks.
fn all_columns_named(positions: [usize; 4]) -> Result<(), RowError> {
    let missing: Vec<&str> = COLUMNS
        .iter()
        .zip(positions)
        .filter(|(_, position)| *position == usize::MAX)
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(RowError::line(
            1,
            format!(
                "header lacks column(s) {}; expected {}",
                missing.join(", "),
                COLUMNS.join(",")
            ),
        ));
    }
    Ok(())
}

/// The known port codes, read from the `ports` table once per batch. Looked up twice per line,
/// so hashed with FNV-1a (codes are short and come from the database, not from the file: no
/// need for SipHash's resistance to chosen keys).
#[derive(Debug, Clone, Default)]
pub struct Ports(HashSet<String, BuildHasherDefault<Fnv>>);

impl Ports {
    /// The set of codes.
    pub fn new(codes: impl IntoIterator<Item = String>) -> Ports {
        Ports(codes.into_iter().collect())
    }

    fn contains(&self, code: &str) -> bool {
        self.0.contains(code)
    }

    /// How many ports are known.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No port known (a database that was never seeded).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// FNV-1a, 64 bits.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// One validated price, borrowed from its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price<'a> {
    /// Origin port code.
    pub orig_code: Cow<'a, str>,
    /// Destination port code.
    pub dest_code: Cow<'a, str>,
    /// The day, as days since 2000-01-01 (PostgreSQL's date epoch).
    pub day: i32,
    /// The price in USD.
    pub price: i32,
}

/// Validates one data line (without its line ending). `line_no` is the line in the file.
pub fn parse_line<'a>(
    line: &'a [u8],
    line_no: u64,
    header: &Header,
    ports: &Ports,
) -> Result<Price<'a>, RowError> {
    // Nearly every line is four bare fields: split those without allocating. Anything else
    // (quotes, a NUL byte, another number of fields) takes the general path, which also words
    // the errors.
    if let Some(fields) = bare_fields(line) {
        let field = |column: usize| Cow::Borrowed(fields[header.positions[column]]);
        return Ok(Price {
            orig_code: port(line_no, COLUMNS[0], &field(0), ports)?,
            dest_code: port(line_no, COLUMNS[1], &field(1), ports)?,
            day: day(line_no, &field(2))?,
            price: price(line_no, &field(3))?,
        });
    }
    parse_general(line, line_no, header, ports)
}

/// [`parse_line`] for any line: quoted fields, and every error worded.
fn parse_general<'a>(
    line: &'a [u8],
    line_no: u64,
    header: &Header,
    ports: &Ports,
) -> Result<Price<'a>, RowError> {
    if memchr::memchr(0, line).is_some() {
        return Err(RowError::line(line_no, "line contains a NUL byte"));
    }
    let fields = split_fields(line).map_err(|(index, message)| RowError {
        line: LineNumber(line_no),
        column: Some(column_name(header, index)),
        value: None,
        message,
    })?;
    if fields.len() != COLUMNS.len() {
        return Err(RowError {
            line: LineNumber(line_no),
            column: None,
            value: Some(shorten(line)),
            message: format!(
                "expected {} fields ({}), found {}",
                COLUMNS.len(),
                COLUMNS.join(","),
                fields.len()
            ),
        });
    }
    let field = |column: usize| &fields[header.positions[column]];
    let orig_code = port(line_no, COLUMNS[0], field(0), ports)?;
    let dest_code = port(line_no, COLUMNS[1], field(1), ports)?;
    let day = day(line_no, field(2))?;
    let price = price(line_no, field(3))?;
    Ok(Price {
        orig_code,
        dest_code,
        day,
        price,
    })
}

/// The four fields of a line without quotes or NUL bytes that has exactly three commas.
fn bare_fields(line: &[u8]) -> Option<[&[u8]; 4]> {
    if memchr::memchr2(0, b'"', line).is_some() {
        return None;
    }
    let mut fields: [&[u8]; 4] = [&[]; 4];
    let mut count = 0;
    let mut start = 0;
    for comma in memchr::memchr_iter(b',', line) {
        *fields.get_mut(count)? = &line[start..comma];
        count += 1;
        start = comma + 1;
    }
    *fields.get_mut(count)? = &line[start..];
    (count == 3).then_some(fields)
}

fn column_name(header: &Header, index: usize) -> String {
    header
        .positions
        .iter()
        .position(|position| *position == index)
        .map(|column| COLUMNS[column].to_string())
        .unwrap_or_else(|| format!("column {}", index + 1))
}

fn text<'a>(line: u64, column: &str, value: Cow<'a, [u8]>) -> Result<Cow<'a, str>, RowError> {
    match value {
        Cow::Borrowed(bytes) => std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|_| field_error(line, column, bytes, "not valid UTF-8")),
        Cow::Owned(bytes) => String::from_utf8(bytes)
            .map(Cow::Owned)
            .map_err(|error| field_error(line, column, error.as_bytes(), "not valid UTF-8")),
    }
}

fn port<'a>(
    line: u64,
    column: &str,
    value: &Cow<'a, [u8]>,
    ports: &Ports,
) -> Result<Cow<'a, str>, RowError> {
    if value.is_empty() {
        return Err(field_error(line, column, value, "empty value"));
    }
    let code = text(line, column, value.clone())?;
    if !ports.contains(&code) {
        return Err(field_error(
            line,
            column,
            value,
            "unknown port code (not in the ports table)",
        ));
    }
    Ok(code)
}

/// Days from 0001-01-01 (day 1) to 2000-01-01, chrono's count for PostgreSQL's date epoch.
const PG_EPOCH_FROM_CE: i32 = 730_120;

fn day(line: u64, value: &[u8]) -> Result<i32, RowError> {
    let column = COLUMNS[2];
    if value.is_empty() {
        return Err(field_error(line, column, value, "empty value"));
    }
    let shape_ok = value.len() == 10
        && value[4] == b'-'
        && value[7] == b'-'
        && value
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    if !shape_ok {
        return Err(field_error(
            line,
            column,
            value,
            "not a date in the form YYYY-MM-DD",
        ));
    }
    let number = |range: std::ops::Range<usize>| {
        value[range]
            .iter()
            .fold(0u32, |n, b| n * 10 + u32::from(b - b'0'))
    };
    let date = chrono::NaiveDate::from_ymd_opt(number(0..4) as i32, number(5..7), number(8..10))
        .ok_or_else(|| field_error(line, column, value, "no such calendar date"))?;
    use chrono::Datelike;
    Ok(date.num_days_from_ce() - PG_EPOCH_FROM_CE)
}

fn price(line: u64, value: &[u8]) -> Result<i32, RowError> {
    let column = COLUMNS[3];
    let fail = |message: &str| Err(field_error(line, column, value, message));
    if value.is_empty() {
        return fail("empty value");
    }
    if value.iter().all(u8::is_ascii_digit) {
        let mut n: i64 = 0;
        for digit in value {
            n = n * 10 + i64::from(digit - b'0');
            if n > i64::from(i32::MAX) {
                return fail("price is larger than 2147483647, the largest PostgreSQL integer");
            }
        }
        return Ok(n as i32);
    }
    if value[0] == b'-' && value.len() > 1 && value[1..].iter().all(u8::is_ascii_digit) {
        return fail("price must not be negative");
    }
    fail("price must be a whole number of USD written in digits (no sign, decimals or exponent)")
}

/// Splits a line into fields, RFC 4180 style: a field is either bare (no quotes in it) or quoted
/// (`"…"`, with `""` for a quote, commas allowed). Err is (field index, reason).
pub fn split_fields(line: &[u8]) -> Result<Vec<Cow<'_, [u8]>>, (usize, String)> {
    let mut fields = Vec::with_capacity(COLUMNS.len());
    let mut rest = line;
    loop {
        let index = fields.len();
        if let Some(quoted) = rest.strip_prefix(b"\"") {
            let mut value: Vec<u8> = Vec::new();
            let mut position = 0;
            let mut escaped = false;
            loop {
                match memchr::memchr(b'"', &quoted[position..]) {
                    None => return Err((index, "unterminated quoted field".to_string())),
                    Some(offset) => {
                        let at = position + offset;
                        if quoted.get(at + 1) == Some(&b'"') {
                            value.extend_from_slice(&quoted[position..=at]);
                            escaped = true;
                            position = at + 2;
                        } else {
                            value.extend_from_slice(&quoted[position..at]);
                            position = at + 1;
                            break;
                        }
                    }
                }
            }
            let field = if escaped {
                Cow::Owned(value)
            } else {
                Cow::Borrowed(&quoted[..position - 1])
            };
            fields.push(field);
            rest = &quoted[position..];
            match rest.first() {
                None => return Ok(fields),
                Some(b',') => rest = &rest[1..],
                Some(_) => return Err((
                    index,
                    "unexpected text after a closing quote (a quoted field must end at a comma)"
                        .to_string(),
                )),
            }
        } else {
            let end = memchr::memchr(b',', rest).unwrap_or(rest.len());
            let field = &rest[..end];
            if memchr::memchr(b'"', field).is_some() {
                return Err((
                    index,
                    "quote inside an unquoted field (quote the whole field and double the quote)"
                        .to_string(),
                ));
            }
            fields.push(Cow::Borrowed(field));
            if end == rest.len() {
                return Ok(fields);
            }
            rest = &rest[end + 1..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> Ports {
        Ports::new(["CNSGH".to_string(), "NLRTM".to_string()])
    }

    fn header() -> Header {
        Header::parse(b"orig_code,dest_code,day,price").unwrap()
    }

    #[test]
    fn a_good_line_parses() {
        let price = parse_line(b"CNSGH,NLRTM,2016-01-01,1244", 2, &header(), &ports()).unwrap();
        assert_eq!(price.orig_code, "CNSGH");
        assert_eq!(price.dest_code, "NLRTM");
        assert_eq!(price.day, 5844); // 2016-01-01 is 5844 days after 2000-01-01
        assert_eq!(price.price, 1244);
    }

    #[test]
    fn the_header_may_reorder_columns_and_carry_a_bom() {
        let header = Header::parse(b"\xEF\xBB\xBFprice,day,dest_code,orig_code").unwrap();
        let price = parse_line(b"7,2000-01-02,NLRTM,CNSGH", 2, &header, &ports()).unwrap();
        assert_eq!(
            (price.orig_code.as_ref(), price.day, price.price),
            ("CNSGH", 1, 7)
        );
    }

    #[test]
    fn header_errors_name_the_problem() {
        let extra = Header::parse(b"orig_code,dest_code,day,price,currency").unwrap_err();
        assert_eq!(extra.column.as_deref(), Some("column 5"));
        assert!(extra.message.contains("unexpected column"));
        let missing = Header::parse(b"orig_code,dest_code,day").unwrap_err();
        assert!(
            missing.message.contains("lacks column(s) price"),
            "{missing:?}"
        );
        let twice = Header::parse(b"orig_code,orig_code,day,price").unwrap_err();
        assert!(twice.message.contains("appears twice"));
        let data = Header::parse(b"CNSGH,NLRTM,2016-01-01,1").unwrap_err();
        assert!(data.message.starts_with("missing header"), "{data:?}");
        assert_eq!(data.column, None);
        let nul = Header::parse(b"orig_code,dest_code,day,price\0").unwrap_err();
        assert!(nul.message.contains("NUL"), "{nul:?}");
    }

    #[test]
    fn quoted_fields_are_read() {
        let fields = split_fields(br#""CN""SGH",NLRTM,"2016-01-01","1,2""#).unwrap();
        assert_eq!(fields[0].as_ref(), br#"CN"SGH"#);
        assert_eq!(fields[3].as_ref(), b"1,2");
        assert_eq!(split_fields(b"\"abc").unwrap_err().0, 0);
        assert_eq!(split_fields(b"a,\"b\"c").unwrap_err().0, 1);
        assert_eq!(split_fields(b"a,b\"c").unwrap_err().0, 1);
        assert_eq!(split_fields(b"").unwrap().len(), 1);
    }

    fn error(line: &str) -> RowError {
        parse_line(line.as_bytes(), 9, &header(), &ports()).unwrap_err()
    }

    #[test]
    fn bad_values_are_reported_with_column_and_reason() {
        let cases = [
            ("XXXXX,NLRTM,2016-01-01,1", "orig_code", "unknown port code"),
            (",NLRTM,2016-01-01,1", "orig_code", "empty value"),
            ("CNSGH,nlrtm,2016-01-01,1", "dest_code", "unknown port code"),
            ("CNSGH,NLRTM,2016-02-30,1", "day", "no such calendar date"),
            ("CNSGH,NLRTM,2016-13-01,1", "day", "no such calendar date"),
            ("CNSGH,NLRTM,yesterday,1", "day", "YYYY-MM-DD"),
            ("CNSGH,NLRTM,2016-01-01,-5", "price", "negative"),
            ("CNSGH,NLRTM,2016-01-01,12.5", "price", "whole number"),
            ("CNSGH,NLRTM,2016-01-01,1e3", "price", "whole number"),
            ("CNSGH,NLRTM,2016-01-01,2147483648", "price", "larger than"),
            ("CNSGH,NLRTM,2016-01-01,", "price", "empty value"),
        ];
        for (line, column, message) in cases {
            let error = error(line);
            assert_eq!(error.line, LineNumber(9), "{line}");
            assert_eq!(error.column.as_deref(), Some(column), "{line}");
            assert!(error.message.contains(message), "{line}: {error:?}");
        }
        assert!(error("CNSGH,NLRTM,2016-01-01").message.contains("found 3"));
        assert!(error("CNSGH,NLRTM,2016-01-01,1\0").message.contains("NUL"));
        assert_eq!(
            parse_line(b"CNSGH,NLRTM,2016-01-01,2147483647", 2, &header(), &ports())
                .unwrap()
                .price,
            i32::MAX
        );
    }

    #[test]
    fn long_values_are_shortened() {
        let long = "X".repeat(100);
        let shown = shorten(long.as_bytes());
        assert_eq!(shown.chars().count(), VALUE_SHOWN + 1);
        assert!(shown.ends_with('…'));
        assert_eq!(
            shorten(b"a\0b"),
            "a\u{2400}b",
            "PostgreSQL cannot store NUL"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn parsing_arbitrary_bytes_never_panics(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = Header::parse(&line);
            let _ = parse_line(&line, 2, &header(), &ports());
        }

        #[test]
        fn the_fast_path_agrees_with_the_general_one(
            line in proptest::collection::vec(proptest::sample::select(
                b"CNSGHNLRTM,,,,\"-0123456789 \x00".to_vec()), 0..40),
        ) {
            proptest::prop_assert_eq!(
                parse_line(&line, 7, &header(), &ports()),
                parse_general(&line, 7, &header(), &ports())
            );
            let valid = format!("CNSGH,NLRTM,2021-0{},{}", 1 + line.len() % 9, line.len());
            proptest::prop_assert_eq!(
                parse_line(valid.as_bytes(), 7, &header(), &ports()),
                parse_general(valid.as_bytes(), 7, &header(), &ports())
            );
        }

        #[test]
        fn every_valid_line_round_trips(
            orig in 0usize..2, dest in 0usize..2,
            days in 0i32..20000, price in 0i32..=i32::MAX,
        ) {
            let codes = ["CNSGH", "NLRTM"];
            let date = chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap() + chrono::Days::new(days as u64);
            let line = format!("{},\"{}\",{},{}", codes[orig], codes[dest], date.format("%Y-%m-%d"), price);
            let parsed = parse_line(line.as_bytes(), 2, &header(), &ports()).unwrap();
            proptest::prop_assert_eq!(parsed.orig_code.as_ref(), codes[orig]);
            proptest::prop_assert_eq!(parsed.dest_code.as_ref(), codes[dest]);
            proptest::prop_assert_eq!(parsed.day, days);
            proptest::prop_assert_eq!(parsed.price, price);
        }
    }
}
