//! Writes prices in PostgreSQL's binary COPY format, so that a chunk's message body is exactly
//! what a worker streams into `COPY … FROM STDIN (FORMAT binary)`: the worker neither parses nor
//! copies rows, and the server is spared text parsing.
//!
//! Format: signature, flags and header-extension length; per row the field count, then each
//! field as a length and its bytes (text as UTF-8, date as days since 2000-01-01, integer as
//! 4 bytes, all big-endian); a trailer of -1.

use super::rates::Price;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// A chunk's COPY stream under construction.
#[derive(Debug)]
pub struct CopyWriter {
    buffer: Vec<u8>,
    rows: usize,
}

impl CopyWriter {
    /// Starts a stream, with room for about `rows` rows.
    pub fn with_rows(rows: usize) -> CopyWriter {
        let mut buffer = Vec::with_capacity(19 + rows * 40 + 2);
        buffer.extend_from_slice(SIGNATURE);
        buffer.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buffer.extend_from_slice(&0i32.to_be_bytes()); // no header extension
        CopyWriter { buffer, rows: 0 }
    }

    /// Appends one row: orig_code, dest_code, day, price.
    pub fn push(&mut self, price: &Price<'_>) {
        let buffer = &mut self.buffer;
        buffer.extend_from_slice(&4i16.to_be_bytes());
        for code in [&price.orig_code, &price.dest_code] {
            buffer.extend_from_slice(&(code.len() as i32).to_be_bytes());
            buffer.extend_from_slice(code.as_bytes());
        }
        buffer.extend_from_slice(&4i32.to_be_bytes());
        buffer.extend_from_slice(&price.day.to_be_bytes());
        buffer.extend_from_slice(&4i32.to_be_bytes());
        buffer.extend_from_slice(&price.price.to_be_bytes());
        self.rows += 1;
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Ends the stream and hands its bytes over.
    pub fn finish(mut self) -> Vec<u8> {
        self.buffer.extend_from_slice(&(-1i16).to_be_bytes());
        self.buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn writes_the_binary_copy_layout() {
        let mut writer = CopyWriter::with_rows(1);
        writer.push(&Price {
            orig_code: Cow::Borrowed("AB"),
            dest_code: Cow::Borrowed("C"),
            day: 1,
            price: 258,
        });
        assert_eq!(writer.rows(), 1);
        let bytes = writer.finish();
        let mut expected = SIGNATURE.to_vec();
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0, 4]);
        expected.extend_from_slice(&[0, 0, 0, 2, b'A', b'B']);
        expected.extend_from_slice(&[0, 0, 0, 1, b'C']);
        expected.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 1]);
        expected.extend_from_slice(&[0, 0, 0, 4, 0, 0, 1, 2]);
        expected.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(bytes, expected);
    }
}
