//! The uploaded body as the splitter reads it: a blocking `Read` over the frames the HTTP handler
//! forwards through a channel. It counts and hashes what it hands out, refuses more than the
//! body limit, and gunzips a compressed body while counting what comes out of the decoder.
//! Running on a blocking thread, it never holds more than one frame.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use tokio::sync::mpsc;

/// The body as a `Read`: frames arrive from the HTTP handler over a channel; it counts and
/// hashes what it hands out and enforces the size limit.
pub struct BodyReader {
    frames: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    hasher: Sha256,
    bytes: u64,
    limit: u64,
}

impl BodyReader {
    /// Reads the frames sent on `frames`, refusing more than `limit` bytes.
    pub fn new(frames: mpsc::Receiver<io::Result<Bytes>>, limit: u64) -> BodyReader {
        BodyReader {
            frames,
            current: Bytes::new(),
            hasher: Sha256::new(),
            bytes: 0,
            limit,
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.frames.blocking_recv() {
                None => return Ok(0),
                Some(Ok(frame)) => {
                    self.bytes += frame.len() as u64;
                    if self.bytes > self.limit {
                        return Err(io::Error::new(
                            io::ErrorKind::FileTooLarge,
                            "body too large",
                        ));
                    }
                    self.hasher.update(&frame);
                    self.current = frame;
                }
                // The handler sends the HTTP body's failure as ConnectionAborted.
                Some(Err(error)) => return Err(error),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

impl BodyReader {
    /// Bytes read and their SHA-256 (hex): the whole body once it was read to its end.
    pub fn finish(self) -> (u64, String) {
        (self.bytes, hex::encode(self.hasher.finalize()))
    }
}

/// The body as read by the splitter: plain, or gunzipped.
pub struct Source(Decoded);

/// What [`Source`] reads through.
enum Decoded {
    Plain(BodyReader),
    Gzip(Box<Inflated<flate2::read::MultiGzDecoder<BodyReader>>>),
}

impl Source {
    /// Reads `body`, gunzipping it when `gzip`, refusing more than `limit` bytes out of the
    /// decoder (so a small bomb cannot expand past the limit).
    pub fn new(body: BodyReader, gzip: bool, limit: u64) -> Source {
        Source(if gzip {
            Decoded::Gzip(Box::new(Inflated {
                inner: flate2::read::MultiGzDecoder::new(body),
                bytes: 0,
                limit,
            }))
        } else {
            Decoded::Plain(body)
        })
    }

    /// The body under the decoder, to read its count and hash.
    pub fn into_body(self) -> BodyReader {
        match self.0 {
            Decoded::Plain(body) => body,
            Decoded::Gzip(inflated) => inflated.inner.into_inner(),
        }
    }
}

impl Read for Source {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            Decoded::Plain(body) => body.read(out),
            Decoded::Gzip(inflated) => inflated.read(out),
        }
    }
}

/// Counts what comes out of the gzip decoder, so a small bomb cannot expand past the limit.
struct Inflated<R> {
    inner: R,
    bytes: u64,
    limit: u64,
}

impl<R: Read> Read for Inflated<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.bytes += n as u64;
        if self.bytes > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "uncompressed body too large",
            ));
        }
        Ok(n)
    }
}
